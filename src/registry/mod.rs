//! The extension's own tables (the registry) and the one way to touch them.
//!
//! Registry tables grant nothing to PUBLIC. Functions callable by ordinary roles read or write
//! them through [`as_owner`], which runs a closure as the owner of the registry with a pinned
//! `search_path` — the same thing `SECURITY DEFINER ... SET search_path` does for a SQL
//! function, limited to the registry statements. Everything else a function does (DDL on the
//! caller's tables, say) runs as the caller, so PostgreSQL's own ownership checks apply.
pub mod tenants;

use crate::catalog::oid_column;
use crate::error::{MtError, NoRowIsNone, Result, SpiContext};
use crate::gucs;
use pgrx::prelude::*;
use std::collections::HashSet;

const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// The oid of the extension's table `multitenancy.<name>`.
pub fn relid(name: &std::ffi::CStr) -> Result<pg_sys::Oid> {
    // SAFETY: syscache lookups by name.
    let relid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"multitenancy".as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    };
    if relid == pg_sys::InvalidOid {
        return Err(MtError::internal("registry", format!("table multitenancy.{} is missing", name.to_string_lossy())));
    }
    Ok(relid)
}

/// Whether the extension is installed (and not being installed or updated) in this database.
/// The hooks run in every database of a server that preloads the library, and during the
/// extension's own script.
pub fn installed() -> bool {
    // SAFETY: reads a backend global, then a syscache lookup by name.
    unsafe {
        if pg_sys::creating_extension {
            return false;
        }
        let nsp = pg_sys::get_namespace_oid(c"multitenancy".as_ptr(), true);
        nsp != pg_sys::InvalidOid && pg_sys::get_relname_relid(c"enabled_tables".as_ptr(), nsp) != pg_sys::InvalidOid
    }
}

/// The oid of `multitenancy.tenants`.
pub fn tenants_relid() -> Result<pg_sys::Oid> {
    relid(c"tenants")
}

/// Run `f` in a GUC nest level of its own, as `fmgr_security_definer` does for a function's SET
/// clause: settings `f` makes end with it — kept by the caller's level (`keep`), or discarded,
/// as VACUUM and REINDEX discard what the table owner's code they run set. (On an ERROR the
/// (sub)transaction abort pops the level instead.)
fn in_guc_level<R>(keep: bool, f: impl FnOnce() -> Result<R>) -> Result<R> {
    struct Pop(i32, bool);
    impl Drop for Pop {
        fn drop(&mut self) {
            // SAFETY: pops the level pushed below; during unwinding the abort pops it instead
            // (AtEOXact_GUC must not run twice for one level).
            if !std::thread::panicking() {
                unsafe { pg_sys::AtEOXact_GUC(self.1, self.0) };
            }
        }
    }
    // SAFETY: pushes a GUC nest level, popped by `Pop` or by the abort.
    let _pop = Pop(unsafe { pg_sys::NewGUCNestLevel() }, keep);
    f()
}

/// Run `f` with `search_path = pg_catalog, pg_temp`, restoring the caller's on return.
/// Deparsed expressions then print qualified, and no operator or function can be captured by a
/// schema the caller put on their search_path.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    in_guc_level(true, || {
        gucs::set(c"search_path", PINNED_SEARCH_PATH, pg_sys::GucAction::GUC_ACTION_SAVE);
        f()
    })
}

/// Run code that may execute other roles' code (a table owner's triggers, say) so that no
/// setting it changes — `set_config(..., false)` of a search_path included — outlives it.
pub fn discarding_settings<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    in_guc_level(false, f)
}

/// The role that owns the registry (the role that ran CREATE EXTENSION).
pub fn registry_owner() -> Result<pg_sys::Oid> {
    let relid = tenants_relid()?;
    // SAFETY: a syscache lookup; the tuple is released before we return.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as _, relid.into());
        if tuple.is_null() {
            return Err(MtError::internal("registry_owner", "cache lookup failed for multitenancy.tenants"));
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Ok(owner)
    }
}

/// Run `f` with an active snapshot: at commit, statements have finished and SPI needs one of
/// its own (the quotas' write-back and the guard's check of new tables). (An ERROR aborts the transaction, which clears the snapshot stack.)
pub fn with_active_snapshot<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    // SAFETY: pushed and popped around our own statements.
    let pushed = unsafe {
        if pg_sys::ActiveSnapshotSet() {
            false
        } else {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            true
        }
    };
    let result = f();
    if pushed {
        // SAFETY: pops what we pushed.
        unsafe { pg_sys::PopActiveSnapshot() };
    }
    result
}

