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

-- Moving tenants (sql/moving.sql, src/tenants/moving.rs): export and import of one tenant for
-- mt-move. _tenant_purge now deletes rows through _tenant_rows_delete, which a restore shares.

-- The enabled tables a tenant's rows live in, parents before children (foreign keys between
-- enabled tables), with what an export and an import need to know about each: the columns the
-- archive carries (all but tenant_id and generated columns, with their types), the primary key's integer column an import may remap (a key without tenant_id, filled
-- from a sequence), the foreign keys to enabled tables, and every sequence-filled column. Partitions and inheritance children are
-- read and written through their parent and are not listed. Catalog reads only.
CREATE FUNCTION multitenancy.move_tables()
RETURNS TABLE (load_order integer, table_name regclass, columns jsonb, remap_column text,
               remap_sequence regclass, refs jsonb, sequences jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_tables oid[];
    v_done oid[] := '{}';
    v_ready oid[];
    v_pos integer := 0;
    v_t oid;
BEGIN
    SELECT coalesce(array_agg(e.relid::oid ORDER BY e.relid::text), '{}') INTO v_tables
      FROM multitenancy.enabled_tables e
      JOIN pg_class c ON c.oid = e.relid
     WHERE NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN multitenancy.enabled_tables p ON p.relid::oid = i.inhparent
                        WHERE i.inhrelid = e.relid::oid);
    -- Parents first: a table is ready when every enabled table it references is placed. A cycle
    -- of foreign keys places the rest in name order (an import of them fails: README "Moving
    -- tenants", limits).
    WHILE cardinality(v_done) < cardinality(v_tables) LOOP
        SELECT coalesce(array_agg(t ORDER BY t::regclass::text), '{}') INTO v_ready
          FROM unnest(v_tables) t
         WHERE t <> ALL (v_done)
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                            WHERE k.conrelid = t AND k.contype = 'f' AND k.confrelid <> t
                              AND k.confrelid = ANY (v_tables) AND k.confrelid <> ALL (v_done));
        IF cardinality(v_ready) = 0 THEN
            SELECT array_agg(t ORDER BY t::regclass::text) INTO v_ready FROM unnest(v_tables) t WHERE t <> ALL (v_done);
        END IF;
        FOREACH v_t IN ARRAY v_ready LOOP
            v_pos := v_pos + 1;
            v_done := v_done || v_t;
            load_order := v_pos;
            table_name := v_t::regclass;
            SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                                         'not_null', a.attnotnull, 'has_default', a.atthasdef OR a.attidentity <> '')
                                      ORDER BY a.attnum), '[]')
              INTO columns
              FROM pg_attribute a
             WHERE a.attrelid = v_t AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               AND a.attname <> 'tenant_id';
            SELECT coalesce(jsonb_agg(jsonb_build_object('column', a.attname, 'sequence', d.objid::regclass::text)
                                      ORDER BY a.attnum), '[]')
              INTO sequences
              FROM pg_depend d
              JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
              JOIN pg_attribute a ON a.attrelid = v_t AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = v_t AND d.deptype IN ('a', 'i');
            remap_column := NULL;
            remap_sequence := NULL;
            -- The primary key's one sequence-filled integer column, unless the key includes
            -- tenant_id (then ids repeat per tenant and nothing collides).
            SELECT min(x.col), min(x.seq::oid)::regclass INTO remap_column, remap_sequence
              FROM (SELECT a.attname::text AS col,
                           (SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                               AND d.refobjid = v_t AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')) AS seq
                      FROM pg_constraint k
                      JOIN pg_attribute a ON a.attrelid = v_t AND a.attnum = ANY (k.conkey)
                     WHERE k.conrelid = v_t AND k.contype = 'p'
                       AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                       AND NOT EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = v_t AND t.attnum = ANY (k.conkey)
                                          AND t.attname = 'tenant_id')) x
             WHERE x.seq IS NOT NULL
            HAVING count(*) = 1;
            IF remap_sequence IS NULL THEN
                remap_column := NULL;
            END IF;
            -- Foreign keys to enabled tables, as (column, referenced table, referenced column)
            -- pairs without tenant_id.
            SELECT coalesce(jsonb_agg(jsonb_build_object('column', ca.attname, 'table', k.confrelid::regclass::text,
                                                         'ref_column', ra.attname)
                                      ORDER BY k.conname, p.i), '[]')
              INTO refs
              FROM pg_constraint k
             CROSS JOIN LATERAL generate_subscripts(k.conkey, 1) p(i)
              JOIN pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = k.conkey[p.i]
              JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.confkey[p.i]
             WHERE k.conrelid = v_t AND k.contype = 'f' AND k.confrelid = ANY (v_tables)
               AND ca.attname <> 'tenant_id';
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- What does not fit when an archive's tables are imported here: one row per problem. Severity
-- 'error' (the import is refused): a table of the archive that is not an enabled table here, a
-- column of the archive the table lacks (its values would be lost), a column whose type
-- differs, a column the archive lacks that is NOT NULL without a default. 'info': a table
-- without rows in the archive that is enabled here, a column the archive lacks that gets its
-- default or NULL.
CREATE FUNCTION multitenancy.import_check(archive jsonb)
RETURNS TABLE (severity text, table_name text, problem text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH here AS (
        SELECT m.table_name::text AS name, m.columns FROM multitenancy.move_tables() m),
    there AS (
        SELECT t->>'name' AS name, t->'columns' AS columns
          FROM jsonb_array_elements(coalesce(archive->'tables', '[]')) t),
    problems AS (
        SELECT 'error' AS severity, x.name AS table_name,
               'the archive has rows of table ' || x.name || ', which is not a tenant-enabled table here' AS problem,
               1 AS k, '' AS c
          FROM there x WHERE NOT EXISTS (SELECT 1 FROM here h WHERE h.name = x.name)
        UNION ALL
        SELECT 'info', h.name, 'table ' || h.name || ' is not in the archive: the tenant has no rows in it', 2, ''
          FROM here h WHERE NOT EXISTS (SELECT 1 FROM there x WHERE x.name = h.name)
        UNION ALL
        SELECT CASE WHEN hc IS NULL THEN 'error'
                    WHEN hc->>'type' <> xc->>'type' THEN 'error' END,
               x.name,
               CASE WHEN hc IS NULL THEN 'column ' || (xc->>'name') || ' of the archive is not in table ' || x.name || ' (its values would be lost)'
                    ELSE 'column ' || (xc->>'name') || ' of table ' || x.name || ' is ' || (hc->>'type') || ' here and '
                         || (xc->>'type') || ' in the archive' END,
               3, xc->>'name'
          FROM there x JOIN here h ON h.name = x.name
         CROSS JOIN LATERAL jsonb_array_elements(x.columns) xc
          LEFT JOIN LATERAL (SELECT c FROM jsonb_array_elements(h.columns) c WHERE c->>'name' = xc->>'name') hh(hc) ON true
         WHERE hc IS NULL OR hc->>'type' <> xc->>'type'
        UNION ALL
        SELECT CASE WHEN (hc->>'not_null')::boolean AND NOT (hc->>'has_default')::boolean THEN 'error' ELSE 'info' END,
               h.name,
               'column ' || (hc->>'name') || ' of table ' || h.name || ' is not in the archive: '
               || CASE WHEN (hc->>'not_null')::boolean AND NOT (hc->>'has_default')::boolean
                       THEN 'it is NOT NULL without a default'
                       WHEN (hc->>'has_default')::boolean THEN 'imported rows get its default'
                       ELSE 'imported rows get NULL' END,
               4, hc->>'name'
          FROM there x JOIN here h ON h.name = x.name
         CROSS JOIN LATERAL jsonb_array_elements(h.columns) hc
         WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(x.columns) xc WHERE xc->>'name' = hc->>'name'))
    SELECT p.severity, p.table_name, p.problem FROM problems p ORDER BY p.severity, p.table_name, p.k, p.c
