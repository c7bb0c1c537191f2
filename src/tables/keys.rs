//! The key scope of an enabled table: `global` (the primary key as the application made it, ids
//! unique across tenants — the default) or `tenant` (`PRIMARY KEY (tenant_id, ...)`: rows keyed
//! by a natural key such as a currency code exist once per tenant; composite foreign keys follow,
//! and the table can later be distributed by tenant_id). `tenant_key_scope` switches it, the
//! DDL guard and `verify()` keep it (`spec::Deviation::PrimaryKeyScope`).
use crate::catalog::{self, Regclass, Relation};
use crate::error::{required, MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::registry;
use crate::tables::busy::Busy;
use crate::tables::hardening;
use crate::tables::spec::TENANT_COLUMN;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// Set the key scope of an enabled table (see the module documentation). The table's owner (or
/// a superuser); EXECUTE is revoked from PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_key_scope(tbl: Option<Regclass>, scope: Option<&str>) {
    let run = || {
        let relid = required(tbl, "tbl")?.0;
        let scope = required(scope, "scope")?.trim().to_lowercase();
        if scope != "global" && scope != "tenant" {
            return Err(MtError::InvalidArgument {
                message: format!("invalid key scope \"{}\"", crate::error::clip(&scope)),
                hint: "A key scope is 'global' (ids unique across tenants) or 'tenant' (PRIMARY KEY (tenant_id, ...))."
                    .into(),
            });
        }
        let rel = Relation::lookup(relid)?;
        if !registry::caller_owns(relid)? {
            return Err(MtError::NotTableOwner { table: rel.display(), function: "tenant_key_scope" });
        }
        if !registry::is_enabled(relid)? {
            return Err(MtError::InvalidArgument {
                message: format!("table \"{}\" is not tenant-enabled", rel.display()),
                hint: format!("Enable it first: SELECT multitenancy.tenant_enable('{}').", rel.sql()),
            });
        }
        set(&rel, &scope)?;
        registry::set_key_scope(relid, &scope)?;
        hardening::recheck("tenant_key_scope", &rel, &registry::enabled_set()?)
    };
    run().or_raise()
}

/// Rebuild the primary key for `scope`.
pub fn set(rel: &Relation, scope: &str) -> Result<()> {
    let Some((name, columns)) = catalog::primary_key(rel.oid)? else { return Ok(()) };
    let with_tenant = columns.iter().any(|c| c == TENANT_COLUMN);
    let columns: Vec<String> = columns.iter().map(quote_identifier).collect();
    let tenant = scope == "tenant";
    if with_tenant == tenant {
        return Ok(());
    }
    // A foreign key of a table that is not tenant-enabled may reference the primary key itself.
    let referenced_by = Spi::get_one_with_args::<String>(
        "SELECT f.conname || ' of ' || f.conrelid::pg_catalog.regclass::text FROM pg_catalog.pg_constraint f \
           JOIN pg_catalog.pg_constraint p ON p.conrelid = f.confrelid AND p.contype = 'p' AND p.conindid = f.conindid \
          WHERE f.contype = 'f' AND f.confrelid = $1 ORDER BY 1 LIMIT 1",
        &[rel.oid.into()],
    )
    .no_row_is_none()
    .ctx("keys::referenced_by")?;
    if let Some(fk) = referenced_by {
        return Err(MtError::CannotHarden {
            table: rel.display(),
            object: format!("primary key {name}"),
            reason: format!("foreign key {fk} references it; tenant-enable that table too, or drop the foreign key"),
        });
    }
    let key: Vec<&str> = if tenant {
        std::iter::once(TENANT_COLUMN).chain(columns.iter().map(String::as_str)).collect()
    } else {
        columns.iter().map(String::as_str).filter(|c| *c != TENANT_COLUMN).collect()
    };
    let _busy = Busy::enter(&[rel.oid]);
    Spi::run(&format!(
        "ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} PRIMARY KEY ({key})",
        table = rel.sql(),
        name = quote_identifier(&name),
        key = key.join(", ")
    ))
    .ctx("keys: primary key")
}
