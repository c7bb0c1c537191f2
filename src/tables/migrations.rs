//! Frameworks' migrations, as they write them, on tenant-enabled tables.
//!
//! Django, Rails, Prisma and friends create tables, then add foreign keys and unique keys with
//! plain DDL, and upsert with `ON CONFLICT (<their key>)`. On an enabled table each of these
//! would meet the protected shape unprepared, so the statement is adjusted before it runs
//! (`crate::hooks` calls in here):
//! - `CREATE UNIQUE INDEX` and `ADD ... UNIQUE` get `tenant_id` as their first key column: the
//!   key is built per tenant from the start (built globally first, two tenants sharing a value
//!   would fail the build);
//! - a foreign key between two enabled tables becomes `(tenant_id, fk) REFERENCES parent
//!   (tenant_id, pk)`; PostgreSQL validates the existing rows with a query as the owner, which
//!   FORCE ROW LEVEL SECURITY would filter by a tenant context a migration does not have, so the
//!   statement runs with FORCE not applying to the owner (`SECURITY_NOFORCE_RLS`, as PostgreSQL's
//!   own foreign-key checks run);
//! - `INSERT ... ON CONFLICT (email)` on an enabled table means the tenant's key: `tenant_id` is
//!   added to the conflict target (the row being inserted belongs to the current tenant).
//!
//! Only statements on tables that are enabled change; nothing else is looked at twice. These
//! rewrites need the library loaded before the statement: `shared_preload_libraries` (or
//! `session_preload_libraries` for the migration role).
use crate::catalog::{elements, relid_of, string_value};
use crate::error::{MtError, NoRowIsNone, Result, SpiContext};
use crate::registry;
use crate::tables::busy;
use crate::tables::guard;
use pgrx::prelude::*;
use std::ffi::{c_void, CStr};

/// `spec::TENANT_COLUMN`, as parse trees and catalog lookups spell names.
const TENANT: &CStr = c"tenant_id";

/// A String node naming a column.
///
/// # Safety
/// In a memory context that outlives the statement.
unsafe fn name_node(name: &CStr) -> *mut c_void {
    pg_sys::makeString(pg_sys::pstrdup(name.as_ptr())) as *mut c_void
}

/// Whether a list of String nodes names the tenant column.
///
/// # Safety
/// `list` is NULL or a list of String nodes.
unsafe fn names_tenant(list: *mut pg_sys::List) -> bool {
    elements(list).into_iter().any(|node| string_value(node) == TENANT)
}

fn enabled(relid: Option<pg_sys::Oid>) -> Result<Option<pg_sys::Oid>> {
    match relid {
        Some(relid) if registry::is_enabled(relid)? => Ok(Some(relid)),
        _ => Ok(None),
    }
}

/// The table a foreign key of `relid` named `name` references.
fn referenced_by(relid: pg_sys::Oid, name: &CStr) -> Result<Option<pg_sys::Oid>> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT confrelid FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2 AND contype = 'f'",
        &[relid.into(), name.to_string_lossy().as_ref().into()],
    )
    .no_row_is_none()
    .ctx("migrations::referenced_by")
}

/// What adjusting a statement found: the enabled tables whose FORCE must be lifted while it
/// runs (a foreign key's validation), whether the parse tree must change, and whether the
/// statement is vetted (`guard::statement`: it cannot change an enabled table's protected shape).
#[derive(Default)]
struct Plan {
    lift: Vec<pg_sys::Oid>,
    rewrite: bool,
    vetted: bool,
    /// `DROP INDEX`: the indexes' schema-qualified names, resolved under their locks.
    drop_names: Option<Vec<(std::ffi::CString, std::ffi::CString)>>,
}

