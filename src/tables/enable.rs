//! `tenant_enable` / `tenant_disable`: turn a table into a tenant-protected one and back.
//!
//! The DDL runs as the caller, so PostgreSQL's own checks decide who may do it (the table owner
//! or a superuser); only the registry row is written through [`registry`]. Everything happens
//! in the caller's transaction: an error anywhere leaves the table exactly as it was.
use crate::catalog::{self, Regclass, Relation};
use crate::error::{notice, warning, MtError, OrRaise, Result, SpiContext};
use crate::quotas;
use crate::registry;
use crate::registry::tenants;
use crate::tables::busy::Busy;
use crate::tables::hardening;
use crate::tables::spec::{self, Deviation, DEFAULT_SQL, DISTRIBUTED_POLICIES, POLICIES, TENANT_COLUMN, TRIGGERS};
use pgrx::prelude::*;
use pgrx::spi::quote_literal;

fn run(sql: &str) -> Result<()> {
    Spi::run(sql).ctx("enable: DDL")
}

pub fn protectable(relid: pg_sys::Oid) -> Result<Relation> {
    let rel = Relation::lookup(relid)?;
    if !rel.is_table() {
        return Err(MtError::WrongRelationKind { table: rel.display(), kind: rel.kind_phrase() });
    }
    if catalog::is_reserved_schema(&rel.schema) {
        return Err(MtError::ReservedSchema { table: rel.display(), schema: rel.schema.clone() });
    }
    Ok(rel)
}

/// Rows of `table` that have no tenant yet (all of them when the column does not exist).
fn unassigned_rows(rel: &Relation, column_exists: bool) -> Result<i64> {
    let filter = if column_exists { format!(" WHERE {TENANT_COLUMN} IS NULL") } else { String::new() };
    let any = Spi::get_one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {}{filter})", rel.sql()))
        .ctx("enable: any unassigned rows")?
        .unwrap_or(false);
    if !any {
        return Ok(0);
    }
    Spi::get_one::<i64>(&format!("SELECT count(*) FROM {}{filter}", rel.sql()))
        .ctx("enable: count unassigned rows")
        .map(|n| n.unwrap_or(0))
}

/// Give the tenant column to a table: with `backfill` every existing row gets that tenant (a
/// constant default, which PostgreSQL stores without rewriting the table).
fn add_or_fill_column(rel: &Relation, deviations: &[Deviation], backfill: Option<pgrx::Uuid>) -> Result<()> {
    let table = rel.sql();
    if deviations.contains(&Deviation::ColumnMissing) {
        match backfill {
            Some(tenant) => {
                // A constant default fills existing rows without rewriting the table (DDL takes
                // no parameters, so the value goes in as a quoted literal).
                run(&format!(
                    "ALTER TABLE {table} ADD COLUMN {TENANT_COLUMN} uuid NOT NULL DEFAULT {}::uuid",
                    quote_literal(tenant.to_string())
                ))?;
                run(&format!("ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} SET DEFAULT {DEFAULT_SQL}"))?;
            }
            None => {
                let rows = unassigned_rows(rel, false)?;
                if rows > 0 {
                    return Err(MtError::BackfillRequired { table: rel.display(), rows, column_exists: false });
                }
            }
        }
    } else if deviations.contains(&Deviation::ColumnNullable) {
        let rows = unassigned_rows(rel, true)?;
        if rows > 0 {
            let Some(tenant) = backfill else {
                return Err(MtError::BackfillRequired { table: rel.display(), rows, column_exists: true });
            };
            // As the table's owner: the owner's triggers that the UPDATE fires never run with the
            // rights of a DBA who enables someone else's table.
            registry::as_table_owner(rel.oid, || {
                Spi::run_with_args(
                    &format!("UPDATE {table} SET {TENANT_COLUMN} = $1 WHERE {TENANT_COLUMN} IS NULL"),
                    &[tenant.into()],
                )
                .ctx("enable: backfill")
            })?;
        }
    }
    Ok(())
}

