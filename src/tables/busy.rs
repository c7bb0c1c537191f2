//! Which tables the extension's own DDL is changing right now.
//!
//! While a table is busy, the DDL guard leaves commands on it to the extension (its own DDL,
//! which passes through states the guard would refuse and is checked as a whole when it is done:
//! `hardening::recheck`). Only these tables: the extension's DDL runs user code (the owner's
//! triggers during a backfill, index expressions while an index is rebuilt, check constraints
//! while a key is validated), and whatever that code does to any other object is checked as
//! usual. The guard is never paused as a whole.
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// The tables the extension is changing with its own DDL right now (innermost last).
    /// With the (sub)transaction nest level each was entered at.
    static BUSY: RefCell<Vec<(pg_sys::Oid, i32)>> = const { RefCell::new(Vec::new()) };
}

/// While alive, `tables` are busy (see the module documentation).
pub struct Busy(usize);

impl Busy {
    pub fn enter(tables: &[pg_sys::Oid]) -> Busy {
        BUSY.with(|b| {
            let mut busy = b.borrow_mut();
            let depth = busy.len();
            // SAFETY: reads transaction state.
            let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
            busy.extend(tables.iter().map(|&t| (t, level)));
            Busy(depth)
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.borrow_mut().truncate(self.0));
    }
}

/// Whether the extension's own DDL is changing `relid` right now.
pub fn ours(relid: pg_sys::Oid) -> bool {
    BUSY.with(|b| b.borrow().iter().any(|(t, _)| *t == relid))
}

/// A subtransaction at `level` rolled back: what it made busy is not any more, whether or not
/// the drop ran (an ERROR caught by an EXCEPTION block or ROLLBACK TO may skip it).
pub fn subtransaction_aborted(level: i32) {
    BUSY.with(|b| b.borrow_mut().retain(|(_, l)| *l < level));
}

/// The transaction ended: nothing is busy (an ERROR may have skipped a drop).
pub fn transaction_ended() {
    BUSY.with(|b| b.borrow_mut().clear());
}
