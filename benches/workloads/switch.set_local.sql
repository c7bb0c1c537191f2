-- Workload 4 prelude (-M simple): a random tenant per transaction, chosen with SET LOCAL of the setting
-- (@GUC@: multitenancy.tenant_id, or the seed's app.current_tenant_id).
\set t random(1, :tenants)
\set tu 100000000000 + :t
BEGIN;
SET LOCAL @GUC@ = '00000000-0000-4000-8000-:tu';
