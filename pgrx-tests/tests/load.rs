//! Load test (issue 18, must-show 1): the leaking patterns real applications write, under load,
//! against a direct server and through a real PgBouncer in transaction mode.
//!
//! Each run (direct, PgBouncer) serves [`REQUESTS`] = 3 000 requests, split evenly over the six
//! patterns below (500 each, interleaved: request `i` uses pattern `i % 6`), from [`WORKERS`]
//! threads sharing an application pool of [`POOL`] = 5 connections (checked out and back, FIFO).
//! The tenant of each request is drawn from a fixed-seed LCG (acme or globex, interleaved); exactly
//! one request in ten of every pattern "forgets" its tenant (does everything except setting it).
//! Every request reads `SELECT tenant_id::text FROM orders` and records what it got. Bounded and
//! loopback only: the server and PgBouncer listen on 127.0.0.1, and the request count is fixed.
//!
//! The patterns (what apps write), and what each non-forgetting request must get:
//! 1. `pool.query("SET multitenancy.tenant_id = ...")` then `pool.query(SELECT)`: two statements,
//!    two checkouts, possibly two connections — the SELECT gets 28000 (the SET was an earlier
//!    transaction), never rows;
//! 2. a session-level `SET` on a checked-out client, sent with the SELECT in one simple-protocol
//!    batch (one implicit transaction): exactly its own rows; the setting stays on the connection;
//! 3. `BEGIN; set_config('multitenancy.tenant_id', ..., false); SELECT; COMMIT`: own rows; the
//!    setting stays on the connection;
//! 4. Django-style middleware with persistent connections (CONN_MAX_AGE) and ATOMIC_REQUESTS: the
//!    request's transaction starts with a session-level `set_config`, then two queries: own rows;
//! 5. an otherwise correct app (`BEGIN; tenant_set; SELECT; COMMIT`), while on every other request
//!    a separate client connects, does a session-level `SET` (and `set_config(..., false)`) of a
//!    tenant, and disconnects — through PgBouncer its server connection goes back to the pool with
//!    that setting on it: own rows;
//! 6. the previous user of the client threw after `BEGIN; tenant_set(A); INSERT ...` and released
//!    it without ROLLBACK; this request (for B, the other tenant) does `BEGIN; tenant_set(B)` —
//!    refused with 28000 "cannot switch" — and its COMMIT rolls A's pending row back; its retry in
//!    a new transaction sees its own rows. (The abandon and the next request run in one checkout,
//!    so the abandoned transaction never blocks other workers' server connections.)
//!
//! Every forgotten request (any pattern, on whatever the pool hands out, after whatever the
//! previous requests left on the connection or server connection) must get 28000 "no tenant
//! context", never rows. Over the whole run: no row of the other tenant is ever returned, both
//! tenants' rows exist before and after (ground truth as the superuser), and no abandoned row was
//! committed. The leak was there to be had: forgotten requests meet connections carrying another
//! request's session-level tenant (the 28000 message says a setting from an earlier transaction
//! was ignored; counted and required). Fails if a session-level setting from an earlier transaction counts (e.g. with
//! `multitenancy.session_context = on` for the app role: patterns 2–5's forgotten requests then
//! see the previous request's tenant), or if a transaction may switch tenants.
//!
//! Not covered: a request that forgets its tenant *inside* an abandoned transaction (pattern 6
//! without ROLLBACK, then no `tenant_set`) runs in A's transaction and sees A's rows; the server
//! cannot tell that request from A's own. Pools must roll back on release.
use multitenancy_integration::pgbouncer::*;
use multitenancy_integration::*;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// Requests per run (direct, PgBouncer), split evenly over the patterns.
const REQUESTS: usize = 3000;
/// Connections in the application's pool.
const POOL: usize = 5;
/// Worker threads sharing the pool.
const WORKERS: usize = 6;
/// The leaking patterns, numbered as in the module comment.
const PATTERNS: usize = 6;
/// PgBouncer's server connections per database/user: fewer than the app's pool, so server
/// connections pass between the app's clients and the rogue clients of pattern 5.
const BOUNCER_POOL: u32 = 2;

/// The application's connection pool: clients checked out and back, first in first out.
struct Pool {
    clients: Mutex<VecDeque<Client>>,
    ready: Condvar,
}

impl Pool {
    fn get(&self) -> Client {
        let mut clients = self.clients.lock().unwrap();
        loop {
            if let Some(client) = clients.pop_front() {
                return client;
            }
            clients = self.ready.wait(clients).unwrap();
        }
    }

