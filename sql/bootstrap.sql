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
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_slug_format CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    CONSTRAINT tenants_name_length CHECK (pg_catalog.length(pg_catalog.btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT tenants_status_values CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_plan_format CHECK (plan ~ '^[a-z0-9_-]{1,63}$'),
    CONSTRAINT tenants_settings_object CHECK (pg_catalog.jsonb_typeof(settings) = 'object')
);
COMMENT ON TABLE multitenancy.tenants IS
    'Tenant registry. Create tenants with multitenancy.tenant_create(); rows are kept by pg_dump.';

CREATE FUNCTION multitenancy._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
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
    CONSTRAINT enabled_tables_pkey PRIMARY KEY (relid)
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
