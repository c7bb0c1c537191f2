-- Workload 4 prelude (-M prepared): a random tenant per transaction, set with set_config(...,
-- true) — SET LOCAL in the form a driver can send with a parameter (SET itself takes none).
\set t random(1, :tenants)
\set tu 100000000000 + :t
BEGIN;
SELECT set_config('@GUC@', '00000000-0000-4000-8000-' || :tu::text, true);
