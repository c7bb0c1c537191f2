//! Signed tenant contexts: signing keys, tokens, and their verification.
//!
//! A token is a JWT (RFC 7519) signed with HMAC-SHA256 (`HS256`), so that an application backend
//! can mint one with any JWT library:
//!
//! ```text
//! base64url({"alg":"HS256","typ":"JWT","kid":"<key name>"})
//!   . base64url({"tenant_id":"<uuid or slug>","sub":"<user uuid>","iat":<s>,"exp":<s>,"jti":"<id>"})
//!   . base64url(HMAC-SHA256(secret, <first part> "." <second part>))
//! ```
//!
//! `tenant_set_signed(token)` checks the algorithm, that `kid` names an active key, the signature
//! (in constant time), `exp` and `nbf`, that `iat` is not older than the server, that the `jti`
//! was never used on this server, and the tenant's status and the user's membership; then the
//! tenant (and user) become the context for the rest of the transaction, kept in a setting no
//! SQL can write (see [`crate::gucs::set_signed_context`]).
//!
//! Single use needs memory shared by every session of the server, so signed contexts need
//! `shared_preload_libraries = 'multitenancy'`. The used-token table forgets a token when it
//! expires (then the token is refused as expired) and forgets everything when the server
//! restarts, which is why tokens issued before the table was created are refused.
use crate::context;
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::gucs;
use crate::registry;
use crate::registry::tenants;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub type HmacSha256 = Hmac<Sha256>;

const MAX_JTI_BYTES: usize = 200;
const MAX_TOKEN_BYTES: usize = 8192;

// ---------------------------------------------------------------------------------------------
// Used tokens, in shared memory

/// Slots of the used-token table: 64Ki tokens that have not expired yet (1.5 MiB).
const SLOTS: usize = 1 << 16;
/// A token's slot is one of this many after the slot its `jti` hashes to.
const PROBES: usize = 32;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    /// The first 16 bytes of SHA-256(jti).
    key: [u8; 16],
    /// When the token expires (Unix seconds); 0 for a slot never used.
    expires: i64,
}

#[repr(C)]
struct UsedTokens {
    /// When this table was created (Unix seconds): tokens issued before are refused.
    created: i64,
    slots: [Slot; SLOTS],
}

const SHMEM_NAME: &std::ffi::CStr = c"multitenancy used tokens";
const TRANCHE: &std::ffi::CStr = c"multitenancy";

