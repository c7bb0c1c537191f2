-- multitenancy moving tenants (src/tenants/moving.rs): what an export or import of one tenant
-- needs inside the database. The copying itself is done by the mt-move program (cli/) over the
-- PostgreSQL protocol; README "Moving tenants" describes the archive and the workflows.
-- Internal functions as described in sql/tenants.sql.

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
