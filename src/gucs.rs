//! Every setting the extension registers. Only [`crate::context`] reads the tenant settings;
//! other modules ask it for the tenant instead of reading them.
use pgrx::prelude::*;
use pgrx::GucSetting;
use std::ffi::{c_char, c_void, CStr, CString};

/// `multitenancy.tenant_id`: the tenant of the current transaction, as a uuid.
pub static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub const TENANT_ID_NAME: &CStr = c"multitenancy.tenant_id";

/// `multitenancy.cluster_tenant`: on a Citus worker, the tenant the coordinator resolved for
/// the transaction, sent with Citus's `SET LOCAL` propagation (`context::cluster`). Read only on
/// workers; a coordinator or a plain server ignores it.
pub static CLUSTER_TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub const CLUSTER_TENANT_NAME: &CStr = c"multitenancy.cluster_tenant";

/// `multitenancy.user_id`: the end user of the current transaction, as a uuid.
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `multitenancy.session_context`: a `multitenancy.tenant_id` / `user_id` set for the session
/// (SET without LOCAL, `set_config(..., false)`) keeps counting in later transactions. Off: the
/// context lasts the transaction it was set in, whatever the form (pooled connections).
pub static SESSION_CONTEXT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `multitenancy.require_signed`: only a context verified by `tenant_set_signed` counts.
pub static REQUIRE_SIGNED: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `multitenancy.claims_setting`: the setting that holds a framework's JSON claims.
pub static CLAIMS_SETTING: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `multitenancy.claims_tenant` / `multitenancy.claims_user`: the claims naming tenant and user.
pub static CLAIMS_TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"tenant_id"));
pub static CLAIMS_USER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"sub"));

/// `multitenancy.signed_context`: the context `tenant_set_signed` verified, for the rest of the
/// transaction. Hidden, superuser-only to read, and settable only by the extension itself.
static SIGNED_CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
const SIGNED_CONTEXT_NAME: &CStr = c"multitenancy.signed_context";

thread_local! {
    /// True only while [`sending_cluster_tenant`] runs the extension's own SET LOCAL.
    static SETTING_CLUSTER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// True only while [`set_signed_context`] sets the hidden setting.
    static SETTING_SIGNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `multitenancy.base_domain`: tenants are reachable as `<slug>.<base_domain>`.
pub static BASE_DOMAIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `multitenancy.guarded_schemas`: schemas whose new tables must be tenant-enabled or exempt.
pub static GUARDED_SCHEMAS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"public"));

/// `multitenancy.domain_claim_ttl`: how long an unverified domain claim blocks other tenants.
pub static DOMAIN_CLAIM_TTL: GucSetting<i32> = GucSetting::<i32>::new(3 * 24 * 3600);

/// `multitenancy.ddl_guard`: the event triggers check DDL (on) or only log it (off).
pub static DDL_GUARD: GucSetting<bool> = GucSetting::<bool>::new(true);

static mut PRELOADED: bool = false;

/// Record that the library is being loaded by `shared_preload_libraries` (in the postmaster,
/// before any backend exists).
pub fn set_preloaded() {
    // SAFETY: written once in the single-threaded postmaster, read-only afterwards.
    unsafe { PRELOADED = true };
}

/// Whether the library was loaded by `shared_preload_libraries` (signed contexts need it, and
/// superuser-only settings are enforced from connection start only then).
pub fn preloaded() -> bool {
    // SAFETY: set once in the postmaster before any backend exists.
    unsafe { PRELOADED }
}

type StringCheckHook = unsafe extern "C-unwind" fn(*mut *mut c_char, *mut *mut c_void, pg_sys::GucSource::Type) -> bool;
type StringAssignHook = unsafe extern "C-unwind" fn(*const c_char, *mut c_void);
type TenantListener = fn(Option<pgrx::Uuid>);

thread_local! {
    /// Told the tenant named by every assignment of `multitenancy.tenant_id` and of the signed
    /// context (`None`: no tenant or not a uuid): the planner's tenant constants follow it
    /// (`context::planning`, a layer above, registers itself here).
    static ON_TENANT_SETTING: std::cell::Cell<Option<TenantListener>> = const { std::cell::Cell::new(None) };
}

/// Register the function told of every assignment of a tenant setting (see `ON_TENANT_SETTING`).
pub fn on_tenant_setting(f: TenantListener) {
    ON_TENANT_SETTING.with(|o| o.set(Some(f)));
}

