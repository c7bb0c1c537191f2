//! Admin mode: audited cross-tenant access for the rest of a transaction (`admin_begin`, in
//! `crate::tenants::access`, checks who may enter it and writes the audit row).
//!
//! The state lives in backend memory, which no setting can forge, and ends with the transaction
//! or with a rolled-back savepoint it was entered in. Policies read it through
//! `multitenancy._admin_mode()`, an IMMUTABLE function the planner folds into a constant:
//! outside admin mode `tenant_id = <context> OR false` plans exactly like `tenant_id =
//! <context>`. Plans made in one mode must not be reused in the other, so entering and leaving
//! admin mode reset this backend's plan cache.
use pgrx::prelude::*;
use std::cell::Cell;

#[derive(Clone, Copy, Debug)]
pub struct AdminMode {
    /// The transaction nest level that admin mode belongs to (a rolled-back savepoint at or
    /// below it ends admin mode).
    level: i32,
    pub write: bool,
}

thread_local! {
    static ADMIN: Cell<Option<AdminMode>> = const { Cell::new(None) };
}

/// Admin mode of the current transaction, if `admin_begin` was called in it.
pub fn admin_mode() -> Option<AdminMode> {
    ADMIN.with(Cell::get)
}

/// Enter admin mode (with write access if `write`) at the current nest level. A second entry in
/// the same transaction does not take back write access.
pub fn enter(write: bool) -> AdminMode {
    let mode = AdminMode {
        // SAFETY: reads transaction state.
        level: unsafe { pg_sys::GetCurrentTransactionNestLevel() },
        write: write || admin_mode().is_some_and(|m| m.write),
    };
    ADMIN.with(|a| a.set(Some(mode)));
    // SAFETY: marks every cached plan of this backend for re-planning.
    unsafe { pg_sys::ResetPlanCache() };
    mode
}

fn leave() {
    if ADMIN.with(|a| a.take()).is_some() {
        // SAFETY: marks every cached plan of this backend for re-planning.
        unsafe { pg_sys::ResetPlanCache() };
    }
}

/// Run `f` outside admin mode (restored afterwards): the extension's maintenance of one
/// tenant's rows as a table's owner must not hand the owner's triggers admin mode.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<AdminMode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if self.0.is_some() {
                ADMIN.with(|a| a.set(self.0));
                // SAFETY: plans made outside admin mode must not run in it.
                unsafe { pg_sys::ResetPlanCache() };
            }
        }
    }
    let previous = ADMIN.with(|a| a.take());
    if previous.is_some() {
        // SAFETY: plans made in admin mode must not run outside it.
        unsafe { pg_sys::ResetPlanCache() };
    }
    let _restore = Restore(previous);
    f()
}

/// The top-level transaction ended (`crate::xact`).
pub fn transaction_ended() {
    leave();
}

/// A subtransaction at `level` ended (`crate::xact`): a rollback at or below the level admin
/// mode was entered at ends it; a commit of that level hands it to the parent.
pub fn subtransaction_ended(level: i32, committed: bool) {
    let Some(mode) = admin_mode() else { return };
    if !committed && level <= mode.level {
        leave();
    } else if committed && level == mode.level {
        ADMIN.with(|a| a.set(Some(AdminMode { level: level - 1, ..mode })));
    }
}

/// Whether this transaction is in admin mode. For the extension's policies only; IMMUTABLE on
/// purpose, see the module documentation.
#[pg_extern(immutable, parallel_safe)]
fn _admin_mode() -> bool {
    admin_mode().is_some()
}
