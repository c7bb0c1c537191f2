//! The registry is the extension's data: pg_dump keeps its rows, and a restore into a fresh
//! database gives the same tenants, the same enabled and exempt tables, the same table shapes and
//! the same isolation. A restore runs with `multitenancy.ddl_guard` off (PGOPTIONS), as the
//! README says: it recreates protected tables one piece at a time.
use multitenancy_integration::*;
use std::process::Command;

#[test]
fn dump_and_restore_keep_tenants_enabled_tables_and_isolation() {
    let orders = Orders::with_rows("dump_source", 3, 2);
    let server = orders.db.server();
    let target = format!("{}_restored", orders.db.name);
    let mut admin = server.connect("postgres", SUPERUSER);
    admin.batch_execute(&format!("CREATE DATABASE {target}")).unwrap();

    let dump = Command::new(server.program("pg_dump"))
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", SUPERUSER, "-d", &orders.db.name])
        .output()
        .expect("run pg_dump");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let sql = String::from_utf8(dump.stdout).unwrap();
    assert!(sql.contains("COPY multitenancy.tenants"), "the registry's rows are in the dump");

    // A restore recreates protected tables piece by piece: the guard must be off (README).
    let mut restore = Command::new(server.program("psql"))
        .env("PGOPTIONS", "-c multitenancy.ddl_guard=off")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-U", SUPERUSER, "-d", &target])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    use std::io::Write;
    restore.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let restored = restore.wait_with_output().unwrap();
    assert!(restored.status.success(), "restore: {}", String::from_utf8_lossy(&restored.stderr));

    let registry = |db: &str| -> Vec<String> {
        let mut su = server.connect(db, SUPERUSER);
        let mut rows: Vec<String> = su
            .query("SELECT format('%s %s %s %s', id, slug, status, plan) FROM multitenancy.tenants ORDER BY slug", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.extend(
            su.query("SELECT relid::text FROM multitenancy.enabled_tables ORDER BY 1", &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
        rows.push(table_snapshot(&mut su, "orders"));
        rows
    };
    assert_eq!(registry(&target), registry(&orders.db.name), "same tenants, registry, table shape and rows");

    // Same isolation, as the app role, in the restored database.
    let mut app = server.connect(&target, APP);
    let mut tx = begin_as(&mut app, "acme");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), orders.rows_a);
    let b_seen: i64 =
        tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&orders.b]).unwrap().get(0);
    assert_eq!(b_seen, 0);
    tx.commit().unwrap();
    let b_rows: i64 = server
        .connect(&target, SUPERUSER)
        .query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&orders.b])
        .unwrap()
        .get(0);
    assert_eq!(b_rows, orders.rows_b, "ground truth: B's rows were restored");
    assert_no_context(&mut app, "in the restored database");
}

