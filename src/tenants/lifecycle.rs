//! The life of a tenant (suspend, activate, delete, purge, rename, change plan), plans, and
//! per-tenant settings. The lifecycle and plan functions are for DBAs: CREATE EXTENSION revokes
//! EXECUTE on them from PUBLIC and a DBA grants them. `setting_set` is for tenant admins too.
//! Each call is one change with one audit row (see `access::change`); the data work is in
//! `sql/lifecycle.sql`.
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::registry::tenants;
use crate::registry::tenants::Role;
use crate::tenants::access::{self, Need};
use pgrx::prelude::*;

fn required_text<'a>(value: Option<&'a str>, what: &str, example: &str) -> Result<&'a str> {
    match value.map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(MtError::InvalidArgument {
            message: format!("{what} must not be empty"),
            hint: format!("Pass {what}, e.g. {example}."),
        }),
    }
}

fn lifecycle(
    action: &'static str,
    tenant: Option<&str>,
    call: &str,
    extra: Vec<pgrx::datum::DatumWithOid>,
) -> Result<Option<String>> {
    let tenant = access::tenant(tenant)?;
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![tenant.id.into()];
    args.extend(extra);
    access::change(action, Some(tenant.id), call, &args)
}

/// Suspend an active tenant: it can no longer be the tenant context (from the next transaction
/// on, in every session). Its data is kept.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_suspend(tenant: Option<&str>, reason: Option<&str>) {
    let run = || {
        let reason = required_text(reason, "a reason", "'unpaid invoice 2026-11'")?;
        lifecycle(
            "tenant_suspend",
            tenant,
            "SELECT multitenancy._tenant_status($1, 'suspended', $2)",
            vec![reason.into()],
        )
    };
    run().or_raise();
}

/// Make a suspended or deleted tenant active again.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_activate(tenant: Option<&str>) {
    lifecycle("tenant_activate", tenant, "SELECT multitenancy._tenant_status($1, 'active', NULL)", vec![]).or_raise();
}

/// Soft-delete a tenant: status 'deleted', deleted_at set, all data kept (tenant_activate undoes
/// it; tenant_purge removes the data).
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_delete(tenant: Option<&str>) {
    lifecycle("tenant_delete", tenant, "SELECT multitenancy._tenant_status($1, 'deleted', NULL)", vec![]).or_raise();
}

/// Hard-delete a deleted tenant: its rows in every tenant-enabled table, its members, domains
/// and settings, and its registry row. `confirm_slug` must repeat the tenant's slug. Returns the
/// number of rows deleted from tenant-enabled tables. Audit rows are kept.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_purge(tenant: Option<&str>, confirm_slug: Option<&str>) -> i64 {
    let run = || {
        let rows =
            lifecycle("tenant_purge", tenant, "SELECT multitenancy._tenant_purge($1, $2)", vec![confirm_slug.into()])?;
        Ok::<_, MtError>(rows.and_then(|r| r.parse().ok()).unwrap_or(0))
    };
    run().or_raise()
}

/// `multitenancy._purge_rows(table, tenant, delete)`: count (`delete` false) or delete one
/// tenant's rows of one tenant-enabled table, for `_tenant_purge`. It runs as the table's owner
/// in a security-restricted operation, like PostgreSQL's own maintenance commands: the owner's
/// triggers, rules and policies that the DELETE fires run with the owner's rights, never with
/// the registry owner's (a superuser). The purged tenant is the context while it runs (see
/// `context::with_maintenance_context`): the owner's forced row level security shows its rows, and
/// the owner's code sees that tenant only — no admin mode, no operator rights.
#[pg_extern(volatile, parallel_unsafe)]
fn _purge_rows(tbl: crate::catalog::Regclass, tenant: pgrx::Uuid, delete: bool) -> i64 {
    let run = || {
        let rel = crate::catalog::Relation::lookup(tbl.0)?;
        let sql = if delete {
            format!("DELETE FROM {} WHERE {} OPERATOR(pg_catalog.=) $1", rel.sql(), crate::tables::spec::TENANT_COLUMN)
        } else {
            format!(
                "SELECT pg_catalog.count(*) FROM ONLY {} WHERE {} OPERATOR(pg_catalog.=) $1",
                rel.sql(),
                crate::tables::spec::TENANT_COLUMN
            )
        };
        crate::registry::as_table_owner(rel.oid, || {
            crate::context::with_maintenance_context(tenant, || {
                if delete {
                    Spi::connect_mut(|client| {
                        client
                            .update(&sql, None, &[tenant.into()])
                            .map(|t| t.len() as i64)
                            .ctx("lifecycle::purge delete")
                    })
                } else {
                    Spi::get_one_with_args::<i64>(&sql, &[tenant.into()])
                        .ctx("lifecycle::purge count")
                        .map(|n| n.unwrap_or(0))
                }
            })
        })
    };
    run().or_raise()
}

