//! Moving tenants: what an export or import of one tenant needs inside the database. The
//! `mt-move` program (`cli/`) does the copying with COPY; README "Moving tenants" has the
//! workflows and the archive format.
//!
//! Both sides are operator-only and one tenant per transaction:
//! - `tenant_export(tenant)` returns the registry part of the archive (tenant, members, domains,
//!   quota overrides, metered usage, tables and columns) and makes the tenant the context for
//!   the rest of the transaction, in any status: the exporter then reads each table under row
//!   level security, as the application would, and sees that tenant's rows only.
//!   The rest of that transaction is read-only.
//! - `tenant_import_begin(archive, tenant, mode)` checks the archive (format, extension version,
//!   tables and columns: `import_check`, registry entries), creates the tenant (or, for a
//!   restore, deletes the tenant's rows and registry entries) and makes it the context.
//!   `tenant_import_rows` then writes the rows the importer staged as text, as each table's
//!   owner: they get `tenant_id` from the column default, pass the isolation policy's WITH
//!   CHECK, and are counted and held to the tenant's quotas by the usual triggers.
//!   `tenant_import_keys` and `tenant_import_sequences` read every tenant's keys as the owner;
//!   `tenant_import_end()` ends the context.
//!
//! Export and the import's begin and end write one audit row each (`tenant_export`,
//! `tenant_import`, `tenant_import_end`).
use crate::context;
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::tenants::access;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// The newest archive format this version reads and writes.
const FORMAT: i64 = 1;

fn require_operator(action: &'static str) -> Result<()> {
    if !access::is_operator()? {
        return Err(MtError::OperatorsOnly {
            action,
            why: "moving a tenant reads or writes every one of its rows and registry entries",
        });
    }
    Ok(())
}

/// An operator, in a transaction block that moves no tenant yet.
fn operator_in_transaction(function: &'static str, action: &'static str) -> Result<()> {
    // SAFETY: reads transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return Err(MtError::NotInTransactionBlock { function });
    }
    require_operator(action)?;
    context::refuse_second_move()
}

/// Export one tenant: its registry entries and the tables' columns as the archive's manifest;
/// the tenant is the context for the rest of the transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_export(tenant: Option<&str>) -> pgrx::JsonB {
    let run = || {
        operator_in_transaction("multitenancy.tenant_export", "export a tenant")?;
        let tenant = access::tenant(tenant)?;
        let manifest = access::change(
            "tenant_export",
            Some(tenant.id),
            "SELECT multitenancy._tenant_export($1)",
            &[tenant.id.into()],
        )?
        .ok_or_else(|| MtError::internal("moving::export", "no manifest"))?;
        context::enter_move(tenant.id, false)?;
        // The rest of the transaction only reads (PostgreSQL refuses to switch back): no code
        // that runs while the tables are read — a table owner's policy functions included —
        // writes anything with the exporter's rights.
        Spi::run("SELECT pg_catalog.set_config('transaction_read_only', 'on', true)")
            .ctx("moving::export read only")?;
        serde_json::from_str(&manifest).map(pgrx::JsonB).map_err(|e| MtError::internal("moving::export", e))
    };
    run().or_raise()
}

/// Parse "major.minor.patch" (anything after a '-' ignored) for comparison.
fn version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split('-').next()?.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

fn installed_version() -> Result<String> {
    Spi::get_one::<String>("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'multitenancy'")
        .ctx("moving::installed_version")?
        .ok_or_else(|| MtError::internal("moving::installed_version", "extension not installed"))
}