/// The assign hook of `multitenancy.tenant_id` and the signed context (whose value begins with
/// the tenant's uuid). Assign hooks must not fail: parsing is all it does.
#[pg_guard]
unsafe extern "C-unwind" fn assign_tenant_setting(newval: *const c_char, _extra: *mut c_void) {
    let Some(f) = ON_TENANT_SETTING.with(std::cell::Cell::get) else { return };
    // SAFETY: PostgreSQL passes the new value, NULL or NUL-terminated.
    let tenant = if unsafe { is_unset(newval) } {
        None
    } else {
        let value = unsafe { CStr::from_ptr(newval) }.to_bytes();
        let tenant = value.split(|&b| b == b' ').next().unwrap_or(value);
        crate::uuid::parse_bytes(tenant)
    };
    f(tenant);
}

/// What pgrx's `GucRegistry::define_string_guc` does, plus the check hook it does not take.
fn define_checked_string(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<CString>>,
    context: pg_sys::GucContext::Type,
    flags: u32,
    (check, assign): (StringCheckHook, Option<StringAssignHook>),
) {
    // SAFETY: registers a custom variable backed by a static for the life of the backend; the
    // strings are 'static.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            name.as_ptr(),
            short.as_ptr(),
            long.as_ptr(),
            setting.as_ptr(),
            std::ptr::null(),
            context,
            flags as i32,
            Some(check),
            assign,
            None,
        );
    }
}

