//! Quotas under concurrency (issue 6): the writes of one tenant serialise on its counting lock
//! until commit, so transactions racing for the last unit of a limit cannot both get it
//! (the second waits, then is refused with 53400 if the first committed, or succeeds if it
//! rolled back); and the writes of different tenants never wait for each other.
//!
//! Every session is a real connection as [`APP`] (NOSUPERUSER, NOBYPASSRLS, owns nothing) with
//! the tenant context set by `tenant_set`. That a session waits is shown by the server
//! (`pg_stat_activity` / `pg_blocking_pids`), that a session does not wait by `lock_timeout`
//! (it would fail with 55P03, and a control shows it does where a wait exists); nothing is
//! asserted on wall-clock time. Outcomes are checked against the ground truth read as
//! superuser: the rows in the table, the counters, and `usage_drift()`.
use multitenancy_integration::*;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// The backend pid of a connection.
fn backend_pid(client: &mut Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Wait until backend `waiter` waits for a lock held by backend `holder`, as the server reports
/// it (`pg_stat_activity.wait_event_type = 'Lock'` and `pg_blocking_pids`). Gives up after 10 s.
#[track_caller]
fn wait_until_blocked_by(su: &mut Client, waiter: i32, holder: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked: bool = su
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                 WHERE pid = $1 AND wait_event_type = 'Lock' AND $2 = ANY (pg_blocking_pids($1)))",
                &[&waiter, &holder],
            )
            .unwrap()
            .get(0);
        if blocked {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: backend {waiter} never waited for a lock of backend {holder}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ground truth (as superuser): rows of a tenant in `orders`.
fn true_count(su: &mut Client, tenant_id: &str) -> i64 {
    su.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&tenant_id]).unwrap().get(0)
}

/// Ground truth (as superuser): rows of `orders` with this item.
fn rows_with_item(su: &mut Client, item: &str) -> i64 {
    su.query_one("SELECT count(*) FROM orders WHERE item = $1", &[&item]).unwrap().get(0)
}

/// The counted usage of a tenant (as superuser): its totals row in `table_usage` (relid 0) once
/// it has counters (a tenant with a limit gets them at its first write), counted from the tables
/// before that.
fn counted(su: &mut Client, tenant_id: &str) -> (i64, i64) {
    let row = su
        .query_one(
            "SELECT coalesce((SELECT row_count FROM multitenancy.table_usage
                               WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass),
                             (SELECT row_count FROM multitenancy._usage_report($1::text::uuid) WHERE relid = 0), 0),
                    coalesce((SELECT byte_count FROM multitenancy.table_usage
                               WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass),
                             (SELECT byte_count FROM multitenancy._usage_report($1::text::uuid) WHERE relid = 0), 0)",
            &[&tenant_id],
        )
        .unwrap_or_else(|e| panic!("the counters of {tenant_id}: {e}"));
    (row.get(0), row.get(1))
}

