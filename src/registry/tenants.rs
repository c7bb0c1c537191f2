//! The tenant registry: creating tenants, slug rules, looking tenants up.
use crate::access;
use crate::context;
use crate::members::Role;
use crate::error::{MtError, OrRaise, Result, SpiContext};
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

pub fn validate_plan(plan: &str) -> Result<()> {
    let ok = !plan.is_empty()
        && plan.len() <= 63
        && plan.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MtError::InvalidPlan { plan: plan.to_string() })
    }
}

/// Tenants (and memberships) this session has looked up.
///
/// `tenant_set` runs in every transaction of an application, and reading the registry with SPI
/// costs about as much as the application's own query. So lookups are cached per session and
/// the cache follows the registry exactly: a row trigger on `multitenancy.tenants` and
/// `multitenancy.members` (`_registry_changed`) sends a relcache invalidation for the tenants
/// table on every change, which PostgreSQL delivers to every other session when the change
/// commits; the callback below then bumps [`GENERATION`], which empties the cache. [`lookup`]
/// processes pending invalidations first, so it never answers from a state older than what a
/// fresh snapshot would see. The session that makes a change bypasses the cache until its
/// transaction ends, and then empties it (committed or not).
#[derive(Default)]
struct Cache {
    generation: u64,
    by_id: HashMap<[u8; 16], Tenant>,
    by_slug: HashMap<String, Tenant>,
    /// (tenant, user) -> role; `None`: not a member.
    roles: HashMap<([u8; 16], [u8; 16]), Option<Role>>,
}

/// Bounds the memory a session spends on the cache.
const CACHE_MAX: usize = 10_000;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The registry was changed in the current transaction (by this session).
    static CHANGED_IN_THIS_TRANSACTION: Cell<bool> = const { Cell::new(false) };
    static TENANTS_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The lookups by id, by slug and of a membership, prepared on first use; PostgreSQL
    /// re-plans them when the registry tables change.
    static LOOKUPS: RefCell<[Option<OwnedPreparedStatement>; 3]> = const { RefCell::new([None, None, None]) };
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

/// `multitenancy._registry_changed()`: the `multitenancy_registry_changed` triggers (every
/// session's cache of the registry is stale). A C entry point of its own, so that it can refuse
/// to run except as a trigger.
#[no_mangle]
pub extern "C" fn pg_finfo_mt_registry_changed() -> &'static pg_sys::Pg_finfo_record {
    &crate::catalog::FINFO_V1
}

/// # Safety
/// Called by PostgreSQL through the fmgr.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn mt_registry_changed(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    crate::catalog::trigger_data(fcinfo, "_registry_changed");
    registry_changed_now();
    pg_sys::Datum::from(0)
}

fn registry_changed_now() {
    let relid = TENANTS_RELID.with(Cell::get);
    let relid = if relid == pg_sys::InvalidOid { registry::tenants_relid().or_raise() } else { relid };
    TENANTS_RELID.with(|r| r.set(relid));
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
    if matches!(event, XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE) {
        // Rows counted by a command that fired no statement trigger (quotas.rs).
        crate::quotas::before_commit().or_raise();
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE) {
        crate::quotas::transaction_ended();
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE) {
        if CHANGED_IN_THIS_TRANSACTION.with(|c| c.replace(false)) {
            GENERATION.with(|g| g.set(g.get() + 1));
        }
        context::transaction_ended();
        access::transaction_ended();
    }
}

/// The cache generation after applying pending invalidations: a registry change committed by
/// any session, or made by this one, gives a new number.
pub fn current_generation() -> u64 {
    // SAFETY: applies invalidations other sessions have committed (a shared-memory check when
    // there are none).
    unsafe { pg_sys::AcceptInvalidationMessages() };
    GENERATION.with(Cell::get)
}

/// Answer from the cache as of `generation` (from [`current_generation`]), or `None` (also
/// when the cache is older: it is emptied then).
fn cached<T>(generation: u64, read: impl FnOnce(&Cache) -> Option<T>) -> Option<T> {
    if CHANGED_IN_THIS_TRANSACTION.with(Cell::get) {
        return None;
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.generation != generation {
            *cache = Cache { generation, ..Cache::default() };
            return None;
        }
        read(&cache)
    })
}

/// Whether lookups may be cached for later transactions: not while this transaction has changed
/// the registry, and not in a REPEATABLE READ or SERIALIZABLE transaction, whose snapshot may
/// predate changes the cache generation already counts (a suspension committed after the
/// snapshot was taken would be cached as "active" for every later transaction).
pub fn lookups_are_current() -> bool {
    // SAFETY: reads the transaction's isolation level.
    let snapshot_per_transaction = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    !snapshot_per_transaction && !CHANGED_IN_THIS_TRANSACTION.with(Cell::get)
}

/// Keep what a lookup that started at `generation` found, unless the registry changed since.
fn remember(generation: u64, write: impl FnOnce(&mut Cache)) {
    if !lookups_are_current() {
        return;
    }
    if TENANTS_RELID.with(Cell::get) == pg_sys::InvalidOid {
        // Without it the invalidation callback could not recognise the registry.
        let Ok(relid) = registry::tenants_relid() else { return };
        TENANTS_RELID.with(|r| r.set(relid));
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        // An invalidation that arrived during the lookup may predate what it read: keep nothing.
        if cache.generation != generation || GENERATION.with(Cell::get) != generation {
            return;
        }
        if cache.by_id.len() + cache.roles.len() >= CACHE_MAX {
            *cache = Cache { generation, ..Cache::default() };
        }
        write(&mut cache);
    })
}

