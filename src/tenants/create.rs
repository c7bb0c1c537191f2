//! Creating tenants (`tenant_create`, a DBA function): the slug rules and the registry read are
//! `crate::registry::tenants`; the data work is `sql/tenants.sql`.
use crate::context;
use crate::error::{MtError, OrRaise, Result};
use crate::registry::tenants::{derive_slug, validate_name, validate_plan, validate_slug};
use crate::tenants::access;
use pgrx::prelude::*;

/// Create a tenant; returns its id. When `multitenancy.user_id` is set, that user becomes the
/// tenant's owner.
pub fn create(name: Option<&str>, slug: Option<&str>, plan: Option<&str>) -> Result<pgrx::Uuid> {
    let name = validate_name(name)?;
    let slug = match slug {
        Some(slug) => {
            validate_slug(slug)?;
            slug.to_string()
        }
        None => derive_slug(name).ok_or_else(|| MtError::SlugUnderivable { name: name.to_string() })?,
    };
    let plan = plan.unwrap_or_default();
    validate_plan(plan)?;
    let owner = context::resolve_user()?;

    let id = access::change(
        "tenant_create",
        None,
        "SELECT multitenancy._tenant_create($1, $2, $3, $4)",
        &[name.into(), slug.as_str().into(), plan.into(), owner.into()],
    )?;
    let id = id.ok_or(MtError::DuplicateSlug { slug })?;
    let id = crate::uuid::parse(&id).ok_or_else(|| MtError::internal("tenants::create", "no tenant id"))?;
    // Its copy of every table's template rows (crate::tables::templates).
    crate::tables::templates::apply_all(id)?;
    Ok(id)
}

/// Create a tenant. `slug` defaults to one derived from `name`; `plan` defaults to 'free'.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn tenant_create(
    name: Option<&str>,
    slug: default!(Option<&str>, "NULL"),
    plan: default!(Option<&str>, "'free'"),
) -> pgrx::Uuid {
    create(name, slug, plan).or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn create_derives_slug_and_refuses_duplicates() {
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Acme Corp')").unwrap().unwrap();
        let slug =
            Spi::get_one_with_args::<String>("SELECT slug FROM multitenancy.tenants WHERE id = $1", &[id.into()])
                .unwrap();
        assert_eq!(slug.as_deref(), Some("acme-corp"));
        assert!(matches!(create(Some("Acme Corp"), None, Some("free")), Err(MtError::DuplicateSlug { .. })));
        assert!(matches!(create(Some("   "), None, Some("free")), Err(MtError::InvalidName { .. })));
        assert!(matches!(create(Some("X"), Some("Bad Slug"), Some("free")), Err(MtError::InvalidSlug { .. })));
        assert!(matches!(create(Some("X"), Some("x"), Some("Gold Plan")), Err(MtError::InvalidPlan { .. })));
        let count = Spi::get_one::<i64>("SELECT count(*) FROM multitenancy.tenants").unwrap();
        assert_eq!(count, Some(1), "refused creations must not leave rows behind");
    }

    #[pg_test(error = "tenant slug \"globex\" is already taken")]
    fn duplicate_slug_is_an_error_in_sql() {
        Spi::run("SELECT multitenancy.tenant_create('Globex')").unwrap();
        Spi::run("SELECT multitenancy.tenant_create('Globex Corporation', 'globex')").unwrap();
    }
}
