//! The tenant context: the one place that decides which tenant the current transaction acts for.
//!
//! Every other module asks [`current`] / [`resolve`]; none reads the settings itself. The
//! sources: the plain settings and framework claims (here), a verified token ([`signed`]), and
//! audited admin mode ([`admin`]).
pub mod admin;
pub mod cluster;
pub mod planning;
pub mod signed;

use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::registry::tenants;
use crate::registry::tenants::Role;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CStr;

/// Read one of the context settings: `Ok(None)` when unset or empty (what RESET and DISCARD ALL
/// leave behind), `Err(shown value)` when it is not a uuid.
fn read_uuid_setting(raw: *const std::ffi::c_char) -> std::result::Result<Option<pgrx::Uuid>, String> {
    if raw.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL GUC string values are NUL-terminated and live until the setting changes;
    // we copy what we need before returning.
    let value = unsafe { CStr::from_ptr(raw) }.to_bytes();
    if value.is_empty() {
        return Ok(None);
    }
    crate::uuid::parse_bytes(value).map(Some).ok_or_else(|| {
        let mut shown = String::from_utf8_lossy(value).into_owned();
        if shown.chars().count() > 64 {
            shown = shown.chars().take(64).collect::<String>() + "...";
        }
        shown
    })
}

/// Where the context of the current transaction comes from.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Origin {
    /// `tenant_purge` deleting one tenant's rows ([`with_maintenance_context`]): wins over everything.
    Purge,
    /// `tenant_export` / `tenant_import_begin` in this transaction ([`enter_move`]): an operator
    /// moving one tenant's rows, which may be suspended or deleted.
    Moving,
    /// `tenant_set_signed` in this transaction (wins in every mode).
    Signed,
    /// `multitenancy.require_signed`, and no signed context: nothing else counts.
    SignedRequired,
    /// `multitenancy.claims_setting`: a framework's JSON claims.
    Claims,
    /// `multitenancy.tenant_id` and `multitenancy.user_id` (`tenant_set`, `SET LOCAL`).
    Settings,
    /// On a Citus worker: `multitenancy.cluster_tenant`, the tenant the coordinator resolved
    /// and checked ([`cluster`]); nothing else counts there.
    Cluster,
}

/// The context of the current transaction as its source states it, unchecked.
struct Raw {
    origin: Origin,
    tenant: Option<pgrx::Uuid>,
    user: Option<pgrx::Uuid>,
    /// The context's setting holds a value set for the session in an earlier transaction, which
    /// does not count (see [`gucs::session_context`]): `multitenancy.tenant_id` or the claims
    /// setting.
    stale: bool,
}

thread_local! {
    /// Set when the library was loaded late (not preloaded) into a session in which
    /// `multitenancy.require_signed` had a value: that value may have been overridden before
    /// PostgreSQL knew the setting was superuser-only, so the session fails closed.
    static REQUIRE_SIGNED_UNTRUSTED: Cell<bool> = const { Cell::new(false) };
}

/// Called from `_PG_init` before the settings are defined.
pub fn init() {
    planning::init();
    if !gucs::preloaded() && !gucs::value_of(c"multitenancy.require_signed").is_null() {
        REQUIRE_SIGNED_UNTRUSTED.with(|u| u.set(true));
    }
}

