//! Usage reports and repair (issue 6): `tenant_stats()` against the tables, its scoping for
//! applications, and `usage_drift()` / `usage_recompute()` after the counters were damaged.
//!
//! Writes go through [`APP`] (NOSUPERUSER, NOBYPASSRLS, owns nothing) with the tenant context
//! set by `tenant_set`. The ground truth is computed as superuser straight from the tables, as
//! the contract defines it: per tenant and table `count(*)` and
//! `sum(multitenancy.row_bytes(t))`, members from `multitenancy.members`, metered usage from
//! `multitenancy.metered_usage` (this month, UTC).
use multitenancy_integration::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;

// ---------------------------------------------------------------------------------------------
// End users (values of multitenancy.user_id)
// ---------------------------------------------------------------------------------------------

const U_ONE: &str = "11111111-1111-4111-8111-111111111111";
const U_TWO: &str = "22222222-2222-4222-8222-222222222222";
const U_THREE: &str = "33333333-3333-4333-8333-333333333333";

/// The tenant-enabled tables of the fixture.
const TABLES: [&str; 2] = ["orders", "docs"];

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// A database with the given tenants (slugs; returned ids in the same order) and two tables
/// created and enabled by the migration role, writable by [`APP`]: `orders` and `docs` (text
/// and jsonb columns that may be NULL, a unique key per tenant for upserts).
fn fixture(tag: &str, slugs: &[&str]) -> (TestDb, Vec<String>) {
    let db = TestDb::new(tag);
    let ids = slugs.iter().map(|s| db.tenant(&format!("Tenant {s}"), s)).collect();
    create_orders(&db);
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                key text NOT NULL UNIQUE, body text, meta jsonb);
             SELECT multitenancy.tenant_enable('docs');
             GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO {APP};"
        ))
        .unwrap();
    (db, ids)
}

/// Run `sql` (one or more statements) as [`APP`] with `slug`'s context, in one transaction,
/// committed.
#[track_caller]
fn as_tenant(app: &mut Client, slug: &str, sql: &str) {
    let mut tx = begin_as(app, slug);
    tx.batch_execute(sql).unwrap_or_else(|e| panic!("as {APP} with {slug}'s context: {sql}: {}", describe(&e)));
    tx.commit().unwrap_or_else(|e| panic!("COMMIT as {APP} with {slug}'s context: {}", describe(&e)));
}

/// A postgres error as one line, with its SQLSTATE.
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// One row of `multitenancy.tenant_stats()`.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    tenant_id: String,
    slug: String,
    /// `None`: the tenant's totals row.
    table: Option<String>,
    rows: i64,
    bytes: i64,
    members: Option<i64>,
    usage: Option<serde_json::Value>,
}

fn sorted(mut stats: Vec<Stat>) -> Vec<Stat> {
    stats.sort_by(|a, b| (&a.tenant_id, &a.table).cmp(&(&b.tenant_id, &b.table)));
    stats
}

/// `multitenancy.tenant_stats()` as `client` sees it, by tenant id and table (totals first).
fn tenant_stats(client: &mut impl postgres::GenericClient) -> Result<Vec<Stat>, postgres::Error> {
    let rows = client.query(
        "SELECT tenant_id::text, slug, table_name::text, rows, bytes, members, usage FROM multitenancy.tenant_stats()",
        &[],
    )?;
    Ok(sorted(
        rows.iter()
            .map(|r| Stat {
                tenant_id: r.get(0),
                slug: r.get(1),
                table: r.get(2),
                rows: r.get(3),
                bytes: r.get(4),
                members: r.get(5),
                usage: r.get(6),
            })
            .collect(),
    ))
}

/// Ground truth (as superuser), per (tenant id, table): `(rows, bytes)` from the tables.
fn actual(su: &mut Client) -> BTreeMap<(String, String), (i64, i64)> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let sql = format!(
            "SELECT t.tenant_id::text, '{table}'::regclass::text, count(*), coalesce(sum(multitenancy.row_bytes(t)), 0)::bigint
               FROM {table} t GROUP BY 1"
        );
        for row in su.query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")) {
            out.insert((row.get(0), row.get(1)), (row.get(2), row.get(3)));
        }
    }
    out
}