/// Run a server program against the test server as the superuser; `guard_off` sets
/// `PGOPTIONS='-c multitenancy.ddl_guard=off'` as the README tells DBAs to for pg_restore.
fn run(server: &Server, program: &str, args: &[&str], guard_off: bool) -> std::process::Output {
    let mut command = Command::new(server.program(program));
    command
        .env_remove("PGOPTIONS")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", SUPERUSER])
        .args(args);
    if guard_off {
        command.env("PGOPTIONS", "-c multitenancy.ddl_guard=off");
    }
    command.output().unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Everything a restore must reproduce, read as the superuser: tenants, both registries (every
/// column), and the catalog snapshot and rows of every table.
fn state(server: &Server, db: &str, tables: &[&str]) -> Vec<String> {
    let mut su = server.connect(db, SUPERUSER);
    let mut rows: Vec<String> = Vec::new();
    for sql in [
        "SELECT format('tenant %s %s %s %s', id, slug, status, plan) FROM multitenancy.tenants ORDER BY slug",
        "SELECT format('enabled %s %s %s', relid, enabled_by, enabled_at) FROM multitenancy.enabled_tables ORDER BY relid::text",
        "SELECT format('exempt %s %s %s %s', relid, reason, exempted_by, exempted_at) FROM multitenancy.exempt_tables ORDER BY relid::text",
    ] {
        rows.extend(su.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get::<_, String>(0)));
    }
    for table in tables {
        rows.push(format!("{table}: {}", table_snapshot(&mut su, table)));
    }
    rows
}

/// A database with an enabled table, an exempt table and an enabled partitioned table with two
/// partitions (rows of both tenants in each), dumped with `pg_dump -Fc` and restored with
/// `pg_restore` and the guard off, is the same database: verify() is clean, both registries and
/// every table's shape and rows are identical, and [`APP`] sees one tenant only through the
/// parent and through each partition. Restoring with the guard on fails (or, if it did not, the
/// result is checked the same way).
#[test]
fn a_custom_format_dump_restores_with_the_guard_off() {
    let orders = Orders::with_rows("dump_guard_source", 3, 2);
    let (a, b) = (orders.a.clone(), orders.b.clone());
    let db = &orders.db;
    let server = db.server();
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_exempt('countries', 'reference data shared by all tenants');
             INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France');
             CREATE TABLE events (id int NOT NULL, at date NOT NULL, note text) PARTITION BY RANGE (at);
             CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             SELECT multitenancy.tenant_enable('events');
             CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             GRANT SELECT, INSERT ON events, events_2025, events_2026 TO {APP};
             GRANT SELECT ON countries TO {APP};"
        ))
        .unwrap();
    db.superuser()
        .batch_execute(&format!(
            "INSERT INTO events (id, at, note, tenant_id) VALUES
                 (1, '2025-02-01', 'a', '{a}'), (2, '2025-02-02', 'b', '{b}'), (3, '2025-02-03', 'b', '{b}'),
                 (4, '2026-02-01', 'a', '{a}'), (5, '2026-02-02', 'a', '{a}'), (6, '2026-02-03', 'b', '{b}');"
        ))
        .unwrap();
    let tables = ["orders", "countries", "events", "events_2025", "events_2026"];
    assert_eq!(db.verify(), [], "precondition: the source database verifies clean");
    let source = state(server, &db.name, &tables);

    let file = std::env::temp_dir().join(format!("multitenancy-{}-{}.dump", db.name, std::process::id()));
    let file_arg = file.to_str().unwrap();
    let dump = run(server, "pg_dump", &["-Fc", "-f", file_arg, "-d", &db.name], false);
    assert!(dump.status.success(), "pg_dump -Fc: {}", String::from_utf8_lossy(&dump.stderr));

    let check_restored = |target: &str| {
        assert_eq!(
            verify(&mut server.connect(target, SUPERUSER)),
            [],
            "expected verify() to be clean on the restored database"
        );
        assert_eq!(state(server, target, &tables), source, "expected the same registry, table shapes and rows");
        for table in ["orders", "events", "events_2025", "events_2026"] {
            assert_isolated(server, target, table, &[("acme", &a), ("globex", &b)]);
        }
        assert_no_context(&mut server.connect(target, APP), "in the restored database");
    };

    let mut admin = server.connect("postgres", SUPERUSER);
    let target = format!("{}_restored", db.name);
    admin.batch_execute(&format!("CREATE DATABASE {target}")).unwrap();
    let restore = run(server, "pg_restore", &["--exit-on-error", "-d", &target, file_arg], true);
    assert!(
        restore.status.success(),
        "PGOPTIONS='-c multitenancy.ddl_guard=off' pg_restore --exit-on-error must succeed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    check_restored(&target);

    // Without the guard off: the restore recreates tables unprotected before their policies and
    // registry rows arrive, which the guard refuses.
    let guarded = format!("{}_guarded", db.name);
    admin.batch_execute(&format!("CREATE DATABASE {guarded}")).unwrap();
    let restore = run(server, "pg_restore", &["--exit-on-error", "-d", &guarded, file_arg], false);
    let _ = std::fs::remove_file(&file);
    if restore.status.success() {
        eprintln!("NOTE: pg_restore with the guard ON succeeded; checking that the result is protected");
        check_restored(&guarded);
    } else {
        let stderr = String::from_utf8_lossy(&restore.stderr);
        eprintln!("NOTE: pg_restore with the guard ON failed, as the README expects:\n{stderr}");
        assert!(stderr.contains("refused:"), "expected the guard's refusal to be why pg_restore failed: {stderr}");
    }
}

/// Every row of the registry tables (tenants, members, domains, plans, audit log, enabled
/// tables, quotas and usage counters) and of `orders`, as ordered text, read as the superuser.
fn registry_rows(server: &Server, db: &str) -> Vec<String> {
    let mut su = server.connect(db, SUPERUSER);
    let mut rows = Vec::new();
    for table in [
        "multitenancy.tenants",
        "multitenancy.members",
        "multitenancy.domains",
        "multitenancy.plans",
        "multitenancy.audit_log",
        "multitenancy.enabled_tables",
        "multitenancy.quotas",
        "multitenancy.table_usage",
        "multitenancy.metered_usage",
        "orders",
    ] {
        let sql = format!("SELECT t::text FROM {table} t ORDER BY 1");
        rows.extend(
            su.query(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| format!("{table}: {}", r.get::<_, String>(0))),
        );
    }
    rows
}