/// Run one of the kept lookup statements (prepared once per session with SPI_keepplan) as the
/// registry owner; `read` turns the first row, if any, into the answer.
fn run_lookup<T>(
    index: usize,
    sql: &str,
    arg_types: &[PgBuiltInOids],
    args: &[pgrx::datum::DatumWithOid],
    read: impl FnOnce(&pgrx::spi::SpiHeapTupleData) -> Result<T>,
) -> Result<Option<T>> {
    registry::as_owner(|| {
        Spi::connect(|client| {
            let missing = LOOKUPS.with(|l| l.borrow()[index].is_none());
            if missing {
                let types: Vec<PgOid> = arg_types.iter().map(|t| PgOid::BuiltIn(*t)).collect();
                let prepared = client.prepare(sql, &types).ctx("tenants::lookup prepare")?.keep();
                LOOKUPS.with(|l| l.borrow_mut()[index] = Some(prepared));
            }
            let rows = LOOKUPS.with(|l| {
                let lookups = l.borrow();
                let statement = lookups[index].as_ref().expect("prepared above");
                client.select(statement, Some(1), args).ctx("tenants::lookup")
            })?;
            match rows.into_iter().next() {
                Some(row) => read(&row).map(Some),
                None => Ok(None),
            }
        })
    })
}

/// How a tenant is named: by id or by (lower-case) slug.
pub enum Key<'a> {
    Id(pgrx::Uuid),
    Slug(&'a str),
}

/// Look a tenant up in the registry (through the cache).
pub fn lookup(key: Key) -> Result<Option<Tenant>> {
    // Applies the invalidations other sessions have committed, as taking a lock would.
    let generation = current_generation();
    let hit = cached(generation, |cache| match &key {
        Key::Id(id) => cache.by_id.get(id.as_bytes()).cloned(),
        Key::Slug(slug) => cache.by_slug.get(*slug).cloned(),
    });
    if hit.is_some() {
        return Ok(hit);
    }
    let read = |row: &pgrx::spi::SpiHeapTupleData| -> Result<Tenant> {
        Ok(Tenant {
            id: row
                .get::<pgrx::Uuid>(1)
                .ctx("tenants::find id")?
                .ok_or_else(|| MtError::internal("tenants::find", "tenant without id"))?,
            slug: row.get::<String>(2).ctx("tenants::find slug")?.unwrap_or_default(),
            status: row.get::<String>(3).ctx("tenants::find status")?.unwrap_or_default(),
        })
    };
    let found = match key {
        Key::Id(id) => run_lookup(
            0,
            "SELECT id, slug, status FROM multitenancy.tenants WHERE id = $1",
            &[PgBuiltInOids::UUIDOID],
            &[id.into()],
            read,
        )?,
        Key::Slug(slug) => run_lookup(
            1,
            "SELECT id, slug, status FROM multitenancy.tenants WHERE slug = $1",
            &[PgBuiltInOids::TEXTOID],
            &[slug.into()],
            read,
        )?,
    };
    if let Some(tenant) = &found {
        remember(generation, |cache| {
            cache.by_id.insert(*tenant.id.as_bytes(), tenant.clone());
            cache.by_slug.insert(tenant.slug.clone(), tenant.clone());
        });
    }
    Ok(found)
}

/// Look a tenant up by id or slug (a uuid string is taken as an id).
pub fn find(key: &str) -> Result<Option<Tenant>> {
    let key = key.trim();
    match context::parse_uuid(key) {
        Some(id) => lookup(Key::Id(id)),
        None => lookup(Key::Slug(&key.to_lowercase())),
    }
}

/// The role of `user` in `tenant`, `None` when the user is not a member (through the cache).
pub fn role_of(tenant: pgrx::Uuid, user: pgrx::Uuid) -> Result<Option<Role>> {
    let generation = current_generation();
    let key = (*tenant.as_bytes(), *user.as_bytes());
    if let Some(role) = cached(generation, |cache| cache.roles.get(&key).copied()) {
        return Ok(role);
    }
    let role = run_lookup(
        2,
        "SELECT role FROM multitenancy.members WHERE tenant_id = $1 AND user_id = $2",
        &[PgBuiltInOids::UUIDOID, PgBuiltInOids::UUIDOID],
        &[tenant.into(), user.into()],
        |row| {
            let name = row.get::<String>(1).ctx("tenants::role_of")?.unwrap_or_default();
            Role::parse(&name).ok_or_else(|| MtError::internal("tenants::role_of", format!("unknown role {name}")))
        },
    )?;
    remember(generation, |cache| {
        cache.roles.insert(key, role);
    });
    Ok(role)
}

/// Like [`find`], but a missing tenant is an error.
pub fn require(key: &str) -> Result<Tenant> {
    find(key)?.ok_or_else(|| MtError::TenantNotFound { tenant: key.to_string() })
}

/// Check a display name: 1 to 200 characters after trimming. Returns it trimmed.
pub fn validate_name(name: Option<&str>) -> Result<&str> {
    let name = crate::error::required(name, "name")?.trim();
    if name.is_empty() {
        return Err(MtError::InvalidName { reason: "it is empty" });
    }
    if name.chars().count() > NAME_MAX_LEN {
        return Err(MtError::InvalidName { reason: "it is longer than 200 characters" });
    }
    Ok(name)
}

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
    context::parse_uuid(&id).ok_or_else(|| MtError::internal("tenants::create", "no tenant id"))
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