/// Refuse an archive of a newer format or extension version, or whose tables do not fit.
fn check_archive(archive: &serde_json::Value) -> Result<()> {
    let format = archive.get("format").and_then(serde_json::Value::as_i64);
    if format != Some(FORMAT) {
        return Err(MtError::ArchiveUnsupported {
            reason: match format {
                Some(f) if f > FORMAT => format!("it has archive format {f}, and this version reads format {FORMAT}"),
                _ => "it is not a multitenancy archive manifest (no \"format\": 1)".into(),
            },
            hint: "Import it with the multitenancy version that wrote it, or upgrade this database's extension \
                   (ALTER EXTENSION multitenancy UPDATE) and mt-move."
                .into(),
        });
    }
    let installed = installed_version()?;
    let written = archive.get("extension_version").and_then(serde_json::Value::as_str).unwrap_or("");
    match (version(written), version(&installed)) {
        (Some(w), Some(i)) if w <= i => {}
        _ => {
            return Err(MtError::ArchiveUnsupported {
                reason: format!(
                    "it was written by multitenancy {}, and this database has {installed}",
                    if written.is_empty() { "(no version)" } else { written }
                ),
                hint: "Upgrade the extension here first (ALTER EXTENSION multitenancy UPDATE): an archive from a \
                       newer version may carry tables or columns this version cannot place."
                    .into(),
            });
        }
    }
    let mut problems = Vec::new();
    let mut missing_table = false;
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT severity, problem, problem LIKE 'the archive has rows of table %' \
                   FROM multitenancy.import_check($1) WHERE severity = 'error'",
                None,
                &[pgrx::JsonB(archive.clone()).into()],
            )
            .ctx("moving::import_check")?;
        for row in rows {
            problems.push(row.get::<String>(2).ctx("problem")?.unwrap_or_default());
            missing_table |= row.get::<bool>(3).ctx("missing")?.unwrap_or(false);
        }
        Ok::<_, MtError>(())
    })?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MtError::ArchiveMismatch { problems, missing_table })
    }
}

/// Begin importing an archive: as a new tenant (`mode` 'new': the archive's slug, or `tenant`)
/// or replacing an existing tenant's rows and registry entries (`mode` 'replace': the tenant
/// `tenant`, or the archive's slug). The tenant is the context until `tenant_import_end`.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_import_begin(
    archive: Option<pgrx::JsonB>,
    tenant: default!(Option<&str>, "NULL"),
    mode: default!(Option<&str>, "'new'"),
) -> pgrx::Uuid {
    let run = || {
        operator_in_transaction("multitenancy.tenant_import_begin", "import a tenant")?;
        let archive = archive.ok_or(MtError::NullArgument { argument: "archive" })?.0;
        let mode = match mode {
            Some(m @ ("new" | "replace")) => m,
            other => {
                return Err(MtError::InvalidArgument {
                    message: format!("invalid import mode \"{}\"", other.unwrap_or("NULL")),
                    hint: "Pass mode => 'new' (a new tenant) or mode => 'replace' (restore over an existing tenant)."
                        .into(),
                })
            }
        };
        check_archive(&archive)?;
        let slug = tenant.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(slug) = &slug {
            crate::registry::tenants::validate_slug(slug)?;
        }
        let id = access::change(
            "tenant_import",
            None,
            "SELECT multitenancy._tenant_import_begin($1, $2, $3)",
            &[pgrx::JsonB(archive).into(), slug.into(), mode.into()],
        )?
        .and_then(|id| crate::uuid::parse(&id))
        .ok_or_else(|| MtError::internal("moving::import_begin", "no tenant id"))?;
        context::enter_move(id, true)?;
        Ok(id)
    };
    run().or_raise()
}

fn import_context() -> Result<context::Moving> {
    require_operator("import a tenant")?;
    context::moving().filter(|m| m.import).ok_or_else(|| MtError::MoveState {
        reason: "no import was begun in this transaction".into(),
        hint: "Call SELECT multitenancy.tenant_import_begin(<manifest>) first, in the same transaction.".into(),
    })
}

/// An enabled table rows are imported into, and the caller's staging table of them.
struct Staged {
    table: crate::catalog::Relation,
    staged: crate::catalog::Relation,
    /// The staged columns with the target column's type.
    columns: Vec<(String, String)>,
}

/// `tbl` must be a table tenants are imported into (listed by `move_tables()`).
fn import_table(tbl: Option<crate::catalog::Regclass>) -> Result<crate::catalog::Relation> {
    let tbl = tbl.ok_or(MtError::NullArgument { argument: "tbl" })?.0;
    let table = crate::catalog::Relation::lookup(tbl)?;
    let listed = crate::registry::as_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM multitenancy.move_tables() m WHERE m.table_name OPERATOR(pg_catalog.=) $1)",
            &[tbl.into()],
        )
        .ctx("moving::import_table")
    })?
    .unwrap_or(false);
    if !listed {
        return Err(MtError::InvalidArgument {
            message: format!("{} is not a table tenants are imported into", table.sql()),
            hint:
                "Import into the tenant-enabled tables of multitenancy.move_tables() (partitions through their parent)."
                    .into(),
        });
    }
    Ok(table)
}

