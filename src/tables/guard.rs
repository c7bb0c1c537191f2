//! The DDL guard: event triggers that keep tenant data protected through every later migration.
//!
//! - `ddl_command_end`: an enabled table whose protection a command weakened is refused (compared
//!   with [`spec::inspect`], the one description of a protected table); its keys and grants are
//!   kept hardened ([`hardening::harden`]); partitions and inheritance children of enabled tables
//!   are enabled; a new table in a guarded schema with a `tenant_id uuid` column is enabled, any
//!   other one must be enabled or exempt by COMMIT; views must be `security_invoker`;
//!   materialized views and publications may not include enabled tables.
//! - `sql_drop`: dropping the extension's policies (or the tenant index) of an enabled table is
//!   refused.
//! - pre-commit: the tables created in guarded schemas during the transaction are enabled or
//!   exempt, or the COMMIT fails.
//!
//! The extension's own DDL (`tenant_enable`, hardening) runs with the guard [`Busy`], so it does
//! not check itself. With `multitenancy.ddl_guard = off` (superusers only) nothing is checked and
//! every command is logged instead.
use crate::catalog::{oid_column, Relation};
use crate::enable;
use crate::error::{log, notice, MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::hardening;
use crate::registry;
use crate::spec;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;

thread_local! {
    /// The tables the extension is changing with its own DDL right now (innermost last).
    static BUSY: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    /// Tables created in guarded schemas during this transaction, checked at COMMIT.
    static PENDING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// While alive, the guard leaves commands on these tables to the extension (its own DDL, which
/// passes through states the guard would refuse and is checked as a whole when it is done).
///
/// Only these tables: the extension's DDL runs user code (the owner's triggers during a
/// backfill, index expressions while an index is rebuilt, check constraints while a key is
/// validated), and whatever that code does to any other object is checked as usual. The guard
/// is never paused as a whole.
pub struct Busy(usize);

impl Busy {
    pub fn enter(tables: &[pg_sys::Oid]) -> Busy {
        BUSY.with(|b| {
            let mut busy = b.borrow_mut();
            let depth = busy.len();
            busy.extend_from_slice(tables);
            Busy(depth)
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.borrow_mut().truncate(self.0));
    }
}

/// After the extension's own DDL on an enabled table — during which the owner's code (index
/// expressions, check constraints, triggers) may have run while the guard left the table to the
/// extension — the table must still be exactly the protected shape, keys and grants included.
/// Whoever makes a table [`Busy`] checks it with this when its DDL is done.
pub fn recheck(command: &str, rel: &Relation, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    if let Some(deviation) = spec::inspect(rel)?.first() {
        return Err(weakens(command, rel, deviation));
    }
    let weak = hardening::weaknesses(rel, enabled)?;
    if let Some(weakness) = weak.iter().find(|w| !matches!(w, hardening::Weakness::GlobalReference(_))) {
        return Err(MtError::GuardWeakens {
            command: command.into(),
            table: rel.display(),
            what: weakness.describe(),
            fix: None,
        });
    }
    Ok(())
}

/// Whether the extension's own DDL is changing `relid` right now.
pub fn ours(relid: pg_sys::Oid) -> bool {
    BUSY.with(|b| b.borrow().contains(&relid))
}

pub fn init() {
    // SAFETY: registers a callback for the life of the backend; it only touches our statics and,
    // before commit, runs the pending-table check.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if !pending.is_empty() {
                // No statement is running at COMMIT: SPI needs a snapshot of its own.
                // SAFETY: pushed and popped around the check; an ERROR aborts the transaction,
                // which pops it.
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
                let result = check_pending(pending);
                unsafe { pg_sys::PopActiveSnapshot() };
                result.or_raise();
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|p| p.borrow_mut().clear());
            BUSY.with(|b| b.borrow_mut().clear());
        }
        _ => {}
    }
}