/// Adjust the statement (see the module documentation) and run it with `run(pstmt,
/// read_only_tree)`. A statement that needs nothing is run as it is.
///
/// # Safety
/// Called from the ProcessUtility hook with its arguments.
pub unsafe fn around_utility(
    mut pstmt: *mut pg_sys::PlannedStmt,
    mut read_only_tree: bool,
    run: impl FnOnce(*mut pg_sys::PlannedStmt, bool),
) -> Result<()> {
    // With the guard off (a superuser's maintenance, a restore) DDL runs exactly as written.
    if registry::installed() && guard::on_worker() {
        guard::check_on_worker((*pstmt).utilityStmt)?;
        // A Citus worker applies the coordinator's DDL to shards; its foreign keys between
        // shards are validated with FORCE lifted, as on the coordinator (see below).
        let _noforce = only_foreign_keys((*pstmt).utilityStmt).then(registry::NoForceRls::enter);
        guard::statement(false, || run(pstmt, read_only_tree));
        return Ok(());
    }
    if !registry::installed() || !crate::gucs::ddl_guard() {
        guard::statement(false, || run(pstmt, read_only_tree));
        return Ok(());
    }
    refuse_unchecked((*pstmt).utilityStmt)?;
    let plan = plan((*pstmt).utilityStmt)?;
    if plan.rewrite {
        if read_only_tree {
            pstmt = pg_sys::copyObjectImpl(pstmt as *const c_void) as *mut pg_sys::PlannedStmt;
            read_only_tree = false;
        }
        apply((*pstmt).utilityStmt, &plan)?;
    }
    if plan.lift.is_empty() {
        guard::statement(plan.vetted, || run(pstmt, read_only_tree));
        return Ok(());
    }
    // A foreign key between enabled tables is validated by PostgreSQL with a query as the
    // tables' owner (RI_Initial_Check), which FORCE ROW LEVEL SECURITY would filter by a tenant
    // context a migration does not have. PostgreSQL's own row-by-row foreign-key checks run with
    // SECURITY_NOFORCE_RLS (FORCE does not apply to the owner) for that reason; the statement
    // runs with it too. Nothing in the catalog changes, so the guard sees the tables as they
    // are. `plan` admits only statements that add or validate foreign keys (and plain columns):
    // no default, USING expression or check of the owner's runs in this window.
    let _noforce = registry::NoForceRls::enter();
    guard::statement(plan.vetted, || run(pstmt, read_only_tree));
    Ok(())
}

/// Whether a statement is an ALTER TABLE that only adds or validates foreign keys: no default,
/// expression or check of the owner's runs in it.
///
/// # Safety
/// `stmt` is a parsed utility statement.
unsafe fn only_foreign_keys(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_AlterTableStmt {
        return false;
    }
    let cmds = elements((*(stmt as *mut pg_sys::AlterTableStmt)).cmds);
    !cmds.is_empty()
        && cmds.into_iter().all(|cmd| {
            let cmd = cmd as *mut pg_sys::AlterTableCmd;
            match (*cmd).subtype {
                pg_sys::AlterTableType::AT_AddConstraint if !(*cmd).def.is_null() => {
                    (*((*cmd).def as *mut pg_sys::Constraint)).contype == pg_sys::ConstrType::CONSTR_FOREIGN
                }
                pg_sys::AlterTableType::AT_ValidateConstraint => true,
                _ => false,
            }
        })
}

/// `EXPLAIN ANALYZE CREATE TABLE ... AS` / `CREATE MATERIALIZED VIEW` / `SELECT INTO` creates
/// the relation, but PostgreSQL fires no event trigger for a statement inside EXPLAIN: a table
/// nobody enabled, or a copy of a tenant's rows outside row level security, would pass the
/// guard. Refused while the guard is on (EXPLAIN without ANALYZE creates nothing).
///
/// # Safety
/// `stmt` is a parsed utility statement.
unsafe fn refuse_unchecked(stmt: *mut pg_sys::Node) -> Result<()> {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_ExplainStmt {
        return Ok(());
    }
    let explain = stmt as *mut pg_sys::ExplainStmt;
    let query = (*explain).query;
    if query.is_null() || (*query).type_ != pg_sys::NodeTag::T_Query {
        return Ok(());
    }
    let utility = (*(query as *mut pg_sys::Query)).utilityStmt;
    if utility.is_null() || (*utility).type_ != pg_sys::NodeTag::T_CreateTableAsStmt {
        return Ok(());
    }
    let analyze = elements((*explain).options).into_iter().any(|option| {
        let option = option as *mut pg_sys::DefElem;
        CStr::from_ptr((*option).defname) == c"analyze" && pg_sys::defGetBoolean(option)
    });
    if !analyze {
        return Ok(());
    }
    Err(MtError::GuardCannotCheck {
        what: "EXPLAIN ANALYZE of CREATE TABLE AS / CREATE MATERIALIZED VIEW / SELECT INTO".into(),
        hint: "Run the statement without EXPLAIN ANALYZE (EXPLAIN without ANALYZE creates nothing), so that the \
               guard checks what it creates."
            .into(),
    })
}

