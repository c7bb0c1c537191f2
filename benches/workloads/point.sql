-- Workload 1: one row of the tenant by primary key (row k of tenant t: see ../schema.sql).
\set k random(0, :rows - 1)
\set r :k * :tenants + :t - 1
\set id (:r / 7) * 10 + :r % 7 + 4
SELECT id, created_at, amount, status, note FROM @ITEMS@ WHERE id = :id@AND_TENANT@;