/// Ground truth (as superuser): `(rows, bytes)` of a tenant in `orders`, from the table.
fn actual(su: &mut Client, tenant_id: &str) -> (i64, i64) {
    let row = su
        .query_one(
            "SELECT count(*), coalesce(sum(multitenancy.row_bytes(o)), 0)::bigint FROM orders o
              WHERE o.tenant_id = $1::text::uuid",
            &[&tenant_id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// `quota_check('rows')` as [`APP`] with `slug`'s context: `(used, quota, remaining)`.
fn quota_check_rows(app: &mut Client, slug: &str) -> (i64, Option<i64>, Option<i64>) {
    let mut tx = begin_as(app, slug);
    let row = tx
        .query_one("SELECT used, quota, remaining FROM multitenancy.quota_check('rows')", &[])
        .unwrap_or_else(|e| panic!("quota_check('rows') as {APP} with {slug}'s context: {e}"));
    let result = (row.get(0), row.get(1), row.get(2));
    tx.commit().unwrap();
    result
}

/// A postgres error as one line, with its SQLSTATE.
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// Where the tenant's rows limit comes from.
#[derive(Clone, Copy)]
enum LimitFrom {
    /// `quota_set(tenant, 'rows', L)`.
    Override,
    /// A plan with `{"rows": L}`, and `tenant_change_plan`.
    Plan,
}

/// Set acme's `rows` limit to `limit` (as superuser, the DBA).
fn limit_acme_rows(su: &mut Client, limit: i64, from: LimitFrom) {
    match from {
        LimitFrom::Override => {
            su.execute("SELECT multitenancy.quota_set('acme', 'rows', $1)", &[&limit]).unwrap();
        }
        LimitFrom::Plan => {
            su.batch_execute(&format!(
                "SELECT multitenancy.plan_set('small', '{{\"rows\": {limit}}}'::jsonb, '{{}}'::jsonb);
                 SELECT multitenancy.tenant_change_plan('acme', 'small');"
            ))
            .unwrap();
        }
    }
}

/// Two sessions of acme race for the last unit of its rows limit: the first inserts it and
/// stays open; the second's insert must wait for the first (shown by the server); then the
/// first commits (`first_commits`) or rolls back.
fn race_for_the_last_unit(tag: &str, from: LimitFrom, first_commits: bool) {
    const LIMIT: i64 = 5;
    let orders = Orders::with_rows(tag, LIMIT - 1, 2);
    let db = &orders.db;
    let mut su = db.superuser();
    limit_acme_rows(&mut su, LIMIT, from);
    // The precondition, as the application and as the ground truth: one unit left.
    assert_eq!(quota_check_rows(&mut db.app(), "acme"), (LIMIT - 1, Some(LIMIT), Some(1)));
    assert_eq!(true_count(&mut su, &orders.a), LIMIT - 1);
    assert_eq!(counted(&mut su, &orders.a).0, LIMIT - 1);

    // Session 1 takes the last unit and keeps its transaction open.
    let mut first = db.app();
    let first_pid = backend_pid(&mut first);
    let mut first_tx = begin_as(&mut first, "acme");
    first_tx
        .execute("INSERT INTO orders (item) VALUES ('last unit, first session')", &[])
        .expect("the last unit fits the limit");

    // Session 2 wants it too, in a thread: it must wait for session 1.
    let mut second = db.app();
    let second_pid = backend_pid(&mut second);
    let racer = std::thread::spawn(move || -> Result<u64, postgres::Error> {
        let mut tx = begin_as(&mut second, "acme");
        let inserted = tx.execute("INSERT INTO orders (item) VALUES ('last unit, second session')", &[])?;
        tx.commit()?;
        Ok(inserted)
    });
    wait_until_blocked_by(&mut su, second_pid, first_pid, "the second insert for the last unit");
    assert!(!racer.is_finished(), "the second session must still be waiting while the first is open");
    // While both are open, the table holds the committed rows only.
    assert_eq!(true_count(&mut su, &orders.a), LIMIT - 1);

    if first_commits {
        first_tx.commit().expect("COMMIT of the first session");
        let result = racer.join().expect("the second session's thread panicked");
        expect_quota_exceeded(result, "rows", "acme", LIMIT, 1, LIMIT);
        assert_eq!(rows_with_item(&mut su, "last unit, first session"), 1, "the first session's row is committed");
        assert_eq!(rows_with_item(&mut su, "last unit, second session"), 0, "the refused insert left no row");
    } else {
        first_tx.rollback().expect("ROLLBACK of the first session");
        let inserted = racer.join().expect("the second session's thread panicked").unwrap_or_else(|e| {
            panic!("after the first session rolled back, the second must get the last unit, got {}", describe(&e))
        });
        assert_eq!(inserted, 1);
        assert_eq!(rows_with_item(&mut su, "last unit, first session"), 0, "the rolled back row is gone");
        assert_eq!(rows_with_item(&mut su, "last unit, second session"), 1, "the second session's row is committed");
    }

    // Exactly the limit, and the counters agree with the table.
    assert_eq!(true_count(&mut su, &orders.a), LIMIT);
    assert_eq!(counted(&mut su, &orders.a), actual(&mut su, &orders.a));
    assert_eq!(usage_drift(&mut su), Vec::<String>::new(), "usage_drift() must be empty");
    assert_eq!(quota_check_rows(&mut db.app(), "acme"), (LIMIT, Some(LIMIT), Some(0)));
    // The other tenant was not touched.
    assert_eq!(true_count(&mut su, &orders.b), orders.rows_b);
}

// ---------------------------------------------------------------------------------------------
// Racing for the last unit
// ---------------------------------------------------------------------------------------------

/// Limit from an override: the first session commits the last unit, the waiting second session
/// is then refused with 53400 and the tenant ends with exactly the limit.
#[test]
fn racing_for_the_last_unit() {
    race_for_the_last_unit("quota_race_commit", LimitFrom::Override, true);
}

/// Limit from a plan: the first session rolls back, the waiting second session gets the unit
/// that was given back and the tenant ends with exactly the limit.
#[test]
fn racing_for_the_last_unit_rolled_back() {
    race_for_the_last_unit("quota_race_rollback", LimitFrom::Plan, false);
}

/// REPEATABLE READ, and the last unit raced for through two different tables: the second
/// transaction's snapshot predates the first's commit, yet it waits for the first and then
/// counts with the committed totals — refused with 53400, not let through on its stale
/// snapshot (and not failed with a serialization error, which a row lock would give).
#[test]
fn repeatable_read_writers_of_two_tables_race_for_the_last_unit() {
    const LIMIT: i64 = 5;
    let orders = Orders::with_rows("quota_race_rr", LIMIT - 1, 2);
    let db = &orders.db;
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);
             SELECT multitenancy.tenant_enable('notes');
             GRANT SELECT, INSERT ON notes TO {APP};"
        ))
        .unwrap();
    let mut su = db.superuser();
    limit_acme_rows(&mut su, LIMIT, LimitFrom::Override);

    let mut first = db.app();
    let first_pid = backend_pid(&mut first);
    let mut first_tx =
        first.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    first_tx.query_one("SELECT multitenancy.tenant_set('acme')", &[]).unwrap();
    // The second transaction takes its snapshot now, before the first inserts or commits.
    let mut second = db.app();
    let second_pid = backend_pid(&mut second);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let racer = std::thread::spawn(move || -> Result<u64, postgres::Error> {
        let mut tx = second.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
        tx.query_one("SELECT multitenancy.tenant_set('acme')", &[])?;
        let seen: i64 = tx.query_one("SELECT count(*) FROM orders", &[])?.get(0);
        ready_tx.send(seen).unwrap();
        go_rx.recv().unwrap();
        let inserted = tx.execute("INSERT INTO notes (body) VALUES ('last unit, second session')", &[])?;
        tx.commit()?;
        Ok(inserted)
    });
    assert_eq!(ready_rx.recv().unwrap(), LIMIT - 1, "the second snapshot sees the rows before the race");
    first_tx.execute("INSERT INTO orders (item) VALUES ('last unit, first session')", &[]).expect("the last unit fits");
    go_tx.send(()).unwrap();
    wait_until_blocked_by(&mut su, second_pid, first_pid, "the second REPEATABLE READ insert");
    first_tx.commit().expect("COMMIT of the first session");
    let result = racer.join().expect("the second session's thread panicked");
    expect_quota_exceeded(result, "rows", "acme", LIMIT, 1, LIMIT);
    assert_eq!(rows_with_item(&mut su, "last unit, first session"), 1);
    assert_eq!(count(&mut su, "SELECT count(*) FROM notes"), 0, "the refused insert left no row");
    assert_eq!(true_count(&mut su, &orders.a), LIMIT);
    assert_eq!(usage_drift(&mut su), Vec::<String>::new(), "usage_drift() must be empty");
}

