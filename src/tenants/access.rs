//! Who may do what: operators, tenant admins, and audited cross-tenant admin access.
//!
//! - An *operator* may manage any tenant's members, domains and settings: a superuser, a member
//!   of the role that owns the extension, or a member of `multitenancy_admin` who called
//!   `admin_begin(reason, write => true)` in this transaction.
//! - Everyone else manages only the tenant of the current context, as the end user in
//!   `multitenancy.user_id`, and only with a high enough role in that tenant.
//! - `admin_begin(reason)` is the only way to see across tenants. It sets admin mode for the
//!   rest of the transaction in backend memory, which no setting can forge, and writes an audit
//!   row. Policies read the mode through `multitenancy._admin_mode()`, an IMMUTABLE function the
//!   planner folds into a constant: outside admin mode `tenant_id = <context> OR false` plans
//!   exactly like `tenant_id = <context>`. Plans made in one mode must not be reused in the
//!   other, so entering and leaving admin mode resets this backend's plan cache.
//!
//! Every state change made through the extension's functions writes one row to
//! `multitenancy.audit_log` ([`change`]).
use crate::context::{self, admin};
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::registry;
use crate::registry::tenants::Role;
use crate::registry::tenants::{self, Tenant};
use pgrx::prelude::*;

pub const ADMIN_ROLE: &std::ffi::CStr = c"multitenancy_admin";

fn has_privileges_of(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups for the current user.
    role != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), role) }
}

/// May the calling role manage every tenant?
pub fn is_operator() -> Result<bool> {
    Ok(admin::admin_mode().is_some_and(|m| m.write) || is_dba()?)
}

/// Is the calling role a DBA: a superuser, or a role with the privileges of the extension's
/// owner? (Admin mode does not count.)
pub fn is_dba() -> Result<bool> {
    // SAFETY: reads the current user's superuser flag.
    Ok(unsafe { pg_sys::superuser() } || has_privileges_of(registry::registry_owner()?))
}

/// What a caller needs in a tenant.
#[derive(Clone, Copy)]
pub struct Need {
    pub role: Role,
    /// What the call does, for the error message ("add members to").
    pub action: &'static str,
}

/// The caller as a manager of `tenant`: an operator, or the current end user with at least
/// `need.role` in the tenant of the current context. Returns the caller's role (Owner for
/// operators).
pub fn authorize(tenant: &Tenant, need: Need) -> Result<Role> {
    if is_operator()? {
        return Ok(Role::Owner);
    }
    let refuse =
        |reason: String| Err(MtError::NotAuthorized { action: need.action, tenant: tenant.slug.clone(), reason });
    if context::resolve()? != Some(tenant.id) {
        return refuse("it is not the tenant of the current context".into());
    }
    let Some(user) = context::resolve_user()? else {
        return refuse("multitenancy.user_id is not set, so there is no member to act as".into());
    };
    match tenants::role_of(tenant.id, user)? {
        Some(role) if role >= need.role => Ok(role),
        Some(role) => refuse(format!("user {user} is {}, and this needs {}", role.as_str(), need.role.as_str())),
        None => refuse(format!("user {user} is not a member")),
    }
}

/// Run one of the registry's internal functions (`call` returns jsonb details, or NULL for "no
/// change") as the registry owner and write its audit row. A details key `result` is returned
/// to the caller and not audited; a key `tenant_id` names the tenant when `tenant` is `None`;
/// `"unchanged": true` returns a result without a change (no audit row).
pub fn change(
    action: &'static str,
    tenant: Option<pgrx::Uuid>,
    call: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<String>> {
    let acting_role = registry::calling_role();
    let user = context::resolve_user().unwrap_or(None);
    let sql = format!(
        "SELECT d IS NULL OR COALESCE((d->>'unchanged')::boolean, false), d->>'result', \
                COALESCE(d - 'result' - 'tenant_id', '{{}}'), (d->>'tenant_id')::uuid \
           FROM ({call}) AS c(d)"
    );
    registry::as_owner(|| {
        let (unchanged, result, details, tenant_in_details) = Spi::connect(|client| {
            let row = client.select(&sql, Some(1), args).ctx("access::change")?.first();
            Ok::<_, MtError>((
                row.get::<bool>(1).ctx("unchanged")?.unwrap_or(true),
                row.get::<String>(2).ctx("result")?,
                row.get::<pgrx::JsonB>(3).ctx("details")?,
                row.get::<pgrx::Uuid>(4).ctx("tenant")?,
            ))
        })?;
        if !unchanged {
            audit(action, tenant.or(tenant_in_details), details, &acting_role, user)?;
        }
        Ok(result)
    })
}

/// Write an audit row for a change the caller made itself (not through [`change`]), as the
/// registry owner.
pub fn record(action: &str, tenant: Option<pgrx::Uuid>, details: serde_json::Value) -> Result<()> {
    let acting_role = registry::calling_role();
    let user = context::resolve_user().unwrap_or(None);
    registry::as_owner(|| audit(action, tenant, Some(pgrx::JsonB(details)), &acting_role, user))
}

fn audit(
    action: &str,
    tenant: Option<pgrx::Uuid>,
    details: Option<pgrx::JsonB>,
    acting_role: &str,
    user: Option<pgrx::Uuid>,
) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO multitenancy.audit_log (acting_role, user_id, tenant_id, action, details) \
         VALUES ($1, $2, $3, $4, COALESCE($5, '{}'))",
        &[acting_role.into(), user.into(), tenant.into(), action.into(), details.into()],
    )
    .ctx("access::audit")
}

