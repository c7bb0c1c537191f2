//! Framework claims as the tenant context: PostgREST / Supabase (`request.jwt.claims`) and Hasura
//! (`hasura.user`). The DBA points the application role at the setting that holds the
//! framework's JSON claims (`ALTER ROLE mt_app IN DATABASE <db> SET multitenancy.claims_setting
//! = ...`); the framework sets that JSON per transaction, and tenant and user then come from it
//! alone.
//!
//! Every refusal is checked against ground truth (the superuser sees both tenants' rows) and a
//! positive control (the same connection, with correct claims, sees exactly its tenant's rows).
use multitenancy_integration::*;

const NO_CONTEXT: &SqlState = &SqlState::INVALID_AUTHORIZATION_SPECIFICATION;
const JWT: &str = "request.jwt.claims";

// ---------------------------------------------------------------------------------------------
// Fixture and helpers
// ---------------------------------------------------------------------------------------------

/// Orders of acme (A) and globex (B), end users, and role settings for [`APP`] in the database.
struct Fixture {
    o: Orders,
    /// A member of acme only.
    user_a: String,
    /// A member of globex only.
    user_b: String,
    /// A member of no tenant.
    stranger: String,
}

/// The fixture, with `settings` (name, value) stored for [`APP`] in the fixture's database by
/// the superuser. Connections opened afterwards start with them.
fn fixture(tag: &str, settings: &[(&str, &str)]) -> Fixture {
    let o = Orders::with_rows(tag, 3, 2);
    let mut su = o.db.superuser();
    let mut user = |tenant: Option<&str>| -> String {
        let id: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
        if let Some(tenant) = tenant {
            su.execute(&format!("SELECT multitenancy.member_add('{tenant}', '{id}', 'member')"), &[])
                .unwrap_or_else(|e| panic!("member_add({tenant}, {id}): {e}"));
        }
        id
    };
    let (user_a, user_b, stranger) = (user(Some("acme")), user(Some("globex")), user(None));
    for (name, value) in settings {
        su.batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {} SET {name} = '{value}'", o.db.name))
            .unwrap_or_else(|e| panic!("ALTER ROLE {APP} SET {name}: {e}"));
    }
    let f = Fixture { o, user_a, user_b, stranger };
    f.assert_both_tenants_have_rows();
    f
}

impl Fixture {
    /// A new connection as [`APP`]; checks that it started with `setting` = `value`.
    fn app_with(&self, setting: &str, value: &str) -> Client {
        let mut app = self.o.db.app();
        let shown: String = app.query_one(&format!("SHOW {setting}"), &[]).unwrap().get(0);
        assert_eq!(shown, value, "precondition: the application role's connection starts with {setting} = {value}");
        app
    }

    /// Ground truth (superuser): both tenants have rows.
    #[track_caller]
    fn assert_both_tenants_have_rows(&self) {
        assert!(self.o.rows_a > 0 && self.o.rows_b > 0);
        assert_eq!(self.o.true_count(&self.o.a), self.o.rows_a, "ground truth: A's rows exist");
        assert_eq!(self.o.true_count(&self.o.b), self.o.rows_b, "ground truth: B's rows exist");
    }

    /// `(id, rows, other id)` of tenant A or B.
    fn tenant(&self, a: bool) -> (&str, i64, &str) {
        if a {
            (&self.o.a, self.o.rows_a, &self.o.b)
        } else {
            (&self.o.b, self.o.rows_b, &self.o.a)
        }
    }

    /// In `tx`: every visible row is A's (or B's), exactly that tenant's count, none of the other
    /// tenant's (which exist), and `current_tenant_id()` names it.
    #[track_caller]
    fn assert_sees_only(&self, tx: &mut Transaction<'_>, a: bool, situation: &str) {
        let (own, rows, other) = self.tenant(a);
        let seen: Vec<String> = tx
            .query("SELECT tenant_id::text FROM orders", &[])
            .unwrap_or_else(|e| panic!("{situation}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(seen.iter().all(|t| t == own), "{situation}: a row of another tenant is visible: {seen:?}");
        assert_eq!(seen.len() as i64, rows, "{situation}: exactly the tenant's {rows} row(s)");
        let foreign: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&other]).unwrap().get(0);
        assert_eq!(foreign, 0, "{situation}: none of the other tenant's rows");
        let current: String = tx.query_one("SELECT multitenancy.current_tenant_id()::text", &[]).unwrap().get(0);
        assert_eq!(current, own, "{situation}: current_tenant_id()");
    }
}