    fn put(&self, client: Client) {
        self.clients.lock().unwrap().push_back(client);
        self.ready.notify_one();
    }
}

/// Deterministic pseudo-random numbers (Knuth's MMIX LCG), one per request index.
fn lcg(i: usize) -> u64 {
    let mut x: u64 = 0x5eed_0018_u64 ^ (i as u64);
    for _ in 0..3 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    }
    x >> 33
}

/// What one read of `orders` returned.
enum Read {
    Rows(Vec<String>),
    NoContext(String),
    Switch(String),
    Other(String),
}

fn read(client: &mut Client, sql: &str) -> Read {
    match simple_column(client, sql) {
        Ok(rows) => Read::Rows(rows.into_iter().map(|r| r.unwrap_or_default()).collect()),
        Err(error) => classify(&error),
    }
}

fn classify(error: &postgres::Error) -> Read {
    match error.as_db_error() {
        Some(db) if db.code() == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            if db.message().contains("cannot switch") {
                Read::Switch(db.message().to_string())
            } else if db.message().contains("no tenant context") {
                Read::NoContext(db.message().to_string())
            } else {
                Read::Other(format!("28000 {}", db.message()))
            }
        }
        Some(db) => Read::Other(format!("{} {}", db.code().code(), db.message())),
        None => Read::Other(error.to_string()),
    }
}

/// Counts of one pattern in one run.
#[derive(Default, Clone)]
struct Stats {
    requests: usize,
    forgotten: usize,
    /// Forgotten requests that got 28000 "no tenant context".
    forgotten_28000: usize,
    /// ... of which the message said a setting from an earlier transaction was ignored: the
    /// connection (or server connection) did carry another request's session-level setting.
    forgotten_earlier: usize,
    /// Non-forgetting requests that saw exactly their own tenant's rows.
    own_exact: usize,
    /// Non-forgetting requests that got 28000 "no tenant context" (pattern 1's expectation).
    correct_28000: usize,
    /// Pattern 6: `tenant_set` to the other tenant refused with 28000 "cannot switch".
    switch_refused: usize,
    /// Rows of the other tenant returned (must stay 0).
    foreign_rows: usize,
    /// Rows returned to forgotten requests (must stay 0).
    rows_to_forgotten: usize,
    /// Anything else (first few kept).
    unexpected: usize,
    samples: Vec<String>,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.forgotten += other.forgotten;
        self.forgotten_28000 += other.forgotten_28000;
        self.forgotten_earlier += other.forgotten_earlier;
        self.own_exact += other.own_exact;
        self.correct_28000 += other.correct_28000;
        self.switch_refused += other.switch_refused;
        self.foreign_rows += other.foreign_rows;
        self.rows_to_forgotten += other.rows_to_forgotten;
        self.unexpected += other.unexpected;
        for s in &other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s.clone());
            }
        }
    }

    fn unexpected(&mut self, what: String) {
        self.unexpected += 1;
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }
}

/// A tenant of the fixture.
struct Tenant {
    id: String,
    slug: &'static str,
    rows: usize,
}

/// Everything a request needs: the pool, the tenants, how to open a separate (rogue) client.
struct Load<'a> {
    pool: &'a Pool,
    tenants: [Tenant; 2],
    connect: &'a (dyn Fn() -> Client + Sync),
}

