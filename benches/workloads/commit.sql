-- Ends the transactions of workload 4.
COMMIT;
