//! The tenant context behind a transaction-mode pooler, and what clears it.
//!
//! Behind PgBouncer in transaction mode, consecutive transactions of different clients run on
//! the same PostgreSQL backend with nothing in between (no `DISCARD ALL`). Whatever context a
//! transaction leaves in that backend, the next client's transaction would act with. These tests
//! run a real PgBouncer with ONE server connection, prove the clients share it (same
//! `pg_backend_pid()`), and check after every transaction that the next client, on that very
//! backend, has no context (28000) — while the rows it would have seen exist (ground truth, read
//! directly as the superuser) and the same client does see its own tenant's rows once it sets
//! its own context (positive control).
//!
//! Through PgBouncer only the simple query protocol is used (see `pgbouncer`).
//!
//! Session-level `SET multitenancy.tenant_id` (without LOCAL) is the pooler-unsafe form: it
//! sticks to the server connection, and no extension can stop that in transaction mode. It is
//! deliberately not exercised here; the transaction-scoped forms (`SET LOCAL`, `set_config(...,
//! true)`, `tenant_set`, `tenant_set_signed`) are, and `tenant_set` outside a transaction block
//! is refused so it cannot be used in the unsafe way by accident.
use multitenancy_integration::pgbouncer::*;
use multitenancy_integration::*;

/// Alternations of the two clients in the plain-mode test.
const ROUNDS: usize = 200;
/// Alternations in the signed-mode test (each uses fresh single-use tokens).
const SIGNED_ROUNDS: usize = 50;

const NO_CONTEXT: &SqlState = &SqlState::INVALID_AUTHORIZATION_SPECIFICATION;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Both tenants have rows (ground truth as superuser): what makes "none seen" meaningful.
#[track_caller]
fn assert_both_tenants_have_rows(o: &Orders) {
    assert!(o.rows_a > 0 && o.rows_b > 0, "the fixture must give both tenants rows");
    assert_eq!(o.true_count(&o.a), o.rows_a, "ground truth: tenant A's rows exist");
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: tenant B's rows exist");
}

/// One tenant of the fixture: id, slug, true row count.
#[derive(Clone)]
struct Tenant {
    id: String,
    slug: &'static str,
    rows: i64,
}

fn tenants(o: &Orders) -> [Tenant; 2] {
    [
        Tenant { id: o.a.clone(), slug: "acme", rows: o.rows_a },
        Tenant { id: o.b.clone(), slug: "globex", rows: o.rows_b },
    ]
}

/// Over the simple protocol: every row of `orders` the client sees is `own`'s, there are
/// exactly `own.rows` of them, and none of `other`'s (whose rows exist, see the callers).
#[track_caller]
fn assert_sees_exactly(client: &mut Client, situation: &str, own: &Tenant, other: &Tenant) {
    let seen = simple_column(client, "SELECT tenant_id::text FROM orders")
        .unwrap_or_else(|e| panic!("{situation}: SELECT FROM orders: {e}"));
    assert!(
        seen.iter().all(|t| t.as_deref() == Some(own.id.as_str())),
        "{situation}: a row of another tenant was visible to {}: {seen:?}",
        own.slug
    );
    assert_eq!(seen.len() as i64, own.rows, "{situation}: {} must see exactly its {} row(s)", own.slug, own.rows);
    let foreign =
        simple_count(client, &format!("SELECT count(*) FROM orders WHERE tenant_id = {}", literal(&other.id)));
    assert_eq!(foreign, 0, "{situation}: {} must see none of {}'s rows", own.slug, other.slug);
    let current = simple_one(client, "SELECT multitenancy.current_tenant_id()::text");
    assert_eq!(current, own.id, "{situation}: current_tenant_id()");
}

/// Reading `orders` fails with 28000 and a message containing `fragment`.
#[track_caller]
fn expect_no_context(client: &mut Client, situation: &str, fragment: &str) {
    let error = expect_sqlstate(simple_value(client, "SELECT count(*) FROM orders"), NO_CONTEXT);
    assert!(error.message().contains(fragment), "{situation}: expected {fragment:?} in {:?}", error.message());
}

/// A transaction on `client` that sets no tenant: it runs on backend `pid` (the one the previous
/// client just used) and reading `orders` fails with 28000. Rolled back afterwards.
#[track_caller]
fn assert_no_context_in_transaction(client: &mut Client, pid: i32, situation: &str, fragment: &str) {
    client.batch_execute("BEGIN").unwrap();
    assert_eq!(backend_pid(client), pid, "{situation}: the client must be on the shared server connection");
    let none = simple_value(client, "SELECT multitenancy.current_tenant_id_or_null()::text");
    match none {
        Ok(value) => assert_eq!(value, None, "{situation}: a tenant context leaked into this transaction"),
        // In signed-only mode the function may refuse instead of answering NULL: also no context.
        Err(error) => assert_eq!(db_error(&error).code(), NO_CONTEXT, "{situation}: {error}"),
    }
    client.batch_execute("ROLLBACK").unwrap();
    client.batch_execute("BEGIN").unwrap();
    expect_no_context(client, situation, fragment);
    client.batch_execute("ROLLBACK").unwrap();
}