fn raw() -> Result<Raw> {
    if let Some(tenant) = PURGING.with(Cell::get) {
        return Ok(Raw { origin: Origin::Purge, tenant: Some(tenant), user: None, stale: false });
    }
    if let Some(moving) = MOVING.with(Cell::get) {
        return Ok(Raw { origin: Origin::Moving, tenant: Some(moving.tenant), user: None, stale: false });
    }
    if crate::citus::is_worker() {
        return cluster::raw_on_worker();
    }
    let signed = gucs::signed_context_raw();
    // SAFETY: a non-NULL value is NUL-terminated and only tenant_set_signed writes it.
    if !unsafe { gucs::is_unset(signed) } {
        let value = unsafe { CStr::from_ptr(signed) }.to_bytes();
        let (tenant, user) = match value.iter().position(|&b| b == b' ') {
            Some(space) => (&value[..space], Some(&value[space + 1..])),
            None => (value, None),
        };
        let malformed = || MtError::internal("context::raw", "malformed signed context");
        let tenant = crate::uuid::parse_bytes(tenant).ok_or_else(malformed)?;
        let user = user.map(|user| crate::uuid::parse_bytes(user).ok_or_else(malformed)).transpose()?;
        return Ok(Raw { origin: Origin::Signed, tenant: Some(tenant), user, stale: false });
    }
    if gucs::require_signed() || REQUIRE_SIGNED_UNTRUSTED.with(Cell::get) {
        return Ok(Raw { origin: Origin::SignedRequired, tenant: None, user: None, stale: false });
    }
    if let Some((setting, tenant_claim, user_claim)) = gucs::claims() {
        return claims(&setting, &tenant_claim, &user_claim);
    }
    // A context lasts the transaction that set it: a value set for the session (SET without
    // LOCAL, set_config(..., false)) in an earlier transaction does not count, unless a DBA
    // allowed session-level context for this role. Behind a pool, the next request on the
    // connection would otherwise act for the previous request's tenant.
    let session = gucs::session_context();
    let current = |user: bool| session || gucs::context_set_in_this_transaction(user);
    let tenant = read_uuid_setting(gucs::tenant_id_raw()).map_err(|value| MtError::MalformedContext { value })?;
    let user = read_uuid_setting(gucs::user_id_raw()).map_err(|value| MtError::MalformedUserContext { value })?;
    let stale = tenant.is_some() && !current(false);
    Ok(Raw { origin: Origin::Settings, tenant: tenant.filter(|_| !stale), user: user.filter(|_| current(true)), stale })
}

/// The error for "no tenant", in the words of the context's source.
fn missing(origin: Origin) -> MtError {
    match origin {
        Origin::SignedRequired => MtError::NoSignedContext { preloaded: gucs::preloaded() },
        Origin::Claims => match gucs::claims() {
            Some((setting, claim, _)) => {
                // SAFETY: value_of returns NULL or a NUL-terminated string.
                let present = !unsafe { gucs::is_unset(gucs::value_of(&setting)) };
                MtError::NoClaimsContext {
                    setting: setting.to_string_lossy().into_owned(),
                    claim: claim.to_string_lossy().into_owned(),
                    present,
                }
            }
            None => MtError::NoContext,
        },
        Origin::Cluster => MtError::NoClusterContext,
        Origin::Purge | Origin::Moving | Origin::Signed | Origin::Settings => MtError::NoContext,
    }
}

/// The error for "no tenant" of a context: a stale session-level value says so.
fn missing_in(raw: &Raw) -> MtError {
    if raw.stale {
        let setting = match (raw.origin, gucs::claims()) {
            (Origin::Claims, Some((setting, _, _))) => setting.to_string_lossy().into_owned(),
            (Origin::Cluster, _) => gucs::CLUSTER_TENANT_NAME.to_string_lossy().into_owned(),
            _ => "multitenancy.tenant_id".to_string(),
        };
        MtError::StaleSessionContext { setting }
    } else {
        missing(raw.origin)
    }
}

/// The claims of the last claims value this session parsed: (value, tenant claim, user claim)
/// and what they named (tenant claim value, user claim value).
type ParsedClaims = (Vec<u8>, Vec<u8>, Vec<u8>, ClaimValues);
type ClaimValues = std::result::Result<(Option<String>, Option<String>), String>;

thread_local! {
    static CLAIMS: std::cell::RefCell<Option<ParsedClaims>> = const { std::cell::RefCell::new(None) };
}

/// Follow a claim name through the claims: the name itself, else a dotted path into nested
/// objects (`app_metadata.tenant_id`).
fn claim<'a>(claims: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    claims
        .get(name)
        .or_else(|| name.contains('.').then(|| name.split('.').try_fold(claims, |value, key| value.get(key))).flatten())
}

/// Read tenant and user claims out of a claims value (a JSON object).
fn parse_claims(value: &[u8], tenant_claim: &str, user_claim: &str) -> ClaimValues {
    let not_an_object = || "is not a JSON object".to_string();
    let claims: serde_json::Value = serde_json::from_slice(value).map_err(|_| not_an_object())?;
    if !claims.is_object() {
        return Err(not_an_object());
    }
    let text = |name: &str| -> std::result::Result<Option<String>, String> {
        match claim(&claims, name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(format!("has a claim \"{name}\" that is not a string")),
        }
    };
    let user = if user_claim.is_empty() { None } else { text(user_claim)? };
    Ok((text(tenant_claim)?, user))
}