static mut USED: *mut UsedTokens = std::ptr::null_mut();
static mut LOCK: *mut pg_sys::LWLock = std::ptr::null_mut();
#[cfg(not(feature = "pg14"))]
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Called from `_PG_init`: when loaded by `shared_preload_libraries`, reserve the used-token table.
pub fn init() {
    // SAFETY: hook chaining and shared-memory requests, as PostgreSQL documents them for
    // libraries loaded by shared_preload_libraries (the postmaster, single-threaded).
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        gucs::set_preloaded();
        #[cfg(not(feature = "pg14"))]
        {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        #[cfg(feature = "pg14")]
        request_shared_memory();
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

// ---------------------------------------------------------------------------------------------
// Session state in signed sessions

/// Whether this session takes its tenant only from signed contexts (`require_signed`), or has
/// a signed context in this transaction.
///
/// Behind a transaction-mode pooler, the next transaction on this server session may be another
/// tenant's. Nothing a transaction here leaves in the session may change what that transaction
/// reads or writes: temporary objects (a temp table named like an enabled table shadows it; the
/// guard refuses them), WITH HOLD cursors, prepared statements and session-level settings (this
/// hook refuses them), and a search_path or role changed by `set_config(..., false)`
/// (`tenant_set_signed` refuses to start a context on top of one).
pub fn session_is_signed() -> bool {
    // SAFETY: reads the setting's current value.
    gucs::require_signed() || !unsafe { gucs::is_unset(gucs::signed_context_raw()) }
}

/// Settings a signed session may still SET for the session: how values are presented to the
/// client (PgBouncer sets these itself for each client it hands the connection to), the
/// characteristics of the current transaction (reset when it ends), and the extension's own,
/// whose checks already decide who may set them.
const SESSION_SETTINGS: [&str; 12] = [
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "standard_conforming_strings",
    "client_min_messages",
    "bytea_output",
];

fn session_setting_allowed(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SESSION_SETTINGS.contains(&name.as_str()) || name.starts_with("multitenancy.")
}

/// What a utility statement would leave in the session, if anything.
///
/// # Safety
/// `stmt` is a parsed utility statement.
unsafe fn leaves_session_state(stmt: *mut pg_sys::Node) -> Option<String> {
    if stmt.is_null() {
        return None;
    }
    match (*stmt).type_ {
        pg_sys::NodeTag::T_PrepareStmt => Some("PREPARE (a prepared statement)".into()),
        pg_sys::NodeTag::T_DeclareCursorStmt => {
            let cursor = stmt as *mut pg_sys::DeclareCursorStmt;
            ((*cursor).options & pg_sys::CURSOR_OPT_HOLD as i32 != 0)
                .then(|| "DECLARE ... WITH HOLD (a cursor that outlives the transaction)".into())
        }
        pg_sys::NodeTag::T_VariableSetStmt => {
            let set = stmt as *mut pg_sys::VariableSetStmt;
            let sets = matches!(
                (*set).kind,
                pg_sys::VariableSetKind::VAR_SET_VALUE
                    | pg_sys::VariableSetKind::VAR_SET_DEFAULT
                    | pg_sys::VariableSetKind::VAR_SET_CURRENT
            );
            if (*set).is_local || (*set).name.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr((*set).name).to_string_lossy().to_ascii_lowercase();
            if (*set).kind == pg_sys::VariableSetKind::VAR_SET_MULTI {
                // SET TRANSACTION ... is this transaction's; SET SESSION CHARACTERISTICS the session's.
                return (name == "session characteristics")
                    .then(|| "SET SESSION CHARACTERISTICS (session-level transaction defaults)".into());
            }
            (sets && !session_setting_allowed(&name))
                .then(|| format!("SET {name} without LOCAL (a session-level setting)"))
        }
        pg_sys::NodeTag::T_AlterRoleSetStmt | pg_sys::NodeTag::T_AlterDatabaseSetStmt => {
            Some("ALTER ROLE/DATABASE ... SET (a default for every later session)".into())
        }
        pg_sys::NodeTag::T_ListenStmt => Some("LISTEN (a channel the connection keeps)".into()),
        _ => None,
    }
}

/// Refuse a utility statement that would leave state in a signed session (called by
/// `crate::hooks` for every utility statement).
///
/// # Safety
/// `stmt` is a parsed utility statement.
pub unsafe fn check_utility(stmt: *mut pg_sys::Node) -> Result<()> {
    if !session_is_signed() {
        return Ok(());
    }
    match leaves_session_state(stmt) {
        None => Ok(()),
        Some(what) => Err(MtError::SignedSessionState {
            what,
            hint: "Behind a pooler the next transaction on this connection may be another tenant's. Use SET LOCAL, \
                   cursors without HOLD and unnamed statements (or the driver's protocol-level prepared statements)."
                .into(),
        }),
    }
}

/// No setting may have a session-level value (SET without LOCAL, `set_config(..., false)`) other
/// than the presentation settings above when a signed context starts: it would be what another
/// tenant's earlier transaction on this connection left behind (a search_path, a role,
/// transform_null_equals, default_transaction_read_only, ...). Also refused: SET LOCAL of such a
/// setting before `tenant_set_signed` in the same transaction (set it after).
fn session_settings_untouched() -> Result<()> {
    // SAFETY: reads the GUC table (no GUC call in between); names are NUL-terminated.
    let offending = unsafe {
        gucs::find_map_variable(|var| {
            if (*var).source != pg_sys::GucSource::PGC_S_SESSION {
                return None;
            }
            let name = std::ffi::CStr::from_ptr((*var).name).to_string_lossy().into_owned();
            (!session_setting_allowed(&name)).then_some(name)
        })
    };
    match offending {
        None => Ok(()),
        Some(name) => Err(MtError::SignedSessionState {
            what: format!("a signed context on top of {name} set for this session"),
            hint: format!(
                "Behind a pooler another tenant's transaction may have set it. Start the signed context first \
                 (BEGIN; SELECT multitenancy.tenant_set_signed(...)), then SET LOCAL {name} inside the transaction; \
                 for a permanent value a DBA sets a role default (ALTER ROLE ... SET {name} = ...)."
            ),
        }),
    }
}

/// Values the session keeps that a previous tenant's transaction could have set or read: the
/// sequence values `currval`/`lastval` report (another tenant's ids) and the seed of `random()`
/// (`setseed` would make this tenant's random values predictable). A signed context starts
/// without them.
fn forget_session_values() -> Result<()> {
    let mut bytes = [0u8; 8];
    // SAFETY: fills the buffer we own.
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        return Err(MtError::internal("signed::forget_session_values", "pg_strong_random failed"));
    }
    let seed = (u64::from_le_bytes(bytes) as f64 / u64::MAX as f64) * 2.0 - 1.0;
    Spi::run("DISCARD SEQUENCES").ctx("signed: DISCARD SEQUENCES")?;
    Spi::run_with_args("SELECT pg_catalog.setseed($1)", &[seed.into()]).ctx("signed: setseed")
}

unsafe fn request_shared_memory() {
    // SAFETY: called while the postmaster collects shared-memory requests.
    unsafe {
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<UsedTokens>());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[cfg(not(feature = "pg14"))]
#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: chains to the previous hook, then requests our space.
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| previous());
        }
        request_shared_memory();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: chains to the previous hook; creates (or attaches to) the table under
    // AddinShmemInitLock (MainLWLockArray[21]), as every add-in does.
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| previous());
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let table = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), std::mem::size_of::<UsedTokens>(), &mut found)
            .cast::<UsedTokens>();
        if !found {
            // Zeroed slots are empty. A crash restart comes through here too, with new memory.
            std::ptr::write_bytes(table, 0, 1);
            (*table).created = unix_now().floor() as i64;
        }
        USED = table;
        LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// When the used-token table was created (Unix seconds).
