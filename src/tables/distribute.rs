//! `tenant_distribute`: scale an enabled table out with Citus, distributed by `tenant_id`.
//!
//! A table `tenant_enable` built is not what Citus distributes: its counting triggers, its
//! sub-select policy and (with key scope `global`) a primary key without `tenant_id` are each
//! refused, and Citus would copy the RESTRICTIVE isolation policy onto the shards as permissive.
//! `tenant_distribute` brings the table and everything linked to it by foreign keys (its family:
//! tables that must be colocated, or reference tables) into the distributed shape of [`spec`]
//! (`spec::DISTRIBUTED_POLICIES`, no counting triggers, key scope `tenant`) and hands them to
//! Citus: enabled tables with `create_distributed_table(..., 'tenant_id', colocate_with => ...)`,
//! all colocated with the first tenant-distributed table so that a tenant's rows of every table
//! live on one shard group; exempt (global) tables with `create_reference_table`. Referenced
//! tables go first, as Citus requires. Everything in the caller's transaction and with the
//! caller's rights (Citus itself requires the table's owner).
use crate::catalog::{self, Regclass, Relation};
use crate::citus::{self, Distribution, Node};
use crate::error::{notice, MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::quotas;
use crate::registry;
use crate::tables::busy::Busy;
use crate::tables::hardening;
use crate::tables::keys;
use crate::tables::spec::{self, DISTRIBUTED_POLICIES, POLICIES, TENANT_COLUMN, TRIGGERS};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use std::collections::{BTreeSet, HashSet};

/// Distribute `tbl` and its foreign-key family with Citus (see the module documentation). One
/// row per table of the family: its name and what it is now (`distributed`, `reference`, or
/// `already distributed` / `already reference`). The table's owner; EXECUTE is revoked from
/// PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_distribute(
    tbl: Option<Regclass>,
) -> TableIterator<'static, (name!(table_name, String), name!(citus_table, String))> {
    let rows = crate::error::required(tbl, "tbl").and_then(|tbl| distribute(tbl.0)).or_raise();
    TableIterator::new(rows)
}

fn refuse(rel: &Relation, reason: impl Into<String>, hint: impl Into<String>) -> MtError {
    MtError::CannotDistribute { table: rel.display(), reason: reason.into(), hint: hint.into() }
}