impl Load<'_> {
    /// Record a read of a request for tenant `t` (forgotten or not): foreign rows, rows handed to
    /// a forgotten request, 28000. Returns whether a non-forgetting read saw exactly its rows.
    fn record(&self, stats: &mut Stats, what: &str, t: usize, forgot: bool, result: Read) -> Outcome {
        let own = &self.tenants[t];
        match result {
            Read::Rows(rows) => {
                let foreign = rows.iter().filter(|r| **r != own.id).count();
                stats.foreign_rows += foreign;
                if forgot {
                    stats.rows_to_forgotten += rows.len();
                    stats.unexpected(format!("{what}: forgotten request for {} got {} row(s)", own.slug, rows.len()));
                    Outcome::Wrong
                } else if foreign == 0 && rows.len() == own.rows {
                    Outcome::Own
                } else {
                    stats.unexpected(format!(
                        "{what}: {} saw {} row(s), {foreign} foreign, expected its {}",
                        own.slug,
                        rows.len(),
                        own.rows
                    ));
                    Outcome::Wrong
                }
            }
            Read::NoContext(message) => {
                if forgot && message.contains("earlier transaction") {
                    stats.forgotten_earlier += 1;
                }
                Outcome::NoContext
            }
            Read::Switch(message) => {
                stats.unexpected(format!("{what}: unexpected 'cannot switch': {message}"));
                Outcome::Wrong
            }
            Read::Other(message) => {
                stats.unexpected(format!("{what}: {message}"));
                Outcome::Wrong
            }
        }
    }

    fn request(&self, i: usize, stats: &mut [Stats; PATTERNS]) {
        let pattern = i % PATTERNS;
        let round = i / PATTERNS;
        let forgot = round % 10 == 7;
        let t = (lcg(i) % 2) as usize;
        let (own, other) = (&self.tenants[t], &self.tenants[1 - t]);
        let stats = &mut stats[pattern];
        stats.requests += 1;
        stats.forgotten += usize::from(forgot);
        let what = format!("pattern {}, request {i}", pattern + 1);
        let select = "SELECT tenant_id::text FROM orders";
        let set = format!("SET multitenancy.tenant_id = {}", literal(&own.id));
        let set_config = format!("SELECT set_config('multitenancy.tenant_id', {}, false)", literal(&own.id));
        let outcome = match pattern {
            // pool.query(SET) then pool.query(SELECT): two checkouts.
            0 => {
                if !forgot {
                    let mut client = self.pool.get();
                    client.batch_execute(&set).unwrap_or_else(|e| panic!("{what}: {set}: {e}"));
                    self.pool.put(client);
                }
                let mut client = self.pool.get();
                let result = read(&mut client, select);
                self.pool.put(client);
                self.record(stats, &what, t, forgot, result)
            }
            // Session-level SET and the SELECT in one batch (one implicit transaction).
            1 => {
                let mut client = self.pool.get();
                let sql = if forgot { select.to_string() } else { format!("{set}; {select}") };
                let result = read(&mut client, &sql);
                self.pool.put(client);
                self.record(stats, &what, t, forgot, result)
            }
            // set_config(..., false) in the request's transaction (3), or Django's middleware at
            // the start of an ATOMIC_REQUESTS transaction with two queries after it (4).
            2 | 3 => {
                let mut client = self.pool.get();
                client.batch_execute("BEGIN").unwrap();
                if !forgot {
                    simple_one(&mut client, &set_config);
                }
                let mut outcome = self.record(stats, &what, t, forgot, read(&mut client, select));
                if pattern == 3 && matches!(outcome, Outcome::Own) {
                    let again = format!("{select} WHERE tenant_id IS NOT NULL");
                    outcome = self.record(stats, &what, t, forgot, read(&mut client, &again));
                }
                // The app commits (a failed transaction's COMMIT is a ROLLBACK): a session-level
                // setting made in a committed transaction stays on the connection.
                client.batch_execute("COMMIT").unwrap();
                self.pool.put(client);
                outcome
            }
            // A rogue client's session-level SET, then a correct app's request.
            4 => {
                if round.is_multiple_of(2) {
                    let rogue_tenant = &self.tenants[(lcg(i + 1) % 2) as usize];
                    let mut rogue = (self.connect)();
                    rogue
                        .batch_execute(&format!(
                            "SET multitenancy.tenant_id = {id}; \
                             SELECT set_config('multitenancy.tenant_id', {id}, false)",
                            id = literal(&rogue_tenant.id)
                        ))
                        .unwrap_or_else(|e| panic!("{what}: the rogue client's SET: {e}"));
                    drop(rogue);
                }
                let mut client = self.pool.get();
                client.batch_execute("BEGIN").unwrap();
                if !forgot {
                    simple_one(&mut client, &format!("SELECT multitenancy.tenant_set({})::text", literal(own.slug)));
                }
                let outcome = self.record(stats, &what, t, forgot, read(&mut client, select));
                client.batch_execute(if forgot { "ROLLBACK" } else { "COMMIT" }).unwrap();
                self.pool.put(client);
                outcome
            }
            // The previous user abandoned a transaction of the other tenant.
            _ => {
                let mut client = self.pool.get();
                if forgot {
                    // A clean client (see the module comment for a forgotten request inside an
                    // abandoned transaction).
                    client.batch_execute("BEGIN").unwrap();
                    let result = read(&mut client, select);
                    client.batch_execute("ROLLBACK").unwrap();
                    self.pool.put(client);
                    self.record(stats, &what, t, forgot, result)
                } else {
                    client
                        .batch_execute(&format!(
                            "BEGIN; SELECT multitenancy.tenant_set({}); \
                             INSERT INTO orders (item) VALUES ('abandoned-{i}')",
                            literal(other.slug)
                        ))
                        .unwrap_or_else(|e| panic!("{what}: the abandoned transaction: {e}"));
                    // The next request: BEGIN (only a warning), then its own tenant.
                    client.batch_execute("BEGIN").unwrap();
                    let switch = client
                        .batch_execute(&format!("SELECT multitenancy.tenant_set({})", literal(own.slug)))
                        .map_err(|e| classify(&e));
                    match switch {
                        Err(Read::Switch(_)) => stats.switch_refused += 1,
                        Err(Read::Other(m) | Read::NoContext(m)) => {
                            stats.unexpected(format!("{what}: tenant_set to the other tenant: {m}"))
                        }
                        _ => {
                            stats.unexpected(format!("{what}: tenant_set switched from {} to {}", other.slug, own.slug))
                        }
                    }
                    // Whatever the request did next, its COMMIT (a ROLLBACK of an aborted
                    // transaction) must not commit the abandoned row.
                    let _ = client.batch_execute("COMMIT");
                    // Its retry in a new transaction.
                    client.batch_execute("BEGIN").unwrap();
                    simple_one(&mut client, &format!("SELECT multitenancy.tenant_set({})::text", literal(own.slug)));
                    let result = read(&mut client, select);
                    client.batch_execute("COMMIT").unwrap();
                    self.pool.put(client);
                    self.record(stats, &what, t, forgot, result)
                }
            }
        };
        match (forgot, outcome) {
            (true, Outcome::NoContext) => stats.forgotten_28000 += 1,
            (false, Outcome::Own) if pattern != 0 => stats.own_exact += 1,
            (false, Outcome::NoContext) if pattern == 0 => stats.correct_28000 += 1,
            (_, Outcome::Wrong) => {}
            (forgot, _) => stats.unexpected(format!(
                "{what}: {} request for {} got {}",
                if forgot { "forgotten" } else { "non-forgetting" },
                own.slug,
                if matches!(outcome, Outcome::Own) { "its rows" } else { "28000" }
            )),
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Own,
    NoContext,
    Wrong,
}

/// Both tenants have rows (ground truth as superuser) and no abandoned row was committed.
#[track_caller]
fn assert_ground_truth(o: &Orders, when: &str) {
    assert_eq!(o.true_count(&o.a), o.rows_a, "{when}: ground truth, tenant A's rows exist");
    assert_eq!(o.true_count(&o.b), o.rows_b, "{when}: ground truth, tenant B's rows exist");
    let abandoned = count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE item LIKE 'abandoned-%'");
    assert_eq!(abandoned, 0, "{when}: an abandoned transaction's row was committed by another tenant's request");
}

/// Run the load with `clients` (the pool) and `connect` (for rogue clients), check everything,
/// and return the per-pattern counts as a table.
fn run(o: &Orders, label: &str, clients: Vec<Client>, connect: &(dyn Fn() -> Client + Sync)) -> String {
    assert_ground_truth(o, "before the load");
    assert_eq!(clients.len(), POOL);
    let pool = Pool { clients: Mutex::new(clients.into()), ready: Condvar::new() };
    let load = Load {
        pool: &pool,
        tenants: [
            Tenant { id: o.a.clone(), slug: "acme", rows: o.rows_a as usize },
            Tenant { id: o.b.clone(), slug: "globex", rows: o.rows_b as usize },
        ],
        connect,
    };
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let per_worker: Vec<[Stats; PATTERNS]> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(|| {
                    let mut stats: [Stats; PATTERNS] = Default::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= REQUESTS {
                            return stats;
                        }
                        load.request(i, &mut stats);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let mut stats: [Stats; PATTERNS] = Default::default();
    for worker in &per_worker {
        for (total, s) in stats.iter_mut().zip(worker) {
            total.add(s);
        }
    }
    let mut total = Stats::default();
    stats.iter().for_each(|s| total.add(s));

    let mut table = format!(
        "{label}: {} requests in {:.1} s, pool {POOL}, {WORKERS} workers\n\
         pattern requests forgotten forgotten→28000 (earlier-tx) own-rows-exact correct→28000 switch-refused \
         foreign-rows unexpected\n",
        total.requests,
        elapsed.as_secs_f64()
    );
    for (p, s) in stats.iter().enumerate() {
        writeln!(
            table,
            "{:>7} {:>8} {:>9} {:>15} {:>12} {:>14} {:>14} {:>14} {:>12} {:>10} {:?}",
            p + 1,
            s.requests,
            s.forgotten,
            s.forgotten_28000,
            format!("({})", s.forgotten_earlier),
            s.own_exact,
            s.correct_28000,
            s.switch_refused,
            s.foreign_rows,
            s.unexpected,
            s.samples
        )
        .unwrap();
    }
    eprintln!("{table}");

    // Which patterns broke, for the failure message.
    let mut failures = Vec::new();
    for (p, s) in stats.iter().enumerate() {
        let n = p + 1;
        let correct = s.requests - s.forgotten;
        if s.foreign_rows > 0 {
            failures.push(format!("pattern {n}: {} foreign row(s) returned", s.foreign_rows));
        }
        if s.forgotten_28000 != s.forgotten {
            failures.push(format!(
                "pattern {n}: only {} of {} forgotten requests got 28000 ({} rows handed to them)",
                s.forgotten_28000, s.forgotten, s.rows_to_forgotten
            ));
        }
        if n == 1 && s.correct_28000 != correct {
            failures.push(format!("pattern 1: {} of {correct} split SET/SELECT requests got 28000", s.correct_28000));
        }
        if n != 1 && s.own_exact != correct {
            failures.push(format!("pattern {n}: {} of {correct} correct requests saw exactly their rows", s.own_exact));
        }
        if n == 6 && s.switch_refused != correct {
            failures.push(format!("pattern 6: {} of {correct} switches to the other tenant refused", s.switch_refused));
        }
        if s.unexpected > 0 {
            failures.push(format!("pattern {n}: {} unexpected outcome(s): {:?}", s.unexpected, s.samples));
        }
    }
    assert!(failures.is_empty(), "{label}:\n{}\n\n{table}", failures.join("\n"));

    // The totals, each its own assertion.
    assert_eq!(total.requests, REQUESTS, "{table}");
    assert_eq!(total.forgotten, REQUESTS / 10, "10 % of the requests forget the tenant\n{table}");
    assert_eq!(total.foreign_rows, 0, "foreign rows returned\n{table}");
    assert_eq!(total.rows_to_forgotten, 0, "rows returned to forgotten requests\n{table}");
    assert_eq!(total.forgotten_28000, total.forgotten, "every forgotten request gets 28000\n{table}");
    // The leak was there to be had: forgotten requests ran on connections carrying another
    // request's session-level tenant (the message says it was ignored).
    assert!(total.forgotten_earlier > 0, "no forgotten request met a session-level setting\n{table}");
    assert_ground_truth(o, "after the load");
    table
}

/// Must-show (issue 18, 1), direct: 3 000 requests of two tenants over a pool of 5 direct
/// connections, six leaking patterns, 10 % forgetting the tenant: no foreign row, every forgotten
/// request 28000, no abandoned row committed under the other tenant. (Pattern 5's rogue clients
/// have backends of their own here: the PgBouncer run is where they share server connections.)
#[test]
fn load_direct() {
    let o = Orders::with_rows("load_direct", 5, 3);
    let server = o.db.server();
    let clients = (0..POOL).map(|_| o.db.app()).collect();
    let db = o.db.name.clone();
    run(&o, "direct", clients, &|| server.connect(&db, APP));
}

/// Must-show (issue 18, 1), through a real PgBouncer in transaction mode with 2 server
/// connections for the app's 5 clients and the rogue clients: the same load and the same checks.
/// Fails if anything a transaction leaves on a server connection (a session-level setting) is
/// used by the next client's transaction.
#[test]
fn load_through_pgbouncer() {
    let o = Orders::with_rows("load_pgbouncer", 5, 3);
    let bouncer = PgBouncer::transaction_mode(BOUNCER_POOL);
    let db = o.db.name.clone();
    let clients = (0..POOL).map(|_| bouncer.connect(&db, APP)).collect();
    let table = run(&o, "pgbouncer", clients, &|| bouncer.connect(&db, APP));
    // The server connections really were shared: at most BOUNCER_POOL backends of the app role.
    let backends = count(
        &mut o.db.superuser(),
        &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP}' AND datname = '{db}'"),
    );
    assert!(backends <= BOUNCER_POOL as i64, "{backends} backends for the app role behind PgBouncer\n{table}");
}