fn table_created() -> i64 {
    // SAFETY: USED is set in every backend of a server that preloaded the library; `created`
    // is written once, before any backend starts.
    unsafe { (*USED).created }
}

/// Record `jti` as used until `expires`; refuse it if it was used before.
fn use_once(jti: &str, expires: i64, now: i64) -> Result<()> {
    let digest = Sha256::digest(jti.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    let start = u64::from_le_bytes(digest[16..24].try_into().expect("8 bytes")) as usize % SLOTS;
    // SAFETY: the table lives in shared memory for the life of the server; it is read and
    // written only under LOCK, which is released before anything can raise an error.
    unsafe {
        pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = &mut (*USED).slots;
        let mut free = None;
        let mut used = false;
        for i in 0..PROBES {
            let index = (start + i) % SLOTS;
            let slot = &slots[index];
            if slot.expires > now {
                if slot.key == key {
                    used = true;
                    break;
                }
            } else if free.is_none() {
                free = Some(index);
            }
        }
        let outcome = match (used, free) {
            (true, _) => Err(MtError::BadToken {
                reason: "it has already been used (a token is good for one transaction)".into(),
            }),
            (false, Some(index)) => {
                slots[index] = Slot { key, expires };
                Ok(())
            }
            (false, None) => Err(MtError::TooManyTokens),
        };
        pg_sys::LWLockRelease(LOCK);
        outcome
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// Now, in Unix seconds (the server's clock, not the transaction's start).
pub fn unix_now() -> f64 {
    const POSTGRES_EPOCH_IN_UNIX_SECONDS: f64 = 946_684_800.0;
    // SAFETY: reads the clock.
    (unsafe { pg_sys::GetCurrentTimestamp() }) as f64 / 1_000_000.0 + POSTGRES_EPOCH_IN_UNIX_SECONDS
}

fn bad(reason: impl Into<String>) -> MtError {
    MtError::BadToken { reason: reason.into() }
}

pub fn mac(secret: &[u8], signing_input: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    mac
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>> {
    let bytes =
        URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| bad(format!("its {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad(format!("its {what} is not a JSON object"))),
    }
}

/// A NumericDate claim (seconds since 1970, integer or not).
fn seconds(claims: &Map<String, Value>, name: &str, required: bool) -> Result<Option<f64>> {
    match claims.get(name) {
        Some(value) => value.as_f64().map(Some).ok_or_else(|| bad(format!("claim \"{name}\" is not a number"))),
        None if required => Err(bad(format!("it has no \"{name}\" claim"))),
        None => Ok(None),
    }
}

/// The secret of key `name`, and whether the key is retired.
fn key(name: &str) -> Result<Option<(Vec<u8>, bool)>> {
    registry::as_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT secret, retired_at IS NOT NULL FROM multitenancy.signing_keys WHERE name = $1",
                    Some(1),
                    &[name.into()],
                )
                .ctx("signed::key")?;
            match rows.into_iter().next() {
                None => Ok(None),
                Some(row) => Ok(Some((
                    row.get::<Vec<u8>>(1).ctx("secret")?.unwrap_or_default(),
                    row.get::<bool>(2).ctx("retired")?.unwrap_or(true),
                ))),
            }
        })
    })
}

