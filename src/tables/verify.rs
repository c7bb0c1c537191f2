//! `multitenancy.verify()`: a catalog audit. Every row is something that weakens tenant
//! isolation, with the statement that fixes it; no `error` or `warning` row means healthy. Rows of
//! severity `info` list the table owner's code on enabled tables (triggers, policies, index
//! expressions, check constraints) for a DBA to review.
//!
//! It compares with the same sources as the rest of the extension: [`spec::inspect`] for the
//! shape of enabled tables, [`hardening::weaknesses`] for their keys and grants, and the DDL
//! guard's view and publication checks.
use crate::catalog::{self, oid_column, Relation};
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::registry;
use crate::tables::hardening::{self, Weakness};
use crate::tables::spec;
use pgrx::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: &'static str,
    pub object: String,
    pub problem: String,
    pub fix: String,
}

fn error(object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity: "error", object: object.into(), problem: problem.into(), fix: fix.into() }
}

fn warning(object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity: "warning", object: object.into(), problem: problem.into(), fix: fix.into() }
}

fn literal(s: &str) -> String {
    pgrx::spi::quote_literal(s)
}

pub fn findings() -> Result<Vec<Finding>> {
    registry::with_pinned_search_path(findings_pinned)
}

fn findings_pinned() -> Result<Vec<Finding>> {
    let enabled = registry::enabled_set()?;
    let exempt = registry::exempt_set()?;
    let mut found = Vec::new();
    let mut enabled_rels = Vec::new();
    for &oid in &enabled {
        if let Ok(rel) = Relation::lookup(oid) {
            enabled_rels.push(rel);
        }
    }
    enabled_rels.sort_by_key(|r| r.display());

    for rel in &enabled_rels {
        let repair = format!("SELECT multitenancy.tenant_enable({});", literal(&rel.sql()));
        for deviation in spec::inspect(rel)? {
            let fix = deviation.fix(&rel.sql()).unwrap_or_else(|| repair.clone());
            found.push(error(rel.display(), deviation.describe(), fix));
        }
        found.extend(owner_code(rel)?);
        for weakness in hardening::weaknesses(rel, &enabled)? {
            found.push(match &weakness {
                Weakness::GlobalReference(fk) => warning(
                    fk.table.display(),
                    weakness.describe(),
                    format!(
                        "Tenant-enable {} too (its foreign key then becomes tenant-scoped), or drop the foreign key: \
                         its checks ignore row level security.",
                        fk.table.display()
                    ),
                ),
                Weakness::Grant { grantee, privileges } => error(
                    rel.display(),
                    weakness.describe(),
                    format!("REVOKE {} ON {} FROM {grantee};", privileges.join(", "), rel.sql()),
                ),
                _ => error(rel.display(), weakness.describe(), repair.clone()),
            });
        }
        for child in catalog::children(rel.oid)? {
            if !enabled.contains(&child) {
                let child_rel = Relation::lookup(child)?;
                let partition = catalog::is_partition(child)?;
                found.push(error(
                    child_rel.display(),
                    format!(
                        "{} tenant-enabled table {} but is not tenant-enabled: queried directly, it shows every tenant's rows",
                        if partition { "is a partition of" } else { "inherits from" },
                        rel.display()
                    ),
                    format!("SELECT multitenancy.tenant_enable({});", literal(&child_rel.sql())),
                ));
            }
        }
    }

    // Tables in guarded schemas that are neither enabled nor exempt (extension members excluded).
    let guarded = gucs::guarded_schemas();
    let candidates = oid_column(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY ($1) \
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid \
                               AND d.deptype = 'e') \
          ORDER BY n.nspname, c.relname",
        &[guarded.into()],
    )?;
    for oid in candidates {
        if enabled.contains(&oid) || exempt.contains(&oid) {
            continue;
        }
        let rel = Relation::lookup(oid)?;
        found.push(warning(
            rel.display(),
            "table in a guarded schema is neither tenant-enabled nor exempt",
            format!(
                "SELECT multitenancy.tenant_enable({t}); for tenant data, or SELECT multitenancy.tenant_exempt({t}, \
                 '<why it is global>'); for global data.",
                t = literal(&rel.sql())
            ),
        ));
    }

    if !enabled.is_empty() {
        // Views and materialized views over enabled tables.
        let views = oid_column(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
              ORDER BY n.nspname, c.relname",
            &[],
        )?;
        for view in views {
            let rel = Relation::lookup(view)?;
            if rel.kind == pg_sys::RELKIND_MATVIEW {
                let problem = match catalog::matview_leak(view, &enabled)? {
                    Some(catalog::MatviewLeak::Table(table)) => Some(format!(
                        "materialized view stores rows of tenant-enabled table {} outside row level security",
                        table.display()
                    )),
                    Some(catalog::MatviewLeak::Function(function)) => Some(format!(
                        "materialized view calls {function}, which may read tenant-enabled tables: it stores the rows of \
                         whichever tenant's context refreshed it, outside row level security"
                    )),
                    None => None,
                };
                if let Some(problem) = problem {
                    found.push(error(
                        rel.display(),
                        problem,
                        format!("DROP MATERIALIZED VIEW {}; (use a view WITH (security_invoker = true))", rel.sql()),
                    ));
                }
            } else if let Some(table) = catalog::leaky_view(view, &enabled)? {
                #[cfg(not(feature = "pg14"))]
                found.push(error(
                    rel.display(),
                    format!("view is not security_invoker and reads tenant-enabled table {}", table.display()),
                    format!("ALTER VIEW {} SET (security_invoker = true);", rel.sql()),
                ));
                #[cfg(feature = "pg14")]
                found.push(error(
                    rel.display(),
                    format!(
                        "view reads tenant-enabled table {} as its owner, a superuser or BYPASSRLS role",
                        table.display()
                    ),
                    format!("ALTER VIEW {} OWNER TO <the table's owner>;", rel.sql()),
                ));
            }
        }

        // Publications: logical decoding ignores row level security.
        for publication in oid_column("SELECT oid FROM pg_catalog.pg_publication ORDER BY pubname", &[])? {
            let (name, tables) = catalog::published_tables(publication, &enabled)?;
            for table in tables {
                found.push(error(
                    name.clone(),
                    format!("publishes tenant-enabled table {}", table.display()),
                    format!(
                        "ALTER PUBLICATION {} DROP TABLE {}; (or drop the publication)",
                        pgrx::spi::quote_identifier(&name),
                        table.sql()
                    ),
                ));
            }
        }

        // Login roles that bypass row level security (the bootstrap superuser is expected).
        let enabled_list: Vec<pg_sys::Oid> = enabled_rels.iter().map(|r| r.oid).collect();
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT r.rolname::text, r.rolsuper, \
                            (SELECT pg_catalog.string_agg(t::pg_catalog.regclass::text, ', ') \
                               FROM pg_catalog.unnest($1::pg_catalog.oid[]) t \
                              WHERE pg_catalog.has_table_privilege(r.oid, t, 'SELECT')) \
                       FROM pg_catalog.pg_roles r \
                      WHERE r.rolcanlogin AND (r.rolsuper OR r.rolbypassrls) AND r.oid <> $2 \
                      ORDER BY r.rolname",
                    None,
                    &[enabled_list.into(), pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID).into()],
                )
                .ctx("verify: roles")?;
            for row in rows {
                let role = row.get::<String>(1).ctx("rolname")?.unwrap_or_default();
                let superuser = row.get::<bool>(2).ctx("rolsuper")?.unwrap_or(false);
                let readable = row.get::<String>(3).ctx("readable")?;
                let Some(readable) = readable else { continue };
                let attribute = if superuser { "SUPERUSER" } else { "BYPASSRLS" };
                found.push(warning(
                    role.clone(),
                    format!("login role with {attribute} reads tenant-enabled tables without row level security: {readable}"),
                    format!(
                        "ALTER ROLE {} NO{attribute}; (keep such roles for administration, never for the application)",
                        pgrx::spi::quote_identifier(&role)
                    ),
                ));
            }
            Ok::<_, MtError>(())
        })?;
    }

    // Tables declared global before they exist.
    registry::as_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT pattern, reason, created_by::text FROM multitenancy.exempt_patterns ORDER BY pattern",
                    None,
                    &[],
                )
                .ctx("verify: exempt patterns")?;
            for row in rows {
                let pattern = row.get::<String>(1).ctx("pattern")?.unwrap_or_default();
                found.push(info(
                    format!("exempt pattern {pattern}"),
                    format!(
                        "new tables named like it in guarded schemas are global: {} (declared by {})",
                        row.get::<String>(2).ctx("reason")?.unwrap_or_default(),
                        row.get::<String>(3).ctx("created_by")?.unwrap_or_default()
                    ),
                    format!("SELECT multitenancy.exempt_pattern_remove({});", literal(&pattern)),
                ));
            }
            Ok::<_, MtError>(())
        })
    })?;

    // The guard itself.
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT e.name, t.evtenabled::text FROM (VALUES ('multitenancy_guard_ddl'), ('multitenancy_guard_drop'), \
                        ('multitenancy_guard_start')) e(name) \
                   LEFT JOIN pg_catalog.pg_event_trigger t ON t.evtname = e.name ORDER BY 1",
                None,
                &[],
            )
            .ctx("verify: event triggers")?;
        for row in rows {
            let name = row.get::<String>(1).ctx("evtname")?.unwrap_or_default();
            match row.get::<String>(2).ctx("evtenabled")?.as_deref() {
                Some("A") => {}
                None => found.push(error(
                    name.clone(),
                    "event trigger is missing",
                    "ALTER EXTENSION multitenancy UPDATE; or drop and re-create the extension",
                )),
                Some(_) => found.push(error(
                    name.clone(),
                    "event trigger is disabled or not ENABLE ALWAYS: schema changes are not checked",
                    format!("ALTER EVENT TRIGGER {name} ENABLE ALWAYS;"),
                )),
            }
        }
        Ok::<_, MtError>(())
    })?;

    found.sort_by_key(|f| match f.severity {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    });
    Ok(found)
}

