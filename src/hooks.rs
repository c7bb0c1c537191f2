//! The executor-side hooks, in one place: utility statements pass the signed-session guard
//! (`context::signed::check_utility`) and are adjusted for frameworks' migrations
//! (`tables::migrations::around_utility`); analysed queries get their `ON CONFLICT` target
//! adjusted (`tables::migrations::on_conflict`); the planner replaces the context reads with the
//! tenant as a constant, and every plan that carries one is checked where it starts
//! (`context::planning`). Installed in `_PG_init`, whether the library
//! is preloaded or not (see `tables::migrations` for what that means for the first statement).
use crate::context::{planning, signed};
use crate::error::OrRaise;
use crate::tables::migrations;
use pgrx::prelude::*;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREV_POST_PARSE_ANALYZE: pg_sys::post_parse_analyze_hook_type = None;
static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

/// Called once from `_PG_init`.
pub fn init() {
    // SAFETY: hook chaining as PostgreSQL documents it, once per backend.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_POST_PARSE_ANALYZE = pg_sys::post_parse_analyze_hook;
        pg_sys::post_parse_analyze_hook = Some(post_parse_analyze);
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    signed::check_utility((*pstmt).utilityStmt).or_raise();
    crate::context::cluster::refuse_forwarded_set(pstmt);
    // On a Citus worker, the coordinator's tenant arrives as a top-level SET statement.
    let _open = (context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
        && crate::context::cluster::sets_cluster_tenant((*pstmt).utilityStmt)
        && crate::citus::is_worker()
        && crate::context::cluster::framed_by_citus(pstmt, query_string))
    .then(crate::gucs::ClusterTenantOpen::enter);
    // Another library's hook is C: an ERROR in it must unwind through our frames as a Rust
    // panic (pg_guard_ffi_boundary), so that what we set up around it is taken down.
    migrations::around_utility(pstmt, read_only_tree, |pstmt, read_only_tree| match PREV_PROCESS_UTILITY {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
            prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
        }),
        None => {
            pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
        }
    })
    .or_raise();
}

#[pg_guard]
unsafe extern "C-unwind" fn post_parse_analyze(
    pstate: *mut pg_sys::ParseState,
    query: *mut pg_sys::Query,
    jstate: *mut pg_sys::JumbleState,
) {
    if let Some(prev) = PREV_POST_PARSE_ANALYZE {
        pg_sys::ffi::pg_guard_ffi_boundary(|| prev(pstate, query, jstate));
    }
    migrations::on_conflict(query).or_raise();
}

/// The tenant constant goes in before the next planner in the chain (Citus, say) sees the query.
#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // On a Citus coordinator: no SQL text to the workers from roles row level security binds.
    crate::context::cluster::refuse_remote_sql(parse);
    let tenant = planning::substitute(parse, bound_params);
    let plan = match PREV_PLANNER {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| prev(parse, query_string, cursor_options, bound_params)),
        None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
    };
    if let Some(tenant) = tenant {
        planning::mark(plan, tenant);
    }
    plan
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    planning::check((*query_desc).plannedstmt, eflags);
    // On a Citus coordinator, the tenant goes to the workers before the query reaches them.
    crate::context::cluster::send();
    match PREV_EXECUTOR_START {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| prev(query_desc, eflags)),
        None => pg_sys::standard_ExecutorStart(query_desc, eflags),
    }
}