$$;

-- Delete every row of one tenant from every tenant-enabled table, children before parents (a
-- table whose delete hits a foreign key waits for the next round), each DELETE as the table's
-- owner (see _purge_rows). Returns the rows per physical table and the total.
CREATE FUNCTION multitenancy._tenant_rows_delete(p_tenant uuid, p_slug text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tables jsonb := '{}';
    v_pending regclass[];
    v_failed regclass[];
    v_table regclass;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    -- Count first: rows that foreign keys cascade to are counted in their own table.
    FOR v_table IN SELECT DISTINCT u.t FROM multitenancy.enabled_tables e
                    CROSS JOIN LATERAL multitenancy._usage_tables(e.relid) u(t)
                     JOIN pg_class c ON c.oid = u.t WHERE c.relkind = 'r' ORDER BY 1 LOOP
        v_rows := multitenancy._purge_rows(v_table, p_tenant, false);
        v_tables := v_tables || jsonb_build_object(v_table::text, v_rows);
        v_total := v_total + v_rows;
    END LOOP;
    SELECT array_agg(relid ORDER BY relid::oid) INTO v_pending FROM multitenancy.enabled_tables;
    v_pending := coalesce(v_pending, '{}');
    WHILE cardinality(v_pending) > 0 LOOP
        v_failed := '{}';
        FOREACH v_table IN ARRAY v_pending LOOP
            BEGIN
                PERFORM multitenancy._purge_rows(v_table, p_tenant, true);
            EXCEPTION WHEN foreign_key_violation THEN
                v_failed := v_failed || v_table;
            END;
        END LOOP;
        IF cardinality(v_failed) = cardinality(v_pending) THEN
            PERFORM multitenancy._raise('purge_referenced', ARRAY[p_slug, v_failed::text]);
        END IF;
        v_pending := v_failed;
    END LOOP;
    RETURN jsonb_build_object('rows', v_total, 'tables', v_tables);
END
$$;

-- The registry part of an archive: the tenant, its members, domains, quota overrides, metered
-- usage and counters, and the tables with their columns (see README "Moving tenants").
CREATE FUNCTION multitenancy._tenant_export(p_tenant uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tenant multitenancy.tenants;
    v_archive jsonb;
BEGIN
    PERFORM multitenancy._lock_tenant(p_tenant);
    SELECT * INTO v_tenant FROM multitenancy.tenants WHERE id = p_tenant;
    v_archive := jsonb_build_object(
        'format', 1,
        'extension_version', (SELECT extversion FROM pg_extension WHERE extname = 'multitenancy'),
        'exported_at', now(),
        'tenant', jsonb_build_object('id', v_tenant.id, 'slug', v_tenant.slug, 'name', v_tenant.name,
                                     'status', v_tenant.status, 'plan', v_tenant.plan, 'settings', v_tenant.settings,
                                     'status_reason', v_tenant.status_reason, 'deleted_at', v_tenant.deleted_at,
                                     'created_at', v_tenant.created_at),
        'members', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'role', role, 'joined_at', joined_at,
                                                                 'invited_by', invited_by) ORDER BY user_id), '[]')
                      FROM multitenancy.members WHERE tenant_id = p_tenant),
        'domains', (SELECT coalesce(jsonb_agg(jsonb_build_object('domain', domain, 'is_primary', is_primary,
                                                                 'verification_token', verification_token,
                                                                 'verified_at', verified_at, 'created_at', created_at)
                                              ORDER BY domain), '[]')
                      FROM multitenancy.domains WHERE tenant_id = p_tenant),
        'quotas', (SELECT coalesce(jsonb_agg(jsonb_build_object('key', key, 'quota', quota) ORDER BY key), '[]')
                     FROM multitenancy.quotas WHERE tenant_id = p_tenant),
        'metered_usage', (SELECT coalesce(jsonb_agg(jsonb_build_object('key', key, 'period', period, 'used', used)
                                                    ORDER BY key, period), '[]')
                            FROM multitenancy.metered_usage WHERE tenant_id = p_tenant),
        'tables', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', m.table_name::text, 'columns', m.columns)
                                             ORDER BY m.load_order), '[]')
                     FROM multitenancy.move_tables() m));
    RETURN jsonb_build_object('result', v_archive::text, 'slug', v_tenant.slug);