pub fn distribute(relid: pg_sys::Oid) -> Result<Vec<(String, String)>> {
    let rel = Relation::lookup(relid)?;
    match citus::node() {
        Node::Plain => return Err(refuse(
            &rel,
            "the Citus extension is not installed in this database",
            "Load Citus before multitenancy (shared_preload_libraries = 'citus,multitenancy'), run CREATE EXTENSION \
                 citus on every node and add the workers (citus_add_node) first; README, Scaling out with Citus.",
        )),
        Node::Worker => {
            return Err(refuse(
                &rel,
                "this server is a Citus worker",
                "Distribute tables on the coordinator; Citus creates the shards on the workers.",
            ))
        }
        Node::Coordinator => {}
    }
    let enabled = registry::enabled_set()?;
    let exempt = registry::exempt_set()?;
    if !enabled.contains(&relid) {
        return Err(refuse(
            &rel,
            "it is not tenant-enabled",
            format!(
                "Enable it first (SELECT multitenancy.tenant_enable('{}')); a global table becomes a Citus reference \
                 table with the enabled tables that reference it.",
                rel.sql()
            ),
        ));
    }
    let family = family(relid)?;
    let mut members = Vec::new();
    for &oid in &family {
        let member = Relation::lookup(oid)?;
        if !enabled.contains(&oid) && !exempt.contains(&oid) {
            return Err(refuse(
                &member,
                format!("it is linked to {} by a foreign key and is neither tenant-enabled nor exempt", rel.display()),
                format!(
                    "Decide what it holds: SELECT multitenancy.tenant_enable('{0}') for tenant data, or \
                     SELECT multitenancy.tenant_exempt('{0}', '<why it is global>') for global data.",
                    member.sql()
                ),
            ));
        }
        if !registry::caller_owns(oid)? {
            return Err(MtError::NotTableOwner { table: member.display(), function: "tenant_distribute" });
        }
        members.push(member);
    }
    let order = referenced_first(&family)?;
    let _busy = Busy::enter(&family);
    // The enabled tables take the distributed shape first: making a global table a reference
    // table converts the local tables that reference it to Citus tables, which Citus does only
    // for policies it accepts.
    let mut to_distribute = Vec::new();
    for member in order.iter().filter(|m| enabled.contains(&m.oid)) {
        if citus::distribution(member.oid)? == Distribution::Distributed {
            continue;
        }
        reshape(member, &family, &exempt)?;
        to_distribute.push(member.oid);
    }
    // A local table with a foreign key to a reference table is converted by Citus into a
    // "Citus local table" (shards on the coordinator, which the guard would see as new tables):
    // the keys from the tables about to be distributed to global ones are set aside while the
    // global tables become reference tables, and added back, as the catalog prints them, once
    // both sides are distributed.
    let set_aside = keys_to_global(&to_distribute, &exempt)?;
    if !set_aside.is_empty() {
        // Citus adds foreign keys to reference tables over one connection per node, which it
        // can do in a transaction that distributed tables only if that was sequential too.
        Spi::run("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'").ctx("distribute: sequential")?;
    }
    for (table, name, _) in &set_aside {
        Spi::run(&format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_identifier(name)))
            .ctx("distribute: set a foreign key aside")?;
    }
    let mut done = Vec::new();
    for member in order.iter().filter(|m| exempt.contains(&m.oid)) {
        done.push((member.display(), reference(member)?));
    }
    let mut colocate_with = colocation_anchor(&enabled)?;
    for member in order.iter().filter(|m| enabled.contains(&m.oid)) {
        if !to_distribute.contains(&member.oid) {
            done.push((member.display(), "already distributed".into()));
            continue;
        }
        create_distributed(member, colocate_with.as_ref())?;
        if colocate_with.is_none() {
            colocate_with = Some(member.clone());
        }
        done.push((member.display(), "distributed".into()));
    }
    for (table, name, definition) in &set_aside {
        Spi::run(&format!("ALTER TABLE {table} ADD CONSTRAINT {} {definition}", quote_identifier(name)))
            .ctx("distribute: add a foreign key back")?;
    }
    // Checked as a whole, as tenant_enable is: the shape and the hardened keys.
    for member in order.iter().filter(|m| enabled.contains(&m.oid)) {
        hardening::recheck("tenant_distribute", member, &enabled)?;
    }
    Ok(done)
}

/// The foreign keys of `tables` to exempt tables: (table, constraint name, definition).
fn keys_to_global(tables: &[pg_sys::Oid], exempt: &HashSet<pg_sys::Oid>) -> Result<Vec<(String, String, String)>> {
    let mut keys = Vec::new();
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT c.conrelid, c.conname::text, pg_catalog.pg_get_constraintdef(c.oid) \
                   FROM pg_catalog.pg_constraint c \
                  WHERE c.contype = 'f' AND c.conrelid = ANY ($1) AND c.confrelid = ANY ($2) ORDER BY 1, 2",
                None,
                &[tables.to_vec().into(), exempt.iter().copied().collect::<Vec<_>>().into()],
            )
            .ctx("distribute: keys to global tables")?;
        for row in rows {
            let relid = row.get::<pg_sys::Oid>(1).ctx("conrelid")?.unwrap_or(pg_sys::InvalidOid);
            keys.push((
                relid,
                row.get::<String>(2).ctx("conname")?.unwrap_or_default(),
                row.get::<String>(3).ctx("definition")?.unwrap_or_default(),
            ));
        }
        Ok::<_, MtError>(())
    })?;
    keys.into_iter().map(|(relid, name, definition)| Ok((Relation::lookup(relid)?.sql(), name, definition))).collect()
}

/// The table and every table linked to it by foreign keys, in either direction, transitively.
fn family(relid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    catalog::oid_column(
        "WITH RECURSIVE linked(relid) AS ( \
             SELECT $1::pg_catalog.oid \
             UNION \
             SELECT CASE WHEN c.conrelid = l.relid THEN c.confrelid ELSE c.conrelid END \
               FROM linked l JOIN pg_catalog.pg_constraint c \
                 ON c.contype = 'f' AND (c.conrelid = l.relid OR c.confrelid = l.relid)) \
         SELECT relid FROM linked ORDER BY relid",
        &[relid.into()],
    )
}

