//! The transaction callbacks, in one place and in a written order.
//!
//! PostgreSQL runs transaction callbacks in the reverse order of registration; here there is one
//! of each kind, and it calls the modules in the order below:
//! - before commit: the quotas write what this transaction counted and no statement trigger
//!   checked (`quotas::before_commit`), then the guard checks that the tables created in guarded
//!   schemas are enabled or exempt (`guard::before_commit`) — a failure of either aborts the
//!   commit;
//! - at the end (commit or abort): quotas, the registry cache, the context and admin mode forget
//!   the transaction, and the guard its pending tables;
//! - at the end of a subtransaction: quotas, admin mode, and (rolled back) the tables the
//!   extension's DDL had made busy.
use crate::context::{self, admin};
use crate::error::OrRaise;
use crate::quotas;
use crate::registry::tenants;
use crate::tables::{busy, guard};
use pgrx::prelude::*;

/// Called once from `_PG_init`.
pub fn init() {
    // SAFETY: registers callbacks for the life of the backend.
    unsafe {
        pg_sys::RegisterXactCallback(Some(transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subtransaction_event), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn transaction_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE) {
        quotas::before_commit().or_raise();
        guard::before_commit().or_raise();
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE) {
        quotas::transaction_ended();
    }
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        tenants::transaction_ended();
        context::transaction_ended();
        crate::citus::transaction_ended();
        admin::transaction_ended();
        guard::transaction_ended();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // SAFETY: reads transaction state; the callback runs while the subtransaction is current.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            quotas::subtransaction_aborted(level);
            admin::subtransaction_ended(level, false);
            context::subtransaction_ended(level, false);
            busy::subtransaction_aborted(level);
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            quotas::subtransaction_committed(level);
            admin::subtransaction_ended(level, true);
            context::subtransaction_ended(level, true);
        }
        _ => {}
    }
}
