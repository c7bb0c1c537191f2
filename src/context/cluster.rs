//! The tenant context across a Citus cluster.
//!
//! The coordinator resolves and checks the context as every server does (settings, signed,
//! claims, the registry, which lives on the coordinator). Its queries on distributed tables run
//! on the workers, as the same role, against shards whose policy calls `current_tenant_id()`
//! there. So before a query starts, the coordinator hands the tenant it resolved to Citus as
//! `SET LOCAL multitenancy.cluster_tenant = '<tenant>'` ([`send`]), which Citus sends to every
//! worker connection of the transaction block, now and later. A worker reads that setting and
//! nothing else ([`raw_on_worker`]): no setting of the client's, no token, no claims; without
//! it (a statement outside a transaction block, a client connected to the worker directly
//! without setting it) there is no tenant and the query fails with 28000.
//!
//! A worker trusts what it is sent: it cannot look the tenant up (the registry is the
//! coordinator's) or verify a token (it never sees one). That makes a worker, to a role that can
//! connect to it directly, what the coordinator is in setting mode: the client names the tenant.
//! README's security model says so; `pg_hba.conf` keeps application roles off the workers.
use super::{Origin, Raw};
use crate::citus::{self, Node};
use crate::error::{MtError, Result};
use crate::gucs;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The tenant handed to Citus in this transaction, and the subtransaction nest level it was
    /// handed at (Citus forgets the SET LOCAL commands of a subtransaction when it ends).
    static SENT: Cell<Option<(pgrx::Uuid, i32)>> = const { Cell::new(None) };
    /// While [`send`] runs: the registry lookups of the context check and our SET commands are
    /// queries too, which must not send again.
    static SENDING: Cell<bool> = const { Cell::new(false) };
}

/// The context on a Citus worker: `multitenancy.cluster_tenant`, set in this transaction.
pub(super) fn raw_on_worker() -> Result<Raw> {
    let tenant =
        super::read_uuid_setting(gucs::cluster_tenant_raw()).map_err(|value| MtError::MalformedContext { value })?;
    let current = gucs::set_in_this_transaction(gucs::CLUSTER_TENANT_NAME);
    Ok(Raw {
        origin: Origin::Cluster,
        tenant: tenant.filter(|_| current),
        user: None,
        stale: tenant.is_some() && !current,
    })
}

/// On a Citus coordinator, inside a transaction block with a usable context: make sure Citus
/// sends the tenant to the workers of this transaction (see the module documentation). Called
/// before every query starts; a no-op once the tenant is on its way, and everywhere else.
pub fn send() {
    // SAFETY: reads transaction state.
    if SENDING.with(Cell::get) || !unsafe { pg_sys::IsTransactionBlock() } || citus::node() != Node::Coordinator {
        return;
    }
    struct Sending;
    impl Drop for Sending {
        fn drop(&mut self) {
            SENDING.with(|s| s.set(false));
        }
    }
    SENDING.with(|s| s.set(true));
    let _sending = Sending;
    let Some((tenant, _)) = super::for_planning() else { return };
    if SENT.with(Cell::get).is_some_and(|(sent, _)| sent == tenant) {
        return;
    }
    // Citus sends SET LOCAL commands on only with citus.propagate_set_commands = local; that
    // is switched on for our command alone and put back as it was.
    let previous = setting(c"citus.propagate_set_commands").unwrap_or_else(|| "none".into());
    let switch = !previous.eq_ignore_ascii_case("local");
    let mut commands = Vec::new();
    if switch {
        commands.push("SET LOCAL citus.propagate_set_commands TO 'local'".to_string());
    }
    // A uuid we formatted: no quoting needed, none possible to get wrong.
    commands.push(format!("SET LOCAL multitenancy.cluster_tenant TO '{tenant}'"));
    if switch {
        commands.push(format!("SET LOCAL citus.propagate_set_commands TO {}", pgrx::spi::quote_literal(&previous)));
    }
    gucs::sending_cluster_tenant(|| {
        for command in commands {
            Spi::run(&command).unwrap_or_else(|e| {
                MtError::internal("context::cluster::send", e.to_string()).raise();
            });
        }
    });
    // SAFETY: reads transaction state.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    SENT.with(|s| s.set(Some((tenant, level))));
}