/// The tables created in guarded schemas must be enabled or exempt when the transaction commits.
fn check_pending(pending: Vec<pg_sys::Oid>) -> Result<()> {
    if !gucs::ddl_guard() {
        log(format!("multitenancy.ddl_guard is off: {} new table(s) not checked at COMMIT", pending.len()));
        return Ok(());
    }
    let guarded = gucs::guarded_schemas();
    let enabled = registry::enabled_set()?;
    let exempt = registry::exempt_set()?;
    let mut unprotected = Vec::new();
    let mut seen = HashSet::new();
    for oid in pending {
        if !seen.insert(oid) || enabled.contains(&oid) || exempt.contains(&oid) {
            continue;
        }
        // Gone (dropped, or created in a rolled-back savepoint) or moved out of the guarded schemas.
        let Ok(rel) = Relation::lookup(oid) else { continue };
        if rel.is_table() && guarded.contains(&rel.schema) {
            unprotected.push(rel.display());
        }
    }
    if unprotected.is_empty() {
        Ok(())
    } else {
        Err(MtError::UnprotectedAtCommit { tables: unprotected })
    }
}

/// One command reported by `pg_event_trigger_ddl_commands()`, resolved to what we check.
struct Command {
    tag: String,
    identity: String,
    /// The table, view or materialized view the command is about (an index or policy maps to
    /// its table).
    relid: Option<pg_sys::Oid>,
    relkind: Option<u8>,
    publication: Option<pg_sys::Oid>,
    /// The object was created in this session's temporary schema.
    temp: bool,
    /// A trigger that calls one of the extension's counting functions: its name.
    counting_trigger: Option<String>,
}

#[cfg(feature = "pg14")]
const PUBLICATION_NAMESPACE: &str = "NULL::pg_catalog.oid";
#[cfg(not(feature = "pg14"))]
const PUBLICATION_NAMESPACE: &str = "(SELECT n.pnpubid FROM pg_catalog.pg_publication_namespace n WHERE n.oid = c.objid)";

fn commands() -> Result<Vec<Command>> {
    let sql = format!(
        "SELECT c.command_tag, COALESCE(c.object_identity, c.object_type), t.relid, r.relkind::text, \
                COALESCE(c.schema_name = 'pg_temp' OR c.schema_name = (SELECT n.nspname FROM pg_catalog.pg_namespace n \
                                           WHERE n.oid = pg_catalog.pg_my_temp_schema()), false), \
                CASE WHEN c.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
                     THEN (SELECT tg.tgname::text FROM pg_catalog.pg_trigger tg WHERE tg.oid = c.objid \
                              AND tg.tgfoid IN ('multitenancy._usage_row()'::pg_catalog.regprocedure, \
                                                'multitenancy._usage_statement()'::pg_catalog.regprocedure)) END, \
                CASE c.classid WHEN 'pg_catalog.pg_publication'::pg_catalog.regclass THEN c.objid \
                     WHEN 'pg_catalog.pg_publication_rel'::pg_catalog.regclass \
                     THEN (SELECT pr.prpubid FROM pg_catalog.pg_publication_rel pr WHERE pr.oid = c.objid) \
                     ELSE {PUBLICATION_NAMESPACE} END \
           FROM pg_catalog.pg_event_trigger_ddl_commands() c \
           LEFT JOIN pg_catalog.pg_index ix \
                  ON c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND ix.indexrelid = c.objid \
          CROSS JOIN LATERAL (SELECT CASE \
                WHEN c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass THEN COALESCE(ix.indrelid, c.objid) \
                WHEN c.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass \
                THEN (SELECT p.polrelid FROM pg_catalog.pg_policy p WHERE p.oid = c.objid) \
                WHEN c.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
                THEN (SELECT tg.tgrelid FROM pg_catalog.pg_trigger tg WHERE tg.oid = c.objid) \
                WHEN c.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                THEN (SELECT w.ev_class FROM pg_catalog.pg_rewrite w WHERE w.oid = c.objid) END AS relid) t \
           LEFT JOIN pg_catalog.pg_class r ON r.oid = t.relid \
          WHERE NOT c.in_extension"
    );
    Spi::connect(|client| {
        let rows = client.select(&sql, None, &[]).ctx("guard::commands")?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Command {
                tag: row.get::<String>(1).ctx("tag")?.unwrap_or_default(),
                identity: row.get::<String>(2).ctx("identity")?.unwrap_or_default(),
                relid: row.get::<pg_sys::Oid>(3).ctx("relid")?,
                relkind: row.get::<String>(4).ctx("relkind")?.and_then(|k| k.bytes().next()),
                temp: row.get::<bool>(5).ctx("temp")?.unwrap_or(false),
                counting_trigger: row.get::<String>(6).ctx("counting trigger")?,
                publication: row.get::<pg_sys::Oid>(7).ctx("publication")?,
            });
        }
        Ok(out)
    })
}