impl Staged {
    /// Check `staging` for the table's owner to read: the caller's own temporary table in which
    /// nothing of the caller's can run — only text columns (no type, cast or domain of the
    /// caller's), none generated, no row level security, rules, indexes, statistics objects,
    /// parent or children — whose columns are importable columns of `tbl`.
    fn check(tbl: Option<crate::catalog::Regclass>, staging: Option<crate::catalog::Regclass>) -> Result<Staged> {
        import_context()?;
        let table = import_table(tbl)?;
        let staging = staging.ok_or(MtError::NullArgument { argument: "staging" })?.0;
        let plain = Spi::get_one_with_args::<bool>(
            "SELECT c.relkind = 'r' AND c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
                    AND c.relowner OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) \
                    AND NOT c.relrowsecurity AND NOT c.relforcerowsecurity AND NOT c.relhassubclass AND NOT c.relhasrules \
                    AND NOT c.relhasindex \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                                       AND NOT a.attisdropped \
                                       AND (a.atttypid OPERATOR(pg_catalog.<>) 'pg_catalog.text'::pg_catalog.regtype \
                                            OR a.attgenerated OPERATOR(pg_catalog.<>) '')) \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_statistic_ext x WHERE x.stxrelid = c.oid) \
               FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            &[staging.into()],
        )
        .ctx("moving::staging")?
        .unwrap_or(false);
        let staged = crate::catalog::Relation::lookup(staging)?;
        if !plain {
            return Err(MtError::InvalidArgument {
                message: format!(
                    "{} is not a temporary table of this session owned by the caller with only text columns \
                     and no generated columns, row level security, rules, indexes, statistics, parent or children",
                    staged.sql()
                ),
                hint: "Stage the rows in CREATE TEMPORARY TABLE ... (<column> text, ...) and COPY them there first."
                    .into(),
            });
        }
        // The staged columns, each with the target column's type (NULL: not an importable column).
        let columns = crate::registry::with_pinned_search_path(|| {
            Spi::connect(|client| {
                let rows = client
                    .select(
                        "SELECT s.attname::text, CASE WHEN t.attgenerated = '' AND t.attname <> 'tenant_id' \
                                 THEN pg_catalog.format_type(t.atttypid, t.atttypmod) END \
                           FROM pg_catalog.pg_attribute s \
                           LEFT JOIN pg_catalog.pg_attribute t ON t.attrelid = $1 AND t.attname = s.attname \
                                 AND t.attnum > 0 AND NOT t.attisdropped \
                          WHERE s.attrelid = $2 AND s.attnum > 0 AND NOT s.attisdropped ORDER BY s.attnum",
                        None,
                        &[table.oid.into(), staging.into()],
                    )
                    .ctx("moving::staged columns")?;
                let mut columns = Vec::new();
                for row in rows {
                    columns.push((
                        row.get::<String>(1).ctx("name")?.unwrap_or_default(),
                        row.get::<String>(2).ctx("type")?,
                    ));
                }
                Ok::<_, MtError>(columns)
            })
        })?;
        if let Some((name, _)) = columns.iter().find(|(_, ty)| ty.is_none()) {
            return Err(MtError::InvalidArgument {
                message: format!("column \"{name}\" of {} is not a column {} takes rows in", staged.sql(), table.sql()),
                hint: "Stage only the table's own columns (not tenant_id, not generated columns).".into(),
            });
        }
        if columns.is_empty() {
            return Err(MtError::InvalidArgument {
                message: format!("{} has no columns", staged.sql()),
                hint: "Stage the table's columns.".into(),
            });
        }
        let columns = columns.into_iter().map(|(n, ty)| (n, ty.unwrap_or_default())).collect();
        Ok(Staged { table, staged, columns })
    }

    /// Run `f` as the table's owner, who may read the staged rows (a GRANT on the caller's own
    /// temporary table, gone with it): see [`as_table_owner`].
    fn as_owner<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let owner = crate::registry::relation_owner(self.table.oid)?;
        Spi::run_with_args(
            &format!("GRANT SELECT ON {} TO {}", self.staged.sql(), crate::registry::role_sql(owner)),
            &[],
        )
        .ctx("moving::grant staged")?;
        as_table_owner(self.table.oid, f)
    }
}

