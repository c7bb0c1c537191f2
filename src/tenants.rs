//! The tenant registry: creating tenants, slug rules, looking tenants up.
use crate::context;
use crate::error::{MtError, NoRowIsNone, OrRaise, Result, SpiContext};
use crate::registry;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgBuiltInOids, PgOid};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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

/// Tenants this session has looked up, by id and by slug.
///
/// `tenant_set` runs in every transaction of an application, and reading the registry with SPI
/// costs about as much as the application's own query. So lookups are cached per session and
/// the cache follows the registry exactly: a statement trigger on `multitenancy.tenants`
/// (`_tenants_changed`) sends a relcache invalidation for the table on every change, which
/// PostgreSQL delivers to every other session when the change commits; the callback below then
/// bumps [`GENERATION`], which empties the cache. [`find`] processes pending invalidations
/// first, so it never answers from a state older than what a fresh snapshot would see. The
/// session that makes a change bypasses the cache until its transaction ends, and then empties
/// it (committed or not).
#[derive(Default)]
struct Cache {
    generation: u64,
    by_id: HashMap<[u8; 16], Tenant>,
    by_slug: HashMap<String, Tenant>,
}

/// Bounds the memory a session spends on the cache.
const CACHE_MAX: usize = 10_000;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The registry was changed in the current transaction (by this session).
    static CHANGED_IN_THIS_TRANSACTION: Cell<bool> = const { Cell::new(false) };
    static TENANTS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The lookups by id and by slug, prepared on first use; PostgreSQL re-plans them when the
    /// registry table changes.
    static LOOKUPS: RefCell<[Option<OwnedPreparedStatement>; 2]> = const { RefCell::new([None, None]) };
}

pub fn init() {
    // SAFETY: registers callbacks for the life of the backend; they only touch our counters.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(registry_changed), pg_sys::Datum::from(0));
        pg_sys::RegisterXactCallback(Some(transaction_ended), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn registry_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // InvalidOid: "all relations" (after an invalidation queue overflow).
    if relid == pg_sys::InvalidOid || relid == TENANTS_RELID.with(Cell::get) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

/// The `multitenancy_tenants_changed` trigger: every session's cache of the registry is stale.
#[pg_extern(sql = "
CREATE FUNCTION multitenancy._tenants_changed() RETURNS trigger
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_tenants_changed_wrapper';
")]
fn _tenants_changed() {
    let relid = registry::tenants_relid().or_raise();
    // SAFETY: queues an invalidation for the other sessions, sent when this transaction commits.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    // This session reads its own uncommitted changes: no caching until the transaction ends,
    // whichever way it ends.
    CHANGED_IN_THIS_TRANSACTION.with(|c| c.set(true));
    GENERATION.with(|g| g.set(g.get() + 1));
}

#[pg_guard]
unsafe extern "C-unwind" fn transaction_ended(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE)
        && CHANGED_IN_THIS_TRANSACTION.with(|c| c.replace(false))
    {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

fn cached(key: &std::result::Result<[u8; 16], &str>) -> Option<Tenant> {
    let generation = GENERATION.with(Cell::get);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.generation != generation {
            *cache = Cache { generation, ..Cache::default() };
            return None;
        }
        match key {
            Ok(id) => cache.by_id.get(id).cloned(),
            Err(slug) => cache.by_slug.get(*slug).cloned(),
        }
    })
}

fn remember(tenant: &Tenant, generation: u64) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        // An invalidation that arrived during the lookup may predate what it read: keep nothing.
        if cache.generation != generation || GENERATION.with(Cell::get) != generation {
            return;
        }
        if cache.by_id.len() >= CACHE_MAX {
            cache.by_id.clear();
            cache.by_slug.clear();
        }
        cache.by_id.insert(*tenant.id.as_bytes(), tenant.clone());
        cache.by_slug.insert(tenant.slug.clone(), tenant.clone());
    })
}

/// Look a tenant up by id or slug (a uuid string is taken as an id).
pub fn find(key: &str) -> Result<Option<Tenant>> {
    let key = key.trim();
    let id = context::parse_uuid(key);
    let slug = key.to_lowercase();
    let cache_key = id.map(|id| *id.as_bytes()).ok_or(slug.as_str());
    // SAFETY: applies invalidations other sessions have committed (a shared-memory check when
    // there are none), as taking a lock would.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let changed_here = CHANGED_IN_THIS_TRANSACTION.with(Cell::get);
    if !changed_here {
        if let Some(tenant) = cached(&cache_key) {
            return Ok(Some(tenant));
        }
    }
    let generation = GENERATION.with(Cell::get);
    // A miss executes one of two statements prepared once per session (SPI_keepplan).
    let (index, sql, arg_type, arg): (usize, &str, PgBuiltInOids, pgrx::datum::DatumWithOid) = match id {
        Some(id) => (0, "SELECT id, slug, status FROM multitenancy.tenants WHERE id = $1", PgBuiltInOids::UUIDOID, id.into()),
        None => (1, "SELECT id, slug, status FROM multitenancy.tenants WHERE slug = $1", PgBuiltInOids::TEXTOID, slug.as_str().into()),
    };
    let found = registry::as_owner(|| {
        Spi::connect(|client| {
            let missing = LOOKUPS.with(|l| l.borrow()[index].is_none());
            if missing {
                let prepared = client.prepare(sql, &[PgOid::BuiltIn(arg_type)]).ctx("tenants::find prepare")?.keep();
                LOOKUPS.with(|l| l.borrow_mut()[index] = Some(prepared));
            }
            let rows = LOOKUPS.with(|l| {
                let lookups = l.borrow();
                let statement = lookups[index].as_ref().expect("prepared above");
                client.select(statement, Some(1), &[arg]).ctx("tenants::find")
            })?;
            let Some(row) = rows.into_iter().next() else {
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
    })?;
    if let (Some(tenant), false) = (&found, changed_here) {
        TENANTS_RELID.with(|r| r.set(registry::tenants_relid().unwrap_or(pg_sys::InvalidOid)));
        remember(tenant, generation);
    }
    Ok(found)
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
