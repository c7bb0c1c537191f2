//! Admin access: a support role that is a member of `multitenancy_admin` (LOGIN, NOSUPERUSER,
//! NOBYPASSRLS) is isolated exactly like the application role until it calls
//! `admin_begin(reason)` inside a transaction; then, for that transaction only (or until the
//! savepoint it was called in is rolled back), it reads every tenant's rows — read-only unless
//! `write => true` — and one audit row records who did it and why.
//!
//! Every check pairs what the support role sees with the ground truth read by the superuser.
use multitenancy_integration::expect_sqlstate_mentioning as refused;
use multitenancy_integration::*;
use std::sync::OnceLock;

/// The support role of these tests: LOGIN, NOSUPERUSER, NOBYPASSRLS, member of
/// `multitenancy_admin`, owns nothing.
const SUPPORT: &str = "mt_support";

static SUPPORT_ROLE: OnceLock<()> = OnceLock::new();

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// The [`Orders`] fixture (acme 3 rows, globex 2) plus [`SUPPORT`], with the same privileges on
/// `orders` as [`APP`]. Roles are cluster-wide: the role is created once per server (and
/// idempotently), after the first `CREATE EXTENSION` has created `multitenancy_admin`.
fn support_orders(tag: &str) -> Orders {
    let o = Orders::new(tag);
    let mut su = o.db.superuser();
    SUPPORT_ROLE.get_or_init(|| {
        o.db.superuser()
            .batch_execute(&format!(
                "DO $$ BEGIN
                     CREATE ROLE {SUPPORT} LOGIN NOSUPERUSER NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;
                 GRANT multitenancy_admin TO {SUPPORT};"
            ))
            .unwrap_or_else(|e| panic!("create {SUPPORT} and grant it multitenancy_admin: {e}"));
    });
    o.db.owner().batch_execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {SUPPORT}")).unwrap();
    // Ground truth: the support role has no attribute that would bypass RLS by itself, is an
    // admin, and the app role is not.
    let row = su
        .query_one(
            &format!(
                "SELECT rolsuper, rolbypassrls, rolcanlogin,
                        pg_has_role('{SUPPORT}'::name, 'multitenancy_admin'::name, 'MEMBER'),
                        pg_has_role('{APP}'::name, 'multitenancy_admin'::name, 'MEMBER')
                   FROM pg_roles WHERE rolname = '{SUPPORT}'"
            ),
            &[],
        )
        .unwrap();
    let (superuser, bypass, login, admin, app_admin): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert!(!superuser && !bypass && login, "{SUPPORT} must be a plain LOGIN role (no SUPERUSER, no BYPASSRLS)");
    assert!(admin, "{SUPPORT} must be a member of multitenancy_admin");
    assert!(!app_admin, "{APP} must not be a member of multitenancy_admin");
    assert!(o.true_count(&o.a) > 0 && o.true_count(&o.b) > 0, "ground truth: both tenants have rows");
    o
}

fn support(o: &Orders) -> Client {
    o.db.connect(SUPPORT)
}

/// Ground truth: every row of `orders`.
fn total(o: &Orders) -> i64 {
    count(&mut o.db.superuser(), "SELECT count(*) FROM orders")
}

/// Ground truth: `(session_role, action, details)` of every `admin_begin` audit row, by id.
fn admin_audit(o: &Orders) -> Vec<(String, String, String)> {
    o.db.superuser()
        .query(
            "SELECT session_role::text, action, coalesce(details::text, '') FROM multitenancy.audit_log
              WHERE action = 'admin_begin' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Count of rows of one tenant, as the client sees them.
fn seen_of(client: &mut impl postgres::GenericClient, tenant_id: &str) -> i64 {
    client.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&tenant_id]).unwrap().get(0)
}

// ---------------------------------------------------------------------------------------------
// Without admin_begin
// ---------------------------------------------------------------------------------------------