/// Run `f` as the owner of the registry, with a pinned search_path — what `SECURITY DEFINER
/// ... SET search_path` does for a SQL function, limited to the registry statements.
///
/// On a normal return the caller's role is restored here; on an ERROR the (sub)transaction
/// abort restores it, as it does for SECURITY DEFINER functions.
pub fn as_owner<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    with_pinned_search_path(|| as_owner_qualified(f))
}

/// [`as_owner`] without pinning the search_path, for statements in which every table, function,
/// type and operator is schema-qualified (`OPERATOR(pg_catalog.+)`), so that no schema of the
/// caller's can capture a name. Pinning and restoring the search_path makes PostgreSQL recompute
/// it twice, which the usage counting of every INSERT should not pay.
pub fn as_owner_qualified<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    as_role(registry_owner()?, f)
}

/// Run `f` as `role`, in a security-restricted operation (no SET ROLE, no session state), the
/// way PostgreSQL runs maintenance (VACUUM, REINDEX) as a table's owner.
///
/// On a normal return the caller's role is restored here; on an ERROR the (sub)transaction
/// abort restores it, as it does for SECURITY DEFINER functions.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let _restore = SecurityContext::enter(
        Some(role),
        pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION,
    );
    f()
}

/// While alive, the current user is `user` (`None`: unchanged) and the security context has
/// `flags` added; dropping it restores both as they were. On an ERROR the (sub)transaction abort
/// restores them, as it does for SECURITY DEFINER functions.
pub struct SecurityContext {
    user: pg_sys::Oid,
    sec_context: i32,
}

impl SecurityContext {
    pub fn enter(user: Option<pg_sys::Oid>, flags: u32) -> SecurityContext {
        let mut saved_user = pg_sys::InvalidOid;
        let mut sec_context = 0;
        // SAFETY: save, then switch until the guard drops.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut sec_context);
            pg_sys::SetUserIdAndSecContext(user.unwrap_or(saved_user), sec_context | flags as i32);
        }
        SecurityContext { user: saved_user, sec_context }
    }
}

impl Drop for SecurityContext {
    fn drop(&mut self) {
        // SAFETY: restores exactly what `enter` saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec_context) };
    }
}

/// While alive, row level security is not forced on tables' owners (`SECURITY_NOFORCE_RLS`, as
/// PostgreSQL's own foreign-key checks run). On an ERROR the (sub)transaction abort restores
/// the security context instead.
pub struct NoForceRls {
    _context: SecurityContext,
}

impl NoForceRls {
    pub fn enter() -> NoForceRls {
        NoForceRls { _context: SecurityContext::enter(None, pg_sys::SECURITY_NOFORCE_RLS) }
    }
}

impl Drop for NoForceRls {
    fn drop(&mut self) {
        // Every cached plan plans again (the context itself is restored by the field's drop,
        // right after). PostgreSQL's plan cache keys row level security on the role and
        // `row_security`, not on SECURITY_NOFORCE_RLS: a plan the owner's code cached in this
        // window would skip FORCE when reused.
        // SAFETY: marks the backend's cached plans invalid.
        unsafe { pg_sys::ResetPlanCache() };
    }
}

/// Run `f` as the owner of a table, the way PostgreSQL's maintenance commands do: in a
/// security-restricted operation, with `search_path` pinned, and with every setting the owner's
/// code changes discarded afterwards ([`discarding_settings`]). For statements that fire the
/// owner's triggers on behalf of someone more privileged (`tenant_purge`, `tenant_enable`'s
/// backfill).
pub fn as_table_owner<R>(relid: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let owner = relation_owner(relid)?;
    discarding_settings(|| with_pinned_search_path(|| as_role(owner, f)))
}

/// The owner of a relation.
pub fn relation_owner(relid: pg_sys::Oid) -> Result<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>("SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1", &[relid.into()])
        .ctx("registry::relation_owner")?
        .ok_or_else(|| MtError::internal("registry::relation_owner", format!("no relation {}", relid.to_u32())))
}

/// The name of a role that exists (the current or the session user).
fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId errors out for an unknown role; ours always exist.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, false);
        std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// A role's name as an SQL identifier (quoted as needed).