/// Citus's functions that send SQL text of the caller's to other nodes, as the caller: on a
/// worker that text could set the tenant (a top-level SET there) or change a shard's protection
/// (as its owner), where the coordinator's guard does not see it.
pub const REMOTE_SQL: [&str; 6] = [
    "run_command_on_workers",
    "run_command_on_all_nodes",
    "run_command_on_shards",
    "run_command_on_placements",
    "run_command_on_colocated_placements",
    "master_run_on_worker",
];

/// On a node of a Citus cluster with the extension, refuse a query that calls one of [`REMOTE_SQL`]
/// unless the role is a superuser or BYPASSRLS (whom row level security does not bind anyway).
/// Called by the planner hook for every query, so a call inside a function, view or `DO` block
/// is refused where it is planned (review finding: through them the application named another
/// tenant on the workers, and a table owner dropped a shard's policy).
///
/// # Safety
/// `parse` is the query being planned.
pub unsafe fn refuse_remote_sql(parse: *mut pg_sys::Query) {
    // On every Citus node: code the coordinator pushes down (a delegated function) runs on a
    // worker, which can call these too (review finding).
    if parse.is_null() || citus::node() == Node::Plain || !crate::registry::installed() {
        return;
    }
    if !bound_by_rls() {
        return;
    }
    let mut found: Option<String> = None;
    // SAFETY: walks the tree being planned; the walker only reads.
    unsafe { remote_sql_walker(parse.cast(), (&raw mut found).cast()) };
    if let Some(function) = found {
        MtError::CitusRemoteSql { function }.raise();
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn remote_sql_walker(node: *mut pg_sys::Node, context: *mut std::ffi::c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is the Option<String> of `refuse_remote_sql`; nodes are the tree being
    // planned, read only.
    unsafe {
        use pg_sys::NodeTag::*;
        match (*node).type_ {
            T_Query => return pg_sys::query_tree_walker(node.cast(), Some(remote_sql_walker), context, 0),
            T_FuncExpr => {
                let funcid = (*node.cast::<pg_sys::FuncExpr>()).funcid;
                if pg_sys::get_func_namespace(funcid) == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) {
                    let name = pg_sys::get_func_name(funcid);
                    if !name.is_null() {
                        let name = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
                        if REMOTE_SQL.contains(&name.as_str()) {
                            *context.cast::<Option<String>>() = Some(name);
                            return true;
                        }
                    }
                }
            }
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(remote_sql_walker), context)
    }
}

/// With `citus.propagate_set_commands = local`, Citus sends the text of a `SET LOCAL` (and of
/// `RESET` and `SET TRANSACTION`) to the workers as it received it — the whole query string —
/// and joins the texts of a transaction into the one query that opens each later worker
/// connection, which the workers run as top-level statements. No check of one statement's text
/// can make that safe (review findings: `standard_conforming_strings` off here and on there, and
/// a trailing `--` that swallowed the start of the next text, each turned harmless SETs into a
/// SET of `multitenancy.cluster_tenant` on the workers). So roles row level security binds have
/// no SET forwarded at all: with the setting on, their propagatable SET statements are refused.
/// The extension's own (`send`) is exempt; it sends a text it wrote.
///
/// # Safety
/// `pstmt` is the ProcessUtility hook's argument.
pub unsafe fn refuse_forwarded_set(pstmt: *mut pg_sys::PlannedStmt) {
    let stmt = (*pstmt).utilityStmt;
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_VariableSetStmt || SENDING.with(Cell::get) {
        return;
    }
    let set = stmt as *mut pg_sys::VariableSetStmt;
    use pg_sys::VariableSetKind::*;
    let forwarded = match (*set).kind {
        VAR_SET_VALUE | VAR_SET_CURRENT | VAR_SET_DEFAULT => (*set).is_local,
        _ => true,
    };
    if !forwarded || citus::node() == Node::Plain {
        return;
    }
    if !setting_is(c"citus.propagate_set_commands", "local") || !bound_by_rls() {
        return;
    }
    MtError::CitusForwardedSet.raise();
}

/// On a worker, whether a top-level `SET multitenancy.cluster_tenant` comes the way Citus brings
/// the coordinator's `SET LOCAL`, and nothing else: the whole query string is this one statement
/// (a SET sent to a connection already in the transaction), or the string is Citus's opening of
/// a remote transaction (`BEGIN TRANSACTION ISOLATION LEVEL ...; <SET LOCALs>; SELECT
/// assign_distributed_transaction_id(...)`); and `standard_conforming_strings` is on, as Citus's
/// connections have it. Review finding: with a role default of `standard_conforming_strings =
/// off` (which Citus copies to the workers) the shard query Citus deparsed from the app's
/// literal `'x\'` split into statements on the worker, one of them a top-level SET of this
/// setting. A SET inside any other string is not the coordinator's.
///
/// # Safety
/// `pstmt` and `query_string` are the ProcessUtility hook's arguments.
pub unsafe fn framed_by_citus(pstmt: *mut pg_sys::PlannedStmt, query_string: *const std::ffi::c_char) -> bool {
    if query_string.is_null() {
        return false;
    }
    if !setting_is(c"standard_conforming_strings", "on") {
        return false;
    }
    let text = std::ffi::CStr::from_ptr(query_string).to_bytes();
    let (start, len) = ((*pstmt).stmt_location.max(0) as usize, (*pstmt).stmt_len.max(0) as usize);
    let end = if len == 0 { text.len() } else { (start + len).min(text.len()) };
    let whole = start == 0 && text[end..].iter().all(|&b| b.is_ascii_whitespace() || b == b';');
    whole || text.starts_with(b"BEGIN TRANSACTION ISOLATION LEVEL ")
}

/// Whether a utility statement is a `SET` (or `SET LOCAL`) of `multitenancy.cluster_tenant`.
///
/// # Safety
/// `stmt` is a parsed utility statement.
pub unsafe fn sets_cluster_tenant(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_VariableSetStmt {
        return false;
    }
    let set = stmt as *mut pg_sys::VariableSetStmt;
    (*set).kind == pg_sys::VariableSetKind::VAR_SET_VALUE
        && !(*set).name.is_null()
        && std::ffi::CStr::from_ptr((*set).name).to_bytes().eq_ignore_ascii_case(gucs::CLUSTER_TENANT_NAME.to_bytes())
}

/// The value of a setting (`None`: it does not exist), copied.
fn setting(name: &std::ffi::CStr) -> Option<String> {
    let value = gucs::value_of(name);
    // SAFETY: NULL or a NUL-terminated string owned by the GUC machinery, copied at once.
    (!value.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(value) }.to_string_lossy().into_owned())
}

/// Whether a setting exists and has `value` (as PostgreSQL prints it, compared without case).
fn setting_is(name: &std::ffi::CStr, value: &str) -> bool {
    setting(name).is_some_and(|v| v.eq_ignore_ascii_case(value))
}

/// Whether row level security binds the current role: not a superuser, not BYPASSRLS.
fn bound_by_rls() -> bool {
    // SAFETY: reads the current role and its catalog attributes.
    unsafe {
        let user = pg_sys::GetUserId();
        !(pg_sys::superuser_arg(user) || pg_sys::has_bypassrls_privilege(user))
    }
}

/// A subtransaction at `level` ended (committed or not): Citus dropped the SET LOCAL commands
/// it collected in it, so a tenant sent there is sent again by the next query.
pub fn subtransaction_ended(level: i32) {
    SENT.with(|s| {
        if s.get().is_some_and(|(_, at)| at >= level) {
            s.set(None);
        }
    });
}

/// The transaction ended: nothing is sent.
pub fn transaction_ended() {
    SENT.with(|s| s.set(None));
}