/// A transaction with `json` as the claims in `setting`, set the way PostgREST does it
/// (`set_config(setting, json, true)`).
fn with_claims<'a>(app: &'a mut Client, setting: &str, json: &str) -> Transaction<'a> {
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config($1, $2, true)", &[&setting, &json]).unwrap();
    tx
}

/// The end user of the transaction (NULL: none).
fn user_of(tx: &mut Transaction<'_>) -> Option<String> {
    tx.query_one("SELECT multitenancy.current_user_id_or_null()::text", &[]).unwrap().get(0)
}

/// Reading `orders` fails with 28000 and a message containing `fragment`.
#[track_caller]
fn expect_no_context(tx: &mut Transaction<'_>, situation: &str, fragment: &str) {
    let error = expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), NO_CONTEXT);
    assert!(error.message().contains(fragment), "{situation}: expected {fragment:?} in {:?}", error.message());
}

/// Claims `json` in `setting` give no access: 28000 with `fragment`, in a transaction of their own.
#[track_caller]
fn refused(app: &mut Client, setting: &str, json: &str, fragment: &str) {
    let mut tx = with_claims(app, setting, json);
    expect_no_context(&mut tx, &format!("{setting} = {json}"), fragment);
}

fn claims(tenant: &str, user: Option<&str>) -> String {
    let mut claims = serde_json::json!({"tenant_id": tenant, "role": "authenticated", "aud": "authenticated"});
    if let Some(user) = user {
        claims["sub"] = user.into();
    }
    claims.to_string()
}

// ---------------------------------------------------------------------------------------------
// PostgREST / Supabase
// ---------------------------------------------------------------------------------------------

/// Must-show: with `claims_setting = 'request.jwt.claims'`, the claims PostgREST sets per request
/// are the whole context: A's claims alone give exactly A's rows (none of B's, which exist) and
/// A's user as `current_user_id()`; the next transaction with B's claims gives B; without claims
/// there is no context (in a fresh session, where the setting does not even exist, and after a
/// transaction that had claims). Fails if the claims are not read, if a transaction's claims or
/// tenant survive into the next one, or if `sub` is not taken as the user.
#[test]
fn postgrest_claims_alone_select_the_tenant_and_user() {
    let f = fixture("claims_postgrest", &[("multitenancy.claims_setting", JWT)]);
    let mut app = f.app_with("multitenancy.claims_setting", JWT);
    {
        let mut tx = app.transaction().unwrap();
        expect_no_context(&mut tx, "a fresh session without claims", "request.jwt.claims is not set");
    }
    {
        // Exactly what the brief's PostgREST request looks like, with SET LOCAL.
        let mut tx = app.transaction().unwrap();
        let json = claims(&f.o.a, Some(&f.user_a));
        tx.batch_execute(&format!("SET LOCAL request.jwt.claims = '{json}'")).unwrap();
        f.assert_sees_only(&mut tx, true, "A's claims");
        let user: String = tx.query_one("SELECT multitenancy.current_user_id()::text", &[]).unwrap().get(0);
        assert_eq!(user, f.user_a, "current_user_id() is the sub claim");
        tx.commit().unwrap();
    }
    {
        let mut tx = app.transaction().unwrap();
        expect_no_context(&mut tx, "the transaction after A's claims", "request.jwt.claims is not set");
    }
    {
        let mut tx = with_claims(&mut app, JWT, &claims(&f.o.b, Some(&f.user_b)));
        f.assert_sees_only(&mut tx, false, "B's claims in the next transaction");
        assert_eq!(user_of(&mut tx), Some(f.user_b.clone()), "the user follows the claims");
        tx.commit().unwrap();
    }
    {
        // sub is optional: no user, tenant A.
        let mut tx = with_claims(&mut app, JWT, &claims(&f.o.a, None));
        f.assert_sees_only(&mut tx, true, "A's claims without sub");
        assert_eq!(user_of(&mut tx), None, "no sub, no user");
        tx.rollback().unwrap();
    }
    let mut tx = app.transaction().unwrap();
    expect_no_context(&mut tx, "after the last claims transaction", "request.jwt.claims is not set");
    drop(tx);
    f.assert_both_tenants_have_rows();
}