/// A fresh token for `tenant` (slug or id), minted directly (not through the pooler) by the
/// superuser.
fn mint(su: &mut Client, tenant: &str) -> String {
    let token: String = su
        .query_one("SELECT multitenancy.tenant_token($1)", &[&tenant])
        .unwrap_or_else(|e| panic!("tenant_token({tenant:?}): {e}"))
        .get(0);
    assert_eq!(token.split('.').count(), 3, "a JWT has three parts: {token:?}");
    token
}

/// Give the application role signed-only mode in `db` (a setting read at backend start: only
/// connections opened afterwards have it).
fn require_signed(su: &mut Client, db: &str) {
    su.batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {db} SET multitenancy.require_signed = on")).unwrap();
}

/// The signing key every signed test uses (32 bytes).
fn add_signing_key(su: &mut Client) {
    su.batch_execute("SELECT multitenancy.signing_key_add('k1', decode(repeat('ab', 32), 'hex'))").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Through PgBouncer (transaction mode, one server connection)
// ---------------------------------------------------------------------------------------------

/// Must-show: through PgBouncer in transaction mode, with ONE server connection shared by two
/// clients (same backend pid, checked in every transaction), a plain-mode context set with
/// `SET LOCAL`, `tenant_set` or `set_config(..., true)` never reaches the other client: each
/// client sees exactly its own tenant's rows (the counts differ, so a stale tenant would show),
/// and a transaction right after the other client's, on the same backend, without a tenant gets
/// 28000. Fails if any form of setting the context outlives its transaction (COMMIT or ROLLBACK)
/// on the server connection, or if a per-backend cache serves the previous transaction's tenant.
#[test]
fn plain_context_never_crosses_clients_sharing_one_server_connection() {
    let o = Orders::with_rows("pooler_plain", 5, 3);
    assert_both_tenants_have_rows(&o);
    let bouncer = PgBouncer::transaction_mode(1);
    let mut clients = [bouncer.connect(&o.db.name, APP), bouncer.connect(&o.db.name, APP)];
    let pid = backend_pid(&mut clients[0]);
    assert_eq!(backend_pid(&mut clients[1]), pid, "with pool size 1 both clients share one server connection");
    let tenants = tenants(&o);

    let mut leak_checks = 0;
    for round in 0..ROUNDS {
        for step in 0..2 {
            // Which client goes, and for which tenant: both vary, so that each client acts for
            // both tenants and each tenant follows both on the shared backend.
            let k = (round + step) % 2;
            let t = (round / 2 + step) % 2;
            let (own, other) = (&tenants[t], &tenants[1 - t]);
            let client = &mut clients[k];
            let situation = format!("round {round}, client {}, {}", k + 1, own.slug);

            client.batch_execute("BEGIN").unwrap();
            assert_eq!(backend_pid(client), pid, "{situation}: the shared server connection");
            match round % 3 {
                0 => client.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = {}", literal(&own.id))).unwrap(),
                1 => {
                    let id =
                        simple_one(client, &format!("SELECT multitenancy.tenant_set({})::text", literal(own.slug)));
                    assert_eq!(id, own.id, "{situation}: tenant_set returns the tenant's id");
                }
                _ => {
                    simple_one(
                        client,
                        &format!("SELECT set_config('multitenancy.tenant_id', {}, true)", literal(&own.id)),
                    );
                }
            }
            assert_sees_exactly(client, &situation, own, other);
            client.batch_execute(if round % 4 == 3 { "ROLLBACK" } else { "COMMIT" }).unwrap();

            // Right after, the other client on the same backend: no context.
            let next = &mut clients[1 - k];
            let situation = format!("{situation}: the next client's transaction");
            if round % 2 == 1 {
                // Also as a single autocommit statement.
                expect_no_context(next, &situation, "no tenant context");
            }
            assert_no_context_in_transaction(next, pid, &situation, "no tenant context");
            leak_checks += 1;
        }
    }
    assert_eq!(leak_checks, 2 * ROUNDS);
    assert_eq!(backend_pid(&mut clients[0]), pid, "still the same server connection at the end");
    assert_both_tenants_have_rows(&o);
}

/// Through PgBouncer, the transaction-scoped setters cannot leave a context on the shared server
/// connection when used outside a transaction block: `tenant_set` is refused with 25P01 (so the
/// pooler-unsafe use cannot happen by accident), and `SET LOCAL` / `set_config(..., true)` last
/// only for their own implicit transaction. After each, the other client on the same backend
/// has no context. Fails if `tenant_set` in autocommit set a session-level context, or if the
/// local forms leaked past their statement.
#[test]
fn autocommit_setters_leave_nothing_on_the_shared_server_connection() {
    let o = Orders::new("pooler_autocommit");
    assert_both_tenants_have_rows(&o);
    let bouncer = PgBouncer::transaction_mode(1);
    let mut c1 = bouncer.connect(&o.db.name, APP);
    let mut c2 = bouncer.connect(&o.db.name, APP);
    let pid = backend_pid(&mut c1);
    assert_eq!(backend_pid(&mut c2), pid, "with pool size 1 both clients share one server connection");
    let [a, b] = tenants(&o);

    let error = expect_sqlstate(
        simple_value(&mut c1, "SELECT multitenancy.tenant_set('acme')"),
        &SqlState::NO_ACTIVE_SQL_TRANSACTION,
    );
    assert!(error.message().contains("transaction block"), "{}", error.message());
    expect_no_context(&mut c2, "after tenant_set outside a transaction block", "no tenant context");
    assert_no_context_in_transaction(&mut c2, pid, "after tenant_set outside a transaction block", "no tenant context");

    // SET LOCAL outside a block only warns and has no effect; set_config(.., true) lasts its
    // own implicit transaction.
    c1.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = {}", literal(&a.id))).unwrap();
    assert_no_context_in_transaction(&mut c2, pid, "after SET LOCAL outside a transaction block", "no tenant context");
    simple_one(&mut c1, &format!("SELECT set_config('multitenancy.tenant_id', {}, true)", literal(&a.id)));
    assert_no_context_in_transaction(&mut c2, pid, "after an autocommit set_config(.., true)", "no tenant context");

    // Positive control: inside a block, the same call works for c1 — and again not for c2.
    c1.batch_execute("BEGIN").unwrap();
    simple_one(&mut c1, "SELECT multitenancy.tenant_set('acme')");
    assert_sees_exactly(&mut c1, "c1 in a transaction block", &a, &b);
    c1.batch_execute("COMMIT").unwrap();
    assert_no_context_in_transaction(&mut c2, pid, "after c1's committed tenant_set", "no tenant context");
    assert_both_tenants_have_rows(&o);
}

/// Must-show: signed mode through PgBouncer. With `require_signed` on for the application role,
/// two clients sharing ONE server connection alternate `BEGIN; tenant_set_signed(<fresh
/// token>); read; COMMIT/ROLLBACK`: each sees exactly its token's tenant, never a foreign row;
/// the other client's transaction right after, on the same backend, without a token gets 28000
/// (`no signed tenant context`), and so do the plain forms (`SET LOCAL multitenancy.tenant_id`,
/// `tenant_set`); a token the other client already used is refused. Fails if the verified
/// context outlives its transaction on the backend, if signed-only mode accepts a plain
/// context, or if a token can be replayed by another client of the pooler.
#[test]
fn signed_context_never_crosses_clients_sharing_one_server_connection() {
    let o = Orders::with_rows("pooler_signed", 4, 2);
    assert_both_tenants_have_rows(&o);
    let db = &o.db.name;
    let mut su = o.db.superuser();
    add_signing_key(&mut su);
    require_signed(&mut su, db);
    // Started after ALTER ROLE: its server connection to this (new) database starts with it.
    let bouncer = PgBouncer::transaction_mode(1);
    let mut clients = [bouncer.connect(db, APP), bouncer.connect(db, APP)];
    let pid = backend_pid(&mut clients[0]);
    assert_eq!(backend_pid(&mut clients[1]), pid, "with pool size 1 both clients share one server connection");
    assert_eq!(simple_one(&mut clients[0], "SHOW multitenancy.require_signed"), "on", "precondition: signed-only mode");
    let tenants = tenants(&o);
    const NO_SIGNED: &str = "no signed tenant context";

    // Before any token: nothing.
    assert_no_context_in_transaction(&mut clients[1], pid, "before any token", NO_SIGNED);

    for round in 0..SIGNED_ROUNDS {
        for step in 0..2 {
            let k = (round + step) % 2;
            let t = (round / 2 + step) % 2;
            let (own, other) = (&tenants[t], &tenants[1 - t]);
            let situation = format!("round {round}, client {}, {}", k + 1, own.slug);
            // By slug or by id, as the application would.
            let token = mint(&mut su, if round % 2 == 0 { own.slug } else { own.id.as_str() });

            let client = &mut clients[k];
            client.batch_execute("BEGIN").unwrap();
            assert_eq!(backend_pid(client), pid, "{situation}: the shared server connection");
            let id = simple_one(client, &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&token)));
            assert_eq!(id, own.id, "{situation}: tenant_set_signed returns the token's tenant");
            assert_sees_exactly(client, &situation, own, other);
            client.batch_execute(if round % 4 == 3 { "ROLLBACK" } else { "COMMIT" }).unwrap();

            let next = &mut clients[1 - k];
            let situation = format!("{situation}: the next client's transaction");
            if round % 2 == 1 {
                expect_no_context(next, &situation, NO_SIGNED);
            }
            assert_no_context_in_transaction(next, pid, &situation, NO_SIGNED);

            match round % 5 {
                // The plain forms give no access in signed-only mode, even for the client's
                // "own" tenant, right after a signed transaction on the same backend.
                1 => {
                    next.batch_execute("BEGIN").unwrap();
                    next.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = {}", literal(&own.id))).unwrap();
                    expect_no_context(next, &format!("{situation}, SET LOCAL multitenancy.tenant_id"), NO_SIGNED);
                    next.batch_execute("ROLLBACK").unwrap();
                }
                2 => {
                    next.batch_execute("BEGIN").unwrap();
                    expect_sqlstate(
                        simple_value(next, &format!("SELECT multitenancy.tenant_set({})", literal(own.slug))),
                        NO_CONTEXT,
                    );
                    next.batch_execute("ROLLBACK").unwrap();
                }
                // Replay: the token the other client just used is refused for this one.
                3 => {
                    next.batch_execute("BEGIN").unwrap();
                    let error = expect_sqlstate(
                        simple_value(next, &format!("SELECT multitenancy.tenant_set_signed({})", literal(&token))),
                        NO_CONTEXT,
                    );
                    assert!(
                        error.message().starts_with("invalid tenant token: ")
                            && error.message().contains("already been used"),
                        "{situation}, replayed token: {:?}",
                        error.message()
                    );
                    next.batch_execute("ROLLBACK").unwrap();
                    assert_no_context_in_transaction(next, pid, &format!("{situation}, after a replay"), NO_SIGNED);
                }
                _ => {}
            }
        }
    }
    assert_eq!(backend_pid(&mut clients[0]), pid, "still the same server connection at the end");
    assert_both_tenants_have_rows(&o);
}

