//! The tenant registry: creating tenants, slug rules, looking tenants up.
use crate::context;
use crate::error::{MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::registry;
use pgrx::prelude::*;
use unicode_normalization::UnicodeNormalization;

pub const SLUG_MAX_LEN: usize = 63;
pub const NAME_MAX_LEN: usize = 200;

/// A tenant as the context and lifecycle code needs it.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: pgrx::Uuid,
    pub slug: String,
    pub status: String,
}

impl Tenant {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// Check a slug against the slug rules (also enforced by a CHECK constraint on the table).
pub fn validate_slug(slug: &str) -> Result<()> {
    let invalid = |reason| Err(MtError::InvalidSlug { slug: slug.to_string(), reason });
    if slug.is_empty() {
        return invalid("it is empty");
    }
    if slug.len() > SLUG_MAX_LEN {
        return invalid("it is longer than 63 characters");
    }
    if !slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return invalid("only lower-case letters a-z, digits and '-' are allowed");
    }
    if slug.starts_with('-') || slug.ends_with('-') {
        return invalid("it starts or ends with '-'");
    }
    Ok(())
}

/// Derive a slug from a display name: accents stripped, lower-cased, every run of other
/// characters turned into one '-', trimmed to 63 characters. `None` if nothing is left.
pub fn derive_slug(name: &str) -> Option<String> {
    let mut slug = String::with_capacity(name.len());
    let mut pending_dash = false;
    for c in name.nfkd() {
        if c.is_ascii_alphanumeric() {
            if pending_dash && !slug.is_empty() {
                slug.push('-');
            }
            pending_dash = false;
            slug.push(c.to_ascii_lowercase());
        } else if unicode_normalization::char::is_combining_mark(c) {
            // an accent split off by NFKD: drop it and keep the base letter's run going
        } else {
            pending_dash = true;
        }
    }
    slug.truncate(SLUG_MAX_LEN);
    let slug = slug.trim_end_matches('-').to_string();
    (!slug.is_empty()).then_some(slug)
}

fn validate_plan(plan: &str) -> Result<()> {
    let ok = !plan.is_empty()
        && plan.len() <= 63
        && plan.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MtError::InvalidPlan { plan: plan.to_string() })
    }
}

/// Look a tenant up by id or slug (a uuid string is taken as an id).
pub fn find(key: &str) -> Result<Option<Tenant>> {
    let key = key.trim();
    let (sql, arg): (&str, pgrx::datum::DatumWithOid) = match context::parse_uuid(key) {
        Some(id) => ("SELECT id, slug, status FROM multitenancy.tenants WHERE id = $1", id.into()),
        None => ("SELECT id, slug, status FROM multitenancy.tenants WHERE slug = lower($1)", key.into()),
    };
    registry::as_owner(|| {
        Spi::connect(|client| {
            let Some(row) = client.select(sql, Some(1), &[arg]).ctx("tenants::find")?.into_iter().next() else {
                return Ok(None);
            };
            Ok(Some(Tenant {
                id: row
                    .get::<pgrx::Uuid>(1)
                    .ctx("tenants::find id")?
                    .ok_or_else(|| MtError::internal("tenants::find", "tenant without id"))?,
                slug: row.get::<String>(2).ctx("tenants::find slug")?.unwrap_or_default(),
                status: row.get::<String>(3).ctx("tenants::find status")?.unwrap_or_default(),
            }))
        })
    })
}

/// Like [`find`], but a missing tenant is an error.
pub fn require(key: &str) -> Result<Tenant> {
    find(key)?.ok_or_else(|| MtError::TenantNotFound { tenant: key.to_string() })
}

/// Create a tenant; returns its id.
pub fn create(name: Option<&str>, slug: Option<&str>, plan: Option<&str>) -> Result<pgrx::Uuid> {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(MtError::InvalidName { reason: "it is empty" });
    }
    if name.chars().count() > NAME_MAX_LEN {
        return Err(MtError::InvalidName { reason: "it is longer than 200 characters" });
    }
    let slug = match slug {
        Some(slug) => {
            validate_slug(slug)?;
            slug.to_string()
        }
        None => derive_slug(name).ok_or_else(|| MtError::SlugUnderivable { name: name.to_string() })?,
    };
    let plan = plan.unwrap_or_default();
    validate_plan(plan)?;

    let id = registry::as_owner(|| {
        Spi::get_one_with_args::<pgrx::Uuid>(
            "INSERT INTO multitenancy.tenants (name, slug, plan) VALUES ($1, $2, $3) \
             ON CONFLICT (slug) DO NOTHING RETURNING id",
            &[name.into(), slug.as_str().into(), plan.into()],
        )
        .no_row_is_none()
        .ctx("tenants::create")
    })?;
    id.ok_or(MtError::DuplicateSlug { slug })
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
    fn slug_rules() {
        assert!(validate_slug("acme").is_ok());
        assert!(validate_slug("acme-2").is_ok());
        assert!(validate_slug(&"a".repeat(63)).is_ok());
        for bad in ["", "-acme", "acme-", "Acme", "ac me", "acmé", "a_b", &"a".repeat(64)] {
            assert!(validate_slug(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[pg_test]
    fn slugs_are_derived_from_names() {
        assert_eq!(derive_slug("Acme Corp").as_deref(), Some("acme-corp"));
        assert_eq!(derive_slug("  Café Zürich, Inc. ").as_deref(), Some("cafe-zurich-inc"));
        assert_eq!(derive_slug("ACME--42").as_deref(), Some("acme-42"));
        assert_eq!(derive_slug("日本"), None);
        assert_eq!(derive_slug("!!!"), None);
        let long = derive_slug(&"word ".repeat(40)).unwrap();
        assert!(long.len() <= SLUG_MAX_LEN && !long.ends_with('-'));
        assert!(validate_slug(&long).is_ok());
    }

    #[pg_test]
    fn create_derives_slug_and_refuses_duplicates() {
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Acme Corp')")
            .unwrap()
            .unwrap();
        let slug = Spi::get_one_with_args::<String>(
            "SELECT slug FROM multitenancy.tenants WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(slug.as_deref(), Some("acme-corp"));
        assert!(matches!(
            create(Some("Acme Corp"), None, Some("free")),
            Err(MtError::DuplicateSlug { .. })
        ));
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