/// Membership in multitenancy_admin alone grants nothing: with acme's context the support role
/// sees acme's rows and registry entry only (globex's exist), cannot write globex's rows, and
/// without a context it is refused (28000) like the app.
#[test]
fn an_admin_role_without_admin_begin_is_isolated_like_the_app() {
    let o = support_orders("admin_isolated");
    let mut client = support(&o);

    let mut tx = begin_as(&mut client, "acme");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "positive control: acme's rows");
    assert_eq!(seen_of(&mut tx, &o.a), o.rows_a);
    assert_eq!(seen_of(&mut tx, &o.b), 0, "none of globex's rows");
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: globex's rows exist");
    let tenants: Vec<String> = tx
        .query("SELECT id::text FROM multitenancy.tenants ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, std::slice::from_ref(&o.a), "the registry shows only the context tenant");
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM multitenancy.tenants"), 2, "ground truth");
    refused(
        tx.execute("INSERT INTO orders (item, tenant_id) VALUES ('forged', $1::text::uuid)", &[&o.b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["row-level security"],
    );
    drop(tx);
    assert_eq!(o.true_count(&o.b), o.rows_b, "no row was written for globex");

    assert_no_context(&mut client, "multitenancy_admin member without admin_begin");
    let mut tx = client.transaction().unwrap();
    assert_no_context(&mut tx, "multitenancy_admin member in a transaction without admin_begin");
}

// ---------------------------------------------------------------------------------------------
// admin_begin refusals
// ---------------------------------------------------------------------------------------------

/// admin_begin refuses a role that is not in multitenancy_admin (42501, no audit row), a call
/// outside a transaction block (25P01) and an empty reason (22023); none of them leaves admin
/// mode behind.
#[test]
fn admin_begin_is_refused_to_non_admins_outside_transactions_and_without_reason() {
    let o = support_orders("admin_begin_refused");

    let mut app = o.db.app();
    let mut tx = app.transaction().unwrap();
    refused(
        tx.execute("SELECT multitenancy.admin_begin('ticket 0')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["multitenancy_admin", "permission denied"],
    );
    drop(tx);
    assert_eq!(admin_audit(&o), [], "a refused admin_begin writes no audit row");
    assert_no_context(&mut app, "after the app's refused admin_begin");

    let mut client = support(&o);
    refused(
        client.execute("SELECT multitenancy.admin_begin('ticket 1')", &[]),
        &SqlState::NO_ACTIVE_SQL_TRANSACTION,
        &["transaction"],
    );
    assert_no_context(&mut client, "after admin_begin outside a transaction block");

    let mut tx = client.transaction().unwrap();
    refused(tx.execute("SELECT multitenancy.admin_begin('')", &[]), &SqlState::INVALID_PARAMETER_VALUE, &["reason"]);
    drop(tx);
    assert_no_context(&mut client, "after admin_begin without a reason");
    assert_eq!(admin_audit(&o), [], "no audit row for any refused admin_begin");
}

// ---------------------------------------------------------------------------------------------
// Admin mode
// ---------------------------------------------------------------------------------------------

/// After admin_begin('ticket 1') the support role reads every tenant's rows and registry entries
/// without any tenant context, exactly what the superuser sees; the transaction is read-only
/// (INSERT, UPDATE and DELETE are 25006, and it cannot be made read-write again), and nothing
/// changed.
#[test]
fn admin_begin_reads_every_tenant_in_a_read_only_transaction() {
    let o = support_orders("admin_read");
    let mut su = o.db.superuser();
    let before = table_snapshot(&mut su, "orders");
    let mut client = support(&o);

    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 1')", &[]).unwrap();
    let context: Option<String> =
        tx.query_one("SELECT multitenancy.current_tenant_id_or_null()::text", &[]).unwrap().get(0);
    assert_eq!(context, None, "no tenant context is set");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), total(&o), "admin mode: every row");
    assert_eq!(seen_of(&mut tx, &o.a), o.true_count(&o.a), "admin mode: acme's rows");
    assert_eq!(seen_of(&mut tx, &o.b), o.true_count(&o.b), "admin mode: globex's rows");
    assert_eq!(
        count(&mut tx, "SELECT count(*) FROM multitenancy.tenants"),
        count(&mut su, "SELECT count(*) FROM multitenancy.tenants"),
        "admin mode: every tenant of the registry"
    );
    let read_only: String = tx.query_one("SHOW transaction_read_only", &[]).unwrap().get(0);
    assert_eq!(read_only, "on", "admin_begin without write makes the transaction read-only");
    tx.commit().unwrap();

    let statements = [
        format!("INSERT INTO orders (item, tenant_id) VALUES ('support', '{}')", o.b),
        "UPDATE orders SET amount = amount + 1".to_string(),
        format!("DELETE FROM orders WHERE tenant_id = '{}'", o.a),
    ];
    for statement in &statements {
        let mut tx = client.transaction().unwrap();
        tx.execute("SELECT multitenancy.admin_begin('ticket 1')", &[]).unwrap();
        refused(tx.batch_execute(statement), &SqlState::READ_ONLY_SQL_TRANSACTION, &["read-only transaction"]);
    }
    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 1')", &[]).unwrap();
    refused(
        tx.batch_execute("SET LOCAL transaction_read_only = off"),
        &SqlState::ACTIVE_SQL_TRANSACTION,
        &["read-write"],
    );
    drop(tx);
    assert_eq!(table_snapshot(&mut su, "orders"), before, "ground truth: nothing changed");
}

/// admin_begin('ticket 2', write => true) may write any tenant's rows with an explicit
/// tenant_id; the next transaction is isolated again (no context: 28000; acme's context: acme's
/// rows only, globex's rows refused).
#[test]
fn admin_begin_with_write_writes_any_tenant_and_ends_with_the_transaction() {
    let o = support_orders("admin_write");
    let acme_row: i64 =
        o.db.superuser()
            .query_one("SELECT min(id) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.a])
            .unwrap()
            .get(0);
    let mut client = support(&o);

    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 2', write => true)", &[]).unwrap();
    let inserted = tx
        .execute("INSERT INTO orders (item, tenant_id) VALUES ('support-fix', $1::text::uuid)", &[&o.b])
        .unwrap_or_else(|e| panic!("admin mode with write: INSERT for globex: {e}"));
    assert_eq!(inserted, 1);
    let updated = tx.execute("UPDATE orders SET amount = 42 WHERE id = $1", &[&acme_row]).unwrap();
    assert_eq!(updated, 1, "admin mode with write: UPDATE of acme's row");
    tx.commit().unwrap();

    let mut su = o.db.superuser();
    assert_eq!(o.true_count(&o.b), o.rows_b + 1, "ground truth: the row was written");
    let tenant: String =
        su.query_one("SELECT tenant_id::text FROM orders WHERE item = 'support-fix'", &[]).unwrap().get(0);
    assert_eq!(tenant, o.b, "ground truth: as globex's row");
    let amount: i32 = su.query_one("SELECT amount FROM orders WHERE id = $1", &[&acme_row]).unwrap().get(0);
    assert_eq!(amount, 42, "ground truth: acme's row was updated");

    // The next transaction: isolated again.
    assert_no_context(&mut client, "the transaction after admin mode");
    let mut tx = begin_as(&mut client, "acme");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "acme's rows only");
    assert_eq!(seen_of(&mut tx, &o.b), 0, "none of globex's rows");
    refused(
        tx.execute("INSERT INTO orders (item, tenant_id) VALUES ('again', $1::text::uuid)", &[&o.b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["row-level security"],
    );
    drop(tx);
    assert_eq!(o.true_count(&o.b), o.rows_b + 1, "ground truth: no second row for globex");
}

/// admin_begin inside a savepoint that is rolled back ends admin mode (and its read-only
/// state): the transaction continues isolated. A released savepoint keeps admin mode (the
/// positive control).
#[test]
fn a_rolled_back_savepoint_ends_admin_mode() {
    let o = support_orders("admin_savepoint");
    let mut client = support(&o);

    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 3')", &[]).unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), total(&o), "admin mode inside the savepoint");
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();

    tx.batch_execute("SAVEPOINT probe").unwrap();
    assert_no_context(&mut tx, "after rolling back the savepoint of admin_begin");
    tx.batch_execute("ROLLBACK TO SAVEPOINT probe").unwrap();
    tx.query_one("SELECT multitenancy.tenant_set('acme')", &[]).unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "acme's rows only");
    assert_eq!(seen_of(&mut tx, &o.b), 0, "none of globex's rows");
    let read_only: String = tx.query_one("SHOW transaction_read_only", &[]).unwrap().get(0);
    assert_eq!(read_only, "off", "the read-only state of admin mode was rolled back too");
    tx.execute("INSERT INTO orders (item) VALUES ('after-savepoint')", &[]).unwrap();
    tx.commit().unwrap();
    assert_eq!(o.true_count(&o.a), o.rows_a + 1, "ground truth: the insert landed, as acme's");
    assert_eq!(o.true_count(&o.b), o.rows_b);

    // Positive control: a released savepoint keeps admin mode.
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 4')", &[]).unwrap();
    tx.batch_execute("RELEASE SAVEPOINT s").unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), total(&o), "admin mode survives RELEASE");
    tx.commit().unwrap();
    assert_no_context(&mut client, "after the transaction");
}

