-- multitenancy finalize: privileges and event triggers. Runs after every function exists.

-- Registry tables are private: application roles reach them only through functions.
REVOKE ALL ON ALL TABLES IN SCHEMA multitenancy FROM PUBLIC;
-- Policies call multitenancy.current_tenant_id() as the querying role.
GRANT USAGE ON SCHEMA multitenancy TO PUBLIC;

-- DBA functions: a DBA grants them to the roles that run migrations or manage tenants.
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_create(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_disable(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_exempt(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_unexempt(regclass) FROM PUBLIC;
-- The audit lists roles and tables: for DBAs and CI.
REVOKE EXECUTE ON FUNCTION multitenancy.verify() FROM PUBLIC;

-- current_tenant_id() takes no argument, so it cannot leak one: LEAKPROOF lets the planner
-- use it freely next to security-barrier quals.
ALTER FUNCTION multitenancy.current_tenant_id() LEAKPROOF;
ALTER FUNCTION multitenancy.current_tenant_id_or_null() LEAKPROOF;

-- Every session caches the tenants it looks up (tenant_set runs in every transaction); a change
-- to the registry invalidates those caches in all sessions when it commits (src/tenants.rs).
-- Row-level: a statement-level trigger is skipped when an INSERT ... RETURNING run through SPI
-- stops at its row limit (as tenant_create's does). ENABLE ALWAYS: session_replication_role =
-- replica does not skip them.
CREATE TRIGGER multitenancy_tenants_changed
    AFTER INSERT OR UPDATE OR DELETE ON multitenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION multitenancy._tenants_changed();
CREATE TRIGGER multitenancy_tenants_truncated
    AFTER TRUNCATE ON multitenancy.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION multitenancy._tenants_changed();
ALTER TABLE multitenancy.tenants ENABLE ALWAYS TRIGGER multitenancy_tenants_changed;
ALTER TABLE multitenancy.tenants ENABLE ALWAYS TRIGGER multitenancy_tenants_truncated;
REVOKE EXECUTE ON FUNCTION multitenancy._tenants_changed() FROM PUBLIC;

-- A dropped table leaves the registry with it (so pg_dump never sees a dangling regclass).
CREATE FUNCTION multitenancy._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM multitenancy.enabled_tables e
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = e.relid::pg_catalog.oid;
    DELETE FROM multitenancy.exempt_tables e
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = e.relid::pg_catalog.oid;
END
$$;
REVOKE EXECUTE ON FUNCTION multitenancy._forget_dropped_tables() FROM PUBLIC;

CREATE EVENT TRIGGER multitenancy_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION multitenancy._forget_dropped_tables();
ALTER EVENT TRIGGER multitenancy_forget_dropped_tables ENABLE ALWAYS;

-- The DDL guard (src/guard.rs; its functions _guard_ddl and _guard_drop run as the role doing
-- the DDL). ENABLE ALWAYS: session_replication_role = replica does not switch them off; only
-- the superuser-only setting multitenancy.ddl_guard does, and every unchecked command is logged.
CREATE EVENT TRIGGER multitenancy_guard_ddl ON ddl_command_end
    EXECUTE FUNCTION multitenancy._guard_ddl();
ALTER EVENT TRIGGER multitenancy_guard_ddl ENABLE ALWAYS;

CREATE EVENT TRIGGER multitenancy_guard_drop ON sql_drop
    EXECUTE FUNCTION multitenancy._guard_drop();
ALTER EVENT TRIGGER multitenancy_guard_drop ENABLE ALWAYS;