pub fn enable(relid: pg_sys::Oid, backfill: Option<pgrx::Uuid>) -> Result<()> {
    // Our own DDL on this table is not for the DDL guard to check (it is checked as a whole at
    // the end); whatever the owner's code run by it does elsewhere is.
    let _busy = Busy::enter(&[relid]);
    let rel = protectable(relid)?;
    if let Some(reason) = registry::exemption(relid)? {
        return Err(MtError::TableExempt { table: rel.display(), reason });
    }
    if let Some(tenant) = backfill {
        tenants::require(&tenant.to_string())?;
    }
    run(&format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", rel.sql()))?;

    let before = spec::inspect(&rel)?;
    // What needs a decision of the owner's first (a column to convert, a rule, a leaky policy,
    // a parent that is not enabled) is refused before anything is built.
    if let Some(deviation) = before.iter().find(|d| d.repair_sql("").is_none()) {
        return Err(match deviation {
            Deviation::ColumnType { found } => MtError::TenantColumnType { table: rel.display(), found: found.clone() },
            other => MtError::GuardWeakens {
                command: "tenant_enable".into(),
                table: rel.display(),
                what: other.describe(),
                fix: other.fix(&rel.sql()),
            },
        });
    }
    let was_enabled = registry::is_enabled(relid)?;
    let mut enabled = registry::enabled_set()?;
    enabled.insert(relid);
    if before.is_empty() && was_enabled {
        let hardened = hardening::harden(&rel, &enabled)?;
        let children = enable_children(&rel, backfill)?;
        hardening::recheck("tenant_enable", &rel, &enabled)?;
        if hardened.is_empty() && children.is_empty() {
            notice(format!("table {} is already tenant-enabled; nothing changed", rel.display()));
        }
        return Ok(());
    }

    // A forced table filters its owner too, and a migration has no tenant context: the rows
    // to count and backfill would be invisible (or raise "no tenant context"). Within this
    // transaction, with the table locked, the owner reads it unfiltered; FORCE comes back with
    // the repairs below and the final inspection checks it.
    if !before.contains(&Deviation::RowSecurityNotForced) {
        run(&format!("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY", rel.sql()))?;
    }
    add_or_fill_column(&rel, &before, backfill)?;
    // Whatever is still missing is built from the spec, in the spec's order — except the tenant
    // index, which waits for the hardening: its UNIQUE (tenant_id, <primary key>), or a unique
    // key it rebuilds with tenant_id first, is a tenant index, and a second index on tenant_id
    // alone would double the build time of enabling and slow every write.
    repair(&rel, spec::inspect(&rel)?.iter().filter(|d| **d != Deviation::IndexMissing))?;
    hardening::harden(&rel, &enabled)?;
    repair(&rel, spec::inspect(&rel)?.iter())?;
    let after = spec::inspect(&rel)?;
    if let Some(left) = after.first() {
        return Err(MtError::internal("tenant_enable", format!("after enabling: {}", left.describe())));
    }
    registry::record_enabled(relid)?;
    // The counting was missing (a table being enabled, or a repair): the counters start from
    // what the table holds. A partitioned table holds nothing itself; its partitions count.
    let counting_installed =
        before.iter().any(|d| matches!(d, Deviation::TriggerMissing { .. } | Deviation::TriggerDiffers { .. }));
    if counting_installed && rel.kind == pg_sys::RELKIND_RELATION {
        quotas::recount(relid)?;
    }
    enable_children(&rel, backfill)?;
    // The owner's code that the DDL above ran (triggers during a backfill, index expressions,
    // constraint checks) had this table left to us: it must still be the protected shape.
    hardening::recheck("tenant_enable", &rel, &enabled)?;
    if was_enabled {
        let repaired: Vec<String> = before.iter().map(Deviation::describe).collect();
        notice(format!("repaired tenant protection of {}: {}", rel.display(), repaired.join("; ")));
    }
    warn_about_leaks(&rel)
}

/// Build what the spec says is missing.
fn repair<'a>(rel: &Relation, deviations: impl Iterator<Item = &'a Deviation>) -> Result<()> {
    for deviation in deviations {
        let statements =
            deviation.repair_sql(&rel.sql()).ok_or_else(|| MtError::internal("tenant_enable", deviation.describe()))?;
        for statement in statements {
            run(&statement)?;
        }
    }
    Ok(())
}

