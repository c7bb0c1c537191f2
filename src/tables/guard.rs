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
use crate::catalog::{
    children, elements, is_partition, leaky_view, matview_leak, oid_column, published_tables, string_value,
    MatviewLeak, Relation,
};
use crate::error::{log, notice, MtError, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::registry;
use crate::tables::busy::{self, ours};
use crate::tables::enable;
use crate::tables::hardening;
use crate::tables::spec;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;

thread_local! {
    /// The tables of the indexes a DROP INDEX is about to drop (noted by `tables::migrations`
    /// before it runs): afterwards an index names no table any more.
    static DROPPING_INDEXES_OF: RefCell<Option<Vec<pg_sys::Oid>>> = const { RefCell::new(None) };
    /// Tables created in guarded schemas during this transaction, checked at COMMIT.
    static PENDING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    /// The utility statements running through the extension's ProcessUtility hook, innermost
    /// last: whether the statement was vetted before it ran ([`statement`]).
    static STATEMENTS: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
}

/// Run one utility statement (`run`), recorded as the innermost one for the event triggers it
/// fires. `vetted`: `crate::tables::migrations` showed, before the statement ran and with the
/// locks the statement itself takes, that it cannot change any tenant-enabled table's protected
/// shape (a plain or per-tenant index created, an index without `tenant_id` dropped, a
/// per-tenant foreign key added), so its event triggers have nothing to check and return at
/// once. Every utility statement through the hook is recorded, vetted or not: a statement the
/// user's code runs inside a vetted one (an index expression's function doing DDL) is its own
/// innermost statement, not vetted, and fires its own event triggers.
pub fn statement<R>(vetted: bool, run: impl FnOnce() -> R) -> R {
    struct Pop(usize);
    impl Drop for Pop {
        fn drop(&mut self) {
            // Also when an ERROR unwinds through the hook.
            STATEMENTS.with(|s| s.borrow_mut().truncate(self.0));
        }
    }
    let depth = STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        s.push(vetted);
        s.len() - 1
    });
    let _pop = Pop(depth);
    run()
}

/// Whether the statement whose event trigger is running was vetted (see [`statement`]). A
/// statement that did not pass the hook (the library was loaded by it) is not.
fn vetted() -> bool {
    STATEMENTS.with(|s| s.borrow().last() == Some(&true))
}

/// Before commit (`crate::xact`): the tables created in guarded schemas during the transaction
/// must be enabled or exempt.
pub fn before_commit() -> Result<()> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return Ok(());
    }
    // No statement is running at COMMIT: SPI needs a snapshot of its own.
    registry::with_active_snapshot(|| check_pending(pending))
}

/// The transaction ended (`crate::xact`), whichever way.
pub fn transaction_ended() {
    PENDING.with(|p| p.borrow_mut().clear());
    DROPPING_INDEXES_OF.with(|d| d.borrow_mut().take());
    busy::transaction_ended();
}

