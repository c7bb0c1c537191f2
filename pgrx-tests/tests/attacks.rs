//! White-box attacks, by attacker role: what each role could do to another tenant with today's
//! knowledge of the code, and what must stop it.
//!
//! - [`app_role`]: whatever an SQL injection on the application's connection can run, as [`APP`]
//!   (NOSUPERUSER, NOBYPASSRLS, owns nothing) — plain, signed (behind a real PgBouncer) and
//!   claims modes;
//! - [`tenant_admin`]: an end user with role `admin` in tenant A, through the application;
//! - [`support_staff`]: a member of `multitenancy_admin`;
//! - [`operator_and_owner`]: the table owner ([`OWNER`], runs migrations) planting code that
//!   another role runs, and an operator (a non-superuser granted the lifecycle functions);
//! - [`without_preloading`]: the application-role attacks on a server without
//!   `shared_preload_libraries`.
//!
//! Every test asserts the ground truth (read as the superuser: tenant B's rows, counters, roles,
//! catalog flags exist as they should) AND that the attacker's effect did not happen, then the
//! refusal's SQLSTATE. The superuser only sets up and reads ground truth; every attack runs as
//! the real non-superuser role named.
use multitenancy_integration::pgbouncer::*;
use multitenancy_integration::*;
use postgres::types::ToSql;
use std::fmt::Debug;
use std::sync::OnceLock;

/// A support engineer: LOGIN, NOSUPERUSER, NOBYPASSRLS, member of `multitenancy_admin`.
const SUPPORT: &str = "mt_attack_support";
/// An operator: LOGIN, NOSUPERUSER, NOBYPASSRLS, granted tenant_delete / tenant_purge per database.
const OPERATOR: &str = "mt_attack_operator";

/// End users (values of `multitenancy.user_id`).
const ADMIN_A: &str = "a0000000-0000-4000-8000-0000000000ad";
const OWNER_B: &str = "b0000000-0000-4000-8000-0000000000b0";
const MEMBER_B: &str = "b0000000-0000-4000-8000-0000000000b1";

const PRIVILEGE: &SqlState = &SqlState::INSUFFICIENT_PRIVILEGE;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Expect `result` to be a database error with `code`; `what` names the attempt in the panic.
#[track_caller]
fn refused<T: Debug>(what: &str, result: Result<T, postgres::Error>, code: &SqlState) -> DbError {
    refused_with_one_of(what, result, &[code])
}

/// Expect `result` to be a database error with one of `codes`.
#[track_caller]
fn refused_with_one_of<T: Debug>(what: &str, result: Result<T, postgres::Error>, codes: &[&SqlState]) -> DbError {
    let expected: Vec<&str> = codes.iter().map(|c| c.code()).collect();
    match result {
        Ok(value) => panic!("{what}: expected SQLSTATE {expected:?}, but it succeeded: {value:?}"),
        Err(error) => {
            let db = error.as_db_error().unwrap_or_else(|| {
                panic!("{what}: expected SQLSTATE {expected:?}, got no database error (did the server crash?): {error}")
            });
            assert!(
                codes.contains(&db.code()),
                "{what}: expected SQLSTATE {expected:?}, got {}: {} (detail: {:?})",
                db.code().code(),
                db.message(),
                db.detail()
            );
            db.clone()
        }
    }
}

/// Message, detail and hint of an error, as one text (what a client is told). A Rust backtrace
/// that pgrx appends to the detail when the server runs with `RUST_BACKTRACE` set is left out: it
/// depends on the environment, not on what the extension says.
fn told(error: &DbError) -> String {
    let detail = error.detail().unwrap_or_default();
    let detail = detail
        .lines()
        .position(|line| line.trim_start().starts_with("0: "))
        .map_or(detail.to_string(), |frame| detail.lines().take(frame).collect::<Vec<_>>().join("\n"));
    format!("{}\n{}\n{}", error.message(), detail.trim_end(), error.hint().unwrap_or_default())
}

/// Ground truth: where the usage counters disagree with the tenant-enabled tables
/// (`usage_drift()`, as the superuser). Empty when every counter is exact.
fn drift(db: &TestDb) -> Vec<String> {
    db.superuser()
        .query(
            "SELECT format('tenant %s table %s: rows %s counted / %s actual, bytes %s / %s', tenant_id,
                           coalesce(table_name::text, '(totals)'), rows_counted, rows_actual, bytes_counted, bytes_actual)
               FROM multitenancy.usage_drift()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Ground truth: a tenant's counted rows in total (its `table_usage` totals row).
fn counted_rows(db: &TestDb, tenant_id: &str) -> i64 {
    db.superuser()
        .query_one(
            "SELECT coalesce(sum(row_count), 0)::bigint FROM multitenancy.table_usage
              WHERE tenant_id = $1::text::uuid AND relid = 0::oid::regclass",
            &[&tenant_id],
        )
        .unwrap()
        .get(0)
}

/// Attach the extension's counting trigger functions to `table`, as a migration would to an
/// enabled table.
fn attach_usage_triggers(client: &mut Client, table: &str) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "CREATE TRIGGER bait_usage_row AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION multitenancy._usage_row();
         CREATE TRIGGER bait_usage_statement AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH STATEMENT EXECUTE FUNCTION multitenancy._usage_statement();"
    ))
}

/// Tenant `slug` inserts one order as [`APP`] in a session of its own that gives up on any lock
/// after 2 s (55P03), so that a lock held by someone else shows as an error, not a hang.
fn insert_order_with_lock_timeout(db: &TestDb, slug: &str) -> Result<u64, postgres::Error> {
    let mut client = db.app();
    client.batch_execute("SET lock_timeout = '2s'").unwrap();
    let mut tx = begin_as(&mut client, slug);
    let n = tx.execute("INSERT INTO orders (item) VALUES ('written during the attack')", &[])?;
    tx.commit()?;
    Ok(n)
}

