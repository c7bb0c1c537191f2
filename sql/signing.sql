-- Signing keys (src/signing.rs validates the arguments and audits; these run as the registry owner).

CREATE FUNCTION multitenancy._signing_key_add(p_name text, p_secret bytea) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO multitenancy.signing_keys (name, secret) VALUES (p_name, p_secret) ON CONFLICT (name) DO NOTHING;
    IF NOT FOUND THEN
        PERFORM multitenancy._raise('signing_key_exists', ARRAY[p_name]);
    END IF;
    -- The audit row names the key and never holds the secret.
    RETURN jsonb_build_object('name', p_name, 'bytes', length(p_secret));
END
$$;

CREATE FUNCTION multitenancy._signing_key_retire(p_name text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_retired_at timestamptz;
BEGIN
    SELECT retired_at INTO v_retired_at FROM multitenancy.signing_keys WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM multitenancy._raise('signing_key_not_found', ARRAY[p_name]);
    END IF;
    IF v_retired_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    UPDATE multitenancy.signing_keys SET retired_at = clock_timestamp() WHERE name = p_name;
    RETURN jsonb_build_object('name', p_name);
END
$$;

-- The keys without their secrets, for DBAs (EXECUTE is revoked from PUBLIC).
CREATE FUNCTION multitenancy.signing_key_list()
RETURNS TABLE (name text, created_at timestamptz, retired_at timestamptz, active boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.name, k.created_at, k.retired_at, k.retired_at IS NULL
      FROM multitenancy.signing_keys k
     ORDER BY k.created_at, k.name
$$;
COMMENT ON FUNCTION multitenancy.signing_key_list() IS
    'Signing keys (name, created, retired, active), without their secrets.';
