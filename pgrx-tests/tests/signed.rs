//! Signed tenant contexts (issue 7): with `multitenancy.require_signed` on for the application's
//! role, only a token verified by `tenant_set_signed` in the current transaction gives access.
//! Every refusal below is checked twice: the statement fails with 28000, and afterwards the
//! transaction still has no access to the rows that exist (read as the superuser).
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use multitenancy_integration::*;
use serde_json::{json, Value};

const SECRET_HEX: &str = "6d756c746974656e616e63792d746573742d7365637265742d6b65792d303031";

fn secret() -> Vec<u8> {
    (0..SECRET_HEX.len()).step_by(2).map(|i| u8::from_str_radix(&SECRET_HEX[i..i + 2], 16).unwrap()).collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWT (HS256) minted the way an application backend would with any JWT library.
fn jwt(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn claims_for(tenant: &str) -> Value {
    let now = unix_now();
    json!({"tenant_id": tenant, "iat": now, "exp": now + 60, "jti": format!("it-{now}-{}", rand_suffix())})
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst) ^ (std::process::id() as u64) << 32
}

fn header(kid: &str) -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": kid})
}

/// Orders with rows of acme (A) and globex (B), signing key `k1`, and `require_signed` on for
/// the app role in this database. Returns the fixture; app connections opened afterwards have
/// the setting.
fn signed_orders(tag: &str) -> Orders {
    let o = Orders::new(tag);
    let mut su = o.db.superuser();
    su.batch_execute(&format!(
        "SELECT multitenancy.signing_key_add('k1', decode('{SECRET_HEX}', 'hex'));
         ALTER ROLE {APP} IN DATABASE {} SET multitenancy.require_signed = on;",
        o.db.name
    ))
    .unwrap();
    assert!(o.true_count(&o.a) > 0 && o.true_count(&o.b) > 0, "both tenants must have rows");
    o
}

fn token(db: &TestDb, tenant: &str) -> String {
    db.superuser().query_one("SELECT multitenancy.tenant_token($1)", &[&tenant]).unwrap().get(0)
}

/// In a transaction of `app`: run `attempt` in a savepoint, expect it to fail with 28000 and a
/// message containing `fragment`, then show that the transaction has no access to orders.
#[track_caller]
fn refused_without_access(app: &mut Client, attempt: &str, fragment: &str) {
    let mut tx = app.transaction().unwrap();
    tx.batch_execute("SAVEPOINT attempt").unwrap();
    let error = expect_sqlstate(tx.batch_execute(attempt), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(error.message().contains(fragment), "{attempt}: expected {fragment:?} in {:?}", error.message());
    assert!(error.hint().is_some_and(|h| !h.is_empty()), "{attempt}: a hint");
    tx.batch_execute("ROLLBACK TO SAVEPOINT attempt").unwrap();
    let error =
        expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(error.message().contains("no signed tenant context"), "after {attempt}: {:?}", error.message());
}

/// Count the orders visible with `token`'s context, and those of `other` (which must be 0).
fn seen_with(app: &mut Client, token: &str, other: &str) -> (i64, i64) {
    let mut tx = app.transaction().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token]).unwrap();
    let own = count(&mut tx, "SELECT count(*) FROM orders");
    let foreign: i64 =
        tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&other]).unwrap().get(0);
    tx.commit().unwrap();
    (own, foreign)
}