fn creates_table(tag: &str) -> bool {
    matches!(tag, "CREATE TABLE" | "CREATE TABLE AS" | "SELECT INTO")
}

/// `ddl_command_end`.
fn ddl_command_end() -> Result<()> {
    if !gucs::ddl_guard() {
        for command in commands()? {
            log(format!(
                "multitenancy.ddl_guard is off: {} {} by {} not checked",
                command.tag,
                command.identity,
                registry::session_role()
            ));
        }
        return Ok(());
    }
    // The extension's own DDL on the tables it is building is checked by the extension.
    let commands: Vec<Command> = commands()?.into_iter().filter(|c| !c.relid.is_some_and(ours)).collect();
    if commands.is_empty() {
        return Ok(());
    }
    let signed = crate::signed::session_is_signed();
    let mut enabled = registry::enabled_set()?;
    let mut checked = HashSet::new();
    for command in &commands {
        if signed && command.temp {
            return Err(MtError::SignedSessionState {
                what: format!("{} of temporary object {}", command.tag, command.identity),
                hint: "In a session that requires signed tenant contexts, a transaction cannot leave objects behind for \
                       the next transaction on the same connection (which may be another tenant's, behind a pooler). \
                       Use a common table expression or a tenant-enabled table instead of a temporary object."
                    .into(),
            });
        }
        if let Some(publication) = command.publication {
            check_publication(publication, &enabled)?;
        }
        if command.tag == "GRANT" {
            revoke_unsafe_grants(&enabled)?;
        }
        let Some(relid) = command.relid else { continue };
        match command.relkind {
            Some(pg_sys::RELKIND_VIEW) => check_view(relid, &enabled)?,
            Some(pg_sys::RELKIND_MATVIEW) => check_matview(relid, &enabled)?,
            Some(pg_sys::RELKIND_RELATION | pg_sys::RELKIND_PARTITIONED_TABLE) => {
                let created = creates_table(&command.tag);
                if checked.insert((relid, created)) {
                    check_table(&command.tag, relid, created, &mut enabled)?;
                }
            }
            _ => {}
        }
        if let Some(trigger) = &command.counting_trigger {
            check_counting_trigger(trigger, relid, &enabled)?;
        }
    }
    Ok(())
}

/// The counting trigger functions may only be the triggers `tenant_enable` creates, on enabled
/// tables (they refuse to run anywhere else, too).
fn check_counting_trigger(trigger: &str, relid: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    let ours = spec::TRIGGERS.iter().any(|t| t.name == trigger);
    if ours && enabled.contains(&relid) {
        return Ok(());
    }
    Err(MtError::TriggerMisused {
        function: "_usage_row",
        table: Relation::lookup(relid)?.display(),
        reason: format!(
            "trigger {trigger}: the counting functions are only for the triggers tenant_enable() creates on tenant-enabled tables"
        ),
    })
}

