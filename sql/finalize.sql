-- multitenancy finalize: privileges and event triggers. Runs after every function exists.

-- The naming rules of the registry, written once in Rust (src/registry/tenants.rs,
-- src/signing.rs) and checked by the tables too.
ALTER TABLE multitenancy.tenants
    ADD CONSTRAINT tenants_slug_format CHECK (multitenancy._slug_valid(slug)),
    ADD CONSTRAINT tenants_plan_format CHECK (multitenancy._plan_valid(plan));
ALTER TABLE multitenancy.plans ADD CONSTRAINT plans_name_format CHECK (multitenancy._plan_valid(name));
ALTER TABLE multitenancy.members ADD CONSTRAINT members_role_values CHECK (multitenancy._role_rank(role) IS NOT NULL);
ALTER TABLE multitenancy.signing_keys
    ADD CONSTRAINT signing_keys_name_check CHECK (multitenancy._signing_key_name_valid(name));

-- Registry tables change only through the extension's functions.
REVOKE ALL ON ALL TABLES IN SCHEMA multitenancy FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA multitenancy FROM PUBLIC;
-- Policies call multitenancy.current_tenant_id() as the querying role.
GRANT USAGE ON SCHEMA multitenancy TO PUBLIC;

-- Application roles read the registry rows of the tenant of their context (and, in admin mode,
-- of every tenant): row level security, not FORCEd, so the registry owner (the extension's
-- functions) sees everything. enabled_tables and exempt_tables stay private.
GRANT SELECT ON multitenancy.tenants, multitenancy.members, multitenancy.domains, multitenancy.audit_log,
                multitenancy.plans, multitenancy.quotas, multitenancy.table_usage, multitenancy.metered_usage
             TO PUBLIC;
ALTER TABLE multitenancy.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE multitenancy.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE multitenancy.domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE multitenancy.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON multitenancy.tenants FOR SELECT TO PUBLIC
    USING (id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
CREATE POLICY tenant_scope ON multitenancy.members FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
CREATE POLICY tenant_scope ON multitenancy.domains FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
CREATE POLICY tenant_scope ON multitenancy.audit_log FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
-- Quotas and usage (tenant_stats, quota_check) are scoped the same way.
ALTER TABLE multitenancy.quotas ENABLE ROW LEVEL SECURITY;
ALTER TABLE multitenancy.table_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE multitenancy.metered_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON multitenancy.quotas FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
CREATE POLICY tenant_scope ON multitenancy.table_usage FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());
CREATE POLICY tenant_scope ON multitenancy.metered_usage FOR SELECT TO PUBLIC
    USING (tenant_id = (SELECT multitenancy.current_tenant_id_or_null()) OR multitenancy._admin_mode());

-- The audit log is append-only for everyone but superusers, the registry owner included.
CREATE FUNCTION multitenancy._audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        PERFORM multitenancy._raise('audit_log_append_only', '{}');
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
REVOKE EXECUTE ON FUNCTION multitenancy._audit_log_append_only() FROM PUBLIC;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON multitenancy.audit_log
    FOR EACH ROW EXECUTE FUNCTION multitenancy._audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON multitenancy.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION multitenancy._audit_log_append_only();
ALTER TABLE multitenancy.audit_log ENABLE ALWAYS TRIGGER audit_log_append_only;
ALTER TABLE multitenancy.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

