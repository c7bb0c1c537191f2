//! Signing keys and tenant tokens: the DBA's side of signed contexts (`signing_key_add`,
//! `signing_key_retire`, and `tenant_token` for the trusted backends a DBA grants it to). The
//! database's side — verifying a token and making it the transaction's context — is
//! `crate::context::signed`. The keys' data work is `sql/signing.sql`.
use crate::context::{
    self,
    signed::{mac, unix_now},
};
use crate::error::{MtError, OrRaise, Result, SpiContext};
use crate::registry::{self, tenants};
use crate::tenants::access;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use pgrx::prelude::*;
use serde_json::{json, Value};

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
const MIN_SECRET_BYTES: usize = 32;

/// The newest active key: (name, secret).
fn signing_key() -> Result<(String, Vec<u8>)> {
    registry::as_owner(|| {
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT name, secret FROM multitenancy.signing_keys WHERE retired_at IS NULL \
                     ORDER BY created_at DESC, name DESC LIMIT 1",
                    Some(1),
                    &[],
                )
                .ctx("signed::signing_key")?;
            let row = rows.into_iter().next().ok_or(MtError::NoSigningKey)?;
            Ok((
                row.get::<String>(1).ctx("name")?.unwrap_or_default(),
                row.get::<Vec<u8>>(2).ctx("secret")?.unwrap_or_default(),
            ))
        })
    })
}

/// A random uuid (version 4) from PostgreSQL's strong random source.
fn random_uuid() -> Result<pgrx::Uuid> {
    let mut bytes = [0u8; 16];
    // SAFETY: fills the buffer we own.
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        return Err(MtError::internal("signed::random_uuid", "pg_strong_random failed"));
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(pgrx::Uuid::from_bytes(bytes))
}

/// Mint a token for `tenant` (and `user`), valid for `ttl_seconds`.
fn mint(tenant: &str, user: Option<pgrx::Uuid>, ttl_seconds: f64) -> Result<String> {
    if ttl_seconds.is_nan() || ttl_seconds < 1.0 {
        return Err(MtError::InvalidArgument {
            message: if ttl_seconds.is_nan() {
                "ttl must not be NULL".into()
            } else {
                format!("ttl must be at least 1 second (got {ttl_seconds} s)")
            },
            hint: "Pass an interval such as '5 minutes'; a token is good for one transaction within it.".into(),
        });
    }
    let tenant = tenants::require(tenant)?;
    context::admit(&tenant, user)?;
    let (kid, secret) = signing_key()?;
    let now = unix_now().floor() as i64;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let mut claims = json!({
        "tenant_id": tenant.id.to_string(),
        "iat": now,
        "exp": now + ttl_seconds.floor() as i64,
        "jti": random_uuid()?.to_string(),
    });
    if let Some(user) = user {
        claims["sub"] = Value::String(user.to_string());
    }
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = URL_SAFE_NO_PAD.encode(mac(&secret, &signing_input).finalize().into_bytes());
    Ok(format!("{signing_input}.{signature}"))
}

fn validate_key_name(name: Option<&str>) -> Result<&str> {
    let name = crate::error::required(name, "name")?;
    let valid = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(MtError::InvalidArgument {
            message: format!("invalid signing key name \"{}\"", crate::error::clip(name)),
            hint: "A key name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'; tokens carry it as \"kid\"."
                .into(),
        });
    }
    Ok(name)
}

/// The key-name rule for SQL: `signing_keys.name`'s CHECK constraint (sql/finalize.sql).
#[pg_extern(immutable, strict, parallel_safe)]
fn _signing_key_name_valid(name: &str) -> bool {
    validate_key_name(Some(name)).is_ok()
}

/// Only superusers and the extension's owner manage keys, whoever EXECUTE was granted to: a
/// key mints any tenant's context.
fn require_key_manager(function: &'static str) -> Result<()> {
    if access::is_dba()? {
        return Ok(());
    }
    Err(MtError::NotAuthorized {
        action: function,
        tenant: "any".into(),
        reason: "signing keys are managed by superusers and the extension's owner".into(),
    })
}

/// Add a key for signing tenant tokens. Several keys may be active at once: tokens name their
/// key (`kid`), and `tenant_token` signs with the newest. DBAs only.
#[pg_extern(volatile, parallel_unsafe)]
fn signing_key_add(name: Option<&str>, secret: Option<&[u8]>) {
    let run = || {
        require_key_manager("add signing keys to")?;
        let name = validate_key_name(name)?;
        let secret = crate::error::required(secret, "secret")?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(MtError::InvalidArgument {
                message: format!("a signing secret must be at least {MIN_SECRET_BYTES} bytes (got {})", secret.len()),
                hint: "Generate one with gen_random_bytes(32) (pgcrypto) or openssl rand 32, and keep a copy for the \
                       backends that mint tokens."
                    .into(),
            });
        }
        access::change(
            "signing_key_add",
            None,
            "SELECT multitenancy._signing_key_add($1, $2)",
            &[name.into(), secret.into()],
        )
    };
    run().or_raise();
}

/// Retire a key: tokens signed with it are refused from now on. DBAs only.
#[pg_extern(volatile, parallel_unsafe)]
fn signing_key_retire(name: Option<&str>) {
    let run = || {
        require_key_manager("retire signing keys of")?;
        let name = validate_key_name(name)?;
        access::change("signing_key_retire", None, "SELECT multitenancy._signing_key_retire($1)", &[name.into()])
    };
    run().or_raise();
}

/// A token that makes `tenant` (and `user_id`) the context of one transaction, valid for `ttl`.
/// For trusted backends: EXECUTE is revoked from PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
fn tenant_token(
    tenant: Option<&str>,
    user_id: default!(Option<pgrx::Uuid>, "NULL"),
    ttl: default!(Option<pgrx::datum::Interval>, "'5 minutes'"),
) -> String {
    let ttl_seconds = ttl.map(|ttl| ttl.as_micros() as f64 / 1_000_000.0).unwrap_or(f64::NAN);
    crate::error::required(tenant, "tenant").and_then(|tenant| mint(tenant, user_id, ttl_seconds)).or_raise()
}
