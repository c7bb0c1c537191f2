-- multitenancy bootstrap: the registry tables. Runs before any function is created.
--
-- The registry is the extension's data: pg_extension_config_dump makes pg_dump keep its rows,
-- nothing is granted to PUBLIC, and it changes only through the extension's functions.

CREATE TABLE multitenancy.tenants (
    id          uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    slug        text        NOT NULL,
    name        text        NOT NULL,
    status      text        NOT NULL DEFAULT 'active',
    plan        text        NOT NULL DEFAULT 'free',
    settings    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    status_reason text,
    deleted_at  timestamptz,
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_name_length CHECK (pg_catalog.length(pg_catalog.btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT tenants_status_values CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_settings_object CHECK (pg_catalog.jsonb_typeof(settings) = 'object'),
    CONSTRAINT tenants_deleted_at CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
COMMENT ON TABLE multitenancy.tenants IS
    'Tenant registry. Create tenants with multitenancy.tenant_create(); rows are kept by pg_dump.';

CREATE FUNCTION multitenancy._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    -- deleted_at follows the status, also for a DBA's direct UPDATE.
    IF NEW.status = 'deleted' AND NEW.deleted_at IS NULL THEN
        NEW.deleted_at := pg_catalog.now();
    ELSIF NEW.status <> 'deleted' THEN
        NEW.deleted_at := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tenants_touch_updated_at BEFORE UPDATE ON multitenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION multitenancy._touch_updated_at();

SELECT pg_catalog.pg_extension_config_dump('multitenancy.tenants', '');

CREATE TABLE multitenancy.enabled_tables (
    relid       regclass    NOT NULL,
    enabled_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by  name        NOT NULL,
    -- 'global': the primary key stays as the application made it (ids unique across tenants);
    -- 'tenant': the primary key is (tenant_id, ...), so natural keys exist once per tenant
    -- (multitenancy.tenant_key_scope()).
    key_scope   text        NOT NULL DEFAULT 'global',
    CONSTRAINT enabled_tables_pkey PRIMARY KEY (relid),
    CONSTRAINT enabled_tables_key_scope CHECK (key_scope IN ('global', 'tenant'))
);
COMMENT ON TABLE multitenancy.enabled_tables IS
    'Tables protected by multitenancy.tenant_enable(). Maintained by the extension; rows are kept by pg_dump.';

SELECT pg_catalog.pg_extension_config_dump('multitenancy.enabled_tables', '');

CREATE TABLE multitenancy.exempt_tables (
    relid       regclass    NOT NULL,
    reason      text        NOT NULL,
    exempted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    exempted_by name        NOT NULL,
    CONSTRAINT exempt_tables_pkey PRIMARY KEY (relid),
    CONSTRAINT exempt_tables_reason CHECK (pg_catalog.length(pg_catalog.btrim(reason)) > 0)
);
COMMENT ON TABLE multitenancy.exempt_tables IS
    'Global tables (not tenant data), declared with multitenancy.tenant_exempt(). Rows are kept by pg_dump.';

SELECT pg_catalog.pg_extension_config_dump('multitenancy.exempt_tables', '');

-- Name patterns of tables that are global when they are created (framework bookkeeping such as
-- django_migrations): the DDL guard exempts a new table in a guarded schema whose name matches
-- (LIKE) one of them. Declared with multitenancy.exempt_pattern(); see sql/tables.sql.
CREATE TABLE multitenancy.exempt_patterns (
    pattern     text        NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name        NOT NULL DEFAULT current_user,
    CONSTRAINT exempt_patterns_pkey PRIMARY KEY (pattern),
    CONSTRAINT exempt_patterns_reason CHECK (pg_catalog.length(pg_catalog.btrim(reason)) > 0),
    CONSTRAINT exempt_patterns_pattern CHECK (pg_catalog.length(pattern) BETWEEN 1 AND 200)
);
COMMENT ON TABLE multitenancy.exempt_patterns IS
    'Name patterns of tables declared global before they exist (multitenancy.exempt_pattern()). Rows are kept by pg_dump.';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.exempt_patterns', '');

-- Tenant templates: rows every tenant gets a copy of (multitenancy.tenant_template()), as they
-- were captured from a table (without tenant_id and generated ids).
CREATE TABLE multitenancy.templates (
    relid       regclass    NOT NULL,
    n           integer     NOT NULL,
    row_data    jsonb       NOT NULL,
    CONSTRAINT templates_pkey PRIMARY KEY (relid, n)
);
COMMENT ON TABLE multitenancy.templates IS
    'Rows every tenant gets a copy of when it is created (multitenancy.tenant_template()). Rows are kept by pg_dump.';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.templates', '');

-- Members of a tenant: end users (multitenancy.user_id) and their role in it.
CREATE TABLE multitenancy.members (
    tenant_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    role        text        NOT NULL DEFAULT 'member',
    joined_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    invited_by  uuid,
    CONSTRAINT members_pkey PRIMARY KEY (tenant_id, user_id),
    CONSTRAINT members_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES multitenancy.tenants (id)
);
CREATE INDEX members_user_id_idx ON multitenancy.members (user_id);
COMMENT ON TABLE multitenancy.members IS
    'Members of each tenant and their roles. Change them with multitenancy.member_add() and friends.';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.members', '');

-- Host names as stored and looked up: lower case, surrounding blanks, a trailing dot and a
-- :port removed; NULL for anything that is not a DNS host name (letters, digits, '-', at least
-- two labels, labels of 1 to 63 characters, at most 253 in all; internationalised names in
-- their xn-- form).
CREATE FUNCTION multitenancy.domain_normalize(host text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN pg_catalog.length(h) <= 253
                 AND h ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
                THEN h END
      FROM (SELECT pg_catalog.regexp_replace(
                       pg_catalog.regexp_replace(pg_catalog.lower(pg_catalog.btrim(host)), ':[0-9]{1,5}$', ''),
                       '\.$', '') AS h) AS normalised
$$;

-- Host names that route to a tenant (multitenancy.tenant_resolve). Stored normalised.
CREATE TABLE multitenancy.domains (
    domain              text        NOT NULL,
    tenant_id           uuid        NOT NULL,
    is_primary          boolean     NOT NULL DEFAULT false,
    verification_token  text        NOT NULL,
    verified_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT domains_pkey PRIMARY KEY (domain),
    CONSTRAINT domains_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES multitenancy.tenants (id),
    CONSTRAINT domains_normalised CHECK (domain = multitenancy.domain_normalize(domain))
);
CREATE UNIQUE INDEX domains_one_primary ON multitenancy.domains (tenant_id) WHERE is_primary;
CREATE INDEX domains_tenant_id_idx ON multitenancy.domains (tenant_id);
COMMENT ON TABLE multitenancy.domains IS
    'Custom domains of tenants. Change them with multitenancy.domain_add(), domain_verify(), domain_remove().';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.domains', '');

-- Plans: limits (quotas) and features every tenant on the plan gets unless it overrides them.
CREATE TABLE multitenancy.plans (
    name        text        NOT NULL,
    limits      jsonb       NOT NULL DEFAULT '{}',
    features    jsonb       NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT plans_pkey PRIMARY KEY (name),
    CONSTRAINT plans_limits_object CHECK (pg_catalog.jsonb_typeof(limits) = 'object'),
    CONSTRAINT plans_features_object CHECK (pg_catalog.jsonb_typeof(features) = 'object')
);
COMMENT ON TABLE multitenancy.plans IS
    'Plans: default limits and features of their tenants. Change them with multitenancy.plan_set().';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.plans', '');

-- Every state change the extension's functions make, append-only (see finalize.sql).
CREATE TABLE multitenancy.audit_log (
    id           bigint      GENERATED BY DEFAULT AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    session_role name        NOT NULL DEFAULT session_user,
    acting_role  name        NOT NULL,
    user_id      uuid,
    tenant_id    uuid,
    action       text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT audit_log_pkey PRIMARY KEY (id)
);
CREATE INDEX audit_log_tenant_id_idx ON multitenancy.audit_log (tenant_id, at);
COMMENT ON TABLE multitenancy.audit_log IS
    'Who changed what: lifecycle, member, domain, setting and admin actions. Append-only.';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('multitenancy.audit_log_id_seq', '');

-- Quotas (src/quotas.rs). A tenant's limit for a key is its override here if it has one (NULL:
-- unlimited), else its plan's `limits` entry, else unlimited. Keys: 'members', 'rows', 'bytes',
-- 'rows:<table>', and any other name for a metered counter (multitenancy.usage_record).
CREATE TABLE multitenancy.quotas (
    tenant_id   uuid        NOT NULL,
    key         text        NOT NULL,
    quota       bigint,
    set_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT quotas_pkey PRIMARY KEY (tenant_id, key),
    CONSTRAINT quotas_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES multitenancy.tenants (id),
    CONSTRAINT quotas_not_negative CHECK (quota >= 0)
);
COMMENT ON TABLE multitenancy.quotas IS
    'Per-tenant quota overrides (NULL: unlimited). Change them with multitenancy.quota_set() / quota_reset().';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.quotas', '');

-- Exact counters of the rows and bytes each tenant stores in tenant-enabled tables, maintained by
-- the triggers of src/quotas.rs: one row per tenant and physical table (partitions count
-- separately), and per tenant a row of totals with relid 0 (printed '-'), which one UPDATE
-- changes together with the table's row.
CREATE TABLE multitenancy.table_usage (
    tenant_id   uuid        NOT NULL,
    relid       regclass    NOT NULL,
    row_count   bigint      NOT NULL DEFAULT 0,
    byte_count  bigint      NOT NULL DEFAULT 0,
    CONSTRAINT table_usage_pkey PRIMARY KEY (tenant_id, relid)
) WITH (fillfactor = 50);
-- No foreign key to tenants: its check trigger would cost every counted write about as much as
-- the counting itself. Rows are written only for tenants that exist (tenant_purge removes them).
COMMENT ON TABLE multitenancy.table_usage IS
    'Rows and bytes of each tenant per tenant-enabled table (exact; see multitenancy.usage_drift()).';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.table_usage', '');

-- Metered usage (multitenancy.usage_record): one counter per tenant, key and calendar month (UTC).
CREATE TABLE multitenancy.metered_usage (
    tenant_id   uuid        NOT NULL,
    key         text        NOT NULL,
    period      date        NOT NULL,
    used        bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT metered_usage_pkey PRIMARY KEY (tenant_id, key, period),
    CONSTRAINT metered_usage_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES multitenancy.tenants (id)
);
COMMENT ON TABLE multitenancy.metered_usage IS
    'Metered usage per tenant, key and month (UTC), recorded with multitenancy.usage_record().';
SELECT pg_catalog.pg_extension_config_dump('multitenancy.metered_usage', '');

-- Signing keys for signed tenant contexts (multitenancy.tenant_token / tenant_set_signed). The
-- secrets are readable only by superusers and the extension's owner: no privilege is granted on
-- this table, and no function returns a secret. Deliberately not config-dumped: pg_dump output
-- travels further than the database should let a signing secret go, and a non-superuser's
-- pg_dump could not read the table. After a restore, add the keys again (signing_key_add).
CREATE TABLE multitenancy.signing_keys (
    name        text        NOT NULL,
    secret      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    retired_at  timestamptz,
    CONSTRAINT signing_keys_pkey PRIMARY KEY (name),
    CONSTRAINT signing_keys_secret_check CHECK (pg_catalog.length(secret) OPERATOR(pg_catalog.>=) 32)
);
COMMENT ON TABLE multitenancy.signing_keys IS
    'HMAC-SHA256 keys for signed tenant contexts. Superusers only; never dumped.';
