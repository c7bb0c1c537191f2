-- multitenancy tenants (src/tenants/create.rs, src/registry/tenants.rs): creating a tenant, the
-- tenant lock every change of one tenant's members, status or domains takes, and the current
-- user's tenants.
--
-- Functions whose name starts with '_' do the data work of one change each and return jsonb
-- details for its audit row (NULL: nothing changed; key "result": returned to the caller, not
-- audited; key "tenant_id": the tenant, when the caller did not know it). They are not
-- executable by PUBLIC: the public functions (src/tenants/*.rs) authorise the caller and run
-- them as the registry owner, then write the audit row. Errors are raised through
-- multitenancy._raise (src/error.rs), the one error catalogue.

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
        PERFORM multitenancy._raise('tenant_not_found', ARRAY[p_tenant::text]);
    END IF;
    RETURN v_slug;
END
$$;

CREATE FUNCTION multitenancy.user_tenants()
RETURNS TABLE (tenant_id uuid, slug text, name text, role text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.id, t.slug, t.name, m.role, t.status
      FROM multitenancy.members m JOIN multitenancy.tenants t ON t.id = m.tenant_id
     WHERE m.user_id = multitenancy.current_user_id() AND t.status <> 'deleted'
     ORDER BY t.slug
$$;