pub fn role_sql(role: pg_sys::Oid) -> String {
    let name = std::ffi::CString::new(role_name(role)).expect("role names have no NUL byte");
    // SAFETY: quote_identifier returns its argument or a palloc'd quoted copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())).to_string_lossy().into_owned() }
}

/// The role calling us, as a name (for the registry's "who" columns).
pub fn calling_role() -> String {
    // SAFETY: reads the current user id.
    role_name(unsafe { pg_sys::GetUserId() })
}

/// The role that logged in (what a log line should name, whatever SET ROLE says).
pub fn session_role() -> String {
    // SAFETY: reads the session user id.
    role_name(unsafe { pg_sys::GetSessionUserId() })
}

/// Is this table recorded in `multitenancy.enabled_tables`?
pub fn is_enabled(relid: pg_sys::Oid) -> Result<bool> {
    as_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM multitenancy.enabled_tables WHERE relid = $1)",
            &[relid.into()],
        )
        .ctx("registry::is_enabled")
        .map(|found| found.unwrap_or(false))
    })
}

/// Record a table as tenant-enabled (no-op when it already is).
pub fn record_enabled(relid: pg_sys::Oid) -> Result<()> {
    let who = calling_role();
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO multitenancy.enabled_tables (relid, enabled_by) VALUES ($1::oid::regclass, $2) \
             ON CONFLICT (relid) DO NOTHING",
            &[relid.into(), who.into()],
        )
        .ctx("registry::record_enabled")
    })
}

/// Remove a table from `multitenancy.enabled_tables`.
pub fn forget_enabled(relid: pg_sys::Oid) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args("DELETE FROM multitenancy.enabled_tables WHERE relid = $1::oid::regclass", &[relid.into()])
            .ctx("registry::forget_enabled")
    })
}

/// Dropped tables leave the registry: enabled, exempt, templates.
pub fn forget_dropped(relids: &[pg_sys::Oid]) -> Result<()> {
    let relids: Vec<pg_sys::Oid> = relids.to_vec();
    as_owner(|| {
        for table in ["enabled_tables", "exempt_tables", "templates"] {
            Spi::run_with_args(
                &format!("DELETE FROM multitenancy.{table} WHERE relid::pg_catalog.oid = ANY ($1)"),
                &[relids.clone().into()],
            )
            .ctx("registry::forget_dropped")?;
        }
        Ok(())
    })
}

/// Every tenant-enabled table (that still exists).
pub fn enabled_set() -> Result<HashSet<pg_sys::Oid>> {
    as_owner(|| Ok(oid_column("SELECT relid::oid FROM multitenancy.enabled_tables", &[])?.into_iter().collect()))
}

/// The reason a table is exempt, or `None` when it is not.
pub fn exemption(relid: pg_sys::Oid) -> Result<Option<String>> {
    as_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT reason FROM multitenancy.exempt_tables WHERE relid = $1",
            &[relid.into()],
        )
        .no_row_is_none()
        .ctx("registry::exemption")
    })
}

/// The exempt pattern (and its reason) a table name matches, if any.
pub fn exempt_pattern_of(name: &str) -> Result<Option<(String, String)>> {
    as_owner(|| {
        Spi::get_one_with_args::<Vec<String>>(
            "SELECT ARRAY[pattern, reason] FROM multitenancy.exempt_patterns WHERE $1 LIKE pattern \
              ORDER BY pattern LIMIT 1",
            &[name.into()],
        )
        .no_row_is_none()
        .ctx("registry::exempt_pattern_of")
        .map(|row| row.and_then(|r| Some((r.first()?.clone(), r.get(1)?.clone()))))
    })
}

/// The key scope of an enabled table ('global' or 'tenant').
pub fn key_scope(relid: pg_sys::Oid) -> Result<Option<String>> {
    as_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT key_scope FROM multitenancy.enabled_tables WHERE relid = $1",
            &[relid.into()],
        )
        .no_row_is_none()
        .ctx("registry::key_scope")
    })
}

/// Record an enabled table's key scope.
pub fn set_key_scope(relid: pg_sys::Oid, scope: &str) -> Result<()> {
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE multitenancy.enabled_tables SET key_scope = $2 WHERE relid = $1",
            &[relid.into(), scope.into()],
        )
        .ctx("registry::set_key_scope")
    })
}

/// Every exempt table.
pub fn exempt_set() -> Result<HashSet<pg_sys::Oid>> {
    as_owner(|| Ok(oid_column("SELECT relid::oid FROM multitenancy.exempt_tables", &[])?.into_iter().collect()))
}