fn info(object: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { severity: "info", object: object.into(), problem: problem.into(), fix: fix.into() }
}

/// Code of the table owner's that runs on every tenant's rows of an enabled table, for a DBA to
/// review: PostgreSQL runs triggers, policies and index expressions with the owner's rights and
/// whatever tenant context the statement has (none, during a migration), and nothing can stop
/// the owner's own code from reading what it is given. Severity `info`: a review, not a fault.
fn owner_code(rel: &Relation) -> Result<Vec<Finding>> {
    let mut found = Vec::new();
    let ours_triggers: Vec<&str> = spec::TRIGGERS.iter().map(|t| t.name).collect();
    let ours_policies: Vec<&str> =
        spec::POLICIES.iter().chain(spec::DISTRIBUTED_POLICIES.iter()).map(|p| p.name).collect();
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT 'trigger ' || t.tgname || ' calls ' || t.tgfoid::pg_catalog.regprocedure::text, \
                        'Review ' || t.tgfoid::pg_catalog.regprocedure::text || ': it runs as the role writing, on that row of any tenant.' \
                   FROM pg_catalog.pg_trigger t \
                  WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname <> ALL ($2) \
                 UNION ALL \
                 SELECT 'policy ' || p.polname || ' of the owner''s: ' || \
                        COALESCE(pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)), \
                        'Review it: it is evaluated on every row a query reads, next to the isolation policy.' \
                   FROM pg_catalog.pg_policy p \
                  WHERE p.polrelid = $1 AND p.polname <> ALL ($3) \
                 UNION ALL \
                 SELECT 'index ' || i.indexrelid::pg_catalog.regclass::text || ' has an expression or predicate: ' || \
                        pg_catalog.pg_get_indexdef(i.indexrelid), \
                        'Review the functions it calls: they run as the table owner on every tenant''s rows when the index is built or written.' \
                   FROM pg_catalog.pg_index i \
                  WHERE i.indrelid = $1 AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) \
                 UNION ALL \
                 SELECT 'check constraint ' || c.conname || ': ' || pg_catalog.pg_get_constraintdef(c.oid), \
                        'Review the functions it calls: they run on every tenant''s rows when the constraint is validated.' \
                   FROM pg_catalog.pg_constraint c \
                  WHERE c.conrelid = $1 AND c.contype = 'c' \
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid \
                                 WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = c.oid \
                                   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                                   AND f.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace) \
                 ORDER BY 1",
                None,
                &[rel.oid.into(), ours_triggers.clone().into(), ours_policies.clone().into()],
            )
            .ctx("verify: owner code")?;
        for row in rows {
            found.push(info(
                rel.display(),
                row.get::<String>(1).ctx("owner code")?.unwrap_or_default(),
                row.get::<String>(2).ctx("review")?.unwrap_or_default(),
            ));
        }
        Ok::<_, MtError>(())
    })?;
    Ok(found)
}

