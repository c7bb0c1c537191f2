-- Workload 6: one row. With row-level security tenant_id comes from the column default and the
-- policy's WITH CHECK checks it; the baseline gives it explicitly.
INSERT INTO @EVENTS@ (@TENANT_COLUMN@kind, payload) VALUES (@TENANT_VALUE@'click', 'client ' || :client_id::text);