/// The enabled parent of a partition or inheritance child, if it has one.
fn enabled_parent(relid: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<Option<Relation>> {
    let parents = oid_column("SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1", &[relid.into()])?;
    parents.into_iter().find(|p| enabled.contains(p)).map(Relation::lookup).transpose()
}

/// Children (partitions, inheritance children) of a table.
pub fn children(relid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    oid_column("SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = $1 ORDER BY inhrelid", &[relid.into()])
}

fn announce_child(child: pg_sys::Oid, parent: &Relation) -> Result<()> {
    notice(format!(
        "table {} is a {} of tenant-enabled table {}: tenant-enabled automatically",
        Relation::lookup(child)?.display(),
        if is_partition(child)? { "partition" } else { "child" },
        parent.display()
    ));
    Ok(())
}

fn check_table(tag: &str, relid: pg_sys::Oid, created: bool, enabled: &mut HashSet<pg_sys::Oid>) -> Result<()> {
    let rel = Relation::lookup(relid)?;
    if enabled.contains(&relid) {
        if let Some(deviation) = spec::inspect(&rel)?.first() {
            return Err(weakens(tag, &rel, deviation));
        }
        hardening::harden(&rel, enabled)?;
        for child in enable::enable_children(&rel, None)? {
            enabled.insert(child);
            announce_child(child, &rel)?;
        }
        return recheck(tag, &rel, enabled);
    }
    // A table that is not enabled may not become the parent of one (ATTACH PARTITION, INHERIT):
    // a query on it would return the child's rows of every tenant.
    if let Some(child) = children(relid)?.into_iter().find(|c| enabled.contains(c)) {
        let child = Relation::lookup(child)?;
        let deviation = spec::Deviation::ParentNotEnabled { parent: rel.display() };
        return Err(weakens(tag, &child, &deviation));
    }
    if let Some(parent) = enabled_parent(relid, enabled)? {
        enable::enable(relid, None)?;
        enabled.insert(relid);
        return announce_child(relid, &parent);
    }
    if !created || !gucs::guarded_schemas().contains(&rel.schema) || registry::exemption(relid)?.is_some() {
        return Ok(());
    }
    if spec::column_state(relid)?.is_some_and(|c| c.is_uuid) {
        enable::enable(relid, None)?;
        enabled.insert(relid);
        notice(format!("table {} has a tenant_id uuid column: tenant-enabled automatically", rel.display()));
    } else {
        PENDING.with(|p| p.borrow_mut().push(relid));
    }
    Ok(())
}

fn weakens(command: &str, rel: &Relation, deviation: &spec::Deviation) -> MtError {
    MtError::GuardWeakens {
        command: command.into(),
        table: rel.display(),
        what: deviation.describe(),
        fix: deviation.fix(&rel.sql()),
    }
}

pub fn is_partition(relid: pg_sys::Oid) -> Result<bool> {
    Spi::get_one_with_args::<bool>("SELECT relispartition FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])
        .ctx("guard::is_partition")
        .map(|p| p.unwrap_or(false))
}

/// The tables a view or materialized view reads, through any depth of views.
pub fn tables_read_by(relid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    oid_column(
                "WITH RECURSIVE reads(relid) AS ( \
                     SELECT d.refobjid FROM pg_catalog.pg_rewrite w \
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      WHERE w.ev_class = $1 AND d.refobjid <> $1 \
                   UNION \
                     SELECT d.refobjid FROM reads r \
                       JOIN pg_catalog.pg_class v ON v.oid = r.relid AND v.relkind IN ('v', 'm') \
                       JOIN pg_catalog.pg_rewrite w ON w.ev_class = v.oid \
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                        AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                      WHERE d.refobjid <> v.oid) \
                 SELECT DISTINCT relid FROM reads ORDER BY relid",
        &[relid.into()],
    )
}

fn first_enabled(tables: Vec<pg_sys::Oid>, enabled: &HashSet<pg_sys::Oid>) -> Result<Option<Relation>> {
    match tables.into_iter().find(|t| enabled.contains(t)) {
        Some(t) => Relation::lookup(t).map(Some),
        None => Ok(None),
    }
}

/// Whether a view applies row level security as the querying role. Before PostgreSQL 15 there is
/// no `security_invoker`: a view then reads as its owner, which row level security (forced on
/// enabled tables) still filters unless the owner is a superuser or has BYPASSRLS.
pub fn view_is_safe(view: pg_sys::Oid) -> Result<bool> {
    #[cfg(not(feature = "pg14"))]
    const SQL: &str = "SELECT COALESCE((SELECT o.option_value::bool \
           FROM pg_catalog.pg_options_to_table(c.reloptions) o WHERE o.option_name = 'security_invoker'), false) \
           FROM pg_catalog.pg_class c WHERE c.oid = $1";
    #[cfg(feature = "pg14")]
    const SQL: &str = "SELECT NOT (r.rolsuper OR r.rolbypassrls) FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_roles r ON r.oid = c.relowner WHERE c.oid = $1";
    Spi::get_one_with_args::<bool>(SQL, &[view.into()]).ctx("guard::view_is_safe").map(|s| s.unwrap_or(false))
}

/// The enabled table a leaky view reads, if it is one.
pub fn leaky_view(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<Option<Relation>> {
    if view_is_safe(view)? {
        return Ok(None);
    }
    first_enabled(tables_read_by(view)?, enabled)
}

fn check_view(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    match leaky_view(view, enabled)? {
        Some(table) => Err(MtError::LeakyView { view: Relation::lookup(view)?.display(), table: table.display() }),
        None => Ok(()),
    }
}

/// Why a materialized view would store tenant rows outside row level security.
pub enum MatviewLeak {
    /// It reads a tenant-enabled table.
    Table(Relation),
    /// It calls a function that may read one (its rows depend on whose context refreshes it).
    Function(String),
}

/// Whether a materialized view (through any views it reads) reads a tenant-enabled table or
/// calls a function that could: directly, or as the code of an operator, a cast or an aggregate. Functions in SQL or a procedural language count (what they
/// read cannot be known from the catalog); built-in and C functions do not (a superuser
/// installed them; C code that reads tables is trusted like the extension that brings it).
pub fn matview_leak(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<Option<MatviewLeak>> {
    if let Some(table) = first_enabled(tables_read_by(view)?, enabled)? {
        return Ok(Some(MatviewLeak::Table(table)));
    }
    let function = Spi::get_one_with_args::<String>(
        "WITH RECURSIVE reads(relid) AS ( \
             SELECT $1::pg_catalog.oid \
           UNION \
             SELECT d.refobjid FROM reads r \
               JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.relid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               JOIN pg_catalog.pg_class v ON v.oid = d.refobjid AND v.relkind IN ('v', 'm') \
              WHERE d.refobjid <> r.relid), \
         deps AS ( \
             SELECT d.refclassid, d.refobjid FROM reads r \
               JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.relid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                AND d.objid = w.oid), \
         called(oid) AS ( \
             SELECT refobjid FROM deps WHERE refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
           UNION SELECT o.oprcode::pg_catalog.oid FROM deps JOIN pg_catalog.pg_operator o ON o.oid = deps.refobjid \
                  WHERE deps.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
           UNION SELECT c.castfunc FROM deps JOIN pg_catalog.pg_cast c ON c.oid = deps.refobjid \
                  WHERE deps.refclassid = 'pg_catalog.pg_cast'::pg_catalog.regclass), \
         functions(oid) AS ( \
             SELECT oid FROM called \
           UNION SELECT f FROM called JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = called.oid \
                  CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, \
                        a.aggserialfn, a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::pg_catalog.oid[]) f) \
         SELECT p.oid::pg_catalog.regprocedure::text FROM functions fn \
           JOIN pg_catalog.pg_proc p ON p.oid = fn.oid \
           JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
          WHERE l.lanname NOT IN ('internal', 'c') \
            AND p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace) \
          ORDER BY 1 LIMIT 1",
        &[view.into()],
    )
    .no_row_is_none()
    .ctx("guard::matview functions")?;
    Ok(function.map(MatviewLeak::Function))
}

fn check_matview(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    let name = || Relation::lookup(view).map(|v| v.display());
    match matview_leak(view, enabled)? {
        Some(MatviewLeak::Table(table)) => Err(MtError::MaterializedView { view: name()?, table: table.display() }),
        Some(MatviewLeak::Function(function)) => Err(MtError::MaterializedViewFunction { view: name()?, function }),
        None => Ok(()),
    }
}

/// Enabled tables a publication publishes, with the publication's name.
pub fn published_tables(publication: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<(String, Vec<Relation>)> {
    let (name, tables) = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT p.pubname::text, c.oid FROM pg_catalog.pg_publication p \
                   JOIN pg_catalog.pg_publication_tables t ON t.pubname = p.pubname \
                   JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
                   JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
                  WHERE p.oid = $1 ORDER BY c.oid",
                None,
                &[publication.into()],
            )
            .ctx("guard::published_tables")?;
        let mut name = String::new();
        let mut tables = Vec::new();
        for row in rows {
            name = row.get::<String>(1).ctx("pubname")?.unwrap_or_default();
            tables.push(row.get::<pg_sys::Oid>(2).ctx("table")?.unwrap_or_default());
        }
        Ok::<_, MtError>((name, tables))
    })?;
    let tables = tables.into_iter().filter(|t| enabled.contains(t)).map(Relation::lookup).collect::<Result<_>>()?;
    Ok((name, tables))
}

