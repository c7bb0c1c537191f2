//! Custom domains of tenants and host-based routing. `tenant_resolve` and the normalisation are
//! SQL (`sql/bootstrap.sql`, `sql/domains.sql`); the changes are authorised here.
use crate::error::{MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::registry;
use crate::registry::tenants;
use crate::registry::tenants::Role;
use crate::tenants::access::{self, Need};
use pgrx::prelude::*;

fn normalize(domain: Option<&str>) -> Result<String> {
    let raw = crate::error::required(domain, "domain")?;
    Spi::get_one_with_args::<String>("SELECT multitenancy.domain_normalize($1)", &[raw.into()])
        .ctx("domains::normalize")?
        .ok_or_else(|| MtError::InvalidArgument {
            message: format!("invalid domain \"{}\"", crate::error::clip(raw)),
            hint: "Pass a host name such as 'shop.example.com' (letters, digits, '-' and dots; no scheme or path)."
                .into(),
        })
}

/// Whether a (normalised) host is the base domain or under it: those route by slug only.
fn under_base_domain(host: &str) -> Option<String> {
    let base = crate::gucs::base_domain()?;
    (host == base || host.ends_with(&format!(".{base}"))).then_some(base)
}

/// Register a custom domain for a tenant; returns the verification token, which the tenant
/// publishes (a DNS TXT record, a file on the web root). The domain routes to the tenant once
/// an operator's backend has checked that and called `domain_verify`. Tenant admins may call it.
/// Hosts under `multitenancy.base_domain` are refused: they route by slug.
#[pg_extern(volatile, parallel_unsafe)]
fn domain_add(
    tenant: Option<&str>,
    domain: Option<&str>,
    is_primary: default!(Option<bool>, "false"),
) -> Option<String> {
    let run = || {
        let is_primary = crate::error::required(is_primary, "is_primary")?;
        let domain = normalize(domain)?;
        let tenant = access::tenant_to_manage(tenant, "add domains to")?;
        access::authorize(&tenant, Need { role: Role::Admin, action: "add domains to" })?;
        if let Some(base) = under_base_domain(&domain) {
            return Err(MtError::NotAuthorized {
                action: "add domains to",
                tenant: tenant.slug.clone(),
                reason: format!(
                    "\"{}\" is under the base domain \"{base}\", where hosts route to tenants by slug \
                     (<slug>.{base}), never by a custom domain",
                    crate::error::clip(&domain)
                ),
            });
        }
        let ttl = f64::from(crate::gucs::DOMAIN_CLAIM_TTL.get());
        access::change(
            "domain_add",
            Some(tenant.id),
            "SELECT multitenancy._domain_add($1, $2, $3, pg_catalog.make_interval(secs => $4))",
            &[tenant.id.into(), domain.as_str().into(), is_primary.into(), ttl.into()],
        )
    };
    run().or_raise()
}

/// Mark a domain verified when `token` is the one `domain_add` returned for it. For operators
/// only (EXECUTE is revoked from PUBLIC, and the caller must be a DBA or in write admin mode):
/// verification is the word of whoever checked, outside the tenant, that the token is published
/// in the domain's DNS or on its web root — never the adding tenant's own say-so.
#[pg_extern(volatile, parallel_unsafe)]
fn domain_verify(domain: Option<&str>, token: Option<&str>) {
    let run = || {
        if !access::is_operator()? {
            return Err(MtError::OperatorsOnly {
                action: "verify domains",
                why: "verification is an operator's word that the token is published in the domain's DNS or web root",
            });
        }
        let domain = normalize(domain)?;
        access::change(
            "domain_verify",
            None,
            "SELECT multitenancy._domain_verify($1, $2)",
            &[domain.as_str().into(), crate::error::required(token, "token")?.into()],
        )
    };
    run().or_raise();
}

/// Remove a custom domain. Admins of the domain's tenant may call it.
#[pg_extern(volatile, parallel_unsafe)]
fn domain_remove(domain: Option<&str>) {
    let run = || {
        let domain = normalize(domain)?;
        let owner = registry::as_owner(|| {
            Spi::get_one_with_args::<pgrx::Uuid>(
                "SELECT tenant_id FROM multitenancy.domains WHERE domain = $1",
                &[domain.as_str().into()],
            )
            .no_row_is_none()
            .ctx("domains::remove")
        })?;
        let not_found = || MtError::HostNotFound { host: domain.clone() };
        // Another tenant's domain is "not found", as an unknown one is: the refusal does not tell
        // who holds it.
        if !access::is_operator()? && (owner.is_none() || owner != crate::context::resolve()?) {
            return Err(not_found());
        }
        let tenant = tenants::lookup(tenants::Key::Id(owner.ok_or_else(not_found)?))?.ok_or_else(not_found)?;
        access::authorize(&tenant, Need { role: Role::Admin, action: "remove domains of" })?;
        access::change(
            "domain_remove",
            Some(tenant.id),
            "SELECT multitenancy._domain_remove($1, $2)",
            &[domain.as_str().into(), tenant.id.into()],
        )
    };
    run().or_raise();
}
