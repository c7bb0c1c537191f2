-- multitenancy 0.1.0 -> 0.2.0 (ALTER EXTENSION multitenancy UPDATE). CHANGELOG.md says what
-- changed and why; pgrx-tests/tests/upgrade.rs holds the result to a fresh install of 0.2.0.

-- DROP EXTENSION never opens an enabled table. Its permissive policy was USING (true), which
-- DROP EXTENSION ... CASCADE left behind (with the isolation policy gone: every row readable by
-- anyone with SELECT). It now calls _installed() (true, folded by the planner), so it goes with
-- the extension and the table stays forced with no policy: closed.
CREATE  FUNCTION "_installed"() RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_installed_wrapper';
ALTER FUNCTION multitenancy._installed() LEAKPROOF;

DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT p.polrelid::pg_catalog.regclass FROM pg_catalog.pg_policy p
               JOIN multitenancy.enabled_tables e ON e.relid::pg_catalog.oid = p.polrelid
              WHERE p.polname = 'multitenancy_access' ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER POLICY multitenancy_access ON %s USING (multitenancy._installed()) '
                                  'WITH CHECK (multitenancy._installed())', t);
    END LOOP;
END
$$;

-- DROP EXTENSION / DROP SCHEMA multitenancy / DROP OWNED BY its owner is refused while an enabled table has a permissive
-- policy of its own, which would remain without the isolation policy (src/tables/guard.rs).
CREATE FUNCTION multitenancy._guard_start() RETURNS event_trigger
VOLATILE PARALLEL UNSAFE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'mt_guard_start';
REVOKE EXECUTE ON FUNCTION multitenancy._guard_start() FROM PUBLIC;
CREATE EVENT TRIGGER multitenancy_guard_start ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION multitenancy._guard_start();
ALTER EVENT TRIGGER multitenancy_guard_start ENABLE ALWAYS;
