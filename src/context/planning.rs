//! The tenant as a plan-time constant.
//!
//! The isolation policy compares `tenant_id` with `(SELECT multitenancy.current_tenant_id())`;
//! left alone, PostgreSQL plans that sub-select as an initPlan and cannot see which tenant it
//! plans for. The planner hook ([`substitute`], called by `crate::hooks`) replaces it (and a bare
//! `multitenancy.current_tenant_id()` call, the column default of an INSERT) with the checked
//! tenant of the context as a `uuid` constant before planning, when the context resolves and the
//! user may execute the function; otherwise the query keeps its shape and fails at run time as
//! it always did. The plan is then the plan of `WHERE tenant_id = '<uuid>'`, with its estimates,
//! and another planner hook chained after this one (Citus) sees the constant.
//!
//! A query that reads no table and has no sub-select is left alone: PL/pgSQL evaluates such a
//! query (a "simple expression") from its cached plan without starting an executor, where the
//! check below could not see it.
//!
//! A plan with a constant must never run for another tenant. Two mechanisms:
//! - **Invalidation.** Such a plan carries `PlanInvalItem`s (a `pg_proc` hash of its own,
//!   [`MARK`], then the tenant). When the context moves to another tenant than the one plans
//!   were made for, this backend fires that syscache invalidation locally ([`context_changed`]),
//!   and PostgreSQL's plan cache replans every cached plan that carries it (prepared statements,
//!   SQL and PL/pgSQL functions' plans) before its next use; plans that read the context at run
//!   time are not touched. The moves are seen where they happen: an assignment
//!   of `multitenancy.tenant_id` or of the signed context, a purge's or a move's context, and —
//!   for contexts this extension does not own the setting of (claims) — the end of every
//!   transaction that planned with one.
//! - **A check where every plan starts.** The plan also records the tenant it was made for;
//!   `ExecutorStart` ([`check`]) resolves the context again, with all of its checks (no
//!   context, stale, suspended tenant, user not a member → the usual 28000), and refuses a plan
//!   made for another tenant. This is what makes the first mechanism an optimisation rather than
//!   the guarantee: whatever path changed the context unseen, a plan made for A cannot run for B.
use crate::error::{MtError, OrRaise};
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::c_void;

thread_local! {
    /// `current_tenant_id`'s oid and its `PROCOID` syscache hash in this database, once looked up
    /// (`Some(None)`: the extension is not installed here). Cleared by any `pg_proc` invalidation
    /// this backend did not fire itself.
    static FUNCTION: Cell<Option<Option<(pg_sys::Oid, u32)>>> = const { Cell::new(None) };
    /// The tenant the plans made since the last invalidation carry, and whether the context came from a setting whose changes this extension sees
    /// (`multitenancy.tenant_id`, the signed context).
    static PLANNED_FOR: Cell<Option<Planned>> = const { Cell::new(None) };
    /// This backend is firing its own invalidation (the cached oid stays valid).
    static FIRING: Cell<bool> = const { Cell::new(false) };
    /// The context is being resolved for the planner: plans made meanwhile (the registry lookup's
    /// own queries) are left alone.
    static RESOLVING: Cell<bool> = const { Cell::new(false) };
    /// The last tenant this session planned for or had set, and how many transactions ended
    /// since the tenant last changed (a new session counts as steady).
    static LAST_TENANT: Cell<Option<pgrx::Uuid>> = const { Cell::new(None) };
    static SINCE_SWITCH: Cell<u32> = const { Cell::new(u32::MAX) };
    /// A generic plan was made without the constant because the session was switching tenants.
    static GENERIC_WITHOUT_CONSTANT: Cell<bool> = const { Cell::new(false) };
}

/// Transactions of one tenant after which a session counts as steady again (see [`substitute`]).
const STEADY_AFTER: u32 = 8;

fn steady() -> bool {
    SINCE_SWITCH.with(Cell::get) >= STEADY_AFTER
}

