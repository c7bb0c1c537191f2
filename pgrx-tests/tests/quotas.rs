//! Quotas and usage (issue 6): exact per-tenant counters of rows and bytes in tenant-enabled
//! tables, limits from plans and per-tenant overrides (`quota_set` / `quota_reset`), per-table
//! limits (`rows:<schema>.<table>`, partitions included), the members limit, metered counters
//! (`usage_record` / `usage_get`), the reports (`quota_check`, `tenant_stats`, `usage_drift`),
//! who may do what, and how the counters follow the tables through enable, TRUNCATE, disable,
//! DROP, the DDL guard and `tenant_purge`.
//!
//! Application writes go through [`APP`] (NOSUPERUSER, NOBYPASSRLS, owns nothing) with a tenant
//! context; plans, overrides and ground truth are the superuser's. Every refusal is checked with
//! its SQLSTATE and its message (for 53400 the exact text of the contract:
//! `quota "<key>" of tenant "<slug>" exceeded: <used> used, <added> more requested, limit <n>`),
//! and next to it the ground truth read as superuser (the rows and counters are unchanged), with
//! a positive control (another tenant, or the same write once capacity is free) so that every
//! test could fail.
use multitenancy_integration::expect_sqlstate_mentioning as refused;
use multitenancy_integration::*;

// ---------------------------------------------------------------------------------------------
// End users (values of multitenancy.user_id)
// ---------------------------------------------------------------------------------------------

const U_OWNER: &str = "11111111-1111-4111-8111-111111111111";
const U_SECOND: &str = "22222222-2222-4222-8222-222222222222";
const U_THIRD: &str = "33333333-3333-4333-8333-333333333333";
const U_OWNER2: &str = "44444444-4444-4444-8444-444444444444";
const U_MEMBER2: &str = "55555555-5555-4555-8555-555555555555";

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// A database with plan `small` (limits `limits`, a JSON object), tenant acme created on it with
/// `tenant_create(name, slug, 'small')`, tenant globex created on the default plan and moved to
/// `small` with `tenant_change_plan`, and two empty enabled tables `orders` and `notes` that
/// [`APP`] may read and write.
struct Shop {
    db: TestDb,
    /// Ids of acme and globex.
    a: String,
    b: String,
}

fn shop(tag: &str, limits: &str) -> Shop {
    let db = TestDb::new(tag);
    let mut su = db.superuser();
    set_plan(&mut su, "small", limits);
    let a: String =
        su.query_one("SELECT multitenancy.tenant_create('Acme', 'acme', 'small')::text", &[]).unwrap().get(0);
    let b = db.tenant("Globex", "globex");
    su.execute("SELECT multitenancy.tenant_change_plan('globex', 'small')", &[]).unwrap();
    let plans: Vec<String> = su
        .query("SELECT plan FROM multitenancy.tenants ORDER BY slug", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(plans, ["small", "small"], "ground truth: both tenants are on plan small");
    create_orders(&db);
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);
             SELECT multitenancy.tenant_enable('notes');
             GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {APP};"
        ))
        .unwrap();
    Shop { db, a, b }
}

/// Make the tenants (slugs) counted: only a `rows`, `bytes` or `rows:<table>` limit keeps
/// counters (without one, usage is counted from the tables when asked). A limit no test reaches.
fn counted(su: &mut Client, slugs: &[&str]) {
    for slug in slugs {
        su.execute("SELECT multitenancy.quota_set($1, 'rows', 1000000000)", &[slug]).unwrap();
    }
    // Counters now rather than at each tenant's first write.
    su.execute("SELECT count(*) FROM multitenancy.usage_recompute()", &[]).unwrap();
}

/// `plan_set(name, limits, '{}')` as the DBA.
#[track_caller]
fn set_plan(su: &mut Client, name: &str, limits: &str) {
    su.execute("SELECT multitenancy.plan_set($1, $2::text::jsonb, '{}'::jsonb)", &[&name, &limits])
        .unwrap_or_else(|e| panic!("plan_set({name}, {limits}): {e}"));
}

/// `quota_set(tenant, key, quota)` as the DBA (`None`: unlimited).
#[track_caller]
fn quota_set(su: &mut Client, tenant: &str, key: &str, quota: Option<i64>) {
    su.execute("SELECT multitenancy.quota_set($1, $2, $3)", &[&tenant, &key, &quota])
        .unwrap_or_else(|e| panic!("quota_set({tenant}, {key}, {quota:?}): {e}"));
}

/// One statement with `slug`'s context, in a transaction of its own, committed if it succeeds
/// (rolled back otherwise).
fn run_as(app: &mut Client, slug: &str, sql: &str) -> Result<u64, postgres::Error> {
    let mut tx = begin_as(app, slug);
    let n = tx.execute(sql, &[])?;
    tx.commit()?;
    Ok(n)
}

/// One query returning one row, with `slug`'s context, in a transaction of its own.
fn one_as(app: &mut Client, slug: &str, sql: &str) -> Result<Row, postgres::Error> {
    let mut tx = begin_as(app, slug);
    let row = tx.query_one(sql, &[])?;
    tx.commit()?;
    Ok(row)
}

/// `n` orders in one INSERT statement, as [`APP`] with `slug`'s context.
fn add_orders(app: &mut Client, slug: &str, n: i64) -> Result<u64, postgres::Error> {
    run_as(app, slug, &format!("INSERT INTO orders (item) SELECT 'item-' || g FROM generate_series(1, {n}) g"))
}

/// Delete one order (the oldest visible one), as [`APP`] with `slug`'s context.
fn delete_one_order(app: &mut Client, slug: &str) {
    let n = run_as(app, slug, "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)").unwrap();
    assert_eq!(n, 1, "{slug} deletes one of its orders");
}

/// `quota_check(key)` as (used, quota, remaining) on `client`, which has a tenant context.
#[track_caller]
fn check_in(client: &mut impl postgres::GenericClient, key: &str) -> (i64, Option<i64>, Option<i64>) {
    let row = client
        .query_one("SELECT used, quota, remaining FROM multitenancy.quota_check($1)", &[&key])
        .unwrap_or_else(|e| panic!("quota_check({key}): {e}"));
    (row.get(0), row.get(1), row.get(2))
}

/// `quota_check(key)` as [`APP`] with `slug`'s context, in a transaction of its own.
#[track_caller]
fn check(app: &mut Client, slug: &str, key: &str) -> (i64, Option<i64>, Option<i64>) {
    let mut tx = begin_as(app, slug);
    let result = check_in(&mut tx, key);
    tx.commit().unwrap();
    result
}

/// The overrides of a tenant in `multitenancy.quotas` as (key, quota), by key (superuser).
fn overrides(su: &mut Client, tenant_id: &str) -> Vec<(String, Option<i64>)> {
    su.query("SELECT key, quota FROM multitenancy.quotas WHERE tenant_id = $1::text::uuid ORDER BY key", &[&tenant_id])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Ground truth (superuser): rows of a tenant in a table (its partitions included) and the sum of
/// `multitenancy.row_bytes` over them.
fn actual(su: &mut Client, table: &str, tenant_id: &str) -> (i64, i64) {
    let row = su
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(multitenancy.row_bytes(t)), 0)::bigint
                   FROM {table} t WHERE tenant_id = $1::text::uuid"
            ),
            &[&tenant_id],
        )
        .unwrap_or_else(|e| panic!("ground truth of {table}: {e}"));
    (row.get(0), row.get(1))
}

/// Rows of a tenant in a table (superuser).
fn rows_of(su: &mut Client, table: &str, tenant_id: &str) -> i64 {
    actual(su, table, tenant_id).0
}

