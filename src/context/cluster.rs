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
    let tenant = super::read_uuid_setting(gucs::cluster_tenant_raw())
        .map_err(|value| MtError::MalformedContext { value })?;
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
    let propagate = gucs::value_of(c"citus.propagate_set_commands");
    // SAFETY: NULL or a NUL-terminated string owned by the GUC machinery, copied at once.
    let previous = (!propagate.is_null())
        .then(|| unsafe { std::ffi::CStr::from_ptr(propagate) }.to_string_lossy().into_owned())
        .unwrap_or_else(|| "none".into());
    let mut commands = Vec::new();
    if previous != "local" {
        commands.push("SET LOCAL citus.propagate_set_commands TO 'local'".to_string());
    }
    // A uuid we formatted: no quoting needed, none possible to get wrong.
    commands.push(format!("SET LOCAL multitenancy.cluster_tenant TO '{tenant}'"));
    if previous != "local" {
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
