//! The tenant registry as the rest of the extension reads it: tenants and their members' roles,
//! looked up through a per-session cache that every committed registry change invalidates in
//! every session, and the naming rules (slugs, names, plans). Creating and changing tenants is
//! the capabilities' work (`crate::registry::tenants`); this module only reads.
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

/// A member's role; the order is the rank (owner > admin > member > guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Guest,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "guest" => Some(Role::Guest),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

pub fn parse_role(name: Option<&str>, argument: &'static str) -> Result<Role> {
    let name = crate::error::required(name, argument)?;
    Role::parse(&name.trim().to_lowercase()).ok_or_else(|| MtError::InvalidRole { role: name.to_string() })
}

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

/// The slug rule for SQL: `tenants.slug`'s CHECK constraint (sql/finalize.sql).
#[pg_extern(immutable, strict, parallel_safe)]
fn _slug_valid(slug: &str) -> bool {
    validate_slug(slug).is_ok()
}

/// The plan-name rule for SQL: the CHECK constraints on plan names (sql/finalize.sql).
#[pg_extern(immutable, strict, parallel_safe)]
fn _plan_valid(plan: &str) -> bool {
    validate_plan(plan).is_ok()
}

/// A member role's rank (owner 4, admin 3, member 2, guest 1; NULL: not a role), for SQL: the
/// CHECK on `members.role` and the order of `member_list`.
#[pg_extern(immutable, strict, parallel_safe)]
fn _role_rank(role: &str) -> Option<i32> {
    Role::parse(role).map(|r| r as i32 + 1)
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
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn registry_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // InvalidOid: "all relations" (after an invalidation queue overflow).
    if relid == pg_sys::InvalidOid || relid == TENANTS_RELID.with(Cell::get) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

extension_sql!(
    r#"
CREATE FUNCTION multitenancy._registry_changed() RETURNS trigger
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'mt_registry_changed';
"#,
    name = "registry_changed",
    requires = ["bootstrap"]
);

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
    match crate::uuid::parse(key) {
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

/// The end of a transaction (`crate::xact`): this session's own registry changes, visible to it
/// while the transaction ran, are committed or gone, and either way the cache starts again.
pub fn transaction_ended() {
    if CHANGED_IN_THIS_TRANSACTION.with(|c| c.replace(false)) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
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
}