/// The context named by the claims in setting `setting`.
fn claims(setting: &CStr, tenant_claim: &CStr, user_claim: &CStr) -> Result<Raw> {
    let named = |reason: String| MtError::InvalidClaims { setting: setting.to_string_lossy().into_owned(), reason };
    let value = gucs::value_of(setting);
    // SAFETY: value_of returns NULL or a NUL-terminated string.
    if unsafe { gucs::is_unset(value) } {
        return Ok(Raw { origin: Origin::Claims, tenant: None, user: None, stale: false });
    }
    // Claims last the transaction that set them, like multitenancy.tenant_id (see raw()); a
    // connection option or a session-level set_config of the claims is not a context.
    if !gucs::session_context() && !gucs::set_in_this_transaction(setting) {
        return Ok(Raw { origin: Origin::Claims, tenant: None, user: None, stale: true });
    }
    // SAFETY: checked non-NULL above; copied before any SQL runs.
    let value = unsafe { CStr::from_ptr(value) }.to_bytes();
    let (tenant, user) = CLAIMS
        .with(|cache| {
            let mut cache = cache.borrow_mut();
            let hit = cache.as_ref().is_some_and(|(v, t, u, _)| {
                v.as_slice() == value
                    && t.as_slice() == tenant_claim.to_bytes()
                    && u.as_slice() == user_claim.to_bytes()
            });
            if !hit {
                let parsed = parse_claims(value, &tenant_claim.to_string_lossy(), &user_claim.to_string_lossy());
                *cache =
                    Some((value.to_vec(), tenant_claim.to_bytes().to_vec(), user_claim.to_bytes().to_vec(), parsed));
            }
            cache.as_ref().expect("filled above").3.clone()
        })
        .map_err(named)?;
    let tenant = match tenant {
        None => None,
        Some(tenant) => match crate::uuid::parse(&tenant) {
            Some(id) => Some(id),
            None => Some(
                tenants::find(&tenant)?
                    .ok_or_else(|| named(format!("names tenant \"{tenant}\", which does not exist")))?
                    .id,
            ),
        },
    };
    let user = user
        .map(|user| {
            crate::uuid::parse(&user).ok_or_else(|| {
                named(format!("has a user claim \"{}\" that is not a uuid", user_claim.to_string_lossy()))
            })
        })
        .transpose()?;
    Ok(Raw { origin: Origin::Claims, tenant, user, stale: false })
}

/// The tenant of the current transaction, unchecked: `Ok(None)` when no context is set, an
/// error when its source holds something unusable.
///
/// A transaction acts for one tenant: a context naming another tenant than the one the
/// transaction already acted for is an error here too (management functions read the context
/// through this), and the first one is remembered.
pub fn resolve() -> Result<Option<pgrx::Uuid>> {
    let raw = raw()?;
    if let (Some(tenant), false) =
        (raw.tenant, matches!(raw.origin, Origin::Purge | Origin::Moving) || admin::admin_mode().is_some())
    {
        refuse_switch(tenant)?;
        remember(tenant);
    }
    Ok(raw.tenant)
}

/// The end user of the current transaction, if one is set.
pub fn resolve_user() -> Result<Option<pgrx::Uuid>> {
    raw().map(|raw| raw.user)
}

/// A context already checked against the registry.
#[derive(Clone, Copy, PartialEq)]
struct Checked {
    tenant: pgrx::Uuid,
    user: Option<pgrx::Uuid>,
    admin: bool,
    role: Option<Role>,
    /// The registry cache generation the check was made at, and the transaction it was last
    /// confirmed in.
    generation: u64,
    transaction: u64,
}