/// Every committed admin_begin leaves exactly one audit row: action 'admin_begin', the session
/// role, and the reason.
#[test]
fn admin_begin_writes_one_audit_row_with_reason_and_role() {
    let o = support_orders("admin_audit");
    assert_eq!(admin_audit(&o), [], "no admin_begin audit rows yet");
    let mut client = support(&o);

    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 1')", &[]).unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), total(&o));
    tx.commit().unwrap();
    let rows = admin_audit(&o);
    assert_eq!(rows.len(), 1, "exactly one audit row for one admin_begin: {rows:?}");
    let (role, action, details) = &rows[0];
    assert_eq!(role, SUPPORT, "the session role is recorded");
    assert_eq!(action, "admin_begin");
    assert!(details.contains("ticket 1"), "the reason is recorded in details: {details}");

    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('ticket 2', write => true)", &[]).unwrap();
    tx.commit().unwrap();
    let rows = admin_audit(&o);
    assert_eq!(rows.len(), 2, "one more audit row: {rows:?}");
    assert_eq!(rows[1].0, SUPPORT);
    assert!(rows[1].2.contains("ticket 2"), "the second reason: {}", rows[1].2);
    assert!(!rows[1].2.contains("ticket 1"), "each row has its own reason: {}", rows[1].2);
}