/// What `tenant_stats()` must say, computed as superuser from the tables, the members and the
/// metered usage of this month (UTC).
fn expected_stats(su: &mut Client) -> Vec<Stat> {
    let actual = actual(su);
    let tenants: Vec<(String, String)> = su
        .query("SELECT id::text, slug FROM multitenancy.tenants", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut stats = Vec::new();
    for (id, slug) in tenants {
        let tables: Vec<(&String, &(i64, i64))> = actual
            .iter()
            .filter(|((tenant, _), _)| tenant == &id)
            .map(|((_, table), counts)| (table, counts))
            .collect();
        let members: i64 = su
            .query_one("SELECT count(*) FROM multitenancy.members WHERE tenant_id = $1::text::uuid", &[&id])
            .unwrap()
            .get(0);
        let usage: serde_json::Value = su
            .query_one(
                "SELECT coalesce(jsonb_object_agg(key, used), '{}'::jsonb) FROM multitenancy.metered_usage
                  WHERE tenant_id = $1::text::uuid AND period = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
                &[&id],
            )
            .unwrap()
            .get(0);
        stats.push(Stat {
            tenant_id: id.clone(),
            slug: slug.clone(),
            table: None,
            rows: tables.iter().map(|(_, c)| c.0).sum(),
            bytes: tables.iter().map(|(_, c)| c.1).sum(),
            members: Some(members),
            usage: Some(usage),
        });
        for (table, &(rows, bytes)) in tables {
            stats.push(Stat {
                tenant_id: id.clone(),
                slug: slug.clone(),
                table: Some(table.clone()),
                rows,
                bytes,
                members: None,
                usage: None,
            });
        }
    }
    sorted(stats)
}

/// `tenant_stats()` as superuser equals the ground truth. A per-table row of 0 rows and 0 bytes
/// (a counter left after every row of the tenant in that table was deleted) has no group in
/// the direct computation and is left out of the comparison.
#[track_caller]
fn assert_stats_match(su: &mut Client, situation: &str) {
    let reported: Vec<Stat> = tenant_stats(su)
        .unwrap_or_else(|e| panic!("{situation}: tenant_stats() as superuser: {e}"))
        .into_iter()
        .filter(|s| s.table.is_none() || s.rows != 0 || s.bytes != 0)
        .collect();
    assert_eq!(reported, expected_stats(su), "{situation}: tenant_stats() (left) must equal the tables (right)");
}

/// One row of `usage_drift()` / `usage_recompute()`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Drift {
    tenant_id: String,
    /// `None`: the tenant's totals.
    table: Option<String>,
    rows_counted: i64,
    rows_actual: i64,
    bytes_counted: i64,
    bytes_actual: i64,
}

/// Rows of `multitenancy.<function>()` (usage_drift or usage_recompute) as superuser, sorted.
fn drift_rows(su: &mut Client, function: &str) -> Vec<Drift> {
    let sql = format!(
        "SELECT tenant_id::text, table_name::text, rows_counted, rows_actual, bytes_counted, bytes_actual
           FROM multitenancy.{function}()"
    );
    let mut rows: Vec<Drift> = su
        .query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| Drift {
            tenant_id: r.get(0),
            table: r.get(1),
            rows_counted: r.get(2),
            rows_actual: r.get(3),
            bytes_counted: r.get(4),
            bytes_actual: r.get(5),
        })
        .collect();
    rows.sort();
    rows
}

fn usage_drift(su: &mut Client) -> Vec<Drift> {
    drift_rows(su, "usage_drift")
}

/// `COPY orders (item, amount) FROM STDIN` with two rows.
fn copy_two_orders(tx: &mut Transaction<'_>) -> Result<u64, postgres::Error> {
    let mut writer = tx.copy_in("COPY orders (item, amount) FROM STDIN")?;
    writer.write_all(b"copied-1\t7\ncopied-2\t8\n").expect("write the COPY data");
    writer.finish()
}

/// Add a member (as superuser, the DBA).
#[track_caller]
fn add_member(su: &mut Client, slug: &str, user: &str, role: &str) {
    su.execute(&format!("SELECT multitenancy.member_add('{slug}', '{user}', '{role}')"), &[])
        .unwrap_or_else(|e| panic!("member_add({slug}, {user}, {role}): {e}"));
}