/// Audit the database: one row per problem that weakens tenant isolation, with the fix.
/// No `error` or `warning` row means healthy; `info` rows list owner code to review.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn verify(
) -> TableIterator<'static, (name!(severity, String), name!(object, String), name!(problem, String), name!(fix, String))>
{
    let rows = findings().or_raise();
    TableIterator::new(rows.into_iter().map(|f| (f.severity.to_string(), f.object, f.problem, f.fix)))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn problems() -> Vec<String> {
        findings().unwrap().into_iter().map(|f| format!("{} {}: {}", f.severity, f.object, f.problem)).collect()
    }

    #[pg_test]
    fn a_clean_database_is_healthy() {
        // PostgreSQL 14 has no security_invoker: there a view is safe when its owner is filtered.
        #[cfg(not(feature = "pg14"))]
        const VIEW: &str = "CREATE VIEW v_orders_view WITH (security_invoker = true) AS SELECT * FROM v_orders";
        #[cfg(feature = "pg14")]
        const VIEW: &str = "CREATE ROLE v_view_owner; GRANT SELECT ON v_orders TO v_view_owner; \
                            CREATE VIEW v_orders_view AS SELECT * FROM v_orders; \
                            ALTER VIEW v_orders_view OWNER TO v_view_owner";
        Spi::run(
            "CREATE TABLE v_orders (id int PRIMARY KEY, tenant_id uuid);
             CREATE TABLE v_countries (code text PRIMARY KEY);
             SELECT multitenancy.tenant_exempt('v_countries', 'ISO country codes');",
        )
        .unwrap();
        #[cfg(feature = "pg14")]
        Spi::run("SET LOCAL multitenancy.ddl_guard = off").unwrap();
        Spi::run(VIEW).unwrap();
        #[cfg(feature = "pg14")]
        Spi::run("SET LOCAL multitenancy.ddl_guard = on").unwrap();
        assert_eq!(problems(), Vec::<String>::new());
    }

    #[pg_test]
    fn problems_are_reported_with_their_fix() {
        Spi::run(
            "CREATE TABLE v_orders (id int PRIMARY KEY, tenant_id uuid);
             SET LOCAL multitenancy.ddl_guard = off;
             ALTER TABLE v_orders NO FORCE ROW LEVEL SECURITY;
             CREATE TABLE v_loose (id int);
             CREATE VIEW v_leak AS SELECT * FROM v_orders;",
        )
        .unwrap();
        let found = findings().unwrap();
        let problems = problems();
        assert!(
            problems.iter().any(|p| p.starts_with("error public.v_orders: row level security is not forced")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("public.v_loose: table in a guarded schema is neither")),
            "{problems:?}"
        );
        #[cfg(not(feature = "pg14"))]
        let leak = "public.v_leak: view is not security_invoker";
        #[cfg(feature = "pg14")]
        let leak = "public.v_leak: view reads tenant-enabled table public.v_orders as its owner";
        assert!(problems.iter().any(|p| p.contains(leak)), "{problems:?}");
        assert!(found.iter().all(|f| !f.fix.is_empty()));
        assert_eq!(found.first().map(|f| f.severity), Some("error"), "errors first");
    }
}