// ---------------------------------------------------------------------------------------------
// DISCARD ALL / RESET ALL / savepoints (direct connections, as the application role)
// ---------------------------------------------------------------------------------------------

/// What session poolers run between clients (`DISCARD ALL`, `RESET ALL`) leaves no plain-mode
/// context: a session-level `SET multitenancy.tenant_id` (which works for a role allowed to keep one:
/// positive control) is gone
/// afterwards, in autocommit and in the next transaction, while the tenant's rows exist; and
/// `RESET ALL` inside a transaction also clears a `SET LOCAL` or `tenant_set` context at once.
/// Fails if the tenant (or user) setting survives either command, e.g. because it is kept
/// outside the GUC machinery or is excluded from RESET ALL.
#[test]
fn discard_all_and_reset_all_leave_no_plain_context() {
    let o = Orders::new("pooler_discard_reset");
    assert_both_tenants_have_rows(&o);
    // The session-level context has to work first (positive control): a role the DBA allowed.
    allow_session_context(&o.db);
    let mut su = o.db.superuser();
    let user: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    su.execute(&format!("SELECT multitenancy.member_add('acme', '{user}', 'member')"), &[]).unwrap();

    for clear in ["DISCARD ALL", "RESET ALL"] {
        let mut app = o.db.app();
        app.batch_execute(&format!("SET multitenancy.tenant_id = '{}'; SET multitenancy.user_id = '{user}'", o.a))
            .unwrap();
        assert_eq!(count(&mut app, "SELECT count(*) FROM orders"), o.rows_a, "positive control before {clear}");
        let current: String = app.query_one("SELECT multitenancy.current_user_id()::text", &[]).unwrap().get(0);
        assert_eq!(current, user, "positive control before {clear}: the user");
        app.batch_execute(clear).unwrap();
        assert_no_context(&mut app, &format!("after {clear}"));
        let no_user: Option<String> =
            app.query_one("SELECT multitenancy.current_user_id_or_null()::text", &[]).unwrap().get(0);
        assert_eq!(no_user, None, "after {clear}: no user either");
        let mut tx = app.transaction().unwrap();
        assert_no_context(&mut tx, &format!("in the next transaction after {clear}"));
    }

    let mut app = o.db.app();
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", o.a)).unwrap();
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "positive control: SET LOCAL");
        tx.batch_execute("RESET ALL").unwrap();
        assert_no_context(&mut tx, "SET LOCAL, then RESET ALL in the same transaction");
    }
    {
        let mut tx = begin_as(&mut app, "globex");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b, "positive control: tenant_set");
        tx.batch_execute("RESET ALL").unwrap();
        assert_no_context(&mut tx, "tenant_set, then RESET ALL in the same transaction");
    }
    assert_both_tenants_have_rows(&o);
}