pub fn init() {
    define_checked_string(
        TENANT_ID_NAME,
        c"Tenant of the current transaction (a tenant uuid).",
        c"Set it per transaction with SET LOCAL multitenancy.tenant_id or multitenancy.tenant_set(). \
          Row-level security on tenant-enabled tables compares tenant_id with it; empty means no \
          tenant, and queries on tenant-enabled tables then fail. It cannot be a server, database \
          or role default, so RESET and DISCARD ALL always leave no tenant.",
        &TENANT_ID,
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GUC_DISALLOW_IN_FILE | pg_sys::GUC_DISALLOW_IN_AUTO_FILE,
        (check_tenant_id, Some(assign_tenant_setting)),
    );
    define_checked_string(
        c"multitenancy.user_id",
        c"End user of the current transaction (a user uuid).",
        c"Set it per transaction like multitenancy.tenant_id. When it is set, the tenant context is valid \
          only for tenants the user is a member of, and multitenancy.tenant_role() / has_role() answer \
          for this user. Like the tenant, it cannot be a server, database, role or connection default.",
        &USER_ID,
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GUC_DISALLOW_IN_FILE | pg_sys::GUC_DISALLOW_IN_AUTO_FILE,
        (check_user_id, None),
    );
    define_checked_string(
        CLUSTER_TENANT_NAME,
        c"Tenant of the current transaction on a Citus worker, as the coordinator resolved it.",
        c"Set by the extension on the coordinator with SET LOCAL, which Citus sends on to the workers \
          of the transaction. Only Citus workers read it (in place of the other context settings); \
          like multitenancy.tenant_id it cannot be a server, database, role or connection default.",
        &CLUSTER_TENANT,
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GUC_DISALLOW_IN_FILE | pg_sys::GUC_DISALLOW_IN_AUTO_FILE,
        (check_cluster_tenant, None),
    );
    pgrx::GucRegistry::define_bool_guc(
        c"multitenancy.require_signed",
        c"Only a tenant context verified by multitenancy.tenant_set_signed() counts (superuser only).",
        c"Set it for the application's role: ALTER ROLE app SET multitenancy.require_signed = on. \
          current_tenant_id() then ignores multitenancy.tenant_id and claims, and tenant_set() is refused. \
          Needs multitenancy in shared_preload_libraries.",
        &REQUIRE_SIGNED,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_bool_guc(
        c"multitenancy.session_context",
        c"Whether a tenant or user set for the session outlives its transaction (superuser only).",
        c"Off (the default): multitenancy.tenant_id and user_id count only in the transaction that set \
          them, also when set without LOCAL, so a pooled connection never carries a context into the next \
          request. A DBA allows it per role for psql sessions, reports and workers: ALTER ROLE reporter SET \
          multitenancy.session_context = on.",
        &SESSION_CONTEXT,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_string_guc(
        c"multitenancy.claims_setting",
        c"A setting with JSON claims (request.jwt.claims, hasura.user) that names the tenant and user.",
        c"When set, the tenant comes from claim multitenancy.claims_tenant and the user from claim \
          multitenancy.claims_user of that setting, and multitenancy.tenant_id is not used. \
          PostgREST: ALTER ROLE authenticator SET multitenancy.claims_setting = 'request.jwt.claims'.",
        &CLAIMS_SETTING,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_string_guc(
        c"multitenancy.claims_tenant",
        c"The claim that names the tenant (uuid or slug) in multitenancy.claims_setting.",
        c"A claim name such as 'tenant_id' or 'x-hasura-tenant-id'; a dotted path such as \
          'app_metadata.tenant_id' reads a nested object.",
        &CLAIMS_TENANT,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_string_guc(
        c"multitenancy.claims_user",
        c"The claim that names the end user (a uuid) in multitenancy.claims_setting.",
        c"A claim name such as 'sub' or 'x-hasura-user-id'; empty takes no user from the claims.",
        &CLAIMS_USER,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    define_checked_string(
        SIGNED_CONTEXT_NAME,
        c"The tenant context multitenancy.tenant_set_signed() verified in this transaction.",
        c"Internal: only tenant_set_signed() sets it, for the current transaction.",
        &SIGNED_CONTEXT,
        pg_sys::GucContext::PGC_SUSET,
        pg_sys::GUC_NO_SHOW_ALL
            | pg_sys::GUC_SUPERUSER_ONLY
            | pg_sys::GUC_NOT_IN_SAMPLE
            | pg_sys::GUC_DISALLOW_IN_FILE
            | pg_sys::GUC_DISALLOW_IN_AUTO_FILE,
        (check_signed_context, Some(assign_tenant_setting)),
    );
    pgrx::GucRegistry::define_string_guc(
        c"multitenancy.base_domain",
        c"Tenants are reachable at <slug>.<base_domain> (multitenancy.tenant_resolve).",
        c"A host name such as 'example.com'. A DBA sets it per database: ALTER DATABASE db SET \
          multitenancy.base_domain = 'example.com'. Empty: only verified custom domains resolve.",
        &BASE_DOMAIN,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_string_guc(
        c"multitenancy.guarded_schemas",
        c"Schemas whose new tables must be tenant-enabled or exempt by the end of their transaction.",
        c"A comma-separated list of schema names. A DBA sets it per database: ALTER DATABASE db SET \
          multitenancy.guarded_schemas = 'public, app'. Empty guards no schema.",
        &GUARDED_SCHEMAS,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_bool_guc(
        c"multitenancy.ddl_guard",
        c"Whether the extension's event triggers check DDL (superuser only).",
        c"Off lets a superuser run maintenance or a restore (PGOPTIONS='-c multitenancy.ddl_guard=off' \
          pg_restore ...) without the checks; every command that passes unchecked is logged.",
        &DDL_GUARD,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::default(),
    );
    pgrx::GucRegistry::define_int_guc(
        c"multitenancy.domain_claim_ttl",
        c"How long an unverified domain claim blocks other tenants from adding the domain (superuser only).",
        c"After this time, another tenant's domain_add takes the domain over (audited): nobody can hold a \
          domain they cannot prove is theirs. Default 3 days.",
        &DOMAIN_CLAIM_TTL,
        1,
        i32::MAX,
        pgrx::GucContext::Suset,
        pgrx::GucFlags::UNIT_S,
    );
    // Misspelled settings such as multitenancy.tenantid are errors, not silent placeholders.
    // SAFETY: reserving the prefix in _PG_init, after its settings are defined.
    #[cfg(not(feature = "pg14"))]
    unsafe {
        pg_sys::MarkGUCPrefixReserved(c"multitenancy".as_ptr())
    };
}

/// Where a value of `multitenancy.tenant_id` may come from: only the session itself (SET, SET
/// LOCAL, set_config, tenant_set). A default from the server configuration, a database or a role
/// (`ALTER ROLE app SET multitenancy.tenant_id = ...`, which a role may do to itself), or the
/// connection's startup options would become what RESET and DISCARD ALL return to — a tenant
/// that outlives every transaction and follows the connection from client to client behind a
/// pooler. Setting it to '' is allowed from anywhere.
fn source_may_set_a_tenant(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    matches!(source, PGC_S_DEFAULT | PGC_S_DYNAMIC_DEFAULT | PGC_S_SESSION | PGC_S_OVERRIDE)
}

#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value (which may be NULL).
    unsafe {
        check_session_only(
            *newval,
            source,
            c"multitenancy.tenant_id cannot have a server, database, role or connection default",
        )
    }
}

/// `multitenancy.cluster_tenant` is set only by the extension: on a coordinator by
/// `context::cluster::send` (a client setting it there could have Citus send the workers a tenant
/// other than the one its context resolved to), and on a Citus worker by a top-level `SET`
/// statement of the connection — how Citus brings the coordinator's `SET LOCAL` — which
/// `crate::hooks` lets through ([`sending_cluster_tenant`]). Never by `set_config()`, a function's
/// or `DO` block's `SET`, or anything else that runs inside a query: a query the coordinator
/// pushes down to a worker could otherwise name another tenant for the rest of the transaction
/// on that worker connection (review finding).
#[pg_guard]
unsafe extern "C-unwind" fn check_cluster_tenant(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value (which may be NULL).
    let value = unsafe { *newval };
    if unsafe { is_unset(value) } {
        return true;
    }
    // SAFETY: reads backend globals.
    let ours = SETTING_CLUSTER.with(std::cell::Cell::get) || unsafe { pg_sys::ParallelWorkerNumber } >= 0;
    if !ours {
        return refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            c"multitenancy.cluster_tenant can only be set by the extension (on a Citus worker: by a SET statement of its own)",
            Some(c"The coordinator sends the tenant of the transaction's context to the workers itself."),
            c"Set the tenant with SELECT multitenancy.tenant_set('<tenant>') (or the session's signed or claims context).",
        );
    }
    // SAFETY: as above.
    unsafe {
        check_session_only(
            value,
            source,
            c"multitenancy.cluster_tenant cannot have a server, database, role or connection default",
        )
    }
}

/// While alive, `multitenancy.cluster_tenant` is open to being set: the extension's `SET LOCAL`
/// on a coordinator, a top-level `SET` of it on a worker.
pub struct ClusterTenantOpen;

impl ClusterTenantOpen {
    pub fn enter() -> ClusterTenantOpen {
        SETTING_CLUSTER.with(|s| s.set(true));
        ClusterTenantOpen
    }
}

impl Drop for ClusterTenantOpen {
    fn drop(&mut self) {
        SETTING_CLUSTER.with(|s| s.set(false));
    }
}

/// Run `f` (the extension's `SET LOCAL multitenancy.cluster_tenant`) with the setting open to it.
pub fn sending_cluster_tenant<R>(f: impl FnOnce() -> R) -> R {
    let _open = ClusterTenantOpen::enter();
    f()
}

#[pg_guard]
unsafe extern "C-unwind" fn check_user_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: as above.
    unsafe {
        check_session_only(
            *newval,
            source,
            c"multitenancy.user_id cannot have a server, database, role or connection default",
        )
    }
}

/// Only [`set_signed_context`] may give the signed context a value; PostgreSQL itself copies it
/// into parallel workers. Everything else (SET, set_config, ALTER ROLE, GRANT SET ON PARAMETER,
/// a function's SET clause, even as a superuser) is refused. Clearing it is always allowed.
#[pg_guard]
unsafe extern "C-unwind" fn check_signed_context(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value (which may be NULL);
    // ParallelWorkerNumber is a plain global.
    if unsafe { is_unset(*newval) }
        || SETTING_SIGNED.with(std::cell::Cell::get)
        || unsafe { pg_sys::ParallelWorkerNumber } >= 0
    {
        return true;
    }
    refuse(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        c"multitenancy.signed_context can only be set by multitenancy.tenant_set_signed()",
        None,
        c"Call SELECT multitenancy.tenant_set_signed('<token>') after BEGIN.",
    )
}

/// Make `value` the signed context until the end of the current transaction (or the
/// savepoint it was set in being rolled back).
pub fn set_signed_context(value: &CStr) {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            SETTING_SIGNED.with(|s| s.set(false));
        }
    }
    SETTING_SIGNED.with(|s| s.set(true));
    let _clear = Clear;
    set_with(SIGNED_CONTEXT_NAME, value, pg_sys::GucContext::PGC_SUSET, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// The raw signed context; the same rules as [`tenant_id_raw`].
pub fn signed_context_raw() -> *const c_char {
    // SAFETY: as in tenant_id_raw.
    unsafe { *SIGNED_CONTEXT.as_ptr() }
}

/// Whether a session-level tenant context outlives its transaction for this role.
pub fn session_context() -> bool {
    SESSION_CONTEXT.get()
}

/// Every GUC of this backend.
///
/// # Safety
/// Reads the GUC table; the pointers are valid until the next GUC is defined.
#[cfg(any(feature = "pg14", feature = "pg15"))]
unsafe fn guc_variables() -> (*mut *mut pg_sys::config_generic, usize) {
    (pg_sys::get_guc_variables(), pg_sys::GetNumConfigOptions().max(0) as usize)
}

/// Every GUC of this backend (a palloc'd array since PostgreSQL 16).
///
/// # Safety
/// Reads the GUC table; the pointers are valid until the next GUC is defined.
#[cfg(not(any(feature = "pg14", feature = "pg15")))]
unsafe fn guc_variables() -> (*mut *mut pg_sys::config_generic, usize) {
    let mut count = 0;
    let vars = pg_sys::get_guc_variables(&mut count);
    (vars, count.max(0) as usize)
}

thread_local! {
    /// The GUC records of multitenancy.tenant_id and user_id, found once.
    static CONTEXT_VARIABLES: std::cell::Cell<Option<[usize; 2]>> = const { std::cell::Cell::new(None) };
}

/// The first `Some` that `f` returns for a GUC record of this backend (placeholders included),
/// scanning the whole table; the array PostgreSQL 16 and later allocate for the scan is freed.
///
/// # Safety
/// `f` gets valid, non-NULL records with a name; it must not define or remove settings.
pub unsafe fn find_map_variable<R>(mut f: impl FnMut(*mut pg_sys::config_generic) -> Option<R>) -> Option<R> {
    let (vars, count) = guc_variables();
    let found =
        (0..count).map(|i| *vars.add(i)).filter(|&var| !var.is_null() && !(*var).name.is_null()).find_map(&mut f);
    free_guc_variables(vars);
    found
}

/// The GUC record named `name` (compared as PostgreSQL compares setting names: ASCII case
/// folded), or NULL.
///
/// # Safety
/// The record is valid until the setting is defined (a placeholder's record is replaced then).
unsafe fn variable(name: &CStr) -> *mut pg_sys::config_generic {
    find_map_variable(|var| CStr::from_ptr((*var).name).to_bytes().eq_ignore_ascii_case(name.to_bytes()).then_some(var))
        .unwrap_or(std::ptr::null_mut())
}

/// Whether the setting `name` (any, placeholders included, e.g. the claims setting) was changed
/// in the current transaction: its GUC record has a stack entry. Looked up by name every time,
/// since defining a placeholder's setting replaces its record.
pub fn set_in_this_transaction(name: &CStr) -> bool {
    // SAFETY: the record is read at once, before any setting can be defined.
    unsafe {
        let var = variable(name);
        !var.is_null() && !(*var).stack.is_null()
    }
}

/// Free what [`guc_variables`] returned, where PostgreSQL allocated it (16 and later).
///
/// # Safety
/// `vars` comes from [`guc_variables`] and is not used afterwards.
#[cfg(any(feature = "pg14", feature = "pg15"))]
unsafe fn free_guc_variables(_vars: *mut *mut pg_sys::config_generic) {}

/// Free what [`guc_variables`] returned, where PostgreSQL allocated it (16 and later).
///
/// # Safety
/// `vars` comes from [`guc_variables`] and is not used afterwards.
#[cfg(not(any(feature = "pg14", feature = "pg15")))]
unsafe fn free_guc_variables(vars: *mut *mut pg_sys::config_generic) {
    if !vars.is_null() {
        pg_sys::pfree(vars.cast());
    }
}

/// Whether `multitenancy.tenant_id` (`user: false`) or `user_id` (`user: true`) was set in the
/// current transaction (SET, SET LOCAL, set_config, tenant_set): its GUC record has a stack
/// entry exactly while a transaction has changed it.
pub fn context_set_in_this_transaction(user: bool) -> bool {
    // SAFETY: reads GUC records of ours, found once after they were defined.
    unsafe {
        let pointers = CONTEXT_VARIABLES.with(|c| match c.get() {
            Some(p) => p,
            None => {
                let p = [variable(TENANT_ID_NAME) as usize, variable(c"multitenancy.user_id") as usize];
                if p.iter().all(|&v| v != 0) {
                    c.set(Some(p));
                }
                p
            }
        });
        let var = pointers[usize::from(user)] as *mut pg_sys::config_generic;
        !var.is_null() && !(*var).stack.is_null()
    }
}

/// Whether `multitenancy.require_signed` is on.
pub fn require_signed() -> bool {
    REQUIRE_SIGNED.get()
}

/// The claims settings, when `multitenancy.claims_setting` names one: (setting, tenant claim,
/// user claim or "" for none).
pub fn claims() -> Option<(CString, CString, CString)> {
    // SAFETY: as in tenant_id_raw; checked without copying, since every query asks.
    let raw = unsafe { *CLAIMS_SETTING.as_ptr() };
    // SAFETY: a non-NULL value is NUL-terminated.
    if raw.is_null() || unsafe { CStr::from_ptr(raw) }.to_bytes().trim_ascii().is_empty() {
        return None;
    }
    let setting = CLAIMS_SETTING.get()?;
    let setting = CString::new(setting.to_bytes().trim_ascii()).expect("no NUL inside a C string");
    Some((setting, CLAIMS_TENANT.get().unwrap_or_default(), CLAIMS_USER.get().unwrap_or_default()))
}

/// The value of any setting (NULL when it does not exist), as `current_setting(name, true)`.
pub fn value_of(name: &CStr) -> *const c_char {
    // SAFETY: name is NUL-terminated; the result is owned by the GUC machinery.
    unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) }
}

/// Whether a setting's value is NULL or empty: no context, for every context setting.
///
/// # Safety
/// `value` is NULL or points at a NUL-terminated string.
pub unsafe fn is_unset(value: *const c_char) -> bool {
    // SAFETY: the caller's promise.
    value.is_null() || unsafe { *value } == 0
}

/// The check both context settings share: a value may only come from the session itself.
unsafe fn check_session_only(value: *const c_char, source: pg_sys::GucSource::Type, message: &CStr) -> bool {
    // SAFETY: a non-NULL proposed value is a NUL-terminated string.
    if unsafe { is_unset(value) } || source_may_set_a_tenant(source) {
        return true;
    }
    refuse(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        Some(c"A default would survive RESET and DISCARD ALL and reach every client of a pooled connection."),
        c"Set the tenant in each transaction: SELECT multitenancy.tenant_set('<tenant>') after BEGIN.",
    )
}

/// Refuse a proposed value from a check hook with this error; returns false (refused).
fn refuse(code: PgSqlErrorCode, message: &CStr, detail: Option<&CStr>, hint: &CStr) -> bool {
    // SAFETY: GUC_check_* strings must live in ErrorContext; PostgreSQL reports and frees them.
    unsafe {
        pg_sys::GUC_check_errcode(code as i32);
        pg_sys::GUC_check_errmsg_string = pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, message.as_ptr());
        if let Some(detail) = detail {
            pg_sys::GUC_check_errdetail_string = pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, detail.as_ptr());
        }
        pg_sys::GUC_check_errhint_string = pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, hint.as_ptr());
    }
    false
}