/// Partitions and inheritance children are queried directly too: they get the same protection.
/// Returns the children that were not enabled before.
pub fn enable_children(rel: &Relation, backfill: Option<pgrx::Uuid>) -> Result<Vec<pg_sys::Oid>> {
    let mut enabled = Vec::new();
    for child in catalog::children(rel.oid)? {
        if !registry::is_enabled(child)? {
            enable(child, backfill)?;
            enabled.push(child);
        }
    }
    Ok(enabled)
}

/// Views and publications created before the table was enabled can still leak it; the guard
/// refuses new ones, and verify() lists these.
fn warn_about_leaks(rel: &Relation) -> Result<()> {
    let only_this: std::collections::HashSet<pg_sys::Oid> = [rel.oid].into_iter().collect();
    let readers = catalog::oid_column(
        "SELECT DISTINCT w.ev_class FROM pg_catalog.pg_depend d \
           JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid \
          WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
            AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = $1 \
            AND w.ev_class <> $1",
        &[rel.oid.into()],
    )?;
    for view in readers {
        let view_rel = Relation::lookup(view)?;
        let leaks = match view_rel.kind {
            pg_sys::RELKIND_MATVIEW => true,
            pg_sys::RELKIND_VIEW => catalog::leaky_view(view, &only_this)?.is_some(),
            _ => false,
        };
        if leaks {
            warning(format!(
                "{} {} reads {} outside its row level security; see multitenancy.verify()",
                if view_rel.kind == pg_sys::RELKIND_MATVIEW { "materialized view" } else { "view" },
                view_rel.display(),
                rel.display()
            ));
        }
    }
    let publications = catalog::oid_column("SELECT oid FROM pg_catalog.pg_publication ORDER BY pubname", &[])?;
    for publication in publications {
        let (name, tables) = catalog::published_tables(publication, &only_this)?;
        if !tables.is_empty() {
            warning(format!(
                "publication {name} publishes {}: logical decoding ignores row level security; see multitenancy.verify()",
                rel.display()
            ));
        }
    }
    Ok(())
}

pub fn disable(relid: pg_sys::Oid) -> Result<()> {
    let _busy = Busy::enter(&[relid]);
    let rel = Relation::lookup(relid)?;
    if !registry::is_enabled(relid)? {
        notice(format!("table {} is not tenant-enabled; nothing changed", rel.display()));
        return Ok(());
    }
    let table = rel.sql();
    run(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))?;
    for policy in POLICIES.iter().chain(DISTRIBUTED_POLICIES.iter()) {
        run(&policy.drop_sql(&table))?;
    }
    // No more counting: the table's rows leave the tenants' usage.
    for trigger in TRIGGERS {
        run(&trigger.drop_sql(&table))?;
    }
    quotas::forget(relid)?;
    let other_policies =
        Spi::get_one_with_args::<i64>("SELECT count(*) FROM pg_catalog.pg_policy WHERE polrelid = $1", &[relid.into()])
            .ctx("disable: other policies")?
            .unwrap_or(0);
    if other_policies == 0 {
        run(&format!("ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY"))?;
    } else {
        notice(format!(
            "row level security stays enabled on {}: it has {other_policies} other polic{}",
            rel.display(),
            if other_policies == 1 { "y" } else { "ies" }
        ));
    }
    let column = spec::column_state(relid)?;
    if column.is_some_and(|c| c.default.is_some()) {
        run(&format!("ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} DROP DEFAULT"))?;
    }
    registry::forget_enabled(relid)?;
    // A partitioned table is one table to the application: its partitions go with it.
    for child in catalog::children(relid)? {
        if registry::is_enabled(child)? {
            disable(child)?;
        }
    }
    Ok(())
}