/// A context from `tenant_set_signed` ends with `RESET ALL` and with `ROLLBACK TO` a savepoint
/// taken before it — with and without signed-only mode — but not with a savepoint taken after it
/// nor with a released one (so that ORMs' nested transactions keep it). In signed-only mode,
/// `RESET ALL` / `DISCARD ALL` do not switch signed-only mode off (it is the role's default, not
/// a session change), so a plain setting after them still gives no access. Without signed-only
/// mode, a signed context takes precedence over `multitenancy.tenant_id`. Fails if the verified
/// context is kept somewhere RESET ALL or subtransaction abort do not reach, or if RESET ALL
/// lets the application out of signed-only mode.
#[test]
fn reset_all_and_rollback_to_savepoint_end_a_signed_context() {
    let o = Orders::new("pooler_signed_reset");
    assert_both_tenants_have_rows(&o);
    let mut su = o.db.superuser();
    add_signing_key(&mut su);

    /// A transaction whose context comes from a fresh token for acme; `before` runs first.
    fn signed<'a>(app: &'a mut Client, su: &mut Client, before: &str) -> Transaction<'a> {
        let token = mint(su, "acme");
        let mut tx = app.transaction().unwrap();
        if !before.is_empty() {
            tx.batch_execute(before).unwrap();
        }
        tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token])
            .unwrap_or_else(|e| panic!("tenant_set_signed after {before:?}: {e}"));
        tx
    }
    fn a_only(o: &Orders, tx: &mut Transaction<'_>, situation: &str) {
        assert_eq!(count(tx, "SELECT count(*) FROM orders"), o.rows_a, "{situation}: A's rows");
        let b: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap().get(0);
        assert_eq!(b, 0, "{situation}: none of B's");
    }
    fn no_context(tx: &mut Transaction<'_>, situation: &str, fragment: &str) {
        let error = expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), NO_CONTEXT);
        assert!(error.message().contains(fragment), "{situation}: {:?}", error.message());
    }

    // Without signed-only mode.
    let mut app = o.db.app();
    {
        // The signed context wins over a plain one set before it; RESET ALL clears both.
        let mut tx = signed(&mut app, &mut su, &format!("SET LOCAL multitenancy.tenant_id = '{}'", o.b));
        a_only(&o, &mut tx, "signed over a plain B context");
        tx.batch_execute("RESET ALL").unwrap();
        no_context(&mut tx, "signed, then RESET ALL", "no tenant context");
    }
    {
        let mut tx = signed(&mut app, &mut su, "SAVEPOINT before_token");
        a_only(&o, &mut tx, "signed inside a savepoint");
        tx.batch_execute("ROLLBACK TO SAVEPOINT before_token").unwrap();
        no_context(&mut tx, "ROLLBACK TO a savepoint taken before tenant_set_signed", "no tenant context");
    }
    {
        let mut tx = signed(&mut app, &mut su, "");
        tx.batch_execute("SAVEPOINT after_token; ROLLBACK TO SAVEPOINT after_token").unwrap();
        a_only(&o, &mut tx, "ROLLBACK TO a savepoint taken after tenant_set_signed keeps the context");
        tx.commit().unwrap();
    }
    {
        let mut tx = signed(&mut app, &mut su, "SAVEPOINT nested");
        tx.batch_execute("RELEASE SAVEPOINT nested").unwrap();
        a_only(&o, &mut tx, "a released savepoint keeps the context");
        tx.commit().unwrap();
    }
    assert_no_context(&mut app, "after the signed transactions");

    // Signed-only mode (read at backend start: a new connection).
    require_signed(&mut su, &o.db.name);
    let mut app = o.db.app();
    fn show(c: &mut Client) -> String {
        c.query_one("SHOW multitenancy.require_signed", &[]).unwrap().get(0)
    }
    assert_eq!(show(&mut app), "on", "precondition: signed-only mode");
    const NO_SIGNED: &str = "no signed tenant context";
    {
        let mut tx = signed(&mut app, &mut su, "");
        a_only(&o, &mut tx, "signed-only mode");
        tx.batch_execute(&format!("RESET ALL; SET LOCAL multitenancy.tenant_id = '{}'", o.a)).unwrap();
        no_context(&mut tx, "signed, RESET ALL, then a plain setting", NO_SIGNED);
    }
    {
        let mut tx = signed(&mut app, &mut su, "SAVEPOINT before_token");
        a_only(&o, &mut tx, "signed-only mode, inside a savepoint");
        tx.batch_execute("ROLLBACK TO SAVEPOINT before_token").unwrap();
        no_context(&mut tx, "signed-only mode, ROLLBACK TO a savepoint taken before", NO_SIGNED);
    }
    app.batch_execute("RESET ALL").unwrap();
    assert_eq!(show(&mut app), "on", "RESET ALL does not leave signed-only mode");
    app.batch_execute("DISCARD ALL").unwrap();
    assert_eq!(show(&mut app), "on", "DISCARD ALL does not leave signed-only mode");
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", o.a)).unwrap();
        no_context(&mut tx, "a plain setting after DISCARD ALL in signed-only mode", NO_SIGNED);
    }
    assert_both_tenants_have_rows(&o);
}