// ---------------------------------------------------------------------------------------------
// Many connections near the limit
// ---------------------------------------------------------------------------------------------

/// Sixteen connections (each its own application session) try, at once, five inserts each in
/// transactions of their own while ten units are left: exactly ten commit, every other attempt
/// is refused with 53400, and the counters equal the table.
#[test]
fn sixteen_connections_near_the_limit() {
    const LIMIT: i64 = 20;
    const PRESENT: i64 = 10;
    const THREADS: usize = 16;
    const ATTEMPTS: usize = 5;
    let orders = Orders::with_rows("quota_sixteen_connections", PRESENT, 2);
    let db = &orders.db;
    let mut su = db.superuser();
    su.execute("SELECT multitenancy.quota_set('acme', 'rows', $1)", &[&LIMIT]).unwrap();
    assert_eq!(true_count(&mut su, &orders.a), PRESENT);
    assert_eq!(quota_check_rows(&mut db.app(), "acme"), (PRESENT, Some(LIMIT), Some(LIMIT - PRESENT)));

    let url = db.server().url(&db.name, APP);
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Vec<Result<(), postgres::Error>> {
                let mut app = Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("worker {worker}: connect: {e}"));
                // Keep a stuck worker from hanging the test (a wait on the counter row is
                // expected and short: one insert's statement trigger).
                app.batch_execute("SET statement_timeout = '10s'").unwrap();
                barrier.wait();
                (0..ATTEMPTS)
                    .map(|attempt| {
                        let mut tx = begin_as(&mut app, "acme");
                        tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&format!("worker-{worker}-{attempt}")])?;
                        tx.commit()
                    })
                    .collect()
            })
        })
        .collect();

    let mut committed = 0i64;
    let mut refused = 0usize;
    let mut unexpected = Vec::new();
    for worker in workers {
        for outcome in worker.join().expect("a worker thread panicked") {
            match outcome {
                Ok(()) => committed += 1,
                Err(e) => match e.as_db_error() {
                    Some(db_err) if db_err.code() == &SqlState::CONFIGURATION_LIMIT_EXCEEDED => {
                        let expected = format!(
                            "quota \"rows\" of tenant \"acme\" exceeded: {LIMIT} used, 1 more requested, limit {LIMIT}"
                        );
                        if db_err.message().contains(&expected) {
                            refused += 1;
                        } else {
                            unexpected
                                .push(format!("53400 with message {:?}, expected {expected:?}", db_err.message()));
                        }
                    }
                    _ => unexpected.push(describe(&e)),
                },
            }
        }
    }
    assert!(unexpected.is_empty(), "every failure must be the quota's 53400, got: {unexpected:#?}");
    assert_eq!(committed, LIMIT - PRESENT, "exactly the free units must be committed");
    assert_eq!(refused, THREADS * ATTEMPTS - (LIMIT - PRESENT) as usize, "every other attempt must be refused");

    // Ground truth: exactly the limit, the counters equal the table, no drift.
    assert_eq!(true_count(&mut su, &orders.a), LIMIT);
    let workers_rows = count(&mut su, "SELECT count(*) FROM orders WHERE item LIKE 'worker-%'");
    assert_eq!(workers_rows, LIMIT - PRESENT);
    assert_eq!(counted(&mut su, &orders.a).0, LIMIT, "the counted rows");
    assert_eq!(counted(&mut su, &orders.a), actual(&mut su, &orders.a));
    assert_eq!(usage_drift(&mut su), Vec::<String>::new(), "usage_drift() must be empty");
    assert_eq!(true_count(&mut su, &orders.b), orders.rows_b, "the other tenant was not touched");
}