/// The session acts for `tenant` (a setting names it, or a plan is made for it): a different
/// tenant than before is a switch.
fn acting_for(tenant: pgrx::Uuid) {
    if LAST_TENANT.with(|l| l.replace(Some(tenant))).is_some_and(|last| last != tenant) {
        SINCE_SWITCH.with(|s| s.set(0));
    }
}

#[derive(Clone, Copy)]
struct Planned {
    tenant: pgrx::Uuid,
    seen: bool,
}

/// Marks the tenant a plan was made for among its `invalItems`: after the item on
/// `current_tenant_id` comes an item with this hash, then the tenant's 16 bytes in four items.
/// All are `PROCOID` items, so that any reader of the list sees well-formed items; one that
/// happens to match another function's invalidation only costs a replan.
const MARK: u32 = 0x4d54_4e54; // "MTNT"

const PROCOID: i32 = pg_sys::SysCacheIdentifier::PROCOID as i32;

/// Called once from `_PG_init`.
pub fn init() {
    // SAFETY: registers a callback for the life of the backend.
    unsafe { pg_sys::CacheRegisterSyscacheCallback(PROCOID, Some(function_changed), pg_sys::Datum::from(0)) };
    crate::gucs::on_tenant_setting(setting_changed);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn function_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    if !FIRING.with(Cell::get) {
        FUNCTION.with(|f| f.set(None));
    }
}

/// `current_tenant_id`'s oid and hash, if the extension is installed in this database.
fn function() -> Option<(pg_sys::Oid, u32)> {
    if let Some(known) = FUNCTION.with(Cell::get) {
        return known;
    }
    let found = crate::catalog::extension_function(c"current_tenant_id", &[]).and_then(|oid| {
        // SAFETY: catalog lookups in a transaction (the planner runs in one).
        unsafe {
            let extension = pg_sys::get_extension_oid(c"multitenancy".as_ptr(), true);
            // A function of that name that is not the extension's own is not replaced.
            (extension != pg_sys::InvalidOid
                && pg_sys::getExtensionOfObject(pg_sys::ProcedureRelationId, oid) == extension)
                .then(|| {
                    let hash = pg_sys::GetSysCacheHashValue(
                        PROCOID,
                        pg_sys::Datum::from(oid),
                        pg_sys::Datum::from(0),
                        pg_sys::Datum::from(0),
                        pg_sys::Datum::from(0),
                    );
                    (oid, hash)
                })
        }
    });
    FUNCTION.with(|f| f.set(Some(found)));
    found
}

/// Whether the current user may execute the function (the initPlan would check it).
fn may_execute(oid: pg_sys::Oid) -> bool {
    // SAFETY: an ACL check in a transaction.
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        let result = pg_sys::pg_proc_aclcheck(oid, pg_sys::GetUserId(), pg_sys::ACL_EXECUTE as pg_sys::AclMode);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        let result = pg_sys::object_aclcheck(
            pg_sys::ProcedureRelationId,
            oid,
            pg_sys::GetUserId(),
            pg_sys::ACL_EXECUTE as pg_sys::AclMode,
        );
        result == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Invalidate every cached plan made with a tenant constant (they are replanned before their
/// next use) — when the context may have moved to another tenant. Plans that read the context
/// at run time stay: the hash is the one only plans with a constant carry (see [`MARK`]).
fn invalidate() {
    if PLANNED_FOR.with(|p| p.take()).is_some() {
        fire(MARK);
    }
}

/// Invalidate the plans that depend on `current_tenant_id` by PostgreSQL's own record (generic
/// plans that read the context at run time), so that they are made again with the constant.
fn invalidate_generic(hash: u32) {
    fire(hash);
}

/// Run this backend's syscache callbacks for one `pg_proc` hash: the plan cache marks the plans
/// that carry it invalid. No catalog access, safe during abort.
fn fire(hash: u32) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            FIRING.with(|f| f.set(false));
        }
    }
    FIRING.with(|f| f.set(true));
    let _done = Done;
    // SAFETY: see above.
    unsafe { pg_sys::CallSyscacheCallbacks(PROCOID, hash) };
}

/// The context may have changed in a way no setting assignment shows (a purge's or a move's
/// context begins or ends).
pub fn context_changed() {
    invalidate();
}