/// One statement returning one text column (or none), in a transaction of `tenant`'s context as
/// end user `user`; committed when it succeeds.
fn text_as_user(
    client: &mut Client,
    tenant: &str,
    user: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<String>, postgres::Error> {
    let mut tx = begin_as_user(client, tenant, user);
    let row = tx.query_one(sql, params)?;
    tx.commit()?;
    Ok(row.get(0))
}

/// `member_add` as the superuser (an operator): the fixture's end users.
fn add_member(db: &TestDb, tenant: &str, user: &str, role: &str) {
    db.superuser()
        .execute("SELECT multitenancy.member_add($1, $2::text::uuid, $3)", &[&tenant, &user, &role])
        .unwrap_or_else(|e| panic!("member_add({tenant}, {user}, {role}): {e}"));
}

/// The signing key `k1` and `require_signed` for [`APP`] in `db` (connections opened afterwards).
fn require_signed(db: &TestDb) {
    db.superuser()
        .batch_execute(&format!(
            "SELECT multitenancy.signing_key_add('k1', decode(repeat('ab', 32), 'hex'));
             ALTER ROLE {APP} IN DATABASE {} SET multitenancy.require_signed = on;",
            db.name
        ))
        .unwrap();
}

/// A fresh token for `tenant`, minted by the superuser (the trusted backend).
fn mint(db: &TestDb, tenant: &str) -> String {
    db.superuser().query_one("SELECT multitenancy.tenant_token($1)", &[&tenant]).unwrap().get(0)
}

static ROLES: OnceLock<()> = OnceLock::new();

/// [`SUPPORT`] and [`OPERATOR`] on the shared server (roles are cluster-wide: created once, after
/// the first `CREATE EXTENSION` made `multitenancy_admin`), checked to be plain roles.
fn staff_roles(db: &TestDb) {
    ROLES.get_or_init(|| {
        db.superuser()
            .batch_execute(&format!(
                "DO $$ BEGIN
                     CREATE ROLE {SUPPORT} LOGIN NOSUPERUSER NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;
                 DO $$ BEGIN
                     CREATE ROLE {OPERATOR} LOGIN NOSUPERUSER NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;
                 GRANT multitenancy_admin TO {SUPPORT};"
            ))
            .unwrap_or_else(|e| panic!("create {SUPPORT} and {OPERATOR}: {e}"));
    });
    let plain: i64 = count(
        &mut db.superuser(),
        &format!(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('{SUPPORT}', '{OPERATOR}')
                AND NOT rolsuper AND NOT rolbypassrls AND rolcanlogin"
        ),
    );
    assert_eq!(plain, 2, "{SUPPORT} and {OPERATOR} must be plain LOGIN roles (no SUPERUSER, no BYPASSRLS)");
}

// ---------------------------------------------------------------------------------------------
// Attacks shared by the preloaded and the non-preloaded server
// ---------------------------------------------------------------------------------------------

/// Finding 1 on a temporary table: the app attaches the counting triggers to a TEMP table of its
/// own and writes rows with other tenants' ids — to inflate tenant B's counters, to push its own
/// below zero (rows inserted before the triggers, deleted after), and to hold B's counting lock
/// while B writes. The app cannot make a permanent table for this (no CREATE on public).
fn counting_triggers_on_a_temp_table(o: &Orders) {
    let db = &o.db;
    assert_eq!(drift(db), Vec::<String>::new(), "precondition: the counters are exact before the attack");
    let mut app = db.app();
    let can_create: bool =
        app.query_one("SELECT has_schema_privilege('public', 'CREATE')", &[]).unwrap().get(0);
    assert!(!can_create, "ground truth: {APP} has no CREATE on public");
    refused(
        "CREATE TABLE public.usage_bait as the app",
        app.batch_execute("CREATE TABLE public.usage_bait (tenant_id uuid, pad text)"),
        PRIVILEGE,
    );

    app.batch_execute("CREATE TEMP TABLE usage_bait (tenant_id uuid, pad text)").unwrap();
    app.execute("INSERT INTO usage_bait SELECT $1::text::uuid, 'a' FROM generate_series(1, 50)", &[&o.a]).unwrap();
    let attached = attach_usage_triggers(&mut app, "usage_bait");
    let mut writes = Vec::new();
    let victim = if attached.is_ok() {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute("SAVEPOINT attack").unwrap();
        let inflate = tx.execute(
            "INSERT INTO usage_bait SELECT $1::text::uuid, repeat('b', 200) FROM generate_series(1, 1000)",
            &[&o.b],
        );
        if inflate.is_err() {
            tx.batch_execute("ROLLBACK TO SAVEPOINT attack").unwrap();
        }
        writes.push(("INSERT into the temp table with tenant B's id", inflate));
        // The attacker's transaction is still open: tenant B writes in another session.
        let victim = insert_order_with_lock_timeout(db, "globex");
        tx.commit().unwrap();
        writes.push((
            "DELETE from the temp table of rows with tenant A's id",
            app.execute("DELETE FROM usage_bait WHERE tenant_id = $1::text::uuid", &[&o.a]),
        ));
        victim
    } else {
        insert_order_with_lock_timeout(db, "globex")
    };

    // Effects, against the ground truth.
    assert_eq!(
        drift(db),
        Vec::<String>::new(),
        "the usage counters must still match the tenant-enabled tables after the app's temp-table triggers"
    );
    assert_eq!(counted_rows(db, &o.b), o.true_count(&o.b), "tenant B's counted rows = its rows (superuser)");
    assert_eq!(counted_rows(db, &o.a), o.true_count(&o.a), "tenant A's counted rows = its rows (superuser)");
    assert!(
        victim.is_ok(),
        "tenant B's insert in another session must not wait for the attacker's transaction (lock_timeout 2s): {victim:?}"
    );
    assert_eq!(o.true_count(&o.b), o.rows_b + 1, "ground truth: B's rows and the one it wrote during the attack");
    assert_eq!(count(&mut db.app(), "SELECT 1::bigint"), 1, "the server answers a new session");

    // The refusals.
    match attached {
        Err(error) => {
            refused("CREATE TRIGGER ... multitenancy._usage_row() on a temp table", Err::<(), _>(error), PRIVILEGE);
        }
        Ok(()) => {
            for (what, result) in writes {
                refused(what, result, PRIVILEGE);
            }
        }
    }
}

/// Finding 3 as the app: `_tenant_id` turns a slug into an id, `is_member` names the other
/// tenant's slug, `domain_verify` tells registered domains from unknown ones.
fn disclosures(o: &Orders) {
    let mut su = o.db.superuser();
    let user = MEMBER_B;
    add_member(&o.db, "globex", user, "member");
    let token: String = su
        .query_one("SELECT multitenancy.domain_add('globex', 'shop.globex.test')", &[])
        .unwrap()
        .get(0);
    // Ground truth: what the app must not learn exists.
    let b_id: String = su.query_one("SELECT id::text FROM multitenancy.tenants WHERE slug = 'globex'", &[]).unwrap().get(0);
    assert_eq!(b_id, o.b);
    let member: bool = su
        .query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&o.b, &user])
        .unwrap()
        .get(0);
    assert!(member, "ground truth: the user is a member of globex");
    let unverified =
        count(&mut su, "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.globex.test' AND verified_at IS NULL");
    assert_eq!(unverified, 1, "ground truth: globex's domain is registered and unverified");

    let mut app = o.db.app();
    // Slug -> id, without and with a context of its own: not executable by the app (42501), or
    // no such function any more (42883).
    let not_callable = [PRIVILEGE, &SqlState::UNDEFINED_FUNCTION];
    refused_with_one_of(
        "_tenant_id('globex') as the app",
        app.query_one("SELECT multitenancy._tenant_id('globex')::text", &[]),
        &not_callable,
    );
    {
        let mut tx = begin_as(&mut app, "acme");
        refused_with_one_of(
            "_tenant_id('globex') as the app in acme's context",
            tx.query_one("SELECT multitenancy._tenant_id('globex')::text", &[]),
            &not_callable,
        );
    }

    // is_member about tenant B from tenant A's context: refused without naming B.
    {
        let mut tx = begin_as(&mut app, "acme");
        let error = refused(
            "is_member(<B>, <user>) from acme's context",
            tx.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&o.b, &user]),
            PRIVILEGE,
        );
        let said = told(&error);
        assert!(
            !said.contains("globex") && !said.contains("Globex"),
            "the refusal of is_member must not name tenant B (its slug or name): {said:?}"
        );
    }

    // domain_verify: the same refusal for a registered and an unknown domain — operators only.
    for domain in ["shop.globex.test", "nobody.example.test"] {
        refused(
            &format!("domain_verify({domain:?}, 'x') as the app"),
            app.execute("SELECT multitenancy.domain_verify($1, 'x')", &[&domain]),
            PRIVILEGE,
        );
    }
    // Not even with the right token: verifying is an operator's job.
    refused(
        "domain_verify with the right token as the app",
        app.execute("SELECT multitenancy.domain_verify('shop.globex.test', $1)", &[&token]),
        PRIVILEGE,
    );
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.globex.test' AND verified_at IS NULL"),
        1,
        "the domain is still unverified"
    );
    // Positive control: an operator verifies it.
    su.execute("SELECT multitenancy.domain_verify('shop.globex.test', $1)", &[&token]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The application role (an SQL injection)
// ---------------------------------------------------------------------------------------------

mod app_role {
    use super::*;

    /// Finding 1: the counting trigger functions on the app's own TEMP table change nobody's
    /// counters, hold nobody's lock, and the writes are refused (42501) — or attaching them is.
    #[test]
    fn counting_triggers_on_a_temp_table_touch_no_tenants_counters_or_locks() {
        let o = Orders::new("attack_usage_temp");
        counting_triggers_on_a_temp_table(&o);
    }

    /// Finding 1 with a `tenant_id bigint` column: an error (42501), not a crashed server. On a
    /// server of its own, so a crash would not take other tests down with it.
    #[test]
    fn counting_triggers_on_a_bigint_tenant_column_fail_without_crashing_the_server() {
        let server = Server::private("-c shared_preload_libraries=multitenancy");
        let o = Orders::on(server, "attack_usage_bigint", 2, 2);
        let mut bystander = o.db.app();
        assert_eq!(count(&mut bystander, "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()"), 1);
        let mut app = o.db.app();
        app.batch_execute("CREATE TEMP TABLE crash_bait (tenant_id bigint, pad text)").unwrap();
        let attached = attach_usage_triggers(&mut app, "crash_bait");
        let write = attached.is_ok().then(|| app.execute("INSERT INTO crash_bait VALUES (1, 'x'), (2, 'y')", &[]));

        // The attacker's own backend did not die (a crash closes its connection first).
        for (what, result) in [("CREATE TRIGGER", attached.as_ref().err()), ("INSERT", write.as_ref().and_then(|w| w.as_ref().err()))] {
            if let Some(error) = result {
                assert!(error.as_db_error().is_some(), "{what} on the bigint temp table lost its connection (server crash): {error}");
            }
        }
        // The server stayed up: a session opened before the attack still works.
        let alive = bystander.query_one("SELECT 1", &[]);
        assert!(alive.is_ok(), "a session opened before the attack must still work (did the server crash?): {alive:?}");
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        assert!(!log.contains("terminated by signal"), "the server log reports a crashed backend");
        assert_eq!(drift(&o.db), Vec::<String>::new(), "the counters match the tables");
        match (attached, write) {
            (Err(error), _) => {
                refused("CREATE TRIGGER on a bigint tenant_id temp table", Err::<(), _>(error), PRIVILEGE);
            }
            (Ok(()), Some(write)) => {
                refused("INSERT into a temp table with a bigint tenant_id and the counting triggers", write, PRIVILEGE);
            }
            (Ok(()), None) => unreachable!(),
        }
    }

    /// Finding 1 on a permanent table that is not tenant-enabled (in a schema the guard does not
    /// cover, made by the owner, writable by the app): the triggers count nothing there either.
    #[test]
    fn counting_triggers_on_a_table_that_is_not_enabled_count_nothing() {
        let o = Orders::new("attack_usage_permanent");
        o.db.superuser().batch_execute(&format!("CREATE SCHEMA scratch AUTHORIZATION {OWNER}")).unwrap();
        let mut owner = o.db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE scratch.ledger (tenant_id uuid, pad text);
                 GRANT USAGE ON SCHEMA scratch TO {APP};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON scratch.ledger TO {APP};"
            ))
            .unwrap();
        assert!(!is_enabled(&mut o.db.superuser(), "scratch.ledger"), "ground truth: the table is not tenant-enabled");
        let attached = attach_usage_triggers(&mut owner, "scratch.ledger");
        let mut app = o.db.app();
        let write = attached.is_ok().then(|| {
            app.execute("INSERT INTO scratch.ledger SELECT $1::text::uuid, 'b' FROM generate_series(1, 500)", &[&o.b])
        });

        assert_eq!(drift(&o.db), Vec::<String>::new(), "the counters match the tenant-enabled tables");
        assert_eq!(counted_rows(&o.db, &o.b), o.rows_b, "tenant B's counted rows are its rows");
        match (attached, write) {
            (Err(error), _) => {
                refused("CREATE TRIGGER of the counting functions on scratch.ledger", Err::<(), _>(error), PRIVILEGE);
            }
            (Ok(()), Some(write)) => {
                refused("INSERT with tenant B's id into scratch.ledger", write, PRIVILEGE);
            }
            (Ok(()), None) => unreachable!(),
        }
    }

    /// Finding 2: behind PgBouncer (transaction mode, one server connection), tenant A in its own
    /// signed transaction creates `TEMP TABLE orders`; tenant B's next signed transactions on the
    /// same backend must write the real `orders`, and A must never read B's rows.
    #[test]
    fn a_signed_session_cannot_leave_a_temp_table_for_the_next_client_of_the_pooler() {
        let o = Orders::with_rows("attack_pooler_temp", 2, 2);
        require_signed(&o.db);
        let bouncer = PgBouncer::transaction_mode(1);
        let mut attacker = bouncer.connect(&o.db.name, APP);
        let mut victim = bouncer.connect(&o.db.name, APP);
        let pid = backend_pid(&mut attacker);
        assert_eq!(backend_pid(&mut victim), pid, "with pool size 1 both clients share one server connection");
        assert_eq!(simple_one(&mut attacker, "SHOW multitenancy.require_signed"), "on", "precondition: signed-only mode");

        attacker.batch_execute("BEGIN").unwrap();
        let id = simple_one(&mut attacker, &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "acme"))));
        assert_eq!(id, o.a);
        let created = attacker.batch_execute(
            "CREATE TEMP TABLE orders (id bigint, item text, amount int DEFAULT 1,
                                       tenant_id uuid DEFAULT multitenancy.current_tenant_id())",
        );
        attacker.batch_execute("COMMIT").unwrap();

        for i in 0..2 {
            victim.batch_execute("BEGIN").unwrap();
            assert_eq!(backend_pid(&mut victim), pid, "the victim is on the attacker's server connection");
            let id =
                simple_one(&mut victim, &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "globex"))));
            assert_eq!(id, o.b);
            victim
                .batch_execute(&format!("INSERT INTO orders (item) VALUES ('globex-secret-{i}')"))
                .unwrap_or_else(|e| panic!("tenant B's insert: {e}"));
            victim.batch_execute("COMMIT").unwrap();
        }

        attacker.batch_execute("BEGIN").unwrap();
        assert_eq!(backend_pid(&mut attacker), pid);
        simple_one(&mut attacker, &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "acme"))));
        let temp_orders = simple_value(&mut attacker, "SELECT to_regclass('pg_temp.orders')::text").unwrap();
        let stolen = simple_count(&mut attacker, "SELECT count(*) FROM orders WHERE item LIKE 'globex-secret-%'");
        attacker.batch_execute("COMMIT").unwrap();

        let mut su = o.db.superuser();
        let landed: i64 = su
            .query_one(
                "SELECT count(*) FROM public.orders WHERE tenant_id = $1::text::uuid AND item LIKE 'globex-secret-%'",
                &[&o.b],
            )
            .unwrap()
            .get(0);
        assert_eq!(landed, 2, "ground truth: tenant B's two rows must land in the real table public.orders");
        assert_eq!(stolen, 0, "tenant A must not read any of tenant B's rows");
        assert_eq!(temp_orders, None, "no temporary orders table may exist on the shared backend");
        refused("CREATE TEMP TABLE orders in a signed session", created, PRIVILEGE);
    }

    /// Finding 2, every way a signed session could leave state for the next client of a pooler:
    /// temporary objects, WITH HOLD cursors, prepared statements, session-level SET of
    /// `search_path` / `role` (42501); and `tenant_set_signed` refuses after `set_config(...,
    /// false)` changed `search_path` or `role`. `SET LOCAL` and client presentation settings
    /// still work, and so does a signed transaction.
    #[test]
    fn a_signed_session_cannot_keep_session_state_or_change_search_path_or_role() {
        let o = Orders::with_rows("attack_signed_session_state", 2, 2);
        require_signed(&o.db);
        let mut app = o.db.app();
        assert_eq!(count(&mut app, "SELECT count(*) FROM pg_settings WHERE name = 'multitenancy.require_signed' AND setting = 'on'"), 1);
        let search_path: String = app.query_one("SHOW search_path", &[]).unwrap().get(0);

        let attempts = [
            "CREATE TEMP TABLE scratch (id int)".to_string(),
            "CREATE TEMPORARY VIEW scratch_view AS SELECT 1 AS one".to_string(),
            "CREATE TEMP SEQUENCE scratch_seq".to_string(),
            "DECLARE held CURSOR WITH HOLD FOR SELECT 1".to_string(),
            "PREPARE planted AS SELECT 1".to_string(),
            "SET search_path = pg_temp, public".to_string(),
            "SET SESSION search_path = public".to_string(),
            format!("SET ROLE {APP}"),
            format!("SET SESSION role = {APP}"),
        ];
        for attempt in &attempts {
            refused(&format!("{attempt} in a require_signed session"), app.batch_execute(attempt), PRIVILEGE);
        }
        // Inside a signed transaction too.
        {
            let mut tx = app.transaction().unwrap();
            tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "acme")]).unwrap();
            refused(
                "CREATE TEMP TABLE inside a signed transaction",
                tx.batch_execute("CREATE TEMP TABLE scratch_in_tx (id int)"),
                PRIVILEGE,
            );
        }
        // Nothing was left behind.
        let left = count(
            &mut app,
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
                  + (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)
                  + (SELECT count(*) FROM pg_cursors WHERE is_holdable)",
        );
        let what: Vec<String> = app.query("SELECT relname::text FROM pg_class WHERE relnamespace = pg_my_temp_schema() UNION ALL SELECT name FROM pg_prepared_statements WHERE from_sql UNION ALL SELECT name FROM pg_cursors WHERE is_holdable", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(left, 0, "no temporary relation, prepared statement or cursor is left in the session: {what:?}");
        let now: String = app.query_one("SHOW search_path", &[]).unwrap().get(0);
        assert_eq!(now, search_path, "search_path is unchanged");
        let role: String = app.query_one("SHOW role", &[]).unwrap().get(0);
        assert_eq!(role, "none", "role is unchanged");

        // Positive controls: presentation settings, SET LOCAL, and a signed transaction.
        app.batch_execute(
            "SET application_name = 'attack-suite'; SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, MDY';
             SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3;
             SET standard_conforming_strings = on;",
        )
        .expect("client presentation settings stay settable in a require_signed session");
        {
            let mut tx = app.transaction().unwrap();
            tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "acme")]).unwrap();
            tx.batch_execute("SET LOCAL search_path = public, pg_catalog").expect("SET LOCAL search_path still works");
            assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "positive control: acme's rows");
            tx.commit().unwrap();
        }

        // set_config(..., false) is a function, not a SET: tenant_set_signed notices the change.
        for (setting, value) in [("search_path", "pg_temp, public"), ("role", APP)] {
            let mut app = o.db.app();
            app.query_one("SELECT set_config($1, $2, false)", &[&setting, &value]).unwrap();
            let mut tx = app.transaction().unwrap();
            refused(
                &format!("tenant_set_signed after set_config('{setting}', '{value}', false)"),
                tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "acme")]),
                PRIVILEGE,
            );
        }
        assert_eq!(o.true_count(&o.a), o.rows_a);
        assert_eq!(o.true_count(&o.b), o.rows_b);
    }

    /// Finding 3: `_tenant_id`, `is_member` and `domain_verify` disclose nothing to the app.
    #[test]
    fn registry_lookups_disclose_nothing_about_other_tenants() {
        let o = Orders::new("attack_disclosures");
        disclosures(&o);
    }

    /// Finding 3: for a role that may not choose its tenant (require_signed, claims mode),
    /// `tenant_set` answers an existing and an unknown tenant alike: 28000, the same message.
    #[test]
    fn tenant_set_refusal_does_not_tell_existing_from_unknown_tenants() {
        let signed = Orders::new("attack_tenant_set_oracle_signed");
        require_signed(&signed.db);
        let claims = Orders::new("attack_tenant_set_oracle_claims");
        claims
            .db
            .superuser()
            .batch_execute(&format!(
                "ALTER ROLE {APP} IN DATABASE {} SET multitenancy.claims_setting = 'request.jwt.claims'",
                claims.db.name
            ))
            .unwrap();
        for (mode, o) in [("require_signed", &signed), ("claims", &claims)] {
            let mut app = o.db.app();
            for (existing, unknown) in [("globex", "nobody"), (o.b.as_str(), "00000000-0000-4000-8000-000000000000")] {
                let mut su = o.db.superuser();
                let known: i64 = su
                    .query_one("SELECT count(*) FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1", &[&existing])
                    .unwrap()
                    .get(0);
                let nobody: i64 = su
                    .query_one("SELECT count(*) FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1", &[&unknown])
                    .unwrap()
                    .get(0);
                assert_eq!((known, nobody), (1, 0), "ground truth: {existing} exists, {unknown} does not");
                let mut answer = |tenant: &str| -> String {
                    let mut tx = app.transaction().unwrap();
                    let error = refused(
                        &format!("tenant_set({tenant:?}) in {mode} mode"),
                        tx.query_one("SELECT multitenancy.tenant_set($1)", &[&tenant]),
                        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                    );
                    told(&error).replace(tenant, "<tenant>")
                };
                let for_existing = answer(existing);
                let for_unknown = answer(unknown);
                assert_eq!(
                    for_existing, for_unknown,
                    "in {mode} mode, tenant_set must answer an existing and an unknown tenant alike"
                );
            }
        }
    }

    /// Finding 4: a NULL second argument is named in a 22023/22004 error, not an internal error
    /// about "argument 1"; nothing is recorded.
    #[test]
    fn a_null_second_argument_is_named_and_changes_nothing() {
        let o = Orders::new("attack_null_arguments");
        staff_roles(&o.db);
        let mut app = o.db.app();
        let check = |what: &str, result: Result<u64, postgres::Error>, argument: &str| {
            let error = refused_with_one_of(
                what,
                result,
                &[&SqlState::INVALID_PARAMETER_VALUE, &SqlState::NULL_VALUE_NOT_ALLOWED],
            );
            assert!(error.message().contains(argument), "{what}: the message must name argument {argument:?}: {:?}", error.message());
        };
        {
            let mut tx = begin_as(&mut app, "acme");
            check("usage_record('k', NULL)", tx.execute("SELECT multitenancy.usage_record('k', NULL)", &[]), "amount");
        }
        let mut support = o.db.connect(SUPPORT);
        {
            let mut tx = support.transaction().unwrap();
            check("admin_begin('x', NULL)", tx.execute("SELECT multitenancy.admin_begin('x', NULL)", &[]), "write");
        }
        let mut su = o.db.superuser();
        assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.metered_usage WHERE key = 'k'"), 0, "nothing metered");
        assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'admin_begin'"), 0, "no admin access");
    }

    /// Finding 4: a 1 MB argument is not echoed back: message, detail and hint together stay
    /// under 1 000 characters.
    #[test]
    fn a_megabyte_argument_is_not_echoed_back() {
        let o = Orders::new("attack_megabyte_argument");
        let mut app = o.db.app();
        let huge = "x".repeat(1_000_000);
        let calls = [
            "SELECT multitenancy.tenant_set($1)::text",
            "SELECT multitenancy.tenant_set_by_host($1)::text",
            "SELECT multitenancy.domain_add('acme', $1)",
            "SELECT multitenancy.usage_record($1)::text",
            "SELECT multitenancy.member_add('acme', '00000000-0000-4000-8000-000000000001', $1)::text",
            "SELECT count(*)::text FROM multitenancy.member_list($1)",
            "SELECT multitenancy.has_role($1)::text",
            "SELECT count(*)::text FROM multitenancy.quota_check($1)",
            "SELECT multitenancy.domain_remove($1)::text",
            "SELECT multitenancy.setting_set('acme', $1, '1')::text",
        ];
        for call in calls {
            let mut tx = begin_as(&mut app, "acme");
            let result = tx.query_one(call, &[&huge]);
            let error = result.err().unwrap_or_else(|| panic!("{call} with a 1 MB argument must fail"));
            let said = told(db_error(&error));
            assert!(
                said.len() < 1000,
                "{call} with a 1 MB argument: message + detail + hint are {} characters: {}...",
                said.len(),
                &said[..200.min(said.len())]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tenant admin (end user with role admin in tenant A, through the application)
// ---------------------------------------------------------------------------------------------

mod tenant_admin {
    use super::*;

    /// `tenant_resolve(host)` as the app without a context (how a router calls it).
    fn resolve(app: &mut Client, host: &str) -> Option<String> {
        app.query_one("SELECT multitenancy.tenant_resolve($1)::text", &[&host]).unwrap().get(0)
    }

    /// `tenant_set_by_host(host)` as the app in a transaction: the tenant it set.
    fn set_by_host(app: &mut Client, host: &str) -> String {
        let mut tx = app.transaction().unwrap();
        tx.query_one("SELECT multitenancy.tenant_set_by_host($1)::text", &[&host]).unwrap().get(0)
    }

    /// Finding 5: tenant A's admin registers B's slug host under base_domain (spelled in upper
    /// case with a trailing dot) and verifies it: refused (42501), and B's slug host keeps
    /// routing to B — even if such a row existed, verified, slug routes win. A tenant admin
    /// cannot verify any domain (operators only).
    #[test]
    fn a_tenant_admin_cannot_take_another_tenants_slug_host() {
        let o = Orders::new("attack_slug_host");
        o.db.superuser()
            .batch_execute(&format!("ALTER DATABASE {} SET multitenancy.base_domain = 'example.test'", o.db.name))
            .unwrap();
        add_member(&o.db, "acme", ADMIN_A, "admin");
        let mut app = o.db.app();
        assert_eq!(resolve(&mut app, "globex.example.test"), Some(o.b.clone()), "precondition: B's slug host routes to B");

        let added = text_as_user(
            &mut app,
            "acme",
            ADMIN_A,
            "SELECT multitenancy.domain_add('acme', 'GLOBEX.example.test.')",
            &[],
        );
        let verified = match &added {
            Ok(Some(token)) => Some(text_as_user(
                &mut app,
                "acme",
                ADMIN_A,
                "SELECT multitenancy.domain_verify('globex.example.test', $1)::text",
                &[token],
            )),
            _ => None,
        };
        assert_eq!(resolve(&mut app, "globex.example.test"), Some(o.b.clone()), "B's slug host must still route to B");
        assert_eq!(set_by_host(&mut app, "globex.example.test"), o.b, "tenant_set_by_host of B's slug host sets B");
        let mut su = o.db.superuser();
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.domains WHERE domain = 'globex.example.test'"),
            0,
            "no domain row for B's slug host"
        );
        refused("domain_add of B's slug host by A's admin", added, PRIVILEGE);
        assert!(verified.is_none());

        // Even a verified row (from before the fix, written by the superuser) does not win.
        su.execute(
            "INSERT INTO multitenancy.domains (domain, tenant_id, verification_token, verified_at)
             VALUES ('globex.example.test', $1::text::uuid, 'planted', now())",
            &[&o.a],
        )
        .unwrap();
        assert_eq!(resolve(&mut app, "globex.example.test"), Some(o.b.clone()), "slug routes under base_domain win");
        assert_eq!(set_by_host(&mut app, "globex.example.test"), o.b, "tenant_set_by_host: slug routes win");
        assert_eq!(resolve(&mut app, "acme.example.test"), Some(o.a.clone()), "positive control: A's own slug host");

        // A domain of A's own: the admin may register it but not verify it.
        let token = text_as_user(&mut app, "acme", ADMIN_A, "SELECT multitenancy.domain_add('acme', 'shop.acme-corp.test')", &[])
            .expect("a tenant admin may register a host outside base_domain")
            .expect("domain_add returns the verification token");
        refused(
            "domain_verify by a tenant admin",
            text_as_user(&mut app, "acme", ADMIN_A, "SELECT multitenancy.domain_verify('shop.acme-corp.test', $1)::text", &[&token]),
            PRIVILEGE,
        );
        assert_eq!(resolve(&mut app, "shop.acme-corp.test"), None, "the unverified domain routes nowhere");
        su.execute("SELECT multitenancy.domain_verify('shop.acme-corp.test', $1)", &[&token]).unwrap();
        assert_eq!(resolve(&mut app, "shop.acme-corp.test"), Some(o.a.clone()), "positive control: an operator verifies it");
    }

    /// Finding 6: tenant A's unverified claim of a host blocks tenant B (23505) only while it is
    /// fresh; once older than `multitenancy.domain_claim_ttl` (default 3 days; superuser-only),
    /// B's `domain_add` takes the host over.
    #[test]
    fn a_stale_unverified_claim_does_not_block_the_rightful_tenant() {
        let o = Orders::new("attack_domain_squat");
        add_member(&o.db, "acme", ADMIN_A, "admin");
        add_member(&o.db, "globex", OWNER_B, "owner");
        let mut app = o.db.app();
        let add = |app: &mut Client, tenant: &str, user: &str, domain: &str| {
            text_as_user(app, tenant, user, "SELECT multitenancy.domain_add($1, $2)", &[&tenant, &domain])
        };
        let owner_of = |domain: &str| -> Option<String> {
            o.db.superuser()
                .query_opt("SELECT tenant_id::text FROM multitenancy.domains WHERE domain = $1", &[&domain])
                .unwrap()
                .map(|r| r.get(0))
        };
        let backdate = |domain: &str, age: &str| {
            o.db.superuser()
                .execute(
                    "UPDATE multitenancy.domains SET created_at = now() - $2::text::interval WHERE domain = $1",
                    &[&domain, &age],
                )
                .unwrap();
        };

        add(&mut app, "acme", ADMIN_A, "shop.example.org").expect("A claims the host");
        refused("B's domain_add of A's fresh claim", add(&mut app, "globex", OWNER_B, "shop.example.org"), &SqlState::UNIQUE_VIOLATION);
        assert_eq!(owner_of("shop.example.org"), Some(o.a.clone()), "ground truth: A's fresh claim stands");

        backdate("shop.example.org", "30 days");
        let taken = add(&mut app, "globex", OWNER_B, "shop.example.org");
        assert_eq!(owner_of("shop.example.org"), Some(o.b.clone()), "a stale unverified claim must not block B: {taken:?}");
        let token = taken.unwrap().expect("B gets a verification token");
        let stored: String = o
            .db
            .superuser()
            .query_one("SELECT verification_token FROM multitenancy.domains WHERE domain = 'shop.example.org'", &[])
            .unwrap()
            .get(0);
        assert_eq!(stored, token, "B's token is the one that verifies the host");

        // The TTL is the DBA's: the app cannot shorten it; a shorter one makes younger claims stale.
        refused(
            "SET multitenancy.domain_claim_ttl as the app",
            app.batch_execute("SET multitenancy.domain_claim_ttl = '1s'"),
            PRIVILEGE,
        );
        o.db.superuser()
            .batch_execute(&format!("ALTER DATABASE {} SET multitenancy.domain_claim_ttl = '1h'", o.db.name))
            .unwrap();
        let mut app = o.db.app();
        add(&mut app, "acme", ADMIN_A, "blog.example.org").expect("A claims a second host");
        add(&mut app, "acme", ADMIN_A, "fresh.example.org").expect("A claims a third host");
        backdate("blog.example.org", "2 hours");
        add(&mut app, "globex", OWNER_B, "blog.example.org").expect("a claim older than the 1h TTL does not block B");
        assert_eq!(owner_of("blog.example.org"), Some(o.b.clone()));
        refused("B's domain_add of A's fresh claim under a 1h TTL", add(&mut app, "globex", OWNER_B, "fresh.example.org"), &SqlState::UNIQUE_VIOLATION);
        assert_eq!(owner_of("fresh.example.org"), Some(o.a.clone()));
    }
}

// ---------------------------------------------------------------------------------------------
// Support staff (a member of multitenancy_admin)
// ---------------------------------------------------------------------------------------------

mod support_staff {
    use super::*;

    /// Finding 7: a function with `SET transaction_read_only = off` around `admin_begin(reason)`
    /// ends the transaction's read-only mode when it returns, while admin mode (read-only, as
    /// audited) stays. Writes to an enabled table in read-only admin mode must fail with 25006
    /// whatever `transaction_read_only` says. PostgreSQL 16 and later refuse the SET clause
    /// itself (0A000); the write is then tried with admin mode entered directly.
    #[test]
    fn read_only_admin_mode_cannot_be_made_writable() {
        let o = Orders::new("attack_read_only_admin");
        staff_roles(&o.db);
        o.db.owner().batch_execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {SUPPORT}")).unwrap();
        let mut su = o.db.superuser();
        let before = table_snapshot(&mut su, "orders");
        let mut support = o.db.connect(SUPPORT);
        let created = support.batch_execute(
            "CREATE FUNCTION pg_temp.enter_admin() RETURNS void LANGUAGE sql SET transaction_read_only = off
             AS $$ SELECT multitenancy.admin_begin('ticket 4711') $$",
        );
        let enter = match &created {
            Ok(()) => "SELECT pg_temp.enter_admin()",
            Err(error) => {
                let db = db_error(error);
                assert_eq!(db.code(), &SqlState::FEATURE_NOT_SUPPORTED, "only PostgreSQL may refuse the SET clause: {}", db.message());
                let version: i32 = support.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
                assert!(version >= 160000, "PostgreSQL {version} refused SET transaction_read_only in a function");
                "SELECT multitenancy.admin_begin('ticket 4711')"
            }
        };
        let writes = [
            format!("UPDATE orders SET item = 'changed by support' WHERE tenant_id = '{}'", o.b),
            format!("INSERT INTO orders (item, tenant_id) VALUES ('planted by support', '{}')", o.b),
            format!("DELETE FROM orders WHERE tenant_id = '{}'", o.b),
        ];
        let mut results = Vec::new();
        for write in &writes {
            let mut tx = support.transaction().unwrap();
            tx.batch_execute(enter).unwrap();
            let admin: bool = tx.query_one("SELECT multitenancy._admin_mode()", &[]).unwrap().get(0);
            assert!(admin, "precondition: admin mode is on");
            let result = tx.batch_execute(write);
            if result.is_ok() {
                tx.commit().unwrap();
            }
            results.push((write, result));
        }
        assert_eq!(table_snapshot(&mut su, "orders"), before, "ground truth: nothing in orders changed");
        assert_eq!(o.true_count(&o.b), o.rows_b, "tenant B's rows are all there");
        for (write, result) in results {
            refused(&format!("{write} in read-only admin mode"), result, &SqlState::READ_ONLY_SQL_TRANSACTION);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table owner, and an operator running the owner's code
// ---------------------------------------------------------------------------------------------

mod operator_and_owner {
    use super::*;

    /// Finding 8: the owner plants a BEFORE DELETE trigger on its enabled table that records who
    /// runs it and, if that is a superuser, creates a superuser role. An operator (not a
    /// superuser) purges a deleted tenant with rows there: the trigger must not run as a
    /// superuser — it runs as the table owner (or the purge is refused, 42501, and changes nothing).
    #[test]
    fn an_owner_trigger_does_not_run_as_a_superuser_during_a_purge() {
        let o = Orders::new("attack_purge_trigger");
        staff_roles(&o.db);
        let pwned = format!("pwned_{}", o.db.name);
        let mut su = o.db.superuser();
        su.batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION multitenancy.tenant_delete(text), multitenancy.tenant_purge(text, text) TO {OPERATOR}"
        ))
        .unwrap();
        o.db.owner()
            .batch_execute(&format!(
                "CREATE TABLE trigger_log (who name, superuser boolean);
                 SELECT multitenancy.tenant_exempt('trigger_log', 'evidence of the attack');
                 CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                     INSERT INTO public.trigger_log SELECT current_user, rolsuper FROM pg_catalog.pg_roles
                      WHERE rolname = current_user;
                     IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{pwned}') THEN
                         EXECUTE 'CREATE ROLE {pwned} SUPERUSER LOGIN';
                     END IF;
                     RETURN OLD;
                 END $f$;
                 CREATE TRIGGER spy BEFORE DELETE ON orders FOR EACH ROW EXECUTE FUNCTION public.spy();"
            ))
            .unwrap();

        let mut operator = o.db.connect(OPERATOR);
        operator.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
        let purge = operator.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')::text", &[]);

        let created = count(&mut su, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{pwned}'"));
        su.batch_execute(&format!("DROP ROLE IF EXISTS {pwned}")).unwrap();
        assert_eq!(created, 0, "the owner's trigger created superuser role {pwned} during the operator's purge");
        let log: Vec<(String, bool)> = su
            .query("SELECT who::text, superuser FROM trigger_log", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert!(log.iter().all(|(_, superuser)| !superuser), "the owner's trigger ran as a superuser: {log:?}");
        match purge {
            Ok(_) => {
                assert_eq!(o.true_count(&o.b), 0, "the purge removed B's rows");
                assert_eq!(log.len() as i64, o.rows_b, "the trigger ran once per purged row: {log:?}");
                assert!(log.iter().all(|(who, _)| who == OWNER), "the owner's trigger must run as the owner: {log:?}");
            }
            Err(error) => {
                refused("tenant_purge running the owner's trigger", Err::<(), _>(error), PRIVILEGE);
                assert_eq!(o.true_count(&o.b), o.rows_b, "a refused purge changed nothing");
                let status: String =
                    su.query_one("SELECT status FROM multitenancy.tenants WHERE slug = 'globex'", &[]).unwrap().get(0);
                assert_eq!(status, "deleted", "the tenant is still there");
            }
        }
        assert_eq!(o.true_count(&o.a), o.rows_a, "tenant A is untouched");
    }

    /// Finding 9: the owner's trigger on a table from before the extension fires during
    /// `tenant_enable`'s backfill UPDATE and switches FORCE row level security off on another
    /// enabled table. The guard must refuse that DDL (42501): tenant_enable fails, the other
    /// table keeps FORCE, and the backfill is rolled back.
    #[test]
    fn an_owner_trigger_cannot_weaken_another_table_during_a_backfill() {
        let db = TestDb::with_setup(
            "attack_backfill_trigger",
            &format!(
                "SET ROLE {OWNER};
                 CREATE TABLE legacy (id int PRIMARY KEY, item text, tenant_id uuid);
                 INSERT INTO legacy (id, item) VALUES (1, 'old-1'), (2, 'old-2');
                 CREATE FUNCTION public.sabotage() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                     EXECUTE 'ALTER TABLE public.other_enabled NO FORCE ROW LEVEL SECURITY';
                     RETURN NEW;
                 END $f$;
                 CREATE TRIGGER sabotage BEFORE UPDATE ON legacy FOR EACH ROW EXECUTE FUNCTION public.sabotage();"
            ),
        );
        let a = db.tenant("Acme", "acme");
        let mut owner = db.owner();
        owner
            .batch_execute("CREATE TABLE other_enabled (id int PRIMARY KEY, item text); SELECT multitenancy.tenant_enable('other_enabled');")
            .unwrap();
        let mut su = db.superuser();
        let forced = |su: &mut Client| -> (bool, bool) {
            let row = su
                .query_one("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.other_enabled'::regclass", &[])
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(forced(&mut su), (true, true), "precondition: other_enabled has row level security, forced");

        let enable = owner.execute("SELECT multitenancy.tenant_enable('legacy', $1::text::uuid)", &[&a]);

        assert_eq!(forced(&mut su), (true, true), "other_enabled must keep FORCE ROW LEVEL SECURITY");
        let problems: Vec<Problem> = db.verify().into_iter().filter(|p| p.object.contains("other_enabled")).collect();
        assert_eq!(problems, vec![], "verify() finds nothing wrong with other_enabled");
        refused("tenant_enable('legacy') whose backfill fires the owner's DDL", enable, PRIVILEGE);
        assert!(!is_enabled(&mut su, "legacy"), "legacy is not enabled");
        assert_eq!(count(&mut su, "SELECT count(*) FROM legacy WHERE tenant_id IS NULL"), 2, "the backfill was rolled back");
    }

    /// Finding 10: making an enabled table a child of a global (exempt) table — ALTER TABLE ...
    /// INHERIT, CREATE TABLE ... INHERITS with a tenant column — or a partition of a partitioned
    /// table that is not enabled (ATTACH PARTITION) is refused (42501): reading the parent would
    /// show every tenant's rows of the child.
    #[test]
    fn an_enabled_table_cannot_become_a_child_of_an_unprotected_parent() {
        let db = TestDb::new("attack_inheritance");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        db.superuser().batch_execute(&format!("CREATE SCHEMA reports AUTHORIZATION {OWNER}")).unwrap();
        let mut owner = db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE catalog_items (id int, item text);
                 SELECT multitenancy.tenant_exempt('catalog_items', 'shared catalog');
                 CREATE TABLE private_items (id int, item text);
                 SELECT multitenancy.tenant_enable('private_items');
                 CREATE TABLE part_items (id int, item text);
                 SELECT multitenancy.tenant_enable('part_items');
                 CREATE TABLE reports.by_id (id int, item text, tenant_id uuid NOT NULL) PARTITION BY RANGE (id);
                 GRANT SELECT, INSERT ON catalog_items, private_items, part_items TO {APP};
                 GRANT USAGE ON SCHEMA reports TO {APP};
                 GRANT SELECT ON reports.by_id TO {APP};"
            ))
            .unwrap();
        let mut app = db.app();
        for tenant in ["acme", "globex"] {
            let mut tx = begin_as(&mut app, tenant);
            tx.batch_execute(&format!(
                "INSERT INTO private_items VALUES (1, '{tenant}-private'); INSERT INTO part_items VALUES (1, '{tenant}-part')"
            ))
            .unwrap();
            tx.commit().unwrap();
        }
        let mut su = db.superuser();
        let truth = |su: &mut Client, table: &str| -> i64 {
            su.query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&b]).unwrap().get(0)
        };
        assert_eq!((truth(&mut su, "private_items"), truth(&mut su, "part_items")), (1, 1), "ground truth: B's rows exist");

        let inherit = owner.batch_execute("ALTER TABLE private_items INHERIT catalog_items");
        let attach = owner.batch_execute("ALTER TABLE reports.by_id ATTACH PARTITION part_items FOR VALUES FROM (0) TO (1000)");
        let inherits = owner.batch_execute("CREATE TABLE sneaky_items (tenant_id uuid) INHERITS (catalog_items)");

        let mut tx = begin_as(&mut app, "acme");
        let via_parent = count(&mut tx, "SELECT count(*) FROM catalog_items WHERE item LIKE 'globex%'");
        let via_partitioned: i64 = tx
            .query_one("SELECT count(*) FROM reports.by_id WHERE tenant_id = $1::text::uuid", &[&b])
            .unwrap()
            .get(0);
        drop(tx);
        assert_eq!(via_parent, 0, "tenant A must not read B's rows through the exempt parent catalog_items");
        assert_eq!(via_partitioned, 0, "tenant A must not read B's rows through the partitioned table reports.by_id");
        let inherited = count(&mut su, "SELECT count(*) FROM pg_inherits WHERE inhparent IN ('catalog_items'::regclass, 'reports.by_id'::regclass)");
        assert_eq!(inherited, 0, "no table became a child of catalog_items or a partition of reports.by_id");
        assert!(!relation_exists(&mut su, "sneaky_items"), "sneaky_items was not created");
        refused("ALTER TABLE private_items INHERIT catalog_items", inherit, PRIVILEGE);
        refused("ALTER TABLE reports.by_id ATTACH PARTITION part_items", attach, PRIVILEGE);
        refused("CREATE TABLE sneaky_items (tenant_id uuid) INHERITS (catalog_items)", inherits, PRIVILEGE);
        // Positive control: private_items itself is still isolated.
        assert_isolated(db.server(), &db.name, "private_items", &[("acme", a.as_str()), ("globex", b.as_str())]);
    }

    /// Finding 11: the owner adds a RESTRICTIVE policy calling a cheap, non-LEAKPROOF function
    /// that RAISEs its argument: refused (42501), so tenant A's scan gets no NOTICE with B's
    /// values. A policy of leakproof operators only is still accepted.
    #[test]
    fn a_policy_cannot_leak_rows_through_a_cheap_function() {
        let o = Orders::new("attack_leaky_policy");
        let mut owner = o.db.owner();
        owner
            .batch_execute(
                "CREATE FUNCTION public.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS $f$
                 BEGIN
                     RAISE NOTICE 'leaked: %', $1;
                     RETURN true;
                 END $f$;",
            )
            .unwrap();
        // Restrictive policies are applied in name order: "a_spy" comes before the extension's
        // policies, so on a sequential scan its qual may run first, on every tenant's rows.
        let spy = owner.batch_execute("CREATE POLICY a_spy ON orders AS RESTRICTIVE USING (public.leak(item))");

        let (mut app, notices) = o.db.connect_with_notices(APP);
        let mut tx = begin_as(&mut app, "acme");
        tx.batch_execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexonlyscan = off")
            .unwrap();
        let items: Vec<String> = tx.query("SELECT item FROM orders", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        drop(tx);
        let heard = notices.take();
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's rows exist");
        assert!(items.iter().all(|i| i.starts_with("acme-")), "A sees only its own rows: {items:?}");
        let leaked: Vec<&String> = heard.iter().filter(|n| n.contains("globex")).collect();
        assert_eq!(leaked, Vec::<&String>::new(), "tenant A's scan received B's values in NOTICEs");
        refused("CREATE POLICY a_spy ... USING (leak(item))", spy, PRIVILEGE);
        let policies =
            count(&mut o.db.superuser(), "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass AND polname = 'a_spy'");
        assert_eq!(policies, 0, "the a_spy policy does not exist");

        owner
            .batch_execute("CREATE POLICY positive_amount ON orders AS RESTRICTIVE USING (amount > 0)")
            .expect("a policy of leakproof operators is accepted");
        let mut tx = begin_as(&mut app, "acme");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "positive control: A still sees its rows");
    }

    /// Finding 12: a materialized view over a function that reads an enabled table, refreshed in
    /// B's context, would store B's rows for A to read. Refused at CREATE (42501); one made with
    /// the guard off is listed by verify().
    #[test]
    fn a_materialized_view_cannot_capture_rows_through_a_function() {
        let o = Orders::new("attack_matview_function");
        let mut owner = o.db.owner();
        owner
            .batch_execute(
                "CREATE FUNCTION public.all_orders() RETURNS TABLE (id bigint, item text, tenant_id uuid)
                 LANGUAGE sql STABLE AS 'SELECT id, item, tenant_id FROM public.orders'",
            )
            .unwrap();
        let created = owner.batch_execute("CREATE MATERIALIZED VIEW order_digest AS SELECT * FROM public.all_orders() WITH NO DATA");
        let mut su = o.db.superuser();
        let mut seen_by_a = 0;
        if created.is_ok() {
            owner.batch_execute(&format!("GRANT SELECT ON order_digest TO {APP}")).unwrap();
            let mut tx = begin_as(&mut owner, "globex");
            tx.batch_execute("REFRESH MATERIALIZED VIEW order_digest").unwrap();
            tx.commit().unwrap();
            let mut app = o.db.app();
            let mut tx = begin_as(&mut app, "acme");
            seen_by_a = tx
                .query_one("SELECT count(*) FROM order_digest WHERE tenant_id = $1::text::uuid", &[&o.b])
                .unwrap()
                .get::<_, i64>(0);
        }
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's rows exist");
        assert_eq!(seen_by_a, 0, "tenant A read B's rows from the materialized view");
        refused("CREATE MATERIALIZED VIEW over a function reading orders", created, PRIVILEGE);
        assert!(!relation_exists(&mut su, "order_digest"));

        o.db.unguarded(&format!(
            "SET LOCAL ROLE {OWNER};
             CREATE MATERIALIZED VIEW legacy_digest AS SELECT * FROM public.all_orders() WITH NO DATA;"
        ));
        let problems = verify_all(&mut su);
        assert!(
            problems.iter().any(|p| p.object.contains("legacy_digest") && p.severity == "error"),
            "verify() must report the materialized view legacy_digest: {problems:#?}"
        );
    }

    /// Finding 13: an exclusion constraint on an enabled table is per tenant — rebuilt with
    /// `tenant_id WITH =` when the table is enabled or the constraint added later — so tenant A's
    /// overlapping booking succeeds while B's exists, and two overlapping bookings of one tenant
    /// still conflict (23P01).
    #[test]
    fn exclusion_constraints_are_per_tenant() {
        let db = TestDb::new("attack_exclusion");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        db.superuser().batch_execute("CREATE EXTENSION btree_gist").unwrap();
        db.owner()
            .batch_execute(&format!(
                "CREATE TABLE bookings (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, room int NOT NULL,
                                        during tstzrange NOT NULL,
                                        CONSTRAINT bookings_no_overlap EXCLUDE USING gist (room WITH =, during WITH &&));
                 SELECT multitenancy.tenant_enable('bookings');
                 CREATE TABLE rentals (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, room int NOT NULL,
                                       during tstzrange NOT NULL);
                 SELECT multitenancy.tenant_enable('rentals');
                 ALTER TABLE rentals ADD CONSTRAINT rentals_no_overlap EXCLUDE USING gist (room WITH =, during WITH &&);
                 GRANT SELECT, INSERT ON bookings, rentals TO {APP};"
            ))
            .unwrap();
        let mut app = db.app();
        let mut su = db.superuser();
        let book = |app: &mut Client, tenant: &str, table: &str, during: &str| -> Result<u64, postgres::Error> {
            let mut tx = begin_as(app, tenant);
            let n = tx.execute(&format!("INSERT INTO {table} (room, during) VALUES (1, $1::text::tstzrange)"), &[&during])?;
            tx.commit()?;
            Ok(n)
        };
        for table in ["bookings", "rentals"] {
            book(&mut app, "globex", table, "[2030-01-01 10:00+00, 2030-01-01 11:00+00)").unwrap();
            let overlapping = book(&mut app, "acme", table, "[2030-01-01 10:30+00, 2030-01-01 11:30+00)");
            let rows = |su: &mut Client, tenant: &str| -> i64 {
                su.query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&tenant]).unwrap().get(0)
            };
            assert_eq!(rows(&mut su, &b), 1, "ground truth: B's booking in {table} exists");
            assert!(overlapping.is_ok(), "{table}: A's booking must not conflict with B's (an oracle): {overlapping:?}");
            assert_eq!(rows(&mut su, &a), 1, "ground truth: A's booking in {table} exists");
            refused(
                &format!("{table}: A's second, overlapping booking"),
                book(&mut app, "acme", table, "[2030-01-01 10:45+00, 2030-01-01 12:00+00)"),
                &SqlState::EXCLUSION_VIOLATION,
            );
        }
    }

    /// Finding 14: rules on enabled tables are refused (42501), and verify() lists the owner's
    /// code on enabled tables: a trigger, a policy, an expression index, and a rule made with the
    /// guard off.
    #[test]
    fn rules_are_refused_and_owner_code_is_listed_by_verify() {
        let o = Orders::new("attack_rules");
        let mut owner = o.db.owner();
        owner
            .batch_execute(
                "CREATE TABLE order_sink (item text);
                 SELECT multitenancy.tenant_exempt('order_sink', 'where the attack copies rows');",
            )
            .unwrap();
        let also = owner.batch_execute("CREATE RULE copy_out AS ON INSERT TO orders DO ALSO INSERT INTO order_sink VALUES (NEW.item)");
        let instead = owner.batch_execute("CREATE RULE swallow AS ON INSERT TO orders DO INSTEAD NOTHING");

        let mut app = o.db.app();
        let mut tx = begin_as(&mut app, "acme");
        tx.execute("INSERT INTO orders (item) VALUES ('acme-after-rules')", &[]).unwrap();
        tx.commit().unwrap();
        let mut su = o.db.superuser();
        assert_eq!(o.true_count(&o.a), o.rows_a + 1, "A's insert landed in orders");
        assert_eq!(count(&mut su, "SELECT count(*) FROM order_sink"), 0, "nothing was copied out");
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM pg_rewrite WHERE ev_class = 'orders'::regclass"),
            0,
            "orders has no rules"
        );
        refused("CREATE RULE ... DO ALSO INSERT INTO order_sink", also, PRIVILEGE);
        refused("CREATE RULE ... DO INSTEAD NOTHING", instead, PRIVILEGE);

        o.db.unguarded(&format!(
            "SET LOCAL ROLE {OWNER};
             CREATE FUNCTION public.note() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$;
             CREATE TRIGGER owner_note AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION public.note();
             CREATE POLICY owner_amount ON orders AS RESTRICTIVE USING (amount > 0);
             CREATE INDEX orders_item_lower ON orders (lower(item));
             CREATE RULE legacy_rule AS ON UPDATE TO orders DO ALSO NOTHING;"
        ));
        let problems = verify_all(&mut su);
        for name in ["owner_note", "owner_amount", "orders_item_lower", "legacy_rule"] {
            assert!(
                problems.iter().any(|p| p.object.contains(name) || p.problem.contains(name)),
                "verify() must list the owner's {name} on orders: {problems:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The application-role attacks without shared_preload_libraries
// ---------------------------------------------------------------------------------------------

mod without_preloading {
    use super::*;

    /// Findings 1 and 3 on a server that does not preload the library (it loads in each session
    /// on first use): the same refusals and the same ground truth.
    #[test]
    fn app_role_attacks_fail_without_the_library_preloaded() {
        let server = Server::private("");
        let o = Orders::on(server, "attack_no_preload", 3, 2);
        let preloaded: String =
            o.db.superuser().query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
        assert!(!preloaded.contains("multitenancy"), "precondition: the library is not preloaded");
        counting_triggers_on_a_temp_table(&o);
        disclosures(&o);
    }
}
