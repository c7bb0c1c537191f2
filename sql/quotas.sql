-- multitenancy quotas and usage: limit resolution, metering, reports, recounting.
-- The counting triggers and the enforcement of the rows / bytes limits are in src/quotas.rs.

-- The metering period (a calendar month, UTC) that `at` falls in, by its first day.
CREATE FUNCTION multitenancy._period_start(at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT date_trunc('month', at AT TIME ZONE 'UTC')::date
$$;

-- A quota key, checked and in its stored form: 'members', 'rows', 'bytes', 'rows:<table>' of a
-- tenant-enabled table (schema-qualified), or the name of a metered counter.
CREATE FUNCTION multitenancy._quota_key(p_key text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key text := btrim(coalesce(p_key, ''));
    v_table regclass;
BEGIN
    IF v_key ~ '^[a-z][a-z0-9_.-]{0,62}$' THEN
        RETURN v_key;
    END IF;
    IF v_key LIKE 'rows:%' THEN
        BEGIN
            v_table := to_regclass(substr(v_key, 6));
        EXCEPTION WHEN OTHERS THEN
            v_table := NULL;
        END;
        IF v_table IS NULL OR NOT EXISTS (SELECT 1 FROM multitenancy.enabled_tables e WHERE e.relid = v_table) THEN
            PERFORM multitenancy._raise('quota_key_no_table', ARRAY[p_key]);
        END IF;
        RETURN 'rows:' || v_table::text;
    END IF;
    PERFORM multitenancy._raise('invalid_quota_key', ARRAY[p_key]);
END
$$;

-- A table and every table under it (partitions, inheritance children), the set a
-- 'rows:<table>' limit counts.
CREATE FUNCTION multitenancy._usage_tables(p_table regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t(relid) AS (
        SELECT p_table::oid
        UNION SELECT i.inhrelid FROM pg_inherits i JOIN t ON i.inhparent = t.relid)
    SELECT relid::regclass FROM t
$$;

-- The limits of a tenant: its override if it has one (NULL quota: unlimited), else its plan's.
-- A key without a row is unlimited.
CREATE FUNCTION multitenancy._quotas(p_tenant uuid) RETURNS TABLE (key text, quota bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(o.key, p.key), CASE WHEN o.key IS NOT NULL THEN o.quota ELSE p.quota END
      FROM (SELECT l.key, CASE WHEN jsonb_typeof(l.value) = 'number' THEN (l.value #>> '{}')::numeric::bigint END AS quota
              FROM multitenancy.tenants t
              JOIN multitenancy.plans pl ON pl.name = t.plan
             CROSS JOIN LATERAL jsonb_each(pl.limits) l
             WHERE t.id = p_tenant) p
      FULL JOIN (SELECT q.key, q.quota FROM multitenancy.quotas q WHERE q.tenant_id = p_tenant) o ON o.key = p.key
$$;

CREATE FUNCTION multitenancy._quota(p_tenant uuid, p_key text) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT q.quota FROM multitenancy._quotas(p_tenant) q WHERE q.key = p_key
$$;

-- quota_set (p_set) and quota_reset (NOT p_set). NULL: nothing changed.
CREATE FUNCTION multitenancy._quota_set(p_tenant uuid, p_key text, p_quota bigint, p_set boolean) RETURNS jsonb
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

-- usage_record: add to this month's counter, under its row lock; refuse past the limit.
CREATE FUNCTION multitenancy._usage_record(p_tenant uuid, p_key text, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_used bigint;
    v_quota bigint;
BEGIN
    INSERT INTO multitenancy.metered_usage AS m (tenant_id, key, period, used)
    VALUES (p_tenant, p_key, multitenancy._period_start(now()), p_amount)
    ON CONFLICT (tenant_id, key, period) DO UPDATE SET used = m.used + EXCLUDED.used, updated_at = now()
    RETURNING m.used INTO v_used;
    v_quota := multitenancy._quota(p_tenant, p_key);
    IF v_used > v_quota THEN
        PERFORM multitenancy._quota_exceeded(p_tenant, p_key, v_used - p_amount, p_amount, v_quota);
    END IF;
    RETURN v_used;
END
$$;

-- The stored counters plus what this session's transaction has counted and not yet written
-- (src/quotas.rs writes a held tenant's counts at commit): per table, and per tenant in total.
-- Row level security on table_usage applies to the caller. Only tenants with a rows, bytes or
-- rows:<table> limit have counters (src/quotas.rs, "Counting"); _usage_report below answers for
-- every tenant.
CREATE FUNCTION multitenancy._usage_counters()
RETURNS TABLE (tenant_id uuid, relid regclass, row_count bigint, byte_count bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.tenant_id, c.relid::regclass, sum(c.row_count)::bigint, sum(c.byte_count)::bigint
      FROM (SELECT u.tenant_id, u.relid::oid AS relid, u.row_count, u.byte_count FROM multitenancy.table_usage u
             WHERE u.relid::oid <> 0
            UNION ALL
            SELECT w.tenant_id, w.relid, w.rows, w.bytes FROM multitenancy._usage_unwritten() w) c
     GROUP BY c.tenant_id, c.relid
$$;

CREATE FUNCTION multitenancy._usage_totals()
RETURNS TABLE (tenant_id uuid, row_count bigint, byte_count bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.tenant_id, sum(c.row_count)::bigint, sum(c.byte_count)::bigint
      FROM (SELECT u.tenant_id, u.row_count, u.byte_count FROM multitenancy.table_usage u WHERE u.relid::oid = 0
            UNION ALL
            SELECT w.tenant_id, w.rows, w.bytes FROM multitenancy._usage_unwritten() w) c
     GROUP BY c.tenant_id
$$;

-- Usage of every tenant the caller may see (p_tenant NULL) or of one, per table (relid) and in
-- total (relid 0): the counters of counted tenants with what this transaction has not written
-- yet, and for the others what the tables hold, counted now (_usage_live, src/quotas.rs).
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

-- What a tenant uses of a key, its limit, and (metered keys) the current period.
CREATE FUNCTION multitenancy._usage(p_tenant uuid, p_key text)
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

-- quota_check(key) and usage_get(key) are in src/quotas.rs: a 'rows:<table>' key names its table
-- with the caller's search_path.

-- The dashboard: per tenant one row of totals (table_name NULL: rows, bytes, members, this
-- month's metered usage) and one row per tenant-enabled table it has rows in. SECURITY
-- INVOKER: row level security on the registry shows an application its own tenant, a DBA all.
CREATE FUNCTION multitenancy.tenant_stats()
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

-- What a table holds per tenant: _usage_actual(regclass) and _usage_actual_in(regclass, uuid[])
-- in src/quotas.rs, counted as the table's owner (its index expressions are its owner's code).

-- Where counters and tables disagree: per tenant and table, and per tenant in total
-- (table_name NULL). Empty when every counter is exact.
CREATE FUNCTION multitenancy.usage_drift()
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

-- Set one counter row (relid 0: the tenant's totals) to absolute values.
CREATE FUNCTION multitenancy._usage_set(p_tenant uuid, p_relid regclass, p_rows bigint, p_bytes bigint)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO multitenancy.table_usage AS u (tenant_id, relid, row_count, byte_count)
    VALUES (p_tenant, p_relid, p_rows, p_bytes)
    ON CONFLICT (tenant_id, relid) DO UPDATE SET row_count = EXCLUDED.row_count, byte_count = EXCLUDED.byte_count
$$;

-- Set every counter to what the tables hold (after a bulk load with triggers off, say), and
-- return what was wrong. Takes SHARE locks on the tenant-enabled tables: writers wait.
CREATE FUNCTION multitenancy.usage_recompute()
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

-- One table's counters from what it holds, the tenant's totals moved by the difference
-- (tenant_enable, when it installs the counting on a table that may have rows). Returns how many
-- tenants' counters changed.
CREATE FUNCTION multitenancy._usage_recount(p_table regclass) RETURNS bigint
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

-- A table's counters leave it (TRUNCATE, tenant_disable, DROP): the totals lose its counts.
CREATE FUNCTION multitenancy._usage_forget_table(p_table oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    IF p_table = 0 THEN
        RETURN;
    END IF;
    FOR d IN SELECT u.tenant_id, u.row_count, u.byte_count FROM multitenancy.table_usage u
              WHERE u.relid = p_table::regclass ORDER BY 1 LOOP
        PERFORM multitenancy._usage_lock(d.tenant_id);
        UPDATE multitenancy.table_usage
           SET row_count = row_count - d.row_count, byte_count = byte_count - d.byte_count
         WHERE tenant_id = d.tenant_id AND relid = 0::oid::regclass;
    END LOOP;
    DELETE FROM multitenancy.table_usage WHERE relid = p_table::regclass;
END
$$;