/// `DROP INDEX`, before it runs: each named index is resolved, checked to be its owner's, and
/// locked as the DROP will lock it (the table first, then the index; ACCESS EXCLUSIVE, or SHARE
/// UPDATE EXCLUSIVE for CONCURRENTLY), resolved again under the locks, and its name is then
/// rewritten schema-qualified ([`apply`]): the DROP drops exactly the indexes looked at here (a
/// same-named index in a schema earlier in the search_path, or a rename racing the statement,
/// cannot substitute another one). The guard is told their tables, so that it inspects those
/// only. The statement is vetted (`guard::statement`) when it is RESTRICT and no index holds
/// `tenant_id` of an enabled table: nothing of the protected shape can go (the tenant index and
/// every per-tenant key hold `tenant_id`; a constraint's index cannot be dropped this way).
/// When a name cannot be resolved so (missing, not the caller's), nothing is noted: the guard
/// then inspects every enabled table of the index's schema after the DROP.
///
/// # Safety
/// `drop` is a parsed DropStmt of indexes.
unsafe fn resolve_index_drop(drop: *mut pg_sys::DropStmt, plan: &mut Plan) -> Result<()> {
    let lockmode = if (*drop).concurrent { pg_sys::ShareUpdateExclusiveLock } else { pg_sys::AccessExclusiveLock }
        as pg_sys::LOCKMODE;
    guard::note_index_drops(None);
    let mut harmless = (*drop).behavior == pg_sys::DropBehavior::DROP_RESTRICT;
    let mut names = Vec::new();
    let mut tables = Vec::new();
    for name in elements((*drop).objects) {
        let rv = pg_sys::makeRangeVarFromNameList(name as *mut pg_sys::List);
        let Some(index) = relid_of(rv) else { return Ok(()) };
        let table = pg_sys::IndexGetRelation(index, true);
        if table == pg_sys::InvalidOid || !owned(table) {
            return Ok(());
        }
        pg_sys::LockRelationOid(table, lockmode);
        pg_sys::LockRelationOid(index, lockmode);
        if relid_of(rv) != Some(index) || pg_sys::IndexGetRelation(index, true) != table {
            return Ok(());
        }
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(index));
        let relname = pg_sys::get_rel_name(index);
        if schema.is_null() || relname.is_null() {
            return Ok(());
        }
        names.push((CStr::from_ptr(schema).to_owned(), CStr::from_ptr(relname).to_owned()));
        tables.push(table);
        if registry::is_enabled(table)? && index_holds_tenant(table, index) {
            harmless = false;
        }
    }
    guard::note_index_drops(Some(tables));
    plan.drop_names = Some(names);
    plan.rewrite = true;
    plan.vetted = harmless;
    Ok(())
}

/// Whether the current user owns (or is a member of the owner of) a relation.
fn owned(relid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        return pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId());
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        return pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, pg_sys::GetUserId());
    }
}

/// Whether an index's columns (key or included) hold the table's tenant column.
///
/// # Safety
/// `index` is an index of `table`, locked.
unsafe fn index_holds_tenant(table: pg_sys::Oid, index: pg_sys::Oid) -> bool {
    let tenant = pg_sys::get_attnum(table, TENANT.as_ptr());
    if tenant <= 0 {
        // An enabled table without its tenant column: not for a shortcut.
        return true;
    }
    let rel = pg_sys::RelationIdGetRelation(index);
    if rel.is_null() {
        return true;
    }
    let form = (*rel).rd_index;
    let holds =
        form.is_null() || (0..(*form).indnatts as usize).any(|i| *(*form).indkey.values.as_ptr().add(i) == tenant);
    pg_sys::RelationClose(rel);
    holds
}