/// Claims that do not name a usable tenant and user fail closed with 28000: tenant claim
/// missing (the message names the claim and the setting), claims set to empty, not JSON, JSON
/// that is not an object, a `sub` that is not a member of the tenant (a member of another
/// tenant, or of none), a suspended tenant, an unknown tenant. After each, correct claims on the
/// same connection work (positive control). Fails if any malformed or unauthorized claims yield
/// rows, or a refusal is reported as something other than a missing tenant context.
#[test]
fn claims_that_do_not_name_a_usable_tenant_fail_closed() {
    let f = fixture("claims_refusals", &[("multitenancy.claims_setting", JWT)]);
    let mut app = f.app_with("multitenancy.claims_setting", JWT);
    let user_a = f.user_a.as_str();

    let positive = |app: &mut Client, situation: &str| {
        let mut tx = with_claims(app, JWT, &claims(&f.o.a, Some(user_a)));
        f.assert_sees_only(&mut tx, true, &format!("positive control after {situation}"));
    };

    refused(
        &mut app,
        JWT,
        &format!(r#"{{"sub": "{user_a}", "role": "authenticated"}}"#),
        r#"claim "tenant_id" is missing from request.jwt.claims"#,
    );
    positive(&mut app, "a missing tenant claim");
    refused(&mut app, JWT, "", "request.jwt.claims is not set");
    positive(&mut app, "empty claims");
    for json in ["not json", "{\"tenant_id\": ", "[1, 2]", "\"a string\"", "42", "null"] {
        refused(&mut app, JWT, json, "request.jwt.claims is not a JSON object");
        positive(&mut app, json);
    }
    // A member of globex, and a member of nothing, claiming acme.
    for (who, user) in [("a member of B", f.user_b.as_str()), ("a stranger", f.stranger.as_str())] {
        refused(&mut app, JWT, &claims(&f.o.a, Some(user)), "is not a member");
        refused(&mut app, JWT, &claims("acme", Some(user)), "is not a member");
        positive(&mut app, who);
    }
    // A suspended tenant.
    let mut su = f.o.db.superuser();
    su.execute("UPDATE multitenancy.tenants SET status = 'suspended' WHERE slug = 'globex'", &[]).unwrap();
    refused(&mut app, JWT, &claims(&f.o.b, Some(&f.user_b)), "suspended");
    su.execute("UPDATE multitenancy.tenants SET status = 'active' WHERE slug = 'globex'", &[]).unwrap();
    {
        let mut tx = with_claims(&mut app, JWT, &claims(&f.o.b, Some(&f.user_b)));
        f.assert_sees_only(&mut tx, false, "positive control: globex active again");
    }
    // An unknown tenant: refused (28000 like an unknown plain context, or 42704 like tenant_set).
    for unknown in ["00000000-0000-4000-8000-000000000000", "no-such-tenant"] {
        let mut tx = with_claims(&mut app, JWT, &claims(unknown, None));
        let error =
            tx.query("SELECT count(*) FROM orders", &[]).expect_err("an unknown tenant in the claims must be refused");
        let code = db_error(&error).code();
        assert!(code == NO_CONTEXT || code == &SqlState::UNDEFINED_OBJECT, "unknown tenant {unknown}: {error}");
    }
    positive(&mut app, "an unknown tenant");
    f.assert_both_tenants_have_rows();
}

/// In claims mode the plain settings are not a way around the claims: with A's claims, `SET
/// LOCAL multitenancy.tenant_id = B` / `set_config` still give exactly A, and
/// `multitenancy.user_id` does not replace the `sub` user; without claims a plain tenant (local
/// or session-level) gives no access; `tenant_set()` is refused (28000) with or without claims.
/// Fails if `multitenancy.tenant_id`, `multitenancy.user_id` or `tenant_set` are consulted while
/// claims mode is on.
#[test]
fn claims_mode_ignores_the_plain_setting_and_refuses_tenant_set() {
    let f = fixture("claims_ignore_plain", &[("multitenancy.claims_setting", JWT)]);
    let mut app = f.app_with("multitenancy.claims_setting", JWT);
    let (a, b) = (f.o.a.clone(), f.o.b.clone());

    {
        let mut tx = with_claims(&mut app, JWT, &claims(&a, Some(&f.user_a)));
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{b}'")).unwrap();
        f.assert_sees_only(&mut tx, true, "A's claims, SET LOCAL tenant_id = B");
        tx.execute("SELECT set_config('multitenancy.tenant_id', $1, true)", &[&b]).unwrap();
        f.assert_sees_only(&mut tx, true, "A's claims, set_config(tenant_id, B)");
        tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&f.user_b]).unwrap();
        assert_eq!(
            user_of(&mut tx),
            Some(f.user_a.clone()),
            "the user comes from the claims, not multitenancy.user_id"
        );
        f.assert_sees_only(&mut tx, true, "A's claims, multitenancy.user_id = B's user");
    }
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{b}'")).unwrap();
        expect_no_context(&mut tx, "no claims, SET LOCAL tenant_id = B", "request.jwt.claims is not set");
    }
    for (situation, claims_json) in [("with A's claims", Some(claims(&a, Some(&f.user_a)))), ("without claims", None)] {
        for tenant in ["globex", "acme"] {
            let mut tx = match &claims_json {
                Some(json) => with_claims(&mut app, JWT, json),
                None => app.transaction().unwrap(),
            };
            let result = tx.query_one("SELECT multitenancy.tenant_set($1)", &[&tenant]);
            assert!(result.is_err(), "tenant_set({tenant:?}) {situation} must be refused in claims mode");
            expect_sqlstate(result, NO_CONTEXT);
        }
    }
    // Session level, too.
    app.batch_execute(&format!("SET multitenancy.tenant_id = '{b}'")).unwrap();
    {
        let mut tx = app.transaction().unwrap();
        expect_no_context(&mut tx, "no claims, session-level tenant_id = B", "request.jwt.claims is not set");
    }
    {
        let mut tx = with_claims(&mut app, JWT, &claims(&a, Some(&f.user_a)));
        f.assert_sees_only(&mut tx, true, "A's claims over a session-level tenant_id = B");
    }
    f.assert_both_tenants_have_rows();
}