/// The totals row of a tenant in `multitenancy.table_usage` (relid 0) as (row_count,
/// byte_count), read as superuser; `None` when the tenant has no row.
fn totals(su: &mut Client, tenant_id: &str) -> Option<(i64, i64)> {
    su.query_opt("SELECT row_count, byte_count FROM multitenancy.table_usage WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass", &[&tenant_id])
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// `multitenancy.table_usage` of a tenant as (table, row_count, byte_count), by table (not the
/// totals row), read as superuser.
fn per_table(su: &mut Client, tenant_id: &str) -> Vec<(String, i64, i64)> {
    su.query(
        "SELECT relid::text, row_count, byte_count FROM multitenancy.table_usage
          WHERE tenant_id = $1::text::uuid AND relid::oid <> 0 ORDER BY 1",
        &[&tenant_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// `table_usage` rows (any tenant) of a relation given by oid (as text): it may have been dropped.
fn counters_of_oid(su: &mut Client, oid: &str) -> i64 {
    count(su, &format!("SELECT count(*) FROM multitenancy.table_usage WHERE relid::oid = '{oid}'::oid"))
}

/// The oid of a relation, as text (to find its counters after it is dropped).
fn oid_of(su: &mut Client, table: &str) -> String {
    su.query_one("SELECT $1::text::regclass::oid::text", &[&table]).unwrap().get(0)
}

/// `usage_drift()` as the DBA: empty when every counter matches the tables.
#[track_caller]
fn assert_no_drift(su: &mut Client, situation: &str) {
    let drift: Vec<String> = su
        .query("SELECT d::text FROM multitenancy.usage_drift() d", &[])
        .unwrap_or_else(|e| panic!("usage_drift(): {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(drift.is_empty(), "{situation}: the counters must match the tables, usage_drift() = {drift:#?}");
}

/// (user_id, role) of every member of a tenant, by user id (superuser).
fn members_of(su: &mut Client, tenant_id: &str) -> Vec<(String, String)> {
    su.query(
        "SELECT user_id::text, role FROM multitenancy.members WHERE tenant_id = $1::text::uuid ORDER BY user_id",
        &[&tenant_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn member_add(tenant: &str, user: &str, role: &str) -> String {
    format!("SELECT multitenancy.member_add('{tenant}', '{user}', '{role}')")
}

/// (id, action, tenant_id) of every audit row (superuser).
fn audit_rows(su: &mut Client) -> Vec<(i64, String, Option<String>)> {
    su.query("SELECT id, action, tenant_id::text FROM multitenancy.audit_log ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Exactly one audit row was added since `before`, with this action and tenant.
#[track_caller]
fn one_new_audit_row(su: &mut Client, before: &[(i64, String, Option<String>)], action: &str, tenant_id: &str) {
    let after = audit_rows(su);
    assert_eq!(&after[..before.len().min(after.len())], before, "{action}: earlier audit rows are unchanged");
    let new = &after[before.len().min(after.len())..];
    assert_eq!(new.len(), 1, "{action}: exactly one new audit row, got {new:?}");
    assert_eq!(new[0].1, action, "the new audit row's action");
    assert_eq!(new[0].2.as_deref(), Some(tenant_id), "{action}: the audit row names the tenant");
}

/// A digest of a registry table's rows (superuser).
fn digest(su: &mut Client, table: &str) -> (i64, Option<String>) {
    let row = su
        .query_one(&format!("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"), &[])
        .unwrap();
    (row.get(0), row.get(1))
}

/// The counting triggers of a table as `name=tgenabled`, by name (superuser).
fn usage_triggers(su: &mut Client, table: &str) -> String {
    su.query_one(
        "SELECT coalesce(string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname), '')
           FROM pg_trigger WHERE tgrelid = $1::text::regclass
            AND tgname IN ('multitenancy_usage_row', 'multitenancy_usage_statement')",
        &[&table],
    )
    .unwrap()
    .get(0)
}

const BOTH_TRIGGERS_ON: &str = "multitenancy_usage_row=O,multitenancy_usage_statement=O";

// ---------------------------------------------------------------------------------------------
// 1-3. The rows limit: refusal, freeing by DELETE, freeing by ROLLBACK
// ---------------------------------------------------------------------------------------------

#[test]
fn the_plans_rows_limit_refuses_the_row_past_it_and_only_for_that_tenant() {
    let s = shop("quota_rows_plan", r#"{"rows": 3}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();

    for i in 1..=3 {
        add_orders(&mut app, "acme", 1).unwrap_or_else(|e| panic!("acme's order {i} of 3 fits the plan: {e}"));
    }
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3);

    // The fourth: refused, with the tenant, the key, what is used and the limit.
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 3, 1, 3);
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3, "ground truth: the refused row was not inserted");
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(3), "and not counted");
    // Refused in any table: the limit is on the tenant's rows in all of them.
    expect_quota_exceeded(run_as(&mut app, "acme", "INSERT INTO notes (body) VALUES ('n')"), "rows", "acme", 3, 1, 3);
    assert_eq!(rows_of(&mut su, "notes", &s.a), 0);

    // One unit free: a multi-row INSERT of two rows is refused as a whole.
    delete_one_order(&mut app, "acme");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2);
    expect_quota_exceeded(
        run_as(&mut app, "acme", "INSERT INTO orders (item) VALUES ('two-a'), ('two-b')"),
        "rows",
        "acme",
        2,
        2,
        3,
    );
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2, "ground truth: neither row of the refused statement was inserted");
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM orders WHERE item LIKE 'two-%' AND tenant_id = '{}'", s.a)),
        0
    );
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(2));
    // Positive control: the one free unit can be used.
    add_orders(&mut app, "acme", 1).expect("one row fits the one free unit");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3);

    // Globex, on the same plan, is not affected by acme's usage: it gets its own 3 rows...
    assert_eq!(rows_of(&mut su, "orders", &s.b), 0);
    add_orders(&mut app, "globex", 3).expect("globex's 3 rows fit the plan although acme is full");
    assert_eq!(rows_of(&mut su, "orders", &s.b), 3);
    // ... and its own refusal, naming globex.
    expect_quota_exceeded(add_orders(&mut app, "globex", 1), "rows", "globex", 3, 1, 3);
    assert_eq!(rows_of(&mut su, "orders", &s.b), 3);
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3, "acme's rows are untouched by globex's writes");
    assert_no_drift(&mut su, "after the refusals");
}

#[test]
fn deleting_rows_frees_capacity_and_quota_check_follows_every_step() {
    let s = shop("quota_delete_frees", r#"{"rows": 3}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();

    assert_eq!(check(&mut app, "acme", "rows"), (0, Some(3), Some(3)), "nothing used yet");
    for used in 1..=3 {
        add_orders(&mut app, "acme", 1).unwrap();
        assert_eq!(check(&mut app, "acme", "rows"), (used, Some(3), Some(3 - used)));
    }
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 3, 1, 3);
    assert_eq!(check(&mut app, "acme", "rows"), (3, Some(3), Some(0)), "a refused insert uses nothing");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3);

    delete_one_order(&mut app, "acme");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2, "ground truth: the row is gone");
    assert_eq!(check(&mut app, "acme", "rows"), (2, Some(3), Some(1)), "the DELETE freed one unit");

    add_orders(&mut app, "acme", 1).expect("after the DELETE, the insert fits");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3);
    assert_eq!(check(&mut app, "acme", "rows"), (3, Some(3), Some(0)));
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 3, 1, 3);

    // Within one transaction, quota_check sees the transaction's own writes.
    let mut tx = begin_as(&mut app, "acme");
    tx.execute("DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)", &[]).unwrap();
    assert_eq!(check_in(&mut tx, "rows"), (2, Some(3), Some(1)));
    tx.execute("INSERT INTO orders (item) VALUES ('again')", &[]).unwrap();
    assert_eq!(check_in(&mut tx, "rows"), (3, Some(3), Some(0)));
    tx.commit().unwrap();

    // Globex's usage is its own.
    assert_eq!(check(&mut app, "globex", "rows"), (0, Some(3), Some(3)));
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(3));
    assert_no_drift(&mut su, "after deletes and inserts");
}

/// A transaction's later statements are checked in memory against what its first statement
/// counted (src/quotas.rs): many single-row statements in one transaction stop exactly at the
/// limit, across tables, and what they counted is written once at commit.
#[test]
fn the_statements_of_one_transaction_count_against_each_other() {
    let s = shop("quota_one_txn", r#"{"rows": 5}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    add_orders(&mut app, "acme", 1).unwrap();
    {
        let mut tx = begin_as(&mut app, "acme");
        tx.execute("INSERT INTO orders (item) VALUES ('second')", &[]).unwrap();
        tx.execute("INSERT INTO notes (body) VALUES ('third')", &[]).unwrap();
        tx.execute("INSERT INTO orders (item) VALUES ('fourth')", &[]).unwrap();
        assert_eq!(check_in(&mut tx, "rows"), (4, Some(5), Some(1)), "quota_check sees the transaction's own rows");
        tx.execute("INSERT INTO notes (body) VALUES ('fifth')", &[]).unwrap();
        expect_quota_exceeded(tx.execute("INSERT INTO orders (item) VALUES ('sixth')", &[]), "rows", "acme", 5, 1, 5);
    }
    // The refusal aborted that transaction: nothing of it stays.
    assert_eq!(rows_of(&mut su, "orders", &s.a) + rows_of(&mut su, "notes", &s.a), 1);
    assert_no_drift(&mut su, "after the aborted transaction");
    {
        let mut tx = begin_as(&mut app, "acme");
        for i in 0..4 {
            tx.execute("INSERT INTO notes (body) VALUES ($1)", &[&format!("note {i}")]).unwrap();
        }
        expect_quota_exceeded(
            tx.execute("INSERT INTO notes (body) VALUES ('one too many')", &[]),
            "rows",
            "acme",
            5,
            1,
            5,
        );
        tx.rollback().unwrap();
    }
    // A loop of 1000 single-row statements in one transaction, limit 1000: all fit, one more
    // does not, and the counters equal the table after the commit.
    quota_set(&mut su, "acme", "rows", Some(1000));
    {
        let mut tx = begin_as(&mut app, "acme");
        tx.batch_execute(
            "DO $$ BEGIN FOR i IN 2..1000 LOOP INSERT INTO notes (body) VALUES ('n' || i); END LOOP; END $$",
        )
        .unwrap();
        expect_quota_exceeded(
            tx.execute("INSERT INTO notes (body) VALUES ('1001')", &[]),
            "rows",
            "acme",
            1000,
            1,
            1000,
        );
    }
    {
        let mut tx = begin_as(&mut app, "acme");
        tx.batch_execute(
            "DO $$ BEGIN FOR i IN 2..1000 LOOP INSERT INTO notes (body) VALUES ('n' || i); END LOOP; END $$",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(rows_of(&mut su, "orders", &s.a) + rows_of(&mut su, "notes", &s.a), 1000);
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(1000));
    assert_no_drift(&mut su, "after 999 statements in one transaction");
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 1000, 1, 1000);
}

#[test]
fn rolled_back_inserts_give_their_capacity_back() {
    let s = shop("quota_rollback", r#"{"rows": 3}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    add_orders(&mut app, "acme", 2).unwrap();

    // The last unit, taken in a transaction that rolls back.
    let mut tx = begin_as(&mut app, "acme");
    tx.execute("INSERT INTO orders (item) VALUES ('rolled back')", &[]).unwrap();
    assert_eq!(check_in(&mut tx, "rows"), (3, Some(3), Some(0)), "inside the transaction the unit is taken");
    tx.rollback().unwrap();
    assert_eq!(check(&mut app, "acme", "rows"), (2, Some(3), Some(1)), "after ROLLBACK the unit is free again");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2);
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(2), "ground truth: the counter was rolled back too");
    add_orders(&mut app, "acme", 1).expect("the freed unit can be used");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 3);

    // Savepoints: free one unit, then in one transaction take it in a savepoint and roll that back.
    delete_one_order(&mut app, "acme");
    let mut tx = begin_as(&mut app, "acme");
    {
        let mut sp = tx.savepoint("last_unit").unwrap();
        sp.execute("INSERT INTO orders (item) VALUES ('in a savepoint')", &[]).unwrap();
        assert_eq!(check_in(&mut sp, "rows"), (3, Some(3), Some(0)));
        sp.rollback().unwrap();
    }
    assert_eq!(check_in(&mut tx, "rows"), (2, Some(3), Some(1)), "ROLLBACK TO SAVEPOINT gives the unit back");
    tx.execute("INSERT INTO orders (item) VALUES ('kept')", &[]).expect("the unit the savepoint gave back");
    // The refused statement inside a savepoint; the transaction goes on.
    {
        let mut sp = tx.savepoint("over").unwrap();
        expect_quota_exceeded(
            sp.execute("INSERT INTO orders (item) VALUES ('too many')", &[]),
            "rows",
            "acme",
            3,
            1,
            3,
        );
        sp.rollback().unwrap();
    }
    assert_eq!(check_in(&mut tx, "rows"), (3, Some(3), Some(0)), "the refusal counted nothing");
    tx.execute("DELETE FROM orders WHERE item = 'kept'", &[]).unwrap();
    tx.execute("INSERT INTO orders (item) VALUES ('after the refusal')", &[])
        .expect("the same transaction continues after ROLLBACK TO SAVEPOINT");
    tx.commit().unwrap();

    let items: Vec<String> = su
        .query("SELECT item FROM orders WHERE tenant_id = $1::text::uuid ORDER BY id", &[&s.a])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(items.len(), 3, "ground truth: acme has exactly 3 rows: {items:?}");
    assert!(
        items.iter().all(|i| i != "too many" && i != "in a savepoint" && i != "rolled back" && i != "kept"),
        "{items:?}"
    );
    assert!(items.contains(&"after the refusal".to_string()), "{items:?}");
    assert_eq!(totals(&mut su, &s.a).map(|t| t.0), Some(3));
    assert_eq!(check(&mut app, "acme", "rows"), (3, Some(3), Some(0)));
    assert_no_drift(&mut su, "after rollbacks");
}