END
$$;

-- Start importing an archive (checked by the caller: format, version, import_check): as a new
-- tenant (p_mode 'new': the archive's slug unless p_slug, the archive's id unless taken), or
-- replacing an existing tenant's rows and registry entries ('replace': the tenant p_slug, or the
-- tenant with the archive's id). The archive's registry entries are checked as the functions
-- that make them check them; its domains arrive unverified (an operator verifies them again).
-- Returns the tenant's id as "result".
CREATE FUNCTION multitenancy._tenant_import_begin(p_archive jsonb, p_slug text, p_mode text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_t jsonb := p_archive->'tenant';
    v_slug text := coalesce(p_slug, v_t->>'slug');
    v_id uuid;
    v_plan text := coalesce(v_t->>'plan', 'free');
    v_status text := coalesce(v_t->>'status', 'active');
    v_deleted jsonb;
    v_had_owner boolean;
    v_base text := multitenancy._base_domain();
    v_bad text;
BEGIN
    IF jsonb_typeof(v_t) IS DISTINCT FROM 'object' THEN
        PERFORM multitenancy._raise('archive_invalid', ARRAY['it has no "tenant" object',
            'Import a manifest written by tenant_export (mt-move export).']);
    END IF;
    -- The archive's limits come with its plan: a plan missing here would silently lift them
    -- ('free', every tenant's default, needs no row).
    IF v_plan <> 'free' AND NOT EXISTS (SELECT 1 FROM multitenancy.plans WHERE name = v_plan) THEN
        PERFORM multitenancy._raise('plan_not_found', ARRAY[v_plan]);
    END IF;
    SELECT k INTO v_bad FROM jsonb_object_keys(coalesce(v_t->'settings', '{}')) k
     WHERE k !~ '^[a-z0-9_.:-]{1,100}$' LIMIT 1;
    IF v_bad IS NOT NULL THEN
        PERFORM multitenancy._raise('archive_invalid', ARRAY[format('setting key %L is not [a-z0-9_.:-]{1,100}', v_bad),
            'Fix the setting key in the archive''s manifest.json.']);
    END IF;
    SELECT u->>'key' INTO v_bad FROM jsonb_array_elements(coalesce(p_archive->'metered_usage', '[]')) u
     WHERE (u->>'used')::bigint < 0 OR (u->>'period')::date <> date_trunc('month', (u->>'period')::date)::date
        OR NOT multitenancy._quota_is_metered(u->>'key') LIMIT 1;
    IF FOUND THEN
        PERFORM multitenancy._raise('archive_invalid', ARRAY[format('metered usage of %L is not a count >= 0 of a metered key for the first day of a month', v_bad),
            'Fix the metered usage in the archive''s manifest.json.']);
    END IF;
    SELECT d->>'domain' INTO v_bad FROM jsonb_array_elements(coalesce(p_archive->'domains', '[]')) d
     WHERE multitenancy.domain_normalize(d->>'domain') IS DISTINCT FROM d->>'domain'
        OR (v_base IS NOT NULL AND v_base <> '' AND (d->>'domain' = v_base OR d->>'domain' LIKE '%.' || v_base)) LIMIT 1;
    IF FOUND THEN
        PERFORM multitenancy._raise('archive_invalid', ARRAY[format('domain %L is not a normalised custom domain outside multitenancy.base_domain', v_bad),
            'Remove it from the archive''s manifest.json; hosts under the base domain route by slug.']);
    END IF;
    IF p_mode = 'new' THEN
        v_id := (v_t->>'id')::uuid;
        IF v_id IS NULL OR EXISTS (SELECT 1 FROM multitenancy.tenants WHERE id = v_id) THEN
            v_id := gen_random_uuid();
        END IF;
        INSERT INTO multitenancy.tenants (id, slug, name, status, plan, settings, status_reason, deleted_at)
        VALUES (v_id, v_slug, coalesce(v_t->>'name', v_slug), v_status, v_plan, coalesce(v_t->'settings', '{}'),
                v_t->>'status_reason',
                CASE WHEN v_status = 'deleted' THEN coalesce((v_t->>'deleted_at')::timestamptz, now()) END)
        ON CONFLICT (slug) DO NOTHING;
        IF NOT FOUND THEN
            PERFORM multitenancy._raise('slug_taken', ARRAY[v_slug]);
        END IF;
    ELSE
        SELECT id INTO v_id FROM multitenancy.tenants
         WHERE CASE WHEN p_slug IS NULL THEN id = (v_t->>'id')::uuid ELSE slug = p_slug END;
        IF v_id IS NULL THEN
            PERFORM multitenancy._raise('tenant_not_found', ARRAY[coalesce(p_slug, v_t->>'id')]);
        END IF;
        v_slug := multitenancy._lock_tenant(v_id);
        -- Without a named tenant, the archive's id and slug must both be the tenant's.
        IF p_slug IS NULL AND v_slug IS DISTINCT FROM v_t->>'slug' THEN
            PERFORM multitenancy._raise('archive_invalid', ARRAY[
                format('the archive''s tenant %L has the id of tenant %L here', v_t->>'slug', v_slug),
                format('To replace %L with it anyway, name it: tenant => %L (mt-move import --replace --as %s).',
                       v_slug, v_slug, v_slug)]);
        END IF;
        -- Writers of the tenant finish first, and wait until this import commits.
        PERFORM multitenancy._usage_lock(v_id);
        v_had_owner := EXISTS (SELECT 1 FROM multitenancy.members WHERE tenant_id = v_id AND role = 'owner');
        IF v_had_owner AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(p_archive->'members', '[]')) m
                                        WHERE m->>'role' = 'owner') THEN
            PERFORM multitenancy._raise('last_owner', ARRAY['remove', v_slug]);
        END IF;
        v_deleted := multitenancy._tenant_rows_delete(v_id, v_slug);
        DELETE FROM multitenancy.members WHERE tenant_id = v_id;
        DELETE FROM multitenancy.domains WHERE tenant_id = v_id;
        DELETE FROM multitenancy.quotas WHERE tenant_id = v_id;
        DELETE FROM multitenancy.metered_usage WHERE tenant_id = v_id;
        UPDATE multitenancy.tenants
           SET name = coalesce(v_t->>'name', name), plan = v_plan, settings = coalesce(v_t->'settings', '{}')
         WHERE id = v_id;
    END IF;
    INSERT INTO multitenancy.members (tenant_id, user_id, role, joined_at, invited_by)
    SELECT v_id, (m->>'user_id')::uuid, m->>'role', coalesce((m->>'joined_at')::timestamptz, now()), (m->>'invited_by')::uuid
      FROM jsonb_array_elements(coalesce(p_archive->'members', '[]')) m;
    FOR v_bad IN SELECT d->>'domain' FROM jsonb_array_elements(coalesce(p_archive->'domains', '[]')) d LOOP
        IF EXISTS (SELECT 1 FROM multitenancy.domains WHERE domain = v_bad) THEN
            PERFORM multitenancy._raise('domain_taken', ARRAY[v_bad]);
        END IF;
    END LOOP;
    INSERT INTO multitenancy.domains (domain, tenant_id, is_primary, verification_token, verified_at, created_at)
    SELECT d->>'domain', v_id, coalesce((d->>'is_primary')::boolean, false), d->>'verification_token', NULL,
           coalesce((d->>'created_at')::timestamptz, now())
      FROM jsonb_array_elements(coalesce(p_archive->'domains', '[]')) d;
    INSERT INTO multitenancy.quotas (tenant_id, key, quota)
    SELECT v_id, multitenancy._quota_key(q->>'key'), (q->>'quota')::bigint
      FROM jsonb_array_elements(coalesce(p_archive->'quotas', '[]')) q;
    INSERT INTO multitenancy.metered_usage (tenant_id, key, period, used)
    SELECT v_id, u->>'key', (u->>'period')::date, (u->>'used')::bigint
      FROM jsonb_array_elements(coalesce(p_archive->'metered_usage', '[]')) u;
    -- The archive's plan and quotas decide whether the tenant is counted from now on.
    PERFORM multitenancy._usage_reconcile(v_id);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'result', v_id, 'tenant_id', v_id, 'slug', v_slug, 'mode', p_mode, 'archive', p_archive->>'archive_id',
        'source_tenant', v_t->>'id', 'source_slug', v_t->>'slug', 'rows_deleted', v_deleted->'rows'));