/// The tenant claim may be a slug (`"tenant_id": "acme"`), as well as an id. Fails if slugs
/// are not resolved, or resolved to the wrong tenant.
#[test]
fn a_slug_in_the_tenant_claim_selects_that_tenant() {
    let f = fixture("claims_slug", &[("multitenancy.claims_setting", JWT)]);
    let mut app = f.app_with("multitenancy.claims_setting", JWT);
    for (slug, user, a) in [("acme", &f.user_a, true), ("globex", &f.user_b, false), ("acme", &f.user_a, true)] {
        let mut tx = with_claims(&mut app, JWT, &claims(slug, Some(user)));
        f.assert_sees_only(&mut tx, a, &format!("tenant claim {slug:?}"));
        assert_eq!(user_of(&mut tx), Some(user.clone()));
        tx.commit().unwrap();
    }
    f.assert_both_tenants_have_rows();
}

/// Supabase style: with `claims_tenant = 'app_metadata.tenant_id'` the tenant is read from the
/// nested object of the JWT (`{"app_metadata": {"tenant_id": ...}}`), the user from `sub`; a
/// top-level `tenant_id` is not that claim (28000 naming the dotted claim), nor is an
/// `app_metadata` that is not an object. Fails if the dotted path is not followed, or if the
/// top-level claim is taken instead.
#[test]
fn supabase_nested_tenant_claim() {
    let f = fixture(
        "claims_supabase",
        &[("multitenancy.claims_setting", JWT), ("multitenancy.claims_tenant", "app_metadata.tenant_id")],
    );
    let mut app = f.app_with("multitenancy.claims_tenant", "app_metadata.tenant_id");
    let supabase = |tenant: &str, user: &str| {
        serde_json::json!({
            "aud": "authenticated", "role": "authenticated", "sub": user, "email": "someone@example.com",
            "app_metadata": {"provider": "email", "tenant_id": tenant}, "user_metadata": {}
        })
        .to_string()
    };
    for (a, user) in [(true, &f.user_a), (false, &f.user_b)] {
        let (tenant, _, _) = f.tenant(a);
        let mut tx = with_claims(&mut app, JWT, &supabase(tenant, user));
        f.assert_sees_only(&mut tx, a, "app_metadata.tenant_id");
        assert_eq!(user_of(&mut tx), Some(user.clone()));
        tx.commit().unwrap();
    }
    {
        let mut tx = with_claims(&mut app, JWT, &claims(&f.o.a, Some(&f.user_a)));
        let error = expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), NO_CONTEXT);
        assert!(
            error.message().contains("app_metadata.tenant_id") && error.message().contains("missing"),
            "a top-level tenant_id is not app_metadata.tenant_id: {:?}",
            error.message()
        );
    }
    let flat = serde_json::json!({"sub": f.user_a, "app_metadata": f.o.a}).to_string();
    // Either "no tenant context: ... missing" or "invalid tenant context: ...".
    refused(&mut app, JWT, &flat, "tenant context");
    f.assert_both_tenants_have_rows();
}