/// `admin_begin`: enter admin mode for the rest of the transaction.
pub fn begin(reason: Option<&str>, write: bool) -> Result<()> {
    // SAFETY: reads transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return Err(MtError::NotInTransactionBlock { function: "multitenancy.admin_begin" });
    }
    // SAFETY: a catalog lookup by name.
    let admin = unsafe { pg_sys::get_role_oid(ADMIN_ROLE.as_ptr(), true) };
    if !has_privileges_of(admin) {
        return Err(MtError::NotAdmin { role: registry::calling_role() });
    }
    let reason = reason.map(str::trim).unwrap_or_default();
    if reason.len() > 1000 {
        return Err(MtError::InvalidArgument {
            message: format!("an admin access reason is at most 1000 bytes (got {})", reason.len()),
            hint: "Say why in a sentence and refer to the ticket, e.g. 'support ticket 4711'.".into(),
        });
    }
    if reason.is_empty() {
        return Err(MtError::InvalidArgument {
            message: "admin access needs a reason".into(),
            hint: "Say why, e.g. SELECT multitenancy.admin_begin('support ticket 4711').".into(),
        });
    }
    let acting_role = registry::calling_role();
    let user = context::resolve_user().unwrap_or(None);
    let details = pgrx::JsonB(serde_json::json!({ "reason": reason, "write": write }));
    registry::as_owner(|| audit("admin_begin", None, Some(details), &acting_role, user))?;
    let mode = admin::enter(write);
    if !mode.write {
        gucs::set(c"transaction_read_only", c"on", pg_sys::GucAction::GUC_ACTION_LOCAL);
    }
    crate::error::log(format!(
        "admin access by role \"{acting_role}\" (session role \"{}\"), {}: {reason}",
        registry::session_role(),
        if mode.write { "read and write" } else { "read only" }
    ));
    Ok(())
}

/// Enter admin mode for the rest of the transaction: reads (and with `write => true`, writes)
/// of every tenant's rows, audited. Only for members of `multitenancy_admin`.
#[pg_extern(volatile, parallel_unsafe)]
fn admin_begin(reason: Option<&str>, write: default!(Option<bool>, false)) {
    let write = crate::error::required(write, "write").or_raise();
    begin(reason, write).or_raise()
}

/// The tenant a management call names, for a caller who may manage some tenant: operators get
/// any tenant (42704 when there is none); everyone else only the tenant of the current context,
/// and the same refusal (42501, the tenant named as the caller named it) whether another tenant
/// exists or not — the refusal answers no question about other tenants. The role check follows
/// in [`authorize`].
pub fn tenant_to_manage(key: Option<&str>, action: &'static str) -> Result<Tenant> {
    let key = crate::error::required(key, "tenant")?;
    if is_operator()? {
        return tenants::require(key);
    }
    let current = context::resolve()?;
    match tenants::find(key)? {
        Some(tenant) if Some(tenant.id) == current => Ok(tenant),
        _ => Err(MtError::NotAuthorized {
            action,
            tenant: crate::error::clip(key),
            reason: "it is not the tenant of the current context".into(),
        }),
    }
}

/// Look a tenant up by slug or id for a management function; unknown is 42704.
pub fn tenant(key: Option<&str>) -> Result<Tenant> {
    tenants::require(crate::error::required(key, "tenant")?)
}

/// Whether the caller may read the registry entries of `tenant`: it is the tenant of the current
/// context, or admin mode is on, or the caller is an operator.
pub fn may_read(tenant: &Tenant) -> Result<bool> {
    Ok(context::resolve()? == Some(tenant.id) || admin::admin_mode().is_some() || is_operator()?)
}

/// For `member_list` and friends (SQL): 42501 unless [`may_read`].
#[pg_extern(stable, parallel_restricted)]
fn _readable_tenant(tenant: Option<&str>) -> pgrx::Uuid {
    let run = || {
        let key = crate::error::required(tenant, "tenant")?;
        // Refused the same way whether the tenant exists or not, named as the caller named it:
        // the refusal answers no question about another tenant. Operators and admin mode learn
        // that a tenant does not exist (42704).
        let insider = admin::admin_mode().is_some() || is_operator()?;
        match tenants::find(key)? {
            Some(found) if insider || may_read(&found)? => Ok(found.id),
            None if insider => Err(MtError::TenantNotFound { tenant: key.to_string() }),
            _ => Err(MtError::NotAuthorized {
                action: "read the registry of",
                tenant: crate::error::clip(key),
                reason: "it is not the tenant of the current context".into(),
            }),
        }
    };
    run().or_raise()
}