/// Verify `token` and make its tenant (and user) the context of the current transaction.
fn set_signed(token: &str) -> Result<pgrx::Uuid> {
    // SAFETY: reads transaction state.
    if !unsafe { pg_sys::IsTransactionBlock() } {
        return Err(MtError::NotInTransactionBlock { function: "multitenancy.tenant_set_signed" });
    }
    if !gucs::preloaded() {
        return Err(MtError::SignedNeedsPreload);
    }
    // A pooled connection shared by tenants is what require_signed protects: without it the
    // session may choose its tenant anyway, and its own session state is its own business.
    let shared = gucs::require_signed();
    if shared {
        session_settings_untouched()?;
    }
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(bad(format!("it is longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("it is not a JWT (three base64url parts separated by '.')"));
    };
    let head = decode_json(header, "header")?;
    if head.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(bad("its algorithm (\"alg\") must be \"HS256\""));
    }
    let kid = head.get("kid").and_then(Value::as_str).ok_or_else(|| bad("its header names no key (\"kid\")"))?;
    let (secret, retired) = key(kid)?.ok_or_else(|| bad(format!("signing key \"{kid}\" does not exist")))?;
    if retired {
        return Err(bad(format!("signing key \"{kid}\" is retired")));
    }
    let signature =
        URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')).map_err(|_| bad("its signature is not base64url"))?;
    // verify_slice compares in constant time.
    mac(&secret, &token[..header.len() + 1 + payload.len()])
        .verify_slice(&signature)
        .map_err(|_| bad("the signature does not match"))?;

    let claims = decode_json(payload, "payload")?;
    let now = unix_now();
    let expires = seconds(&claims, "exp", true)?.unwrap_or_default();
    if expires <= now {
        return Err(bad(format!("it has expired ({:.0} s ago)", now - expires)));
    }
    if let Some(not_before) = seconds(&claims, "nbf", false)? {
        if not_before > now {
            return Err(bad(format!("it is not valid yet (for another {:.0} s)", not_before - now)));
        }
    }
    let issued = seconds(&claims, "iat", true)?.unwrap_or_default();
    if (issued.floor() as i64) < table_created() {
        return Err(bad("it was issued before the server started, which forgot the tokens used until then"));
    }
    let jti = match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => jti.as_str(),
        _ => return Err(bad(format!("it has no \"jti\" claim (a unique token id of 1 to {MAX_JTI_BYTES} bytes)"))),
    };
    let tenant = match claims.get("tenant_id") {
        Some(Value::String(tenant)) => tenant.as_str(),
        _ => return Err(bad("it has no \"tenant_id\" claim (a tenant uuid or slug)")),
    };
    let user = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(sub)) => {
            Some(crate::uuid::parse(sub).ok_or_else(|| bad("its \"sub\" claim is not a user uuid"))?)
        }
        Some(_) => return Err(bad("its \"sub\" claim is not a user uuid")),
    };
    let tenant = tenants::find(tenant)?.ok_or_else(|| bad(format!("tenant \"{tenant}\" does not exist")))?;
    context::admit(&tenant, user)?;
    // Last, so that a token refused for another reason is not used up.
    use_once(jti, expires.ceil() as i64, now.floor() as i64)?;
    if shared {
        forget_session_values()?;
    }
    context::set_signed(tenant.id, user);
    Ok(tenant.id)
}