// ---------------------------------------------------------------------------------------------
// Hasura
// ---------------------------------------------------------------------------------------------

/// Hasura style: `claims_setting = 'hasura.user'`, tenant from `x-hasura-tenant-id`, user from
/// `x-hasura-user-id`, as Hasura sets them with `set_config('hasura.user', ..., true)`. The session variables
/// give exactly that tenant and user; a missing `x-hasura-tenant-id` is 28000 naming it and the
/// setting; a non-member `x-hasura-user-id` is refused; `sub` is not the user claim here; and
/// PostgREST's `request.jwt.claims` is not consulted. Fails if the configured claim names are not
/// the ones used.
#[test]
fn hasura_session_variables_select_the_tenant_and_user() {
    const HASURA: &str = "hasura.user";
    let f = fixture(
        "claims_hasura",
        &[
            ("multitenancy.claims_setting", HASURA),
            ("multitenancy.claims_tenant", "x-hasura-tenant-id"),
            ("multitenancy.claims_user", "x-hasura-user-id"),
        ],
    );
    let mut app = f.app_with("multitenancy.claims_setting", HASURA);
    let hasura = |tenant: &str, user: &str| {
        serde_json::json!({"x-hasura-role": "user", "x-hasura-tenant-id": tenant, "x-hasura-user-id": user}).to_string()
    };
    {
        let mut tx = app.transaction().unwrap();
        // `user` is a keyword: Hasura sets the variable with set_config (or a quoted name).
        tx.execute("SELECT set_config('hasura.user', $1, true)", &[&hasura(&f.o.a, &f.user_a)]).unwrap();
        f.assert_sees_only(&mut tx, true, "Hasura session variables for A");
        let user: String = tx.query_one("SELECT multitenancy.current_user_id()::text", &[]).unwrap().get(0);
        assert_eq!(user, f.user_a, "current_user_id() is x-hasura-user-id");
        tx.commit().unwrap();
    }
    {
        let mut tx = with_claims(&mut app, HASURA, &hasura(&f.o.b, &f.user_b));
        f.assert_sees_only(&mut tx, false, "Hasura session variables for B");
        assert_eq!(user_of(&mut tx), Some(f.user_b.clone()));
        tx.commit().unwrap();
    }
    let missing = serde_json::json!({"x-hasura-role": "user", "x-hasura-user-id": f.user_a}).to_string();
    refused(&mut app, HASURA, &missing, r#"claim "x-hasura-tenant-id" is missing from hasura.user"#);
    refused(&mut app, HASURA, &hasura(&f.o.a, &f.user_b), "is not a member");
    {
        // sub is not the user claim here: a stranger's sub changes nothing.
        let json = serde_json::json!({"x-hasura-tenant-id": f.o.a, "sub": f.stranger}).to_string();
        let mut tx = with_claims(&mut app, HASURA, &json);
        f.assert_sees_only(&mut tx, true, "x-hasura-tenant-id without x-hasura-user-id");
        assert_eq!(user_of(&mut tx), None, "sub is not x-hasura-user-id");
    }
    // PostgREST's setting is not Hasura's.
    refused(&mut app, JWT, &claims(&f.o.a, Some(&f.user_a)), "hasura.user is not set");
    f.assert_both_tenants_have_rows();
}

// ---------------------------------------------------------------------------------------------
// Who may configure claims
// ---------------------------------------------------------------------------------------------

/// The claims settings are the DBA's: the application role cannot change them — `SET` / `SET
/// LOCAL` / `RESET` / `set_config` of `claims_setting`, `claims_tenant`, `claims_user` and
/// `ALTER ROLE CURRENT_USER [IN DATABASE] SET` are 42501, a connection startup option setting one
/// is refused, and `RESET ALL` / `DISCARD ALL` go back to the role's configured value. Afterwards
/// claims mode is still in force (a plain tenant gives no access) and the stored role settings
/// are unchanged (ground truth). Fails if the application could switch claims mode off (and
/// with it, fall back to a tenant it names itself) or point it at a setting it controls.
#[test]
fn app_role_cannot_change_the_claims_settings() {
    let f = fixture("claims_settings_privileges", &[("multitenancy.claims_setting", JWT)]);
    let db = f.o.db.name.clone();
    let stored = |f: &Fixture| -> Vec<String> {
        f.o.db
            .superuser()
            .query(
                // This database and role-wide rows only: other tests set the role's settings
                // in their own databases at the same time.
                "SELECT unnest(setconfig) FROM pg_db_role_setting
                  WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)
                    AND setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = $2)) ORDER BY 1",
                &[&APP, &f.o.db.name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let before = stored(&f);
    assert!(
        before.contains(&format!("multitenancy.claims_setting={JWT}")),
        "ground truth: the role setting: {before:?}"
    );

    let mut app = f.app_with("multitenancy.claims_setting", JWT);
    let denied = &SqlState::INSUFFICIENT_PRIVILEGE;
    for name in ["multitenancy.claims_setting", "multitenancy.claims_tenant", "multitenancy.claims_user"] {
        for statement in [
            format!("SET {name} = 'x'"),
            format!("SET {name} = ''"),
            format!("SET SESSION {name} TO DEFAULT"),
            format!("RESET {name}"),
            format!("ALTER ROLE CURRENT_USER SET {name} = ''"),
            format!("ALTER ROLE CURRENT_USER IN DATABASE {db} SET {name} = ''"),
            format!("ALTER ROLE CURRENT_USER IN DATABASE {db} RESET {name}"),
        ] {
            expect_sqlstate(app.batch_execute(&statement), denied);
        }
        for local in [true, false] {
            expect_sqlstate(app.query_one("SELECT set_config($1, '', $2)", &[&name, &local]), denied);
        }
        let mut tx = app.transaction().unwrap();
        expect_sqlstate(tx.batch_execute(&format!("SET LOCAL {name} = ''")), denied);
    }
    // Startup option (PGOPTIONS / the options connection parameter).
    let url = format!("{} options='-c multitenancy.claims_setting=x'", f.o.db.server().url(&db, APP));
    expect_sqlstate(Client::connect(&url, NoTls).map(|_| ()), denied);

    // RESET ALL / DISCARD ALL return to the configured value, not to "off".
    app.batch_execute("RESET ALL").unwrap();
    let shown: String = app.query_one("SHOW multitenancy.claims_setting", &[]).unwrap().get(0);
    assert_eq!(shown, JWT, "after RESET ALL");
    app.batch_execute("DISCARD ALL").unwrap();
    let shown: String = app.query_one("SHOW multitenancy.claims_setting", &[]).unwrap().get(0);
    assert_eq!(shown, JWT, "after DISCARD ALL");

    // Claims mode is still in force: a tenant named by the application gives nothing...
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", f.o.b)).unwrap();
        expect_no_context(&mut tx, "a plain tenant after the refused changes", "request.jwt.claims is not set");
    }
    // ...and claims still work (positive control).
    {
        let mut tx = with_claims(&mut app, JWT, &claims(&f.o.a, Some(&f.user_a)));
        f.assert_sees_only(&mut tx, true, "claims after the refused changes");
    }
    assert_eq!(stored(&f), before, "the stored role settings are unchanged");
    f.assert_both_tenants_have_rows();
}
