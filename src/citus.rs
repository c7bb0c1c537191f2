//! What the extension needs to know of Citus, when the database has it: which node this is and
//! which tables are distributed. Citus is optional; without its extension in the database every
//! answer here is "plain PostgreSQL".
//!
//! The node's role is Citus's own catalog, `pg_dist_local_group` (group 0: the coordinator;
//! another group: a worker), which only a superuser or Citus itself changes: a client cannot make
//! a coordinator act as a worker by what it sends. The answer is cached for the transaction
//! ([`transaction_ended`] forgets it).
use crate::error::{NoRowIsNone, Result, SpiContext};
use pgrx::prelude::*;
use std::cell::Cell;

/// The role of this server in a Citus cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// No Citus extension in this database.
    Plain,
    /// Citus's coordinator (group 0), or a server with Citus that is not in a cluster yet.
    Coordinator,
    /// A Citus worker: it holds shards and receives the coordinator's queries.
    Worker,
}

thread_local! {
    static NODE: Cell<Option<Node>> = const { Cell::new(None) };
}

/// This server's role (see the module documentation).
pub fn node() -> Node {
    if let Some(node) = NODE.with(Cell::get) {
        return node;
    }
    // SAFETY: a catalog lookup by name; missing_ok.
    let citus = unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } != pg_sys::InvalidOid;
    let node = if !citus {
        Node::Plain
    } else {
        match local_group() {
            Some(group) if group > 0 => Node::Worker,
            // CREATE EXTENSION citus is running (no catalog yet), or group 0: the coordinator.
            _ => Node::Coordinator,
        }
    };
    // Only cached inside a transaction: outside one (a hook before the first statement's
    // transaction starts) there is no end to forget it at.
    // SAFETY: reads transaction state.
    if unsafe { pg_sys::IsTransactionState() } {
        NODE.with(|n| n.set(Some(node)));
    }
    node
}

/// Citus's group id of this node (`pg_dist_local_group`, one row), read with a catalog scan
/// rather than a query: the GUC check hook of `multitenancy.cluster_tenant` asks too.
fn local_group() -> Option<i32> {
    // SAFETY: a catalog heap scan of a table found by name, under AccessShareLock, in a
    // transaction; the tuple is read before the scan ends. groupid is its first column, an
    // int4 that is never NULL.
    unsafe {
        let relid = catalog_relid(c"pg_dist_local_group")?;
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan =
            pg_sys::systable_beginscan(rel, pg_sys::InvalidOid, false, std::ptr::null_mut(), 0, std::ptr::null_mut());
        let tuple = pg_sys::systable_getnext(scan);
        let group = if tuple.is_null() {
            None
        } else {
            let mut isnull = false;
            let datum = pg_sys::heap_getattr(tuple, 1, (*rel).rd_att, &mut isnull);
            (!isnull).then(|| datum.value() as i32)
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        group
    }
}

/// Citus's catalog table `pg_catalog.<name>`, if it exists (a syscache lookup): the extension
/// may be in the middle of being created.
fn catalog_relid(name: &std::ffi::CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by name.
    let relid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE)) };
    (relid != pg_sys::InvalidOid).then_some(relid)
}

/// Whether this server is a Citus worker.
pub fn is_worker() -> bool {
    node() == Node::Worker
}

/// The transaction ended: the node's role is read again by the next one.
pub fn transaction_ended() {
    NODE.with(|n| n.set(None));
}

/// How Citus distributes a table (`pg_dist_partition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Not a Citus table (or no Citus).
    Local,
    /// Hash-distributed (by tenant_id, for a tenant-enabled table).
    Distributed,
    /// A reference table: a full copy on every node.
    Reference,
    /// Another kind of Citus table (a Citus local table, an append-distributed table).
    Other,
}

/// How Citus distributes `relid`.
pub fn distribution(relid: pg_sys::Oid) -> Result<Distribution> {
    if node() == Node::Plain || catalog_relid(c"pg_dist_partition").is_none() {
        return Ok(Distribution::Local);
    }
    let found = Spi::get_one_with_args::<String>(
        "SELECT partmethod::text || repmodel::text FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1",
        &[relid.into()],
    )
    .no_row_is_none()
    .ctx("citus::distribution")?;
    Ok(match found.as_deref() {
        None => Distribution::Local,
        Some(kind) if kind.starts_with('h') => Distribution::Distributed,
        Some("nt") => Distribution::Reference,
        Some(_) => Distribution::Other,
    })
}

/// Whether `relid` is a hash-distributed Citus table.
pub fn is_distributed(relid: pg_sys::Oid) -> Result<bool> {
    Ok(distribution(relid)? == Distribution::Distributed)
}