/// With require_signed, the plain setting gives nothing however it is set (SET LOCAL, SET,
/// set_config, tenant_set), the app cannot switch the mode off or write the verified context,
/// and a valid token gives exactly its tenant — also through a parallel plan, whose workers
/// must receive the verified context.
#[test]
fn require_signed_accepts_only_a_verified_context() {
    let o = signed_orders("signed_only_verified");
    let mut app = o.db.app();
    let b = o.b.clone();
    for attempt in [
        format!("SET LOCAL multitenancy.tenant_id = '{b}'; SELECT count(*) FROM orders"),
        format!("SELECT set_config('multitenancy.tenant_id', '{b}', true); SELECT count(*) FROM orders"),
        format!("SET multitenancy.tenant_id = '{b}'; SELECT count(*) FROM orders"),
    ] {
        refused_without_access(&mut app, &attempt, "no signed tenant context");
    }
    app.batch_execute("RESET multitenancy.tenant_id").unwrap();
    refused_without_access(&mut app, "SELECT multitenancy.tenant_set('globex')", "cannot choose the tenant");

    // The mode and the verified context are out of the app's reach.
    expect_sqlstate(app.batch_execute("SET multitenancy.require_signed = off"), &SqlState::INSUFFICIENT_PRIVILEGE);
    expect_sqlstate(
        app.batch_execute(&format!("BEGIN; SET LOCAL multitenancy.signed_context = '{b}'")),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    app.batch_execute("ROLLBACK").unwrap();
    expect_sqlstate(
        app.query("SELECT set_config('multitenancy.signed_context', $1, true)", &[&b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    expect_sqlstate(app.query("SHOW multitenancy.signed_context", &[]), &SqlState::INSUFFICIENT_PRIVILEGE);
    // Not even a superuser can write it: only tenant_set_signed does.
    let mut su = o.db.superuser();
    expect_sqlstate(
        su.query("SELECT set_config('multitenancy.signed_context', $1, true)", &[&b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );

    // A valid token: exactly acme's rows, none of globex's (which exist), and writes go to acme.
    let (own, foreign) = seen_with(&mut app, &token(&o.db, "acme"), &o.b);
    assert_eq!((own, foreign), (o.rows_a, 0));
    let mut tx = app.transaction().unwrap();
    let id: String =
        tx.query_one("SELECT multitenancy.tenant_set_signed($1)::text", &[&token(&o.db, "acme")]).unwrap().get(0);
    assert_eq!(id, o.a);
    // The plain setting changes nothing once a signed context is set.
    tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{b}'")).unwrap();
    let current: String = tx.query_one("SELECT multitenancy.current_tenant_id()::text", &[]).unwrap().get(0);
    assert_eq!(current, o.a);
    tx.execute("INSERT INTO orders (item) VALUES ('signed')", &[]).unwrap();
    // Parallel workers scan with the same tenant: the policy's initPlan runs in the leader and its
    // value travels with the plan.
    tx.batch_execute(
        "SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0;
         SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL enable_bitmapscan = off;
         SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off;",
    )
    .unwrap();
    tx.query(
        "SELECT set_config(name, 'on', true) FROM pg_settings WHERE name IN ('force_parallel_mode', 'debug_parallel_query')",
        &[],
    )
    .unwrap();
    let plan = |tx: &mut Transaction, sql: &str| -> String {
        tx.query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0) + "\n")
            .collect()
    };
    // current_tenant_id() is PARALLEL RESTRICTED (a worker cannot tell which transaction set a
    // plain context): under forced parallelism it runs in the leader and gives the same answer.
    let in_leader = "SELECT multitenancy.current_tenant_id()::text";
    let from_leader: String = tx.query_one(in_leader, &[]).unwrap().get(0);
    assert_eq!(from_leader, o.a, "current_tenant_id() under forced parallel mode");
    assert!(plan(&mut tx, "SELECT count(*) FROM orders").contains("Parallel Seq Scan"));
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a + 1);
    tx.commit().unwrap();
    assert_eq!(o.true_count(&o.a), o.rows_a + 1, "the insert went to acme");
    assert_eq!(o.true_count(&o.b), o.rows_b);
}

/// Forged, tampered, unsigned, expired, retired-key, suspended-tenant and replayed tokens all
/// fail and leave no access; a token minted outside the database with a JWT library works.
#[test]
fn bad_tokens_give_no_access() {
    let o = signed_orders("signed_bad_tokens");
    let mut app = o.db.app();
    let set = |token: &str| format!("SELECT multitenancy.tenant_set_signed('{token}')");

    // Minted outside the database with the right secret: accepted (JWT-compatible).
    let external = jwt(&secret(), &header("k1"), &claims_for(&o.b));
    assert_eq!(seen_with(&mut app, &external, &o.a), (o.rows_b, 0));

    // Forged: the right shape and key id, the wrong secret.
    let forged = jwt(b"not-the-secret-not-the-secret-xx", &header("k1"), &claims_for(&o.b));
    refused_without_access(&mut app, &set(&forged), "the signature does not match");
    // Tampered: a real acme token with its payload rewritten to globex.
    let real = token(&o.db, "acme");
    let parts: Vec<&str> = real.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["tenant_id"] = Value::String(o.b.clone());
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2]);
    refused_without_access(&mut app, &set(&tampered), "the signature does not match");
    // Unsigned ("alg": "none") and a key that does not exist.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims_for(&o.b).to_string())
    );
    refused_without_access(&mut app, &set(&none), "must be \"HS256\"");
    refused_without_access(&mut app, &set(&jwt(&secret(), &header("k9"), &claims_for(&o.b))), "\"k9\" does not exist");
    refused_without_access(&mut app, "SELECT multitenancy.tenant_set_signed('garbage')", "not a JWT");

    // Expired: minted with exp in the past, and a real token that ran out.
    let mut old = claims_for(&o.b);
    old["exp"] = json!(unix_now() - 5);
    refused_without_access(&mut app, &set(&jwt(&secret(), &header("k1"), &old)), "has expired");
    let short: String =
        o.db.superuser().query_one("SELECT multitenancy.tenant_token('globex', NULL, '1 second')", &[]).unwrap().get(0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused_without_access(&mut app, &set(&short), "has expired");
    // Missing exp / jti / iat are refused, not defaulted.
    for claim in ["exp", "jti", "iat"] {
        let mut claims = claims_for(&o.b);
        claims.as_object_mut().unwrap().remove(claim);
        refused_without_access(&mut app, &set(&jwt(&secret(), &header("k1"), &claims)), claim);
    }

    // Replayed: a token works in one transaction; the next transaction has no context, and
    // the same token is refused there — also after a rollback of the first.
    let once = token(&o.db, "acme");
    assert_eq!(seen_with(&mut app, &once, &o.b), (o.rows_a, 0));
    {
        let mut tx = app.transaction().unwrap();
        let error = expect_sqlstate(
            tx.query("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("no signed tenant context"), "{}", error.message());
    }
    refused_without_access(&mut app, &set(&once), "already been used");
    let rolled_back = token(&o.db, "acme");
    let mut tx = app.transaction().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&rolled_back]).unwrap();
    tx.rollback().unwrap();
    refused_without_access(&mut app, &set(&rolled_back), "already been used");

    // A suspended tenant: its token was valid when minted.
    let globex = token(&o.db, "globex");
    o.db.superuser().batch_execute("SELECT multitenancy.tenant_suspend('globex', 'unpaid')").unwrap();
    refused_without_access(&mut app, &set(&globex), "suspended");
    o.db.superuser().batch_execute("SELECT multitenancy.tenant_activate('globex')").unwrap();
    // The refusal did not use it up: once active again it works.
    assert_eq!(seen_with(&mut app, &globex, &o.a), (o.rows_b, 0));
}

/// Rotation: several keys are active at once; tenant_token signs with the newest; a retired
/// key's tokens are refused from then on while the other key's still work.
#[test]
fn keys_rotate_and_retired_keys_are_refused() {
    let o = signed_orders("signed_rotation");
    let mut app = o.db.app();
    let old_key = token(&o.db, "acme");
    let mut su = o.db.superuser();
    su.batch_execute("SELECT multitenancy.signing_key_add('k2', decode(repeat('cd', 32), 'hex'))").unwrap();
    let new_key = token(&o.db, "acme");
    let kid = |token: &str| -> String {
        let head: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        head["kid"].as_str().unwrap().to_string()
    };
    assert_eq!((kid(&old_key), kid(&new_key)), ("k1".to_string(), "k2".to_string()));
    let from_k1_later = jwt(&secret(), &header("k1"), &claims_for(&o.a));
    // Both keys active: both tokens work.
    assert_eq!(seen_with(&mut app, &old_key, &o.b), (o.rows_a, 0));
    su.batch_execute("SELECT multitenancy.signing_key_retire('k1')").unwrap();
    refused_without_access(
        &mut app,
        &format!("SELECT multitenancy.tenant_set_signed('{from_k1_later}')"),
        "\"k1\" is retired",
    );
    assert_eq!(seen_with(&mut app, &new_key, &o.b), (o.rows_a, 0));
    let listed: Vec<(String, bool)> = su
        .query("SELECT name, active FROM multitenancy.signing_key_list()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(listed, vec![("k1".into(), false), ("k2".into(), true)]);
    // Bad key management input changes nothing.
    expect_sqlstate(
        su.batch_execute("SELECT multitenancy.signing_key_add('k2', decode(repeat('ef', 32), 'hex'))"),
        &SqlState::DUPLICATE_OBJECT,
    );
    expect_sqlstate(
        su.batch_execute("SELECT multitenancy.signing_key_add('k3', '\\x0102')"),
        &SqlState::INVALID_PARAMETER_VALUE,
    );
    expect_sqlstate(
        su.batch_execute("SELECT multitenancy.signing_key_add('k 3', decode(repeat('ef', 32), 'hex'))"),
        &SqlState::INVALID_PARAMETER_VALUE,
    );
    expect_sqlstate(su.batch_execute("SELECT multitenancy.signing_key_retire('nope')"), &SqlState::UNDEFINED_OBJECT);
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.signing_keys"), 2);
}

/// A token names a user (sub): it must be a member of the tenant, and becomes current_user_id.
#[test]
fn a_token_carries_the_user() {
    let o = signed_orders("signed_user");
    let user = "5f0c6c8e-0f3a-4d43-9d57-2f1b8a6c0071";
    let mut su = o.db.superuser();
    let error = expect_sqlstate(
        su.query_one("SELECT multitenancy.tenant_token('acme', $1::text::uuid)", &[&user]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("not a member"), "{}", error.message());
    let mut app = o.db.app();
    let mut claims = claims_for(&o.a);
    claims["sub"] = json!(user);
    let outsider = jwt(&secret(), &header("k1"), &claims);
    refused_without_access(&mut app, &format!("SELECT multitenancy.tenant_set_signed('{outsider}')"), "not a member");
    su.execute("SELECT multitenancy.member_add('acme', $1::text::uuid, 'member')", &[&user]).unwrap();
    let token: String =
        su.query_one("SELECT multitenancy.tenant_token('acme', $1::text::uuid)", &[&user]).unwrap().get(0);
    let mut tx = app.transaction().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token]).unwrap();
    // The plain user setting is ignored, like the tenant setting.
    tx.batch_execute("SET LOCAL multitenancy.user_id = '5f0c6c8e-0f3a-4d43-9d57-2f1b8a6c0072'").unwrap();
    let (tenant, current_user): (String, String) = {
        let row = tx
            .query_one("SELECT multitenancy.current_tenant_id()::text, multitenancy.current_user_id()::text", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((tenant.as_str(), current_user.as_str()), (o.a.as_str(), user));
}

/// The app role can neither read the secrets nor mint tokens unless a DBA grants tenant_token;
/// even then it reads no secret and cannot add keys (EXECUTE alone does not make a key manager).
#[test]
fn the_app_cannot_read_secrets_or_mint_tokens_unless_granted() {
    let o = signed_orders("signed_privileges");
    let mut app = o.db.app();
    for sql in [
        "SELECT * FROM multitenancy.signing_keys",
        "SELECT * FROM multitenancy.signing_key_list()",
        "SELECT multitenancy.tenant_token('acme')",
        "SELECT multitenancy.signing_key_add('mine', decode(repeat('ab', 32), 'hex'))",
        "SELECT multitenancy.signing_key_retire('k1')",
    ] {
        expect_sqlstate(app.batch_execute(sql), &SqlState::INSUFFICIENT_PRIVILEGE);
    }
    let mut su = o.db.superuser();
    su.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION multitenancy.tenant_token(text, uuid, interval) TO {APP};
         GRANT EXECUTE ON FUNCTION multitenancy.signing_key_add(text, bytea) TO {APP};"
    ))
    .unwrap();
    let minted: String = app.query_one("SELECT multitenancy.tenant_token('acme')", &[]).unwrap().get(0);
    assert_eq!(seen_with(&mut app, &minted, &o.b), (o.rows_a, 0));
    expect_sqlstate(app.batch_execute("SELECT * FROM multitenancy.signing_keys"), &SqlState::INSUFFICIENT_PRIVILEGE);
    expect_sqlstate(
        app.batch_execute("SELECT multitenancy.signing_key_add('mine', decode(repeat('ab', 32), 'hex'))"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.signing_keys"), 1);
    // The audit names the key, never the secret.
    let details: String = su
        .query_one("SELECT details::text FROM multitenancy.audit_log WHERE action = 'signing_key_add'", &[])
        .unwrap()
        .get(0);
    assert!(!details.contains(&SECRET_HEX[..16]) && details.contains("k1"), "{details}");
}

/// Without shared_preload_libraries a token's single use cannot be checked, so signed contexts
/// are refused (55000) rather than accepted without it; and a role with require_signed gets
/// no context at all — even when the client tries to switch the setting off with a startup
/// option before the library is loaded (which PostgreSQL would otherwise apply silently).
#[test]
fn signed_mode_refuses_to_run_without_shared_preload_libraries() {
    let server = Server::private("");
    let db = TestDb::on(server, "signed_no_preload", "");
    let a = db.tenant("Acme", "acme");
    create_orders(&db);
    let mut su = db.superuser();
    su.batch_execute(&format!("SELECT multitenancy.signing_key_add('k1', decode('{SECRET_HEX}', 'hex'))")).unwrap();
    let token = token(&db, "acme");
    let mut app = db.app();
    let mut tx = app.transaction().unwrap();
    let error = expect_sqlstate(
        tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(error.message().contains("shared_preload_libraries"), "{}", error.message());
    tx.rollback().unwrap();
    // Plain mode works without preloading (the control for what follows).
    let mut tx = begin_as(&mut app, "acme");
    tx.execute("INSERT INTO orders (item) VALUES ('x')", &[]).unwrap();
    tx.commit().unwrap();

    su.batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {} SET multitenancy.require_signed = on", db.name))
        .unwrap();
    let with_option = format!("{} options='-c multitenancy.require_signed=off'", server.url(&db.name, APP));
    for mut app in [db.app(), Client::connect(&with_option, NoTls).unwrap()] {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{a}'")).unwrap();
        let error = expect_sqlstate(
            tx.query("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("shared_preload_libraries"), "{}", error.message());
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM orders"), 1, "the row exists");
}