fn check_publication(publication: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    let (name, tables) = published_tables(publication, enabled)?;
    match tables.first() {
        Some(table) => Err(MtError::PublishesTenantTable { publication: name, table: table.display() }),
        None => Ok(()),
    }
}

fn revoke_unsafe_grants(enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    for &relid in enabled {
        let Ok(rel) = Relation::lookup(relid) else { continue };
        let grants: Vec<_> = hardening::weaknesses(&rel, enabled)?
            .into_iter()
            .filter(|w| matches!(w, hardening::Weakness::Grant { .. }))
            .collect();
        if !grants.is_empty() {
            hardening::harden(&rel, enabled)?;
        }
    }
    Ok(())
}

/// `sql_drop`: the extension's policies and triggers and the tenant index of enabled tables stay.
fn sql_drop() -> Result<()> {
    let dropped = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT d.object_type, d.object_identity, \
                        CASE WHEN d.object_type IN ('policy', 'trigger') THEN pg_catalog.to_regclass( \
                             pg_catalog.quote_ident(d.address_names[1]) || '.' || \
                             pg_catalog.quote_ident(d.address_names[2]))::pg_catalog.oid END, \
                        d.schema_name \
                   FROM pg_catalog.pg_event_trigger_dropped_objects() d \
                  WHERE d.original AND d.object_type IN ('policy', 'trigger', 'index')",
                None,
                &[],
            )
            .ctx("guard::dropped")?;
        let mut out = Vec::new();
        for row in rows {
            out.push((
                row.get::<String>(1).ctx("object_type")?.unwrap_or_default(),
                row.get::<String>(2).ctx("identity")?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(3).ctx("table")?,
                row.get::<String>(4).ctx("schema")?,
            ));
        }
        Ok::<_, MtError>(out)
    })?;
    if dropped.is_empty() {
        return Ok(());
    }
    if !gucs::ddl_guard() {
        for (kind, identity, _, _) in &dropped {
            log(format!("multitenancy.ddl_guard is off: DROP {kind} {identity} by {} not checked", registry::session_role()));
        }
        return Ok(());
    }
    let enabled = registry::enabled_set()?;
    let mut tables = Vec::new();
    for (kind, _, table, schema) in dropped {
        let command = format!("DROP {}", kind.to_uppercase());
        match (kind.as_str(), table) {
            ("policy" | "trigger", Some(table)) => tables.push((command, table)),
            // An index names no table once it is gone: check the enabled tables of its schema.
            ("index", _) => {
                for &relid in &enabled {
                    if let Ok(rel) = Relation::lookup(relid) {
                        if Some(&rel.schema) == schema.as_ref() {
                            tables.push((command.clone(), relid));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (command, relid) in tables {
        // The extension's own DDL on a table it is building is checked by the extension.
        if !enabled.contains(&relid) || ours(relid) {
            continue;
        }
        let rel = Relation::lookup(relid)?;
        if let Some(deviation) = spec::inspect(&rel)?.first() {
            return Err(weakens(&command, &rel, deviation));
        }
    }
    Ok(())
}

// The event trigger functions themselves (RETURNS event_trigger, which pgrx cannot spell, hence
// the SQL). They run as the role doing the DDL, so what they build is owned and checked as usual.

/// The `multitenancy_guard_ddl` event trigger (ddl_command_end).
#[pg_extern(sql = "
CREATE FUNCTION multitenancy._guard_ddl() RETURNS event_trigger
VOLATILE PARALLEL UNSAFE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', '_guard_ddl_wrapper';
")]
fn _guard_ddl() {
    ddl_command_end().or_raise()
}

/// The `multitenancy_guard_drop` event trigger (sql_drop).
#[pg_extern(sql = "
CREATE FUNCTION multitenancy._guard_drop() RETURNS event_trigger
VOLATILE PARALLEL UNSAFE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', '_guard_drop_wrapper';
")]
fn _guard_drop() {
    sql_drop().or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn enabled(name: &str) -> bool {
        let oid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{name}'::regclass::oid")).unwrap().unwrap();
        registry::is_enabled(oid).unwrap()
    }

    #[pg_test]
    fn a_new_table_with_a_tenant_column_and_its_partitions_are_enabled() {
        Spi::run(
            "CREATE TABLE g_events (id int, at date, tenant_id uuid) PARTITION BY RANGE (at);
             CREATE SCHEMA g_other;
             CREATE TABLE g_other.g_events_2026 PARTITION OF g_events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
        )
        .unwrap();
        assert!(enabled("g_events"));
        assert!(enabled("g_other.g_events_2026"), "a partition is enabled in any schema");
        Spi::run("CREATE TABLE g_plain (id int)").unwrap();
        assert!(!enabled("g_plain"), "without tenant_id it waits for COMMIT");
        assert_eq!(PENDING.with(|p| p.borrow().len()), 1);
    }

    #[pg_test(error = "refused: ALTER TABLE would leave tenant-enabled table \"public.g_weak\" unprotected: row level security is disabled")]
    fn weakening_an_enabled_table_is_refused() {
        Spi::run("CREATE TABLE g_weak (id int, tenant_id uuid); ALTER TABLE g_weak DISABLE ROW LEVEL SECURITY").unwrap();
    }

    #[pg_test(error = "refused: view \"public.g_view\" reads tenant-enabled table \"public.g_base\" but is not security_invoker")]
    fn a_view_that_is_not_security_invoker_is_refused() {
        Spi::run(
            "CREATE TABLE g_base (id int, tenant_id uuid);
             CREATE VIEW g_safe WITH (security_invoker = true) AS SELECT * FROM g_base;
             CREATE VIEW g_view AS SELECT * FROM g_safe",
        )
        .unwrap();
    }

    #[pg_test]
    fn with_the_guard_off_nothing_is_checked() {
        Spi::run(
            "CREATE TABLE g_off (id int, tenant_id uuid);
             SET LOCAL multitenancy.ddl_guard = off;
             ALTER TABLE g_off DISABLE ROW LEVEL SECURITY;
             CREATE TABLE g_off_plain (id int);",
        )
        .unwrap();
        assert_eq!(PENDING.with(|p| p.borrow().len()), 0);
    }
}
