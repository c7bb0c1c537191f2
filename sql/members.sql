-- multitenancy members (src/tenants/members.rs): adding, removing and re-ranking members, and
-- listing them. Internal functions as described in sql/tenants.sql.

CREATE FUNCTION multitenancy._member_add(p_tenant uuid, p_user uuid, p_role text, p_may_manage_owners boolean,
                                         p_by uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slug text := multitenancy._lock_tenant(p_tenant);
    v_quota bigint;
    v_members bigint;
BEGIN
    IF p_role = 'owner' AND p_may_manage_owners IS NOT TRUE THEN
        PERFORM multitenancy._raise('owners_only_add', ARRAY[v_slug]);
    END IF;
    INSERT INTO multitenancy.members (tenant_id, user_id, role, invited_by)
    VALUES (p_tenant, p_user, p_role, p_by) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        PERFORM multitenancy._raise('already_member', ARRAY[p_user::text, v_slug]);
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
        PERFORM multitenancy._raise('last_owner', ARRAY[p_verb, p_slug]);
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
        PERFORM multitenancy._raise('member_not_found', ARRAY[p_user::text, slug]);
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
            PERFORM multitenancy._raise('owners_only_remove', ARRAY[v_slug]);
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
        PERFORM multitenancy._raise('owners_only_change', ARRAY[v_slug]);
    END IF;
    IF v_role = 'owner' THEN
        PERFORM multitenancy._last_owner_check(p_tenant, v_slug, p_user, 'demote');
    END IF;
    UPDATE multitenancy.members SET role = p_role WHERE tenant_id = p_tenant AND user_id = p_user;
    RETURN jsonb_build_object('user_id', p_user, 'from', v_role, 'to', p_role);
END
$$;

CREATE FUNCTION multitenancy.member_list(tenant text)
RETURNS TABLE (user_id uuid, role text, joined_at timestamptz, invited_by uuid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.user_id, m.role, m.joined_at, m.invited_by
      FROM multitenancy.members m
     WHERE m.tenant_id = multitenancy._readable_tenant(tenant)
     ORDER BY multitenancy._role_rank(m.role) DESC, m.joined_at, m.user_id
$$;