thread_local! {
    /// The tenant this transaction has acted for: a transaction acts for one tenant, so that
    /// work begun for one (an abandoned transaction on a pooled connection) can never commit for
    /// another.
    static TRANSACTION_TENANT: Cell<Option<pgrx::Uuid>> = const { Cell::new(None) };
    /// The tenant `tenant_purge` is deleting rows of, while it deletes them.
    static PURGING: Cell<Option<pgrx::Uuid>> = const { Cell::new(None) };
    /// The tenant an operator exports or imports in this transaction.
    static MOVING: Cell<Option<Moving>> = const { Cell::new(None) };
    /// An import ended by `tenant_import_end`, and the nest level it ended at: a rolled-back
    /// savepoint at or below that level takes the end back.
    static MOVE_ENDED: Cell<Option<(Moving, i32)>> = const { Cell::new(None) };
    static CHECKED: Cell<Option<Checked>> = const { Cell::new(None) };
    /// Counts the session's transactions (bumped when one ends).
    static TRANSACTION: Cell<u64> = const { Cell::new(0) };
}

/// Run `f` with `tenant` as the context, for the extension's own maintenance of one tenant's rows
/// as a table's owner (`tenant_purge`'s DELETEs, copying a tenant template): the owner's forced
/// row level security then shows and accepts exactly that tenant's rows, and the owner's
/// triggers see that tenant and nothing else — no admin mode, no operator rights. Restored
/// afterwards (also when an ERROR unwinds through `f`).
pub fn with_maintenance_context<R>(tenant: pgrx::Uuid, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<pgrx::Uuid>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PURGING.with(|p| p.set(self.0));
            planning::context_changed();
        }
    }
    let _restore = Restore(PURGING.with(|p| p.replace(Some(tenant))));
    planning::context_changed();
    admin::suspended(f)
}

/// A tenant being exported or imported ([`enter_move`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moving {
    pub tenant: pgrx::Uuid,
    /// An import (rows are written), not an export.
    pub import: bool,
    /// The transaction nest level it began at (a rolled-back savepoint at or below it ends it).
    level: i32,
}

/// The tenant this transaction exports or imports, if any.
pub fn moving() -> Option<Moving> {
    MOVING.with(Cell::get)
}

/// Make `tenant` the context for the rest of the transaction, for an operator's export or import
/// of its rows (the callers check who may). Nothing else can then set a context in the
/// transaction, and the tenant's status is not checked: a suspended or deleted tenant can be
/// exported, and a suspended one imported.
pub fn enter_move(tenant: pgrx::Uuid, import: bool) -> Result<()> {
    refuse_second_move()?;
    // SAFETY: reads transaction state.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    MOVING.with(|m| m.set(Some(Moving { tenant, import, level })));
    planning::context_changed();
    Ok(())
}

/// A transaction moves one tenant: refused once it began moving one (also after
/// `tenant_import_end`). For the move functions to ask before they change anything.
pub fn refuse_second_move() -> Result<()> {
    match moving().or(MOVE_ENDED.with(Cell::get).map(|e| e.0)) {
        Some(current) => Err(MtError::MoveState {
            reason: format!("this transaction already moves tenant {}", current.tenant),
            hint: "Export or import one tenant per transaction.".into(),
        }),
        None => Ok(()),
    }
}

/// End the import of [`enter_move`] before the transaction ends (`tenant_import_end`). The
/// transaction moves no other tenant afterwards.
pub fn leave_move() {
    if let Some(moving) = MOVING.with(|m| m.take()) {
        // SAFETY: reads transaction state.
        let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
        MOVE_ENDED.with(|e| e.set(Some((moving, level))));
        planning::context_changed();
    }
}

/// A subtransaction at `level` ended (`crate::xact`): a rollback at or below the level the move
/// began at ends it (and one at or below the level `tenant_import_end` ran at takes the end
/// back); a commit of that level hands it to the parent.
pub fn subtransaction_ended(level: i32, committed: bool) {
    cluster::subtransaction_ended(level);
    if let Some((moving, ended)) = MOVE_ENDED.with(Cell::get) {
        if !committed && level <= ended {
            MOVE_ENDED.with(|e| e.set(None));
            MOVING.with(|m| m.set(Some(moving)));
            planning::context_changed();
        } else if committed && level == ended {
            MOVE_ENDED.with(|e| e.set(Some((moving, level - 1))));
        }
    }
    let Some(moving) = moving() else { return };
    if !committed && level <= moving.level {
        MOVING.with(|m| m.set(None));
        planning::context_changed();
    } else if committed && level == moving.level {
        MOVING.with(|m| m.set(Some(Moving { level: level - 1, ..moving })));
    }
}