// ---------------------------------------------------------------------------------------------
// Transaction-scoped context by default (issue 18)
// ---------------------------------------------------------------------------------------------

/// A tenant or user set for the session — `SET` without LOCAL, `set_config(..., false)` — counts
/// in the transaction that set it and in no later one: the next request on the same connection
/// that forgets the tenant gets 28000 (the message says why), while the previous tenant's rows
/// exist. Fails if a session-level context outlives its transaction.
#[test]
fn a_session_level_context_lasts_only_its_transaction() {
    let o = Orders::new("pooler_session_scope");
    assert_both_tenants_have_rows(&o);
    let [a, b] = tenants(&o);
    let mut su = o.db.superuser();
    let user: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    su.execute(&format!("SELECT multitenancy.member_add('acme', '{user}', 'member')"), &[]).unwrap();
    let mut app = o.db.app();
    for set in [
        format!("SET multitenancy.tenant_id = '{}'", a.id),
        format!("SELECT set_config('multitenancy.tenant_id', '{}', false)", a.id),
    ] {
        // In its own transaction it works (positive control) ...
        app.batch_execute("BEGIN").unwrap();
        app.batch_execute(&set).unwrap();
        assert_sees_exactly(&mut app, &format!("{set}, same transaction"), &a, &b);
        app.batch_execute("COMMIT").unwrap();
        // ... and the next one, which sets nothing, has no tenant: autocommit and explicit.
        expect_no_context(&mut app, &format!("after {set}, autocommit"), "earlier transaction");
        app.batch_execute("BEGIN").unwrap();
        expect_no_context(&mut app, &format!("after {set}, next transaction"), "earlier transaction");
        app.batch_execute("ROLLBACK").unwrap();
        // A statement of its own (the pool.query("SET ...") pattern) sets nothing for the next.
        app.batch_execute(&set).unwrap();
        expect_no_context(&mut app, &format!("{set} as a statement of its own"), "no tenant context");
    }
    // The same for the user: a session-level user_id is gone in the next transaction.
    app.batch_execute(&format!("SET multitenancy.user_id = '{user}'")).unwrap();
    let mut tx = begin_as(&mut app, "acme");
    let seen: Option<String> = tx.query_one("SELECT multitenancy.current_user_id_or_null()::text", &[]).unwrap().get(0);
    assert_eq!(seen, None, "a session-level user from an earlier transaction does not count");
    tx.rollback().unwrap();
    assert_both_tenants_have_rows(&o);
}

