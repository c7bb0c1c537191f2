-- Workloads 3 and 3b: an aggregate over all of the tenant's rows.
SELECT count(*), sum(amount), max(created_at) FROM @ITEMS@@WHERE_TENANT@;
