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

/// Ground truth: the usage counters' drift ([`usage_drift`]) as the superuser.
fn drift(db: &TestDb) -> Vec<String> {
    usage_drift(&mut db.superuser())
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

/// Ground truth: whether `table` has the extension's restrictive isolation policy
/// (`multitenancy_isolation`, the one that filters by tenant) in pg_policy.
fn has_isolation_policy(superuser: &mut Client, table: &str) -> bool {
    superuser
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = to_regclass($1) AND polname = 'multitenancy_isolation')",
            &[&table],
        )
        .unwrap()
        .get(0)
}

/// `current_setting(name)` on `client`.
fn show(client: &mut impl postgres::GenericClient, name: &str) -> String {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .unwrap_or_else(|e| panic!("current_setting({name:?}): {e}"))
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// Attacks shared by the preloaded and the non-preloaded server
// ---------------------------------------------------------------------------------------------

/// Finding 1 on a temporary table: the app attaches the counting triggers to a TEMP table of its
/// own and writes rows with other tenants' ids — to inflate tenant B's counters, to push its own
/// below zero (rows inserted before the triggers, deleted after), and to hold B's counting lock
/// while B writes. The app cannot make a permanent table for this (no CREATE on public).
/// Both tenants are counted (only a rows or bytes limit makes a tenant's usage counted): the
/// counters these attacks go for exist.
fn counted(o: &Orders) {
    o.db.superuser()
        .batch_execute(
            "SELECT multitenancy.quota_set('acme', 'rows', 1000000);
             SELECT multitenancy.quota_set('globex', 'rows', 1000000);
             SELECT count(*) FROM multitenancy.usage_recompute();",
        )
        .unwrap();
    assert_eq!(counted_rows(&o.db, &o.b), o.true_count(&o.b), "precondition: tenant B is counted");
}

fn counting_triggers_on_a_temp_table(o: &Orders) {
    let db = &o.db;
    counted(o);
    assert_eq!(drift(db), Vec::<String>::new(), "precondition: the counters are exact before the attack");
    let mut app = db.app();
    let can_create: bool = app.query_one("SELECT has_schema_privilege('public', 'CREATE')", &[]).unwrap().get(0);
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
    let token: String =
        su.query_one("SELECT multitenancy.domain_add('globex', 'shop.globex.test')", &[]).unwrap().get(0);
    // Ground truth: what the app must not learn exists.
    let b_id: String =
        su.query_one("SELECT id::text FROM multitenancy.tenants WHERE slug = 'globex'", &[]).unwrap().get(0);
    assert_eq!(b_id, o.b);
    let member: bool =
        su.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&o.b, &user]).unwrap().get(0);
    assert!(member, "ground truth: the user is a member of globex");
    let unverified = count(
        &mut su,
        "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.globex.test' AND verified_at IS NULL",
    );
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
        count(
            &mut su,
            "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.globex.test' AND verified_at IS NULL"
        ),
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
        for (what, result) in
            [("CREATE TRIGGER", attached.as_ref().err()), ("INSERT", write.as_ref().and_then(|w| w.as_ref().err()))]
        {
            if let Some(error) = result {
                assert!(
                    error.as_db_error().is_some(),
                    "{what} on the bigint temp table lost its connection (server crash): {error}"
                );
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
        counted(&o);
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
        assert_eq!(
            simple_one(&mut attacker, "SHOW multitenancy.require_signed"),
            "on",
            "precondition: signed-only mode"
        );

        attacker.batch_execute("BEGIN").unwrap();
        let id = simple_one(
            &mut attacker,
            &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "acme"))),
        );
        assert_eq!(id, o.a);
        let created = attacker.batch_execute(
            "CREATE TEMP TABLE orders (id bigint, item text, amount int DEFAULT 1,
                                       tenant_id uuid DEFAULT multitenancy.current_tenant_id())",
        );
        attacker.batch_execute("COMMIT").unwrap();

        for i in 0..2 {
            victim.batch_execute("BEGIN").unwrap();
            assert_eq!(backend_pid(&mut victim), pid, "the victim is on the attacker's server connection");
            let id = simple_one(
                &mut victim,
                &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "globex"))),
            );
            assert_eq!(id, o.b);
            victim
                .batch_execute(&format!("INSERT INTO orders (item) VALUES ('globex-secret-{i}')"))
                .unwrap_or_else(|e| panic!("tenant B's insert: {e}"));
            victim.batch_execute("COMMIT").unwrap();
        }

        attacker.batch_execute("BEGIN").unwrap();
        assert_eq!(backend_pid(&mut attacker), pid);
        simple_one(
            &mut attacker,
            &format!("SELECT multitenancy.tenant_set_signed({})::text", literal(&mint(&o.db, "acme"))),
        );
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
        assert_eq!(
            count(
                &mut app,
                "SELECT count(*) FROM pg_settings WHERE name = 'multitenancy.require_signed' AND setting = 'on'"
            ),
            1
        );
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
                    .query_one(
                        "SELECT count(*) FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1",
                        &[&existing],
                    )
                    .unwrap()
                    .get(0);
                let nobody: i64 = su
                    .query_one(
                        "SELECT count(*) FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1",
                        &[&unknown],
                    )
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
            assert!(
                error.message().contains(argument),
                "{what}: the message must name argument {argument:?}: {:?}",
                error.message()
            );
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
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.metered_usage WHERE key = 'k'"),
            0,
            "nothing metered"
        );
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'admin_begin'"),
            0,
            "no admin access"
        );
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

    /// Second review, finding 4: a signed session could still leave session state behind for the
    /// next client of a pooler — `SET SESSION CHARACTERISTICS`, `ALTER ROLE ... SET` (a default
    /// for every later session of the role), `LISTEN` — and `tenant_set_signed` only looked at
    /// `search_path` and `role`, so `set_config('transform_null_equals', 'on', false)` or
    /// `default_transaction_read_only` changed what the next tenant's signed transaction means.
    /// Now the three statements are refused (42501) and change nothing, and `tenant_set_signed`
    /// refuses (42501, naming the setting) to start on top of any session-level setting but the
    /// presentation and transaction ones; after `RESET` it works.
    ///
    /// Without the fix: the three statements succeed (default_transaction_isolation becomes
    /// serializable, pg_db_role_setting gains statement_timeout, pg_listening_channels lists the
    /// channel, and `refused` fails), and `tenant_set_signed` succeeds after the set_config calls
    /// (the old check compared only search_path and role with their reset values).
    #[test]
    fn a_signed_session_cannot_change_session_defaults_or_start_on_top_of_them() {
        let o = Orders::with_rows("attack_signed_session_defaults", 2, 2);
        require_signed(&o.db);
        let mut su = o.db.superuser();
        let role_settings = |su: &mut Client| -> Vec<String> {
            su.query(
                "SELECT format('%s %s %s', setdatabase, setrole, setconfig) FROM pg_db_role_setting ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        let settings_before = role_settings(&mut su);
        let mut app = o.db.app();
        assert_eq!(show(&mut app, "multitenancy.require_signed"), "on", "precondition: signed-only mode");

        let characteristics =
            app.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE");
        let alter_role = app.batch_execute(&format!("ALTER ROLE {APP} SET statement_timeout = '1ms'"));
        let settings_after = role_settings(&mut su);
        if settings_after != settings_before {
            // Roles are cluster-wide: undo it before asserting, or every later session of the app
            // role in the other tests would time out after 1 ms.
            su.batch_execute(&format!("ALTER ROLE {APP} RESET statement_timeout")).unwrap();
        }
        let listen = app.batch_execute("LISTEN tenant_events");

        assert_eq!(settings_after, settings_before, "pg_db_role_setting must not change (ALTER ROLE {APP} SET ...)");
        assert_eq!(
            show(&mut app, "default_transaction_isolation"),
            "read committed",
            "the session's default isolation level must not change"
        );
        assert_eq!(
            count(&mut app, "SELECT count(*) FROM pg_listening_channels()"),
            0,
            "the session listens on no channel"
        );
        refused("SET SESSION CHARACTERISTICS in a require_signed session", characteristics, PRIVILEGE);
        refused(&format!("ALTER ROLE {APP} SET statement_timeout in a require_signed session"), alter_role, PRIVILEGE);
        refused("LISTEN in a require_signed session", listen, PRIVILEGE);

        // set_config(..., false) is a function call, not a SET: it succeeds, and the next signed
        // context refuses to start on top of it.
        for (setting, value) in [("transform_null_equals", "on"), ("default_transaction_read_only", "on")] {
            let mut app = o.db.app();
            app.query_one("SELECT set_config($1, $2, false)", &[&setting, &value])
                .unwrap_or_else(|e| panic!("set_config('{setting}', '{value}', false): {e:?}"));
            assert_eq!(show(&mut app, setting), value, "ground truth: {setting} is set for the session");
            {
                let mut tx = app.transaction().unwrap();
                let error = refused(
                    &format!("tenant_set_signed after set_config('{setting}', '{value}', false)"),
                    tx.query_one("SELECT multitenancy.tenant_set_signed($1)::text", &[&mint(&o.db, "acme")]),
                    PRIVILEGE,
                );
                assert!(error.message().contains(setting), "the refusal must name {setting}: {:?}", error.message());
            }
            // RESET is allowed, and then a signed context starts.
            app.batch_execute(&format!("RESET {setting}")).unwrap_or_else(|e| panic!("RESET {setting}: {e:?}"));
            let mut tx = app.transaction().unwrap();
            let id: String = tx
                .query_one("SELECT multitenancy.tenant_set_signed($1)::text", &[&mint(&o.db, "acme")])
                .unwrap()
                .get(0);
            assert_eq!(id, o.a);
            assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "after RESET {setting}: acme's rows");
            tx.commit().unwrap();
        }

        // Positive controls: a transaction's own isolation level, SET LOCAL after the signed
        // context, and the presentation settings at session level.
        let mut app = o.db.app();
        app.batch_execute(
            "SET application_name = 'attack-suite'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY';
             SET client_encoding = 'UTF8'; SET extra_float_digits = 3;",
        )
        .expect("presentation settings stay settable for the session");
        app.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").unwrap();
        let id: String = app
            .query_one("SELECT multitenancy.tenant_set_signed($1)::text", &[&mint(&o.db, "acme")])
            .expect("tenant_set_signed in a SERIALIZABLE transaction, after session-level presentation settings")
            .get(0);
        assert_eq!(id, o.a);
        assert_eq!(show(&mut app, "transaction_isolation"), "serializable");
        app.batch_execute("SET LOCAL statement_timeout = '5s'").expect("SET LOCAL after tenant_set_signed");
        assert_eq!(show(&mut app, "statement_timeout"), "5s");
        assert_eq!(count(&mut app, "SELECT count(*) FROM orders"), o.rows_a, "positive control: acme's rows");
        app.batch_execute("COMMIT").unwrap();
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's rows are untouched");
    }

    /// Third review, finding 2: a registry lookup made in a REPEATABLE READ transaction was kept
    /// for the session's later transactions, under a cache generation that already counted a
    /// change its snapshot predates. Session A opens a REPEATABLE READ transaction (its snapshot
    /// taken), the superuser suspends globex — or removes a member of acme — and A then sets
    /// that tenant (and user), admitted as its snapshot says, and commits. A's next transactions
    /// must see the change: `tenant_set` is refused (28000), and so is an INSERT with the tenant
    /// set through `multitenancy.tenant_id` (28000); nothing is written.
    ///
    /// Without the fix the stale lookup is answered from the cache: the next `tenant_set`
    /// succeeds and the INSERT lands in the suspended tenant (the ground truth count assertion).
    #[test]
    fn a_repeatable_read_snapshot_does_not_keep_a_suspended_tenant_or_a_removed_member_admitted() {
        const MEMBER_A: &str = "a0000000-0000-4000-8000-0000000000a2";
        let o = Orders::new("attack_repeatable_read_cache");
        add_member(&o.db, "acme", MEMBER_A, "member");
        let mut su = o.db.superuser();

        /// On a new connection of the app: `change` (as the superuser) while the app's REPEATABLE
        /// READ transaction is open, then that transaction sets `tenant` (as end user `user`),
        /// reads orders and commits. Returns the app's next two transactions on the same
        /// connection: `tenant_set(tenant)`, and an INSERT into orders with `tenant_id` set.
        fn after_a_snapshot_older_than(
            o: &Orders,
            change: &str,
            tenant: &str,
            tenant_id: &str,
            user: Option<&str>,
        ) -> (Result<String, postgres::Error>, Result<u64, postgres::Error>) {
            let mut app = o.db.app();
            let as_user = |tx: &mut Transaction<'_>| {
                if let Some(user) = user {
                    tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&user]).unwrap();
                }
            };
            {
                let mut tx =
                    app.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
                assert_eq!(count(&mut tx, "SELECT 1::bigint"), 1, "the snapshot is taken");
                o.db.superuser().batch_execute(change).unwrap_or_else(|e| panic!("{change}: {e}"));
                as_user(&mut tx);
                // Admitted or refused, as the snapshot taken before the change says: either is fine.
                if tx.query_one("SELECT multitenancy.tenant_set($1)::text", &[&tenant]).is_ok() {
                    count(&mut tx, "SELECT count(*) FROM orders");
                    tx.commit().unwrap();
                }
            }
            let set = {
                let mut tx = app.transaction().unwrap();
                as_user(&mut tx);
                tx.query_one("SELECT multitenancy.tenant_set($1)::text", &[&tenant]).map(|r| r.get::<_, String>(0))
            };
            let mut tx = app.transaction().unwrap();
            tx.execute("SELECT set_config('multitenancy.tenant_id', $1, true)", &[&tenant_id]).unwrap();
            as_user(&mut tx);
            let insert = tx.execute("INSERT INTO orders (item) VALUES ('written after the change')", &[]);
            if insert.is_ok() {
                tx.commit().unwrap();
            }
            (set, insert)
        }

        let not_admitted = &SqlState::INVALID_AUTHORIZATION_SPECIFICATION;
        let (set, insert) = after_a_snapshot_older_than(
            &o,
            "SELECT multitenancy.tenant_suspend('globex', 'unpaid')",
            "globex",
            &o.b,
            None,
        );
        let status: String =
            su.query_one("SELECT status FROM multitenancy.tenants WHERE slug = 'globex'", &[]).unwrap().get(0);
        assert_eq!(status, "suspended", "ground truth: globex is suspended");
        assert_eq!(o.true_count(&o.b), o.rows_b, "nothing was written to the suspended globex: {insert:?}");
        refused("tenant_set('globex') in the transaction after a stale REPEATABLE READ one", set, not_admitted);
        refused("INSERT as globex in a later transaction", insert, not_admitted);

        let (set, insert) = after_a_snapshot_older_than(
            &o,
            &format!("SELECT multitenancy.member_remove('acme', '{MEMBER_A}')"),
            "acme",
            &o.a,
            Some(MEMBER_A),
        );
        let members =
            count(&mut su, &format!("SELECT count(*) FROM multitenancy.members WHERE user_id = '{MEMBER_A}'"));
        assert_eq!(members, 0, "ground truth: {MEMBER_A} is no member of any tenant");
        assert_eq!(o.true_count(&o.a), o.rows_a, "nothing was written to acme by the removed member: {insert:?}");
        refused(
            "tenant_set('acme') as the removed member after a stale REPEATABLE READ transaction",
            set,
            not_admitted,
        );
        refused("INSERT as the removed member of acme in a later transaction", insert, not_admitted);

        // Positive control: acme without an end user, and globex once active again.
        su.execute("SELECT multitenancy.tenant_activate('globex')", &[]).unwrap();
        let mut app = o.db.app();
        for tenant in ["acme", "globex"] {
            let mut tx = begin_as(&mut app, tenant);
            tx.execute("INSERT INTO orders (item) VALUES ('positive control')", &[]).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!((o.true_count(&o.a), o.true_count(&o.b)), (o.rows_a + 1, o.rows_b + 1));
    }

    /// Third review, finding 4: the guard revoked table-level REFERENCES on an enabled table from
    /// every role but the owner, not a column-level grant. With `GRANT REFERENCES (tenant_id, id)
    /// ON orders TO mt_app` the app could make a table of its own with a foreign key to orders —
    /// which PostgreSQL checks without row level security — and learn which of tenant B's order
    /// ids exist. Now the guard revokes the column-level grant too: the app has no REFERENCES on
    /// any column of orders, and its table referencing orders is refused (42501).
    ///
    /// Without the fix `has_column_privilege` is true (the first assertion); the app's table is
    /// created and accepts a row naming B's order.
    #[test]
    fn a_column_level_references_grant_on_an_enabled_table_is_revoked() {
        let o = Orders::new("attack_column_references");
        let mut su = o.db.superuser();
        su.batch_execute(&format!("CREATE SCHEMA scratch; GRANT USAGE, CREATE ON SCHEMA scratch TO {APP}")).unwrap();
        let b_order: i64 =
            su.query_one("SELECT min(id) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap().get(0);
        let granted = o.db.owner().batch_execute(&format!("GRANT REFERENCES (tenant_id, id) ON orders TO {APP}"));

        let mut app = o.db.app();
        let created = app.batch_execute(
            "CREATE TABLE scratch.order_probe (
                 tenant uuid, order_id bigint,
                 FOREIGN KEY (tenant, order_id) REFERENCES public.orders (tenant_id, id))",
        );
        // The oracle: a row naming one of B's orders is accepted exactly when the order exists.
        let probe = created
            .is_ok()
            .then(|| app.execute("INSERT INTO scratch.order_probe VALUES ($1::text::uuid, $2)", &[&o.b, &b_order]));

        let references = |su: &mut Client, column: &str| -> bool {
            su.query_one("SELECT has_column_privilege($1, 'public.orders', $2, 'REFERENCES')", &[&APP, &column])
                .unwrap()
                .get(0)
        };
        assert_eq!(
            (references(&mut su, "tenant_id"), references(&mut su, "id")),
            (false, false),
            "{APP} must have no REFERENCES privilege on orders (tenant_id, id) after the owner's grant: {granted:?}"
        );
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's orders exist");
        assert!(
            !relation_exists(&mut su, "scratch.order_probe"),
            "the app's table referencing orders exists: {probe:?}"
        );
        refused("CREATE TABLE scratch.order_probe ... REFERENCES public.orders as the app", created, PRIVILEGE);
        // Positive control: the app keeps the privileges it was meant to have.
        let kept: bool = su
            .query_one("SELECT has_table_privilege($1, 'public.orders', 'SELECT, INSERT, UPDATE, DELETE')", &[&APP])
            .unwrap()
            .get(0);
        assert!(kept, "{APP} keeps SELECT, INSERT, UPDATE and DELETE on orders");
    }

    /// Third review, finding 5: a signed context started with the session values the previous
    /// transaction on the connection left — with a pooler, another tenant's. Tenant A's signed
    /// transaction calls `setseed(0.42)` and inserts into orders (an identity column the app may
    /// read the sequence of); tenant B's next signed transactions on the same connection must not
    /// draw the `random()` values A's seed predicts (computed in a session of its own), and
    /// `lastval()` / `currval()` are "not yet defined" (55000) instead of A's id.
    ///
    /// Without the fix B draws exactly the predicted values (the `assert_ne`), and `lastval()`
    /// returns A's order id.
    #[test]
    fn a_signed_transaction_does_not_inherit_the_random_seed_or_sequence_values_of_the_previous_one() {
        let o = Orders::with_rows("attack_signed_session_values", 2, 2);
        require_signed(&o.db);
        let mut owner = o.db.owner();
        let sequence: String = owner.query_one("SELECT pg_get_serial_sequence('orders', 'id')", &[]).unwrap().get(0);
        owner.batch_execute(&format!("GRANT USAGE ON SEQUENCE {sequence} TO {APP}")).unwrap();
        let mut su = o.db.superuser();
        su.batch_execute("SELECT setseed(0.42)").unwrap();
        let predicted: Vec<f64> = (0..3).map(|_| su.query_one("SELECT random()", &[]).unwrap().get(0)).collect();

        // One connection, as a pooler's server connection: A's transaction, then B's.
        let mut conn = o.db.app();
        assert_eq!(show(&mut conn, "multitenancy.require_signed"), "on", "precondition: signed-only mode");
        let (a_id, a_lastval) = {
            let mut tx = conn.transaction().unwrap();
            tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "acme")]).unwrap();
            tx.batch_execute("SELECT setseed(0.42)").unwrap();
            let id: i64 =
                tx.query_one("INSERT INTO orders (item) VALUES ('acme-secret') RETURNING id", &[]).unwrap().get(0);
            let last: i64 = tx.query_one("SELECT lastval()", &[]).unwrap().get(0);
            tx.commit().unwrap();
            (id, last)
        };
        let drawn: Vec<f64> = {
            let mut tx = conn.transaction().unwrap();
            tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "globex")]).unwrap();
            let drawn = (0..3).map(|_| tx.query_one("SELECT random()", &[]).unwrap().get(0)).collect();
            tx.commit().unwrap();
            drawn
        };
        let mut in_b = |sql: &str| -> Result<i64, postgres::Error> {
            let mut tx = conn.transaction().unwrap();
            tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&mint(&o.db, "globex")]).unwrap();
            tx.query_one(sql, &[]).map(|r| r.get(0))
        };
        let lastval = in_b("SELECT lastval()");
        let currval = in_b(&format!("SELECT currval('{sequence}')"));

        let mine = count(&mut su, &format!("SELECT count(*) FROM orders WHERE id = {a_id} AND tenant_id = '{}'", o.a));
        assert_eq!((mine, a_lastval), (1, a_id), "ground truth: A's order {a_id} exists, and A's lastval() was its id");
        assert_ne!(drawn, predicted, "tenant B's random() values are the ones A's setseed(0.42) predicts");
        for (what, result) in [("lastval()", lastval), ("currval of the orders sequence", currval)] {
            let error = refused(
                &format!("{what} in B's signed transaction after A's insert"),
                result,
                &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            );
            assert!(error.message().contains("not yet defined"), "{what}: {:?}", error.message());
        }
    }

    /// Third review, finding 6: `tenant_resolve` routed a suspended (or deleted) tenant's hosts —
    /// `<slug>.<base_domain>` and its verified custom domain — to the tenant, telling a router
    /// (and whoever calls it) that the tenant exists. Now only active tenants are routed to:
    /// those hosts resolve to NULL, as an unknown host does, and route again once the tenant is
    /// active.
    ///
    /// Without the fix both hosts of the suspended globex resolve to its id.
    #[test]
    fn tenant_resolve_routes_to_active_tenants_only() {
        let o = Orders::new("attack_resolve_inactive");
        let mut su = o.db.superuser();
        su.batch_execute(&format!("ALTER DATABASE {} SET multitenancy.base_domain = 'example.test'", o.db.name))
            .unwrap();
        let token: String =
            su.query_one("SELECT multitenancy.domain_add('globex', 'shop.globex.test')", &[]).unwrap().get(0);
        su.execute("SELECT multitenancy.domain_verify('shop.globex.test', $1)", &[&token]).unwrap();
        let mut app = o.db.app();
        let mut resolve = |host: &str| -> Option<String> {
            app.query_one("SELECT multitenancy.tenant_resolve($1)::text", &[&host]).unwrap().get(0)
        };
        let hosts = ["globex.example.test", "shop.globex.test"];
        for host in hosts {
            assert_eq!(resolve(host), Some(o.b.clone()), "precondition: {host} routes to the active globex");
        }

        for (change, status) in
            [("tenant_suspend('globex', 'unpaid')", "suspended"), ("tenant_delete('globex')", "deleted")]
        {
            su.batch_execute(&format!("SELECT multitenancy.{change}")).unwrap();
            let truth = count(
                &mut su,
                &format!(
                    "SELECT count(*) FROM multitenancy.domains d JOIN multitenancy.tenants t ON t.id = d.tenant_id
                      WHERE d.domain = 'shop.globex.test' AND d.verified_at IS NOT NULL
                        AND t.slug = 'globex' AND t.status = '{status}'"
                ),
            );
            assert_eq!(truth, 1, "ground truth: globex is {status} and its domain is verified");
            for host in hosts {
                assert_eq!(resolve(host), None, "{host} of the {status} globex must resolve to nothing");
            }
            assert_eq!(resolve("nobody.example.test"), None, "an unknown host resolves to nothing");
            assert_eq!(resolve("acme.example.test"), Some(o.a.clone()), "positive control: the active acme");
        }
        su.execute("SELECT multitenancy.tenant_activate('globex')", &[]).unwrap();
        for host in hosts {
            assert_eq!(resolve(host), Some(o.b.clone()), "{host} routes to globex again once it is active");
        }
    }

    /// Third review, finding 6: an upsert inside a common table expression — `WITH x AS (INSERT
    /// INTO customers ... ON CONFLICT (email) DO UPDATE ... RETURNING id) SELECT count(*) FROM x`
    /// — on an enabled table whose unique key is `(tenant_id, email)`, as tenant A, while B has
    /// the same email: the conflict target is adjusted as for a plain upsert, so it works, updates
    /// A's row only and leaves B's row with the same email as it was.
    ///
    /// Without the fix the statement fails with 42P10 (no unique key on `email` alone).
    #[test]
    fn an_upsert_inside_a_common_table_expression_updates_the_tenants_own_row_only() {
        let db = TestDb::new("attack_cte_upsert");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        db.owner()
            .batch_execute(&format!(
                "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                         email text NOT NULL UNIQUE, name text NOT NULL);
                 SELECT multitenancy.tenant_enable('customers');
                 GRANT SELECT, INSERT, UPDATE ON customers TO {APP};"
            ))
            .unwrap();
        let mut su = db.superuser();
        let unique: Vec<String> = su
            .query(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint
                  WHERE conrelid = 'customers'::regclass AND contype = 'u'
                    AND pg_get_constraintdef(oid) LIKE '%email%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(unique, ["UNIQUE (tenant_id, email)"], "precondition: the unique key on email is per tenant");
        let mut app = db.app();
        let mut ids = Vec::new();
        for (slug, name) in [("acme", "A1"), ("globex", "B1")] {
            let mut tx = begin_as(&mut app, slug);
            let id: i64 = tx
                .query_one("INSERT INTO customers (email, name) VALUES ('shared@x', $1) RETURNING id", &[&name])
                .unwrap()
                .get(0);
            tx.commit().unwrap();
            ids.push(id);
        }
        let truth = |su: &mut Client| -> Vec<(i64, String, String)> {
            su.query("SELECT id, tenant_id::text, name FROM customers WHERE email = 'shared@x' ORDER BY id", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        };
        assert_eq!(
            truth(&mut su),
            [(ids[0], a.clone(), "A1".to_string()), (ids[1], b.clone(), "B1".to_string())],
            "ground truth: A and B each have a customer shared@x"
        );

        let upsert = "WITH x AS (INSERT INTO customers (email, name) VALUES ('shared@x', 'A2')
                                 ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING id)
                      SELECT count(*) FROM x";
        let mut tx = begin_as(&mut app, "acme");
        let upserted = tx.query_one(upsert, &[]).map(|r| r.get::<_, i64>(0));
        let upserted = match upserted {
            Ok(n) => {
                tx.commit().unwrap();
                n
            }
            Err(error) => panic!("the upsert inside WITH as {APP} in acme's context must work: {error:?}"),
        };

        assert_eq!(
            truth(&mut su),
            [(ids[0], a.clone(), "A2".to_string()), (ids[1], b.clone(), "B1".to_string())],
            "ground truth: A's customer updated in place, B's untouched, no new row"
        );
        assert_eq!(upserted, 1, "the upsert returned A's one row");
        let mut tx = begin_as(&mut app, "acme");
        let seen: Vec<(i64, String)> =
            tx.query("SELECT id, name FROM customers", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
        tx.commit().unwrap();
        assert_eq!(seen, [(ids[0], "A2".to_string())], "A sees its own customer only");
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
        assert_eq!(
            resolve(&mut app, "globex.example.test"),
            Some(o.b.clone()),
            "precondition: B's slug host routes to B"
        );

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
        let token = text_as_user(
            &mut app,
            "acme",
            ADMIN_A,
            "SELECT multitenancy.domain_add('acme', 'shop.acme-corp.test')",
            &[],
        )
        .expect("a tenant admin may register a host outside base_domain")
        .expect("domain_add returns the verification token");
        refused(
            "domain_verify by a tenant admin",
            text_as_user(
                &mut app,
                "acme",
                ADMIN_A,
                "SELECT multitenancy.domain_verify('shop.acme-corp.test', $1)::text",
                &[&token],
            ),
            PRIVILEGE,
        );
        assert_eq!(resolve(&mut app, "shop.acme-corp.test"), None, "the unverified domain routes nowhere");
        su.execute("SELECT multitenancy.domain_verify('shop.acme-corp.test', $1)", &[&token]).unwrap();
        assert_eq!(
            resolve(&mut app, "shop.acme-corp.test"),
            Some(o.a.clone()),
            "positive control: an operator verifies it"
        );
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
        refused(
            "B's domain_add of A's fresh claim",
            add(&mut app, "globex", OWNER_B, "shop.example.org"),
            &SqlState::UNIQUE_VIOLATION,
        );
        assert_eq!(owner_of("shop.example.org"), Some(o.a.clone()), "ground truth: A's fresh claim stands");

        backdate("shop.example.org", "30 days");
        let taken = add(&mut app, "globex", OWNER_B, "shop.example.org");
        assert_eq!(
            owner_of("shop.example.org"),
            Some(o.b.clone()),
            "a stale unverified claim must not block B: {taken:?}"
        );
        let token = taken.unwrap().expect("B gets a verification token");
        let stored: String =
            o.db.superuser()
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
        refused(
            "B's domain_add of A's fresh claim under a 1h TTL",
            add(&mut app, "globex", OWNER_B, "fresh.example.org"),
            &SqlState::UNIQUE_VIOLATION,
        );
        assert_eq!(owner_of("fresh.example.org"), Some(o.a.clone()));
    }

    /// Second review, finding 5: tenant A's admin used the management functions as an oracle —
    /// naming tenant B gave 42501 ("permission denied ... tenant \"globex\"", B's slug even when
    /// B was named by its id), naming an unknown tenant 42704 ("does not exist"); domain_remove
    /// of B's domain gave 42501, of an unknown one 42704. Now `member_add`, `member_set_role`,
    /// `member_remove`, `setting_set` and `domain_add` answer another tenant and an unknown one
    /// alike (42501, the tenant named as the caller named it), and `domain_remove` of B's domain
    /// is "not found" (42704) like an unknown domain. Nothing of B's changes.
    ///
    /// Without the fix: the unknown tenant's 42704 fails `refused(.., 42501)`; B named by id is
    /// answered with B's slug (the "never names globex" assertion); B's domain gives 42501, not
    /// 42704.
    #[test]
    fn management_refusals_do_not_tell_another_tenant_from_an_unknown_one() {
        let o = Orders::new("attack_management_oracle");
        const NEWCOMER: &str = "a0000000-0000-4000-8000-0000000000a1";
        const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";
        add_member(&o.db, "acme", ADMIN_A, "admin");
        add_member(&o.db, "globex", OWNER_B, "owner");
        add_member(&o.db, "globex", MEMBER_B, "member");
        let mut su = o.db.superuser();
        su.query_one("SELECT multitenancy.domain_add('globex', 'shop.globex.test')", &[]).unwrap();
        // Ground truth: B exists by slug and by id, the unknown names do not.
        let tenants = |su: &mut Client, key: &str| -> i64 {
            su.query_one("SELECT count(*) FROM multitenancy.tenants WHERE slug = $1 OR id::text = $1", &[&key])
                .unwrap()
                .get(0)
        };
        assert_eq!(
            (
                tenants(&mut su, "globex"),
                tenants(&mut su, &o.b),
                tenants(&mut su, "nobody"),
                tenants(&mut su, UNKNOWN_ID)
            ),
            (1, 1, 0, 0),
            "ground truth: globex exists by slug and id; nobody and {UNKNOWN_ID} do not"
        );
        // Everything of B's a refused call could have changed, and what it could have added.
        let state = |su: &mut Client| -> String {
            su.query_one(
                "SELECT concat_ws(' | ',
                    (SELECT string_agg(format('%s %s %s', tenant_id, user_id, role), ', ' ORDER BY tenant_id, user_id)
                       FROM multitenancy.members),
                    (SELECT string_agg(format('%s %s', slug, settings), ', ' ORDER BY slug) FROM multitenancy.tenants),
                    (SELECT string_agg(format('%s %s', domain, tenant_id), ', ' ORDER BY domain) FROM multitenancy.domains))",
                &[],
            )
            .unwrap()
            .get(0)
        };
        let before = state(&mut su);

        let mut app = o.db.app();
        let calls = [
            format!("SELECT multitenancy.member_add($1, '{NEWCOMER}', 'member')"),
            format!("SELECT multitenancy.member_set_role($1, '{MEMBER_B}', 'admin')"),
            format!("SELECT multitenancy.member_remove($1, '{MEMBER_B}')"),
            "SELECT multitenancy.setting_set($1, 'sso', '\"hijacked\"'::jsonb)".to_string(),
            "SELECT multitenancy.domain_add($1, 'hijack.example.org')".to_string(),
        ];
        let names = [
            ("globex", "B by slug"),
            (o.b.as_str(), "B by id"),
            ("nobody", "an unknown slug"),
            (UNKNOWN_ID, "an unknown id"),
        ];
        let mut answers = Vec::new();
        for call in &calls {
            let mut per_name = Vec::new();
            for (name, what) in names {
                let mut tx = begin_as_user(&mut app, "acme", ADMIN_A);
                per_name.push((name, what, tx.execute(call.as_str(), &[&name])));
            }
            answers.push(per_name);
        }
        assert_eq!(state(&mut su), before, "ground truth: no member, setting or domain changed");

        for (call, per_name) in calls.iter().zip(answers) {
            let mut said = Vec::new();
            for (name, what, result) in per_name {
                let error = refused(&format!("{call} naming {what} ({name}) as acme's admin"), result, PRIVILEGE);
                let told = told(&error);
                if name == o.b {
                    assert!(
                        !told.contains("globex") && !told.contains("Globex"),
                        "{call} naming B by id must not name B's slug: {told:?}"
                    );
                }
                said.push((what, told.replace(name, "<tenant>")));
            }
            let (first_what, first) = &said[0];
            for (what, answer) in &said[1..] {
                assert_eq!(answer, first, "{call}: the answer for {what} must be the answer for {first_what}");
            }
        }

        // domain_remove: B's domain is "not found", like an unknown one.
        let mut removals = Vec::new();
        for domain in ["shop.globex.test", "nobody.example.test"] {
            let mut tx = begin_as_user(&mut app, "acme", ADMIN_A);
            removals.push((domain, tx.execute("SELECT multitenancy.domain_remove($1)", &[&domain])));
        }
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.globex.test'"),
            1,
            "B's domain still exists"
        );
        assert_eq!(state(&mut su), before, "nothing changed");
        let mut said = Vec::new();
        for (domain, result) in removals {
            let error =
                refused(&format!("domain_remove('{domain}') as acme's admin"), result, &SqlState::UNDEFINED_OBJECT);
            said.push(told(&error).replace(domain, "<domain>"));
        }
        assert_eq!(said[0], said[1], "domain_remove must answer B's domain as it answers an unknown one");

        // Positive controls: the admin manages its own tenant.
        as_user(&mut app, "acme", ADMIN_A, &format!("SELECT multitenancy.member_add('acme', '{NEWCOMER}', 'member')"))
            .expect("acme's admin adds a member to acme");
        as_user(&mut app, "acme", ADMIN_A, "SELECT multitenancy.setting_set('acme', 'sso', '\"on\"'::jsonb)")
            .expect("acme's admin changes acme's settings");
        as_user(&mut app, "acme", ADMIN_A, "SELECT multitenancy.domain_add('acme', 'shop.acme-corp.test')")
            .expect("acme's admin adds a domain to acme");
        as_user(&mut app, "acme", ADMIN_A, "SELECT multitenancy.domain_remove('shop.acme-corp.test')")
            .expect("acme's admin removes acme's domain");
        let members = count(
            &mut su,
            &format!(
                "SELECT count(*) FROM multitenancy.members WHERE tenant_id = '{}' AND user_id = '{NEWCOMER}'",
                o.a
            ),
        );
        assert_eq!(members, 1, "positive control: the newcomer is a member of acme");
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
                assert_eq!(
                    db.code(),
                    &SqlState::FEATURE_NOT_SUPPORTED,
                    "only PostgreSQL may refuse the SET clause: {}",
                    db.message()
                );
                let version: i32 =
                    support.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
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

    /// Review of the vetted DDL (issue 17), finding 1: `DROP INDEX idxname` is vetted (the index
    /// it resolves to holds no tenant_id), then PostgreSQL resolves the name again; a same-named
    /// index in a schema earlier in the search_path — here the enabled table's tenant index,
    /// renamed there by a ddl_command_start trigger standing in for a second session racing the
    /// statement — would be dropped unchecked. The name is rewritten schema-qualified under the
    /// locks, so the DROP drops what was vetted and the tenant index stays.
    #[test]
    fn a_vetted_drop_index_cannot_be_redirected_to_a_tenant_index() {
        let db = TestDb::new("attack_drop_index_race");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        let mut su = db.superuser();
        su.batch_execute(&format!("CREATE SCHEMA s1 AUTHORIZATION {OWNER}")).unwrap();
        let mut owner = db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE s1.t (note text);
                 SELECT multitenancy.tenant_enable('s1.t');
                 CREATE TABLE decoy (note text);
                 SELECT multitenancy.tenant_exempt('decoy', 'a table of no tenant');
                 CREATE INDEX idxname ON decoy (note);
                 GRANT USAGE ON SCHEMA s1 TO {APP}; GRANT SELECT, INSERT ON s1.t TO {APP};"
            ))
            .unwrap();
        let mut app = db.app();
        for slug in ["acme", "globex"] {
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO s1.t (note) VALUES ($1)", &[&slug]).unwrap();
            tx.commit().unwrap();
        }
        let tenant_index = |su: &mut Client| -> Vec<String> {
            su.query(
                "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = 's1.t'::regclass AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                        WHERE attrelid = 's1.t'::regclass AND attname = 'tenant_id')",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        assert!(!tenant_index(&mut su).is_empty(), "ground truth: s1.t has its tenant index");
        su.batch_execute(
            "CREATE FUNCTION race() RETURNS event_trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF tg_tag = 'DROP INDEX' AND current_setting('mt_test.race', true) = 'on' THEN
                     EXECUTE (SELECT format('ALTER INDEX s1.%I RENAME TO idxname', c.relname)
                                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                               WHERE i.indrelid = 's1.t'::regclass);
                 END IF;
             END $$;
             CREATE EVENT TRIGGER race ON ddl_command_start EXECUTE FUNCTION race();",
        )
        .unwrap();
        owner
            .batch_execute("SET search_path = s1, public; SET mt_test.race = on; DROP INDEX idxname")
            .unwrap_or_else(|e| panic!("dropping the decoy's index: {e}"));
        owner.batch_execute("RESET search_path; RESET mt_test.race").unwrap();
        su.batch_execute("DROP EVENT TRIGGER race").unwrap();
        assert!(
            !tenant_index(&mut su).is_empty(),
            "the enabled table's tenant index must not be dropped in place of the decoy's"
        );
        let decoy_indexes = count(&mut su, "SELECT count(*) FROM pg_index WHERE indrelid = 'decoy'::regclass");
        assert_eq!(decoy_indexes, 0, "the index that was vetted is the one dropped");
        assert_eq!(db.verify(), vec![], "verify() after the DROP INDEX");
        assert_isolated(db.server(), &db.name, "s1.t", &[("acme", a.as_str()), ("globex", b.as_str())]);
    }

    /// Review finding 2: a foreign key's validation runs with FORCE lifted for the owner
    /// (SECURITY_NOFORCE_RLS); a column added with it whose domain has a default or a check would
    /// run the owner's code in that window, over every table the owner has. Refused before it runs:
    /// the spy table records nothing.
    #[test]
    fn a_foreign_key_column_cannot_run_code_while_force_is_lifted() {
        let o = Orders::new("attack_noforce_domain");
        let mut su = o.db.superuser();
        let mut owner = o.db.owner();
        owner
            .batch_execute(
                "CREATE TABLE spy (tenants bigint);
                 SELECT multitenancy.tenant_exempt('spy', 'what the code of the owner saw');
                 CREATE TABLE parents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
                 SELECT multitenancy.tenant_enable('parents');
                 CREATE TABLE children (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
                 SELECT multitenancy.tenant_enable('children');
                 CREATE FUNCTION peek() RETURNS bigint LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO spy SELECT count(DISTINCT tenant_id) FROM orders;
                     RETURN NULL;
                 END $$;
                 CREATE FUNCTION peek_check(bigint) RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN
                     PERFORM peek();
                     RETURN true;
                 END $$;
                 CREATE DOMAIN pid_default AS bigint DEFAULT peek();
                 CREATE DOMAIN pid_check AS bigint CHECK (peek_check(VALUE));",
            )
            .unwrap();
        // Rows of both tenants, so that PostgreSQL evaluates the new column for existing rows.
        su.batch_execute(&format!("INSERT INTO children (tenant_id) VALUES ('{}'), ('{}')", o.a, o.b)).unwrap();
        for domain in ["pid_default", "pid_check"] {
            let statement = format!("ALTER TABLE children ADD COLUMN parent_{domain} {domain} REFERENCES parents");
            refused(&statement, owner.batch_execute(&statement), &SqlState::INVALID_PARAMETER_VALUE);
        }
        let seen = count(&mut su, "SELECT count(*) FROM spy");
        assert_eq!(seen, 0, "the owner's code did not run in the window");
        // Positive control: the column first, then the key.
        owner
            .batch_execute(
                "ALTER TABLE children ADD COLUMN parent_id bigint;
                 ALTER TABLE children ADD FOREIGN KEY (parent_id) REFERENCES parents;",
            )
            .expect("a plain column and then its foreign key");
        assert_eq!(o.db.verify(), vec![]);
    }

    /// Review finding 3: with tenant_id in a foreign key, `ON DELETE SET DEFAULT` would set the
    /// child's tenant_id to the deleting tenant (the RI action runs as the owner over every
    /// tenant's rows): another tenant's child rows would move into the deleter's tenant. The
    /// extension's composite keys leave tenant_id out of SET NULL / SET DEFAULT (PostgreSQL 15's
    /// column list) or refuse them; one written by hand is refused by the guard and reported by
    /// verify().
    #[test]
    fn a_foreign_key_action_cannot_move_rows_between_tenants() {
        let db = TestDb::new("attack_fk_set_default");
        let mut su = db.superuser();
        let mut owner = db.owner();
        owner
            .batch_execute(
                "CREATE TABLE p (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
                 SELECT multitenancy.tenant_enable('p');
                 CREATE TABLE c (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, p_id bigint);
                 SELECT multitenancy.tenant_enable('c');",
            )
            .unwrap();
        let v15 = server_version(&mut su) >= 150000;
        refused(
            "ON UPDATE SET NULL",
            owner.batch_execute(
                "ALTER TABLE c ADD CONSTRAINT c_p_fk FOREIGN KEY (p_id) REFERENCES p ON UPDATE SET NULL",
            ),
            &SqlState::INVALID_PARAMETER_VALUE,
        );
        // MATCH FULL refuses the half-NULL key SET NULL (p_id) leaves: every parent delete would fail.
        let full = "ALTER TABLE c ADD CONSTRAINT c_p_fk FOREIGN KEY (p_id) REFERENCES p MATCH FULL ON DELETE SET NULL";
        refused(full, owner.batch_execute(full), &SqlState::INVALID_PARAMETER_VALUE);
        if v15 {
            let statement =
                "ALTER TABLE c ADD CONSTRAINT c_p_fk FOREIGN KEY (p_id) REFERENCES p ON DELETE SET NULL (tenant_id, p_id)";
            refused(statement, owner.batch_execute(statement), &SqlState::INVALID_PARAMETER_VALUE);
        }
        let written = "ALTER TABLE c ADD CONSTRAINT c_p_fk FOREIGN KEY (tenant_id, p_id) REFERENCES p (tenant_id, id) \
                       ON DELETE SET DEFAULT";
        expect_refused(owner.batch_execute(written), "public.c");
        assert!(
            constraints(&mut su, "c", "f").is_empty(),
            "no foreign key was added: {:?}",
            constraints(&mut su, "c", "f")
        );

        // As a migration writes them: limited to the key's own column (15 and later), else refused.
        for action in ["SET NULL", "SET DEFAULT"] {
            let statement =
                format!("ALTER TABLE c ADD CONSTRAINT c_p_fk FOREIGN KEY (p_id) REFERENCES p ON DELETE {action}");
            if v15 {
                owner.batch_execute(&statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
                assert_eq!(
                    constraints(&mut su, "c", "f"),
                    [(
                        "c_p_fk".to_string(),
                        format!("FOREIGN KEY (tenant_id, p_id) REFERENCES p(tenant_id, id) ON DELETE {action} (p_id)")
                    )]
                );
                owner.batch_execute("ALTER TABLE c DROP CONSTRAINT c_p_fk").unwrap();
            } else {
                refused(&statement, owner.batch_execute(&statement), &SqlState::INVALID_PARAMETER_VALUE);
            }
        }
        db.unguarded(written);
        let problems = db.verify();
        assert!(
            problems.iter().any(|p| p.object == "public.c" && p.problem.contains("c_p_fk sets tenant_id")),
            "verify() reports the hand-written action: {problems:#?}"
        );
    }

    /// Review, also found: PostgreSQL fires no event trigger for a statement inside EXPLAIN, so
    /// `EXPLAIN ANALYZE CREATE MATERIALIZED VIEW ... AS SELECT * FROM orders` (with a tenant's
    /// context) stored that tenant's rows outside row level security, and `EXPLAIN ANALYZE
    /// CREATE TABLE ... AS` left a table in a guarded schema neither enabled nor exempt. Refused.
    #[test]
    fn explain_analyze_cannot_create_what_the_guard_does_not_see() {
        let o = Orders::new("attack_explain_ctas");
        let mut su = o.db.superuser();
        let mut owner = o.db.owner();
        for (statement, relation) in [
            ("EXPLAIN ANALYZE CREATE MATERIALIZED VIEW leak_mv AS SELECT * FROM orders", "leak_mv"),
            ("EXPLAIN (ANALYZE, COSTS OFF) CREATE TABLE leak_t AS SELECT * FROM orders", "leak_t"),
            ("EXPLAIN ANALYZE SELECT * INTO leak_into FROM orders", "leak_into"),
        ] {
            let mut tx = begin_as(&mut owner, "globex");
            let result = tx.batch_execute(statement);
            refused(statement, result, PRIVILEGE);
            drop(tx);
            assert!(!relation_exists(&mut su, relation), "{relation} must not exist");
        }
        // EXPLAIN without ANALYZE creates nothing and is fine.
        owner.batch_execute("EXPLAIN CREATE TABLE plan_only AS SELECT 1 AS x").expect("EXPLAIN without ANALYZE");
        assert!(!relation_exists(&mut su, "plan_only"));
    }

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
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM legacy WHERE tenant_id IS NULL"),
            2,
            "the backfill was rolled back"
        );
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
            su.query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&b])
                .unwrap()
                .get(0)
        };
        assert_eq!(
            (truth(&mut su, "private_items"), truth(&mut su, "part_items")),
            (1, 1),
            "ground truth: B's rows exist"
        );

        let inherit = owner.batch_execute("ALTER TABLE private_items INHERIT catalog_items");
        let attach =
            owner.batch_execute("ALTER TABLE reports.by_id ATTACH PARTITION part_items FOR VALUES FROM (0) TO (1000)");
        let inherits = owner.batch_execute("CREATE TABLE sneaky_items (tenant_id uuid) INHERITS (catalog_items)");

        let mut tx = begin_as(&mut app, "acme");
        let via_parent = count(&mut tx, "SELECT count(*) FROM catalog_items WHERE item LIKE 'globex%'");
        let via_partitioned: i64 =
            tx.query_one("SELECT count(*) FROM reports.by_id WHERE tenant_id = $1::text::uuid", &[&b]).unwrap().get(0);
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
        tx.batch_execute(
            "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexonlyscan = off",
        )
        .unwrap();
        let items: Vec<String> = tx.query("SELECT item FROM orders", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        drop(tx);
        let heard = notices.take();
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's rows exist");
        assert!(items.iter().all(|i| i.starts_with("acme-")), "A sees only its own rows: {items:?}");
        let leaked: Vec<&String> = heard.iter().filter(|n| n.contains("globex")).collect();
        assert_eq!(leaked, Vec::<&String>::new(), "tenant A's scan received B's values in NOTICEs");
        refused("CREATE POLICY a_spy ... USING (leak(item))", spy, PRIVILEGE);
        let policies = count(
            &mut o.db.superuser(),
            "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass AND polname = 'a_spy'",
        );
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
        let created = owner
            .batch_execute("CREATE MATERIALIZED VIEW order_digest AS SELECT * FROM public.all_orders() WITH NO DATA");
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
            let n =
                tx.execute(&format!("INSERT INTO {table} (room, during) VALUES (1, $1::text::tstzrange)"), &[&during])?;
            tx.commit()?;
            Ok(n)
        };
        for table in ["bookings", "rentals"] {
            book(&mut app, "globex", table, "[2030-01-01 10:00+00, 2030-01-01 11:00+00)").unwrap();
            let overlapping = book(&mut app, "acme", table, "[2030-01-01 10:30+00, 2030-01-01 11:30+00)");
            let rows = |su: &mut Client, tenant: &str| -> i64 {
                su.query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&tenant])
                    .unwrap()
                    .get(0)
            };
            assert_eq!(rows(&mut su, &b), 1, "ground truth: B's booking in {table} exists");
            assert!(
                overlapping.is_ok(),
                "{table}: A's booking must not conflict with B's (an oracle): {overlapping:?}"
            );
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
        let also = owner.batch_execute(
            "CREATE RULE copy_out AS ON INSERT TO orders DO ALSO INSERT INTO order_sink VALUES (NEW.item)",
        );
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

    /// `public.evil_v()`, the owner's VOLATILE function that drops the isolation policy of
    /// `table` and swallows any error (armed), or does nothing (disarmed).
    fn evil_v(table: &str, armed: bool) -> String {
        let body = if armed {
            format!(
                "EXECUTE 'DROP POLICY IF EXISTS multitenancy_isolation ON {table}';\n EXCEPTION WHEN others THEN NULL;"
            )
        } else {
            "NULL;".to_string()
        };
        format!(
            "CREATE OR REPLACE FUNCTION public.evil_v() RETURNS void LANGUAGE plpgsql VOLATILE AS $f$
             BEGIN
                 {body}
             END $f$;"
        )
    }

    /// [`evil_v`] and `public.evil(bigint)`, the IMMUTABLE wrapper an index expression can call.
    fn evil_functions(table: &str, armed: bool) -> String {
        format!(
            "{}
             CREATE OR REPLACE FUNCTION public.evil(x bigint) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $f$
             BEGIN
                 PERFORM public.evil_v();
                 RETURN x;
             END $f$;",
            evil_v(table, armed)
        )
    }

    /// Second review, finding 1: the owner's unique index on an enabled table calls an IMMUTABLE
    /// function that runs `DROP POLICY multitenancy_isolation` (errors swallowed). When the
    /// guard rebuilds such an index as (tenant_id, evil(id)) — here after any later DDL on the
    /// table, the index having been made global with the guard off — the table is left to the
    /// extension, and before the fix nothing looked at the table afterwards: the DROP went
    /// through, only the permissive policy was left, and tenant A read every tenant's rows. Now
    /// the table is checked again after the rebuild: the DDL is refused (42501, naming the
    /// missing policy) and changes nothing. (A CREATE UNIQUE INDEX by the owner is built with
    /// tenant_id from the start since issue 17, so it opens no rebuild window: its DROP is
    /// refused by the guard at once, see the positive control.)
    ///
    /// Without the fix the COMMENT succeeds: the isolation policy is gone (pg_policy), the
    /// snapshot differs, `assert_isolated` sees B's rows in A's context, and `refused` fails.
    #[test]
    fn an_index_expression_cannot_drop_the_isolation_policy_during_the_guards_rebuild() {
        let o = Orders::new("attack_index_rebuild");
        let mut su = o.db.superuser();
        let mut owner = o.db.owner();
        owner.batch_execute(&evil_functions("public.orders", false)).unwrap();
        o.db.unguarded("CREATE UNIQUE INDEX orders_evil ON orders (public.evil(id))");
        owner.batch_execute(&evil_v("public.orders", true)).unwrap();
        let before = table_snapshot(&mut su, "orders");
        let created = owner.batch_execute("COMMENT ON TABLE orders IS 'orders of every tenant'");

        assert!(has_isolation_policy(&mut su, "orders"), "orders must keep its policy multitenancy_isolation");
        assert_eq!(table_snapshot(&mut su, "orders"), before, "the refused DDL changed nothing on orders");
        assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", o.a.as_str()), ("globex", o.b.as_str())]);
        let error = refused("COMMENT ON TABLE orders (the guard rebuilds orders_evil)", created, PRIVILEGE);
        assert!(
            error.message().contains("public.orders") && error.message().contains("multitenancy_isolation"),
            "the refusal names the table and the policy its index expression dropped: {:?}",
            error.message()
        );

        // Positive control: the same index over a harmless function is accepted, and built per
        // tenant as (tenant_id, evil(id)) — the refusal was the dropped policy, not the index.
        owner.batch_execute(&evil_v("public.orders", false)).unwrap();
        o.db.unguarded("DROP INDEX orders_evil");
        owner
            .batch_execute("CREATE UNIQUE INDEX orders_evil ON orders (public.evil(id))")
            .expect("an expression index whose function drops nothing is accepted");
        let definition: String = su.query_one("SELECT pg_get_indexdef('orders_evil'::regclass)", &[]).unwrap().get(0);
        assert!(definition.contains("(tenant_id, "), "the guard rebuilt the unique index per tenant: {definition}");
        assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", o.a.as_str()), ("globex", o.b.as_str())]);
    }

    /// Finding 1 through `tenant_enable`'s repair of an enabled table: a unique index over
    /// `evil(id)` made with the guard off (by a DBA, or before the guard) is rebuilt with
    /// tenant_id by the owner's `tenant_enable`, which runs the function with the table left to
    /// the extension. Refused (42501) now; nothing changes.
    ///
    /// Without the fix `tenant_enable` returns normally (the already-enabled path hardens and
    /// repairs nothing afterwards): the isolation policy is gone and A reads B's rows.
    #[test]
    fn tenant_enable_cannot_be_made_to_drop_the_isolation_policy_by_an_index_expression() {
        let o = Orders::new("attack_index_enable_repair");
        // Disarmed while the guard is off, so that building the index drops nothing yet.
        o.db.unguarded(&format!(
            "SET LOCAL ROLE {OWNER};
             {}
             CREATE UNIQUE INDEX orders_evil ON orders (public.evil(id));",
            evil_functions("public.orders", false)
        ));
        let mut owner = o.db.owner();
        owner.batch_execute(&evil_v("public.orders", true)).unwrap();
        let mut su = o.db.superuser();
        assert!(has_isolation_policy(&mut su, "orders"), "precondition: orders has its isolation policy");
        let before = table_snapshot(&mut su, "orders");

        let repaired = owner.execute("SELECT multitenancy.tenant_enable('orders')", &[]);

        assert!(has_isolation_policy(&mut su, "orders"), "orders must keep its policy multitenancy_isolation");
        assert_eq!(table_snapshot(&mut su, "orders"), before, "the refused tenant_enable changed nothing on orders");
        assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", o.a.as_str()), ("globex", o.b.as_str())]);
        let error = refused("tenant_enable('orders') rebuilding an index over evil(id)", repaired, PRIVILEGE);
        assert!(
            error.message().contains("multitenancy_isolation"),
            "the refusal names the dropped policy: {:?}",
            error.message()
        );

        // Positive control: disarmed, the same repair goes through and hardens the index.
        owner.batch_execute(&evil_v("public.orders", false)).unwrap();
        owner.execute("SELECT multitenancy.tenant_enable('orders')", &[]).expect("the repair with a harmless function");
        let definition: String = su.query_one("SELECT pg_get_indexdef('orders_evil'::regclass)", &[]).unwrap().get(0);
        assert!(definition.contains("(tenant_id, "), "tenant_enable rebuilt the unique index per tenant: {definition}");
        assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", o.a.as_str()), ("globex", o.b.as_str())]);
    }

    /// Finding 1 through the first `tenant_enable` of a legacy table: the index over `evil(id)`
    /// is on an inheritance child, and `evil` drops the parent's isolation policy. Enabling the
    /// parent enables the child, whose hardening rebuilds the index while the parent is still
    /// left to the extension. (An index on the table itself is harmless here: tenant_enable
    /// repairs what its hardening dropped. The child's is not, because nothing of the parent is
    /// built after its children.) Refused now (42501); neither table is enabled.
    ///
    /// Without the fix `tenant_enable` succeeds and `legacy_orders` is enabled without
    /// `multitenancy_isolation` (the first assertion), only the permissive policy filters it, and
    /// A reads B's rows through it.
    #[test]
    fn enabling_a_legacy_table_cannot_be_made_to_drop_its_isolation_policy_by_a_childs_index() {
        let db = TestDb::new("attack_index_enable_child");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        db.legacy(&format!(
            "CREATE TABLE legacy_orders (id bigint NOT NULL, item text NOT NULL, tenant_id uuid);
             CREATE TABLE legacy_orders_archive () INHERITS (legacy_orders);
             INSERT INTO legacy_orders VALUES (1, 'acme-1', '{a}'), (2, 'globex-1', '{b}');
             INSERT INTO legacy_orders_archive VALUES (3, 'acme-old', '{a}'), (4, 'globex-old', '{b}');
             {}
             CREATE UNIQUE INDEX legacy_orders_archive_evil ON legacy_orders_archive (public.evil(id));
             GRANT SELECT ON legacy_orders, legacy_orders_archive TO {APP};",
            evil_functions("public.legacy_orders", true)
        ));
        let mut su = db.superuser();
        assert_eq!(count(&mut su, "SELECT count(*) FROM legacy_orders_archive"), 2, "ground truth: the child has rows");
        let mut owner = db.owner();

        let enable = owner.execute("SELECT multitenancy.tenant_enable('legacy_orders')", &[]);

        let enabled = is_enabled(&mut su, "legacy_orders");
        assert!(
            !enabled || has_isolation_policy(&mut su, "legacy_orders"),
            "legacy_orders was enabled without its policy multitenancy_isolation"
        );
        let error = refused("tenant_enable('legacy_orders') whose child's index drops its policy", enable, PRIVILEGE);
        assert!(
            error.message().contains("\"public.legacy_orders\"") && error.message().contains("multitenancy_isolation"),
            "the refusal names legacy_orders and the dropped policy: {:?}",
            error.message()
        );
        assert!(!enabled && !is_enabled(&mut su, "legacy_orders_archive"), "neither table is enabled");

        // Positive control: disarmed, the same tree is enabled and isolated.
        owner.batch_execute(&evil_v("public.legacy_orders", false)).unwrap();
        owner
            .execute("SELECT multitenancy.tenant_enable('legacy_orders')", &[])
            .expect("enabling with a harmless function");
        assert!(is_enabled(&mut su, "legacy_orders_archive"), "the child is enabled with its parent");
        assert_isolated(db.server(), &db.name, "legacy_orders", &[("acme", a.as_str()), ("globex", b.as_str())]);
    }

    /// Second review, finding 2: `tenant_purge` ran its DELETEs in write admin mode, so the
    /// owner's AFTER DELETE statement trigger on orders — run by an operator's purge of globex —
    /// saw every tenant's rows and registry rows, `_admin_mode()` was true, and `member_add` on
    /// acme worked (operator rights). Now the purged tenant is the context of the DELETE and the
    /// trigger sees that tenant only: no other tenant's rows or domains, no admin mode, and
    /// `member_add` on acme fails (42501). The purge itself succeeds.
    ///
    /// Without the fix the log holds acme's items and domain, `admin_mode` is logged as true,
    /// `member_add` is logged as succeeded, and acme has the intruder as an owner.
    #[test]
    fn an_owner_trigger_sees_only_the_purged_tenant_during_a_purge() {
        const INTRUDER: &str = "c0000000-0000-4000-8000-00000000c0de";
        let o = Orders::new("attack_purge_context");
        staff_roles(&o.db);
        let mut su = o.db.superuser();
        su.batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION multitenancy.tenant_delete(text), multitenancy.tenant_purge(text, text) TO {OPERATOR};
             SELECT multitenancy.domain_add('acme', 'shop.acme.test');
             SELECT multitenancy.domain_add('globex', 'shop.globex.test');"
        ))
        .unwrap();
        o.db.owner()
            .batch_execute(&format!(
                "CREATE TABLE purge_log (what text NOT NULL, value text);
                 SELECT multitenancy.tenant_exempt('purge_log', 'evidence of the attack');
                 CREATE FUNCTION public.purge_hook() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                     INSERT INTO public.purge_log SELECT 'item', item FROM public.orders;
                     INSERT INTO public.purge_log SELECT 'domain', domain FROM multitenancy.domains;
                     INSERT INTO public.purge_log VALUES ('admin_mode', multitenancy._admin_mode()::text);
                     BEGIN
                         PERFORM multitenancy.member_add('acme', '{INTRUDER}', 'owner');
                         INSERT INTO public.purge_log VALUES ('member_add', 'succeeded');
                     EXCEPTION WHEN others THEN
                         INSERT INTO public.purge_log VALUES ('member_add', 'failed: ' || SQLSTATE || ' ' || SQLERRM);
                     END;
                     RETURN NULL;
                 END $f$;
                 CREATE TRIGGER purge_hook AFTER DELETE ON orders FOR EACH STATEMENT EXECUTE FUNCTION public.purge_hook();"
            ))
            .unwrap();

        let mut operator = o.db.connect(OPERATOR);
        operator.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
        let purge = operator.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')::text", &[]);

        // Ground truth: what the trigger must not have seen exists.
        assert_eq!(o.true_count(&o.a), o.rows_a, "ground truth: acme's rows exist");
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.acme.test'"),
            1,
            "ground truth: acme's domain exists"
        );
        let logged = |su: &mut Client, what: &str| -> Vec<String> {
            su.query("SELECT coalesce(value, '') FROM purge_log WHERE what = $1 ORDER BY 1", &[&what])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let items = logged(&mut su, "item");
        let domains = logged(&mut su, "domain");
        let admin_mode = logged(&mut su, "admin_mode");
        let member_add = logged(&mut su, "member_add");
        assert!(!admin_mode.is_empty(), "precondition: the owner's trigger ran during the purge");
        assert!(
            items.iter().all(|i| i.starts_with("globex-")),
            "the owner's trigger saw other tenants' rows: {items:?}"
        );
        assert!(
            domains.iter().all(|d| d == "shop.globex.test"),
            "the owner's trigger saw other tenants' domains: {domains:?}"
        );
        assert!(admin_mode.iter().all(|m| m == "false"), "the owner's trigger ran in admin mode: {admin_mode:?}");
        assert!(
            !member_add.is_empty() && member_add.iter().all(|m| m.starts_with("failed: 42501")),
            "member_add('acme', ...) from the owner's trigger must fail with 42501: {member_add:?}"
        );
        let intruders =
            count(&mut su, &format!("SELECT count(*) FROM multitenancy.members WHERE user_id = '{INTRUDER}'"));
        assert_eq!(intruders, 0, "the owner's trigger made {INTRUDER} a member");
        purge.unwrap_or_else(|e| panic!("the operator's purge of globex must succeed: {e:?}"));
        assert_eq!(o.true_count(&o.b), 0, "the purge removed globex's rows");
        assert_eq!(
            count(&mut su, "SELECT count(*) FROM multitenancy.tenants WHERE slug = 'globex'"),
            0,
            "globex is gone from the registry"
        );
    }

    /// Second review, finding 3: the materialized-view check failed with an internal error on
    /// every view that calls no function of a procedural language (its query found no row), and
    /// it missed the functions behind operators and aggregates. Now `SELECT 1` and a view of an
    /// exempt table (built-in operators only) are created and refreshed, and views whose
    /// aggregate's state function or whose operator's function is SQL reading orders are refused
    /// (42501, naming the function).
    ///
    /// Without the fix every CREATE MATERIALIZED VIEW here fails with XX000 (the positive ones
    /// panic; the refused ones are not 42501); with only the no-row fix, the aggregate and the
    /// operator views are created, a REFRESH in globex's context stores B's row count and A
    /// reads it (`leaked`), and they exist.
    #[test]
    fn materialized_views_without_user_code_work_and_code_behind_operators_and_aggregates_is_refused() {
        let o = Orders::new("attack_matview_operators");
        let mut owner = o.db.owner();
        create_exempt_countries(&mut owner);
        for (view, query) in
            [("mv_constant", "SELECT 1 AS one"), ("mv_countries", "SELECT code, name FROM countries WHERE code = 'de'")]
        {
            owner
                .batch_execute(&format!("CREATE MATERIALIZED VIEW {view} AS {query}"))
                .unwrap_or_else(|e| panic!("CREATE MATERIALIZED VIEW {view} AS {query}: {e:?}"));
            owner
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
                .unwrap_or_else(|e| panic!("REFRESH MATERIALIZED VIEW {view}: {e:?}"));
            assert_eq!(count(&mut owner, &format!("SELECT count(*) FROM {view}")), 1, "{view} holds its row");
        }

        owner
            .batch_execute(
                "CREATE FUNCTION public.peek_state(acc bigint, x int) RETURNS bigint LANGUAGE sql STABLE
                     AS 'SELECT acc + (SELECT count(*) FROM public.orders)';
                 CREATE AGGREGATE public.peek(int) (SFUNC = public.peek_state, STYPE = bigint, INITCOND = '0');
                 CREATE FUNCTION public.peek_op(int, int) RETURNS bigint LANGUAGE sql STABLE
                     AS 'SELECT count(*) FROM public.orders';
                 CREATE OPERATOR public.### (FUNCTION = public.peek_op, LEFTARG = int, RIGHTARG = int);",
            )
            .unwrap();
        let attempts = [
            ("mv_aggregate", "SELECT public.peek(1) AS seen", "peek_state"),
            ("mv_operator", "SELECT 1 OPERATOR(public.###) 2 AS seen", "peek_op"),
        ];
        let mut app = o.db.app();
        let mut su = o.db.superuser();
        let mut results = Vec::new();
        let mut leaked = Vec::new();
        for (view, query, _) in attempts {
            let created = owner.batch_execute(&format!("CREATE MATERIALIZED VIEW {view} AS {query} WITH NO DATA"));
            if created.is_ok() {
                owner.batch_execute(&format!("GRANT SELECT ON {view} TO {APP}")).unwrap();
                let mut tx = begin_as(&mut owner, "globex");
                tx.batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}")).unwrap();
                tx.commit().unwrap();
                let mut tx = begin_as(&mut app, "acme");
                let seen: i64 = tx.query_one(&format!("SELECT seen FROM {view}"), &[]).unwrap().get(0);
                leaked.push((view, seen));
            }
            results.push(created);
        }
        assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: B's rows exist");
        assert_eq!(leaked, vec![], "tenant A read what a refresh in B's context stored (B's row count)");
        for ((view, query, function), created) in attempts.into_iter().zip(results) {
            assert!(!relation_exists(&mut su, view), "{view} must not exist");
            let error = refused(&format!("CREATE MATERIALIZED VIEW {view} AS {query}"), created, PRIVILEGE);
            assert!(
                error.message().contains(function),
                "the refusal of {view} names {function}: {:?}",
                error.message()
            );
        }
    }

    /// Third review, finding 1 (critical): during `tenant_purge` the owner's AFTER DELETE row
    /// trigger on its enabled table runs `set_config('search_path', 'public, pg_catalog', false)`,
    /// and the owner has created `public.=` for uuids (and `public.lower(text)`), whose function
    /// makes the owner a superuser when it runs as one. The setting outlived the owner's code, so
    /// the rest of the purge — run as the registry's owner, a superuser — compared tenant ids
    /// with the owner's operator, and the operator's (or DBA's) session kept the owner's
    /// search_path afterwards. Now every setting the owner's code changes is discarded: the
    /// owner stays a plain role, and the search_path of the operator (not a superuser) and of a
    /// superuser DBA who runs an unqualified `lower()` afterwards is what it was.
    ///
    /// The owner is a role of this test's own: a failure must leave no superuser behind that
    /// other tests use, and any escalation is undone before asserting.
    ///
    /// Without the fix the operator's purge makes the owner a superuser (the first assertion),
    /// and both sessions are left with `search_path = public, pg_catalog`.
    #[test]
    fn an_owner_trigger_cannot_steer_the_search_path_of_a_purge_to_its_operator() {
        let db = TestDb::new("attack_purge_search_path");
        staff_roles(&db);
        let owner_role = format!("{}_owner", db.name);
        let mut su = db.superuser();
        su.batch_execute(&format!(
            "CREATE ROLE {owner_role} LOGIN NOSUPERUSER NOBYPASSRLS;
             GRANT CREATE, USAGE ON SCHEMA public TO {owner_role};
             GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid),
                                       multitenancy.tenant_exempt(regclass, text) TO {owner_role};
             GRANT EXECUTE ON FUNCTION multitenancy.tenant_delete(text),
                                       multitenancy.tenant_purge(text, text) TO {OPERATOR};"
        ))
        .unwrap();
        let tenants = [
            ("acme", db.tenant("Acme", "acme")),
            ("globex", db.tenant("Globex", "globex")),
            ("initech", db.tenant("Initech", "initech")),
        ];
        let mut owner = db.connect(&owner_role);
        owner
            .batch_execute(&format!(
                "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL);
                 SELECT multitenancy.tenant_enable('orders');
                 GRANT SELECT, INSERT ON orders TO {APP};"
            ))
            .unwrap();
        let mut app = db.app();
        for (slug, _) in &tenants {
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO orders (item) VALUES ($1 || '-1'), ($1 || '-2')", &[slug]).unwrap();
            tx.commit().unwrap();
        }
        let escalate = format!(
            "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                 EXECUTE 'ALTER ROLE {owner_role} SUPERUSER';
             END IF;"
        );
        owner
            .batch_execute(&format!(
                "CREATE TABLE steer_log (search_path text);
                 SELECT multitenancy.tenant_exempt('steer_log', 'evidence of the attack');
                 CREATE FUNCTION public.uuid_eq_trojan(a uuid, b uuid) RETURNS boolean LANGUAGE plpgsql AS $f$
                 BEGIN
                     {escalate}
                     RETURN pg_catalog.uuid_eq(a, b);
                 END $f$;
                 CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.uuid_eq_trojan);
                 CREATE FUNCTION public.lower(t text) RETURNS text LANGUAGE plpgsql AS $f$
                 BEGIN
                     {escalate}
                     RETURN pg_catalog.lower(t);
                 END $f$;
                 CREATE FUNCTION public.steer() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                     PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog', false);
                     INSERT INTO public.steer_log VALUES (pg_catalog.current_setting('search_path'));
                     RETURN NULL;
                 END $f$;
                 CREATE TRIGGER steer AFTER DELETE ON orders FOR EACH ROW EXECUTE FUNCTION public.steer();"
            ))
            .unwrap();
        // Whether the owner became a superuser; undone at once (roles are cluster-wide).
        let escalated = |su: &mut Client| -> bool {
            let superuser: bool =
                su.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&owner_role]).unwrap().get(0);
            if superuser {
                su.batch_execute(&format!("ALTER ROLE {owner_role} NOSUPERUSER")).unwrap();
            }
            superuser
        };

        // The operator purges globex.
        let mut operator = db.connect(OPERATOR);
        let operator_path = show(&mut operator, "search_path");
        operator.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
        let operator_purge = operator.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]);
        let operator_path_after = show(&mut operator, "search_path");
        let by_operator = escalated(&mut su);

        // A superuser DBA purges initech, then calls lower() unqualified.
        let mut dba = db.superuser();
        let dba_path = show(&mut dba, "search_path");
        dba.execute("SELECT multitenancy.tenant_delete('initech')", &[]).unwrap();
        let dba_purge = dba.query_one("SELECT multitenancy.tenant_purge('initech', 'initech')", &[]);
        let dba_path_after = show(&mut dba, "search_path");
        let by_dba_purge = escalated(&mut su);
        let lowered: String = dba.query_one("SELECT lower('ACME')", &[]).unwrap().get(0);
        let by_lower = escalated(&mut su);

        assert_eq!(
            (by_operator, by_dba_purge, by_lower),
            (false, false, false),
            "the owner's code made {owner_role} a superuser (operator's purge, DBA's purge, DBA's lower())"
        );
        let purged: Vec<i64> = [operator_purge, dba_purge]
            .into_iter()
            .map(|p| p.unwrap_or_else(|e| panic!("the purge must succeed: {e:?}")).get(0))
            .collect();
        assert_eq!(purged, vec![2, 2], "each purge deleted the tenant's two orders");
        let left = |su: &mut Client, id: &str| -> i64 {
            su.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&id]).unwrap().get(0)
        };
        let truth: Vec<i64> = tenants.iter().map(|(_, id)| left(&mut su, id)).collect();
        assert_eq!(truth, vec![2, 0, 0], "ground truth: acme's orders are left, globex's and initech's are purged");
        let steered: Vec<String> =
            su.query("SELECT DISTINCT search_path FROM steer_log", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(
            steered,
            vec!["public, pg_catalog"],
            "precondition: the owner's trigger ran and set its search_path"
        );
        assert_eq!(operator_path_after, operator_path, "the operator's search_path must not change during the purge");
        assert_eq!(dba_path_after, dba_path, "the DBA's search_path must not change during the purge");
        assert_eq!(lowered, "acme");
    }

    /// Third review, finding 3: an exclusion constraint that takes tenant_id with another
    /// operator than `=` — `EXCLUDE USING gist (tenant_id WITH <>, email WITH =)` — was accepted
    /// on an enabled table because tenant_id was in it; but it makes rows of *different* tenants
    /// conflict, so tenant A's insert of an email fails (23P01) exactly when tenant B has it. Now
    /// it is refused (55000, naming the constraint) when added to an enabled table, when a new
    /// table with a tenant_id uuid column is enabled on creation, and by tenant_enable of a
    /// legacy table; A's insert of B's email does not fail with 23P01.
    ///
    /// Without the fix all three are accepted, and A's insert of B's email fails with 23P01 (the
    /// oracle assertion).
    #[test]
    fn an_exclusion_constraint_cannot_make_rows_of_different_tenants_conflict() {
        let db = TestDb::new("attack_exclusion_operator");
        let _a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        let mut su = db.superuser();
        su.batch_execute("CREATE EXTENSION btree_gist").unwrap();
        db.legacy(
            "CREATE TABLE legacy_signups (
                 id int, email text NOT NULL, tenant_id uuid,
                 CONSTRAINT legacy_signups_oracle EXCLUDE USING gist (tenant_id WITH <>, email WITH =));",
        );
        let mut owner = db.owner();
        owner
            .batch_execute(
                "CREATE TABLE signups (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);
                 SELECT multitenancy.tenant_enable('signups');",
            )
            .unwrap();
        let attempts = [
            (
                "signups",
                "ALTER TABLE signups
                     ADD CONSTRAINT signups_oracle EXCLUDE USING gist (tenant_id WITH <>, email WITH =)",
            ),
            (
                "new_signups",
                "CREATE TABLE new_signups (
                     id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL, tenant_id uuid,
                     CONSTRAINT new_signups_oracle EXCLUDE USING gist (tenant_id WITH <>, email WITH =))",
            ),
            ("legacy_signups", "SELECT multitenancy.tenant_enable('legacy_signups')"),
        ];
        let mut app = db.app();
        let insert = |app: &mut Client, tenant: &str, table: &str, email: &str| -> Result<u64, postgres::Error> {
            let mut tx = begin_as(app, tenant);
            let n = tx.execute(&format!("INSERT INTO {table} (email) VALUES ($1)"), &[&email])?;
            tx.commit()?;
            Ok(n)
        };
        let mut results = Vec::new();
        let mut oracles = Vec::new();
        for (table, statement) in attempts {
            let result = owner.batch_execute(statement);
            if result.is_ok() {
                owner.batch_execute(&format!("GRANT SELECT, INSERT ON {table} TO {APP}")).unwrap();
                insert(&mut app, "globex", table, "ceo@globex.test").unwrap();
                oracles.push((table, insert(&mut app, "acme", table, "ceo@globex.test")));
            }
            results.push((table, statement, result));
        }

        for (table, _) in &oracles {
            let rows: i64 = su
                .query_one(&format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid"), &[&b])
                .unwrap()
                .get(0);
            assert_eq!(rows, 1, "ground truth: B's row with the email exists in {table}");
        }
        let conflicts: Vec<&str> = oracles
            .iter()
            .filter(|(_, r)| r.as_ref().err().and_then(|e| e.code()) == Some(&SqlState::EXCLUSION_VIOLATION))
            .map(|(table, _)| *table)
            .collect();
        assert_eq!(conflicts, Vec::<&str>::new(), "tenant A's insert of B's email conflicted with B's row (an oracle)");
        let constraints = count(
            &mut su,
            "SELECT count(*) FROM pg_constraint
              WHERE conname LIKE '%\\_oracle' AND conrelid IN (SELECT relid FROM multitenancy.enabled_tables)",
        );
        assert_eq!(constraints, 0, "no enabled table has an exclusion constraint with tenant_id WITH <>");
        assert!(!relation_exists(&mut su, "new_signups"), "new_signups was not created");
        assert!(!is_enabled(&mut su, "legacy_signups"), "legacy_signups was not enabled");
        for (table, statement, result) in results {
            let error = refused(statement, result, &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
            assert!(
                error.message().contains(&format!("{table}_oracle")),
                "the refusal names the constraint: {:?}",
                error.message()
            );
        }

        // Positive control: the per-tenant constraint is accepted; A's insert of B's email works,
        // and a second one of A's own conflicts.
        owner
            .batch_execute("ALTER TABLE signups ADD CONSTRAINT signups_email EXCLUDE USING gist (email WITH =)")
            .unwrap();
        owner.batch_execute(&format!("GRANT SELECT, INSERT ON signups TO {APP}")).unwrap();
        insert(&mut app, "globex", "signups", "ceo@globex.test").unwrap();
        insert(&mut app, "acme", "signups", "ceo@globex.test").expect("A's insert of the email B has");
        refused(
            "A's second insert of the same email",
            insert(&mut app, "acme", "signups", "ceo@globex.test"),
            &SqlState::EXCLUSION_VIOLATION,
        );
    }

    /// Row level security flags of `table` (ground truth): `(relrowsecurity, relforcerowsecurity)`.
    fn rls_flags(su: &mut Client, table: &str) -> (bool, bool) {
        let row = su
            .query_one(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::text::regclass",
                &[&table],
            )
            .unwrap_or_else(|e| panic!("pg_class of {table}: {e}"));
        (row.get(0), row.get(1))
    }

    /// `parent` and `child`, enabled, owned by [`OWNER`], readable and writable by [`APP`], with
    /// one parent and one child of it per tenant (written by the application); the parent ids of
    /// acme and globex.
    fn parent_and_child(db: &TestDb) -> (i64, i64) {
        db.owner()
            .batch_execute(&format!(
                "CREATE TABLE parent (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
                 SELECT multitenancy.tenant_enable('parent');
                 CREATE TABLE child (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, parent_id bigint NOT NULL,
                                     note text NOT NULL);
                 SELECT multitenancy.tenant_enable('child');
                 GRANT SELECT, INSERT ON parent, child TO {APP};"
            ))
            .unwrap();
        let mut app = db.app();
        let mut parent_of = |slug: &str| -> i64 {
            let mut tx = begin_as(&mut app, slug);
            let id: i64 = tx
                .query_one("INSERT INTO parent (name) VALUES ($1) RETURNING id", &[&format!("{slug}-parent")])
                .unwrap()
                .get(0);
            tx.execute("INSERT INTO child (parent_id, note) VALUES ($1, $2)", &[&id, &format!("{slug}-child")])
                .unwrap();
            tx.commit().unwrap();
            id
        };
        (parent_of("acme"), parent_of("globex"))
    }

    /// Reading `table` as [`APP`] without a tenant context fails closed (28000).
    #[track_caller]
    fn assert_app_needs_context(db: &TestDb, table: &str) {
        let error = refused(
            &format!("SELECT from {table} as {APP} without a tenant context"),
            db.app().query(&format!("SELECT count(*) FROM {table}"), &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("no tenant context"), "{table}: {:?}", error.message());
    }

    /// Third review, finding 2 (high): with another library's ProcessUtility hook loaded before
    /// ours (`shared_preload_libraries = pg_stat_statements,multitenancy`), an ERROR raised while
    /// a foreign-key statement between enabled tables ran — inside pg_stat_statements' hook —
    /// jumped past the extension's cleanup, and `parent` and `child` stayed "busy" (the
    /// extension's own DDL) for the rest of the transaction: the guard then let the owner
    /// `DISABLE ROW LEVEL SECURITY` on them after catching the error (an EXCEPTION block, or
    /// ROLLBACK TO SAVEPOINT). A child row of globex pointing at acme's parent makes the key fail
    /// validation (23503) while the statement runs. Now every DISABLE is refused (42501), both
    /// tables keep row level security enabled and forced, and the application still needs a
    /// context and sees its own tenant's rows only.
    ///
    /// The first DO block is the report's: its mixed statement is now refused up front (22023)
    /// before anything is lifted. The second catches only `foreign_key_violation`, so it passes
    /// its DISABLE only after a validation-only statement lifted FORCE and failed inside
    /// pg_stat_statements' hook — the path of the finding, on the fixed build too; so does the
    /// ADD FOREIGN KEY before ROLLBACK TO SAVEPOINT (asserted 23503). Without the fix all three
    /// DISABLEs succeed (the first assertion).
    #[test]
    fn an_error_inside_another_librarys_hook_leaves_no_table_open_to_disable_row_level_security() {
        let server = Server::private("-c shared_preload_libraries=pg_stat_statements,multitenancy");
        let db = TestDb::on(server, "attack_busy_after_error", "");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        let mut su = db.superuser();
        assert_eq!(
            show(&mut su, "shared_preload_libraries"),
            "pg_stat_statements,multitenancy",
            "precondition: pg_stat_statements' ProcessUtility hook is called by ours"
        );
        let (parent_a, _) = parent_and_child(&db);
        su.execute(
            "INSERT INTO child (tenant_id, parent_id, note) VALUES ($1::text::uuid, $2, 'globex-child-of-acme')",
            &[&b, &parent_a],
        )
        .unwrap();
        let mut owner = db.owner();
        owner
            .batch_execute(
                "ALTER TABLE child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES parent (id) NOT VALID",
            )
            .unwrap();
        for table in ["parent", "child"] {
            assert_eq!(rls_flags(&mut su, table), (true, true), "precondition: {table} has row level security, forced");
        }
        // Put back what an attack changed (as a DBA would), so that each one is judged alone.
        let restore = || {
            db.unguarded(
                "ALTER TABLE public.parent ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
                 ALTER TABLE public.child ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;",
            )
        };

        let mut attempts = Vec::new();
        for (table, block) in [
            (
                "public.child",
                "DO $$ BEGIN
                     BEGIN
                         ALTER TABLE public.child VALIDATE CONSTRAINT child_parent_fk, ADD CONSTRAINT c CHECK (1/0 = 1);
                     EXCEPTION WHEN others THEN NULL;
                     END;
                     ALTER TABLE public.child DISABLE ROW LEVEL SECURITY;
                 END $$",
            ),
            (
                "public.parent",
                "DO $$ BEGIN
                     BEGIN
                         ALTER TABLE public.child VALIDATE CONSTRAINT child_parent_fk;
                     EXCEPTION WHEN foreign_key_violation THEN NULL;
                     END;
                     ALTER TABLE public.parent DISABLE ROW LEVEL SECURITY;
                 END $$",
            ),
        ] {
            let result = owner.batch_execute(block);
            attempts.push((block, table, result, (rls_flags(&mut su, "parent"), rls_flags(&mut su, "child"))));
            restore();
        }
        // The same with ROLLBACK TO SAVEPOINT after a foreign key added over the cross-tenant row.
        let mut tx = owner.transaction().unwrap();
        tx.batch_execute("SAVEPOINT attack").unwrap();
        let add = tx.batch_execute(
            "ALTER TABLE public.child ADD CONSTRAINT child_parent_fk2 FOREIGN KEY (parent_id) REFERENCES public.parent (id)",
        );
        tx.batch_execute("ROLLBACK TO SAVEPOINT attack").unwrap();
        let disable = tx.batch_execute("ALTER TABLE public.child DISABLE ROW LEVEL SECURITY");
        if disable.is_ok() {
            tx.commit().unwrap();
        } else {
            drop(tx);
        }
        attempts.push((
            "SAVEPOINT; failing ADD FOREIGN KEY; ROLLBACK TO SAVEPOINT; DISABLE",
            "public.child",
            disable,
            (rls_flags(&mut su, "parent"), rls_flags(&mut su, "child")),
        ));
        restore();

        for (what, _, _, flags) in &attempts {
            assert_eq!(
                *flags,
                ((true, true), (true, true)),
                "after {what}: parent and child must keep row level security enabled and forced"
            );
        }
        for table in ["parent", "child"] {
            assert_eq!(rls_flags(&mut su, table), (true, true), "{table} has row level security, forced");
            assert_app_needs_context(&db, table);
        }
        let b_rows = count(&mut su, &format!("SELECT count(*) FROM child WHERE tenant_id = '{b}'"));
        assert_eq!(b_rows, 2, "ground truth: globex's rows in child exist");
        let tenants = [("acme", a.as_str()), ("globex", b.as_str())];
        assert_isolated(db.server(), &db.name, "child", &tenants);
        assert_isolated(db.server(), &db.name, "parent", &tenants);
        refused("ADD FOREIGN KEY over globex's child of acme's parent", add, &SqlState::FOREIGN_KEY_VIOLATION);
        for (_, table, result, _) in attempts {
            expect_refused(result, table);
        }
    }

    /// Third review, finding 4: FORCE was lifted for a whole ALTER TABLE as soon as it added or
    /// validated a foreign key between enabled tables (or validated any constraint of an enabled
    /// table), so a volatile default, or a CHECK, in the same statement ran the owner's function
    /// with every tenant's rows in view: `steal()` updated every tenant's parent rows and
    /// `leak()`/`peek()` copied every tenant's child rows into a log table. Now a foreign key
    /// mixed with other subcommands is refused (22023), and a statement without a foreign key is
    /// not lifted: the owner's function meets FORCE without a context (28000). No parent row
    /// changes, the log stays empty, no column or key is added, the CHECK stays unvalidated.
    ///
    /// Without the fix every statement succeeds: the first assertion (the parent rows are
    /// renamed) fails.
    #[test]
    fn force_is_lifted_only_for_statements_that_only_add_or_validate_foreign_keys() {
        let db = TestDb::new("attack_lift_mixed");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        parent_and_child(&db);
        let mut owner = db.owner();
        owner
            .batch_execute(
                "CREATE TABLE steal_log (tenant text, value text);
                 SELECT multitenancy.tenant_exempt('steal_log', 'evidence of the attack');
                 CREATE FUNCTION public.steal() RETURNS text LANGUAGE sql VOLATILE AS $f$
                     UPDATE public.parent SET name = name || ' (stolen)';
                     INSERT INTO public.steal_log SELECT tenant_id::text, note FROM public.child;
                     SELECT 'junk'::text
                 $f$;
                 CREATE FUNCTION public.leak() RETURNS text LANGUAGE sql VOLATILE AS $f$
                     INSERT INTO public.steal_log SELECT tenant_id::text, note FROM public.child;
                     SELECT 'x'::text
                 $f$;
                 CREATE FUNCTION public.peek(bigint) RETURNS boolean LANGUAGE sql VOLATILE AS $f$
                     INSERT INTO public.steal_log SELECT tenant_id::text, note FROM public.child;
                     SELECT true
                 $f$;
                 ALTER TABLE child ADD CONSTRAINT child_note_check CHECK (note <> '') NOT VALID;
                 ALTER TABLE child ADD CONSTRAINT child_peek_check CHECK (public.peek(id)) NOT VALID;",
            )
            .unwrap();
        let mut su = db.superuser();
        let parents = |su: &mut Client| -> Vec<(String, String)> {
            su.query("SELECT tenant_id::text, name FROM parent ORDER BY name", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        };
        let before = parents(&mut su);
        assert_eq!(
            before,
            [(a.clone(), "acme-parent".to_string()), (b.clone(), "globex-parent".to_string())],
            "ground truth: each tenant has its parent row"
        );

        let attempts = [
            (
                "ALTER TABLE child ADD CONSTRAINT child_parent_fk2 FOREIGN KEY (parent_id) REFERENCES parent,
                                  ADD COLUMN junk text DEFAULT public.steal()",
                &[&SqlState::INVALID_PARAMETER_VALUE][..],
            ),
            (
                "ALTER TABLE child VALIDATE CONSTRAINT child_note_check, ADD COLUMN x text DEFAULT public.leak()",
                &[&SqlState::INVALID_PARAMETER_VALUE, &SqlState::INVALID_AUTHORIZATION_SPECIFICATION][..],
            ),
            (
                "ALTER TABLE child VALIDATE CONSTRAINT child_peek_check",
                &[&SqlState::INVALID_PARAMETER_VALUE, &SqlState::INVALID_AUTHORIZATION_SPECIFICATION][..],
            ),
        ];
        let results: Vec<_> = attempts.iter().map(|(statement, _)| owner.batch_execute(statement)).collect();

        assert_eq!(parents(&mut su), before, "the owner's steal() updated parent rows (every tenant's)");
        let logged: Vec<(String, String)> = su
            .query("SELECT coalesce(tenant, ''), coalesce(value, '') FROM steal_log ORDER BY 1, 2", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(logged, [], "the owner's functions copied child rows (every tenant's) into steal_log");
        let added = count(
            &mut su,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'child'::regclass AND attname IN ('junk', 'x')",
        );
        assert_eq!(added, 0, "no column was added to child");
        let keys = count(&mut su, "SELECT count(*) FROM pg_constraint WHERE conname = 'child_parent_fk2'");
        assert_eq!(keys, 0, "child_parent_fk2 was not added");
        let validated = count(
            &mut su,
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'child'::regclass AND contype = 'c' AND convalidated",
        );
        assert_eq!(validated, 0, "no CHECK of child was validated");
        for table in ["parent", "child"] {
            assert_eq!(rls_flags(&mut su, table), (true, true), "{table} has row level security, forced");
        }
        let tenants = [("acme", a.as_str()), ("globex", b.as_str())];
        assert_isolated(db.server(), &db.name, "child", &tenants);
        assert_isolated(db.server(), &db.name, "parent", &tenants);
        for ((statement, codes), result) in attempts.iter().zip(results) {
            refused_with_one_of(statement, result, codes);
        }
        // Positive control: the foreign key on its own is added, composite.
        owner
            .batch_execute(
                "ALTER TABLE child ADD CONSTRAINT child_parent_fk2 FOREIGN KEY (parent_id) REFERENCES parent",
            )
            .unwrap();
        let def: String = su
            .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'child_parent_fk2'", &[])
            .unwrap()
            .get(0);
        assert_eq!(def, "FOREIGN KEY (tenant_id, parent_id) REFERENCES parent(tenant_id, id)");
        assert_eq!(parents(&mut su), before, "the foreign key alone ran no code of the owner");
    }

    /// Third review, finding 5: a DBA in write admin mode (`admin_begin('ticket', write => true)`)
    /// creates a tenant — whose copy of a template table fires the owner's AFTER INSERT trigger —
    /// and purges another — whose DELETE fires the owner's AFTER DELETE trigger. The triggers ran
    /// in the DBA's admin mode: `_admin_mode()` was true and they read every tenant's secrets.
    /// Now admin mode is suspended while the extension maintains one tenant's rows: the triggers
    /// see `_admin_mode()` false and no other tenant's secrets. Both calls succeed.
    ///
    /// Without the fix the log holds `admin=true` and acme's and globex's secrets.
    #[test]
    fn an_owner_trigger_does_not_inherit_a_dbas_admin_mode_in_tenant_create_or_purge() {
        let db = TestDb::new("attack_admin_maintenance");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        let mut su = db.superuser();
        su.batch_execute(&format!("GRANT EXECUTE ON FUNCTION multitenancy.tenant_template(regclass) TO {OWNER}"))
            .unwrap();
        let mut owner = db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE secrets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, secret text NOT NULL);
                 SELECT multitenancy.tenant_enable('secrets');
                 GRANT SELECT, INSERT ON secrets TO {APP};"
            ))
            .unwrap();
        let mut tx = owner.transaction().unwrap();
        tx.batch_execute(
            "CREATE TABLE shipping_option (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
             INSERT INTO shipping_option (name) VALUES ('standard'), ('express');
             SELECT multitenancy.tenant_template('shipping_option');",
        )
        .unwrap();
        tx.commit().unwrap();
        let mut app = db.app();
        for slug in ["acme", "globex"] {
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO secrets (secret) VALUES ($1)", &[&format!("{slug}-secret")]).unwrap();
            tx.commit().unwrap();
        }
        owner
            .batch_execute(
                "CREATE TABLE spy_log (event text, admin text, seen text);
                 SELECT multitenancy.tenant_exempt('spy_log', 'evidence of the attack');
                 CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN
                     INSERT INTO public.spy_log
                     SELECT TG_OP, multitenancy._admin_mode()::text,
                            (SELECT string_agg(secret, ',' ORDER BY secret) FROM public.secrets);
                     RETURN NULL;
                 END $f$;
                 CREATE TRIGGER spy AFTER INSERT OR DELETE ON shipping_option
                     FOR EACH STATEMENT EXECUTE FUNCTION public.spy();",
            )
            .unwrap();

        let mut dba = db.superuser();
        let mut tx = dba.transaction().unwrap();
        tx.execute("SELECT multitenancy.admin_begin('ticket', write => true)", &[]).unwrap();
        let created = tx.query_one("SELECT multitenancy.tenant_create('Initech', 'initech')::text", &[]);
        let created = created.and_then(|row| tx.commit().map(|()| row.get::<_, String>(0)));
        dba.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
        let mut tx = dba.transaction().unwrap();
        tx.execute("SELECT multitenancy.admin_begin('ticket', write => true)", &[]).unwrap();
        let purged = tx.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]);
        let purged = purged.and_then(|row| tx.commit().map(|()| row.get::<_, i64>(0)));

        let secret_of = |su: &mut Client, id: &str| -> i64 {
            su.query_one("SELECT count(*) FROM secrets WHERE tenant_id = $1::text::uuid", &[&id]).unwrap().get(0)
        };
        assert_eq!(secret_of(&mut su, &a), 1, "ground truth: acme's secret exists");
        let log: Vec<(String, String, String)> = su
            .query("SELECT event, coalesce(admin, ''), coalesce(seen, '') FROM spy_log ORDER BY event", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let events: Vec<&str> = log.iter().map(|(event, _, _)| event.as_str()).collect();
        assert_eq!(events, ["DELETE", "INSERT"], "precondition: the owner's trigger ran in the purge and the copy");
        for (event, admin, seen) in &log {
            assert_eq!(admin, "false", "the owner's AFTER {event} trigger ran in the DBA's admin mode");
            assert!(
                !seen.contains("acme") && !seen.contains("globex"),
                "the owner's AFTER {event} trigger read other tenants' secrets: {seen:?}"
            );
        }
        let initech = created.unwrap_or_else(|e| panic!("tenant_create in admin mode must succeed: {e:?}"));
        let copied: i64 = su
            .query_one("SELECT count(*) FROM shipping_option WHERE tenant_id = $1::text::uuid", &[&initech])
            .unwrap()
            .get(0);
        assert_eq!(copied, 2, "initech got its copy of the template");
        purged.unwrap_or_else(|e| panic!("tenant_purge in admin mode must succeed: {e:?}"));
        assert_eq!(secret_of(&mut su, &b), 0, "the purge removed globex's secret");
    }

    /// Third review, finding 7: with the DBA's `exempt_pattern` from `framework_patterns('django')`
    /// (`django\_%`), the owner's `CREATE TABLE django_invoices (..., tenant_id uuid)` was made
    /// global by its name: every tenant read every invoice. A table with a tenant_id uuid column
    /// is tenant data whatever its name: it is enabled, not exempt, forced, and tenant A cannot
    /// read B's invoices.
    ///
    /// Without the fix the table is exempt (the first assertion).
    #[test]
    fn an_exempt_pattern_does_not_make_a_table_with_a_tenant_column_global() {
        let db = TestDb::new("attack_pattern_tenant_column");
        let a = db.tenant("Acme", "acme");
        let b = db.tenant("Globex", "globex");
        let mut su = db.superuser();
        su.batch_execute(
            "SELECT multitenancy.exempt_pattern(pattern, reason) FROM multitenancy.framework_patterns('django')",
        )
        .unwrap();
        let patterns = count(&mut su, "SELECT count(*) FROM multitenancy.exempt_patterns WHERE pattern = 'django\\_%'");
        assert_eq!(patterns, 1, "precondition: the DBA declared django\\_%");
        let mut owner = db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE django_invoices (id serial PRIMARY KEY, amount int, tenant_id uuid);
                 GRANT SELECT, INSERT ON django_invoices TO {APP};
                 GRANT USAGE ON SEQUENCE django_invoices_id_seq TO {APP};"
            ))
            .unwrap();

        assert!(is_enabled(&mut su, "django_invoices"), "django_invoices (with a tenant_id uuid column) is enabled");
        assert!(!is_exempt(&mut su, "django_invoices"), "django_invoices is not exempt");
        assert_eq!(rls_flags(&mut su, "django_invoices"), (true, true), "row level security enabled and forced");
        assert!(has_isolation_policy(&mut su, "django_invoices"), "django_invoices has the isolation policy");
        let mut app = db.app();
        for (slug, amount) in [("acme", 100), ("globex", 200)] {
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO django_invoices (amount) VALUES ($1)", &[&amount]).unwrap();
            tx.commit().unwrap();
        }
        assert_isolated(db.server(), &db.name, "django_invoices", &[("acme", a.as_str()), ("globex", b.as_str())]);
        assert_app_needs_context(&db, "django_invoices");
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
        let preloaded: String = o.db.superuser().query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
        assert!(!preloaded.contains("multitenancy"), "precondition: the library is not preloaded");
        counting_triggers_on_a_temp_table(&o);
        disclosures(&o);
    }
}
