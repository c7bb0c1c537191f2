//! Members of a tenant and their roles: `member_add`, `member_remove`, `member_set_role`, and
//! the cheap checks applications use in queries and policies (`is_member`, `tenant_role`,
//! `has_role`). The data changes themselves are SQL functions in `sql/members.sql`, run as the
//! registry owner after the caller has been authorised here.
use crate::context;
use crate::error::{MtError, OrRaise, Result};
use crate::registry::tenants::{self, parse_role, Role};
use crate::tenants::access::{self, Need};
use pgrx::prelude::*;

/// Authorise a membership change and run it. `may_leave`: the change is a removal, which any
/// member may make of themself.
fn change_member(
    action: &'static str,
    verb: &'static str,
    tenant: Option<&str>,
    user: Option<pgrx::Uuid>,
    call: &str,
    extra: Option<Role>,
    may_leave: bool,
) -> Result<()> {
    let tenant = access::tenant_to_manage(tenant, verb)?;
    let user = crate::error::required(user, "user_id")?;
    let leaving = may_leave && context::resolve_user()? == Some(user) && context::resolve()? == Some(tenant.id);
    let need = Need { role: if leaving { Role::Guest } else { Role::Admin }, action: verb };
    let caller = access::authorize(&tenant, need)?;
    // Changes that involve the owner role need an owner (checked again under the tenant's lock
    // in SQL, where the target's current role is known for sure).
    let may_manage_owners = caller == Role::Owner || leaving;
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![tenant.id.into(), user.into()];
    if let Some(role) = extra {
        args.push(role.as_str().into());
    }
    args.push(may_manage_owners.into());
    access::change(action, Some(tenant.id), call, &args)?;
    Ok(())
}

/// Add a user to a tenant with a role (default 'member').
#[pg_extern(volatile, parallel_unsafe)]
fn member_add(tenant: Option<&str>, user_id: Option<pgrx::Uuid>, role: default!(Option<&str>, "'member'")) {
    let run = || {
        let role = parse_role(role, "role")?;
        change_member(
            "member_add",
            "add members to",
            tenant,
            user_id,
            "SELECT multitenancy._member_add($1, $2, $3, $4, multitenancy.current_user_id_or_null())",
            Some(role),
            false,
        )
    };
    run().or_raise()
}

/// Remove a user from a tenant. The last owner cannot be removed.
#[pg_extern(volatile, parallel_unsafe)]
fn member_remove(tenant: Option<&str>, user_id: Option<pgrx::Uuid>) {
    change_member(
        "member_remove",
        "remove members of",
        tenant,
        user_id,
        "SELECT multitenancy._member_remove($1, $2, $3)",
        None,
        true,
    )
    .or_raise()
}

/// Change a member's role. The last owner cannot be demoted.
#[pg_extern(volatile, parallel_unsafe)]
fn member_set_role(tenant: Option<&str>, user_id: Option<pgrx::Uuid>, role: Option<&str>) {
    let run = || {
        let role = parse_role(role, "role")?;
        change_member(
            "member_set_role",
            "change member roles of",
            tenant,
            user_id,
            "SELECT multitenancy._member_set_role($1, $2, $3, $4)",
            Some(role),
            false,
        )
    };
    run().or_raise()
}

/// Whether `user_id` is a member of `tenant` (by default: the current user and tenant).
/// Applications may ask about their current tenant or their current user; operators and admin
/// mode about anyone.
#[pg_extern(stable, parallel_restricted)]
fn is_member(
    tenant: default!(Option<pgrx::Uuid>, "multitenancy.current_tenant_id()"),
    user_id: default!(Option<pgrx::Uuid>, "multitenancy.current_user_id()"),
) -> Option<bool> {
    let run = || -> Result<Option<bool>> {
        let (Some(tenant), Some(user)) = (tenant, user_id) else { return Ok(None) };
        let own = context::resolve()? == Some(tenant) || context::resolve_user()? == Some(user);
        if !own && crate::context::admin::admin_mode().is_none() && !access::is_operator()? {
            // Named as the caller named it: the refusal tells nothing about the tenant.
            return Err(MtError::NotAuthorized {
                action: "look up members of",
                tenant: tenant.to_string(),
                reason: "it is neither the tenant of the current context nor a question about the current user".into(),
            });
        }
        Ok(Some(tenants::role_of(tenant, user)?.is_some()))
    };
    run().or_raise()
}

/// The current user's role in the current tenant; NULL when no user is set or the user is not a
/// member. Raises when there is no tenant context.
#[pg_extern(stable, parallel_restricted)]
fn tenant_role() -> Option<&'static str> {
    context::current_role().or_raise().map(Role::as_str)
}

/// Whether the current user's role in the current tenant is at least `min_role`
/// (owner > admin > member > guest). For policies: `USING (multitenancy.has_role('admin'))`.
#[pg_extern(stable, parallel_restricted)]
fn has_role(min_role: Option<&str>) -> bool {
    let run = || -> Result<bool> {
        let min = parse_role(min_role, "min_role")?;
        Ok(context::current_role()?.is_some_and(|role| role >= min))
    };
    run().or_raise()
}