/// The family in an order Citus accepts: every table after the tables it references.
fn referenced_first(family: &[pg_sys::Oid]) -> Result<Vec<Relation>> {
    let mut edges: Vec<(pg_sys::Oid, pg_sys::Oid)> = Vec::new();
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint \
                  WHERE contype = 'f' AND conrelid = ANY ($1) AND conrelid <> confrelid",
                None,
                &[family.to_vec().into()],
            )
            .ctx("distribute: foreign keys")?;
        for row in rows {
            let from = row.get::<pg_sys::Oid>(1).ctx("conrelid")?.unwrap_or(pg_sys::InvalidOid);
            let to = row.get::<pg_sys::Oid>(2).ctx("confrelid")?.unwrap_or(pg_sys::InvalidOid);
            edges.push((from, to));
        }
        Ok::<_, MtError>(())
    })?;
    let mut placed: Vec<pg_sys::Oid> = Vec::new();
    let mut left: BTreeSet<u32> = family.iter().map(|o| o.to_u32()).collect();
    while !left.is_empty() {
        // A table whose referenced tables are all placed; a cycle of foreign keys places the
        // rest in oid order (Citus then says what it cannot do).
        let next = left
            .iter()
            .copied()
            .find(|&t| {
                edges
                    .iter()
                    .filter(|(from, _)| from.to_u32() == t)
                    .all(|(_, to)| placed.contains(to) || !left.contains(&to.to_u32()))
            })
            .unwrap_or_else(|| *left.iter().next().expect("not empty"));
        left.remove(&next);
        placed.push(pg_sys::Oid::from(next));
    }
    placed.into_iter().map(Relation::lookup).collect()
}

/// A tenant-distributed table to colocate new ones with, if there is one.
fn colocation_anchor(enabled: &HashSet<pg_sys::Oid>) -> Result<Option<Relation>> {
    for oid in catalog::oid_column(
        "SELECT logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_partition WHERE partmethod = 'h' ORDER BY 1",
        &[],
    )? {
        if enabled.contains(&oid) {
            return Ok(Some(Relation::lookup(oid)?));
        }
    }
    Ok(None)
}

fn reference(rel: &Relation) -> Result<String> {
    match citus::distribution(rel.oid)? {
        Distribution::Reference => return Ok("already reference".into()),
        Distribution::Local => {}
        Distribution::Distributed | Distribution::Other => {
            return Err(refuse(
                rel,
                "it is exempt (global) but Citus already distributes it another way",
                "A global table an enabled table references must be a Citus reference table: undistribute it \
                 (SELECT undistribute_table(...)) and call tenant_distribute again.",
            ))
        }
    }
    Spi::run_with_args(
        "SELECT pg_catalog.create_reference_table($1::pg_catalog.oid::pg_catalog.regclass)",
        &[rel.oid.into()],
    )
    .ctx("distribute: create_reference_table")?;
    Ok("reference".into())
}