/// Called at the end of every top-level transaction.
pub fn transaction_ended() {
    cluster::transaction_ended();
    planning::transaction_ended();
    PURGING.with(|p| p.set(None));
    MOVING.with(|m| m.set(None));
    MOVE_ENDED.with(|e| e.set(None));
    TRANSACTION_TENANT.with(|t| t.set(None));
    TRANSACTION.with(|t| t.set(t.get() + 1));
}

/// The tenant of the current transaction, checked: it exists, it is active, and the user (if
/// one is set) is a member. In admin mode only existence is checked.
///
/// The registry is consulted when the context or the registry changes, and otherwise trusted:
/// within a transaction a repeated call is one comparison; the first call of a transaction also
/// applies pending invalidations, so a tenant suspended or a member removed by another session
/// (which bumps the registry cache's generation when it commits) stops working at the next
/// transaction of every session.
fn checked() -> Result<Checked> {
    checked_from(raw()?)
}

/// [`checked`] of a context already read.
fn checked_from(raw: Raw) -> Result<Checked> {
    let tenant = raw.tenant.ok_or_else(|| missing_in(&raw))?;
    if matches!(raw.origin, Origin::Purge | Origin::Moving | Origin::Cluster) {
        // The tenant is deleted (that is why it is purged), or moved by an operator in any
        // status: its context is not checked, and not cached for anything after. On a Citus
        // worker the coordinator checked it; the registry is the coordinator's.
        return Ok(Checked { tenant, user: None, admin: false, role: None, generation: 0, transaction: 0 });
    }
    let user = raw.user;
    let admin = admin::admin_mode().is_some();
    if !admin {
        refuse_switch(tenant)?;
    }
    // The tenant is remembered as the transaction's only once it passed its checks, so that a
    // refused context (unknown, suspended) does not block a correct one after ROLLBACK TO.
    let passed = |done: Checked| {
        if !done.admin {
            remember(done.tenant);
        }
        Ok(done)
    };
    let transaction = TRANSACTION.with(Cell::get);
    let same = |done: &Checked| done.tenant == tenant && done.user == user && done.admin == admin;
    if let Some(done) = CHECKED.with(Cell::get).filter(same) {
        if done.transaction == transaction {
            return passed(done);
        }
        if done.generation == tenants::current_generation() {
            let done = Checked { transaction, ..done };
            CHECKED.with(|c| c.set(Some(done)));
            return passed(done);
        }
    }
    let generation = tenants::current_generation();
    let found = tenants::lookup(tenants::Key::Id(tenant))?
        .ok_or_else(|| MtError::ContextTenantUnknown { id: tenant.to_string() })?;
    let role = match user {
        Some(user) => tenants::role_of(tenant, user)?,
        None => None,
    };
    if !admin {
        if !found.is_active() {
            return Err(MtError::TenantNotActive { slug: found.slug, status: found.status });
        }
        if let (Some(user), None) = (user, role) {
            return Err(MtError::NotAMember { tenant: found.slug, user: user.to_string() });
        }
    }
    // A check made with a snapshot older than the generation (REPEATABLE READ) is good for this
    // transaction only: the next one checks again.
    let generation = if tenants::lookups_are_current() { generation } else { u64::MAX };
    let done = Checked { tenant, user, admin, role, generation, transaction };
    CHECKED.with(|c| c.set(Some(done)));
    passed(done)
}

/// The checked tenant of the current transaction for the planner ([`planning`]), and whether it
/// comes from a setting whose changes the extension sees as they happen (`multitenancy.tenant_id`,
/// the signed context). `None` when there is no usable context: the query then reads the context
/// when it runs and fails there, as it did before the planner knew the tenant.
pub fn for_planning() -> Option<(pgrx::Uuid, bool)> {
    let raw = raw().ok()?;
    let seen = matches!(raw.origin, Origin::Settings | Origin::Signed);
    Some((checked_from(raw).ok()?.tenant, seen))
}

