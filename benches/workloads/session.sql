-- Prelude of workloads 1-3b and 6: the client's tenant is chosen on its first transaction and
-- kept for the session, with the context set once for both row-level-security variants (the
-- baseline names the tenant in its WHERE clause instead). So these workloads time the query;
-- workload 4 times switching the tenant. pick: 0 a random tenant, 1 the big tenant, 2 client n
-- of 16 gets tenant n (no limits), 3 client n of 16 gets tenant 16 + n (rows and bytes limits). set_config works with every pgbench protocol (SET takes no parameters).
\if :ready = 0
\if :pick = 0
\set t random(1, :tenants)
\elif :pick = 1
\set t :tenants + 1
\elif :pick = 2
\set t :client_id % 16 + 1
\else
\set t :client_id % 16 + 17
\endif
\set tu 100000000000 + :t
SELECT set_config('multitenancy.tenant_id', '00000000-0000-4000-8000-' || :tu::text, false),
       set_config('app.current_tenant_id', '00000000-0000-4000-8000-' || :tu::text, false);
\set ready 1
\endif
