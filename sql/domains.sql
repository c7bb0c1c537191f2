-- multitenancy domains (src/tenants/domains.rs): custom domains and host routing (the host name
-- rule, domain_normalize, is in sql/bootstrap.sql: the domains table's CHECK needs it).
-- Internal functions as described in sql/tenants.sql.

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
        PERFORM multitenancy._raise('domain_taken', ARRAY[p_domain]);
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
        PERFORM multitenancy._raise('host_not_found', ARRAY[p_domain]);
    END IF;
    IF v_row.verification_token IS DISTINCT FROM p_token THEN
        PERFORM multitenancy._raise('wrong_verification_token', ARRAY[p_domain]);
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
        PERFORM multitenancy._raise('host_not_found', ARRAY[p_domain]);
    END IF;
    RETURN jsonb_build_object('domain', p_domain);
END
$$;

CREATE FUNCTION multitenancy.domain_list(tenant text)
RETURNS TABLE (domain text, is_primary boolean, verified boolean, created_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.domain, d.is_primary, d.verified_at IS NOT NULL, d.created_at
      FROM multitenancy.domains d
     WHERE d.tenant_id = multitenancy._readable_tenant(tenant)
     ORDER BY d.is_primary DESC, d.domain
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