/// Change a tenant's display name and (unless NULL) its slug.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_rename(tenant: Option<&str>, name: Option<&str>, slug: default!(Option<&str>, "NULL")) {
    let run = || {
        let name = tenants::validate_name(name)?;
        if let Some(slug) = slug {
            tenants::validate_slug(slug)?;
        }
        lifecycle(
            "tenant_rename",
            tenant,
            "SELECT multitenancy._tenant_rename($1, $2, $3)",
            vec![name.into(), slug.into()],
        )
    };
    run().or_raise();
}

/// Move a tenant to another plan (which must exist in multitenancy.plans).
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_change_plan(tenant: Option<&str>, plan: Option<&str>) {
    let run = || {
        let plan = crate::error::required(plan, "plan")?;
        tenants::validate_plan(plan)?;
        lifecycle("tenant_change_plan", tenant, "SELECT multitenancy._tenant_change_plan($1, $2)", vec![plan.into()])
    };
    run().or_raise();
}

/// Create or change a plan: its limits (quotas) and features, which are the defaults of every
/// tenant on the plan.
#[pg_extern(volatile, parallel_unsafe)]
fn plan_set(
    name: Option<&str>,
    limits: default!(Option<pgrx::JsonB>, "'{}'"),
    features: default!(Option<pgrx::JsonB>, "'{}'"),
) {
    let run = || {
        let name = crate::error::required(name, "name")?;
        tenants::validate_plan(name)?;
        access::change(
            "plan_set",
            None,
            "SELECT multitenancy._plan_set($1, $2, $3)",
            &[name.into(), limits.into(), features.into()],
        )
    };
    run().or_raise();
}

/// Set (or with NULL, remove) one setting of a tenant. Tenant admins may call it for their
/// tenant; operators for any.
#[pg_extern(volatile, parallel_unsafe)]
fn setting_set(tenant: Option<&str>, key: Option<&str>, value: Option<pgrx::JsonB>) {
    let run = || {
        let key = crate::error::required(key, "key")?;
        validate_key(key)?;
        if value.as_ref().is_some_and(|v| v.0.to_string().len() > 8192) {
            return Err(MtError::InvalidArgument {
                message: "a setting value is at most 8192 bytes of JSON".into(),
                hint: "Keep settings small (flags, limits, names); store documents in a tenant-enabled table.".into(),
            });
        }
        let tenant = access::tenant_to_manage(tenant, "change settings of")?;
        access::authorize(&tenant, Need { role: Role::Admin, action: "change settings of" })?;
        access::change(
            "setting_set",
            Some(tenant.id),
            "SELECT multitenancy._setting_set($1, $2, $3)",
            &[tenant.id.into(), key.into(), value.into()],
        )
    };
    run().or_raise();
}

fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 100
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(MtError::InvalidArgument {
            message: format!("invalid setting key \"{}\"", crate::error::clip(key)),
            hint:
                "A key is 1 to 100 characters of a-z, 0-9, '_', '.', ':' and '-', e.g. 'sso' or 'rows:public.orders'."
                    .into(),
        })
    }
}