/// The tenant of the current transaction; no context is an error (fail closed), and so is a
/// tenant that is not active or a user who is not a member.
pub fn current() -> Result<pgrx::Uuid> {
    checked().map(|c| c.tenant)
}

/// The current user's role in the current tenant (`None`: no user set, or not a member).
pub fn current_role() -> Result<Option<Role>> {
    checked().map(|c| c.role)
}

/// Make `tenant` the context until the end of the current transaction.
pub fn set_local(tenant: pgrx::Uuid) {
    let value = std::ffi::CString::new(tenant.to_string()).expect("a uuid has no NUL byte");
    gucs::set(gucs::TENANT_ID_NAME, &value, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// Select a tenant (by slug or id) for the rest of the current transaction.
pub fn set(tenant: Option<&str>) -> Result<pgrx::Uuid> {
    // SAFETY: reads transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return Err(MtError::NotInTransactionBlock { function: "multitenancy.tenant_set" });
    }
    set_tenant(|| tenants::require(crate::error::required(tenant, "tenant")?))
}

/// Whether `tenant` may be the context for `user` (if any): active, and with the user as a
/// member. In admin mode anything goes.
pub fn admit(tenant: &tenants::Tenant, user: Option<pgrx::Uuid>) -> Result<()> {
    if admin::admin_mode().is_some() {
        return Ok(());
    }
    if !tenant.is_active() {
        return Err(MtError::TenantNotActive { slug: tenant.slug.clone(), status: tenant.status.clone() });
    }
    if let Some(user) = user {
        if tenants::role_of(tenant.id, user)?.is_none() {
            return Err(MtError::NotAMember { tenant: tenant.slug.clone(), user: user.to_string() });
        }
    }
    Ok(())
}

/// Refuse a tenant other than the one this transaction already acted for.
fn refuse_switch(tenant: pgrx::Uuid) -> Result<()> {
    match TRANSACTION_TENANT.with(Cell::get) {
        Some(current) if current != tenant => {
            Err(MtError::OneTenantPerTransaction { current: current.to_string(), requested: tenant.to_string() })
        }
        _ => Ok(()),
    }
}

/// Remember the first tenant this transaction acted for (outside admin mode).
fn remember(tenant: pgrx::Uuid) {
    TRANSACTION_TENANT.with(|t| {
        if t.get().is_none() {
            t.set(Some(tenant));
        }
    });
}

/// Why this session may not choose its tenant with `tenant_set` (`None`: it may). Checked before
/// the tenant is looked up, so that a role that may not choose gets the same answer for every
/// tenant, existing or not.
fn fixed_by(raw: &Raw) -> Option<String> {
    match raw.origin {
        Origin::Settings => None,
        Origin::Cluster => Some("this is a Citus worker: the tenant comes from the coordinator".to_string()),
        Origin::Purge => Some("a tenant is being purged".to_string()),
        Origin::Moving => Some("a tenant is being moved (tenant_export, tenant_import_begin)".to_string()),
        Origin::Signed => Some("a signed context is set in this transaction".to_string()),
        Origin::SignedRequired => Some("this role requires a signed context (multitenancy.require_signed)".to_string()),
        Origin::Claims => gucs::claims().map(|(setting, claim, _)| {
            format!(
                "the tenant comes from claim \"{}\" of {} (multitenancy.claims_setting)",
                claim.to_string_lossy(),
                setting.to_string_lossy()
            )
        }),
    }
}

/// Make a tenant from the registry the context (`tenant_set`, `tenant_set_by_host`), if it may
/// be (see [`admit`]) and if this session takes its tenant from the settings. `find` looks the
/// tenant up once the session is known to be allowed to choose one.
pub fn set_tenant(find: impl FnOnce() -> Result<tenants::Tenant>) -> Result<pgrx::Uuid> {
    let raw = raw()?;
    if let Some(by) = fixed_by(&raw) {
        return Err(MtError::ContextFixed { by });
    }
    let tenant = find()?;
    if raw.tenant == Some(tenant.id) {
        // The tenant it already has: nothing to set, but a user named since must still be a
        // member (tenant_set is where a client library learns that).
        admit(&tenant, raw.user)?;
        return Ok(tenant.id);
    }
    let admin = admin::admin_mode().is_some();
    if !admin {
        refuse_switch(tenant.id)?;
    }
    admit(&tenant, raw.user)?;
    set_local(tenant.id);
    if !admin {
        remember(tenant.id);
    }
    Ok(tenant.id)
}

/// Make a verified tenant (and user) the signed context until the end of the transaction.
pub fn set_signed(tenant: pgrx::Uuid, user: Option<pgrx::Uuid>) {
    let value = match user {
        Some(user) => format!("{tenant} {user}"),
        None => tenant.to_string(),
    };
    gucs::set_signed_context(&std::ffi::CString::new(value).expect("uuids have no NUL byte"));
}

/// The current tenant. Raises 28000 when there is no tenant context.
///
/// STABLE, not IMMUTABLE: a cached plan must read the context again when the tenant changes.
/// Policies call it as `(SELECT multitenancy.current_tenant_id())`, so it runs once per query.
#[pg_extern(stable, parallel_restricted)]
fn current_tenant_id() -> pgrx::Uuid {
    current().or_raise()
}

/// The current tenant, or NULL when there is no tenant context (a malformed, unknown or inactive
/// one still raises).
#[pg_extern(stable, parallel_restricted)]
fn current_tenant_id_or_null() -> Option<pgrx::Uuid> {
    resolve().or_raise().map(|_| current().or_raise())
}

/// The end user of the current transaction. Raises 28000 when `multitenancy.user_id` is unset.
#[pg_extern(stable, parallel_restricted)]
fn current_user_id() -> pgrx::Uuid {
    resolve_user().and_then(|user| user.ok_or(MtError::NoUserContext)).or_raise()
}

/// The end user of the current transaction, or NULL when none is set.
#[pg_extern(stable, parallel_restricted)]
fn current_user_id_or_null() -> Option<pgrx::Uuid> {
    resolve_user().or_raise()
}

/// Select the tenant (slug or id) for the current transaction and return its id. Refuses
/// unknown and non-active tenants, and calls outside a transaction block.
///
/// The registry lookup runs with a pinned search_path of its own (see `registry::as_owner`); a
/// SET clause on the function would cost every call a GUC save and restore for nothing.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_set(tenant: Option<&str>) -> pgrx::Uuid {
    set(tenant).or_raise()
}