/// Admin mode is folded into plans (`_admin_mode()` is IMMUTABLE), so a cached plan must never
/// cross between the two modes: a generic plan made before `admin_begin` must not keep the
/// admin isolated, and — what matters for security — one made in admin mode must not keep
/// showing every tenant after the transaction. Removing either plan cache reset fails this.
#[test]
fn cached_plans_do_not_cross_into_or_out_of_admin_mode() {
    let o = support_orders("admin_plan_cache");
    let mut s = support(&o);
    s.batch_execute("SET plan_cache_mode = force_generic_plan; PREPARE q AS SELECT count(*) FROM orders").unwrap();
    let run = |s: &mut Client, setup: &str| -> i64 {
        let mut tx = s.transaction().unwrap();
        tx.batch_execute(setup).unwrap();
        let n: i64 = tx.query_one("EXECUTE q", &[]).unwrap().get(0);
        tx.commit().unwrap();
        n
    };
    let acme = o.true_count(&o.a);
    let all = total(&o);
    assert!(all > acme, "ground truth: another tenant's rows exist");
    // Twice isolated (the generic plan is made and then reused), then admin, then isolated again.
    assert_eq!(run(&mut s, "SELECT multitenancy.tenant_set('acme')"), acme);
    assert_eq!(run(&mut s, "SELECT multitenancy.tenant_set('acme')"), acme);
    assert_eq!(run(&mut s, "SELECT multitenancy.admin_begin('plan cache test')"), all);
    assert_eq!(run(&mut s, "SELECT multitenancy.admin_begin('plan cache test, again')"), all);
    assert_eq!(
        run(&mut s, "SELECT multitenancy.tenant_set('acme')"),
        acme,
        "an admin-mode plan outlived its transaction"
    );
    // The same through a rolled-back savepoint.
    {
        let mut tx = s.transaction().unwrap();
        tx.batch_execute(
            "SELECT multitenancy.tenant_set('acme'); SAVEPOINT a; SELECT multitenancy.admin_begin('savepoint')",
        )
        .unwrap();
        assert_eq!(tx.query_one("EXECUTE q", &[]).unwrap().get::<_, i64>(0), all);
        tx.batch_execute("ROLLBACK TO SAVEPOINT a").unwrap();
        assert_eq!(tx.query_one("EXECUTE q", &[]).unwrap().get::<_, i64>(0), acme, "admin mode outlived its savepoint");
        tx.rollback().unwrap();
    }
}

/// Admin mode does not reset which tenant the transaction acts for: a support role that acted
/// for acme, then took admin mode for globex in a savepoint and rolled it back, cannot then act
/// for globex in the same transaction (28000), so acme's pending row never commits beside a
/// globex row written outside admin mode. Fails if admin mode's tenant_set overwrites the
/// transaction's tenant (review finding F4, issue 18).
#[test]
fn admin_mode_in_a_rolled_back_savepoint_does_not_switch_the_transaction_tenant() {
    let o = support_orders("admin_one_tenant");
    let mut support = support(&o);
    let before = total(&o);
    support
        .batch_execute(
            "BEGIN; SELECT multitenancy.tenant_set('acme'); INSERT INTO orders (item) VALUES ('adm-mixed-a');
             SAVEPOINT s; SELECT multitenancy.admin_begin('ticket 42'); SELECT multitenancy.tenant_set('globex');
             ROLLBACK TO s;",
        )
        .unwrap();
    let error = expect_sqlstate(
        support.batch_execute("SELECT multitenancy.tenant_set('globex')"),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("cannot switch"), "{}", error.message());
    support.batch_execute("COMMIT").unwrap();
    assert_eq!(total(&o), before, "neither tenant's row was committed");
    // Positive control: acme alone, in its own transaction, commits.
    support
        .batch_execute("BEGIN; SELECT multitenancy.tenant_set('acme'); INSERT INTO orders (item) VALUES ('a'); COMMIT")
        .unwrap();
    assert_eq!(total(&o), before + 1);
}
