-- multitenancy lifecycle (src/tenants/lifecycle.rs): status changes, purge, rename, plans and
-- per-tenant settings. Internal functions as described in sql/tenants.sql.

CREATE FUNCTION multitenancy._tenant_status(p_tenant uuid, p_status text, p_reason text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_from text;
BEGIN
    SELECT status INTO v_from FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_from = p_status THEN
        PERFORM multitenancy._raise('status_unchanged', ARRAY[v_slug, p_status]);
    END IF;
    IF p_status = 'suspended' AND v_from <> 'active' THEN
        PERFORM multitenancy._raise('cannot_suspend', ARRAY[v_slug, v_from]);
    END IF;
    UPDATE multitenancy.tenants
       SET status = p_status,
           status_reason = p_reason
     WHERE id = p_tenant;
    RETURN jsonb_strip_nulls(jsonb_build_object('from', v_from, 'to', p_status, 'reason', p_reason));
END
$$;

CREATE FUNCTION multitenancy._tenant_purge(p_tenant uuid, p_confirm_slug text) RETURNS jsonb
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

CREATE FUNCTION multitenancy._tenant_rename(p_tenant uuid, p_name text, p_slug text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old multitenancy.tenants;
BEGIN
    PERFORM multitenancy._lock_tenant(p_tenant);
    SELECT * INTO v_old FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_old.name = p_name AND v_old.slug = coalesce(p_slug, v_old.slug) THEN
        RETURN NULL;
    END IF;
    BEGIN
        UPDATE multitenancy.tenants SET name = p_name, slug = coalesce(p_slug, slug) WHERE id = p_tenant;
    EXCEPTION WHEN unique_violation THEN
        PERFORM multitenancy._raise('slug_taken', ARRAY[p_slug]);
    END;
    RETURN jsonb_build_object('from', jsonb_build_object('name', v_old.name, 'slug', v_old.slug),
                              'to', jsonb_build_object('name', p_name, 'slug', coalesce(p_slug, v_old.slug)));
END
$$;

CREATE FUNCTION multitenancy._tenant_change_plan(p_tenant uuid, p_plan text) RETURNS jsonb
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

CREATE FUNCTION multitenancy._plan_set(p_name text, p_limits jsonb, p_features jsonb) RETURNS jsonb
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

CREATE FUNCTION multitenancy._setting_set(p_tenant uuid, p_key text, p_value jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old jsonb;
BEGIN
    IF p_key IS NULL THEN
        PERFORM multitenancy._raise('null_argument', ARRAY['key']);
    END IF;
    PERFORM multitenancy._lock_tenant(p_tenant);
    SELECT settings -> p_key INTO v_old FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_old IS NOT DISTINCT FROM p_value THEN
        RETURN NULL;
    END IF;
    UPDATE multitenancy.tenants
       SET settings = CASE WHEN p_value IS NULL THEN settings - p_key
                           ELSE settings || jsonb_build_object(p_key, p_value) END
     WHERE id = p_tenant;
    RETURN jsonb_build_object('key', p_key, 'from', v_old, 'to', p_value);
END
$$;

CREATE FUNCTION multitenancy.setting_list(tenant text)
RETURNS TABLE (key text, value jsonb, source text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH t AS (SELECT settings, plan FROM multitenancy.tenants WHERE id = multitenancy._readable_tenant(tenant)),
         plan AS (SELECT p.limits || p.features AS defaults FROM multitenancy.plans p, t WHERE p.name = t.plan)
    SELECT s.key, s.value, 'tenant' FROM t, jsonb_each(t.settings) s
    UNION ALL
    SELECT d.key, d.value, 'plan' FROM plan, jsonb_each(plan.defaults) d
     WHERE NOT (SELECT t.settings ? d.key FROM t)
    ORDER BY 1
$$;

CREATE FUNCTION multitenancy.setting_get(key text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(t.settings -> key, p.features -> key, p.limits -> key)
      FROM multitenancy.tenants t LEFT JOIN multitenancy.plans p ON p.name = t.plan
     WHERE t.id = multitenancy.current_tenant_id()
$$;

CREATE FUNCTION multitenancy.feature_enabled(flag text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(multitenancy.setting_get(flag) = 'true'::jsonb, false)
$$;