/// What a statement needs, without changing it.
///
/// # Safety
/// `stmt` is a parsed utility statement.
unsafe fn plan(stmt: *mut pg_sys::Node) -> Result<Plan> {
    let mut plan = Plan::default();
    if stmt.is_null() {
        return Ok(plan);
    }
    match (*stmt).type_ {
        pg_sys::NodeTag::T_IndexStmt => {
            // A plain index, or a unique one holding tenant_id (as written or rewritten), on an
            // enabled table changes nothing of its protected shape.
            let index = stmt as *mut pg_sys::IndexStmt;
            let table_enabled = enabled(relid_of((*index).relation))?.is_some();
            if (*index).unique && !(*index).primary && !index_names_tenant(index) {
                plan.rewrite = table_enabled;
            }
            plan.vetted = table_enabled && !(*index).primary;
        }
        pg_sys::NodeTag::T_DropStmt => {
            let drop = stmt as *mut pg_sys::DropStmt;
            if (*drop).removeType == pg_sys::ObjectType::OBJECT_INDEX {
                resolve_index_drop(drop, &mut plan)?;
            }
        }
        pg_sys::NodeTag::T_AlterTableStmt => {
            let alter = stmt as *mut pg_sys::AlterTableStmt;
            let table = relid_of((*alter).relation);
            let table_enabled = enabled(table)?;
            // FORCE is lifted only for a statement that does nothing but add or validate foreign
            // keys between enabled tables (and add plain columns carrying one): any other
            // subcommand could run the owner's code (a default, a USING expression, a check)
            // while every tenant's rows are in view.
            let mut only_keys = true;
            let mut needs_lift = false;
            // Every subcommand adds a foreign key between enabled tables that is made composite
            // here (or a plain column carrying one): the shape the guard would accept.
            let mut composite_only = true;
            // Every added column runs no code (see `plain_column`).
            let mut plain_columns = true;
            for cmd in elements((*alter).cmds) {
                let cmd = cmd as *mut pg_sys::AlterTableCmd;
                match (*cmd).subtype {
                    pg_sys::AlterTableType::AT_AddConstraint if !(*cmd).def.is_null() => {
                        let constraint = (*cmd).def as *mut pg_sys::Constraint;
                        match (*constraint).contype {
                            pg_sys::ConstrType::CONSTR_UNIQUE
                                if table_enabled.is_some() && unique_needs_tenant(constraint) =>
                            {
                                plan.rewrite = true;
                                only_keys = false;
                            }
                            pg_sys::ConstrType::CONSTR_FOREIGN => {
                                let parent = enabled(relid_of((*constraint).pktable))?;
                                if table_enabled.is_some() && parent.is_some() {
                                    let rewritten = !names_tenant((*constraint).fk_attrs);
                                    plan.rewrite |= rewritten;
                                    composite_only &= rewritten;
                                    needs_lift = true;
                                } else {
                                    composite_only = false;
                                }
                            }
                            _ => only_keys = false,
                        }
                    }
                    pg_sys::AlterTableType::AT_AddColumn if !(*cmd).def.is_null() => {
                        // ADD COLUMN x ... REFERENCES parent (Django's AddField of a foreign key).
                        let column = (*cmd).def as *mut pg_sys::ColumnDef;
                        for constraint in inline_foreign_keys(column) {
                            let parent = enabled(relid_of((*constraint).pktable))?;
                            if table_enabled.is_some() && parent.is_some() {
                                plan.rewrite = true;
                                needs_lift = true;
                            } else {
                                composite_only = false;
                            }
                        }
                        let plain = plain_column(column);
                        only_keys &= plain;
                        plain_columns &= plain;
                    }
                    pg_sys::AlterTableType::AT_ValidateConstraint if !(*cmd).name.is_null() => {
                        let parent = match table {
                            Some(table) => enabled(referenced_by(table, CStr::from_ptr((*cmd).name))?)?,
                            None => None,
                        };
                        composite_only = false;
                        if table_enabled.is_some() && parent.is_some() {
                            needs_lift = true;
                        } else {
                            only_keys = false;
                        }
                    }
                    _ => only_keys = false,
                }
            }
            if needs_lift {
                if !plain_columns {
                    return Err(MtError::InvalidArgument {
                        message: "a column added with a foreign key to a tenant-enabled table cannot run code: no \
                                  default, identity or generated expression, and no domain with a default or checks"
                            .into(),
                        hint: "Add the column in one ALTER TABLE and the foreign key in another (ALTER TABLE ... ADD \
                               FOREIGN KEY (<column>) REFERENCES ...)."
                            .into(),
                    });
                }
                if !only_keys {
                    return Err(MtError::InvalidArgument {
                        message:
                            "a foreign key between tenant-enabled tables must be added or validated in an ALTER TABLE \
                                  of its own"
                                .into(),
                        hint: "Split the statement: one ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY (or VALIDATE \
                               CONSTRAINT), the other subcommands in another."
                            .into(),
                    });
                }
                // The key is checked over every tenant's rows: the child and every enabled parent.
                plan.lift.extend(table_enabled);
                for cmd in elements((*alter).cmds) {
                    let cmd = cmd as *mut pg_sys::AlterTableCmd;
                    let pktables: Vec<*mut pg_sys::RangeVar> = match (*cmd).subtype {
                        pg_sys::AlterTableType::AT_AddConstraint => {
                            vec![(*((*cmd).def as *mut pg_sys::Constraint)).pktable]
                        }
                        pg_sys::AlterTableType::AT_AddColumn => {
                            inline_foreign_keys((*cmd).def as *mut pg_sys::ColumnDef)
                                .iter()
                                .map(|c| (*(*c)).pktable)
                                .collect()
                        }
                        _ => Vec::new(),
                    };
                    for pktable in pktables {
                        plan.lift.extend(enabled(relid_of(pktable))?);
                    }
                    if (*cmd).subtype == pg_sys::AlterTableType::AT_ValidateConstraint {
                        if let Some(table) = table {
                            plan.lift.extend(enabled(referenced_by(table, CStr::from_ptr((*cmd).name))?)?);
                        }
                    }
                }
                plan.vetted = composite_only && !plan.lift.iter().any(|oid| busy::ours(*oid));
            }
        }
        _ => {}
    }
    plan.lift.sort_by_key(|oid| oid.to_u32());
    plan.lift.dedup();
    // Tables the extension's own DDL is changing (hardening's foreign-key rebuild, say) are
    // its business: their FORCE is handled, and they are checked when that DDL is done.
    plan.lift.retain(|oid| !busy::ours(*oid));
    Ok(plan)
}