/// `multitenancy.tenant_id` or the signed context was assigned: plans made for another tenant
/// than the one it names are invalidated. No tenant (RESET, the end of the transaction) needs
/// nothing: a plan with a constant then fails [`check`] as the initPlan would have failed.
fn setting_changed(tenant: Option<pgrx::Uuid>) {
    let Some(tenant) = tenant else { return };
    acting_for(tenant);
    if PLANNED_FOR.with(Cell::get).is_some_and(|planned| planned.tenant != tenant) {
        invalidate();
    }
}

/// The transaction ended: plans made with a context whose changes this extension does not see
/// (claims in another extension's setting, a purge, a move) are invalidated.
pub fn transaction_ended() {
    if PLANNED_FOR.with(Cell::get).is_some_and(|p| !p.seen) {
        invalidate();
    }
    let since = SINCE_SWITCH.with(|s| {
        s.set(s.get().saturating_add(1));
        s.get()
    });
    // Steady again: the generic plans made while switching are made again, with the constant.
    if since == STEADY_AFTER && GENERIC_WITHOUT_CONSTANT.with(|g| g.replace(false)) {
        if let Some(Some((_, hash))) = FUNCTION.with(Cell::get) {
            invalidate_generic(hash);
        }
    }
}

fn is_call(node: *mut pg_sys::Node, function: pg_sys::Oid) -> bool {
    // SAFETY: reads a node of the tree being planned.
    unsafe {
        !node.is_null()
            && (*node).type_ == pg_sys::NodeTag::T_FuncExpr
            && (*node.cast::<pg_sys::FuncExpr>()).funcid == function
            && (*node.cast::<pg_sys::FuncExpr>()).args.is_null()
    }
}

/// `(SELECT multitenancy.current_tenant_id())`: an EXPR sub-select of nothing but the call.
fn is_context_sublink(node: *mut pg_sys::Node, function: pg_sys::Oid) -> bool {
    // SAFETY: reads nodes of the tree being planned.
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_SubLink {
            return false;
        }
        let sublink = node.cast::<pg_sys::SubLink>();
        if (*sublink).subLinkType != pg_sys::SubLinkType::EXPR_SUBLINK || !(*sublink).testexpr.is_null() {
            return false;
        }
        let q = (*sublink).subselect.cast::<pg_sys::Query>();
        if q.is_null() || (*q).type_ != pg_sys::NodeTag::T_Query || (*q).commandType != pg_sys::CmdType::CMD_SELECT {
            return false;
        }
        let q = &*q;
        let plain = q.rtable.is_null()
            && (q.jointree.is_null() || ((*q.jointree).fromlist.is_null() && (*q.jointree).quals.is_null()))
            && q.cteList.is_null()
            && q.groupClause.is_null()
            && q.groupingSets.is_null()
            && q.havingQual.is_null()
            && q.windowClause.is_null()
            && q.distinctClause.is_null()
            && q.sortClause.is_null()
            && q.limitOffset.is_null()
            && q.limitCount.is_null()
            && q.setOperations.is_null()
            && !q.hasAggs
            && !q.hasWindowFuncs
            && !q.hasTargetSRFs
            && !q.hasSubLinks;
        if !plain || q.targetList.is_null() || (*q.targetList).length != 1 {
            return false;
        }
        let entry = (*(*q.targetList).elements).ptr_value.cast::<pg_sys::TargetEntry>();
        !(*entry).resjunk && is_call((*entry).expr.cast(), function)
    }
}

struct Walk {
    function: pg_sys::Oid,
    /// Where the context is read: list cells and target entries holding such a node.
    slots: Vec<*mut *mut c_void>,
    /// The query has parameters ($1): planned without their values, the plan is a generic one.
    params: bool,
}

impl Walk {
    fn look_at(&mut self, slot: *mut *mut c_void) {
        // SAFETY: a slot of the tree being planned.
        let node = unsafe { *slot }.cast::<pg_sys::Node>();
        if is_call(node, self.function) || is_context_sublink(node, self.function) {
            self.slots.push(slot);
        }
    }