/// The tables created in guarded schemas must be enabled or exempt when the transaction commits.
fn check_pending(pending: Vec<pg_sys::Oid>) -> Result<()> {
    if on_worker() {
        return Ok(());
    }
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
const PUBLICATION_NAMESPACE: &str =
    "(SELECT n.pnpubid FROM pg_catalog.pg_publication_namespace n WHERE n.oid = c.objid)";

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

/// A Citus worker's tables are the shards and shell tables Citus makes from the coordinator's
/// (checked there, by this guard) and DDL belongs on the coordinator: on a worker the guard
/// neither checks nor enables anything. Citus's own catalog says which node this is
/// (`crate::citus`); no client setting can make a coordinator a worker.
pub fn on_worker() -> bool {
    crate::citus::is_worker()
}

/// On a Citus worker, what no role but a superuser may do to a shard of a tenant-distributed
/// table (one with the distributed isolation policy): disable or un-force its row level
/// security, drop, alter or rename that policy, or add another policy. The shards' policies are
/// the only isolation of a distributed table (the coordinator adds none of its own), and the
/// owner's code reaches a worker as the owner — a function Citus pushes down to the shards, a
/// direct connection — where the coordinator's guard does not look (review finding). Citus's
/// own shard DDL adds only that policy, and moves shards as a superuser.
///
/// # Safety
/// `stmt` is a parsed utility statement.
pub unsafe fn check_on_worker(stmt: *mut pg_sys::Node) -> Result<()> {
    if stmt.is_null() || pg_sys::superuser() {
        return Ok(());
    }
    let ours = spec::DISTRIBUTED_POLICIES[0].name;
    let is_ours =
        |name: *const std::ffi::c_char| !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == ours.as_bytes();
    let has_ours = |rv: *mut pg_sys::RangeVar| -> Result<Option<pg_sys::Oid>> {
        let Some(relid) = crate::catalog::relid_of(rv) else { return Ok(None) };
        let found = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = $2)",
            &[relid.into(), ours.into()],
        )
        .ctx("guard: shard policy")?
        .unwrap_or(false);
        Ok(found.then_some(relid))
    };
    let refused = |what: &str, relid: Option<pg_sys::Oid>| -> Result<()> {
        let table = match relid {
            Some(relid) => Relation::lookup(relid)?.display(),
            None => format!("a shard's policy {ours}"),
        };
        Err(MtError::GuardWeakens {
            command: what.to_string(),
            table,
            what:
                "on a Citus worker, a shard of a tenant-distributed table keeps row level security, forced, with the \
                   isolation policy as its only policy"
                    .into(),
            fix: Some("Change distributed tables on the coordinator; the extension's guard checks it there.".into()),
        })
    };
    use pg_sys::NodeTag::*;
    match (*stmt).type_ {
        T_AlterTableStmt => {
            let alter = stmt as *mut pg_sys::AlterTableStmt;
            let weakens = elements((*alter).cmds).into_iter().any(|cmd| {
                matches!(
                    (*(cmd as *mut pg_sys::AlterTableCmd)).subtype,
                    pg_sys::AlterTableType::AT_DisableRowSecurity | pg_sys::AlterTableType::AT_NoForceRowSecurity
                )
            });
            if weakens {
                if let Some(relid) = has_ours((*alter).relation)? {
                    return refused("ALTER TABLE", Some(relid));
                }
            }
        }
        T_CreatePolicyStmt => {
            let create = stmt as *mut pg_sys::CreatePolicyStmt;
            if !is_ours((*create).policy_name) {
                if let Some(relid) = has_ours((*create).table)? {
                    return refused("CREATE POLICY", Some(relid));
                }
            }
        }
        T_AlterPolicyStmt if is_ours((*(stmt as *mut pg_sys::AlterPolicyStmt)).policy_name) => {
            return refused("ALTER POLICY", None);
        }
        T_RenameStmt
            if (*(stmt as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_POLICY
                && is_ours((*(stmt as *mut pg_sys::RenameStmt)).subname) =>
        {
            return refused("ALTER POLICY ... RENAME", None);
        }
        // Renaming the shard (and creating a table of its name), or code of the owner's that
        // fires on its rows.
        T_RenameStmt if (*(stmt as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_TABLE => {
            if let Some(relid) = has_ours((*(stmt as *mut pg_sys::RenameStmt)).relation)? {
                return refused("ALTER TABLE ... RENAME", Some(relid));
            }
        }
        T_CreateTrigStmt => {
            if let Some(relid) = has_ours((*(stmt as *mut pg_sys::CreateTrigStmt)).relation)? {
                return refused("CREATE TRIGGER", Some(relid));
            }
        }
        T_RuleStmt => {
            if let Some(relid) = has_ours((*(stmt as *mut pg_sys::RuleStmt)).relation)? {
                return refused("CREATE RULE", Some(relid));
            }
        }
        T_DropStmt => {
            let drop = stmt as *mut pg_sys::DropStmt;
            if (*drop).removeType == pg_sys::ObjectType::OBJECT_POLICY {
                for object in elements((*drop).objects) {
                    let names = elements(object as *mut pg_sys::List);
                    if let Some(&last) = names.last() {
                        if is_ours(string_value(last).as_ptr()) {
                            return refused("DROP POLICY", None);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `ddl_command_end`.
fn ddl_command_end() -> Result<()> {
    if vetted() || on_worker() {
        return Ok(());
    }
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
    let signed = crate::context::signed::session_is_signed();
    let mut enabled = registry::enabled_set()?;
    let mut checked = HashSet::new();
    for command in &commands {
        if signed && command.temp {
            return Err(MtError::SignedSessionState {
                what: format!("{} of temporary object {}", command.tag, command.identity),
                hint:
                    "In a session that requires signed tenant contexts, a transaction cannot leave objects behind for \
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

/// Note the tables whose indexes the DROP INDEX about to run drops, for `sql_drop` (`None`:
/// not known, inspect the enabled tables of the index's schema).
pub fn note_index_drops(tables: Option<Vec<pg_sys::Oid>>) {
    DROPPING_INDEXES_OF.with(|d| *d.borrow_mut() = tables);
}

/// The enabled parent of a partition or inheritance child, if it has one.
fn enabled_parent(relid: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<Option<Relation>> {
    let parents = oid_column("SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1", &[relid.into()])?;
    parents.into_iter().find(|p| enabled.contains(p)).map(Relation::lookup).transpose()
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
            return Err(hardening::refusal(tag, &rel, deviation));
        }
        let hardened = hardening::harden(&rel, enabled)?;
        let children = enable::enable_children(&rel, None)?;
        for &child in &children {
            enabled.insert(child);
            announce_child(child, &rel)?;
        }
        // Only the extension's own DDL above (if it ran any) can have run the owner's code with
        // the table left to it.
        if hardened.is_empty() && children.is_empty() {
            return Ok(());
        }
        return hardening::recheck(tag, &rel, enabled);
    }
    // A table that is not enabled may not become the parent of one (ATTACH PARTITION, INHERIT):
    // a query on it would return the child's rows of every tenant.
    if let Some(child) = children(relid)?.into_iter().find(|c| enabled.contains(c)) {
        let child = Relation::lookup(child)?;
        let deviation = spec::Deviation::ParentNotEnabled { parent: rel.display() };
        return Err(hardening::refusal(tag, &child, &deviation));
    }
    if let Some(parent) = enabled_parent(relid, enabled)? {
        enable::enable(relid, None)?;
        enabled.insert(relid);
        return announce_child(relid, &parent);
    }
    if !created || !gucs::guarded_schemas().contains(&rel.schema) || registry::exemption(relid)?.is_some() {
        return Ok(());
    }
    // A table with a tenant column is tenant data whatever its name: the tenant_id rule wins over
    // exempt patterns.
    if spec::column_state(relid)?.is_some_and(|c| c.is_uuid) {
        enable::enable(relid, None)?;
        enabled.insert(relid);
        notice(format!("table {} has a tenant_id uuid column: tenant-enabled automatically", rel.display()));
    } else if let Some((pattern, reason)) = registry::exempt_pattern_of(&rel.name)? {
        registry::record_exempt(relid, &format!("{reason} (exempt pattern {pattern})"))?;
        notice(format!("table {} matches exempt pattern {pattern}: declared global", rel.display()));
    } else {
        PENDING.with(|p| p.borrow_mut().push(relid));
    }
    Ok(())
}

fn check_view(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    match leaky_view(view, enabled)? {
        Some(table) => Err(MtError::LeakyView { view: Relation::lookup(view)?.display(), table: table.display() }),
        None => Ok(()),
    }
}

fn check_matview(view: pg_sys::Oid, enabled: &HashSet<pg_sys::Oid>) -> Result<()> {
    let name = || Relation::lookup(view).map(|v| v.display());
    match matview_leak(view, enabled)? {
        Some(MatviewLeak::Table(table)) => Err(MtError::MaterializedView { view: name()?, table: table.display() }),
        Some(MatviewLeak::Function(function)) => Err(MtError::MaterializedViewFunction { view: name()?, function }),
        None => Ok(()),
    }
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

/// One object `pg_event_trigger_dropped_objects()` reported.
struct Dropped {
    kind: String,
    identity: String,
    /// A policy's or trigger's table.
    table: Option<pg_sys::Oid>,
    schema: Option<String>,
    /// A relation (not an index): its oid, for the registry.
    relation: Option<pg_sys::Oid>,
    /// Named by the command itself (not dropped with another object).
    original: bool,
}

/// `sql_drop`: a dropped table leaves the registry (so pg_dump never sees a dangling
/// regclass, and the usage totals lose its rows); the extension's policies and triggers and the
/// tenant index of enabled tables stay.
fn sql_drop() -> Result<()> {
    if on_worker() {
        return Ok(());
    }
    if vetted() {
        // Indexes without tenant_id (see `statement`): no table, nothing of the protected shape.
        DROPPING_INDEXES_OF.with(|d| d.borrow_mut().take());
        return Ok(());
    }
    let dropped = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT d.object_type, d.object_identity, \
                        CASE WHEN d.object_type IN ('policy', 'trigger') THEN pg_catalog.to_regclass( \
                             pg_catalog.quote_ident(d.address_names[1]) || '.' || \
                             pg_catalog.quote_ident(d.address_names[2]))::pg_catalog.oid END, \
                        d.schema_name, \
                        CASE WHEN d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0 \
                              AND d.object_type <> 'index' THEN d.objid END, \
                        d.original \
                   FROM pg_catalog.pg_event_trigger_dropped_objects() d \
                  WHERE (d.original AND d.object_type IN ('policy', 'trigger', 'index')) \
                     OR (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0 \
                         AND d.object_type <> 'index')",
                None,
                &[],
            )
            .ctx("guard::dropped")?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Dropped {
                kind: row.get::<String>(1).ctx("object_type")?.unwrap_or_default(),
                identity: row.get::<String>(2).ctx("identity")?.unwrap_or_default(),
                table: row.get::<pg_sys::Oid>(3).ctx("table")?,
                schema: row.get::<String>(4).ctx("schema")?,
                relation: row.get::<pg_sys::Oid>(5).ctx("relation")?,
                original: row.get::<bool>(6).ctx("original")?.unwrap_or(false),
            });
        }
        Ok::<_, MtError>(out)
    })?;
    let relations: Vec<pg_sys::Oid> = dropped.iter().filter_map(|d| d.relation).collect();
    let dropped: Vec<Dropped> = dropped
        .into_iter()
        .filter(|d| d.original && matches!(d.kind.as_str(), "policy" | "trigger" | "index"))
        .collect();
    if relations.is_empty() && dropped.is_empty() {
        return Ok(());
    }
    // Read before the dropped tables leave it: only enabled tables have usage counters.
    let enabled = registry::enabled_set()?;
    if !relations.is_empty() {
        for &relid in relations.iter().filter(|relid| enabled.contains(relid)) {
            crate::quotas::forget(relid)?;
        }
        registry::forget_dropped(&relations)?;
    }
    if dropped.is_empty() {
        return Ok(());
    }
    if !gucs::ddl_guard() {
        for d in &dropped {
            log(format!(
                "multitenancy.ddl_guard is off: DROP {} {} by {} not checked",
                d.kind,
                d.identity,
                registry::session_role()
            ));
        }
        return Ok(());
    }
    let mut tables = Vec::new();
    let noted = DROPPING_INDEXES_OF.with(|d| d.borrow_mut().take());
    for Dropped { kind, table, schema, .. } in dropped {
        let command = format!("DROP {}", kind.to_uppercase());
        match (kind.as_str(), table) {
            ("policy" | "trigger", Some(table)) => tables.push((command, table)),
            // An index names no table once it is gone: its table, as noted before the DROP INDEX
            // ran; else (the library loaded by this very statement) the enabled tables of its
            // schema.
            ("index", _) if noted.is_some() => {
                for &relid in noted.iter().flatten() {
                    tables.push((command.clone(), relid));
                }
            }
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
            return Err(hardening::refusal(&command, &rel, deviation));
        }
    }
    Ok(())
}

/// `ddl_command_start` of `DROP EXTENSION`, `DROP SCHEMA` and `DROP OWNED`: dropping the
/// extension (by name, with its schema, or with the role that created it) drops the extension's
/// policies of every enabled table — both depend on its functions, and the table stays forced
/// with no policy, closed. A permissive policy that does not depend on the extension (the
/// owner's `USING (true)`, which the guard allows next to the isolation policy) would remain alone
/// and open the table: refused while one exists (with the guard off, allowed and logged).
///
/// The enabled tables are locked first (SHARE ROW EXCLUSIVE, which CREATE POLICY's lock
/// conflicts with) and the policies read with a new snapshot: a policy created by a transaction
/// that commits while the DROP waits for it is seen.
///
/// # Safety
/// `stmt` is the parse tree of the statement about to run.
unsafe fn drop_would_open(stmt: *mut pg_sys::Node) -> Result<()> {
    if stmt.is_null() || on_worker() {
        return Ok(());
    }
    let extension = pg_sys::get_extension_oid(c"multitenancy".as_ptr(), true);
    if extension == pg_sys::InvalidOid {
        return Ok(());
    }
    let command = match (*stmt).type_ {
        pg_sys::NodeTag::T_DropStmt => {
            let drop = stmt as *mut pg_sys::DropStmt;
            let kind = match (*drop).removeType {
                pg_sys::ObjectType::OBJECT_EXTENSION => "EXTENSION",
                pg_sys::ObjectType::OBJECT_SCHEMA => "SCHEMA",
                _ => return Ok(()),
            };
            // DROP EXTENSION and DROP SCHEMA name their objects with String nodes.
            let ours = elements((*drop).objects).into_iter().any(|node| string_value(node) == c"multitenancy");
            if !ours {
                return Ok(());
            }
            format!("DROP {kind} multitenancy")
        }
        pg_sys::NodeTag::T_DropOwnedStmt => {
            let owner = Spi::get_one_with_args::<pg_sys::Oid>(
                "SELECT extowner FROM pg_catalog.pg_extension WHERE oid = $1",
                &[extension.into()],
            )
            .ctx("guard::drop_would_open owner")?;
            let roles = elements((*(stmt as *mut pg_sys::DropOwnedStmt)).roles);
            let drops_ours = roles
                .into_iter()
                .any(|role| Some(pg_sys::get_rolespec_oid(role as *const pg_sys::RoleSpec, true)) == owner);
            if !drops_ours {
                return Ok(());
            }
            "DROP OWNED BY the extension's owner".to_string()
        }
        _ => return Ok(()),
    };
    let mut tables: Vec<pg_sys::Oid> = registry::enabled_set()?.into_iter().collect();
    tables.sort_by_key(|oid| oid.to_u32());
    for &table in &tables {
        pg_sys::LockRelationOid(table, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE);
    }
    let open = registry::as_owner(|| {
        Spi::connect_mut(|client| {
            // `update` runs with a new snapshot (read committed): it sees what committed while
            // the locks above waited.
            let rows = client
                .update(
                    "SELECT pg_catalog.format('%s (policy %I)', p.polrelid::pg_catalog.regclass, p.polname) \
                       FROM multitenancy.enabled_tables e \
                       JOIN pg_catalog.pg_policy p ON p.polrelid = e.relid::pg_catalog.oid \
                      WHERE p.polpermissive \
                        AND NOT EXISTS ( \
                            SELECT 1 FROM pg_catalog.pg_depend d \
                              JOIN pg_catalog.pg_depend m ON m.classid = d.refclassid AND m.objid = d.refobjid \
                             WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid \
                               AND m.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
                               AND m.refobjid = $1 AND m.deptype = 'e') \
                      ORDER BY 1",
                    None,
                    &[extension.into()],
                )
                .ctx("guard::drop_would_open")?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.get::<String>(1).ctx("table")?.unwrap_or_default());
            }
            Ok::<_, MtError>(out)
        })
    })?;
    if open.is_empty() {
        return Ok(());
    }
    if !gucs::ddl_guard() {
        log(format!(
            "multitenancy.ddl_guard is off: {command} by {} not checked; left open: {}",
            registry::session_role(),
            open.join(", ")
        ));
        return Ok(());
    }
    Err(MtError::DropWouldOpen { command, tables: open })
}

extension_sql!(
    r#"
CREATE FUNCTION multitenancy._guard_start() RETURNS event_trigger
VOLATILE PARALLEL UNSAFE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'mt_guard_start';
"#,
    name = "guard_start",
    requires = ["bootstrap"]
);

/// `multitenancy._guard_start()`: the `multitenancy_guard_start` event trigger (ddl_command_start
/// of DROP EXTENSION, DROP SCHEMA and DROP OWNED). A C entry point: it reads the statement's parse tree.
#[no_mangle]
pub extern "C" fn pg_finfo_mt_guard_start() -> &'static pg_sys::Pg_finfo_record {
    &crate::catalog::FINFO_V1
}

/// # Safety
/// Called by PostgreSQL as an event trigger (anything else is refused).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn mt_guard_start(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let context = (*fcinfo).context;
    if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
        MtError::TriggerMisused {
            function: "_guard_start",
            table: String::new(),
            reason: "it runs only as the extension's ddl_command_start event trigger".into(),
        }
        .raise();
    }
    drop_would_open((*(context as *mut pg_sys::EventTriggerData)).parsetree).or_raise();
    pg_sys::Datum::from(0)
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

    #[pg_test(
        error = "refused: ALTER TABLE would leave tenant-enabled table \"public.g_weak\" unprotected: row level security is disabled"
    )]
    fn weakening_an_enabled_table_is_refused() {
        Spi::run("CREATE TABLE g_weak (id int, tenant_id uuid); ALTER TABLE g_weak DISABLE ROW LEVEL SECURITY")
            .unwrap();
    }

    #[cfg(not(feature = "pg14"))]
    #[pg_test(
        error = "refused: view \"public.g_view\" reads tenant-enabled table \"public.g_base\" but is not security_invoker"
    )]
    fn a_view_that_is_not_security_invoker_is_refused() {
        Spi::run(
            "CREATE TABLE g_base (id int, tenant_id uuid);
             CREATE VIEW g_safe WITH (security_invoker = true) AS SELECT * FROM g_base;
             CREATE VIEW g_view AS SELECT * FROM g_safe",
        )
        .unwrap();
    }

    /// PostgreSQL 14: a view reads as its owner; the superuser (who runs pg_test) is not filtered.
    #[cfg(feature = "pg14")]
    #[pg_test(
        error = "refused: view \"public.g_view\" reads tenant-enabled table \"public.g_base\" as its owner, a superuser or BYPASSRLS role"
    )]
    fn a_view_owned_by_a_superuser_is_refused() {
        Spi::run("CREATE TABLE g_base (id int, tenant_id uuid); CREATE VIEW g_view AS SELECT * FROM g_base").unwrap();
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