/// Members, domains (one verified), a plan, settings and the audit log survive pg_dump -Fc and
/// pg_restore into a fresh database row for row; there, APP is still isolated per tenant, the
/// verified domain still resolves (the unverified one does not), memberships and settings still
/// apply, and the audit log goes on without colliding with the restored rows.
#[test]
fn dump_and_restore_keep_members_domains_settings_and_audit() {
    const OWNER_A: &str = "a0000000-0000-4000-8000-000000000001";
    const MEMBER_A: &str = "a0000000-0000-4000-8000-000000000003";
    const OWNER_B: &str = "b0000000-0000-4000-8000-000000000001";
    let orders = Orders::with_rows("dump_registry_source", 3, 2);
    let (a, b) = (orders.a.clone(), orders.b.clone());
    let db = &orders.db;
    let server = db.server();
    let mut su = db.superuser();
    su.batch_execute(&format!(
        r#"SELECT multitenancy.plan_set('pro', '{{"rows": 100}}', '{{"sso": true}}');
           SELECT multitenancy.tenant_change_plan('acme', 'pro');
           SELECT multitenancy.member_add('acme', '{OWNER_A}', 'owner');
           SELECT multitenancy.member_add('acme', '{MEMBER_A}', 'member');
           SELECT multitenancy.member_add('globex', '{OWNER_B}', 'owner');
           SELECT multitenancy.setting_set('acme', 'color', '"blue"');
           SELECT multitenancy.setting_set('globex', 'beta', 'true');
           SELECT multitenancy.quota_set('acme', 'rows', 3);
           BEGIN;
           SELECT multitenancy.tenant_set('acme');
           SELECT multitenancy.usage_record('api_calls', 2);
           COMMIT;"#
    ))
    .unwrap();
    let token: String =
        su.query_one("SELECT multitenancy.domain_add('acme', 'shop.acme-corp.test', true)", &[]).unwrap().get(0);
    su.execute("SELECT multitenancy.domain_verify('shop.acme-corp.test', $1)", &[&token]).unwrap();
    su.query_one("SELECT multitenancy.domain_add('globex', 'shop.globex-corp.test')", &[]).unwrap();

    // Counters for the tenants whose limits need them, now (else at their first write).
    su.batch_execute("SELECT count(*) FROM multitenancy.usage_recompute()").unwrap();
    // Preconditions: the source has what the comparison is about.
    for (sql, expected) in [
        ("SELECT count(*) FROM multitenancy.members", 3),
        ("SELECT count(*) FROM multitenancy.domains", 2),
        ("SELECT count(*) FROM multitenancy.domains WHERE verified_at IS NOT NULL", 1),
        ("SELECT count(*) FROM multitenancy.plans WHERE name = 'pro'", 1),
        ("SELECT count(*) FROM multitenancy.tenants WHERE settings <> '{}'", 2),
        ("SELECT count(*) FROM multitenancy.quotas", 1),
        ("SELECT count(*) FROM multitenancy.metered_usage", 1),
        // Counters exist for the tenant with a rows limit only (no other needs them).
        ("SELECT count(*) FROM multitenancy.table_usage WHERE relid::oid = 0", 1),
    ] {
        assert_eq!(count(&mut su, sql), expected, "source precondition: {sql}");
    }
    let audit_rows = count(&mut su, "SELECT count(*) FROM multitenancy.audit_log");
    assert!(audit_rows >= 10, "source precondition: the calls above were audited ({audit_rows} rows)");
    let source = registry_rows(server, &db.name);
    let source_problems = db.verify();

    let file = std::env::temp_dir().join(format!("multitenancy-{}-{}.dump", db.name, std::process::id()));
    let file_arg = file.to_str().unwrap();
    let dump = run(server, "pg_dump", &["-Fc", "-f", file_arg, "-d", &db.name], false);
    assert!(dump.status.success(), "pg_dump -Fc: {}", String::from_utf8_lossy(&dump.stderr));
    let target = format!("{}_restored", db.name);
    server.connect("postgres", SUPERUSER).batch_execute(&format!("CREATE DATABASE {target}")).unwrap();
    let restore = run(server, "pg_restore", &["--exit-on-error", "-d", &target, file_arg], true);
    let _ = std::fs::remove_file(&file);
    assert!(
        restore.status.success(),
        "PGOPTIONS='-c multitenancy.ddl_guard=off' pg_restore --exit-on-error must succeed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );

    // Row for row the same registry and data.
    assert_eq!(registry_rows(server, &target), source, "the same registry rows and enabled table rows");
    let mut restored_su = server.connect(&target, SUPERUSER);
    assert_eq!(verify(&mut restored_su), source_problems, "verify() says the same about both databases");
    // The usage counters came back exact (the counting triggers are created after the data, so
    // restoring the rows counted nothing twice), and they are enforced: acme is at its limit.
    assert_eq!(count(&mut restored_su, "SELECT count(*) FROM multitenancy.usage_drift()"), 0, "no drift after restore");
    {
        let mut app = server.connect(&target, APP);
        let mut tx = begin_as(&mut app, "acme");
        let refused = expect_sqlstate(
            tx.execute("INSERT INTO orders (item) VALUES ('over')", &[]),
            &SqlState::CONFIGURATION_LIMIT_EXCEEDED,
        );
        assert!(refused.message().contains("quota \"rows\" of tenant \"acme\""), "{}", refused.message());
    }

    // Isolation as APP, with ground truth (assert_isolated checks both tenants' rows exist).
    assert_isolated(server, &target, "orders", &[("acme", &a), ("globex", &b)]);
    let mut app = server.connect(&target, APP);
    assert_no_context(&mut app, "in the restored database");

    // Routing: the verified domain resolves, the unverified one does not.
    let resolve = |app: &mut Client, host: &str| -> Option<String> {
        app.query_one("SELECT multitenancy.tenant_resolve($1)::text", &[&host]).unwrap().get(0)
    };
    assert_eq!(resolve(&mut app, "shop.acme-corp.test"), Some(a.clone()), "the verified domain resolves");
    assert_eq!(resolve(&mut app, "shop.globex-corp.test"), None, "the unverified domain still does not");

    // Memberships: ground truth, and as the app acting as acme's owner.
    let member = |su: &mut Client, tenant: &str, user: &str| -> bool {
        su.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&tenant, &user]).unwrap().get(0)
    };
    assert!(member(&mut restored_su, &a, OWNER_A), "acme's owner is still a member");
    assert!(member(&mut restored_su, &a, MEMBER_A), "acme's member is still a member");
    assert!(!member(&mut restored_su, &b, OWNER_A), "acme's owner is still not a member of globex");
    {
        let mut tx = begin_as_user(&mut app, "acme", OWNER_A);
        let row = tx
            .query_one(
                "SELECT multitenancy.is_member(), multitenancy.tenant_role(), multitenancy.setting_get('color')::text,
                        multitenancy.feature_enabled('sso'), multitenancy.feature_enabled('beta')",
                &[],
            )
            .unwrap();
        let (is_member, role, color, sso, beta): (bool, Option<String>, Option<String>, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert!(is_member, "is_member() for acme's owner in the restored database");
        assert_eq!(role.as_deref(), Some("owner"));
        assert_eq!(color.as_deref(), Some("\"blue\""), "acme's override was restored");
        assert!(sso, "acme's plan (pro) features were restored");
        assert!(!beta, "globex's override does not apply to acme");
        tx.commit().unwrap();
    }
    {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT set_config('multitenancy.user_id', $1, true)", &[&OWNER_A]).unwrap();
        let error = expect_sqlstate(
            tx.query_one("SELECT multitenancy.tenant_set('globex')", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("not a member"), "unexpected message {:?}", error.message());
    }

    // The audit log continues after the restored rows (its id sequence came along).
    let max_id: i64 = restored_su.query_one("SELECT max(id) FROM multitenancy.audit_log", &[]).unwrap().get(0);
    restored_su
        .execute("SELECT multitenancy.setting_set('acme', 'after_restore', 'true')", &[])
        .unwrap_or_else(|e| panic!("an audited call in the restored database: {e}"));
    assert_eq!(count(&mut restored_su, "SELECT count(*) FROM multitenancy.audit_log"), audit_rows + 1);
    let new_id: i64 = restored_su.query_one("SELECT max(id) FROM multitenancy.audit_log", &[]).unwrap().get(0);
    assert!(new_id > max_id, "the new audit row's id ({new_id}) follows the restored ones (max {max_id})");
}