/// One tenant per transaction: an abandoned transaction of tenant A (the app threw after
/// `tenant_set('acme')` and an INSERT, and released the connection without ROLLBACK) cannot be
/// taken over by the next request for B: its `BEGIN` is only a warning, `tenant_set('globex')` is
/// refused (28000, the transaction is aborted) and its COMMIT rolls A's pending row back. The
/// same tenant again is a no-op. Fails if `tenant_set` may switch tenants within a transaction.
#[test]
fn an_abandoned_transaction_never_commits_under_another_tenant() {
    let o = Orders::new("pooler_abandoned");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();
    app.batch_execute("BEGIN; SELECT multitenancy.tenant_set('acme'); INSERT INTO orders (item) VALUES ('abandoned')")
        .unwrap();
    // The same tenant again changes nothing (the ORM set it twice).
    app.batch_execute("SELECT multitenancy.tenant_set('acme')").unwrap();
    // The next request: BEGIN (25001 warning only), then its tenant.
    app.batch_execute("BEGIN").unwrap();
    let error = expect_sqlstate(app.batch_execute("SELECT multitenancy.tenant_set('globex')"), NO_CONTEXT);
    assert!(error.message().contains("cannot switch"), "{}", error.message());
    assert!(error.hint().unwrap_or_default().contains("new transaction"), "{:?}", error.hint());
    app.batch_execute("COMMIT").unwrap(); // of an aborted transaction: a ROLLBACK
    let abandoned = count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE item = 'abandoned'");
    assert_eq!(abandoned, 0, "A's pending row must not be committed by B's request");
    assert_both_tenants_have_rows(&o);
    // Positive control: the connection works for B in a new transaction.
    let mut tx = begin_as(&mut app, "globex");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b);
}

/// The opt-in: a role the DBA allowed (`ALTER ROLE ... SET multitenancy.session_context = on`)
/// keeps a session-level context across transactions (also after RESET ALL, which returns to the
/// role's setting); the application role cannot allow it for itself — not with SET or
/// set_config (42501), not with ALTER ROLE (42501), not with a startup option (refused when the
/// connection starts), and not with RESET ALL. Fails if any of those grants the opt-in.
#[test]
fn only_a_superuser_lets_a_role_keep_a_session_level_context() {
    let o = Orders::new("pooler_session_opt_in");
    assert_both_tenants_have_rows(&o);
    let [a, b] = tenants(&o);
    let db = o.db.name.clone();
    let denied = &SqlState::INSUFFICIENT_PRIVILEGE;

    // Without the opt-in the app role cannot give it to itself.
    let mut app = o.db.app();
    for statement in [
        "SET multitenancy.session_context = on".to_string(),
        "SELECT set_config('multitenancy.session_context', 'on', false)".to_string(),
        "ALTER ROLE CURRENT_USER SET multitenancy.session_context = on".to_string(),
        format!("ALTER ROLE CURRENT_USER IN DATABASE {db} SET multitenancy.session_context = on"),
    ] {
        expect_sqlstate(app.batch_execute(&statement), denied);
    }
    app.batch_execute("RESET ALL").unwrap();
    let stored = count(
        &mut o.db.superuser(),
        &format!(
            "SELECT count(*) FROM pg_db_role_setting
              WHERE setrole = '{APP}'::regrole
                AND setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                AND array_to_string(setconfig, ',') LIKE '%session_context%'"
        ),
    );
    assert_eq!(stored, 0, "no opt-in was stored for the app role (cluster-wide or in this database)");
    let url = format!("{} options='-c multitenancy.session_context=on'", o.db.server().url(&db, APP));
    let mut clients = vec![app];
    match Client::connect(&url, NoTls) {
        Err(error) => assert_eq!(db_error(&error).code(), denied, "a startup option: {error}"),
        Ok(with_option) => clients.push(with_option),
    }
    for client in &mut clients {
        client.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", a.id)).unwrap();
        expect_no_context(client, "the app role without the opt-in", "earlier transaction");
    }

    // With the opt-in (a superuser's ALTER ROLE), the session-level context lasts.
    allow_session_context(&o.db);
    let mut allowed = o.db.app();
    allowed.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", a.id)).unwrap();
    assert_sees_exactly(&mut allowed, "opted in, a later transaction", &a, &b);
    allowed.batch_execute("BEGIN").unwrap();
    assert_sees_exactly(&mut allowed, "opted in, an explicit transaction", &a, &b);
    allowed.batch_execute("COMMIT").unwrap();
    // RESET ALL clears the tenant but not the role's opt-in.
    allowed.batch_execute("RESET ALL").unwrap();
    expect_no_context(&mut allowed, "opted in, after RESET ALL", "no tenant context");
    allowed.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", b.id)).unwrap();
    assert_sees_exactly(&mut allowed, "opted in, after RESET ALL and a new SET", &b, &a);
    assert_both_tenants_have_rows(&o);
}