/// Record (or re-word) an exemption.
pub fn record_exempt(relid: pg_sys::Oid, reason: &str) -> Result<()> {
    let who = calling_role();
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO multitenancy.exempt_tables (relid, reason, exempted_by) VALUES ($1::oid::regclass, $2, $3) \
             ON CONFLICT (relid) DO UPDATE SET reason = EXCLUDED.reason, exempted_by = EXCLUDED.exempted_by, \
             exempted_at = pg_catalog.now()",
            &[relid.into(), reason.into(), who.into()],
        )
        .ctx("registry::record_exempt")
    })
}

/// Remove an exemption; whether there was one.
pub fn forget_exempt(relid: pg_sys::Oid) -> Result<bool> {
    as_owner(|| {
        Spi::get_one_with_args::<bool>(
            "WITH gone AS (DELETE FROM multitenancy.exempt_tables WHERE relid = $1::oid::regclass RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM gone)",
            &[relid.into()],
        )
        .ctx("registry::forget_exempt")
        .map(|found| found.unwrap_or(false))
    })
}

/// Whether the calling role may change the registry entry of a table: its owner (or a member of
/// the owning role) or a superuser — who may ALTER it.
pub fn caller_owns(relid: pg_sys::Oid) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[relid.into()],
    )
    .ctx("registry::caller_owns")
    .map(|owns| owns.unwrap_or(false))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn current_user_and_path() -> (Option<String>, Option<String>) {
        Spi::get_two::<String, String>("SELECT current_user::text, current_setting('search_path')").unwrap()
    }

    #[pg_test]
    fn as_owner_reads_the_registry_for_an_unprivileged_role_and_restores_it() {
        Spi::run("CREATE ROLE registry_probe NOLOGIN; SET LOCAL ROLE registry_probe; SET LOCAL search_path = public")
            .unwrap();
        let before = current_user_and_path();
        assert_eq!(before.0.as_deref(), Some("registry_probe"));

        let inside = as_owner(|| {
            let (user, path) = current_user_and_path();
            let tenants = Spi::get_one::<i64>("SELECT count(*) FROM multitenancy.tenants").ctx("count")?;
            Ok((user, path, tenants))
        })
        .unwrap();
        assert_ne!(inside.0.as_deref(), Some("registry_probe"), "runs as the registry owner");
        assert_eq!(inside.1.as_deref(), Some("pg_catalog, pg_temp"), "with a pinned search_path");
        assert_eq!(inside.2, Some(0));

        assert_eq!(current_user_and_path(), before, "role and search_path are restored");
    }

    #[pg_test]
    fn the_same_role_reads_no_registry_row_without_a_context() {
        Spi::run("SELECT multitenancy.tenant_create('Registry Probe')").unwrap();
        Spi::run("CREATE ROLE registry_probe2 NOLOGIN; SET LOCAL ROLE registry_probe2").unwrap();
        let seen = Spi::get_one::<i64>("SELECT count(*) FROM multitenancy.tenants").unwrap();
        assert_eq!(seen, Some(0), "row level security hides every tenant without a context");
        Spi::run("RESET ROLE").unwrap();
        let there = Spi::get_one::<i64>("SELECT count(*) FROM multitenancy.tenants").unwrap();
        assert_eq!(there, Some(1));
    }

    #[pg_test(error = "permission denied for table enabled_tables")]
    fn the_same_role_cannot_read_the_table_registry() {
        Spi::run("CREATE ROLE registry_probe3 NOLOGIN; SET LOCAL ROLE registry_probe3").unwrap();
        Spi::run("SELECT count(*) FROM multitenancy.enabled_tables").unwrap();
    }

    #[pg_test]
    fn the_registry_records_and_forgets_tables() {
        Spi::run("CREATE TABLE registry_t (id int)").unwrap();
        let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'registry_t'::regclass::oid").unwrap().unwrap();
        assert!(!is_enabled(relid).unwrap());
        record_enabled(relid).unwrap();
        record_enabled(relid).unwrap();
        assert!(is_enabled(relid).unwrap());
        let who = Spi::get_one::<String>("SELECT enabled_by::text FROM multitenancy.enabled_tables").unwrap();
        assert_eq!(who, Some(calling_role()));
        forget_enabled(relid).unwrap();
        assert!(!is_enabled(relid).unwrap());
    }
}
