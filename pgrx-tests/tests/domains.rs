//! Domains, routing, settings and feature flags, driven as the application role ([`APP`]:
//! NOSUPERUSER, NOBYPASSRLS, owns nothing).
//!
//! The first members of a tenant are added by the superuser (an operator) with `member_add`;
//! from then on the application acts *as* one of those end users: the tenant context
//! (`tenant_set`) plus `multitenancy.user_id` set for the transaction. Every refusal is checked
//! by SQLSTATE and a message fragment, next to the ground truth read by the superuser (the
//! registry did not change) and a positive control (the right user may do it).
use multitenancy_integration::expect_sqlstate_mentioning as refused;
use multitenancy_integration::*;
use postgres::types::ToSql;

/// End users of the fixture (see [`site`]).
const OWNER_A: &str = "a0000000-0000-4000-8000-000000000001";
const ADMIN_A: &str = "a0000000-0000-4000-8000-000000000002";
const MEMBER_A: &str = "a0000000-0000-4000-8000-000000000003";
const OWNER_B: &str = "b0000000-0000-4000-8000-000000000001";

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// The [`Orders`] fixture (acme with 3 rows, globex with 2) plus end users, added by the
/// superuser: acme has an owner, an admin and a plain member; globex an owner.
fn site(tag: &str) -> Orders {
    let o = Orders::new(tag);
    let mut su = o.db.superuser();
    for (tenant, user, role) in [
        ("acme", OWNER_A, "owner"),
        ("acme", ADMIN_A, "admin"),
        ("acme", MEMBER_A, "member"),
        ("globex", OWNER_B, "owner"),
    ] {
        su.execute("SELECT multitenancy.member_add($1, $2::text::uuid, $3)", &[&tenant, &user, &role])
            .unwrap_or_else(|e| panic!("as superuser, member_add({tenant}, {user}, {role}): {e}"));
    }
    let members = count(&mut su, "SELECT count(*) FROM multitenancy.members");
    assert_eq!(members, 4, "ground truth: the fixture's four memberships exist");
    o
}