/// The context functions answer in parallel queries too: forced into a parallel plan (workers
/// only), `current_tenant_id()` and `current_tenant_id_or_null()` give the tenant `tenant_set`
/// chose in this transaction, not "set in an earlier transaction" or NULL. Fails if they may run
/// in a parallel worker, whose copy of the settings was made in a transaction of its own
/// (review finding F1, issue 18).
#[test]
fn the_context_functions_answer_in_parallel_queries() {
    let o = Orders::new("pooler_parallel");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();
    let version: i32 = app.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
    let force = if version >= 160000 { "debug_parallel_query" } else { "force_parallel_mode" };
    let mut tx = begin_as(&mut app, "acme");
    tx.batch_execute(&format!("SET LOCAL {force} = on; SET LOCAL parallel_leader_participation = off")).unwrap();
    let (id, or_null): (String, Option<String>) = tx
        .query_one("SELECT multitenancy.current_tenant_id()::text, multitenancy.current_tenant_id_or_null()::text", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_else(|e| panic!("in a parallel query: {e}"));
    assert_eq!((id.as_str(), or_null.as_deref()), (o.a.as_str(), Some(o.a.as_str())));
    let seen = count(&mut tx, "SELECT count(*) FROM orders WHERE tenant_id = multitenancy.current_tenant_id()");
    assert_eq!(seen, o.rows_a, "a parallel scan calling current_tenant_id() in its filter");
}

/// Claims last their transaction too: claims set for the session (`set_config(..., false)`,
/// the way a framework that forgets `is_local` writes them) count in that transaction and in no
/// later one, so the next request on the connection gets 28000 naming the claims setting, while
/// the tenant's rows exist. Fails if session-level claims outlive their transaction (review
/// finding F2, issue 18).
#[test]
fn session_level_claims_last_only_their_transaction() {
    let o = Orders::new("pooler_claims_scope");
    assert_both_tenants_have_rows(&o);
    let [a, b] = tenants(&o);
    o.db.superuser()
        .batch_execute(&format!(
            "ALTER ROLE {APP} IN DATABASE {} SET multitenancy.claims_setting = 'request.jwt.claims'",
            o.db.name
        ))
        .unwrap();
    let mut app = o.db.app();
    let set = format!("SELECT set_config('request.jwt.claims', '{{\"tenant_id\": \"{}\"}}', false)", a.id);
    app.batch_execute("BEGIN").unwrap();
    app.batch_execute(&set).unwrap();
    assert_sees_exactly(&mut app, "session-level claims, same transaction", &a, &b);
    app.batch_execute("COMMIT").unwrap();
    let error = expect_sqlstate(simple_value(&mut app, "SELECT count(*) FROM orders"), NO_CONTEXT);
    assert!(
        error.message().contains("request.jwt.claims was set for the session in an earlier transaction"),
        "{}",
        error.message()
    );
    // Claims set per transaction (what PostgREST does) keep working.
    app.batch_execute("BEGIN").unwrap();
    app.batch_execute(&set.replace("false)", "true)")).unwrap();
    assert_sees_exactly(&mut app, "transaction-local claims", &a, &b);
    app.batch_execute("COMMIT").unwrap();
    assert_both_tenants_have_rows(&o);
}

/// The one-tenant rule holds for the management functions too: a transaction that wrote a row
/// for acme cannot go on to manage globex (28000), nor can one that managed globex then act for
/// acme, so neither tenant's change commits beside the other's. The user is an owner of globex,
/// so the management call itself would be allowed in a transaction of its own (positive
/// control). Fails if management functions read the context without the rule (review finding
/// F3, issue 18).
#[test]
fn management_functions_keep_to_the_transaction_tenant() {
    let o = Orders::new("pooler_manage_one_tenant");
    assert_both_tenants_have_rows(&o);
    let mut su = o.db.superuser();
    let user: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    su.execute(&format!("SELECT multitenancy.member_add('globex', '{user}', 'owner')"), &[]).unwrap();
    let settings = |su: &mut Client| {
        count(su, "SELECT count(*) FROM multitenancy.setting_list('globex') WHERE key = 'mixed' AND source = 'tenant'")
    };
    let rows_before = o.true_count(&o.a);
    let mut app = o.db.app();
    let as_globex_owner =
        format!("SET LOCAL multitenancy.tenant_id = '{}'; SET LOCAL multitenancy.user_id = '{user}'", o.b);
    // Acme first, then globex's management.
    app.batch_execute("BEGIN; SELECT multitenancy.tenant_set('acme'); INSERT INTO orders (item) VALUES ('mixed')")
        .unwrap();
    app.batch_execute(&as_globex_owner).unwrap();
    let error = expect_sqlstate(
        app.batch_execute("SELECT multitenancy.setting_set('globex', 'mixed', '\"for globex\"')"),
        NO_CONTEXT,
    );
    assert!(error.message().contains("cannot switch"), "{}", error.message());
    app.batch_execute("COMMIT").unwrap();
    // Globex's management first, then acme's rows.
    app.batch_execute("BEGIN").unwrap();
    app.batch_execute(&as_globex_owner).unwrap();
    app.batch_execute("SELECT multitenancy.setting_set('globex', 'mixed', '\"for globex\"')").unwrap();
    app.batch_execute("RESET multitenancy.user_id").unwrap();
    let error = expect_sqlstate(app.batch_execute("SELECT multitenancy.tenant_set('acme')"), NO_CONTEXT);
    assert!(error.message().contains("cannot switch"), "{}", error.message());
    app.batch_execute("COMMIT").unwrap();
    assert_eq!(o.true_count(&o.a), rows_before, "acme's row was not committed");
    assert_eq!(settings(&mut su), 0, "globex's setting was not committed");
    // Positive control: the management call in a transaction of its own commits.
    app.batch_execute("BEGIN").unwrap();
    app.batch_execute(&as_globex_owner).unwrap();
    app.batch_execute("SELECT multitenancy.setting_set('globex', 'mixed', '\"for globex\"'); COMMIT").unwrap();
    assert_eq!(settings(&mut su), 1, "positive control: the setting commits on its own");
}

/// A refused context does not become the transaction's tenant: after a savepoint in which an
/// unknown tenant id (or a suspended tenant) was refused, `ROLLBACK TO` and `tenant_set` of a
/// valid tenant work. Fails if the tenant is remembered before it passes its checks (review
/// finding F5, issue 18).
#[test]
fn a_refused_context_does_not_fix_the_transaction_tenant() {
    let o = Orders::new("pooler_refused_then_valid");
    assert_both_tenants_have_rows(&o);
    let [a, b] = tenants(&o);
    o.db.superuser().execute("SELECT multitenancy.tenant_suspend('globex', 'review')", &[]).unwrap();
    let mut app = o.db.app();
    for refused in [
        "SET LOCAL multitenancy.tenant_id = '00000000-0000-4000-8000-000000000001'; SELECT count(*) FROM orders",
        "SELECT multitenancy.tenant_set('globex')",
    ] {
        app.batch_execute("BEGIN; SAVEPOINT s").unwrap();
        expect_sqlstate(app.batch_execute(refused), NO_CONTEXT);
        app.batch_execute("ROLLBACK TO s; SELECT multitenancy.tenant_set('acme')")
            .unwrap_or_else(|e| panic!("tenant_set after {refused:?} was refused: {e}"));
        assert_sees_exactly(&mut app, &format!("after {refused:?}"), &a, &b);
        app.batch_execute("COMMIT").unwrap();
    }
}

/// `tenant_set` of the tenant the transaction already has still checks a user named since: a
/// user who is not a member of it is refused (28000) by that call, not only by the next query.
/// Fails if the "same tenant again" shortcut skips the membership check (review finding on the
/// client helpers, issue 18).
#[test]
fn tenant_set_of_the_same_tenant_checks_a_new_user() {
    let o = Orders::new("pooler_same_tenant_user");
    assert_both_tenants_have_rows(&o);
    let mut su = o.db.superuser();
    let member: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    let stranger: String = su.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    su.execute(&format!("SELECT multitenancy.member_add('acme', '{member}', 'member')"), &[]).unwrap();
    su.execute(&format!("SELECT multitenancy.member_add('globex', '{stranger}', 'member')"), &[]).unwrap();
    let mut app = o.db.app();
    let mut tx = begin_as(&mut app, "acme");
    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&member]).unwrap();
    tx.execute("SELECT multitenancy.tenant_set('acme')", &[]).unwrap();
    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&stranger]).unwrap();
    let error = expect_sqlstate(tx.execute("SELECT multitenancy.tenant_set('acme')", &[]), NO_CONTEXT);
    assert!(error.message().contains("not a member"), "{}", error.message());
}
