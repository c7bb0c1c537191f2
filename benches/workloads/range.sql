-- Workload 2: the tenant's 100 latest rows, by an indexed column.
SELECT id, created_at, amount, status FROM @ITEMS@@WHERE_TENANT@ ORDER BY created_at DESC LIMIT 100;