/// Make `tbl` tenant-isolated: tenant_id column (default = current tenant), index, RLS enabled
/// and forced, and the extension's policies. Existing rows need `backfill_tenant`. Idempotent.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_enable(tbl: Option<Regclass>, backfill_tenant: default!(Option<pgrx::Uuid>, "NULL")) {
    crate::error::required(tbl, "tbl").and_then(|tbl| enable(tbl.0, backfill_tenant)).or_raise()
}

/// Remove the extension's policies, RLS flags, column default and registry entry from `tbl`.
/// The tenant_id column, its values and its index stay.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_disable(tbl: Option<Regclass>) {
    crate::error::required(tbl, "tbl").and_then(|tbl| disable(tbl.0)).or_raise()
}

pub fn exempt(relid: pg_sys::Oid, reason: Option<&str>) -> Result<()> {
    let rel = protectable(relid)?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty()).ok_or(MtError::MissingReason)?;
    if !registry::caller_owns(relid)? {
        return Err(MtError::NotTableOwner { table: rel.display(), function: "tenant_exempt" });
    }
    if registry::is_enabled(relid)? {
        return Err(MtError::TableEnabled { table: rel.display() });
    }
    registry::record_exempt(relid, reason)
}

pub fn unexempt(relid: pg_sys::Oid) -> Result<()> {
    let rel = Relation::lookup(relid)?;
    if !registry::caller_owns(relid)? {
        return Err(MtError::NotTableOwner { table: rel.display(), function: "tenant_unexempt" });
    }
    if !registry::forget_exempt(relid)? {
        notice(format!("table {} is not exempt; nothing changed", rel.display()));
    }
    Ok(())
}

/// Declare that new tables whose name matches `pattern` (LIKE, on the table name) in a guarded
/// schema are global, with a reason: the DDL guard exempts them when they are created. For
/// framework bookkeeping tables (`framework_patterns`). A DBA function (EXECUTE is revoked from
/// PUBLIC); audited.
#[pg_extern(volatile, parallel_unsafe)]
fn exempt_pattern(pattern: Option<&str>, reason: Option<&str>) {
    let run = || {
        let pattern = crate::error::required(pattern, "pattern")?;
        if pattern.trim().is_empty() || pattern.len() > 200 {
            return Err(MtError::InvalidArgument {
                message: format!("invalid exempt pattern \"{}\"", crate::error::clip(pattern)),
                hint: "A LIKE pattern on table names of 1 to 200 characters, e.g. 'django\\_%'.".into(),
            });
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty()).ok_or(MtError::MissingReason)?;
        crate::tenants::access::change(
            "exempt_pattern",
            None,
            "SELECT multitenancy._exempt_pattern_set($1, $2)",
            &[pattern.into(), reason.into()],
        )
    };
    run().or_raise();
}

/// Withdraw an exempt pattern (tables it exempted stay exempt). Audited.
#[pg_extern(volatile, parallel_unsafe)]
fn exempt_pattern_remove(pattern: Option<&str>) {
    let run = || {
        let pattern = crate::error::required(pattern, "pattern")?;
        crate::tenants::access::change(
            "exempt_pattern_remove",
            None,
            "SELECT multitenancy._exempt_pattern_remove($1)",
            &[pattern.into()],
        )
    };
    run().or_raise();
}

/// Declare `tbl` global (not tenant data: countries, plans): the DDL guard and verify() leave it
/// alone. The reason is kept in multitenancy.exempt_tables.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_exempt(tbl: Option<Regclass>, reason: Option<&str>) {
    crate::error::required(tbl, "tbl").and_then(|tbl| exempt(tbl.0, reason)).or_raise()
}