END
$$;

-- Finish an import: what the tenant holds per physical table, from its counters (which the
-- usage triggers kept exact while the rows went in, including what this transaction has not
-- written yet); with p_recount, first set them from the rows (one index scan per physical
-- table), for counters that drifted before the import.
CREATE FUNCTION multitenancy._tenant_import_end(p_tenant uuid, p_recount boolean)
RETURNS TABLE (table_name regclass, row_count bigint, byte_count bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF p_recount THEN
        -- Counters dropped and, if the tenant is counted (it has a rows or bytes limit), set
        -- from the rows again.
        PERFORM multitenancy._usage_settle(p_tenant);
        PERFORM multitenancy._usage_lock(p_tenant);
        DELETE FROM multitenancy.table_usage u WHERE u.tenant_id = p_tenant;
        PERFORM multitenancy._usage_reconcile(p_tenant);
    END IF;
    RETURN QUERY SELECT c.relid::regclass, c.row_count, c.byte_count FROM multitenancy._usage_report(p_tenant) c
                  WHERE c.tenant_id = p_tenant AND c.relid <> 0 AND c.row_count <> 0 ORDER BY c.relid::regclass::text;
END
$$;

CREATE OR REPLACE FUNCTION multitenancy._tenant_purge(p_tenant uuid, p_confirm_slug text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_status text;
    v_deleted jsonb;
BEGIN
    SELECT status INTO v_status FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_status <> 'deleted' THEN
        PERFORM multitenancy._raise('cannot_purge', ARRAY[v_slug, v_status]);
    END IF;
    IF p_confirm_slug IS DISTINCT FROM v_slug THEN
        PERFORM multitenancy._raise('purge_unconfirmed', '{}');
    END IF;
    -- Its rows in every enabled table, as each table's owner (sql/moving.sql).
    v_deleted := multitenancy._tenant_rows_delete(p_tenant, v_slug);
    DELETE FROM multitenancy.members WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.domains WHERE tenant_id = p_tenant;
    -- Counted rows of this transaction not yet written are gone with the counters.
    PERFORM multitenancy._usage_settle(p_tenant);
    DELETE FROM multitenancy.quotas WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.metered_usage WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.table_usage WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.tenants WHERE id = p_tenant;
    RETURN jsonb_build_object('result', v_deleted->'rows', 'slug', v_slug, 'rows', v_deleted->'rows',
                              'tables', v_deleted->'tables');
END
$$;

CREATE  FUNCTION "tenant_export"(
	"tenant" TEXT /* Option < & str > */
) RETURNS jsonb /* pgrx :: JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_export_wrapper';

CREATE  FUNCTION "tenant_import_begin"(
	"archive" jsonb, /* Option < pgrx :: JsonB > */
	"tenant" TEXT DEFAULT NULL, /* Option < & str > */
	"mode" TEXT DEFAULT 'new' /* Option < & str > */
) RETURNS uuid /* pgrx :: Uuid */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_import_begin_wrapper';

CREATE  FUNCTION "tenant_import_rows"(
	"tbl" regclass, /* Option < crate :: catalog :: Regclass > */
	"staging" regclass /* Option < crate :: catalog :: Regclass > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_import_rows_wrapper';

CREATE  FUNCTION "tenant_import_keys"(
	"tbl" regclass, /* Option < crate :: catalog :: Regclass > */
	"staging" regclass, /* Option < crate :: catalog :: Regclass > */
	"skip_column" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"key" TEXT,  /* String */
	"collisions" bigint,  /* i64 */
	"examples" TEXT[]  /* Vec < Option < String > > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_import_keys_wrapper';

CREATE  FUNCTION "tenant_import_sequences"(
	"tbl" regclass /* Option < crate :: catalog :: Regclass > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_import_sequences_wrapper';

CREATE  FUNCTION "tenant_import_end"(
	"recount" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"row_count" bigint,  /* i64 */
	"byte_count" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_import_end_wrapper';

REVOKE EXECUTE ON FUNCTION multitenancy._tenant_rows_delete(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._tenant_export(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._tenant_import_begin(jsonb, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._tenant_import_end(uuid, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_export(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_begin(jsonb, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_rows(regclass, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_keys(regclass, regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_sequences(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_import_end(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.move_tables() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy.import_check(jsonb) FROM PUBLIC;

-- Usage is counted only for tenants with a rows, bytes or rows:<table> limit; the others' usage
-- is read from the tables when asked (src/quotas.rs, "Counting"). Tenants without such a limit
-- lose their counters here.
CREATE  FUNCTION "_usage_live"(
	"tenant" uuid /* Option < pgrx :: Uuid > */
) RETURNS TABLE (
	"tenant_id" uuid,  /* pgrx :: Uuid */
	"relid" oid,  /* pg_sys :: Oid */
	"row_count" bigint,  /* i64 */
	"byte_count" bigint  /* i64 */
)
STABLE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_usage_live_wrapper';
CREATE  FUNCTION "_usage_reconcile"(
	"tenant" uuid /* pgrx :: Uuid */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_usage_reconcile_wrapper';
CREATE  FUNCTION "_usage_start"(
	"tenant" uuid /* pgrx :: Uuid */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_usage_start_wrapper';

CREATE  FUNCTION "_usage_actual_in"(
	"p_table" regclass, /* crate :: catalog :: Regclass */
	"p_tenants" uuid[] /* Vec < pgrx :: Uuid > */
) RETURNS TABLE (
	"tenant_id" uuid,  /* pgrx :: Uuid */
	"row_count" bigint,  /* i64 */
	"byte_count" bigint  /* i64 */
)
STRICT STABLE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_usage_actual_in_wrapper';

CREATE OR REPLACE FUNCTION "_usage_actual"(
	"p_table" regclass /* crate :: catalog :: Regclass */
) RETURNS TABLE (
	"tenant_id" uuid,  /* pgrx :: Uuid */
	"row_count" bigint,  /* i64 */
	"byte_count" bigint  /* i64 */
)
STRICT STABLE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_usage_actual_wrapper';

CREATE FUNCTION multitenancy._usage_report(p_tenant uuid)
RETURNS TABLE (tenant_id uuid, relid oid, row_count bigint, byte_count bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH live AS MATERIALIZED (SELECT * FROM multitenancy._usage_live(p_tenant)),
         unwritten AS MATERIALIZED (SELECT * FROM multitenancy._usage_unwritten() w
                                     WHERE p_tenant IS NULL OR w.tenant_id = p_tenant)
    SELECT c.tenant_id, c.relid, sum(c.row_count)::bigint, sum(c.byte_count)::bigint
      FROM (SELECT u.tenant_id, u.relid::oid AS relid, u.row_count, u.byte_count FROM multitenancy.table_usage u
             WHERE p_tenant IS NULL OR u.tenant_id = p_tenant
            UNION ALL
            SELECT w.tenant_id, w.relid, w.rows, w.bytes FROM unwritten w
            UNION ALL
            SELECT w.tenant_id, 0, w.rows, w.bytes FROM unwritten w
            UNION ALL
            SELECT l.tenant_id, l.relid, l.row_count, l.byte_count FROM live l
            UNION ALL
            SELECT l.tenant_id, 0, l.row_count, l.byte_count FROM live l) c
     GROUP BY c.tenant_id, c.relid
$$;

CREATE OR REPLACE FUNCTION multitenancy._quota_set(p_tenant uuid, p_key text, p_quota bigint, p_set boolean) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old multitenancy.quotas;
BEGIN
    PERFORM multitenancy._lock_tenant(p_tenant);
    SELECT * INTO v_old FROM multitenancy.quotas WHERE tenant_id = p_tenant AND key = p_key;
    IF NOT p_set THEN
        IF v_old.key IS NULL THEN
            RETURN NULL;
        END IF;
        DELETE FROM multitenancy.quotas WHERE tenant_id = p_tenant AND key = p_key;
        PERFORM multitenancy._usage_reconcile(p_tenant);
        RETURN jsonb_build_object('key', p_key, 'previous', v_old.quota);
    END IF;
    IF v_old.key IS NOT NULL AND v_old.quota IS NOT DISTINCT FROM p_quota THEN
        RETURN NULL;
    END IF;
    INSERT INTO multitenancy.quotas (tenant_id, key, quota) VALUES (p_tenant, p_key, p_quota)
    ON CONFLICT (tenant_id, key) DO UPDATE SET quota = EXCLUDED.quota, set_at = now();
    PERFORM multitenancy._usage_reconcile(p_tenant);
    RETURN jsonb_build_object('key', p_key, 'quota', p_quota, 'previous', v_old.quota,
                              'had_override', v_old.key IS NOT NULL);
END
$$;

CREATE OR REPLACE FUNCTION multitenancy._usage(p_tenant uuid, p_key text)
RETURNS TABLE (used bigint, quota bigint, period_start date, period_end date)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
             WHEN p_key = 'members' THEN
                 (SELECT count(*) FROM multitenancy.members m WHERE m.tenant_id = p_tenant)
             WHEN p_key = 'rows' THEN
                 coalesce((SELECT c.row_count FROM multitenancy._usage_report(p_tenant) c
                            WHERE c.tenant_id = p_tenant AND c.relid = 0), 0)
             WHEN p_key = 'bytes' THEN
                 coalesce((SELECT c.byte_count FROM multitenancy._usage_report(p_tenant) c
                            WHERE c.tenant_id = p_tenant AND c.relid = 0), 0)
             WHEN p_key LIKE 'rows:%' THEN
                 (SELECT coalesce(sum(u.row_count), 0)::bigint
                    FROM multitenancy._usage_tables(to_regclass(substr(p_key, 6))) s(relid)
                    JOIN multitenancy._usage_report(p_tenant) u ON u.tenant_id = p_tenant AND u.relid = s.relid)
             ELSE
                 coalesce((SELECT m.used FROM multitenancy.metered_usage m
                            WHERE m.tenant_id = p_tenant AND m.key = p_key
                              AND m.period = multitenancy._period_start(now())), 0)
           END,
           multitenancy._quota(p_tenant, p_key),
           CASE WHEN metered THEN multitenancy._period_start(now()) END,
           CASE WHEN metered THEN (multitenancy._period_start(now()) + interval '1 month')::date END
      FROM (SELECT multitenancy._quota_is_metered(p_key) AS metered) k
$$;

CREATE OR REPLACE FUNCTION multitenancy.tenant_stats()
RETURNS TABLE (tenant_id uuid, slug text, table_name regclass, rows bigint, bytes bigint, members bigint, usage jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH report AS MATERIALIZED (SELECT * FROM multitenancy._usage_report(NULL)),
         counters AS (SELECT r.tenant_id, r.relid::regclass AS relid, r.row_count, r.byte_count
                        FROM report r WHERE r.relid <> 0),
         totals AS (SELECT r.tenant_id, r.row_count, r.byte_count FROM report r WHERE r.relid = 0)
    SELECT t.id, t.slug, NULL::regclass,
           coalesce((SELECT c.row_count FROM totals c WHERE c.tenant_id = t.id), 0),
           coalesce((SELECT c.byte_count FROM totals c WHERE c.tenant_id = t.id), 0),
           (SELECT count(*) FROM multitenancy.members m WHERE m.tenant_id = t.id),
           (SELECT coalesce(jsonb_object_agg(mu.key, mu.used), '{}') FROM multitenancy.metered_usage mu
             WHERE mu.tenant_id = t.id AND mu.period = multitenancy._period_start(now()))
      FROM multitenancy.tenants t
    UNION ALL
    SELECT c.tenant_id, t.slug, c.relid, c.row_count, c.byte_count, NULL, NULL
      FROM counters c JOIN multitenancy.tenants t ON t.id = c.tenant_id
    ORDER BY 2, 3 NULLS FIRST
$$;

CREATE OR REPLACE FUNCTION multitenancy.usage_drift()
RETURNS TABLE (tenant_id uuid, table_name regclass, rows_counted bigint, rows_actual bigint,
               bytes_counted bigint, bytes_actual bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- Tenants without a limit that needs counting have no counters to drift.
    WITH counted AS (SELECT u.tenant_id FROM multitenancy._usage_totals() u),
    actual AS (
        SELECT a.tenant_id, e.relid, a.row_count, a.byte_count
          FROM multitenancy.enabled_tables e
          JOIN pg_class c ON c.oid = e.relid AND c.relkind = 'r'
         CROSS JOIN LATERAL multitenancy._usage_actual(e.relid) a
         WHERE a.tenant_id IN (SELECT tenant_id FROM counted)
           AND a.tenant_id IN (SELECT id FROM multitenancy.tenants)),
    per_table AS (
        SELECT coalesce(a.tenant_id, u.tenant_id) AS tenant_id, coalesce(a.relid, u.relid) AS relid,
               coalesce(u.row_count, 0) AS rc, coalesce(a.row_count, 0) AS ra,
               coalesce(u.byte_count, 0) AS bc, coalesce(a.byte_count, 0) AS ba
          FROM actual a FULL JOIN multitenancy._usage_counters() u ON u.tenant_id = a.tenant_id AND u.relid = a.relid),
    totals AS (
        SELECT coalesce(s.tenant_id, u.tenant_id) AS tenant_id, NULL::regclass AS relid,
               coalesce(u.row_count, 0) AS rc, coalesce(s.r, 0)::bigint AS ra,
               coalesce(u.byte_count, 0) AS bc, coalesce(s.b, 0)::bigint AS ba
          FROM (SELECT a.tenant_id, sum(a.row_count) AS r, sum(a.byte_count) AS b FROM actual a GROUP BY 1) s
          FULL JOIN multitenancy._usage_totals() u ON u.tenant_id = s.tenant_id)
    SELECT * FROM (SELECT * FROM per_table UNION ALL SELECT * FROM totals) d
     WHERE d.rc <> d.ra OR d.bc <> d.ba
     ORDER BY 1, 2 NULLS FIRST
$$;

CREATE OR REPLACE FUNCTION multitenancy.usage_recompute()
RETURNS TABLE (tenant_id uuid, table_name regclass, rows_counted bigint, rows_actual bigint,
               bytes_counted bigint, bytes_actual bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_table regclass;
    d record;
BEGIN
    -- What this transaction counted and has not written is in the tables already.
    PERFORM multitenancy._usage_settle(NULL);
    FOR v_table IN SELECT e.relid FROM multitenancy.enabled_tables e JOIN pg_class c ON c.oid = e.relid
                    WHERE c.relkind = 'r' ORDER BY e.relid::oid LOOP
        EXECUTE format('LOCK TABLE ONLY %s IN SHARE MODE', v_table);
    END LOOP;
    -- Counters for exactly the tenants with a limit that needs them (set from the tables).
    PERFORM multitenancy._usage_reconcile(t.id), multitenancy._usage_start(t.id) FROM multitenancy.tenants t ORDER BY t.id;
    FOR d IN SELECT * FROM multitenancy.usage_drift() LOOP
        PERFORM multitenancy._usage_lock(d.tenant_id);
        IF d.table_name IS NOT NULL AND d.rows_actual = 0 AND d.bytes_actual = 0 THEN
            DELETE FROM multitenancy.table_usage u WHERE u.tenant_id = d.tenant_id AND u.relid = d.table_name;
        ELSE
            PERFORM multitenancy._usage_set(d.tenant_id, coalesce(d.table_name, 0::oid::regclass),
                                            d.rows_actual, d.bytes_actual);
        END IF;
        tenant_id := d.tenant_id;
        table_name := d.table_name;
        rows_counted := d.rows_counted;
        rows_actual := d.rows_actual;
        bytes_counted := d.bytes_counted;
        bytes_actual := d.bytes_actual;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION multitenancy._usage_recount(p_table regclass) RETURNS bigint
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    v_changed bigint := 0;
BEGIN
    EXECUTE format('LOCK TABLE ONLY %s IN SHARE MODE', p_table);
    FOR d IN SELECT coalesce(a.tenant_id, u.tenant_id) AS tenant_id,
                    coalesce(a.row_count, 0) AS row_count, coalesce(a.byte_count, 0) AS byte_count,
                    coalesce(a.row_count, 0) - coalesce(u.row_count, 0) AS rows_delta,
                    coalesce(a.byte_count, 0) - coalesce(u.byte_count, 0) AS bytes_delta
               FROM (SELECT * FROM multitenancy._usage_actual(p_table) x
                      WHERE x.tenant_id IN (SELECT t.tenant_id FROM multitenancy.table_usage t WHERE t.relid = 0::oid::regclass)
                        AND x.tenant_id IN (SELECT id FROM multitenancy.tenants)) a
               FULL JOIN (SELECT * FROM multitenancy.table_usage WHERE relid = p_table) u ON u.tenant_id = a.tenant_id
              ORDER BY 1 LOOP
        CONTINUE WHEN d.rows_delta = 0 AND d.bytes_delta = 0;
        PERFORM multitenancy._usage_lock(d.tenant_id);
        INSERT INTO multitenancy.table_usage AS u (tenant_id, relid, row_count, byte_count)
        VALUES (d.tenant_id, 0::oid::regclass, d.rows_delta, d.bytes_delta)
        ON CONFLICT (tenant_id, relid) DO UPDATE
           SET row_count = u.row_count + EXCLUDED.row_count, byte_count = u.byte_count + EXCLUDED.byte_count;
        PERFORM multitenancy._usage_set(d.tenant_id, p_table, d.row_count, d.byte_count);
        v_changed := v_changed + 1;
    END LOOP;
    RETURN v_changed;
END
$$;

CREATE OR REPLACE FUNCTION multitenancy._tenant_change_plan(p_tenant uuid, p_plan text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_from text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM multitenancy.plans WHERE name = p_plan) THEN
        PERFORM multitenancy._raise('plan_not_found', ARRAY[p_plan]);
    END IF;
    SELECT plan INTO v_from FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_from = p_plan THEN
        RETURN NULL;
    END IF;
    UPDATE multitenancy.tenants SET plan = p_plan WHERE id = p_tenant;
    PERFORM multitenancy._usage_reconcile(p_tenant);
    RETURN jsonb_build_object('from', v_from, 'to', p_plan);
END
$$;

CREATE OR REPLACE FUNCTION multitenancy._plan_set(p_name text, p_limits jsonb, p_features jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old multitenancy.plans;
BEGIN
    IF jsonb_typeof(coalesce(p_limits, '{}')) <> 'object' OR jsonb_typeof(coalesce(p_features, '{}')) <> 'object' THEN
        PERFORM multitenancy._raise('plan_not_objects', '{}');
    END IF;
    -- Limits: quota keys (stored in their checked form) with a whole number >= 0, or null for
    -- unlimited.
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(p_limits, '{}')) l
                WHERE NOT (jsonb_typeof(l.value) = 'null'
                           OR (jsonb_typeof(l.value) = 'number' AND (l.value #>> '{}')::numeric >= 0
                               AND (l.value #>> '{}')::numeric = trunc((l.value #>> '{}')::numeric)))) THEN
        PERFORM multitenancy._raise('plan_limits_not_whole', '{}');
    END IF;
    SELECT coalesce(jsonb_object_agg(multitenancy._quota_key(l.key), l.value), '{}') INTO p_limits
      FROM jsonb_each(coalesce(p_limits, '{}')) l;
    SELECT * INTO v_old FROM multitenancy.plans WHERE name = p_name FOR UPDATE;
    IF v_old.limits = coalesce(p_limits, '{}') AND v_old.features = coalesce(p_features, '{}') THEN
        RETURN NULL;
    END IF;
    INSERT INTO multitenancy.plans (name, limits, features)
    VALUES (p_name, coalesce(p_limits, '{}'), coalesce(p_features, '{}'))
    ON CONFLICT (name) DO UPDATE SET limits = EXCLUDED.limits, features = EXCLUDED.features, updated_at = now();
    -- Start or stop counting the plan's tenants whose limits now need counters, or no longer do.
    IF v_old.limits IS DISTINCT FROM coalesce(p_limits, '{}') THEN
        PERFORM multitenancy._usage_reconcile(t.id) FROM multitenancy.tenants t WHERE t.plan = p_name ORDER BY t.id;
    END IF;
    RETURN jsonb_build_object('plan', p_name, 'limits', coalesce(p_limits, '{}'), 'features', coalesce(p_features, '{}'),
                              'created', v_old.name IS NULL);
END
$$;

REVOKE EXECUTE ON FUNCTION multitenancy._usage_actual_in(regclass, uuid[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._usage_reconcile(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._usage_start(uuid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION multitenancy._usage_actual(regclass) FROM PUBLIC;
SELECT multitenancy._usage_reconcile(t.id) FROM multitenancy.tenants t ORDER BY t.id;

-- Scaling out with Citus (src/tables/distribute.rs): distribute an enabled table's foreign-key
-- family by tenant_id. The table owner's, granted by a DBA.
CREATE  FUNCTION "tenant_distribute"(
	"tbl" regclass /* Option < Regclass > */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"citus_table" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_distribute_wrapper';
REVOKE EXECUTE ON FUNCTION multitenancy.tenant_distribute(regclass) FROM PUBLIC;