/// Run `sql` as the client's role in one transaction with `tenant`'s context (set with
/// `tenant_set`) and, when given, `user` as `multitenancy.user_id`. Commits when `sql` succeeds,
/// rolls back when it fails.
fn exec_as(
    client: &mut Client,
    tenant: &str,
    user: Option<&str>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, postgres::Error> {
    let mut tx = match user {
        Some(user) => begin_as_user(client, tenant, user),
        None => begin_as(client, tenant),
    };
    let result = tx.query(sql, params);
    if result.is_ok() {
        tx.commit().unwrap();
    }
    result
}

/// Like [`exec_as`], for a statement returning one row with one text (or NULL) column.
fn text_as(
    client: &mut Client,
    tenant: &str,
    user: Option<&str>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<String>, postgres::Error> {
    exec_as(client, tenant, user, sql, params).map(|rows| {
        assert_eq!(rows.len(), 1, "{sql}: expected one row");
        rows[0].get(0)
    })
}

/// `domain_add(tenant, domain)` as `user` in `tenant`'s context; the token.
fn domain_add(client: &mut Client, tenant: &str, user: &str, domain: &str) -> Result<Option<String>, postgres::Error> {
    text_as(client, tenant, Some(user), "SELECT multitenancy.domain_add($1, $2)", &[&tenant, &domain])
}

/// `domain_add` that must succeed; the (non-empty) token.
#[track_caller]
fn add_domain(client: &mut Client, tenant: &str, user: &str, domain: &str) -> String {
    let token = domain_add(client, tenant, user, domain)
        .unwrap_or_else(|e| panic!("domain_add({tenant}, {domain}) as {user}: {e}"))
        .unwrap_or_else(|| panic!("domain_add({tenant}, {domain}) must return the verification token, got NULL"));
    assert!(!token.trim().is_empty(), "domain_add must return a non-empty verification token");
    token
}

/// `tenant_resolve(host)` as the client, without any tenant context (how a router calls it).
fn resolve(client: &mut Client, host: &str) -> Option<String> {
    client
        .query_one("SELECT multitenancy.tenant_resolve($1)::text", &[&host])
        .unwrap_or_else(|e| panic!("tenant_resolve({host:?}): {e}"))
        .get(0)
}

/// A domain's registration, read by the superuser (ground truth).
#[derive(Debug, PartialEq, Eq)]
struct DomainRow {
    tenant: String,
    token: Option<String>,
    verified: bool,
    primary: bool,
}

fn domain_row(o: &Orders, domain: &str) -> Option<DomainRow> {
    o.db.superuser()
        .query_opt(
            "SELECT tenant_id::text, verification_token, verified_at IS NOT NULL, is_primary
               FROM multitenancy.domains WHERE domain = $1",
            &[&domain],
        )
        .unwrap()
        .map(|r| DomainRow { tenant: r.get(0), token: r.get(1), verified: r.get(2), primary: r.get(3) })
}

/// Every row of `multitenancy.domains`, as the superuser sees it.
fn domains_snapshot(o: &Orders) -> String {
    o.db.superuser()
        .query_one(
            "SELECT coalesce(string_agg(d::text, E'\\n' ORDER BY d.domain), '') FROM multitenancy.domains d",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Ground truth: how many audit rows of `action` exist.
fn audit_count(o: &Orders, action: &str) -> i64 {
    o.db.superuser()
        .query_one("SELECT count(*) FROM multitenancy.audit_log WHERE action = $1", &[&action])
        .unwrap()
        .get(0)
}

/// Ground truth: a tenant's overrides (`tenants.settings`) as jsonb text.
fn settings_of(o: &Orders, tenant_id: &str) -> String {
    o.db.superuser()
        .query_one("SELECT settings::text FROM multitenancy.tenants WHERE id = $1::text::uuid", &[&tenant_id])
        .unwrap()
        .get(0)
}

/// Point `multitenancy.base_domain` of the test database at `example.test` (as the superuser:
/// the setting is SUSET); connections opened afterwards see it.
fn set_base_domain(db: &TestDb) {
    db.superuser()
        .batch_execute(&format!("ALTER DATABASE {} SET multitenancy.base_domain = 'example.test'", db.name))
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

/// `domain_normalize` lower-cases, trims, drops a trailing dot and a port; anything that is not a
/// host name is NULL. It is IMMUTABLE (usable in indexes and constraints).
#[test]
fn domain_normalize_canonicalizes_hosts_and_rejects_garbage() {
    let db = TestDb::new("domain_normalize");
    let mut app = db.app();
    let mut normalize = |host: Option<&str>| -> Option<String> {
        app.query_one("SELECT multitenancy.domain_normalize($1)", &[&host])
            .unwrap_or_else(|e| panic!("as {APP}, domain_normalize({host:?}): {e}"))
            .get(0)
    };
    for host in
        ["Shop.Example.COM.", "shop.example.com:8443", " shop.example.com ", "shop.example.com", "SHOP.EXAMPLE.COM:443"]
    {
        assert_eq!(normalize(Some(host)).as_deref(), Some("shop.example.com"), "domain_normalize({host:?})");
    }
    for garbage in ["", "a b", "http://x", "-x.com", " "] {
        assert_eq!(normalize(Some(garbage)), None, "domain_normalize({garbage:?}) must be NULL: not a host name");
    }
    assert_eq!(normalize(None), None, "domain_normalize(NULL) is NULL");

    let volatility: String = db
        .superuser()
        .query_one(
            "SELECT provolatile::text FROM pg_proc WHERE oid = 'multitenancy.domain_normalize(text)'::regprocedure",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(volatility, "i", "domain_normalize must be IMMUTABLE");
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// `domain_add` by a tenant admin stores the normalized host with a token; the same host in any
/// spelling cannot be registered to another tenant (23505, first registration unchanged); an
/// invalid host is 22023; a plain member, a context without user, and an admin of another
/// tenant are refused (42501) and register nothing.
#[test]
fn domain_add_registers_a_host_for_one_tenant_only() {
    let o = site("domain_add");
    let mut app = o.db.app();

    let token = add_domain(&mut app, "acme", ADMIN_A, "Shop.Example.COM.");
    assert!(token.len() >= 16, "a verification token is a credential: expected at least 16 characters, got {token:?}");
    assert_eq!(
        domain_row(&o, "shop.example.com"),
        Some(DomainRow { tenant: o.a.clone(), token: Some(token.clone()), verified: false, primary: false }),
        "ground truth: stored under its normalized name, for acme, with the returned token, unverified"
    );
    assert_eq!(audit_count(&o, "domain_add"), 1, "one audit row for the registration");

    // The same host, however spelled, for globex (by globex's own owner): 23505.
    let before = domains_snapshot(&o);
    for spelling in
        ["shop.example.com", "SHOP.EXAMPLE.COM", "shop.example.com.", "shop.example.com:8443", " Shop.Example.com "]
    {
        refused(
            domain_add(&mut app, "globex", OWNER_B, spelling),
            &SqlState::UNIQUE_VIOLATION,
            &["shop.example.com", "already"],
        );
    }
    assert_eq!(domains_snapshot(&o), before, "the first registration is unchanged (tenant, token, state)");
    assert_eq!(domain_row(&o, "shop.example.com").unwrap().tenant, o.a, "still acme's");

    // Invalid hosts: 22023, nothing stored.
    for host in ["a b", "http://x", "-x.com", ""] {
        refused(domain_add(&mut app, "acme", ADMIN_A, host), &SqlState::INVALID_PARAMETER_VALUE, &["host", "domain"]);
    }
    assert_eq!(domains_snapshot(&o), before, "invalid hosts registered nothing");

    // Not an admin of the tenant: 42501.
    refused(
        domain_add(&mut app, "acme", MEMBER_A, "member.example.com"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied"],
    );
    refused(
        text_as(&mut app, "acme", None, "SELECT multitenancy.domain_add('acme', 'nouser.example.com')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied", "user"],
    );
    // acme's admin, in acme's context, for globex.
    refused(
        text_as(&mut app, "acme", Some(ADMIN_A), "SELECT multitenancy.domain_add('globex', 'evil.example.com')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied", "tenant", "globex"],
    );
    assert_eq!(domains_snapshot(&o), before, "refused registrations stored nothing");
    assert_eq!(audit_count(&o, "domain_add"), 1, "refused registrations wrote no audit row");

    // Positive control: globex's owner registers a host of its own.
    let token_b = add_domain(&mut app, "globex", OWNER_B, "shop.globex.test");
    assert_ne!(token_b, token, "every registration gets its own token");
    assert_eq!(domain_row(&o, "shop.globex.test").unwrap().tenant, o.b);
    assert_eq!(audit_count(&o, "domain_add"), 2);
}

// ---------------------------------------------------------------------------------------------
// Verification and routing
// ---------------------------------------------------------------------------------------------

/// An unverified domain does not resolve; a wrong token (another domain's, a prefix, an
/// extension) is 28000 and leaves it unverified; the right token, presented by an operator (who
/// checked the domain's DNS), verifies it and from then on it resolves (in any spelling of the
/// host). The app cannot verify (see attacks.rs).
#[test]
fn tenant_resolve_needs_a_domain_verified_with_its_own_token() {
    let o = site("domain_verify");
    let mut app = o.db.app();
    let mut operator = o.db.superuser();
    let token_a = add_domain(&mut app, "acme", ADMIN_A, "shop.acme.test");
    let token_b = add_domain(&mut app, "globex", OWNER_B, "shop.globex.test");
    assert_ne!(token_a, token_b);

    assert_eq!(resolve(&mut app, "shop.acme.test"), None, "an unverified domain does not resolve");
    assert_eq!(domain_row(&o, "shop.acme.test").unwrap().tenant, o.a, "ground truth: it is registered to acme");

    let prefix = &token_a[..token_a.len() - 1];
    let extended = format!("{token_a}0");
    for wrong in ["wrong-token", token_b.as_str(), prefix, extended.as_str()] {
        refused(
            operator.execute("SELECT multitenancy.domain_verify('shop.acme.test', $1)", &[&wrong]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["token", "verif"],
        );
        assert!(!domain_row(&o, "shop.acme.test").unwrap().verified, "still unverified after token {wrong:?}");
        assert_eq!(resolve(&mut app, "shop.acme.test"), None, "still does not resolve after token {wrong:?}");
    }
    assert_eq!(audit_count(&o, "domain_verify"), 0, "failed verifications are no state change");

    operator
        .execute("SELECT multitenancy.domain_verify('shop.acme.test', $1)", &[&token_a])
        .unwrap_or_else(|e| panic!("as an operator, domain_verify with the right token: {e}"));
    let row = domain_row(&o, "shop.acme.test").unwrap();
    assert!(row.verified, "ground truth: verified_at is set");
    assert_eq!(row.tenant, o.a);
    assert_eq!(audit_count(&o, "domain_verify"), 1);
    for host in ["shop.acme.test", "SHOP.Acme.test", "shop.acme.test.", "shop.acme.test:443"] {
        assert_eq!(resolve(&mut app, host), Some(o.a.clone()), "tenant_resolve({host:?}) after verification");
    }

    assert_eq!(resolve(&mut app, "shop.globex.test"), None, "globex's domain is still unverified");
    assert!(!domain_row(&o, "shop.globex.test").unwrap().verified);
    for unknown in ["unknown.test", "acme.test", "x.shop.acme.test", "acme"] {
        assert_eq!(resolve(&mut app, unknown), None, "tenant_resolve({unknown:?}): nobody's host");
    }
}

/// With `multitenancy.base_domain` set (by the superuser, for the database), `<slug>.<base>`
/// resolves to the tenant; nothing else under the base does (unknown slugs, deeper subdomains,
/// the base itself). Without it, the same host resolves to nothing. The app cannot change it.
#[test]
fn slug_subdomains_of_the_base_domain_resolve() {
    let o = Orders::new("slug_resolve");
    let mut app = o.db.app();
    assert_eq!(resolve(&mut app, "acme.example.test"), None, "no base_domain: a slug subdomain resolves to nothing");

    set_base_domain(&o.db);
    let mut app = o.db.app();
    let base: String = app.query_one("SELECT current_setting('multitenancy.base_domain')", &[]).unwrap().get(0);
    assert_eq!(base, "example.test", "the new connection has the database's base_domain");

    assert_eq!(resolve(&mut app, "acme.example.test"), Some(o.a.clone()));
    assert_eq!(resolve(&mut app, "globex.example.test"), Some(o.b.clone()));
    for host in [
        "nobody.example.test",
        "x.acme.example.test",
        "example.test",
        "acme.example.com",
        "acme.example.test.evil.com",
        "acmeexample.test",
    ] {
        assert_eq!(resolve(&mut app, host), None, "tenant_resolve({host:?}) must not resolve");
    }

    // base_domain is SUSET: the app role cannot point it elsewhere (the library is loaded, so
    // the real parameter, not a placeholder, answers).
    refused(
        app.batch_execute("SET multitenancy.base_domain = 'evil.test'"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["permission denied", "base_domain"],
    );
    assert_eq!(resolve(&mut app, "acme.example.test"), Some(o.a.clone()), "unchanged after the refused SET");
    assert_eq!(resolve(&mut app, "acme.evil.test"), None);
}

/// `tenant_set_by_host` makes the resolved tenant the transaction's context (by verified domain
/// and by slug subdomain): `current_tenant_id()` is that tenant and only its rows are visible.
/// An unknown or unverified host is 42704 and sets nothing; with a user id, a host of a tenant
/// the user is not a member of is refused (28000).
#[test]
fn tenant_set_by_host_sets_the_context_of_the_resolved_tenant() {
    let o = site("set_by_host");
    set_base_domain(&o.db);
    let mut app = o.db.app();
    let token = add_domain(&mut app, "globex", OWNER_B, "shop.globex.test");
    o.db.superuser().execute("SELECT multitenancy.domain_verify('shop.globex.test', $1)", &[&token]).unwrap();
    add_domain(&mut app, "globex", OWNER_B, "pending.globex.test");
    assert_eq!(o.true_count(&o.a), o.rows_a, "ground truth: acme's rows exist");
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: globex's rows exist");

    for (host, id, own_rows, other) in
        [("shop.globex.test", &o.b, o.rows_b, &o.a), ("acme.example.test", &o.a, o.rows_a, &o.b)]
    {
        let mut tx = app.transaction().unwrap();
        let set: String = tx
            .query_one("SELECT multitenancy.tenant_set_by_host($1)::text", &[&host])
            .unwrap_or_else(|e| panic!("tenant_set_by_host({host}): {e}"))
            .get(0);
        assert_eq!(&set, id, "tenant_set_by_host({host}) returns the tenant");
        let current: String = tx.query_one("SELECT multitenancy.current_tenant_id()::text", &[]).unwrap().get(0);
        assert_eq!(&current, id, "after tenant_set_by_host({host}), current_tenant_id() is that tenant");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), own_rows, "{host}: exactly the tenant's rows");
        let leaked: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[other]).unwrap().get(0);
        assert_eq!(leaked, 0, "{host}: none of the other tenant's rows");
        tx.commit().unwrap();
    }
    assert_no_context(&mut app, "the context of tenant_set_by_host ends with the transaction");

    for host in ["unknown.test", "pending.globex.test", "x.acme.example.test"] {
        let mut tx = app.transaction().unwrap();
        refused(
            tx.query_one("SELECT multitenancy.tenant_set_by_host($1)", &[&host]),
            &SqlState::UNDEFINED_OBJECT,
            &[host, "no tenant", "unknown", "not found"],
        );
        drop(tx);
        assert_no_context(&mut app, "a refused tenant_set_by_host sets no context");
    }

    // With an end user: only hosts of the user's tenants.
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&OWNER_A]).unwrap();
    refused(
        tx.query_one("SELECT multitenancy.tenant_set_by_host('shop.globex.test')", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["not a member"],
    );
    drop(tx);
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&OWNER_B]).unwrap();
    let set: String =
        tx.query_one("SELECT multitenancy.tenant_set_by_host('shop.globex.test')::text", &[]).unwrap().get(0);
    assert_eq!(set, o.b, "positive control: globex's owner may route to globex");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b);
}

// ---------------------------------------------------------------------------------------------
// Listing and removal
// ---------------------------------------------------------------------------------------------

/// `domain_list` shows the current tenant's domains (with primary and verified flags) and is
/// refused (42501) for another tenant; the registry table itself shows the app only the context
/// tenant's domains. `domain_remove` is for admins of the domain's tenant: a member and another
/// tenant's admin are refused; after the admin removes it, the domain no longer resolves.
#[test]
fn domain_list_and_domain_remove_stay_within_the_tenant() {
    let o = site("domain_list_remove");
    let mut app = o.db.app();
    let token = add_domain(&mut app, "acme", ADMIN_A, "shop.acme.test");
    o.db.superuser().execute("SELECT multitenancy.domain_verify('shop.acme.test', $1)", &[&token]).unwrap();
    text_as(&mut app, "acme", Some(ADMIN_A), "SELECT multitenancy.domain_add('acme', 'www.acme.test', true)", &[])
        .unwrap();
    let token_b = add_domain(&mut app, "globex", OWNER_B, "shop.globex.test");
    o.db.superuser().execute("SELECT multitenancy.domain_verify('shop.globex.test', $1)", &[&token_b]).unwrap();
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM multitenancy.domains"), 3, "ground truth");

    let list = |app: &mut Client, context: &str, tenant: &str| -> Result<Vec<(String, bool, bool)>, postgres::Error> {
        exec_as(
            app,
            context,
            None,
            "SELECT domain, is_primary, verified FROM multitenancy.domain_list($1) ORDER BY domain",
            &[&tenant],
        )
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    };
    let expected = vec![("shop.acme.test".to_string(), false, true), ("www.acme.test".to_string(), true, false)];
    assert_eq!(list(&mut app, "acme", "acme").unwrap(), expected, "acme's domains, by slug");
    assert_eq!(list(&mut app, "acme", &o.a).unwrap(), expected, "acme's domains, by id");
    refused(
        list(&mut app, "acme", "globex"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["permission denied", "tenant", "globex"],
    );
    refused(
        list(&mut app, "acme", &o.b),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["permission denied", "tenant", o.b.as_str()],
    );
    assert_eq!(domain_row(&o, "shop.globex.test").unwrap().tenant, o.b, "ground truth: globex does have a domain");

    // The registry table under RLS: only the context tenant's domains.
    let rows = exec_as(&mut app, "acme", None, "SELECT domain FROM multitenancy.domains ORDER BY domain", &[]).unwrap();
    let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seen, ["shop.acme.test", "www.acme.test"], "the app sees only acme's rows of multitenancy.domains");

    // Removal: a member is refused; for acme's admin, globex's domain does not exist (the same
    // answer as for an unknown domain: the refusal does not tell who holds a domain).
    let before = domains_snapshot(&o);
    refused(
        exec_as(&mut app, "acme", Some(MEMBER_A), "SELECT multitenancy.domain_remove('shop.acme.test')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied"],
    );
    refused(
        exec_as(&mut app, "acme", Some(ADMIN_A), "SELECT multitenancy.domain_remove('shop.globex.test')", &[]),
        &SqlState::UNDEFINED_OBJECT,
        &["no tenant for host"],
    );
    assert_eq!(domains_snapshot(&o), before, "refused removals changed nothing");
    assert_eq!(resolve(&mut app, "shop.globex.test"), Some(o.b.clone()), "globex's domain still resolves");
    assert_eq!(resolve(&mut app, "shop.acme.test"), Some(o.a.clone()), "acme's domain still resolves");

    // The admin removes acme's verified domain: gone, and no longer resolves or routes.
    exec_as(&mut app, "acme", Some(ADMIN_A), "SELECT multitenancy.domain_remove('shop.acme.test')", &[])
        .unwrap_or_else(|e| panic!("acme's admin removes shop.acme.test: {e}"));
    assert_eq!(domain_row(&o, "shop.acme.test"), None, "ground truth: the row is gone");
    assert_eq!(audit_count(&o, "domain_remove"), 1);
    assert_eq!(resolve(&mut app, "shop.acme.test"), None, "a removed domain no longer resolves");
    let mut tx = app.transaction().unwrap();
    refused(
        tx.query_one("SELECT multitenancy.tenant_set_by_host('shop.acme.test')", &[]),
        &SqlState::UNDEFINED_OBJECT,
        &["shop.acme.test", "no tenant", "unknown", "not found"],
    );
    drop(tx);
    let expected = vec![("www.acme.test".to_string(), true, false)];
    assert_eq!(list(&mut app, "acme", "acme").unwrap(), expected, "domain_list no longer shows it");
    assert!(domain_row(&o, "shop.globex.test").is_some(), "globex's domain is untouched");
}

// ---------------------------------------------------------------------------------------------
// Settings and feature flags
// ---------------------------------------------------------------------------------------------

/// `setting_get` and `setting_list` for the current tenant as its owner.
fn settings_as(app: &mut Client, tenant: &str, user: &str, key: &str) -> (Option<String>, bool) {
    let rows = exec_as(
        app,
        tenant,
        Some(user),
        "SELECT multitenancy.setting_get($1)::text, multitenancy.feature_enabled($1)",
        &[&key],
    )
    .unwrap_or_else(|e| panic!("setting_get/feature_enabled({key}) in {tenant} as {user}: {e}"));
    (rows[0].get(0), rows[0].get(1))
}

fn setting_list(
    app: &mut Client,
    context: &str,
    user: &str,
    tenant: &str,
) -> Result<Vec<(String, String, String)>, postgres::Error> {
    exec_as(
        app,
        context,
        Some(user),
        "SELECT key, value::text, source FROM multitenancy.setting_list($1) ORDER BY key",
        &[&tenant],
    )
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

fn setting_set(
    app: &mut Client,
    context: &str,
    user: &str,
    tenant: &str,
    key: &str,
    value: Option<&str>,
) -> Result<Vec<Row>, postgres::Error> {
    exec_as(
        app,
        context,
        Some(user),
        "SELECT multitenancy.setting_set($1, $2, $3::text::jsonb)",
        &[&tenant, &key, &value],
    )
}

fn triple(key: &str, value: &str, source: &str) -> (String, String, String) {
    (key.to_string(), value.to_string(), source.to_string())
}

/// A tenant on a plan reads the plan's features and limits (features first) through
/// `setting_get`; its own override wins; a NULL value removes the override; `setting_list`
/// shows where each value comes from; `feature_enabled` is true only for a JSON `true`. Another
/// tenant (another plan) sees none of it.
#[test]
fn settings_fall_back_to_the_plan_and_tenant_overrides_win() {
    let o = site("settings_plan");
    let mut su = o.db.superuser();
    su.batch_execute(
        r#"SELECT multitenancy.plan_set('pro', '{"rows": 100, "both": 1}', '{"sso": true, "both": 2}');
           SELECT multitenancy.tenant_change_plan('acme', 'pro');"#,
    )
    .unwrap();
    let plan: String =
        su.query_one("SELECT plan FROM multitenancy.tenants WHERE id = $1::text::uuid", &[&o.a]).unwrap().get(0);
    assert_eq!(plan, "pro", "ground truth: acme is on pro");
    assert_eq!(settings_of(&o, &o.a), "{}", "ground truth: acme has no overrides yet");
    let mut app = o.db.app();

    // From the plan.
    assert_eq!(
        settings_as(&mut app, "acme", OWNER_A, "sso"),
        (Some("true".into()), true),
        "sso from the plan's features"
    );
    assert_eq!(
        settings_as(&mut app, "acme", OWNER_A, "rows"),
        (Some("100".into()), false),
        "rows from the plan's limits"
    );
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "both"), (Some("2".into()), false), "features before limits");
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "missing"), (None, false), "an unknown key is NULL");
    assert_eq!(settings_as(&mut app, "acme", MEMBER_A, "sso"), (Some("true".into()), true), "a plain member reads too");
    assert_eq!(
        setting_list(&mut app, "acme", OWNER_A, "acme").unwrap(),
        [triple("both", "2", "plan"), triple("rows", "100", "plan"), triple("sso", "true", "plan")],
        "setting_list shows the plan's values"
    );

    // Overrides by the tenant's owner win over features and limits.
    setting_set(&mut app, "acme", OWNER_A, "acme", "sso", Some("false")).unwrap();
    setting_set(&mut app, "acme", OWNER_A, "acme", "rows", Some("5")).unwrap();
    setting_set(&mut app, "acme", OWNER_A, "acme", "beta", Some("true")).unwrap();
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "sso"), (Some("false".into()), false), "override beats the plan");
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "rows"), (Some("5".into()), false), "override beats a limit");
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "beta"), (Some("true".into()), true), "a tenant-only flag");
    assert_eq!(
        setting_list(&mut app, "acme", OWNER_A, "acme").unwrap(),
        [
            triple("beta", "true", "tenant"),
            triple("both", "2", "plan"),
            triple("rows", "5", "tenant"),
            triple("sso", "false", "tenant")
        ],
        "setting_list shows each key once, with its source"
    );
    let truth: bool = su
        .query_one(
            r#"SELECT settings = '{"sso": false, "rows": 5, "beta": true}'::jsonb FROM multitenancy.tenants WHERE id = $1::text::uuid"#,
            &[&o.a],
        )
        .unwrap()
        .get(0);
    assert!(truth, "ground truth: tenants.settings holds exactly the overrides, got {}", settings_of(&o, &o.a));
    assert_eq!(audit_count(&o, "setting_set"), 3, "one audit row per setting_set");

    // A NULL value removes the override: back to the plan.
    setting_set(&mut app, "acme", OWNER_A, "acme", "sso", None).unwrap();
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "sso"), (Some("true".into()), true), "back to the plan's value");
    let has_sso: bool = su
        .query_one("SELECT settings ? 'sso' FROM multitenancy.tenants WHERE id = $1::text::uuid", &[&o.a])
        .unwrap()
        .get(0);
    assert!(!has_sso, "ground truth: the override is gone, got {}", settings_of(&o, &o.a));
    assert_eq!(
        setting_list(&mut app, "acme", OWNER_A, "acme").unwrap(),
        [
            triple("beta", "true", "tenant"),
            triple("both", "2", "plan"),
            triple("rows", "5", "tenant"),
            triple("sso", "true", "plan")
        ],
    );

    // plan_set is an upsert: the tenant reads the plan's new limits.
    su.batch_execute(r#"SELECT multitenancy.plan_set('pro', '{"seats": 7}', '{"sso": true}')"#).unwrap();
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "seats"), (Some("7".into()), false), "the updated plan");
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "both"), (None, false), "a key the plan no longer has");

    // globex (another plan, no overrides) sees none of acme's plan or overrides.
    for key in ["sso", "beta", "rows", "seats"] {
        assert_eq!(settings_as(&mut app, "globex", OWNER_B, key), (None, false), "globex: {key}");
    }
    assert_eq!(settings_of(&o, &o.b), "{}", "ground truth: globex has no overrides");
}

