-- multitenancy tables (src/tables/): name patterns of global tables, and the well-known
-- frameworks' bookkeeping tables. Internal functions as described in sql/tenants.sql.

CREATE FUNCTION multitenancy._exempt_pattern_set(p_pattern text, p_reason text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_old text;
BEGIN
    SELECT reason INTO v_old FROM multitenancy.exempt_patterns WHERE pattern = p_pattern FOR UPDATE;
    IF v_old IS NOT DISTINCT FROM p_reason THEN
        RETURN NULL;
    END IF;
    INSERT INTO multitenancy.exempt_patterns (pattern, reason) VALUES (p_pattern, p_reason)
    ON CONFLICT (pattern) DO UPDATE SET reason = EXCLUDED.reason, created_at = now(), created_by = current_user;
    RETURN jsonb_build_object('pattern', p_pattern, 'reason', p_reason, 'from', v_old);
END
$$;

CREATE FUNCTION multitenancy._exempt_pattern_remove(p_pattern text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM multitenancy.exempt_patterns WHERE pattern = p_pattern;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('pattern', p_pattern);
END
$$;

-- The bookkeeping tables of well-known frameworks, which their migration tools create with
-- code a user cannot edit (often outside any transaction the guard's hint could be followed in):
--   SELECT multitenancy.exempt_pattern(pattern, reason) FROM multitenancy.framework_patterns('django');
-- Patterns are LIKE patterns on the table name ('\_' is a literal underscore).
CREATE FUNCTION multitenancy.framework_patterns(framework text)
RETURNS TABLE (pattern text, reason text)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.pattern, p.reason
      FROM (VALUES
        ('django', 'django\_%', 'Django framework tables (migrations, content types, sessions, admin log)'),
        ('django', 'auth\_%', 'Django auth tables (users, groups, permissions)'),
        ('rails', 'schema\_migrations', 'Rails migration bookkeeping'),
        ('rails', 'ar\_internal\_metadata', 'Rails environment metadata'),
        ('prisma', '\_prisma\_migrations', 'Prisma migration bookkeeping'),
        ('typeorm', 'migrations', 'TypeORM migration bookkeeping'),
        ('typeorm', 'typeorm\_metadata', 'TypeORM metadata'),
        ('mikro-orm', 'mikro\_orm\_migrations', 'MikroORM migration bookkeeping'),
        ('sequelize', 'SequelizeMeta', 'Sequelize migration bookkeeping'),
        ('knex', 'knex\_migrations', 'Knex migration bookkeeping'),
        ('knex', 'knex\_migrations\_lock', 'Knex migration lock'),
        ('flyway', 'flyway\_schema\_history', 'Flyway migration bookkeeping'),
        ('liquibase', 'databasechangelog', 'Liquibase migration bookkeeping'),
        ('liquibase', 'databasechangeloglock', 'Liquibase migration lock'),
        ('alembic', 'alembic\_version', 'Alembic migration bookkeeping')
      ) AS p(framework, pattern, reason)
     WHERE p.framework = pg_catalog.lower($1)
     ORDER BY p.pattern
$$;