    fn look_at_list(&mut self, list: *mut pg_sys::List) {
        if list.is_null() {
            return;
        }
        // SAFETY: a pointer list of the tree being planned, not changed during the walk.
        unsafe {
            if (*list).type_ != pg_sys::NodeTag::T_List {
                return;
            }
            for i in 0..(*list).length as usize {
                self.look_at(&raw mut (*(*list).elements.add(i)).ptr_value);
            }
        }
    }
}

/// A by-reference uuid constant in the planner's memory context.
fn constant(tenant: pgrx::Uuid) -> *mut c_void {
    // SAFETY: palloc'd copy of the 16 bytes, and a Const node over it.
    unsafe {
        let bytes = pg_sys::palloc(16).cast::<u8>();
        std::ptr::copy_nonoverlapping(tenant.as_bytes().as_ptr(), bytes, 16);
        pg_sys::makeConst(pg_sys::UUIDOID, -1, pg_sys::InvalidOid, 16, pg_sys::Datum::from(bytes), false, false).cast()
    }
}

fn resolve(function: pg_sys::Oid) -> Option<(pgrx::Uuid, bool)> {
    if !may_execute(function) {
        return None;
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RESOLVING.with(|r| r.set(false));
        }
    }
    RESOLVING.with(|r| r.set(true));
    let _done = Done;
    super::for_planning()
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is the Walk of `substitute`; nodes are the tree being planned.
    unsafe {
        let walk = &mut *context.cast::<Walk>();
        use pg_sys::NodeTag::*;
        match (*node).type_ {
            T_Query => return pg_sys::query_tree_walker(node.cast(), Some(walker), context, 0),
            T_List => walk.look_at_list(node.cast()),
            T_OpExpr | T_DistinctExpr | T_NullIfExpr => walk.look_at_list((*node.cast::<pg_sys::OpExpr>()).args),
            T_ScalarArrayOpExpr => walk.look_at_list((*node.cast::<pg_sys::ScalarArrayOpExpr>()).args),
            T_FuncExpr => walk.look_at_list((*node.cast::<pg_sys::FuncExpr>()).args),
            T_BoolExpr => walk.look_at_list((*node.cast::<pg_sys::BoolExpr>()).args),
            T_CoalesceExpr => walk.look_at_list((*node.cast::<pg_sys::CoalesceExpr>()).args),
            T_TargetEntry => walk.look_at((&raw mut (*node.cast::<pg_sys::TargetEntry>()).expr).cast()),
            T_Param if (*node.cast::<pg_sys::Param>()).paramkind == pg_sys::ParamKind::PARAM_EXTERN => {
                walk.params = true;
            }
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// Before planning: replace the context reads of `parse` with the tenant constant. Returns what
/// [`mark`] needs after planning, or `None` when nothing was replaced.
///
/// A generic plan (a statement with parameters planned without their values, which the plan
/// cache keeps and reuses) gets the constant only in a session that has kept its tenant for
/// [`STEADY_AFTER`] transactions: a session that switches tenants (a pooled connection, one
/// request per transaction) keeps one plan that reads the context when it runs, instead of
/// planning again after every switch.
pub fn substitute(parse: *mut pg_sys::Query, bound_params: pg_sys::ParamListInfo) -> Option<(pgrx::Uuid, bool)> {
    if RESOLVING.with(Cell::get) {
        return None;
    }
    let (function, _) = function()?;
    // SAFETY: reads the top of the query tree.
    if unsafe { (*parse).rtable.is_null() && !(*parse).hasSubLinks } {
        // A query of no table and no sub-select: PL/pgSQL runs such a query ("simple
        // expression", `v := current_tenant_id()`) from its cached plan without ExecutorStart,
        // so a constant there would escape `check`. It gains nothing from one anyway.
        return None;
    }
    let mut walk = Walk { function, slots: Vec::new(), params: false };
    // SAFETY: the planner's own copy of the query tree, which the planner scribbles on anyway.
    unsafe { pg_sys::query_tree_walker(parse, Some(walker), (&raw mut walk).cast(), 0) };
    if walk.slots.is_empty() {
        return None;
    }
    let generic = walk.params && bound_params.is_null();
    if generic && !steady() {
        GENERIC_WITHOUT_CONSTANT.with(|g| g.set(true));
        return None;
    }
    let (tenant, seen) = resolve(function)?;
    if generic && !seen {
        // A context from a setting another component owns (claims): plans with its constant are
        // discarded when the transaction ends, so a generic plan with it would be made again in
        // every transaction (PostgREST prepares its statements).
        GENERIC_WITHOUT_CONSTANT.with(|g| g.set(true));
        return None;
    }
    for slot in walk.slots {
        // SAFETY: the slots found above, in the tree being planned.
        unsafe { *slot = constant(tenant) };
    }
    Some((tenant, seen))
}

fn inval_item(hash: u32) -> *mut c_void {
    // SAFETY: a zeroed node of the right size, tagged.
    unsafe {
        let item = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlanInvalItem>()).cast::<pg_sys::PlanInvalItem>();
        (*item).type_ = pg_sys::NodeTag::T_PlanInvalItem;
        (*item).cacheId = PROCOID;
        (*item).hashValue = hash;
        item.cast()
    }
}

/// After planning: make the plan depend on the tenant (see the module documentation).
pub fn mark(plan: *mut pg_sys::PlannedStmt, (tenant, seen): (pgrx::Uuid, bool)) {
    let Some((_, hash)) = function() else { return };
    acting_for(tenant);
    if let Some(planned) = PLANNED_FOR.with(Cell::get) {
        if planned.tenant != tenant {
            // Plans for another tenant may still be valid: the invariant is one tenant at a time.
            invalidate();
        }
    }
    PLANNED_FOR.with(|p| {
        let seen = seen && p.get().is_none_or(|planned| planned.seen);
        p.set(Some(Planned { tenant, seen }))
    });
    let bytes = tenant.as_bytes();
    // SAFETY: appends nodes to the plan's list, in the planner's memory context.
    unsafe {
        let mut items = (*plan).invalItems;
        items = pg_sys::lappend(items, inval_item(hash));
        items = pg_sys::lappend(items, inval_item(MARK));
        for part in bytes.chunks(4) {
            items = pg_sys::lappend(items, inval_item(u32::from_be_bytes(part.try_into().expect("4 bytes"))));
        }
        (*plan).invalItems = items;
    }
}

/// The tenant a plan was made for, if it carries a constant.
fn planned_tenant(plan: *const pg_sys::PlannedStmt) -> Option<pgrx::Uuid> {
    // SAFETY: reads the plan's list of PlanInvalItem nodes.
    unsafe {
        let items = (*plan).invalItems;
        if items.is_null() {
            return None;
        }
        let n = (*items).length as usize;
        let at = |i: usize| &*(*(*items).elements.add(i)).ptr_value.cast::<pg_sys::PlanInvalItem>();
        (1..n.saturating_sub(4)).find(|&i| at(i).cacheId == PROCOID && at(i).hashValue == MARK).map(|i| {
            let mut bytes = [0u8; 16];
            for k in 0..4 {
                bytes[k * 4..k * 4 + 4].copy_from_slice(&at(i + 1 + k).hashValue.to_be_bytes());
            }
            pgrx::Uuid::from_bytes(bytes)
        })
    }
}

/// At `ExecutorStart`: a plan made for a tenant runs only for that tenant, with the context
/// checked as `current_tenant_id()` checks it. Parallel workers run what their leader checked;
/// EXPLAIN without ANALYZE runs nothing.
pub fn check(plan: *const pg_sys::PlannedStmt, eflags: i32) {
    let Some(planned) = planned_tenant(plan) else { return };
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::ParallelWorkerNumber } >= 0 || eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0 {
        return;
    }
    let current = super::current().or_raise();
    if current != planned {
        invalidate();
        Err::<(), _>(MtError::PlanForAnotherTenant { planned: planned.to_string(), current: current.to_string() })
            .or_raise();
    }
}