/// Writing settings needs an admin of that tenant, in its context (42501 for a member, for no
/// user, and for another tenant's owner); reading is only ever for the current tenant — another
/// tenant's value cannot be read by switching the context to it, and its list is refused.
#[test]
fn settings_are_written_by_admins_and_read_only_for_the_current_tenant() {
    let o = site("settings_auth");
    let mut su = o.db.superuser();
    su.batch_execute(r#"SELECT multitenancy.setting_set('globex', 'color', '"red"')"#).unwrap();
    let globex_settings = settings_of(&o, &o.b);
    assert!(globex_settings.contains("red"), "ground truth: globex's override exists: {globex_settings}");
    let mut app = o.db.app();

    refused(
        setting_set(&mut app, "acme", MEMBER_A, "acme", "sso", Some("true")),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied"],
    );
    refused(
        exec_as(&mut app, "acme", None, "SELECT multitenancy.setting_set('acme', 'sso', 'true')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied", "user"],
    );
    refused(
        setting_set(&mut app, "acme", OWNER_A, "globex", "color", Some("\"blue\"")),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["admin", "permission denied", "tenant", "globex"],
    );
    assert_eq!(settings_of(&o, &o.a), "{}", "ground truth: acme's settings unchanged");
    assert_eq!(settings_of(&o, &o.b), globex_settings, "ground truth: globex's settings unchanged");

    // Reading: the current tenant only.
    assert_eq!(settings_as(&mut app, "acme", OWNER_A, "color"), (None, false), "acme has no color");
    assert_eq!(settings_as(&mut app, "globex", OWNER_B, "color"), (Some("\"red\"".into()), false), "positive control");
    refused(
        setting_list(&mut app, "acme", OWNER_A, "globex"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["permission denied", "tenant", "globex"],
    );
    // acme's owner pointing the context at globex: not a member, so no tenant at all.
    for how in ["SELECT set_config('multitenancy.tenant_id', $1, true)", "SELECT multitenancy.tenant_set($1)"] {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&OWNER_A]).unwrap();
        let result = tx
            .query_one(how, &[&o.b])
            .and_then(|_| tx.query_one("SELECT multitenancy.setting_get('color')::text", &[]));
        refused(result, &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, &["not a member", "member"]);
    }
    // No context at all.
    refused(
        app.query_one("SELECT multitenancy.setting_get('color')::text", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["no tenant context", "tenant"],
    );
    // Positive control: acme's owner writes acme's setting.
    setting_set(&mut app, "acme", OWNER_A, "acme", "color", Some("\"green\"")).unwrap();
    assert_eq!(settings_as(&mut app, "acme", MEMBER_A, "color"), (Some("\"green\"".into()), false));
    assert_eq!(settings_of(&o, &o.b), globex_settings, "globex's override untouched");
}