// ---------------------------------------------------------------------------------------------
// 4. The bytes limit
// ---------------------------------------------------------------------------------------------

#[test]
fn the_bytes_limit_refuses_growing_inserts_and_updates_and_allows_shrinking() {
    let s = shop("quota_bytes", "{}");
    let mut su = s.db.superuser();
    counted(&mut su, &["acme", "globex"]);
    let mut app = s.db.app();
    let ten = "x".repeat(10);

    // The size of one row, as the extension counts it, computed from the table.
    run_as(&mut app, "acme", &format!("INSERT INTO notes (body) VALUES ('{ten}')")).unwrap();
    let (rows, one) = actual(&mut su, "notes", &s.a);
    assert_eq!(rows, 1);
    assert!(one > 10, "a row with a 10-character text counts more than 10 bytes, got {one}");
    assert_eq!(totals(&mut su, &s.a), Some((1, one)), "the counter is row_bytes of the row");
    let first: i64 = su.query_one("SELECT id FROM notes WHERE tenant_id = $1::text::uuid", &[&s.a]).unwrap().get(0);

    // Room for exactly one more row of the same shape.
    quota_set(&mut su, "acme", "bytes", Some(2 * one));
    assert_eq!(check(&mut app, "acme", "bytes"), (one, Some(2 * one), Some(one)));
    run_as(&mut app, "acme", &format!("INSERT INTO notes (body) VALUES ('{ten}')")).expect("one more row fits exactly");
    assert_eq!(actual(&mut su, "notes", &s.a), (2, 2 * one), "ground truth: two rows of the same size");
    assert_eq!(check(&mut app, "acme", "bytes"), (2 * one, Some(2 * one), Some(0)));

    // The next one does not.
    expect_quota_exceeded(
        run_as(&mut app, "acme", &format!("INSERT INTO notes (body) VALUES ('{ten}')")),
        "bytes",
        "acme",
        2 * one,
        one,
        2 * one,
    );
    assert_eq!(actual(&mut su, "notes", &s.a), (2, 2 * one), "ground truth: nothing inserted");

    // An UPDATE that grows a text column by 4 bytes past the limit: refused, the row unchanged.
    expect_quota_exceeded(
        run_as(&mut app, "acme", &format!("UPDATE notes SET body = body || 'yyyy' WHERE id = {first}")),
        "bytes",
        "acme",
        2 * one,
        4,
        2 * one,
    );
    let body: String = su.query_one("SELECT body FROM notes WHERE id = $1", &[&first]).unwrap().get(0);
    assert_eq!(body, ten, "ground truth: the refused UPDATE left the row as it was");
    assert_eq!(totals(&mut su, &s.a), Some((2, 2 * one)));

    // Shrinking is always allowed.
    let n = run_as(&mut app, "acme", &format!("UPDATE notes SET body = 'xxxxx' WHERE id = {first}")).unwrap();
    assert_eq!(n, 1);
    let (rows, bytes) = actual(&mut su, "notes", &s.a);
    assert_eq!((rows, bytes), (2, 2 * one - 5), "ground truth: the row shrank by 5 bytes");

    // The reports equal sum(row_bytes) computed directly.
    assert_eq!(totals(&mut su, &s.a), Some((2, bytes)));
    assert_eq!(per_table(&mut su, &s.a), [("notes".to_string(), 2, bytes)]);
    assert_eq!(check(&mut app, "acme", "bytes"), (bytes, Some(2 * one), Some(5)));
    {
        let mut tx = begin_as(&mut app, "acme");
        let row =
            tx.query_one("SELECT rows, bytes FROM multitenancy.tenant_stats() WHERE table_name IS NULL", &[]).unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, bytes), "tenant_stats() totals");
        let row = tx
            .query_one("SELECT rows, bytes FROM multitenancy.tenant_stats() WHERE table_name = 'notes'::regclass", &[])
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, bytes), "tenant_stats() for notes");
    }

    // Growing back within the freed bytes is allowed (up to the limit exactly).
    run_as(&mut app, "acme", &format!("UPDATE notes SET body = body || 'yyyyy' WHERE id = {first}"))
        .expect("growing by the 5 free bytes fits");
    assert_eq!(actual(&mut su, "notes", &s.a), (2, 2 * one));
    assert_eq!(totals(&mut su, &s.a), Some((2, 2 * one)));

    // Globex has no bytes override: its rows are not limited by acme's.
    run_as(&mut app, "globex", &format!("INSERT INTO notes (body) VALUES ('{ten}'), ('{ten}'), ('{ten}')"))
        .expect("globex is not limited by acme's bytes quota");
    assert_eq!(actual(&mut su, "notes", &s.b), (3, 3 * one));
    assert_eq!(totals(&mut su, &s.b), Some((3, 3 * one)));
    assert_no_drift(&mut su, "after the bytes checks");
}

// ---------------------------------------------------------------------------------------------
// 5. rows:<table>
// ---------------------------------------------------------------------------------------------

#[test]
fn a_table_rows_limit_refuses_only_that_tables_rows() {
    let s = shop("quota_table_rows", "{}");
    let mut su = s.db.superuser();
    let mut app = s.db.app();

    quota_set(&mut su, "acme", "rows:public.orders", Some(2));
    let quotas = overrides(&mut su, &s.a);
    assert_eq!(quotas, [("rows:public.orders".to_string(), Some(2))], "ground truth: the override is stored qualified");

    add_orders(&mut app, "acme", 2).expect("two orders fit");
    assert_eq!(check(&mut app, "acme", "rows:public.orders"), (2, Some(2), Some(0)));
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows:public.orders", "acme", 2, 1, 2);
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2, "ground truth: the third order was not inserted");

    // The other table still accepts rows; the tenant's total is not limited.
    run_as(&mut app, "acme", "INSERT INTO notes (body) VALUES ('a'), ('b'), ('c')").expect("notes is not limited");
    assert_eq!(rows_of(&mut su, "notes", &s.a), 3);
    assert_eq!(check(&mut app, "acme", "rows"), (5, None, None), "rows: used across tables, unlimited");
    assert_eq!(check(&mut app, "acme", "rows:public.orders"), (2, Some(2), Some(0)));
    assert_eq!(check(&mut app, "acme", "rows:public.notes"), (3, None, None));
    // At the table's limit, an UPDATE of its rows adds no row and is allowed.
    run_as(&mut app, "acme", "UPDATE orders SET amount = amount + 1").expect("an UPDATE adds no row");

    // Globex has no such override.
    add_orders(&mut app, "globex", 3).expect("globex's orders are not limited by acme's override");
    assert_eq!(rows_of(&mut su, "orders", &s.b), 3);

    // Invalid keys.
    let before = digest(&mut su, "multitenancy.quotas");
    let error = expect_sqlstate(
        su.execute("SELECT multitenancy.quota_set('acme', 'rows:nosuch', 1)", &[]),
        &SqlState::UNDEFINED_TABLE,
    );
    assert!(error.message().contains("nosuch"), "the 42P01 message names the key: {:?}", error.message());
    // A table that exists but is not tenant-enabled.
    s.db.legacy("CREATE TABLE plain (id int)");
    expect_sqlstate(
        su.execute("SELECT multitenancy.quota_set('acme', 'rows:public.plain', 1)", &[]),
        &SqlState::UNDEFINED_TABLE,
    );
    for key in ["Bad Key!", "", "1rows", "API_CALLS"] {
        refused(
            su.execute("SELECT multitenancy.quota_set('acme', $1, 1)", &[&key]),
            &SqlState::INVALID_PARAMETER_VALUE,
            &["invalid quota key"],
        );
    }
    // A negative quota.
    refused(
        su.execute("SELECT multitenancy.quota_set('acme', 'rows', -1)", &[]),
        &SqlState::INVALID_PARAMETER_VALUE,
        &["negative"],
    );
    assert_eq!(digest(&mut su, "multitenancy.quotas"), before, "refused quota_set calls changed no override");
    assert_no_drift(&mut su, "after the table limit");
}