// ---------------------------------------------------------------------------------------------
// Tenants do not wait for each other
// ---------------------------------------------------------------------------------------------

/// One more insert for `slug` in a session with `lock_timeout = '200ms'`, rolled back if it
/// works: fails with 55P03 if the insert has to wait for a lock.
fn insert_with_short_lock_timeout(db: &TestDb, slug: &str) -> Result<u64, postgres::Error> {
    let mut probe = db.app();
    probe.batch_execute("SET lock_timeout = '200ms'; SET statement_timeout = '10s'").unwrap();
    let mut tx = begin_as(&mut probe, slug);
    let result = tx.execute("INSERT INTO orders (item) VALUES ('probe')", &[]);
    drop(tx); // rolled back
    result
}

/// While a transaction of tenant 0 holds its counter row (an uncommitted insert), sixteen other
/// tenants insert and commit at the same time, each with `lock_timeout = '3s'`: all succeed
/// while tenant 0's transaction is still open. The control shows that a second writer of
/// tenant 0 does wait (55P03 with a short lock_timeout), so the test could detect blocking.
#[test]
fn tenants_do_not_block_each_other() {
    const TENANTS: usize = 17;
    const INITIAL: i64 = 2;
    const TRANSACTIONS: i64 = 2;
    const ROWS_PER_TRANSACTION: i64 = 3;
    let db = TestDb::new("quota_tenants_do_not_block");
    let slugs: Vec<String> = (0..TENANTS).map(|i| format!("t{i:02}")).collect();
    let ids: Vec<String> = slugs.iter().map(|s| db.tenant(&format!("Tenant {s}"), s)).collect();
    create_orders(&db);
    let mut su = db.superuser();
    // Every tenant has a rows limit (far away), so every write also checks a limit.
    for slug in &slugs {
        su.execute("SELECT multitenancy.quota_set($1, 'rows', 1000)", &[slug]).unwrap();
    }
    let mut app = db.app();
    for slug in &slugs {
        let mut tx = begin_as(&mut app, slug);
        for i in 0..INITIAL {
            tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&format!("{slug}-initial-{i}")]).unwrap();
        }
        tx.commit().unwrap();
    }

    // Session X: tenant 0 inserts a row and keeps its transaction open.
    let mut x = db.app();
    let x_pid = backend_pid(&mut x);
    let mut x_tx = begin_as(&mut x, &slugs[0]);
    x_tx.execute("INSERT INTO orders (item) VALUES ('held open by X')", &[]).unwrap();
    let x_activity = |su: &mut Client| -> (Option<String>, Option<String>) {
        let row = su
            .query_one("SELECT state, xact_start::text FROM pg_stat_activity WHERE pid = $1", &[&x_pid])
            .unwrap_or_else(|e| panic!("pg_stat_activity of X ({x_pid}): {e}"));
        (row.get(0), row.get(1))
    };
    let (state, x_started) = x_activity(&mut su);
    assert_eq!(state.as_deref(), Some("idle in transaction"), "X must be open");
    assert!(x_started.is_some(), "X must have a transaction start");

    // Control: another writer of tenant 0 does wait for X (so a wait would be detected).
    expect_sqlstate_mentioning(
        insert_with_short_lock_timeout(&db, &slugs[0]),
        &SqlState::LOCK_NOT_AVAILABLE,
        &["lock timeout"],
    );

    // Sixteen other tenants write at the same time, each on its own connection.
    let url = db.server().url(&db.name, APP);
    let barrier = Arc::new(Barrier::new(TENANTS - 1));
    let workers: Vec<_> = slugs[1..]
        .iter()
        .cloned()
        .map(|slug| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(), String> {
                let mut app = Client::connect(&url, NoTls).map_err(|e| format!("{slug}: connect: {e}"))?;
                app.batch_execute("SET lock_timeout = '3s'; SET statement_timeout = '5s'")
                    .map_err(|e| format!("{slug}: SET: {}", describe(&e)))?;
                barrier.wait();
                for t in 0..TRANSACTIONS {
                    let mut tx = begin_as(&mut app, &slug);
                    for r in 0..ROWS_PER_TRANSACTION {
                        tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&format!("{slug}-tx{t}-row{r}")])
                            .map_err(|e| format!("{slug}: INSERT: {}", describe(&e)))?;
                    }
                    tx.commit().map_err(|e| format!("{slug}: COMMIT: {}", describe(&e)))?;
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> =
        workers.into_iter().filter_map(|w| w.join().expect("a worker thread panicked").err()).collect();
    assert!(
        failures.is_empty(),
        "writers of other tenants must not wait for tenant 0's open transaction: {failures:#?}"
    );

    // They finished while X is still open: the same transaction, still idle in it.
    assert_eq!(
        x_activity(&mut su),
        (Some("idle in transaction".to_string()), x_started.clone()),
        "X must still be the same open transaction after the other tenants finished"
    );
    // Their work is committed and counted, while tenant 0 shows only its committed rows.
    for (slug, id) in slugs.iter().zip(&ids).skip(1) {
        let expected = INITIAL + TRANSACTIONS * ROWS_PER_TRANSACTION;
        assert_eq!(true_count(&mut su, id), expected, "{slug}'s rows are committed while X is open");
        assert_eq!(counted(&mut su, id).0, expected, "{slug}'s counter is committed while X is open");
    }
    assert_eq!(true_count(&mut su, &ids[0]), INITIAL, "X's row is not committed yet");
    // The control again: X still holds tenant 0's counter.
    expect_sqlstate_mentioning(
        insert_with_short_lock_timeout(&db, &slugs[0]),
        &SqlState::LOCK_NOT_AVAILABLE,
        &["lock timeout"],
    );

    x_tx.commit().expect("COMMIT of X");

    // Final ground truth for all 17: the table and the counters agree.
    assert_eq!(true_count(&mut su, &ids[0]), INITIAL + 1);
    for (slug, id) in slugs.iter().zip(&ids) {
        let expected = if id == &ids[0] { INITIAL + 1 } else { INITIAL + TRANSACTIONS * ROWS_PER_TRANSACTION };
        assert_eq!(true_count(&mut su, id), expected, "{slug}: rows in the table");
        assert_eq!(counted(&mut su, id), actual(&mut su, id), "{slug}: the counters must equal the table");
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM orders WHERE item = 'probe'"), 0, "the probes were rolled back");
    assert_eq!(usage_drift(&mut su), Vec::<String>::new(), "usage_drift() must be empty");
}