/// A column added with nothing that runs code: no default (of its own or of its type), no
/// generated expression, no identity, a type that is not a domain with checks, and no
/// constraint but NULL / NOT NULL and foreign keys.
///
/// # Safety
/// `column` is a valid ColumnDef.
unsafe fn plain_column(column: *mut pg_sys::ColumnDef) -> bool {
    // The column's type: a domain's (or base type's) default is evaluated for the existing rows,
    // and a domain's checks run on it.
    let typid = if (*column).typeName.is_null() {
        pg_sys::InvalidOid
    } else {
        pg_sys::LookupTypeNameOid(std::ptr::null_mut(), (*column).typeName, true)
    };
    if typid == pg_sys::InvalidOid || !pg_sys::get_typdefault(typid).is_null() || pg_sys::DomainHasConstraints(typid) {
        return false;
    }
    (*column).raw_default.is_null()
        && (*column).cooked_default.is_null()
        && (*column).identity == 0
        && (*column).generated == 0
        && elements((*column).constraints).into_iter().all(|c| {
            matches!(
                (*(c as *mut pg_sys::Constraint)).contype,
                pg_sys::ConstrType::CONSTR_FOREIGN
                    | pg_sys::ConstrType::CONSTR_NULL
                    | pg_sys::ConstrType::CONSTR_NOTNULL
                    | pg_sys::ConstrType::CONSTR_ATTR_DEFERRABLE
                    | pg_sys::ConstrType::CONSTR_ATTR_NOT_DEFERRABLE
                    | pg_sys::ConstrType::CONSTR_ATTR_DEFERRED
                    | pg_sys::ConstrType::CONSTR_ATTR_IMMEDIATE
            )
        })
}

/// `ADD ... UNIQUE (<columns>)` without tenant_id (and not `USING INDEX`, whose index was built,
/// and rewritten, by its own CREATE INDEX): [`plan`] and [`apply`] add tenant_id to it.
///
/// # Safety
/// `constraint` is a valid UNIQUE Constraint.
unsafe fn unique_needs_tenant(constraint: *mut pg_sys::Constraint) -> bool {
    (*constraint).indexname.is_null() && !names_tenant((*constraint).keys)
}