/// Withdraw an exemption (then tenant-enable the table, or the guard's checks apply to it again).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_unexempt(tbl: Option<Regclass>) {
    crate::error::required(tbl, "tbl").and_then(|tbl| unexempt(tbl.0)).or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn oid(name: &str) -> pg_sys::Oid {
        Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{name}'::regclass::oid")).unwrap().unwrap()
    }

    fn tenant(name: &str) -> pgrx::Uuid {
        Spi::get_one_with_args::<pgrx::Uuid>("SELECT multitenancy.tenant_create($1)", &[name.into()]).unwrap().unwrap()
    }

    #[pg_test]
    fn enable_builds_the_shape_and_records_the_table() {
        Spi::run("CREATE TABLE en_basic (id bigint PRIMARY KEY)").unwrap();
        enable(oid("en_basic"), None).unwrap();
        let rel = Relation::lookup(oid("en_basic")).unwrap();
        assert_eq!(spec::inspect(&rel).unwrap(), vec![]);
        assert!(registry::is_enabled(rel.oid).unwrap());
        // idempotent: a second call changes nothing
        let before = Spi::get_one::<String>(
            "SELECT string_agg(polname || pg_get_expr(polqual, polrelid), ',' ORDER BY polname) FROM pg_policy \
             WHERE polrelid = 'en_basic'::regclass",
        )
        .unwrap();
        enable(rel.oid, None).unwrap();
        let after = Spi::get_one::<String>(
            "SELECT string_agg(polname || pg_get_expr(polqual, polrelid), ',' ORDER BY polname) FROM pg_policy \
             WHERE polrelid = 'en_basic'::regclass",
        )
        .unwrap();
        assert_eq!(before, after);
        let indexes =
            Spi::get_one::<i64>("SELECT count(*) FROM pg_index WHERE indrelid = 'en_basic'::regclass").unwrap();
        assert_eq!(indexes, Some(2), "the primary key and UNIQUE (tenant_id, id), which is the tenant index");
        // Without a primary key there is no tenant key: a plain tenant index is built.
        Spi::run("CREATE TABLE en_nokey (body text)").unwrap();
        enable(oid("en_nokey"), None).unwrap();
        let nokey = Spi::get_one::<String>(
            "SELECT string_agg(pg_get_indexdef(indexrelid), ';') FROM pg_index WHERE indrelid = 'en_nokey'::regclass",
        )
        .unwrap();
        assert_eq!(
            nokey.as_deref(),
            Some("CREATE INDEX en_nokey_tenant_id_idx ON public.en_nokey USING btree (tenant_id)")
        );
    }

    #[pg_test]
    fn existing_rows_need_a_backfill_tenant() {
        Spi::run("CREATE TABLE en_rows (id int); INSERT INTO en_rows SELECT generate_series(1, 5)").unwrap();
        match enable(oid("en_rows"), None) {
            Err(MtError::BackfillRequired { rows, column_exists: false, .. }) => assert_eq!(rows, 5),
            other => panic!("expected BackfillRequired, got {other:?}"),
        }
        let acme = tenant("Acme");
        enable(oid("en_rows"), Some(acme)).unwrap();
        let assigned =
            Spi::get_one_with_args::<i64>("SELECT count(*) FROM en_rows WHERE tenant_id = $1", &[acme.into()]).unwrap();
        assert_eq!(assigned, Some(5));
        let default = Spi::get_one::<String>(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'en_rows'::regclass",
        )
        .unwrap();
        assert_eq!(default.as_deref(), Some("multitenancy.current_tenant_id()"));
    }

    #[pg_test]
    fn an_existing_uuid_column_is_reused_and_its_nulls_backfilled() {
        // With the guard on, a new table with a tenant_id uuid column is enabled at once.
        Spi::run(
            "SET LOCAL multitenancy.ddl_guard = off; CREATE TABLE en_reuse (id int, tenant_id uuid); \
             INSERT INTO en_reuse VALUES (1, NULL), (2, NULL); RESET multitenancy.ddl_guard",
        )
        .unwrap();
        assert!(matches!(
            enable(oid("en_reuse"), None),
            Err(MtError::BackfillRequired { rows: 2, column_exists: true, .. })
        ));
        let globex = tenant("Globex");
        enable(oid("en_reuse"), Some(globex)).unwrap();
        let columns = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'en_reuse'::regclass AND attnum > 0 AND NOT attisdropped",
        )
        .unwrap();
        assert_eq!(columns, Some(2), "the existing column is reused, not duplicated");
        let nulls = Spi::get_one::<i64>("SELECT count(*) FROM en_reuse WHERE tenant_id IS NULL").unwrap();
        assert_eq!(nulls, Some(0));
    }

    #[pg_test]
    fn refusals() {
        Spi::run("CREATE TABLE en_text (tenant_id text)").unwrap();
        assert!(matches!(enable(oid("en_text"), None), Err(MtError::TenantColumnType { .. })));
        Spi::run("CREATE VIEW en_view AS SELECT 1 AS x").unwrap();
        assert!(matches!(enable(oid("en_view"), None), Err(MtError::WrongRelationKind { .. })));
        assert!(matches!(enable(oid("multitenancy.tenants"), None), Err(MtError::ReservedSchema { .. })));
        Spi::run("CREATE TABLE en_unknown_backfill (id int)").unwrap();
        assert!(matches!(
            enable(oid("en_unknown_backfill"), Some(pgrx::Uuid::from_bytes([7; 16]))),
            Err(MtError::TenantNotFound { .. })
        ));
    }

    #[pg_test]
    fn a_partitioned_table_can_be_enabled() {
        Spi::run(
            "CREATE TABLE en_parted (id int, at date) PARTITION BY RANGE (at);
             CREATE TABLE en_parted_2026 PARTITION OF en_parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        )
        .unwrap();
        enable(oid("en_parted"), None).unwrap();
        assert_eq!(spec::inspect(&Relation::lookup(oid("en_parted")).unwrap()).unwrap(), vec![]);
    }

    #[pg_test]
    fn disable_removes_the_protection_but_keeps_the_data() {
        Spi::run("CREATE TABLE en_off (id int)").unwrap();
        enable(oid("en_off"), None).unwrap();
        disable(oid("en_off")).unwrap();
        let (rls, policies) = Spi::get_two::<bool, i64>(
            "SELECT relrowsecurity, (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) \
             FROM pg_class c WHERE oid = 'en_off'::regclass",
        )
        .unwrap();
        assert_eq!((rls, policies), (Some(false), Some(0)));
        let column = spec::column_state(oid("en_off")).unwrap().expect("tenant_id is kept");
        assert!(column.not_null && column.default.is_none());
        assert!(!registry::is_enabled(oid("en_off")).unwrap());
    }

    #[pg_test]
    fn disable_keeps_row_security_for_the_applications_own_policies() {
        Spi::run("CREATE TABLE en_own (id int)").unwrap();
        enable(oid("en_own"), None).unwrap();
        Spi::run("CREATE POLICY app_policy ON en_own USING (id > 0)").unwrap();
        disable(oid("en_own")).unwrap();
        let rls = Spi::get_one::<bool>("SELECT relrowsecurity FROM pg_class WHERE oid = 'en_own'::regclass").unwrap();
        assert_eq!(rls, Some(true));
    }

    #[pg_test]
    fn enable_repairs_a_damaged_table() {
        Spi::run("CREATE TABLE en_fix (id int)").unwrap();
        enable(oid("en_fix"), None).unwrap();
        Spi::run(
            "SET LOCAL multitenancy.ddl_guard = off; DROP POLICY multitenancy_isolation ON en_fix; \
             ALTER TABLE en_fix NO FORCE ROW LEVEL SECURITY; RESET multitenancy.ddl_guard",
        )
        .unwrap();
        enable(oid("en_fix"), None).unwrap();
        assert_eq!(spec::inspect(&Relation::lookup(oid("en_fix")).unwrap()).unwrap(), vec![]);
    }

    #[pg_test]
    fn dropping_an_enabled_table_forgets_it() {
        Spi::run("CREATE TABLE en_drop (id int)").unwrap();
        let relid = oid("en_drop");
        enable(relid, None).unwrap();
        Spi::run("DROP TABLE en_drop").unwrap();
        let left = Spi::get_one::<i64>("SELECT count(*) FROM multitenancy.enabled_tables").unwrap();
        assert_eq!(left, Some(0));
    }
}