-- Cross-tenant admin access (multitenancy.admin_begin) is for members of this role. Roles are
-- cluster-wide: a second database's CREATE EXTENSION finds it already there.
-- (Two databases creating the extension at once race on the role's unique index: 23505.)
DO $$
BEGIN
    CREATE ROLE multitenancy_admin NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The internal data functions of sql/tenants.sql and its siblings run only as the registry owner. The counting
-- trigger functions stay executable: whoever runs tenant_enable creates triggers with them (and
-- they refuse to run other than as triggers).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'multitenancy'::regnamespace AND p.proname LIKE '\_%'
                AND p.proname NOT IN ('_admin_mode', '_installed', '_readable_tenant', '_role_rank',
                                      '_usage_row', '_usage_statement', '_period_start', '_usage_unwritten',
                                      '_usage_counters', '_usage_totals', '_usage_report', '_usage_live')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- DBA functions: a DBA grants them to the roles that run migrations or manage tenants.
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_create(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_suspend(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_activate(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_delete(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_purge(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_rename(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_change_plan(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.plan_set(text, jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_disable(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_exempt(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_unexempt(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.exempt_pattern(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_key_scope(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_distribute(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_template(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.template_apply(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.exempt_pattern_remove(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.quota_set(text, text, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.quota_reset(text, text) FROM PUBLIC;
-- Moving tenants (mt-move): for the operator role a DBA grants them to.
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_export(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_begin(jsonb, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_rows(regclass, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_keys(regclass, regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_sequences(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_end(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.move_tables() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.import_check(jsonb) FROM PUBLIC;
-- The audit lists roles and tables: for DBAs and CI; so do the usage reports, across tenants.
REVOKE EXECUTE ON FUNCTION multitenancy.verify() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.usage_drift() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.usage_recompute() FROM PUBLIC;
-- Domain verification is the word of an operator (or its DNS-checking backend), not the tenant's.
REVOKE EXECUTE ON FUNCTION multitenancy.domain_verify(text, text) FROM PUBLIC;
-- Signed contexts: keys are for DBAs; tenant_token for the trusted backends a DBA grants it to
-- (GRANT EXECUTE ON FUNCTION multitenancy.tenant_token(text, uuid, interval) TO auth_service).
-- tenant_set_signed stays PUBLIC: the token is the credential.
REVOKE EXECUTE ON FUNCTION multitenancy.signing_key_add(text, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.signing_key_retire(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.signing_key_list() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_token(text, uuid, interval) FROM PUBLIC;

-- current_tenant_id() takes no argument, so it cannot leak one: LEAKPROOF lets the planner
-- use it freely next to security-barrier quals.
ALTER FUNCTION multitenancy.current_tenant_id() LEAKPROOF;
ALTER FUNCTION multitenancy.current_tenant_id_or_null() LEAKPROOF;
ALTER FUNCTION multitenancy._admin_mode() LEAKPROOF;
ALTER FUNCTION multitenancy._installed() LEAKPROOF;

-- Every session caches the tenants it looks up (tenant_set runs in every transaction); a change
-- to the registry invalidates those caches in all sessions when it commits (src/registry/tenants.rs).
-- Row-level: a statement-level trigger is skipped when an INSERT ... RETURNING run through SPI
-- stops at its row limit (as tenant_create's does). ENABLE ALWAYS: session_replication_role =
-- replica does not skip them.
-- Cached: tenants (tenant_set), memberships (tenant_set, has_role), and the limits the counting
-- triggers enforce (plans and quota overrides).
DO $$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['multitenancy.tenants', 'multitenancy.members', 'multitenancy.plans',
                             'multitenancy.quotas']::regclass[] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER multitenancy_registry_changed AFTER INSERT OR UPDATE OR DELETE ON %1$s
                 FOR EACH ROW EXECUTE FUNCTION multitenancy._registry_changed();
             CREATE TRIGGER multitenancy_registry_truncated AFTER TRUNCATE ON %1$s
                 FOR EACH STATEMENT EXECUTE FUNCTION multitenancy._registry_changed();
             ALTER TABLE %1$s ENABLE ALWAYS TRIGGER multitenancy_registry_changed;
             ALTER TABLE %1$s ENABLE ALWAYS TRIGGER multitenancy_registry_truncated;', t);
    END LOOP;
END
$$;

-- The DDL guard (src/tables/guard.rs; its functions _guard_ddl and _guard_drop run as the role doing
-- the DDL; _guard_drop also takes dropped tables out of the registry, as its owner). ENABLE ALWAYS: session_replication_role = replica does not switch them off; only
-- the superuser-only setting multitenancy.ddl_guard does, and every unchecked command is logged.
CREATE EVENT TRIGGER multitenancy_guard_ddl ON ddl_command_end
    EXECUTE FUNCTION multitenancy._guard_ddl();
ALTER EVENT TRIGGER multitenancy_guard_ddl ENABLE ALWAYS;

CREATE EVENT TRIGGER multitenancy_guard_drop ON sql_drop
    EXECUTE FUNCTION multitenancy._guard_drop();
ALTER EVENT TRIGGER multitenancy_guard_drop ENABLE ALWAYS;

-- Dropping the extension must not leave an enabled table open (src/tables/guard.rs,
-- drop_would_open): refused while an enabled table has a permissive policy of its own.
CREATE EVENT TRIGGER multitenancy_guard_start ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION multitenancy._guard_start();
ALTER EVENT TRIGGER multitenancy_guard_start ENABLE ALWAYS;