// ---------------------------------------------------------------------------------------------
// SQL functions

/// Verify a tenant token and make its tenant (and user) the context of the current transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_set_signed(token: Option<&str>) -> pgrx::Uuid {
    crate::error::required(token, "token").and_then(set_signed).or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn setup() -> pgrx::Uuid {
        Spi::run("SELECT multitenancy.signing_key_add('k1', decode(repeat('ab', 32), 'hex'))").unwrap();
        Spi::get_one::<pgrx::Uuid>("SELECT multitenancy.tenant_create('Signed Co')").unwrap().unwrap()
    }

    fn token(ttl: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT multitenancy.tenant_token('signed-co', NULL, $1::interval)",
            &[ttl.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn a_minted_token_is_a_verifiable_jwt() {
        let id = setup();
        let token = token("5 minutes");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let head = decode_json(parts[0], "header").unwrap();
        assert_eq!(head["alg"], "HS256");
        assert_eq!(head["kid"], "k1");
        let claims = decode_json(parts[1], "payload").unwrap();
        assert_eq!(claims["tenant_id"], id.to_string());
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
        // The signature is HMAC-SHA256 over the first two parts with the key's secret.
        let expected = mac(&[0xab; 32], &format!("{}.{}", parts[0], parts[1])).finalize().into_bytes();
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap(), expected.to_vec());
    }

    #[pg_test]
    fn a_signed_context_is_the_tenant_of_the_transaction() {
        let id = setup();
        let set = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT multitenancy.tenant_set_signed($1)",
            &[token("1 minute").into()],
        )
        .unwrap();
        assert_eq!(set, Some(id));
        assert_eq!(context::current().unwrap(), id);
    }

    #[pg_test(error = "ttl must be at least 1 second (got -60 s)")]
    fn a_negative_ttl_is_refused() {
        setup();
        token("-1 minute");
    }

    #[pg_test(error = "invalid tenant token: the signature does not match")]
    fn a_changed_payload_is_refused() {
        setup();
        let token = token("1 minute");
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = decode_json(parts[1], "payload").unwrap();
        claims.insert("tenant_id".into(), Value::String("someone-else".into()));
        let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string()), parts[2]);
        Spi::run_with_args("SELECT multitenancy.tenant_set_signed($1)", &[forged.into()]).unwrap();
    }

    #[pg_test(error = "invalid tenant token: it has already been used (a token is good for one transaction)")]
    fn a_token_works_once() {
        setup();
        let token = token("1 minute");
        Spi::run_with_args("SELECT multitenancy.tenant_set_signed($1)", &[token.clone().into()]).unwrap();
        Spi::run_with_args("SELECT multitenancy.tenant_set_signed($1)", &[token.into()]).unwrap();
    }

    #[pg_test(error = "invalid tenant token: signing key \"k1\" is retired")]
    fn a_retired_key_is_refused() {
        setup();
        let token = token("1 minute");
        Spi::run("SELECT multitenancy.signing_key_retire('k1')").unwrap();
        Spi::run_with_args("SELECT multitenancy.tenant_set_signed($1)", &[token.into()]).unwrap();
    }

    #[pg_test]
    fn the_used_token_table_refuses_a_key_it_holds_until_it_expires() {
        assert!(use_once("pg-test-jti", 2_000, 1_000).is_ok());
        assert!(matches!(use_once("pg-test-jti", 2_000, 1_500), Err(MtError::BadToken { .. })));
        // Once expired, its slot may be reused (the token itself is refused as expired by then).
        assert!(use_once("pg-test-jti", 4_000, 2_000).is_ok());
    }
}
