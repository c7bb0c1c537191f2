-- Workload 4 prelude: a random tenant per transaction, chosen with multitenancy.tenant_set(slug).
\set t random(1, :tenants)
\set tu 100000000000 + :t
BEGIN;
SELECT multitenancy.tenant_set('t' || :t::text);