/// Check that `rel` can be distributed by tenant and give it the distributed shape.
fn reshape(rel: &Relation, family: &[pg_sys::Oid], exempt: &HashSet<pg_sys::Oid>) -> Result<()> {
    match citus::distribution(rel.oid)? {
        Distribution::Distributed | Distribution::Local => {}
        Distribution::Reference | Distribution::Other => {
            return Err(refuse(
                rel,
                "Citus already made it a reference or local Citus table",
                "Undistribute it (SELECT undistribute_table(...)) and call tenant_distribute again.",
            ))
        }
    }
    if catalog::is_partition(rel.oid)? {
        return Err(refuse(
            rel,
            "it is a partition",
            "Distribute the partitioned table; Citus distributes its partitions with it.",
        ));
    }
    let table = rel.sql();
    // Every unique key must contain the distribution column: the primary key through the key
    // scope, anything else is the owner's to change.
    if registry::key_scope(rel.oid)?.as_deref() != Some("tenant") {
        keys::set(rel, "tenant")?;
        registry::set_key_scope(rel.oid, "tenant")?;
        notice(format!("key scope of {} is now tenant: its primary key includes tenant_id", rel.display()));
    }
    let without_tenant = catalog::oid_column(
        "SELECT i.indexrelid FROM pg_catalog.pg_index i \
          WHERE i.indrelid = $1 AND (i.indisunique OR EXISTS ( \
                SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid AND c.contype = 'x')) \
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                             WHERE a.attrelid = i.indrelid AND a.attname = $2 AND a.attnum = ANY (i.indkey)) \
          ORDER BY 1",
        &[rel.oid.into(), TENANT_COLUMN.into()],
    )?;
    if let Some(&index) = without_tenant.first() {
        let name = Relation::lookup(index)?.display();
        return Err(refuse(
            rel,
            format!("unique index or exclusion constraint {name} does not include tenant_id"),
            "Citus enforces uniqueness per shard: add tenant_id to the key (a natural key is then unique per \
             tenant), or drop it.",
        ));
    }
    // Foreign keys to other enabled tables must carry tenant_id (colocated: the rows they join
    // live on one shard); to exempt tables, which become reference tables, anything goes.
    let untenanted = Spi::get_one_with_args::<String>(
        "SELECT c.conname::text FROM pg_catalog.pg_constraint c \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attname = $3 \
          WHERE c.contype = 'f' AND (c.conrelid = $1 OR c.confrelid = $1) \
            AND c.conrelid = ANY ($2) AND c.confrelid = ANY ($2) \
            AND NOT (c.confrelid = ANY ($4)) AND NOT (a.attnum = ANY (c.conkey)) \
          ORDER BY 1 LIMIT 1",
        &[
            rel.oid.into(),
            family.to_vec().into(),
            TENANT_COLUMN.into(),
            exempt.iter().copied().collect::<Vec<_>>().into(),
        ],
    )
    .no_row_is_none()
    .ctx("distribute: foreign keys without tenant_id")?;
    if let Some(name) = untenanted {
        return Err(refuse(
            rel,
            format!("foreign key {name} between tenant-enabled tables does not include tenant_id"),
            format!(
                "Make the key per tenant: SELECT multitenancy.tenant_key_scope(...,'tenant') on the referenced table, \
                 then FOREIGN KEY (tenant_id, ...) REFERENCES it (tenant_id, ...); see {table}'s foreign keys."
            ),
        ));
    }
    let other_policies = Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.quote_ident(polname), ', ' ORDER BY polname) \
           FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname <> ALL ($2)",
        &[rel.oid.into(), POLICIES.iter().map(|p| p.name).collect::<Vec<_>>().into()],
    )
    .ctx("distribute: other policies")?;
    if let Some(names) = other_policies {
        return Err(refuse(
            rel,
            format!("it has policies of its own ({names})"),
            "Citus recreates every policy on the shards as PERMISSIVE, so another policy would widen what the \
             isolation policy allows: drop them first (put such conditions in a security_invoker view or the \
             application's queries).",
        ));
    }
    // The distributed shape: one permissive policy with the bare context call, no counting.
    for trigger in TRIGGERS {
        Spi::run(&trigger.drop_sql(&table)).ctx("distribute: counting triggers")?;
    }
    quotas::forget(rel.oid)?;
    for policy in POLICIES {
        Spi::run(&policy.drop_sql(&table)).ctx("distribute: policies")?;
    }
    for policy in DISTRIBUTED_POLICIES {
        Spi::run(&policy.create_sql(&table)).ctx("distribute: policy")?;
    }
    Ok(())
}

/// Hand a reshaped table to Citus, colocated with `colocate_with` (or in Citus's default group
/// of uuid-distributed tables).
fn create_distributed(rel: &Relation, colocate_with: Option<&Relation>) -> Result<()> {
    let colocate = colocate_with.map(|c| c.sql()).unwrap_or_else(|| "default".into());
    // Citus asks whether the table is empty with a query as the caller (the owner), which the
    // forced isolation policy would refuse without a tenant: FORCE is lifted for the call, as
    // PostgreSQL lifts it for its own foreign-key checks. Existing rows are copied by Citus
    // reading the table directly.
    let _noforce = registry::NoForceRls::enter();
    Spi::run_with_args(
        "SELECT pg_catalog.create_distributed_table($1::pg_catalog.oid::pg_catalog.regclass, $2, \
                colocate_with => $3)",
        &[rel.oid.into(), TENANT_COLUMN.into(), colocate.into()],
    )
    .ctx("distribute: create_distributed_table")?;
    if let Some(deviation) = spec::inspect(rel)?.first() {
        return Err(MtError::internal("tenant_distribute", deviation.describe()));
    }
    Ok(())
}