/// Whether an index's key names the tenant column.
///
/// # Safety
/// `index` is a valid IndexStmt.
unsafe fn index_names_tenant(index: *mut pg_sys::IndexStmt) -> bool {
    elements((*index).indexParams).into_iter().any(|elem| {
        let name = (*(elem as *mut pg_sys::IndexElem)).name;
        !name.is_null() && CStr::from_ptr(name) == TENANT
    })
}

/// Change the statement as [`plan`] said: `tenant_id` first in unique keys and in foreign keys
/// between enabled tables.
///
/// # Safety
/// `stmt` is a parsed utility statement that may be changed (not a read-only tree).
unsafe fn apply(stmt: *mut pg_sys::Node, plan: &Plan) -> Result<()> {
    match (*stmt).type_ {
        pg_sys::NodeTag::T_DropStmt => {
            let drop = stmt as *mut pg_sys::DropStmt;
            let mut objects: *mut pg_sys::List = std::ptr::null_mut();
            for (schema, name) in plan.drop_names.iter().flatten() {
                let qualified =
                    pg_sys::lappend(pg_sys::lappend(std::ptr::null_mut(), name_node(schema)), name_node(name));
                objects = pg_sys::lappend(objects, qualified as *mut c_void);
            }
            (*drop).objects = objects;
        }
        pg_sys::NodeTag::T_IndexStmt => {
            let index = stmt as *mut pg_sys::IndexStmt;
            let elem = pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexElem>()) as *mut pg_sys::IndexElem;
            (*elem).type_ = pg_sys::NodeTag::T_IndexElem;
            (*elem).name = pg_sys::pstrdup(TENANT.as_ptr());
            (*index).indexParams = pg_sys::lcons(elem as *mut c_void, (*index).indexParams);
        }
        pg_sys::NodeTag::T_AlterTableStmt => {
            let alter = stmt as *mut pg_sys::AlterTableStmt;
            let table_enabled = enabled(relid_of((*alter).relation))?;
            for cmd in elements((*alter).cmds) {
                let cmd = cmd as *mut pg_sys::AlterTableCmd;
                if (*cmd).subtype == pg_sys::AlterTableType::AT_AddColumn
                    && !(*cmd).def.is_null()
                    && table_enabled.is_some()
                {
                    move_inline_foreign_keys(alter, (*cmd).def as *mut pg_sys::ColumnDef)?;
                    continue;
                }
                if (*cmd).subtype != pg_sys::AlterTableType::AT_AddConstraint || (*cmd).def.is_null() {
                    continue;
                }
                let constraint = (*cmd).def as *mut pg_sys::Constraint;
                match (*constraint).contype {
                    pg_sys::ConstrType::CONSTR_UNIQUE if table_enabled.is_some() && unique_needs_tenant(constraint) => {
                        (*constraint).keys = pg_sys::lcons(name_node(TENANT), (*constraint).keys);
                    }
                    pg_sys::ConstrType::CONSTR_FOREIGN if !names_tenant((*constraint).fk_attrs) => {
                        let Some(parent) = enabled(relid_of((*constraint).pktable))? else { continue };
                        if table_enabled.is_none() {
                            continue;
                        }
                        make_composite(constraint, parent)?;
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `(x) REFERENCES parent [(y)]` as `(tenant_id, x) REFERENCES parent (tenant_id, y)`; a bare
/// `REFERENCES parent` spells out the parent's primary key (without tenant_id, which it holds
/// under a tenant key scope).
///
/// # Safety
/// `constraint` is a foreign-key Constraint of a tree that may be changed.
unsafe fn make_composite(constraint: *mut pg_sys::Constraint, parent: pg_sys::Oid) -> Result<()> {
    // SET NULL / SET DEFAULT would reach tenant_id once it is in the key: the RI trigger runs as
    // the owner over every tenant's rows, and SET DEFAULT would give another tenant's child rows
    // to the tenant deleting the parent. ON DELETE is limited to the key's own columns
    // (PostgreSQL 15's column list); ON UPDATE has no column list.
    let sets = |action: std::ffi::c_char| action as u8 == b'n' || action as u8 == b'd';
    if sets((*constraint).fk_upd_action) {
        return Err(tenant_changing_action("ON UPDATE"));
    }
    if sets((*constraint).fk_del_action) && (*constraint).fk_matchtype as u8 == b'f' {
        // MATCH FULL refuses a key half NULL: every delete of a referenced row would fail.
        return Err(MtError::InvalidArgument {
            message: "a foreign key between tenant-enabled tables cannot be MATCH FULL with ON DELETE SET NULL or \
                      SET DEFAULT: tenant_id stays, so the key would be half NULL"
                .into(),
            hint: "Use MATCH SIMPLE (the default), or ON DELETE NO ACTION, RESTRICT or CASCADE.".into(),
        });
    }
    if sets((*constraint).fk_del_action) {
        #[cfg(feature = "pg14")]
        return Err(tenant_changing_action("ON DELETE"));
        #[cfg(not(feature = "pg14"))]
        {
            if names_tenant((*constraint).fk_del_set_cols) {
                return Err(tenant_changing_action("ON DELETE"));
            }
            if (*constraint).fk_del_set_cols.is_null() {
                for column in elements((*constraint).fk_attrs) {
                    let name = name_node(string_value(column));
                    (*constraint).fk_del_set_cols = pg_sys::lappend((*constraint).fk_del_set_cols, name);
                }
            }
        }
    }
    if (*constraint).pk_attrs.is_null() {
        let columns = crate::catalog::primary_key(parent)?.map(|(_, columns)| columns).unwrap_or_default();
        for column in columns.iter().rev().filter(|c| c.as_bytes() != TENANT.to_bytes()) {
            let column = std::ffi::CString::new(column.as_str()).expect("no NUL in a name");
            (*constraint).pk_attrs = pg_sys::lcons(name_node(&column), (*constraint).pk_attrs);
        }
    }
    (*constraint).fk_attrs = pg_sys::lcons(name_node(TENANT), (*constraint).fk_attrs);
    (*constraint).pk_attrs = pg_sys::lcons(name_node(TENANT), (*constraint).pk_attrs);
    Ok(())
}

/// A foreign key between enabled tables whose action would set tenant_id.
fn tenant_changing_action(clause: &str) -> MtError {
    MtError::InvalidArgument {
        message: format!(
            "a foreign key between tenant-enabled tables cannot use {clause} SET NULL or SET DEFAULT on tenant_id: \
             the action runs over every tenant's rows and would move child rows between tenants"
        ),
        hint: if cfg!(feature = "pg14") || clause == "ON UPDATE" {
            format!("Use {clause} NO ACTION, RESTRICT or CASCADE.")
        } else {
            "Leave tenant_id out of the action: ON DELETE SET NULL (<the key's own columns>), or use NO ACTION, \
             RESTRICT or CASCADE."
                .into()
        },
    }
}

/// The foreign-key constraints written on a column definition (`x bigint REFERENCES parent`).
///
/// # Safety
/// `column` is a valid ColumnDef.
unsafe fn inline_foreign_keys(column: *mut pg_sys::ColumnDef) -> Vec<*mut pg_sys::Constraint> {
    elements((*column).constraints)
        .into_iter()
        .map(|c| c as *mut pg_sys::Constraint)
        .filter(|c| (*(*c)).contype == pg_sys::ConstrType::CONSTR_FOREIGN)
        .collect()
}

/// A column's own foreign keys to enabled tables become table constraints of the same ALTER
/// (after the ADD COLUMN), composite: a column constraint names one column only.
///
/// # Safety
/// `alter` and `column` belong to a tree that may be changed.
unsafe fn move_inline_foreign_keys(alter: *mut pg_sys::AlterTableStmt, column: *mut pg_sys::ColumnDef) -> Result<()> {
    let mut kept: *mut pg_sys::List = std::ptr::null_mut();
    // The constraint moved last: DEFERRABLE / INITIALLY ... written after it are its own
    // (PostgreSQL keeps them as separate nodes until it parses the column).
    let mut moved: Option<*mut pg_sys::Constraint> = None;
    for constraint in elements((*column).constraints) {
        let constraint = constraint as *mut pg_sys::Constraint;
        let attribute = match (*constraint).contype {
            pg_sys::ConstrType::CONSTR_ATTR_DEFERRABLE => Some((Some(true), None)),
            pg_sys::ConstrType::CONSTR_ATTR_NOT_DEFERRABLE => Some((Some(false), None)),
            pg_sys::ConstrType::CONSTR_ATTR_DEFERRED => Some((None, Some(true))),
            pg_sys::ConstrType::CONSTR_ATTR_IMMEDIATE => Some((None, Some(false))),
            _ => None,
        };
        if let (Some((deferrable, deferred)), Some(target)) = (attribute, moved) {
            if let Some(deferrable) = deferrable {
                (*target).deferrable = deferrable;
            }
            if let Some(deferred) = deferred {
                (*target).initdeferred = deferred;
            }
            continue;
        }
        if attribute.is_none() {
            moved = None;
        }
        let parent = if (*constraint).contype == pg_sys::ConstrType::CONSTR_FOREIGN {
            enabled(relid_of((*constraint).pktable))?
        } else {
            None
        };
        let Some(parent) = parent else {
            kept = pg_sys::lappend(kept, constraint as *mut c_void);
            continue;
        };
        (*constraint).fk_attrs = pg_sys::lcons(name_node(CStr::from_ptr((*column).colname)), std::ptr::null_mut());
        make_composite(constraint, parent)?;
        let cmd = pg_sys::palloc0(std::mem::size_of::<pg_sys::AlterTableCmd>()) as *mut pg_sys::AlterTableCmd;
        (*cmd).type_ = pg_sys::NodeTag::T_AlterTableCmd;
        (*cmd).subtype = pg_sys::AlterTableType::AT_AddConstraint;
        (*cmd).def = constraint as *mut pg_sys::Node;
        (*alter).cmds = pg_sys::lappend((*alter).cmds, cmd as *mut c_void);
        moved = Some(constraint);
    }
    (*column).constraints = kept;
    Ok(())
}

/// `INSERT ... ON CONFLICT (<columns>)` on an enabled table: the conflict target gets
/// `tenant_id` (see the module documentation). Called by the post-parse-analyze hook.
///
/// # Safety
/// `query` is a query just analysed.
pub unsafe fn on_conflict(query: *mut pg_sys::Query) -> Result<()> {
    if query.is_null() {
        return Ok(());
    }
    // WITH x AS (INSERT ... ON CONFLICT ...) too.
    for cte in elements((*query).cteList) {
        let cte = cte as *mut pg_sys::CommonTableExpr;
        let inner = (*cte).ctequery;
        if !inner.is_null() && (*inner).type_ == pg_sys::NodeTag::T_Query {
            on_conflict(inner as *mut pg_sys::Query)?;
        }
    }
    if (*query).commandType != pg_sys::CmdType::CMD_INSERT || (*query).onConflict.is_null() {
        return Ok(());
    }
    let conflict = (*query).onConflict;
    if (*conflict).arbiterElems.is_null() || (*query).resultRelation <= 0 || !registry::installed() {
        return Ok(());
    }
    let Some(&rte) = elements((*query).rtable).get((*query).resultRelation as usize - 1) else { return Ok(()) };
    let relid = (*(rte as *mut pg_sys::RangeTblEntry)).relid;
    let attnum = pg_sys::get_attnum(relid, TENANT.as_ptr());
    if attnum <= 0 || pg_sys::get_atttype(relid, attnum) != pg_sys::UUIDOID || !registry::is_enabled(relid)? {
        return Ok(());
    }
    let named = elements((*conflict).arbiterElems).into_iter().any(|elem| {
        let expr = (*(elem as *mut pg_sys::InferenceElem)).expr;
        !expr.is_null() && (*expr).type_ == pg_sys::NodeTag::T_Var && (*(expr as *mut pg_sys::Var)).varattno == attnum
    });
    if named {
        return Ok(());
    }
    let var = pg_sys::makeVar((*query).resultRelation as _, attnum, pg_sys::UUIDOID, -1, pg_sys::InvalidOid, 0);
    let elem = pg_sys::palloc0(std::mem::size_of::<pg_sys::InferenceElem>()) as *mut pg_sys::InferenceElem;
    (*elem).xpr.type_ = pg_sys::NodeTag::T_InferenceElem;
    (*elem).expr = var as *mut pg_sys::Node;
    (*conflict).arbiterElems = pg_sys::lappend((*conflict).arbiterElems, elem as *mut c_void);
    Ok(())
}
