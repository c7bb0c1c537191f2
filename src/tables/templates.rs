//! Tenant templates: rows every tenant gets a copy of.
//!
//! A migration that creates a table and fills it with default rows (shipping options, currencies,
//! a default pipeline) writes rows that belong to no tenant. `tenant_template(table)` makes them
//! the table's template: they are captured (without tenant_id and without generated ids, which
//! each copy gets anew), removed from the table, the table is tenant-enabled, and every active
//! tenant gets its copy. Every tenant created later gets one from `tenant_create`;
//! `template_apply(table, tenant)` gives one to a tenant on demand. The copies are written as the
//! table's owner with the tenant as the only context (`registry::as_table_owner`,
//! `context::with_maintenance_context`), so the owner's triggers see that tenant only.
use crate::catalog::{Regclass, Relation};
use crate::error::{required, MtError, OrRaise, Result, SpiContext};
use crate::registry::{self, tenants};
use crate::tables::{enable, spec::TENANT_COLUMN};
use crate::tenants::access;
use pgrx::prelude::*;
use serde_json::json;

/// Columns a template does not keep: tenant_id, generated columns, identity columns and columns
/// whose default draws from a sequence (each copy gets its own value).
fn skipped_columns(relid: pg_sys::Oid) -> Result<Vec<String>> {
    Spi::get_one_with_args::<Vec<String>>(
        "SELECT COALESCE(pg_catalog.array_agg(a.attname::text), '{}') FROM pg_catalog.pg_attribute a \
           LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
            AND (a.attname = $2 OR a.attidentity <> '' OR a.attgenerated <> '' \
                 OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%')",
        &[relid.into(), TENANT_COLUMN.into()],
    )
    .ctx("templates::skipped_columns")
    .map(Option::unwrap_or_default)
}

/// Make the rows of a table that is not tenant-enabled yet its template (see the module
/// documentation); returns the number of template rows. The table's owner (or a superuser);
/// EXECUTE is revoked from PUBLIC; audited.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_template(tbl: Option<Regclass>) -> i64 {
    let run = || {
        let relid = required(tbl, "tbl")?.0;
        let rel = enable::protectable(relid)?;
        if !registry::caller_owns(relid)? {
            return Err(MtError::NotTableOwner { table: rel.display(), function: "tenant_template" });
        }
        if registry::is_enabled(relid)? {
            return Err(MtError::InvalidArgument {
                message: format!("table \"{}\" is tenant-enabled: its rows belong to tenants", rel.display()),
                hint: "Call tenant_template() on the table the migration filled, before tenant_enable().".into(),
            });
        }
        let skipped = skipped_columns(relid)?;
        let rows = registry::as_table_owner(relid, || {
            let rows = Spi::get_one_with_args::<pgrx::JsonB>(
                &format!(
                    "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) $1::text[]), '[]') \
                       FROM ONLY {} t",
                    rel.sql()
                ),
                &[skipped.clone().into()],
            )
            .ctx("templates: capture")?
            .map(|j| j.0)
            .unwrap_or_else(|| json!([]));
            Spi::run(&format!("DELETE FROM ONLY {}", rel.sql())).ctx("templates: empty the table")?;
            Ok(rows)
        })?;
        let count = rows.as_array().map(Vec::len).unwrap_or(0) as i64;
        registry::as_owner(|| {
            Spi::run_with_args("DELETE FROM multitenancy.templates WHERE relid = $1", &[relid.into()])
                .ctx("templates: replace")?;
            Spi::run_with_args(
                "INSERT INTO multitenancy.templates (relid, n, row_data) \
                 SELECT $1::pg_catalog.oid::pg_catalog.regclass, r.n::integer, r.row_data \
                   FROM pg_catalog.jsonb_array_elements($2) WITH ORDINALITY AS r(row_data, n)",
                &[relid.into(), pgrx::JsonB(rows).into()],
            )
            .ctx("templates: store")
        })?;
        enable::enable(relid, None)?;
        let active = registry::as_owner(|| {
            Spi::get_one::<Vec<pgrx::Uuid>>(
                "SELECT COALESCE(pg_catalog.array_agg(id ORDER BY id), '{}') FROM multitenancy.tenants \
                  WHERE status = 'active'",
            )
            .ctx("templates: tenants")
            .map(Option::unwrap_or_default)
        })?;
        for tenant in &active {
            apply(relid, *tenant)?;
        }
        access::record(
            "tenant_template",
            None,
            json!({ "table": rel.display(), "rows": count, "tenants": active.len() }),
        )?;
        Ok(count)
    };
    run().or_raise()
}

/// Copy a table's template rows for one tenant; the number of rows copied.
pub fn apply(relid: pg_sys::Oid, tenant: pgrx::Uuid) -> Result<i64> {
    let rows = registry::as_owner(|| {
        Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT pg_catalog.jsonb_agg(row_data ORDER BY n) FROM multitenancy.templates WHERE relid = $1",
            &[relid.into()],
        )
        .ctx("templates: read")
    })?;
    let Some(rows) = rows else { return Ok(0) };
    let columns: Vec<String> = rows
        .0
        .as_array()
        .and_then(|rows| rows.first())
        .and_then(|row| row.as_object())
        .map(|row| row.keys().map(pgrx::spi::quote_identifier).collect())
        .unwrap_or_default();
    if columns.is_empty() {
        return Ok(0);
    }
    let rel = Relation::lookup(relid)?;
    let list = columns.join(", ");
    registry::as_table_owner(relid, || {
        crate::context::with_maintenance_context(tenant, || {
            Spi::connect_mut(|client| {
                client
                    .update(
                        &format!(
                            "INSERT INTO {table} ({list}) SELECT {list} \
                               FROM pg_catalog.jsonb_populate_recordset(NULL::{table}, $1)",
                            table = rel.sql()
                        ),
                        None,
                        &[rows.into()],
                    )
                    .map(|t| t.len() as i64)
                    .ctx("templates: copy")
            })
        })
    })
}

/// Every template for a new tenant (`tenant_create`).
pub fn apply_all(tenant: pgrx::Uuid) -> Result<()> {
    let tables = registry::as_owner(|| {
        crate::catalog::oid_column("SELECT DISTINCT relid::pg_catalog.oid FROM multitenancy.templates ORDER BY 1", &[])
    })?;
    for relid in tables {
        apply(relid, tenant)?;
    }
    Ok(())
}

/// Give a tenant its copy of a table's template rows (again). For DBAs (EXECUTE is revoked from
/// PUBLIC); audited. Returns the number of rows copied.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn template_apply(tbl: Option<Regclass>, tenant: Option<&str>) -> i64 {
    let run = || {
        let relid = required(tbl, "tbl")?.0;
        let tenant = tenants::require(required(tenant, "tenant")?)?;
        let copied = apply(relid, tenant.id)?;
        access::record(
            "template_apply",
            Some(tenant.id),
            json!({ "table": Relation::lookup(relid)?.display(), "rows": copied }),
        )?;
        Ok(copied)
    };
    run().or_raise()
}
