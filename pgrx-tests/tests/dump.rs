//! The registry is the extension's data: pg_dump keeps its rows, and a restore into a fresh
//! database gives the same tenants, the same enabled tables and the same isolation.
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

    let mut restore = Command::new(server.program("psql"))
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