/// The contract's keys are stored schema-qualified; the brief also expects an unqualified
/// `rows:orders` to be accepted and stored as `rows:public.orders`.
#[test]
fn a_table_key_without_its_schema_is_stored_qualified() {
    let s = shop("quota_table_key_unqualified", "{}");
    let mut su = s.db.superuser();
    let mut app = s.db.app();

    quota_set(&mut su, "acme", "rows:public.orders", Some(3));
    quota_set(&mut su, "acme", "rows:orders", Some(2));
    let quotas = overrides(&mut su, &s.a);
    assert_eq!(
        quotas,
        [("rows:public.orders".to_string(), Some(2))],
        "rows:orders is the same key as rows:public.orders: one override, updated"
    );
    add_orders(&mut app, "acme", 2).unwrap();
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows:public.orders", "acme", 2, 1, 2);
    assert_eq!(check(&mut app, "acme", "rows:orders"), (2, Some(2), Some(0)));
    assert_eq!(rows_of(&mut su, "orders", &s.a), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Plan defaults, overrides, and cache invalidation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_tenant_override_beats_the_plan_until_reset_and_plan_changes_reach_open_sessions() {
    let s = shop("quota_override", r#"{"rows": 2}"#);
    let mut su = s.db.superuser();
    // One application session for the whole test: it must see every change in its next transaction.
    let mut app = s.db.app();

    add_orders(&mut app, "acme", 2).unwrap();
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 2, 1, 2);

    // Override: 4.
    quota_set(&mut su, "acme", "rows", Some(4));
    assert_eq!(check(&mut app, "acme", "rows"), (2, Some(4), Some(2)));
    add_orders(&mut app, "acme", 1).expect("the override allows a third row");
    add_orders(&mut app, "acme", 1).expect("and a fourth");
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 4, 1, 4);
    assert_eq!(rows_of(&mut su, "orders", &s.a), 4);
    // Globex still has the plan's 2.
    add_orders(&mut app, "globex", 2).unwrap();
    expect_quota_exceeded(add_orders(&mut app, "globex", 1), "rows", "globex", 2, 1, 2);

    // Override: unlimited.
    quota_set(&mut su, "acme", "rows", None);
    let stored: Vec<(String, Option<i64>)> = su
        .query("SELECT key, quota FROM multitenancy.quotas WHERE tenant_id = $1::text::uuid", &[&s.a])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, [("rows".to_string(), None)], "ground truth: a NULL override is a row with quota NULL");
    add_orders(&mut app, "acme", 2).expect("unlimited");
    assert_eq!(check(&mut app, "acme", "rows"), (6, None, None), "quota NULL, remaining NULL");
    assert_eq!(rows_of(&mut su, "orders", &s.a), 6);

    // Reset: the plan's 2 applies again; the 6 existing rows are kept.
    su.execute("SELECT multitenancy.quota_reset('acme', 'rows')", &[]).unwrap();
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.quotas WHERE tenant_id = '{}'", s.a)), 0);
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 6, 1, 2);
    assert_eq!(rows_of(&mut su, "orders", &s.a), 6, "ground truth: existing rows over the limit are kept");
    assert_eq!(check(&mut app, "acme", "rows"), (6, Some(2), Some(0)), "remaining is never negative");
    // Over the limit, DELETE is still allowed (and an insert still refused).
    delete_one_order(&mut app, "acme");
    assert_eq!(check(&mut app, "acme", "rows"), (5, Some(2), Some(0)));
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 5, 1, 2);

    // The plan changes; the same application session sees it in its next transaction.
    set_plan(&mut su, "small", r#"{"rows": 10}"#);
    assert_eq!(check(&mut app, "acme", "rows"), (5, Some(10), Some(5)));
    add_orders(&mut app, "acme", 1).expect("the raised plan limit is seen by the open session");
    add_orders(&mut app, "globex", 1).expect("by every tenant on the plan");
    set_plan(&mut su, "small", r#"{"rows": 6}"#);
    expect_quota_exceeded(add_orders(&mut app, "acme", 1), "rows", "acme", 6, 1, 6);
    set_plan(&mut su, "small", r#"{"rows": null}"#);
    add_orders(&mut app, "acme", 1).expect("null in the plan is unlimited");
    assert_eq!(check(&mut app, "acme", "rows"), (7, None, None));
    assert_eq!(rows_of(&mut su, "orders", &s.a), 7);
    assert_eq!(rows_of(&mut su, "orders", &s.b), 3);
    assert_no_drift(&mut su, "after the limit changes");
}

// ---------------------------------------------------------------------------------------------
// 7. Members
// ---------------------------------------------------------------------------------------------

#[test]
fn the_members_limit_refuses_a_member_past_it_until_one_leaves() {
    let s = shop("quota_members", r#"{"members": 2}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();

    su.execute(&member_add("acme", U_OWNER, "owner"), &[]).unwrap();
    su.execute(&member_add("acme", U_SECOND, "member"), &[]).unwrap();
    let two = members_of(&mut su, &s.a);
    assert_eq!(two.len(), 2, "ground truth: two members");

    // The DBA is refused a third.
    expect_quota_exceeded(su.execute(&member_add("acme", U_THIRD, "member"), &[]), "members", "acme", 2, 1, 2);
    assert_eq!(members_of(&mut su, &s.a), two, "the member rows are unchanged");
    // So is the owner through the application.
    expect_quota_exceeded(
        as_user(&mut app, "acme", U_OWNER, &member_add("acme", U_THIRD, "admin")),
        "members",
        "acme",
        2,
        1,
        2,
    );
    assert_eq!(members_of(&mut su, &s.a), two, "the member rows are unchanged");
    assert_eq!(check(&mut app, "acme", "members"), (2, Some(2), Some(0)));

    // Globex, on the same plan, has its own two slots.
    su.execute(&member_add("globex", U_OWNER2, "owner"), &[]).unwrap();
    su.execute(&member_add("globex", U_MEMBER2, "member"), &[]).unwrap();
    assert_eq!(members_of(&mut su, &s.b).len(), 2);

    // A member leaves: the slot is free.
    su.execute(&format!("SELECT multitenancy.member_remove('acme', '{U_SECOND}')"), &[]).unwrap();
    assert_eq!(check(&mut app, "acme", "members"), (1, Some(2), Some(1)));
    as_user(&mut app, "acme", U_OWNER, &member_add("acme", U_THIRD, "member")).expect("the freed slot can be used");
    assert_eq!(
        members_of(&mut su, &s.a),
        [(U_OWNER.to_string(), "owner".to_string()), (U_THIRD.to_string(), "member".to_string())]
    );
    expect_quota_exceeded(su.execute(&member_add("acme", U_SECOND, "member"), &[]), "members", "acme", 2, 1, 2);
}

// ---------------------------------------------------------------------------------------------
// 8. Metered counters
// ---------------------------------------------------------------------------------------------

#[test]
fn metered_usage_is_counted_per_tenant_and_month_and_refused_past_the_limit() {
    let s = shop("quota_metered", r#"{"api_calls": 5}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    let record = |app: &mut Client, slug: &str, sql: &str| one_as(app, slug, sql).map(|r| r.get::<_, i64>(0));

    assert_eq!(record(&mut app, "acme", "SELECT multitenancy.usage_record('api_calls')").unwrap(), 1);
    assert_eq!(record(&mut app, "acme", "SELECT multitenancy.usage_record('api_calls', 4)").unwrap(), 5);
    expect_quota_exceeded(
        record(&mut app, "acme", "SELECT multitenancy.usage_record('api_calls')"),
        "api_calls",
        "acme",
        5,
        1,
        5,
    );

    // Nothing counted by the refusal; the period is this calendar month (UTC).
    let row = one_as(
        &mut app,
        "acme",
        "SELECT used, quota, period_start::text, period_end::text,
                date_trunc('month', now() AT TIME ZONE 'UTC')::date::text,
                (date_trunc('month', now() AT TIME ZONE 'UTC')::date + interval '1 month')::date::text
           FROM multitenancy.usage_get('api_calls')",
    )
    .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, Option<i64>>(1)), (5, Some(5)), "usage_get: used 5 of 5");
    let (start, end): (Option<String>, Option<String>) = (row.get(2), row.get(3));
    let (month, next): (String, String) = (row.get(4), row.get(5));
    assert_eq!(start.as_deref(), Some(month.as_str()), "period_start is the 1st of this month (UTC)");
    assert_eq!(end.as_deref(), Some(next.as_str()), "period_end is the 1st of next month");
    let truth: Vec<(String, String, i64)> = su
        .query(
            "SELECT key, period::text, used FROM multitenancy.metered_usage WHERE tenant_id = $1::text::uuid",
            &[&s.a],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(truth, [("api_calls".to_string(), month.clone(), 5)], "ground truth: one counter at 5");
    assert_eq!(check(&mut app, "acme", "api_calls"), (5, Some(5), Some(0)));

    // Another tenant's counter is its own.
    assert_eq!(record(&mut app, "globex", "SELECT multitenancy.usage_record('api_calls')").unwrap(), 1);
    assert_eq!(record(&mut app, "globex", "SELECT multitenancy.usage_record('api_calls', 4)").unwrap(), 5);
    expect_quota_exceeded(
        record(&mut app, "globex", "SELECT multitenancy.usage_record('api_calls', 2)"),
        "api_calls",
        "globex",
        5,
        2,
        5,
    );
    assert_eq!(check(&mut app, "acme", "api_calls"), (5, Some(5), Some(0)), "acme's counter did not move");

    // Keys the extension counts itself, and amounts that are not positive.
    for sql in [
        "SELECT multitenancy.usage_record('rows')",
        "SELECT multitenancy.usage_record('members')",
        "SELECT multitenancy.usage_record('bytes', 10)",
        "SELECT multitenancy.usage_record('api_calls', 0)",
        "SELECT multitenancy.usage_record('api_calls', -1)",
    ] {
        expect_sqlstate(record(&mut app, "acme", sql), &SqlState::INVALID_PARAMETER_VALUE);
    }
    refused(
        record(&mut app, "acme", "SELECT multitenancy.usage_record('Bad Key!')"),
        &SqlState::INVALID_PARAMETER_VALUE,
        &["invalid quota key"],
    );
    // Without a tenant context.
    refused(
        app.query_one("SELECT multitenancy.usage_record('api_calls')", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["no tenant context"],
    );
    assert_eq!(
        count(
            &mut su,
            &format!(
                "SELECT coalesce(sum(used), 0)::bigint FROM multitenancy.metered_usage WHERE tenant_id = '{}'",
                s.a
            )
        ),
        5,
        "ground truth: none of the refused calls counted anything"
    );

    // A metered key without a limit is unlimited.
    assert_eq!(record(&mut app, "acme", "SELECT multitenancy.usage_record('emails_sent', 1000)").unwrap(), 1000);
    assert_eq!(check(&mut app, "acme", "emails_sent"), (1000, None, None));

    // tenant_stats().usage lists this month's counters.
    let usage: serde_json::Value =
        one_as(&mut app, "acme", "SELECT usage FROM multitenancy.tenant_stats() WHERE table_name IS NULL")
            .unwrap()
            .get(0);
    assert_eq!(usage, serde_json::json!({"api_calls": 5, "emails_sent": 1000}));
    let usage: serde_json::Value = su
        .query_one("SELECT usage FROM multitenancy.tenant_stats() WHERE slug = 'globex' AND table_name IS NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(usage, serde_json::json!({"api_calls": 5}));
}

#[test]
fn tenant_stats_shows_metered_usage_as_a_json_object() {
    let s = shop("quota_stats_usage", r#"{"api_calls": 5}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    let usage_of = |su: &mut Client, slug: &str| -> serde_json::Value {
        su.query_one("SELECT usage FROM multitenancy.tenant_stats() WHERE slug = $1 AND table_name IS NULL", &[&slug])
            .unwrap()
            .get(0)
    };
    assert_eq!(usage_of(&mut su, "acme"), serde_json::json!({}), "no metered usage yet: an empty object");
    one_as(&mut app, "acme", "SELECT multitenancy.usage_record('api_calls', 5)").unwrap();
    assert_eq!(usage_of(&mut su, "acme"), serde_json::json!({"api_calls": 5}));
    assert_eq!(usage_of(&mut su, "globex"), serde_json::json!({}));
}

// ---------------------------------------------------------------------------------------------
// 9. Who may do what, and who sees what
// ---------------------------------------------------------------------------------------------

#[test]
fn the_app_cannot_manage_quotas_or_write_usage_and_sees_only_its_own_tenant() {
    let s = shop("quota_permissions", "{}");
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    for slug in ["acme", "globex"] {
        add_orders(&mut app, slug, 2).unwrap();
        run_as(&mut app, slug, "INSERT INTO notes (body) VALUES ('n')").unwrap();
        one_as(&mut app, slug, "SELECT multitenancy.usage_record('api_calls', 3)").unwrap();
        quota_set(&mut su, slug, "rows", Some(100));
        quota_set(&mut su, slug, "api_calls", Some(50));
    }
    // Counters now (a limit that needs them gives them at the first write otherwise).
    su.execute("SELECT count(*) FROM multitenancy.usage_recompute()", &[]).unwrap();
    const USAGE: [&str; 3] = ["multitenancy.table_usage", "multitenancy.quotas", "multitenancy.metered_usage"];
    let digests = |su: &mut Client| USAGE.map(|t| digest(su, t));
    let before = digests(&mut su);
    let audit_before = audit_rows(&mut su);

    // Management functions: permission denied, with or without a context.
    for sql in [
        "SELECT multitenancy.quota_set('acme', 'rows', 1000000)",
        "SELECT multitenancy.quota_set('acme', 'rows', NULL)",
        "SELECT multitenancy.quota_reset('acme', 'rows')",
        "SELECT * FROM multitenancy.usage_drift()",
        "SELECT * FROM multitenancy.usage_recompute()",
    ] {
        refused(app.batch_execute(sql), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
        let mut tx = begin_as(&mut app, "acme");
        refused(tx.batch_execute(sql), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
    }
    // Direct writes to the usage tables.
    let a = &s.a;
    for sql in [
        "UPDATE multitenancy.table_usage SET row_count = 0, byte_count = 0 WHERE relid = 0::oid::regclass".to_string(),
        "DELETE FROM multitenancy.table_usage".to_string(),
        "UPDATE multitenancy.table_usage SET row_count = 0".to_string(),
        format!("INSERT INTO multitenancy.quotas (tenant_id, key, quota) VALUES ('{a}', 'members', 1000)"),
        "UPDATE multitenancy.quotas SET quota = NULL".to_string(),
        "DELETE FROM multitenancy.quotas".to_string(),
        "UPDATE multitenancy.metered_usage SET used = 0".to_string(),
        "DELETE FROM multitenancy.metered_usage".to_string(),
    ] {
        refused(app.batch_execute(&sql), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
        let mut tx = begin_as(&mut app, "acme");
        refused(tx.batch_execute(&sql), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
    }
    assert_eq!(digests(&mut su), before, "no usage, table usage, quota or metered row changed");
    assert_eq!(audit_rows(&mut su), audit_before, "the refused calls wrote no audit row");

    // Visibility: with acme's context, acme's rows and none of globex's (which exist).
    for (slug, own, other) in [("acme", &s.a, &s.b), ("globex", &s.b, &s.a)] {
        let mut tx = begin_as(&mut app, slug);
        for table in USAGE {
            let truth = |su: &mut Client, id: &str| {
                count(su, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{id}'"))
            };
            let (own_truth, other_truth) = (truth(&mut su, own), truth(&mut su, other));
            assert!(own_truth > 0 && other_truth > 0, "ground truth: both tenants have rows in {table}");
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table}")),
                own_truth,
                "{slug} sees its own rows of {table}, only those"
            );
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{other}'")),
                0,
                "{slug} sees none of the other tenant's {other_truth} row(s) of {table}"
            );
        }
        // tenant_stats() likewise.
        let slugs: Vec<String> = tx
            .query("SELECT DISTINCT slug FROM multitenancy.tenant_stats()", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(slugs, [slug], "tenant_stats() as {APP} shows its context tenant only");
        tx.commit().unwrap();
    }
    let all: Vec<String> = su
        .query("SELECT DISTINCT slug FROM multitenancy.tenant_stats() ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all, ["acme", "globex"], "the superuser sees every tenant");
    // Without a context: nothing (or the no-context error), never everything.
    for table in USAGE {
        match app.query_one(&format!("SELECT count(*) FROM {table}"), &[]) {
            Ok(row) => assert_eq!(row.get::<_, i64>(0), 0, "{table} without a context"),
            Err(e) => assert_eq!(db_error(&e).code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "{table}: {e}"),
        }
    }
    match app.query("SELECT * FROM multitenancy.tenant_stats()", &[]) {
        Ok(rows) => assert!(rows.is_empty(), "tenant_stats() without a context shows nothing"),
        Err(e) => {
            assert_eq!(db_error(&e).code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "tenant_stats(): {e}")
        }
    }

    // Positive control: the DBA's quota_set and quota_reset work, one audit row each.
    let before = audit_rows(&mut su);
    quota_set(&mut su, "acme", "rows", Some(7));
    one_new_audit_row(&mut su, &before, "quota_set", &s.a);
    assert_eq!(
        count(&mut su, &format!("SELECT quota FROM multitenancy.quotas WHERE tenant_id = '{}' AND key = 'rows'", s.a)),
        7
    );
    let before = audit_rows(&mut su);
    su.execute("SELECT multitenancy.quota_reset('acme', 'rows')", &[]).unwrap();
    one_new_audit_row(&mut su, &before, "quota_reset", &s.a);
    assert_eq!(
        count(
            &mut su,
            &format!("SELECT count(*) FROM multitenancy.quotas WHERE tenant_id = '{}' AND key = 'rows'", s.a)
        ),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// 10. The counters through enable, TRUNCATE, disable, DROP and the guard
// ---------------------------------------------------------------------------------------------

#[test]
fn the_counters_follow_enable_truncate_disable_and_drop() {
    let o = Orders::with_rows("quota_counting_lifecycle", 2, 1);
    let (a, b) = (o.a.clone(), o.b.clone());
    let db = &o.db;
    let mut su = db.superuser();
    counted(&mut su, &["acme", "globex"]);
    let mut owner = db.owner();
    let mut app = db.app();
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "orders", &a)), "precondition: orders is counted");

    // A table with rows from before, enabled with a backfill tenant: counted at once.
    db.legacy(&format!(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three');
         GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {APP};"
    ));
    owner.execute("SELECT multitenancy.tenant_enable('notes', $1::text::uuid)", &[&a]).unwrap();
    let notes_a = actual(&mut su, "notes", &a);
    assert_eq!(notes_a.0, 3, "ground truth: the three rows went to acme");
    let orders_a = actual(&mut su, "orders", &a);
    assert_eq!(
        per_table(&mut su, &a),
        [("notes".to_string(), notes_a.0, notes_a.1), ("orders".to_string(), orders_a.0, orders_a.1)]
    );
    assert_eq!(totals(&mut su, &a), Some((orders_a.0 + notes_a.0, orders_a.1 + notes_a.1)));
    assert_eq!(usage_triggers(&mut su, "notes"), BOTH_TRIGGERS_ON);
    assert_no_drift(&mut su, "after tenant_enable with backfill");

    // Writes are counted from now on, for every tenant.
    run_as(&mut app, "globex", "INSERT INTO notes (id, body) VALUES (10, 'ten')").unwrap();
    run_as(&mut app, "acme", "INSERT INTO notes (id, body) VALUES (11, 'eleven')").unwrap();
    let notes_b = actual(&mut su, "notes", &b);
    assert_eq!(notes_b.0, 1);
    assert!(per_table(&mut su, &b).contains(&("notes".to_string(), notes_b.0, notes_b.1)));
    assert_no_drift(&mut su, "after writes to the enabled table");

    // TRUNCATE (as the owner) zeroes the table's counters; the other table's stay.
    owner.batch_execute("TRUNCATE notes").unwrap();
    assert_eq!(count(&mut su, "SELECT count(*) FROM notes"), 0, "ground truth: notes is empty");
    let left: (i64, i64) = {
        let r = su
            .query_one(
                "SELECT coalesce(sum(row_count), 0)::bigint, coalesce(sum(byte_count), 0)::bigint
                   FROM multitenancy.table_usage WHERE relid = 'notes'::regclass",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(left, (0, 0), "TRUNCATE zeroed notes' counters");
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "orders", &a)), "acme's totals lost notes' rows");
    assert_eq!(totals(&mut su, &b), Some(actual(&mut su, "orders", &b)), "globex's too");
    assert_no_drift(&mut su, "after TRUNCATE");

    // Counted again after the TRUNCATE.
    run_as(&mut app, "acme", "INSERT INTO notes (id, body) VALUES (20, 'twenty'), (21, 'twenty-one')").unwrap();
    assert_eq!(per_table(&mut su, &a).iter().find(|t| t.0 == "notes").map(|t| t.1), Some(2));
    assert_no_drift(&mut su, "after inserts following TRUNCATE");

    // tenant_disable: the triggers go, and the table's counters with them.
    let notes_oid = oid_of(&mut su, "notes");
    owner.execute("SELECT multitenancy.tenant_disable('notes')", &[]).unwrap();
    assert_eq!(usage_triggers(&mut su, "notes"), "", "ground truth: the counting triggers are gone");
    assert_eq!(counters_of_oid(&mut su, &notes_oid), 0, "notes' counters are gone");
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "orders", &a)), "acme's totals are orders' alone");
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM notes WHERE tenant_id = '{a}'")), 2, "the data stays");
    // Writes to the disabled table are no longer counted.
    su.execute(&format!("INSERT INTO notes (id, body, tenant_id) VALUES (30, 'thirty', '{a}')"), &[]).unwrap();
    assert_eq!(counters_of_oid(&mut su, &notes_oid), 0);
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "orders", &a)));
    assert_no_drift(&mut su, "after tenant_disable");

    // DROP TABLE of an enabled table: its counters go.
    let orders_oid = oid_of(&mut su, "orders");
    assert!(counters_of_oid(&mut su, &orders_oid) > 0, "ground truth: orders has counters");
    owner.batch_execute("DROP TABLE orders").unwrap();
    assert!(!relation_exists(&mut su, "orders"));
    assert_eq!(counters_of_oid(&mut su, &orders_oid), 0, "the dropped table's counters are gone");
    assert_eq!(totals(&mut su, &a), Some((0, 0)), "acme stores nothing in tenant-enabled tables any more");
    assert_eq!(totals(&mut su, &b), Some((0, 0)));
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.table_usage WHERE relid::oid <> 0"), 0);
    assert_no_drift(&mut su, "after DROP TABLE");
}

#[test]
fn the_guard_keeps_the_counting_triggers_and_recompute_repairs_what_went_uncounted() {
    let o = Orders::new("quota_guard_triggers");
    let mut su = o.db.superuser();
    counted(&mut su, &["acme", "globex"]);
    let mut owner = o.db.owner();
    let mut app = o.db.app();
    assert_eq!(usage_triggers(&mut su, "orders"), BOTH_TRIGGERS_ON, "precondition");

    for sql in [
        "DROP TRIGGER multitenancy_usage_row ON orders",
        "DROP TRIGGER multitenancy_usage_statement ON orders",
        "ALTER TABLE orders DISABLE TRIGGER multitenancy_usage_statement",
        "ALTER TABLE orders DISABLE TRIGGER multitenancy_usage_row",
        "ALTER TABLE orders DISABLE TRIGGER USER",
        // Fires only under session_replication_role = replica: off for the application.
        "ALTER TABLE orders ENABLE REPLICA TRIGGER multitenancy_usage_row",
        "ALTER TRIGGER multitenancy_usage_statement ON orders RENAME TO counting",
    ] {
        expect_refused(owner.batch_execute(sql), "orders");
        assert_eq!(
            usage_triggers(&mut su, "orders"),
            BOTH_TRIGGERS_ON,
            "{sql} as the owner: the triggers are still there, enabled"
        );
    }
    // The counting still works.
    add_orders(&mut app, "acme", 1).unwrap();
    assert_eq!(totals(&mut su, &o.a).map(|t| t.0), Some(o.rows_a + 1));
    assert_no_drift(&mut su, "after the refused DDL");

    // With the guard off (a superuser), the trigger can go: writes are then not counted,
    // usage_drift() shows it and usage_recompute() repairs it.
    o.db.unguarded("DROP TRIGGER multitenancy_usage_row ON orders");
    assert_eq!(usage_triggers(&mut su, "orders"), "multitenancy_usage_statement=O");
    add_orders(&mut app, "acme", 2).unwrap();
    let truth = actual(&mut su, "orders", &o.a);
    assert_eq!(truth.0, o.rows_a + 3);
    assert_eq!(totals(&mut su, &o.a).map(|t| t.0), Some(o.rows_a + 1), "the two rows went uncounted");
    let drift: Vec<(String, Option<String>, i64, i64)> = su
        .query(
            "SELECT tenant_id::text, table_name::text, rows_counted, rows_actual FROM multitenancy.usage_drift()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        drift,
        [
            (o.a.clone(), None, o.rows_a + 1, o.rows_a + 3),
            (o.a.clone(), Some("orders".to_string()), o.rows_a + 1, o.rows_a + 3)
        ],
        "usage_drift() shows acme's totals and its orders counter"
    );
    let repaired = su.query("SELECT * FROM multitenancy.usage_recompute()", &[]).unwrap();
    assert_eq!(repaired.len(), 2, "usage_recompute() returns what was wrong");
    assert_eq!(totals(&mut su, &o.a), Some(truth));
    assert_no_drift(&mut su, "after usage_recompute()");
}

// ---------------------------------------------------------------------------------------------
// 11. Partitions
// ---------------------------------------------------------------------------------------------

#[test]
fn partitions_are_counted_separately_and_limited_together() {
    let db = TestDb::new("quota_partitions");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    counted(&mut su, &["acme", "globex"]);
    let mut owner = db.owner();
    owner
        .batch_execute(&format!(
            "CREATE TABLE events (id int NOT NULL, region text NOT NULL, note text) PARTITION BY LIST (region);
             CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
             CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
             SELECT multitenancy.tenant_enable('events');
             GRANT SELECT, INSERT, DELETE ON events, events_eu, events_us TO {APP};"
        ))
        .unwrap();
    assert!(
        is_enabled(&mut su, "events_eu") && is_enabled(&mut su, "events_us"),
        "precondition: the partitions are enabled"
    );
    let mut app = db.app();

    run_as(&mut app, "acme", "INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'eu', 'b'), (3, 'us', 'c')").unwrap();
    run_as(&mut app, "globex", "INSERT INTO events VALUES (4, 'eu', 'd'), (5, 'us', 'e')").unwrap();

    // One counter per partition, none for the parent.
    let (eu_a, us_a) = (actual(&mut su, "events_eu", &a), actual(&mut su, "events_us", &a));
    assert_eq!((eu_a.0, us_a.0), (2, 1), "ground truth");
    assert_eq!(
        per_table(&mut su, &a),
        [("events_eu".to_string(), eu_a.0, eu_a.1), ("events_us".to_string(), us_a.0, us_a.1)]
    );
    let (eu_b, us_b) = (actual(&mut su, "events_eu", &b), actual(&mut su, "events_us", &b));
    assert_eq!(
        per_table(&mut su, &b),
        [("events_eu".to_string(), eu_b.0, eu_b.1), ("events_us".to_string(), us_b.0, us_b.1)]
    );
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "events", &a)));
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.table_usage WHERE relid = 'events'::regclass"), 0);

    // rows:public.events limits the sum over the partitions.
    quota_set(&mut su, "acme", "rows:public.events", Some(4));
    assert_eq!(check(&mut app, "acme", "rows:public.events"), (3, Some(4), Some(1)));
    run_as(&mut app, "acme", "INSERT INTO events VALUES (6, 'us', 'f')").expect("the fourth row fits");
    expect_quota_exceeded(
        run_as(&mut app, "acme", "INSERT INTO events VALUES (7, 'eu', 'g')"),
        "rows:public.events",
        "acme",
        4,
        1,
        4,
    );
    // Written to a partition directly, too.
    expect_quota_exceeded(
        run_as(&mut app, "acme", "INSERT INTO events_eu VALUES (8, 'eu', 'h')"),
        "rows:public.events",
        "acme",
        4,
        1,
        4,
    );
    assert_eq!(rows_of(&mut su, "events", &a), 4, "ground truth: the refused rows were not inserted");
    // Globex has no such limit.
    run_as(&mut app, "globex", "INSERT INTO events VALUES (9, 'eu', 'i'), (10, 'us', 'j'), (11, 'us', 'k')")
        .expect("globex is not limited by acme's override");
    assert_no_drift(&mut su, "after writes through the parent");

    // DROP TABLE of one partition: its counts leave the totals.
    let us_oid = oid_of(&mut su, "events_us");
    owner.batch_execute("DROP TABLE events_us").expect("dropping a partition of an enabled table is allowed");
    assert_eq!(counters_of_oid(&mut su, &us_oid), 0, "the dropped partition's counters are gone");
    let eu_a = actual(&mut su, "events_eu", &a);
    assert_eq!(totals(&mut su, &a), Some(actual(&mut su, "events", &a)), "acme's totals equal the true count");
    assert_eq!(totals(&mut su, &a).map(|t| t.0), Some(2));
    assert_eq!(totals(&mut su, &b), Some(actual(&mut su, "events", &b)), "globex's too");
    assert_eq!(per_table(&mut su, &a), [("events_eu".to_string(), eu_a.0, eu_a.1)]);
    assert_eq!(check(&mut app, "acme", "rows:public.events"), (2, Some(4), Some(2)));
    run_as(&mut app, "acme", "INSERT INTO events VALUES (12, 'eu', 'l')").expect("the freed capacity can be used");
    assert_no_drift(&mut su, "after dropping a partition");
}