/// Run `f` as the owner of `table` in a security-restricted operation without admin mode — as
/// `tenant_purge`'s DELETEs run: the owner's triggers, defaults, checks, casts and policies never
/// run with the importer's rights (a superuser's, an admin's), and see the imported tenant only.
fn as_table_owner<R>(table: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> Result<R> {
    crate::registry::as_table_owner(table, || context::admin::suspended(f))
}

/// Write the rows of `staging` (see [`Staged::check`]) into `tbl`, an enabled table, for the
/// tenant being imported: their text cast to each column's type, as the table's owner (see
/// [`as_table_owner`]), through the owner's forced row level security, which checks every row
/// against the tenant. Returns the rows written.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_import_rows(tbl: Option<crate::catalog::Regclass>, staging: Option<crate::catalog::Regclass>) -> i64 {
    let run = || {
        let staged = Staged::check(tbl, staging)?;
        let sql = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM ONLY {} AS s",
            staged.table.sql(),
            staged.columns.iter().map(|(n, _)| quote_identifier(n)).collect::<Vec<_>>().join(", "),
            staged
                .columns
                .iter()
                .map(|(n, ty)| format!("s.{}::{ty}", quote_identifier(n)))
                .collect::<Vec<_>>()
                .join(", "),
            staged.staged.sql()
        );
        staged.as_owner(|| {
            Spi::connect_mut(|client| client.update(&sql, None, &[]).map(|t| t.len() as i64).ctx("moving::import_rows"))
        })
    };
    run().or_raise()
}