/// The schema names in `multitenancy.guarded_schemas` (unquoted; folded to lower case unless
/// written in double quotes, as PostgreSQL folds identifiers).
pub fn guarded_schemas() -> Vec<String> {
    let raw = GUARDED_SCHEMAS.get();
    let raw = raw.as_deref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    parse_schema_list(&raw)
}

fn parse_schema_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => s.to_lowercase(),
        })
        .collect()
}

/// Whether the DDL guard is on.
pub fn ddl_guard() -> bool {
    DDL_GUARD.get()
}

/// Set a setting the way `set_config()` does, for the current transaction
/// (`GUC_ACTION_LOCAL`) or until the current GUC nest level is popped (`GUC_ACTION_SAVE`).
pub fn set(name: &CStr, value: &CStr, action: pg_sys::GucAction::Type) {
    set_with(name, value, pg_sys::GucContext::PGC_USERSET, action);
}

fn set_with(name: &CStr, value: &CStr, context: pg_sys::GucContext::Type, action: pg_sys::GucAction::Type) {
    // SAFETY: both strings are NUL-terminated; errors are raised as PostgreSQL ERRORs.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// The raw value of `multitenancy.tenant_id`, borrowed from the GUC machinery without copying.
/// Valid until the setting next changes, so callers must finish with it before running SQL.
pub fn tenant_id_raw() -> *const c_char {
    // SAFETY: the GUC machinery keeps this pointer either NULL or pointing at a NUL-terminated
    // string it owns; we read it on the backend's main thread.
    unsafe { *TENANT_ID.as_ptr() }
}

/// The raw value of `multitenancy.cluster_tenant`; the same rules as [`tenant_id_raw`].
pub fn cluster_tenant_raw() -> *const c_char {
    // SAFETY: as in tenant_id_raw.
    unsafe { *CLUSTER_TENANT.as_ptr() }
}

/// The raw value of `multitenancy.user_id`; the same rules as [`tenant_id_raw`].
pub fn user_id_raw() -> *const c_char {
    // SAFETY: as in tenant_id_raw.
    unsafe { *USER_ID.as_ptr() }
}

/// `multitenancy.base_domain`, lower case, without surrounding dots or blanks; `None` when
/// unset or empty.
pub fn base_domain() -> Option<String> {
    let raw = BASE_DOMAIN.get()?;
    let domain = raw.to_string_lossy().trim().trim_matches('.').to_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// `multitenancy.base_domain` for SQL (`tenant_resolve`). Read through the library so that a
/// value an unprivileged session set before the library was loaded (a placeholder, which
/// PostgreSQL drops when the library defines the superuser-only setting) is never used.
#[pg_extern(stable, parallel_safe)]
fn _base_domain() -> Option<String> {
    base_domain()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn only_the_session_may_set_a_tenant() {
        use pg_sys::GucSource::*;
        for source in [PGC_S_SESSION, PGC_S_DEFAULT, PGC_S_DYNAMIC_DEFAULT, PGC_S_OVERRIDE] {
            assert!(source_may_set_a_tenant(source), "{source}");
        }
        for source in [
            PGC_S_FILE,
            PGC_S_ARGV,
            PGC_S_GLOBAL,
            PGC_S_DATABASE,
            PGC_S_USER,
            PGC_S_DATABASE_USER,
            PGC_S_CLIENT,
            PGC_S_TEST,
            PGC_S_ENV_VAR,
        ] {
            assert!(!source_may_set_a_tenant(source), "{source}");
        }
    }

    #[pg_test(error = "multitenancy.tenant_id cannot have a server, database, role or connection default")]
    fn a_role_default_is_refused() {
        Spi::run("ALTER ROLE CURRENT_USER SET multitenancy.tenant_id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'")
            .unwrap();
    }

    #[pg_test]
    fn an_empty_role_default_is_harmless_and_allowed() {
        Spi::run("ALTER ROLE CURRENT_USER SET multitenancy.tenant_id = ''").unwrap();
        Spi::run("ALTER ROLE CURRENT_USER RESET multitenancy.tenant_id").unwrap();
    }

    #[pg_test]
    fn schema_lists_fold_like_identifiers() {
        assert_eq!(parse_schema_list(" public, App ,\"Mixed\"\"Case\",,"), vec!["public", "app", "Mixed\"Case"]);
        assert!(parse_schema_list("").is_empty());
        assert_eq!(guarded_schemas(), vec!["public"]);
        assert!(ddl_guard());
    }

    #[cfg(not(feature = "pg14"))]
    #[pg_test(error = "invalid configuration parameter name \"multitenancy.tenantid\"")]
    fn misspelled_settings_are_errors() {
        Spi::run("SET multitenancy.tenantid = 'x'").unwrap();
    }

    /// PostgreSQL 14 cannot reserve the prefix (15's MarkGUCPrefixReserved): a misspelled setting
    /// is a placeholder, which sets no tenant (fail closed).
    #[cfg(feature = "pg14")]
    #[pg_test]
    fn misspelled_settings_set_no_tenant() {
        Spi::run("SET LOCAL multitenancy.tenantid = '00000000-0000-4000-8000-000000000001'").unwrap();
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.current_tenant_id_or_null()").unwrap(), None);
    }
}