/// Insert one order as [`APP`] with `slug`'s context, in a transaction of its own (committed if it works).
fn insert_one_order(app: &mut Client, slug: &str) -> Result<u64, postgres::Error> {
    let mut tx = begin_as(app, slug);
    let inserted = tx.execute("INSERT INTO orders (item) VALUES ('one more')", &[])?;
    tx.commit()?;
    Ok(inserted)
}

/// Assert a refusal by a quota whose message starts with `start` (when the requested amount is not
/// known in advance): 53400, a message naming the key and tenant with the contract's
/// wording, and a hint.
#[track_caller]
fn refused_by_quota<T: std::fmt::Debug>(result: Result<T, postgres::Error>, start: &str) -> DbError {
    let error = expect_sqlstate(result, &SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    assert!(
        error.message().starts_with(start),
        "expected a message starting with {start:?}, got {:?}",
        error.message()
    );
    assert!(
        error.hint().is_some_and(|h| !h.trim().is_empty()),
        "expected a hint with the refusal {:?}",
        error.message()
    );
    error
}

/// Set a quota (as superuser, the DBA).
#[track_caller]
fn quota_set(su: &mut Client, slug: &str, key: &str, quota: i64) {
    su.execute("SELECT multitenancy.quota_set($1, $2, $3)", &[&slug, &key, &quota])
        .unwrap_or_else(|e| panic!("quota_set({slug}, {key}, {quota}): {e}"));
}

// ---------------------------------------------------------------------------------------------
// tenant_stats()
// ---------------------------------------------------------------------------------------------

/// Three tenants write through the application role — multi-row inserts, updates that grow
/// and shrink values (up to values large enough to be compressed and stored out of line, and
/// to and from NULL), deletes, an upsert that both inserts and updates, a COPY, rolled back
/// work — and record metered usage; members are added. `tenant_stats()` then equals what the
/// tables, members and metered usage say, and `usage_drift()` is empty.
#[test]
fn tenant_stats_matches_the_tables() {
    let (db, ids) = fixture("stats_match", &["acme", "globex", "initech"]);
    let mut su = db.superuser();
    let mut app = db.app();
    add_member(&mut su, "acme", U_ONE, "member");
    add_member(&mut su, "acme", U_TWO, "admin");
    add_member(&mut su, "globex", U_THREE, "member");

    // acme: small, NULL, compressible and shrinking values, then updates, deletes, an upsert.
    as_tenant(
        &mut app,
        "acme",
        "INSERT INTO orders (item, amount) SELECT 'acme-' || g, g FROM generate_series(1, 5) g;
         INSERT INTO docs (key, body, meta) VALUES
             ('small', 'hello', '{\"a\": 1}'),
             ('nulls', NULL, NULL),
             ('compressible', repeat('abc', 2000), NULL),
             ('shrinking', repeat('xyz', 1500), '{\"big\": true}'),
             ('meta-only', NULL, jsonb_build_object('tags', jsonb_build_array('x', 'y')));",
    );
    as_tenant(
        &mut app,
        "acme",
        "UPDATE docs SET body = repeat('q', 500) WHERE key = 'small';
         UPDATE docs SET body = 'now short', meta = NULL WHERE key = 'shrinking';
         UPDATE docs SET meta = '{\"filled\": [1, 2, 3]}' WHERE key = 'nulls';
         DELETE FROM orders WHERE amount <= 2;
         INSERT INTO docs (key, body) VALUES ('small', 'replaced by upsert'), ('fresh', 'inserted by upsert')
             ON CONFLICT (tenant_id, key) DO UPDATE SET body = EXCLUDED.body;
         SELECT multitenancy.usage_record('api_calls', 5);
         SELECT multitenancy.usage_record('emails', 2);",
    );
    // COPY FROM as the application role; PostgreSQL refuses COPY FROM into a table with row
    // level security for a role it applies to (0A000) — then the rows are copied by the
    // superuser inside acme's context (the counting triggers fire for COPY either way).
    {
        // A connection of its own: a refused COPY leaves the client mid-protocol.
        let mut copier = db.app();
        let mut tx = begin_as(&mut copier, "acme");
        match copy_two_orders(&mut tx) {
            Ok(copied) => {
                assert_eq!(copied, 2);
                tx.commit().unwrap();
            }
            Err(e) => {
                assert_eq!(
                    db_error(&e).code(),
                    &SqlState::FEATURE_NOT_SUPPORTED,
                    "COPY FROM as {APP}: expected it to work or PostgreSQL's refusal under row level security, got {}",
                    describe(&e)
                );
                drop(tx);
                let mut loader = db.superuser();
                let mut tx = begin_as(&mut loader, "acme");
                assert_eq!(copy_two_orders(&mut tx).expect("COPY FROM as superuser with acme's context"), 2);
                tx.commit().unwrap();
            }
        }
    }
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM orders WHERE item LIKE 'copied-%' AND tenant_id = '{}'", ids[0])),
        2,
        "the copied rows belong to acme"
    );

    // globex: values stored out of line (incompressible) and large jsonb, shrinking, growing,
    // a row inserted and deleted, a savepoint rolled back.
    as_tenant(
        &mut app,
        "globex",
        "INSERT INTO orders (item, amount) SELECT 'globex-' || g, g FROM generate_series(1, 3) g;
         INSERT INTO docs (key, body, meta) VALUES
             ('incompressible', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 150) g), NULL),
             ('incompressible-shrunk', (SELECT string_agg(md5((g * 7)::text), '') FROM generate_series(1, 150) g),
              '{\"v\": 1}'),
             ('json-big', NULL, jsonb_build_object('blob', repeat('z', 4000))),
             ('plain', 'plain text', NULL);",
    );
    as_tenant(
        &mut app,
        "globex",
        "UPDATE docs SET body = left(body, 40) WHERE key = 'incompressible-shrunk';
         UPDATE docs SET body = body || repeat('!', 200), meta = '{\"grown\": true}' WHERE key = 'plain';
         DELETE FROM orders WHERE amount = 3;
         INSERT INTO docs (key, body) VALUES ('temporary', repeat('t', 3500));
         DELETE FROM docs WHERE key = 'temporary';
         SAVEPOINT s;
         INSERT INTO orders (item) VALUES ('undone');
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO orders (item) VALUES ('kept');
         SELECT multitenancy.usage_record('api_calls');",
    );

    // initech: every order deleted again, an upsert that updates, a value set to NULL, and a
    // transaction rolled back.
    as_tenant(
        &mut app,
        "initech",
        "INSERT INTO orders (item) VALUES ('initech-1'), ('initech-2');
         INSERT INTO docs (key, body, meta) VALUES ('report', 'tps', NULL), ('memo', NULL, '{\"to\": \"all\"}');",
    );
    as_tenant(
        &mut app,
        "initech",
        "DELETE FROM orders;
         INSERT INTO docs (key, body, meta) VALUES ('memo', 'cover sheet', jsonb_build_object('to', 'all', 'cc', repeat('c', 300)))
             ON CONFLICT (tenant_id, key) DO UPDATE SET body = EXCLUDED.body, meta = EXCLUDED.meta;
         UPDATE docs SET body = NULL WHERE key = 'report';",
    );
    {
        let mut tx = begin_as(&mut app, "initech");
        tx.batch_execute("INSERT INTO docs (key, body) VALUES ('rolled-back', repeat('r', 1000))").unwrap();
        tx.rollback().unwrap();
    }

    // The fixture does what it claims (ground truth as superuser): a compressed value, values
    // stored out of line, sizes counted uncompressed.
    let compressed: bool = su
        .query_one("SELECT pg_column_size(body) < octet_length(body) FROM docs WHERE key = 'compressible'", &[])
        .unwrap()
        .get(0);
    assert!(compressed, "the 'compressible' value must be stored compressed");
    let toast: String = su
        .query_one("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'docs'::regclass", &[])
        .unwrap()
        .get(0);
    assert!(
        count(&mut su, &format!("SELECT count(*) FROM {toast}")) > 0,
        "some docs values must be stored out of line"
    );
    let sizes: Vec<(String, i64)> = su
        .query(
            "SELECT key, multitenancy.row_bytes(d) FROM docs d
              WHERE key IN ('compressible', 'incompressible', 'json-big') ORDER BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    for (key, bytes) in &sizes {
        assert!(*bytes >= 4000, "row_bytes of {key:?} must count its value uncompressed (>= 4000), got {bytes}");
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM docs WHERE key = 'rolled-back'"), 0);
    assert_eq!(count(&mut su, "SELECT count(*) FROM orders WHERE item = 'undone'"), 0);

    // The report equals the tables.
    assert_stats_match(&mut su, "after the writes of three tenants");
    assert_eq!(usage_drift(&mut su), Vec::new(), "usage_drift() must be empty");

    // And what the fixture wrote, spelled out for the totals rows.
    let stats = tenant_stats(&mut su).unwrap();
    let totals = |id: &str| stats.iter().find(|s| s.tenant_id == id && s.table.is_none()).cloned();
    let expected_totals = [
        ("acme", &ids[0], 5 + 6, 2, json!({"api_calls": 5, "emails": 2})),
        ("globex", &ids[1], 3 + 4, 1, json!({"api_calls": 1})),
        ("initech", &ids[2], 2, 0, json!({})),
    ];
    for (slug, id, rows, members, usage) in expected_totals {
        let total =
            totals(id).unwrap_or_else(|| panic!("tenant_stats() must have a totals row for {slug}: {stats:#?}"));
        assert_eq!(total.slug, slug);
        assert_eq!(total.rows, rows, "{slug}: rows across orders and docs");
        assert!(total.bytes > 0, "{slug}: bytes");
        assert_eq!(total.members, Some(members), "{slug}: members");
        assert_eq!(total.usage, Some(usage), "{slug}: this month's metered usage");
    }
    for s in stats.iter().filter(|s| s.table.is_some()) {
        assert_eq!((s.members, &s.usage), (None, &None), "per-table rows have no members or usage: {s:?}");
    }
}

/// As the application role with tenant A's context, `tenant_stats()` shows A's rows only (its
/// totals and its tables, the same numbers the DBA sees); B's rows exist (superuser); without a
/// context it shows nothing.
#[test]
fn tenant_stats_is_scoped_for_apps() {
    let (db, ids) = fixture("stats_scoped", &["acme", "globex"]);
    let (a, b) = (&ids[0], &ids[1]);
    let mut su = db.superuser();
    let mut app = db.app();
    add_member(&mut su, "acme", U_ONE, "member");
    add_member(&mut su, "globex", U_TWO, "member");
    for slug in ["acme", "globex"] {
        as_tenant(
            &mut app,
            slug,
            &format!(
                "INSERT INTO orders (item) VALUES ('{slug}-1'), ('{slug}-2');
                 INSERT INTO docs (key, body) VALUES ('{slug}-doc', repeat('d', 100));
                 SELECT multitenancy.usage_record('api_calls', 3);"
            ),
        );
    }

    // Ground truth: the DBA sees both tenants, B included.
    let all = tenant_stats(&mut su).unwrap();
    let of = |id: &str| -> Vec<Stat> { all.iter().filter(|s| s.tenant_id == id).cloned().collect() };
    assert_eq!(of(b).len(), 3, "as superuser, globex has a totals row and one row per table: {all:#?}");
    assert_eq!(of(a).len(), 3, "as superuser, acme has a totals row and one row per table: {all:#?}");

    // A's context: A's rows, exactly as the DBA sees them, nothing of B.
    let mut tx = begin_as(&mut app, "acme");
    let seen = tenant_stats(&mut tx).unwrap_or_else(|e| panic!("tenant_stats() as {APP} with acme's context: {e}"));
    tx.commit().unwrap();
    assert!(!seen.is_empty(), "with acme's context tenant_stats() must show acme's rows");
    assert!(seen.iter().all(|s| &s.tenant_id == a), "with acme's context only acme's rows, got {seen:#?}");
    assert_eq!(seen, of(a), "with acme's context, acme's rows as the DBA sees them");
    assert!(seen.iter().any(|s| s.table.is_none()), "acme's totals row");

    // And B's context sees B's (positive control for the scoping, both ways).
    let mut tx = begin_as(&mut app, "globex");
    let seen_b = tenant_stats(&mut tx).unwrap();
    tx.commit().unwrap();
    assert_eq!(seen_b, of(b), "with globex's context, globex's rows as the DBA sees them");

    // Without a context: nothing.
    let none = tenant_stats(&mut app).unwrap_or_else(|e| panic!("tenant_stats() as {APP} without a context: {e}"));
    assert_eq!(none, Vec::new(), "without a tenant context tenant_stats() must show nothing");
}

// ---------------------------------------------------------------------------------------------
// usage_drift() and usage_recompute()
// ---------------------------------------------------------------------------------------------

/// Counters damaged four ways — a table counter raised, a total's bytes overwritten, a table
/// counter deleted, rows bulk-loaded with the triggers skipped (`session_replication_role =
/// replica`) — are reported by `usage_drift()` exactly, repaired by `usage_recompute()` (which
/// returns the same rows), and enforcement uses the repaired numbers.
#[test]
fn recompute_repairs_corrupted_counters() {
    const BULK: i64 = 25;
    let (db, ids) = fixture("stats_recompute", &["acme", "globex", "initech", "umbrella"]);
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let mut su = db.superuser();
    // Counters exist for tenants with a rows or bytes limit: all four here.
    for slug in ["acme", "globex", "initech", "umbrella"] {
        su.execute("SELECT multitenancy.quota_set($1, 'bytes', 1000000000)", &[&slug]).unwrap();
    }
    let mut app = db.app();
    for (i, slug) in ["acme", "globex", "initech", "umbrella"].into_iter().enumerate() {
        let n = i + 2;
        as_tenant(
            &mut app,
            slug,
            &format!(
                "INSERT INTO orders (item, amount) SELECT '{slug}-' || g, g FROM generate_series(1, {n}) g;
                 INSERT INTO docs (key, body) SELECT '{slug}-doc-' || g, repeat('b', 50 * g) FROM generate_series(1, {n}) g;"
            ),
        );
    }
    assert_eq!(usage_drift(&mut su), Vec::new(), "the counters start exact");
    assert_stats_match(&mut su, "before the damage");
    let before = actual(&mut su);
    let cell = |m: &BTreeMap<(String, String), (i64, i64)>, id: &str, table: &str| -> (i64, i64) {
        m.get(&(id.to_string(), table.to_string())).copied().unwrap_or((0, 0))
    };
    let total = |m: &BTreeMap<(String, String), (i64, i64)>, id: &str| -> (i64, i64) {
        TABLES.iter().map(|t| cell(m, id, t)).fold((0, 0), |acc, c| (acc.0 + c.0, acc.1 + c.1))
    };

    // The damage, as superuser.
    su.execute(
        "UPDATE multitenancy.table_usage SET row_count = row_count + 7
          WHERE tenant_id = $1::text::uuid AND relid = 'orders'::regclass",
        &[a],
    )
    .unwrap();
    su.execute("UPDATE multitenancy.table_usage SET byte_count = 1 WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass", &[b]).unwrap();
    let deleted = su
        .execute(
            "DELETE FROM multitenancy.table_usage WHERE tenant_id = $1::text::uuid AND relid = 'docs'::regclass",
            &[c],
        )
        .unwrap();
    assert_eq!(deleted, 1, "initech had a docs counter to delete");
    su.batch_execute(&format!(
        "SET session_replication_role = replica;
         INSERT INTO orders (tenant_id, item, amount) SELECT '{d}', 'bulk-' || g, g FROM generate_series(1, {BULK}) g;
         RESET session_replication_role;"
    ))
    .unwrap();
    let after = actual(&mut su);
    assert_eq!(cell(&after, d, "orders").0, cell(&before, d, "orders").0 + BULK, "the bulk load is in the table");

    // usage_drift() reports exactly the damage.
    let pair = |id: &str, table: Option<&str>, counted: (i64, i64), actual: (i64, i64)| Drift {
        tenant_id: id.to_string(),
        table: table.map(str::to_string),
        rows_counted: counted.0,
        rows_actual: actual.0,
        bytes_counted: counted.1,
        bytes_actual: actual.1,
    };
    let a_orders = cell(&after, a, "orders");
    let mut expected = vec![
        pair(a, Some("orders"), (a_orders.0 + 7, a_orders.1), a_orders),
        pair(b, None, (total(&after, b).0, 1), total(&after, b)),
        pair(c, Some("docs"), (0, 0), cell(&after, c, "docs")),
        pair(d, None, total(&before, d), total(&after, d)),
        pair(d, Some("orders"), cell(&before, d, "orders"), cell(&after, d, "orders")),
    ];
    expected.sort();
    assert_eq!(usage_drift(&mut su), expected, "usage_drift() must report exactly the damaged counters");

    // usage_recompute() repairs them and returns what was wrong.
    assert_eq!(drift_rows(&mut su, "usage_recompute"), expected, "usage_recompute() must return what it repaired");
    assert_eq!(usage_drift(&mut su), Vec::new(), "after usage_recompute() usage_drift() must be empty");
    assert_stats_match(&mut su, "after usage_recompute()");
    let table_counter = |su: &mut Client, id: &str, table: &str| -> Option<(i64, i64)> {
        su.query_opt(
            "SELECT row_count, byte_count FROM multitenancy.table_usage WHERE tenant_id = $1::text::uuid AND relid = $2::text::regclass",
            &[&id, &table],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
    };
    assert_eq!(table_counter(&mut su, c, "docs"), Some(cell(&after, c, "docs")), "initech's docs counter is back");
    assert_eq!(table_counter(&mut su, a, "orders"), Some(a_orders), "acme's orders counter is exact again");
    let tenant_counter = |su: &mut Client, id: &str| -> (i64, i64) {
        let row = su
            .query_one("SELECT row_count, byte_count FROM multitenancy.table_usage WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass", &[&id])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(tenant_counter(&mut su, b), total(&after, b), "globex's totals are exact again");
    assert_eq!(tenant_counter(&mut su, d), total(&after, d), "umbrella's totals include the bulk load");

    // Enforcement uses the repaired numbers. umbrella: a rows limit equal to its (repaired)
    // count refuses the next insert — with the stale count it would have had room for 25.
    let d_rows = total(&after, d).0;
    quota_set(&mut su, "umbrella", "rows", d_rows);
    expect_quota_exceeded(insert_one_order(&mut app, "umbrella"), "rows", "umbrella", d_rows, 1, d_rows);
    // Positive control: one more unit of room, one insert fits, the next is refused.
    quota_set(&mut su, "umbrella", "rows", d_rows + 1);
    assert_eq!(insert_one_order(&mut app, "umbrella").expect("one unit of room left for umbrella"), 1);
    expect_quota_exceeded(insert_one_order(&mut app, "umbrella"), "rows", "umbrella", d_rows + 1, 1, d_rows + 1);

    // acme: its orders counter was 7 too high; with the repaired count one more order fits a
    // limit of count + 1 (the damaged counter would have refused it), the next does not.
    let limit = a_orders.0 + 1;
    quota_set(&mut su, "acme", "rows:public.orders", limit);
    assert_eq!(insert_one_order(&mut app, "acme").expect("acme's repaired orders count leaves one unit"), 1);
    expect_quota_exceeded(insert_one_order(&mut app, "acme"), "rows:public.orders", "acme", limit, 1, limit);

    // globex: its bytes total was 1; with the repaired total, a bytes limit equal to it refuses
    // any growth (the damaged counter would have let it through).
    let b_bytes = total(&after, b).1;
    quota_set(&mut su, "globex", "bytes", b_bytes);
    refused_by_quota(
        insert_one_order(&mut app, "globex"),
        &format!("quota \"bytes\" of tenant \"globex\" exceeded: {b_bytes} used, "),
    );

    // The refused statements changed nothing; the accepted ones were counted.
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM orders WHERE tenant_id = '{b}' AND item = 'one more'")),
        0
    );
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM orders WHERE tenant_id = '{d}' AND item = 'one more'")),
        1
    );
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM orders WHERE tenant_id = '{a}' AND item = 'one more'")),
        1
    );
    assert_eq!(usage_drift(&mut su), Vec::new(), "usage_drift() must stay empty");
    assert_stats_match(&mut su, "after the quota checks");
}