/// The staged rows of `staging` whose key is taken in `tbl`, per unique key of `tbl` without
/// `tenant_id` whose columns are all staged (keys with `skip_column`, an id the import remaps,
/// are left out): the key's columns, how many staged rows collide and up to three examples.
/// Read as the table's owner with FORCE not applying to it (every tenant's keys count; no
/// policy runs), the staged values cast by the owner.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_import_keys(
    tbl: Option<crate::catalog::Regclass>,
    staging: Option<crate::catalog::Regclass>,
    skip_column: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(key, String), name!(collisions, i64), name!(examples, Vec<Option<String>>))> {
    let run = || {
        let staged = Staged::check(tbl, staging)?;
        // Each unique key: its columns with their types and the equality of the index's operator
        // class, schema-qualified.
        let keys = crate::registry::with_pinned_search_path(|| {
            Spi::connect(|client| {
                let rows = client
                    .select(
                        "SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.i), \
                                pg_catalog.array_agg(pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname) ORDER BY k.i) \
                           FROM pg_catalog.pg_index x \
                          CROSS JOIN LATERAL pg_catalog.unnest(x.indkey) WITH ORDINALITY k(attnum, i) \
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
                           JOIN pg_catalog.pg_opclass c ON c.oid = x.indclass[k.i - 1] \
                           JOIN pg_catalog.pg_amop m ON m.amopfamily = c.opcfamily AND m.amopstrategy = 3 \
                                AND m.amoplefttype = c.opcintype AND m.amoprighttype = c.opcintype \
                           JOIN pg_catalog.pg_operator o ON o.oid = m.amopopr \
                           JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
                          WHERE x.indrelid = $1 AND x.indisunique AND x.indpred IS NULL AND x.indexprs IS NULL \
                          GROUP BY x.indexrelid HAVING NOT pg_catalog.bool_or(a.attname = 'tenant_id') ORDER BY x.indexrelid",
                        None,
                        &[staged.table.oid.into()],
                    )
                    .ctx("moving::keys")?;
                let mut keys = Vec::new();
                for row in rows {
                    keys.push((
                        row.get::<Vec<String>>(1).ctx("columns")?.unwrap_or_default(),
                        row.get::<Vec<String>>(2).ctx("operators")?.unwrap_or_default(),
                    ));
                }
                Ok::<_, MtError>(keys)
            })
        })?;
        let type_of = |c: &String| staged.columns.iter().find(|(n, _)| n == c).map(|(_, t)| t.clone());
        let checks: Vec<(String, String)> = keys
            .into_iter()
            .filter(|(columns, _)| !columns.iter().any(|c| Some(c.as_str()) == skip_column || type_of(c).is_none()))
            .map(|(columns, operators)| {
                let on = columns
                    .iter()
                    .zip(&operators)
                    .map(|(c, op)| {
                        format!("t.{0} {op} s.{0}::{1}", quote_identifier(c), type_of(c).unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let shown = columns
                    .iter()
                    .map(|c| format!("s.{}", quote_identifier(c)))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                let sql = format!(
                    "SELECT pg_catalog.count(*), (pg_catalog.array_agg({shown}))[1:3] FROM ONLY {} AS s \
                      WHERE EXISTS (SELECT 1 FROM {} AS t WHERE {on})",
                    staged.staged.sql(),
                    staged.table.sql()
                );
                (columns.join(", "), sql)
            })
            .collect();
        let mut found = Vec::new();
        staged.as_owner(|| {
            let _unforced = crate::registry::NoForceRls::enter();
            Spi::connect(|client| {
                for (key, sql) in &checks {
                    let row = client.select(sql, Some(1), &[]).ctx("moving::collisions")?.first();
                    let n = row.get::<i64>(1).ctx("count")?.unwrap_or(0);
                    if n > 0 {
                        found.push((
                            key.clone(),
                            n,
                            row.get::<Vec<Option<String>>>(2).ctx("examples")?.unwrap_or_default(),
                        ));
                    }
                }
                Ok::<_, MtError>(())
            })
        })?;
        Ok(found)
    };
    TableIterator::new(run().or_raise())
}

/// Advance every sequence that fills a column of `tbl` past the column's highest value in the
/// table (all tenants' rows: read as the owner with FORCE not applying to it, one index probe
/// for an indexed column). For an import, before remapping ids from a sequence and after
/// writing rows with their ids. Returns how many sequences moved.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_import_sequences(tbl: Option<crate::catalog::Regclass>) -> i64 {
    let run = || {
        import_context()?;
        let table = import_table(tbl)?;
        let sequences = crate::registry::with_pinned_search_path(|| {
            Spi::connect(|client| {
                let rows = client
                    .select(
                        "SELECT a.attname::text, d.objid::pg_catalog.regclass::text FROM pg_catalog.pg_depend d \
                           JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                            AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                            AND d.refobjid = $1 AND d.deptype IN ('a', 'i') ORDER BY a.attnum",
                        None,
                        &[table.oid.into()],
                    )
                    .ctx("moving::sequences")?;
                let mut sequences = Vec::new();
                for row in rows {
                    sequences.push((
                        row.get::<String>(1).ctx("column")?.unwrap_or_default(),
                        row.get::<String>(2).ctx("sequence")?.unwrap_or_default(),
                    ));
                }
                Ok::<_, MtError>(sequences)
            })
        })?;
        let mut moved = 0;
        for (column, sequence) in sequences {
            let sql = format!(
                "SELECT pg_catalog.setval('{seq}'::pg_catalog.regclass, x.m) \
                   FROM (SELECT pg_catalog.max(t.{col})::bigint AS m FROM {tbl} AS t) x \
                  WHERE x.m > coalesce(pg_catalog.pg_sequence_last_value('{seq}'::pg_catalog.regclass), 0)",
                seq = sequence.replace('\'', "''"),
                col = quote_identifier(&column),
                tbl = table.sql()
            );
            moved += as_table_owner(table.oid, || {
                let _unforced = crate::registry::NoForceRls::enter();
                Spi::connect_mut(|client| client.update(&sql, None, &[]).map(|t| t.len() as i64).ctx("moving::setval"))
            })?;
        }
        Ok(moved)
    };
    run().or_raise()
}

/// Finish the import begun with `tenant_import_begin` and end its context. Returns the rows and
/// bytes the tenant holds per physical table, from its counters (exact: the usage triggers
/// counted every row written and deleted); with `recount`, the counters are first set from the
/// rows themselves.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_import_end(
    recount: default!(Option<bool>, false),
) -> TableIterator<'static, (name!(table_name, String), name!(row_count, i64), name!(byte_count, i64))> {
    let run = || {
        let moving = import_context()?;
        let rows = crate::registry::as_owner(|| {
            Spi::connect_mut(|client| {
                let found = client
                    .update(
                        "SELECT table_name::text, row_count, byte_count FROM multitenancy._tenant_import_end($1, $2)",
                        None,
                        &[moving.tenant.into(), recount.unwrap_or(false).into()],
                    )
                    .ctx("moving::import_end")?;
                let mut rows = Vec::new();
                for row in found {
                    rows.push((
                        row.get::<String>(1).ctx("table")?.unwrap_or_default(),
                        row.get::<i64>(2).ctx("rows")?.unwrap_or(0),
                        row.get::<i64>(3).ctx("bytes")?.unwrap_or(0),
                    ));
                }
                Ok::<_, MtError>(rows)
            })
        })?;
        let tables: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(table, rows, _)| (table.clone(), serde_json::json!(rows))).collect();
        let total: i64 = rows.iter().map(|r| r.1).sum();
        access::record("tenant_import_end", Some(moving.tenant), serde_json::json!({"rows": total, "tables": tables}))?;
        context::leave_move();
        Ok(rows)
    };
    TableIterator::new(run().or_raise())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn versions_compare_numerically() {
        assert!(super::version("0.10.0") > super::version("0.9.9"));
        assert_eq!(super::version("0.2.0-beta"), Some((0, 2, 0)));
        assert_eq!(super::version("x"), None);
    }
}