// ---------------------------------------------------------------------------------------------
// 12. Purge
// ---------------------------------------------------------------------------------------------

#[test]
fn tenant_purge_leaves_no_counters_quotas_or_metered_usage() {
    let s = shop("quota_purge", r#"{"rows": 100, "api_calls": 10}"#);
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    for slug in ["acme", "globex"] {
        add_orders(&mut app, slug, 3).unwrap();
        run_as(&mut app, slug, "INSERT INTO notes (body) VALUES ('a'), ('b')").unwrap();
        one_as(&mut app, slug, "SELECT multitenancy.usage_record('api_calls', 2)").unwrap();
        quota_set(&mut su, slug, "rows", Some(50));
        quota_set(&mut su, slug, "rows:public.orders", Some(20));
    }
    const USAGE: [&str; 3] = ["multitenancy.table_usage", "multitenancy.quotas", "multitenancy.metered_usage"];
    let rows = |su: &mut Client, table: &str, id: &str| {
        count(su, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{id}'"))
    };
    for table in USAGE {
        assert!(rows(&mut su, table, &s.a) > 0, "ground truth: acme has rows in {table} before the purge");
    }
    let globex_before = USAGE.map(|t| rows(&mut su, t, &s.b));

    su.execute("SELECT multitenancy.tenant_delete('acme')", &[]).unwrap();
    let purged: i64 =
        su.query_one("SELECT multitenancy.tenant_purge('acme', confirm_slug => 'acme')", &[]).unwrap().get(0);
    assert_eq!(purged, 5, "tenant_purge deleted acme's 3 orders and 2 notes");

    for table in USAGE {
        assert_eq!(rows(&mut su, table, &s.a), 0, "no row of the purged tenant is left in {table}");
    }
    assert_eq!(rows_of(&mut su, "orders", &s.a) + rows_of(&mut su, "notes", &s.a), 0);
    // Globex is untouched and still counted exactly.
    assert_eq!(USAGE.map(|t| rows(&mut su, t, &s.b)), globex_before, "globex's counters, quotas and usage are kept");
    let (orders_b, notes_b) = (actual(&mut su, "orders", &s.b), actual(&mut su, "notes", &s.b));
    assert_eq!(totals(&mut su, &s.b), Some((orders_b.0 + notes_b.0, orders_b.1 + notes_b.1)));
    assert_no_drift(&mut su, "after the purge");
    add_orders(&mut app, "globex", 1).expect("globex goes on writing");
}

/// A subtransaction that rolls back inside the triggers of a statement (an application trigger
/// with an exception block) takes only its own rows with it: the statement's rows counted before
/// it are still counted.
#[test]
fn an_exception_block_in_an_application_trigger_keeps_the_statements_counts() {
    let o = Orders::new("quota_subxact_in_trigger");
    let mut su = o.db.superuser();
    counted(&mut su, &["acme", "globex"]);
    o.db.owner()
        .batch_execute(
            "CREATE FUNCTION orders_audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 BEGIN
                     PERFORM 1 / 0;
                 EXCEPTION WHEN division_by_zero THEN
                     NULL;
                 END;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_audit();",
        )
        .unwrap();
    let mut app = o.db.app();
    let mut tx = begin_as(&mut app, "acme");
    tx.execute("INSERT INTO orders (item) SELECT 'audited-' || g FROM generate_series(1, 3) g", &[]).unwrap();
    tx.execute("INSERT INTO orders (item) VALUES ('audited-4')", &[]).unwrap();
    tx.commit().unwrap();
    let truth = actual(&mut su, "orders", &o.a);
    assert_eq!(truth.0, o.rows_a + 4, "ground truth: the four rows are there");
    assert_eq!(totals(&mut su, &o.a), Some(truth), "every row is counted");
    assert_no_drift(&mut su, "after statements whose triggers rolled back subtransactions");
}

// ---------------------------------------------------------------------------------------------
// Counting only where a limit needs it (issue 21)
// ---------------------------------------------------------------------------------------------

/// Whether the tenant has counters (its totals row), read as the superuser.
fn has_counters(su: &mut Client, tenant_id: &str) -> bool {
    totals(su, tenant_id).is_some()
}

/// `quota_check(key)`'s `used` for `slug`, as the app.
fn used(app: &mut Client, slug: &str, key: &str) -> i64 {
    check(app, slug, key).0
}

/// A tenant without a rows, bytes or rows:<table> limit writes no counters; what it uses is
/// counted from the tables when asked — exactly, for the app (its own tenant) and the DBA (every
/// tenant, tenant_stats()).
#[test]
fn tenants_without_a_limit_write_no_counters_and_are_counted_when_asked() {
    let o = Orders::with_rows("quota_uncounted", 3, 2);
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    add_orders(&mut app, "acme", 4).unwrap();
    delete_one_order(&mut app, "globex");
    for tenant in [&o.a, &o.b] {
        assert!(!has_counters(&mut su, tenant), "no counters without a limit");
        assert_eq!(per_table(&mut su, tenant), Vec::new(), "no counters without a limit");
    }
    let (rows_a, bytes_a) = actual(&mut su, "orders", &o.a);
    let (rows_b, bytes_b) = actual(&mut su, "orders", &o.b);
    assert_eq!((rows_a, rows_b), (7, 1), "ground truth");
    assert_eq!(used(&mut app, "acme", "rows"), rows_a);
    assert_eq!(used(&mut app, "acme", "bytes"), bytes_a);
    assert_eq!(used(&mut app, "globex", "rows"), rows_b);
    assert_eq!(used(&mut app, "acme", "rows:orders"), rows_a);
    // tenant_stats(): the DBA sees every tenant's usage, the app its own.
    let stats = |client: &mut Client| -> Vec<(String, i64, i64)> {
        client
            .query(
                "SELECT slug, rows, bytes FROM multitenancy.tenant_stats() WHERE table_name IS NULL ORDER BY slug",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert_eq!(stats(&mut su), [("acme".into(), rows_a, bytes_a), ("globex".into(), rows_b, bytes_b)]);
    let mut tx = begin_as(&mut app, "globex");
    let own: Vec<(String, i64)> = tx
        .query("SELECT slug, rows FROM multitenancy.tenant_stats() WHERE table_name IS NULL", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(own, [("globex".to_string(), rows_b)], "the app sees its own tenant only");
    // Its own uncommitted rows count too.
    tx.execute("INSERT INTO orders (item) VALUES ('pending')", &[]).unwrap();
    assert_eq!(check_in(&mut tx, "rows").0, rows_b + 1);
    tx.rollback().unwrap();
    assert_no_drift(&mut su, "uncounted tenants have no counters to drift");
}

/// A limit introduced (quota_set, a plan change, a plan's new limits) recounts the tenant from
/// the tables in the same transaction, and is enforced exactly from the next row on; a limit
/// removed drops the counters.
#[test]
fn a_limit_starts_counting_from_the_tables_and_its_removal_stops_it() {
    let s = shop("quota_start_stop", "{}");
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    add_orders(&mut app, "acme", 5).unwrap();
    add_orders(&mut app, "globex", 2).unwrap();
    assert!(!has_counters(&mut su, &s.a), "no limit, no counters");
    quota_set(&mut su, "acme", "rows", Some(6));
    assert_eq!(used(&mut app, "acme", "rows"), 5, "reported exactly from the tables until the first write");
    add_orders(&mut app, "acme", 1).unwrap();
    assert_eq!(
        totals(&mut su, &s.a),
        Some(actual(&mut su, "orders", &s.a)),
        "counted from the tables at the first write"
    );
    assert!(!has_counters(&mut su, &s.b), "the other tenant is not counted");
    assert_no_drift(&mut su, "after the recount");
    let error = expect_sqlstate(add_orders(&mut app, "acme", 1), &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    assert!(error.message().contains("rows"), "{error:?}");
    add_orders(&mut app, "globex", 10).unwrap();
    // Removed: no counters, no limit, usage still exact.
    quota_set(&mut su, "acme", "rows", None);
    assert!(!has_counters(&mut su, &s.a), "counters dropped with the last limit that needed them");
    add_orders(&mut app, "acme", 3).unwrap();
    assert_eq!(used(&mut app, "acme", "rows"), actual(&mut su, "orders", &s.a).0);
    // A plan's limits: every tenant on the plan is counted (from its next write), and stops
    // being counted with them.
    set_plan(&mut su, "small", r#"{"bytes": 100000000}"#);
    add_orders(&mut app, "acme", 1).unwrap();
    add_orders(&mut app, "globex", 1).unwrap();
    assert_eq!(totals(&mut su, &s.a), Some(actual(&mut su, "orders", &s.a)));
    assert_eq!(totals(&mut su, &s.b), Some(actual(&mut su, "orders", &s.b)));
    assert_no_drift(&mut su, "plan limits");
    set_plan(&mut su, "small", "{}");
    assert!(!has_counters(&mut su, &s.a) && !has_counters(&mut su, &s.b), "plan without limits");
}

/// Writers without counting hold their tenant's counting lock in a shared mode until they end: a
/// limit set meanwhile waits for them and counts their rows; a writer that waited for a limit
/// being set counts (and is checked) from then on. Either order leaves the counters exact.
#[test]
fn a_limit_set_while_uncounted_writers_are_in_flight_leaves_exact_counters() {
    let s = shop("quota_start_race", "{}");
    let mut su = s.db.superuser();
    let mut app = s.db.app();
    add_orders(&mut app, "acme", 3).unwrap();

    // 1. The writer first, the limit set meanwhile: the first counted writer waits for the
    // writer that did not count, and its recount includes that writer's rows.
    let mut writer = s.db.app();
    let mut tx = begin_as(&mut writer, "acme");
    tx.execute("INSERT INTO orders (item) SELECT 'w' || g FROM generate_series(1, 2) g", &[]).unwrap();
    quota_set(&mut su, "acme", "rows", Some(6));
    let db_name = s.db.name.clone();
    let counted_writer = {
        let server = s.db.server();
        std::thread::spawn(move || {
            let mut app = server.connect(&db_name, APP);
            let mut tx = begin_as(&mut app, "acme");
            tx.execute("INSERT INTO orders (item) SELECT 'c' || g FROM generate_series(1, 2) g", &[])?;
            tx.commit()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!counted_writer.is_finished(), "the first counted writer waits for the writer that does not count");
    tx.commit().unwrap();
    // 3 + 2 rows, then 2 more: past 6.
    expect_sqlstate(counted_writer.join().unwrap(), &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    add_orders(&mut app, "acme", 1).unwrap();
    assert_eq!(totals(&mut su, &s.a), Some(actual(&mut su, "orders", &s.a)), "the writer's rows are counted");
    assert_eq!(totals(&mut su, &s.a).unwrap().0, 6);
    quota_set(&mut su, "acme", "rows", None);

    // 2. The limit set but not committed: a writer meanwhile does not count (its row comes
    // before the limit, as if the limit had been set after it); the next write recounts, with
    // that row, and is refused.
    let mut dba = s.db.superuser();
    let mut setting = dba.transaction().unwrap();
    let now = actual(&mut su, "orders", &s.a).0;
    setting.execute("SELECT multitenancy.quota_set('acme', 'rows', $1)", &[&now]).unwrap();
    add_orders(&mut app, "acme", 1).unwrap();
    setting.commit().unwrap();
    expect_sqlstate(add_orders(&mut app, "acme", 1), &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    assert_eq!(check(&mut app, "acme", "rows").0, now + 1);
    add_orders(&mut app, "globex", 1).unwrap();
    delete_one_order(&mut app, "acme");
    assert_eq!(totals(&mut su, &s.a), Some(actual(&mut su, "orders", &s.a)));
    assert_no_drift(&mut su, "after both races");
}

// Review findings (issue 21, second review): each test fails on the code before its fix.

/// Counting a table plans a query on it, and planning loads the table's index predicates and
/// expressions — the owner's code. Found by review: an IMMUTABLE function in an index predicate
/// ran as the registry owner (a superuser) when the app asked for its usage (tenant_stats,
/// quota_check), when a DBA ran usage_drift, and in tenant_enable's recount; it could make its
/// owner a superuser. Now every count runs as the table's owner.
#[test]
fn review_counting_a_table_never_runs_its_owners_code_as_someone_else() {
    let o = Orders::with_rows("quota_review_index_code", 3, 2);
    o.db.owner()
        .batch_execute(
            "CREATE FUNCTION public.whoami(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
                 $$ BEGIN RAISE NOTICE 'index code runs as %', current_user; RETURN true; END $$;
             CREATE INDEX orders_whoami ON orders (id) WHERE public.whoami(1);
             CREATE TABLE more (id bigint PRIMARY KEY, tenant_id uuid NOT NULL);
             CREATE INDEX more_whoami ON more (id) WHERE public.whoami(2);",
        )
        .unwrap();
    let mut su = o.db.superuser();
    su.batch_execute(&format!("INSERT INTO more VALUES (1, '{}')", o.a)).unwrap();
    su.batch_execute("SELECT multitenancy.quota_set('acme', 'rows', 1000)").unwrap();
    let (mut app, app_notices) = o.db.connect_with_notices(APP);
    let (mut dba, dba_notices) = o.db.connect_with_notices(SUPERUSER);
    let (mut owner, owner_notices) = o.db.connect_with_notices(OWNER);
    // Usage counted when asked (globex has no limit), by the app and by the DBA.
    let mut tx = begin_as(&mut app, "globex");
    tx.query("SELECT * FROM multitenancy.tenant_stats()", &[]).unwrap();
    tx.query("SELECT * FROM multitenancy.quota_check('rows')", &[]).unwrap();
    tx.commit().unwrap();
    dba.query("SELECT * FROM multitenancy.tenant_stats()", &[]).unwrap();
    dba.query("SELECT * FROM multitenancy.usage_drift()", &[]).unwrap();
    // tenant_enable's recount of a table with rows of a counted tenant.
    owner.batch_execute("SELECT multitenancy.tenant_enable('more')").unwrap();
    let notices: Vec<String> = [app_notices.take(), dba_notices.take(), owner_notices.take()]
        .into_iter()
        .flatten()
        .filter(|n| n.contains("index code runs as"))
        .collect();
    assert!(
        notices.iter().any(|n| n.contains("index code runs as")),
        "the owner's index code ran in these paths (so this test can fail): {notices:?}"
    );
    for notice in &notices {
        assert!(notice.ends_with(&format!("runs as {OWNER}")), "the owner's code ran as another role: {notice}");
    }
}

/// Found by review: a REPEATABLE READ writer read the tenant's limits with its transaction's
/// snapshot, which predated a limit set during the transaction, and wrote past it uncounted.
#[test]
fn review_a_repeatable_read_writer_is_held_to_a_limit_set_during_its_transaction() {
    let o = Orders::with_rows("quota_review_rr", 3, 2);
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    let mut tx = app.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set('acme')", &[]).unwrap();
    tx.query_one("SELECT count(*) FROM orders", &[]).unwrap();
    su.execute("SELECT multitenancy.quota_set('acme', 'rows', 3)", &[]).unwrap();
    let result = tx.execute("INSERT INTO orders (item) VALUES ('past the limit')", &[]);
    expect_sqlstate(result, &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    drop(tx);
    assert_eq!(actual(&mut su, "orders", &o.a).0, 3);
    assert_no_drift(&mut su, "after the refused write");
    // And one that starts before a limit is removed creates no counters the limit does not need.
    quota_set(&mut su, "globex", "rows", Some(100));
    let mut tx = app.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set('globex')", &[]).unwrap();
    tx.query_one("SELECT count(*) FROM orders", &[]).unwrap();
    quota_set(&mut su, "globex", "rows", None);
    tx.execute("INSERT INTO orders (item) VALUES ('after the limit went')", &[]).unwrap();
    tx.commit().unwrap();
    assert!(!has_counters(&mut su, &o.b), "no counters without a limit");
    add_orders(&mut app, "globex", 4).unwrap();
    quota_set(&mut su, "globex", "rows", Some(100));
    add_orders(&mut app, "globex", 1).unwrap();
    assert_eq!(totals(&mut su, &o.b).map(|t| t.0), Some(actual(&mut su, "orders", &o.b).0));
    assert_no_drift(&mut su, "a limit that came back");
}

/// Found by review: a `rows:<table>` limit whose table was renamed stopped counting its tenant
/// (the key no longer resolved) while the counters stayed, and when the name came back the stale
/// counters were enforced. A rows:<table> limit keeps its tenant counted, resolved or not.
#[test]
fn review_a_table_limit_keeps_counting_while_its_table_is_renamed() {
    let o = Orders::with_rows("quota_review_rename", 2, 1);
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    quota_set(&mut su, "acme", "rows:public.orders", Some(3));
    o.db.owner().batch_execute("ALTER TABLE orders RENAME TO orders_renamed").unwrap();
    run_as(&mut app, "acme", "INSERT INTO orders_renamed (item) SELECT 'x' || g FROM generate_series(1, 5) g").unwrap();
    o.db.owner().batch_execute("ALTER TABLE orders_renamed RENAME TO orders").unwrap();
    assert_no_drift(&mut su, "after the rename and back");
    assert_eq!(check(&mut app, "acme", "rows:public.orders").0, 7);
    expect_sqlstate(add_orders(&mut app, "acme", 1), &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
}

/// Found by review: plan_set locked every tenant of the plan, also when no tenant started or
/// stopped being counted (a limit's new value), past max_locks_per_transaction on a big plan.
#[test]
fn review_changing_a_limits_value_locks_no_tenant() {
    let db = TestDb::new("quota_review_plan_locks");
    let mut su = db.superuser();
    set_plan(&mut su, "big", r#"{"rows": 1000}"#);
    su.batch_execute(
        "INSERT INTO multitenancy.tenants (name, slug, plan) SELECT 'T' || g, 't' || g, 'big' FROM generate_series(1, 300) g",
    )
    .unwrap();
    let mut tx = su.transaction().unwrap();
    tx.execute("SELECT multitenancy.plan_set('big', '{\"rows\": 2000}', '{}')", &[]).unwrap();
    let locks: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'object'
                AND classid = 'multitenancy.table_usage'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert!(locks < 10, "a new value of an existing limit takes no counting locks ({locks} taken)");
}

/// Found by rereading the change: the limits query run as the registry owner compared keys with
/// an unqualified `=`, under the writer's search_path. A table owner's `=` on text in a schema
/// listed before pg_catalog then ran as the registry owner (a superuser) when the owner wrote its
/// own table under REPEATABLE READ. Those statements now run with the search_path pinned.
#[test]
fn review_the_limits_query_never_runs_a_writers_operator() {
    let o = Orders::with_rows("quota_review_operator", 2, 1);
    let mut su = o.db.superuser();
    su.batch_execute(&format!(
        "CREATE SCHEMA evil AUTHORIZATION {OWNER};
         SELECT multitenancy.quota_set('acme', 'rows', 1000);"
    ))
    .unwrap();
    o.db.owner()
        .batch_execute(
            "CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
                 $$ BEGIN RAISE NOTICE 'text = runs as %', current_user; RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq);",
        )
        .unwrap();
    let (mut owner, notices) = o.db.connect_with_notices(OWNER);
    owner.batch_execute("SET search_path = evil, pg_catalog, public").unwrap();
    let mut tx = owner.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set('acme')", &[]).unwrap();
    tx.execute("INSERT INTO public.orders (item) VALUES ('by the owner')", &[]).unwrap();
    tx.commit().unwrap();
    let ran: Vec<String> = notices.take().into_iter().filter(|n| n.contains("text = runs as")).collect();
    for notice in &ran {
        assert!(notice.ends_with(&format!("runs as {OWNER}")), "the owner's operator ran as another role: {notice}");
    }
    assert_no_drift(&mut su, "after the owner's write");
}