/// Select the tenant a host name routes to (see `tenant_resolve`) for the current transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_set_by_host(host: Option<&str>) -> pgrx::Uuid {
    crate::error::required(host, "host").and_then(set_by_host).or_raise()
}

fn set_by_host(host: &str) -> Result<pgrx::Uuid> {
    // SAFETY: reads transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return Err(MtError::NotInTransactionBlock { function: "multitenancy.tenant_set_by_host" });
    }
    set_tenant(|| {
        let id = Spi::get_one_with_args::<pgrx::Uuid>("SELECT multitenancy.tenant_resolve($1)", &[host.into()])
            .ctx("context::set_by_host")?
            .ok_or_else(|| MtError::HostNotFound { host: host.to_string() })?;
        tenants::lookup(tenants::Key::Id(id))?.ok_or_else(|| MtError::HostNotFound { host: host.to_string() })
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn claims_are_read_by_name_or_dotted_path() {
        let read = |json: &str, tenant: &str, user: &str| parse_claims(json.as_bytes(), tenant, user);
        let both = (Some("acme".to_string()), Some("u1".to_string()));
        assert_eq!(read(r#"{"tenant_id": "acme", "sub": "u1"}"#, "tenant_id", "sub"), Ok(both.clone()));
        assert_eq!(
            read(r#"{"app_metadata": {"tenant_id": "acme"}, "sub": "u1"}"#, "app_metadata.tenant_id", "sub"),
            Ok(both)
        );
        // A key that itself contains a dot wins over the path.
        assert_eq!(read(r#"{"a.b": "x", "a": {"b": "y"}}"#, "a.b", ""), Ok((Some("x".into()), None)));
        assert_eq!(read(r#"{"sub": "u1"}"#, "tenant_id", ""), Ok((None, None)), "no user claim asked for");
        assert_eq!(read(r#"{"tenant_id": " "}"#, "tenant_id", "sub"), Ok((None, None)), "blank is missing");
        assert!(read(r#"{"tenant_id": 7}"#, "tenant_id", "sub").unwrap_err().contains("not a string"));
        for bad in ["[]", "\"acme\"", "null", "not json"] {
            assert_eq!(read(bad, "tenant_id", "sub"), Err("is not a JSON object".to_string()), "{bad}");
        }
    }

    #[pg_test]
    fn no_context_resolves_to_none() {
        Spi::run("SET LOCAL multitenancy.tenant_id = ''").unwrap();
        assert!(matches!(resolve(), Ok(None)));
        assert!(matches!(current(), Err(MtError::NoContext)));
        Spi::run("SET LOCAL multitenancy.tenant_id = 'not-a-uuid'").unwrap();
        assert!(matches!(resolve(), Err(MtError::MalformedContext { .. })));
        Spi::run("SET LOCAL multitenancy.tenant_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'").unwrap();
        assert!(matches!(current(), Err(MtError::ContextTenantUnknown { .. })), "a uuid that names no tenant");
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Hooli')").unwrap().unwrap();
        Spi::run_with_args("SELECT set_config('multitenancy.tenant_id', $1, true)", &[id.to_string().into()]).unwrap();
        assert_eq!(current().unwrap(), id);
    }

    #[pg_test]
    fn the_user_must_be_a_member_of_the_context_tenant() {
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Pied Piper')").unwrap().unwrap();
        Spi::run_with_args("SELECT set_config('multitenancy.tenant_id', $1, true)", &[id.to_string().into()]).unwrap();
        Spi::run("SET LOCAL multitenancy.user_id = '5f0c6c8e-0f3a-4d43-9d57-2f1b8a6c0001'").unwrap();
        assert!(matches!(current(), Err(MtError::NotAMember { .. })));
        Spi::run_with_args(
            "SELECT multitenancy.member_add($1, '5f0c6c8e-0f3a-4d43-9d57-2f1b8a6c0001', 'guest')",
            &[id.to_string().into()],
        )
        .unwrap();
        // The same transaction added the member: the check sees it (no stale cache).
        Spi::run("SET LOCAL multitenancy.user_id = '5f0c6c8e-0f3a-4d43-9d57-2f1b8a6c0001'").unwrap();
        assert_eq!(current().unwrap(), id);
        assert_eq!(current_role().unwrap(), Some(Role::Guest));
    }

    #[pg_test(error = "no tenant context: multitenancy.tenant_id is not set in this transaction")]
    fn current_tenant_id_fails_closed() {
        Spi::run("RESET multitenancy.tenant_id").unwrap();
        Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.current_tenant_id()").unwrap();
    }

    #[pg_test]
    fn or_null_variant_tests_without_raising() {
        Spi::run("RESET multitenancy.tenant_id").unwrap();
        let none = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.current_tenant_id_or_null()").unwrap();
        assert!(none.is_none());
    }

    #[pg_test]
    fn tenant_set_sets_the_context_for_the_transaction() {
        // pg_test runs inside a transaction block, as applications call tenant_set.
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Initech')").unwrap().unwrap();
        let set = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_set('initech')").unwrap();
        assert_eq!(set, Some(id));
        assert_eq!(current().unwrap(), id);
        let by_id =
            Spi::get_one_with_args::<pgrx::Uuid>("SELECT multitenancy.tenant_set($1)", &[id.to_string().into()])
                .unwrap();
        assert_eq!(by_id, Some(id));
        let local =
            Spi::get_one::<bool>("SELECT setting IS NOT NULL FROM pg_settings WHERE name = 'multitenancy.tenant_id'")
                .unwrap();
        assert_eq!(local, Some(true));
    }

    #[pg_test]
    fn tenant_set_refuses_unknown_and_inactive_tenants() {
        let id = Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Umbrella')").unwrap().unwrap();
        assert!(matches!(set(Some("nobody")), Err(MtError::TenantNotFound { .. })));
        Spi::run_with_args("UPDATE multitenancy.tenants SET status = 'suspended' WHERE id = $1", &[id.into()]).unwrap();
        assert!(matches!(set(Some("umbrella")), Err(MtError::TenantNotActive { .. })));
        assert!(resolve().unwrap().is_none(), "a refused tenant_set must not set a context");
    }
}
