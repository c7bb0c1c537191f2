-- multitenancy model: members, lifecycle, domains, plans and settings.
--
-- Functions whose name starts with '_' do the data work of one change each and return jsonb
-- details for its audit row (NULL: nothing changed; key "result": returned to the caller, not
-- audited; key "tenant_id": the tenant, when the caller did not know it). They are not
-- executable by PUBLIC: the public functions (src/*.rs) authorise the caller and run them as
-- the registry owner, then write the audit row. Errors say what to do next.

CREATE FUNCTION multitenancy._tenant_create(p_name text, p_slug text, p_plan text, p_owner uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
BEGIN
    INSERT INTO multitenancy.tenants (name, slug, plan) VALUES (p_name, p_slug, p_plan)
    ON CONFLICT (slug) DO NOTHING RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_owner IS NOT NULL THEN
        INSERT INTO multitenancy.members (tenant_id, user_id, role, invited_by)
        VALUES (v_id, p_owner, 'owner', p_owner);
    END IF;
    RETURN jsonb_build_object('result', v_id, 'tenant_id', v_id, 'slug', p_slug, 'name', p_name,
                              'plan', p_plan, 'owner', p_owner);
END
$$;

-- The tenant's slug, with the tenant row locked: changes of one tenant's members, status or
-- domains run one at a time (the last-owner rule holds under concurrency).
CREATE FUNCTION multitenancy._lock_tenant(p_tenant uuid) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text;
BEGIN
    SELECT slug INTO v_slug FROM multitenancy.tenants WHERE id = p_tenant FOR NO KEY UPDATE;
    IF v_slug IS NULL THEN
        RAISE EXCEPTION 'tenant "%" does not exist', p_tenant USING ERRCODE = 'undefined_object',
            HINT = 'It may have been purged by a concurrent transaction.';
    END IF;
    RETURN v_slug;
END
$$;

CREATE FUNCTION multitenancy._member_add(p_tenant uuid, p_user uuid, p_role text, p_may_manage_owners boolean,
                                         p_by uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_quota bigint;
    v_members bigint;
BEGIN
    IF p_role = 'owner' AND p_may_manage_owners IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied to add an owner to tenant "%": only owners may', v_slug
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Add the user as admin, or ask an owner of the tenant.';
    END IF;
    INSERT INTO multitenancy.members (tenant_id, user_id, role, invited_by)
    VALUES (p_tenant, p_user, p_role, p_by) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is already a member of tenant "%"', p_user, v_slug
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change the role with multitenancy.member_set_role().';
    END IF;
    -- Counted under the tenant's lock: concurrent additions queue, so the limit is exact.
    v_quota := multitenancy._quota(p_tenant, 'members');
    IF v_quota IS NOT NULL THEN
        SELECT count(*) INTO v_members FROM multitenancy.members WHERE tenant_id = p_tenant;
        IF v_members > v_quota THEN
            PERFORM multitenancy._quota_exceeded(p_tenant, 'members', v_members - 1, 1, v_quota);
        END IF;
    END IF;
    RETURN jsonb_build_object('user_id', p_user, 'role', p_role);
END
$$;

CREATE FUNCTION multitenancy._last_owner_check(p_tenant uuid, p_slug text, p_user uuid, p_verb text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM multitenancy.members
                    WHERE tenant_id = p_tenant AND role = 'owner' AND user_id <> p_user) THEN
        RAISE EXCEPTION 'cannot % the last owner of tenant "%"', left(p_verb, 100), left(p_slug, 100)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A tenant always keeps at least one owner.',
                  HINT = 'Make another member owner first: SELECT multitenancy.member_set_role(''<tenant>'', ''<user>'', ''owner'').';
    END IF;
END
$$;

-- The tenant's slug and the member's role, with the tenant locked (see _lock_tenant); 42704
-- when the user is not a member.
CREATE FUNCTION multitenancy._lock_member(p_tenant uuid, p_user uuid, OUT slug text, OUT role text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    slug := multitenancy._lock_tenant(p_tenant);
    SELECT m.role INTO role FROM multitenancy.members m WHERE m.tenant_id = p_tenant AND m.user_id = p_user;
    IF role IS NULL THEN
        RAISE EXCEPTION 'user % is not a member of tenant "%"', p_user, slug
            USING ERRCODE = 'undefined_object',
                  HINT = 'List the members with multitenancy.member_list(''<tenant>''); add one with multitenancy.member_add().';
    END IF;
END
$$;

CREATE FUNCTION multitenancy._member_remove(p_tenant uuid, p_user uuid, p_may_manage_owners boolean) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text;
    v_role text;
BEGIN
    SELECT slug, role INTO v_slug, v_role FROM multitenancy._lock_member(p_tenant, p_user);
    IF v_role = 'owner' THEN
        IF p_may_manage_owners IS NOT TRUE THEN
            RAISE EXCEPTION 'permission denied to remove an owner of tenant "%": only owners may', v_slug
                USING ERRCODE = 'insufficient_privilege', HINT = 'Ask an owner of the tenant.';
        END IF;
        PERFORM multitenancy._last_owner_check(p_tenant, v_slug, p_user, 'remove');
    END IF;
    DELETE FROM multitenancy.members WHERE tenant_id = p_tenant AND user_id = p_user;
    RETURN jsonb_build_object('user_id', p_user, 'role', v_role);
END
$$;

CREATE FUNCTION multitenancy._member_set_role(p_tenant uuid, p_user uuid, p_role text, p_may_manage_owners boolean)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text;
    v_role text;
BEGIN
    SELECT slug, role INTO v_slug, v_role FROM multitenancy._lock_member(p_tenant, p_user);
    IF v_role = p_role THEN
        RETURN NULL;
    END IF;
    IF (v_role = 'owner' OR p_role = 'owner') AND p_may_manage_owners IS NOT TRUE THEN
        RAISE EXCEPTION 'permission denied to change the owners of tenant "%": only owners may', v_slug
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask an owner of the tenant.';
    END IF;
    IF v_role = 'owner' THEN
        PERFORM multitenancy._last_owner_check(p_tenant, v_slug, p_user, 'demote');
    END IF;
    UPDATE multitenancy.members SET role = p_role WHERE tenant_id = p_tenant AND user_id = p_user;
    RETURN jsonb_build_object('user_id', p_user, 'from', v_role, 'to', p_role);
END
$$;

CREATE FUNCTION multitenancy._tenant_status(p_tenant uuid, p_status text, p_reason text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_from text;
BEGIN
    SELECT status INTO v_from FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_from = p_status THEN
        RAISE EXCEPTION 'tenant "%" is already %', v_slug, p_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Check the status first: SELECT status FROM multitenancy.tenants WHERE slug = ''' || v_slug || '''.';
    END IF;
    IF p_status = 'suspended' AND v_from <> 'active' THEN
        RAISE EXCEPTION 'tenant "%" is %; only an active tenant can be suspended', v_slug, v_from
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Activate it first with multitenancy.tenant_activate(), or leave it ' || v_from || '.';
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
    v_tables jsonb := '{}';
    v_pending regclass[];
    v_failed regclass[];
    v_table regclass;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    SELECT status INTO v_status FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_status <> 'deleted' THEN
        RAISE EXCEPTION 'tenant "%" is %; only a deleted tenant can be purged', v_slug, v_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Delete it first: SELECT multitenancy.tenant_delete(''' || v_slug || ''').';
    END IF;
    IF p_confirm_slug IS DISTINCT FROM v_slug THEN
        RAISE EXCEPTION 'tenant_purge needs confirmation: confirm_slug must be the tenant''s slug'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Purging deletes every row of the tenant in every tenant-enabled table, for good.',
                  HINT = 'Call SELECT multitenancy.tenant_purge(''<tenant>'', confirm_slug => ''<its slug>'').';
    END IF;
    -- Count first (rows that foreign keys cascade to are counted in their own table), then
    -- delete children before parents: a table whose delete hits a foreign key waits for the
    -- next round.
    FOR v_table IN WITH RECURSIVE t(relid) AS (
                        SELECT relid::oid FROM multitenancy.enabled_tables
                        UNION SELECT i.inhrelid FROM pg_inherits i JOIN t ON i.inhparent = t.relid)
                    SELECT DISTINCT t.relid::regclass FROM t JOIN pg_class c ON c.oid = t.relid
                     WHERE c.relkind = 'r' ORDER BY 1 LOOP
        -- As the table's owner (see _purge_rows): no code of the owner's runs as the registry owner.
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
            RAISE EXCEPTION 'cannot purge tenant "%": rows of % are still referenced', v_slug, v_failed::text
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'A table that is not tenant-enabled references the tenant''s rows; delete those rows first.';
        END IF;
        v_pending := v_failed;
    END LOOP;
    DELETE FROM multitenancy.members WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.domains WHERE tenant_id = p_tenant;
    -- Counted rows of this transaction not yet written are gone with the counters.
    PERFORM multitenancy._usage_settle(p_tenant);
    DELETE FROM multitenancy.quotas WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.metered_usage WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.table_usage WHERE tenant_id = p_tenant;
    DELETE FROM multitenancy.tenants WHERE id = p_tenant;
    RETURN jsonb_build_object('result', v_total, 'slug', v_slug, 'rows', v_total, 'tables', v_tables);
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
        RAISE EXCEPTION 'tenant slug "%" is already taken', p_slug
            USING ERRCODE = 'unique_violation', HINT = 'Choose another slug.';
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
        RAISE EXCEPTION 'plan "%" does not exist', left(p_plan, 100)
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it first: SELECT multitenancy.plan_set(''' || left(p_plan, 100) || ''', limits => ''{}'', features => ''{}'').';
    END IF;
    SELECT plan INTO v_from FROM multitenancy.tenants WHERE id = p_tenant;
    IF v_from = p_plan THEN
        RETURN NULL;
    END IF;
    UPDATE multitenancy.tenants SET plan = p_plan WHERE id = p_tenant;
    RETURN jsonb_build_object('from', v_from, 'to', p_plan);
END
$$;

CREATE FUNCTION multitenancy._plan_set(p_name text, p_limits jsonb, p_features jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old multitenancy.plans;
BEGIN
    IF jsonb_typeof(coalesce(p_limits, '{}')) <> 'object' OR jsonb_typeof(coalesce(p_features, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'plan limits and features must be JSON objects'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example limits => ''{"members": 5}'', features => ''{"sso": false}''.';
    END IF;
    -- Limits: quota keys (stored in their checked form) with a whole number >= 0, or null for
    -- unlimited.
    IF EXISTS (SELECT 1 FROM jsonb_each(coalesce(p_limits, '{}')) l
                WHERE NOT (jsonb_typeof(l.value) = 'null'
                           OR (jsonb_typeof(l.value) = 'number' AND (l.value #>> '{}')::numeric >= 0
                               AND (l.value #>> '{}')::numeric = trunc((l.value #>> '{}')::numeric)))) THEN
        RAISE EXCEPTION 'plan limits must be whole numbers >= 0 (or null for unlimited)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example limits => ''{"rows": 100000, "bytes": 1073741824, "members": 5, "api_calls": null}''.';
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
        RAISE EXCEPTION 'argument "p_key" must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the setting''s key.';
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

-- An unverified claim of another tenant's older than p_claim_ttl is taken over (nobody holds a
-- domain they cannot prove is theirs); a fresh or verified one is refused.
CREATE FUNCTION multitenancy._domain_add(p_tenant uuid, p_domain text, p_primary boolean, p_claim_ttl interval) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_existing multitenancy.domains;
    v_token text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
BEGIN
    SELECT * INTO v_existing FROM multitenancy.domains WHERE domain = p_domain;
    IF p_primary THEN
        UPDATE multitenancy.domains SET is_primary = false WHERE tenant_id = p_tenant AND is_primary;
    END IF;
    -- Another tenant's domain (also one registered concurrently) returns no row, unless its
    -- claim is unverified and expired.
    INSERT INTO multitenancy.domains (domain, tenant_id, is_primary, verification_token)
    VALUES (p_domain, p_tenant, p_primary, v_token)
    ON CONFLICT (domain) DO UPDATE
       SET is_primary = EXCLUDED.is_primary,
           tenant_id = EXCLUDED.tenant_id,
           verification_token = CASE WHEN multitenancy.domains.tenant_id = p_tenant
                                     THEN multitenancy.domains.verification_token ELSE EXCLUDED.verification_token END,
           created_at = CASE WHEN multitenancy.domains.tenant_id = p_tenant
                             THEN multitenancy.domains.created_at ELSE now() END
    WHERE multitenancy.domains.tenant_id = p_tenant
       OR (multitenancy.domains.verified_at IS NULL AND multitenancy.domains.created_at < now() - p_claim_ttl)
    RETURNING verification_token INTO v_token;
    IF v_token IS NULL THEN
        RAISE EXCEPTION 'domain "%" is already registered to another tenant', p_domain
            USING ERRCODE = 'unique_violation',
                  HINT = 'A domain routes to one tenant; the other tenant must remove it first (multitenancy.domain_remove), '
                         'or, while it is unverified, wait until its claim expires (multitenancy.domain_claim_ttl).';
    END IF;
    RETURN jsonb_build_object('result', v_token, 'domain', p_domain, 'is_primary', p_primary)
        -- The audit row is the taker's (its tenant reads it): it does not name the other tenant.
        || CASE WHEN v_existing.tenant_id IS DISTINCT FROM p_tenant AND v_existing.tenant_id IS NOT NULL
                THEN jsonb_build_object('took_over_expired_claim', true) ELSE '{}' END;
END
$$;

CREATE FUNCTION multitenancy._domain_verify(p_domain text, p_token text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_row multitenancy.domains;
BEGIN
    SELECT * INTO v_row FROM multitenancy.domains WHERE domain = p_domain FOR UPDATE;
    IF v_row.domain IS NULL THEN
        RAISE EXCEPTION 'no tenant for host "%"', left(p_domain, 253)
            USING ERRCODE = 'undefined_object', HINT = 'Register the domain first with multitenancy.domain_add().';
    END IF;
    IF v_row.verification_token IS DISTINCT FROM p_token THEN
        RAISE EXCEPTION 'verification token does not match for domain "%"', left(p_domain, 253)
            USING ERRCODE = 'invalid_authorization_specification',
                  HINT = 'Pass the token multitenancy.domain_add() returned for this domain.';
    END IF;
    IF v_row.verified_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    UPDATE multitenancy.domains SET verified_at = now() WHERE domain = p_domain;
    RETURN jsonb_build_object('domain', p_domain, 'tenant_id', v_row.tenant_id);
END
$$;

CREATE FUNCTION multitenancy._domain_remove(p_domain text, p_tenant uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM multitenancy._lock_tenant(p_tenant);
    DELETE FROM multitenancy.domains WHERE domain = p_domain AND tenant_id = p_tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no tenant for host "%"', left(p_domain, 253)
            USING ERRCODE = 'undefined_object', HINT = 'It may have been removed by a concurrent transaction.';
    END IF;
    RETURN jsonb_build_object('domain', p_domain);
END
$$;

-- Readers. SECURITY INVOKER where row level security on the registry scopes the rows to the
-- tenant of the current context (and admin mode); SECURITY DEFINER where they must look across
-- tenants for the current user or a host name, and return only that.

CREATE FUNCTION multitenancy.member_list(tenant text)
RETURNS TABLE (user_id uuid, role text, joined_at timestamptz, invited_by uuid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.user_id, m.role, m.joined_at, m.invited_by
      FROM multitenancy.members m
     WHERE m.tenant_id = multitenancy._readable_tenant(tenant)
     ORDER BY array_position(ARRAY['owner', 'admin', 'member', 'guest'], m.role), m.joined_at, m.user_id
$$;

CREATE FUNCTION multitenancy.domain_list(tenant text)
RETURNS TABLE (domain text, is_primary boolean, verified boolean, created_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.domain, d.is_primary, d.verified_at IS NOT NULL, d.created_at
      FROM multitenancy.domains d
     WHERE d.tenant_id = multitenancy._readable_tenant(tenant)
     ORDER BY d.is_primary DESC, d.domain
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

CREATE FUNCTION multitenancy.user_tenants()
RETURNS TABLE (tenant_id uuid, slug text, name text, role text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id, t.slug, t.name, m.role, t.status
      FROM multitenancy.members m JOIN multitenancy.tenants t ON t.id = m.tenant_id
     WHERE m.user_id = multitenancy.current_user_id() AND t.status <> 'deleted'
     ORDER BY t.slug
$$;

-- Hosts under multitenancy.base_domain route by slug only: no custom domain (verified or not)
-- can take another tenant's <slug>.<base_domain>. Only active tenants are routed to: a
-- suspended or deleted tenant's host resolves to nothing, as an unknown one does.
CREATE FUNCTION multitenancy.tenant_resolve(host text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH h AS (
        SELECT multitenancy.domain_normalize(host) AS host,
               coalesce(multitenancy._base_domain(), '') AS base
    ), r AS (
        SELECT h.host, h.base,
               h.base <> '' AND (h.host = h.base OR right(h.host, length(h.base) + 1) = '.' || h.base) AS under_base
          FROM h
    )
    SELECT CASE WHEN r.under_base
                THEN (SELECT t.id FROM multitenancy.tenants t
                       WHERE t.slug = left(r.host, length(r.host) - length(r.base) - 1) AND t.status = 'active')
                ELSE (SELECT d.tenant_id FROM multitenancy.domains d JOIN multitenancy.tenants t ON t.id = d.tenant_id
                       WHERE d.domain = r.host AND d.verified_at IS NOT NULL AND t.status = 'active') END
      FROM r
$$;
