//! tenant_enable / tenant_disable against a real server, as the migration role (a non-superuser
//! table owner): refusals leave the table exactly as it was, and the protection works for the
//! application role afterwards.
use multitenancy_integration::*;

/// A table with three rows and no tenant column, owned by the migration role, as it was before
/// the DDL guard (which would refuse to commit it unprotected in `public`).
fn legacy_table(db: &TestDb, name: &str) {
    db.legacy(&format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, body text);
         INSERT INTO {name} VALUES (1, 'one'), (2, 'two'), (3, 'three');
         GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {APP};"
    ));
}

#[test]
fn a_non_empty_table_without_backfill_is_refused_and_left_unchanged() {
    let db = TestDb::new("enable_needs_backfill");
    legacy_table(&db, "notes");
    let mut su = db.superuser();
    let before = table_snapshot(&mut su, "notes");

    let err = expect_sqlstate(
        db.owner().execute("SELECT multitenancy.tenant_enable('notes')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(err.message().contains("3 row(s)"), "the message says how many rows: {}", err.message());
    let hint = err.hint().unwrap_or_default();
    assert!(hint.contains("backfill_tenant =>"), "the hint says what to pass: {hint}");

    assert_eq!(table_snapshot(&mut su, "notes"), before);
}

#[test]
fn a_tenant_id_column_of_another_type_is_refused_and_left_unchanged() {
    let db = TestDb::new("enable_wrong_type");
    db.legacy("CREATE TABLE accounts (id int, tenant_id text); INSERT INTO accounts VALUES (1, 'x')");
    let mut su = db.superuser();
    let before = table_snapshot(&mut su, "accounts");
    let a = db.tenant("Acme", "acme");

    let err = expect_sqlstate(
        db.owner().execute("SELECT multitenancy.tenant_enable('accounts', $1::text::uuid)", &[&a]),
        &SqlState::DATATYPE_MISMATCH,
    );
    assert!(err.message().contains("has type text, not uuid"), "{}", err.message());
    assert!(err.hint().unwrap_or_default().contains("ALTER TABLE"), "the hint says how to fix it");
    assert_eq!(table_snapshot(&mut su, "accounts"), before);
}

#[test]
fn a_missing_table_a_view_and_an_unknown_backfill_tenant_are_refused() {
    let db = TestDb::new("enable_missing");
    legacy_table(&db, "notes");
    db.owner().batch_execute("CREATE VIEW notes_view AS SELECT * FROM notes").unwrap();
    let mut su = db.superuser();
    let before = table_snapshot(&mut su, "notes");
    let mut owner = db.owner();

    expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_enable('no_such_table')", &[]),
        &SqlState::UNDEFINED_TABLE,
    );
    let view = expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_enable('notes_view')", &[]),
        &SqlState::WRONG_OBJECT_TYPE,
    );
    assert!(view.message().contains("is a view"), "{}", view.message());
    let unknown = expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_enable('notes', '00000000-0000-0000-0000-000000000001')", &[]),
        &SqlState::UNDEFINED_OBJECT,
    );
    assert!(unknown.message().contains("does not exist"), "{}", unknown.message());
    assert_eq!(table_snapshot(&mut su, "notes"), before);
}

#[test]
fn a_role_that_does_not_own_the_table_cannot_enable_it() {
    let db = TestDb::new("enable_not_owner");
    legacy_table(&db, "notes");
    let mut su = db.superuser();
    su.batch_execute(&format!("GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) TO {APP}"))
        .unwrap();
    let a = db.tenant("Acme", "acme");
    let before = table_snapshot(&mut su, "notes");

    let err = expect_sqlstate(
        db.app().execute("SELECT multitenancy.tenant_enable('notes', $1::text::uuid)", &[&a]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert!(err.message().contains("notes"), "{}", err.message());
    assert_eq!(table_snapshot(&mut su, "notes"), before);
}

#[test]
fn enabling_in_a_rolled_back_transaction_leaves_nothing_behind() {
    let db = TestDb::new("enable_rollback");
    legacy_table(&db, "notes");
    let a = db.tenant("Acme", "acme");
    let mut su = db.superuser();
    let before = table_snapshot(&mut su, "notes");

    let mut owner = db.owner();
    let mut tx = owner.transaction().unwrap();
    tx.execute("SELECT multitenancy.tenant_enable('notes', $1::text::uuid)", &[&a]).unwrap();
    let enabled: bool =
        tx.query_one("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'notes'::regclass", &[]).unwrap().get(0);
    assert!(enabled, "inside the transaction the table is protected");
    tx.rollback().unwrap();

    assert_eq!(table_snapshot(&mut su, "notes"), before);
}

#[test]
fn backfill_gives_existing_rows_to_one_tenant_and_isolation_holds() {
    let db = TestDb::new("enable_backfill");
    legacy_table(&db, "notes");
    let a = db.tenant("Acme", "acme");
    db.tenant("Globex", "globex");
    db.owner().execute("SELECT multitenancy.tenant_enable('notes', $1::text::uuid)", &[&a]).unwrap();

    let mut app = db.app();
    let mut tx = begin_as(&mut app, "acme");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM notes"), 3);
    tx.commit().unwrap();
    let mut tx = begin_as(&mut app, "globex");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM notes"), 0, "globex sees none of acme's backfilled rows");
    tx.execute("INSERT INTO notes VALUES (4, 'four')", &[]).unwrap();
    tx.commit().unwrap();
    let owners: i64 = db.superuser().query_one("SELECT count(DISTINCT tenant_id) FROM notes", &[]).unwrap().get(0);
    assert_eq!(owners, 2, "ground truth: both tenants' rows exist");
}

#[test]
fn a_second_enable_changes_nothing_and_says_so() {
    let orders = Orders::new("enable_twice");
    let mut su = orders.db.superuser();
    let before = table_snapshot(&mut su, "orders");
    let (mut owner, notices) = orders.db.connect_with_notices(OWNER);

    owner.execute("SELECT multitenancy.tenant_enable('orders')", &[]).unwrap();

    let said = notices.take();
    assert!(
        said.iter().any(|n| n.contains("already tenant-enabled; nothing changed")),
        "expected a NOTICE, got {said:?}"
    );
    assert_eq!(table_snapshot(&mut su, "orders"), before);
}

#[test]
fn enable_repairs_a_table_whose_protection_was_damaged() {
    let orders = Orders::new("enable_repair");
    let mut su = orders.db.superuser();
    let healthy = table_snapshot(&mut su, "orders");
    // The guard refuses this damage; a superuser with the guard off can still do it.
    orders.db.unguarded("DROP POLICY multitenancy_isolation ON orders; ALTER TABLE orders NO FORCE ROW LEVEL SECURITY");
    let (mut owner, notices) = orders.db.connect_with_notices(OWNER);

    owner.execute("SELECT multitenancy.tenant_enable('orders')", &[]).unwrap();

    let said = notices.take().join("\n");
    assert!(said.contains("repaired tenant protection of public.orders"), "{said}");
    assert!(said.contains("policy multitenancy_isolation is missing"), "{said}");
    assert_eq!(table_snapshot(&mut su, "orders"), healthy);
}

#[test]
fn disable_is_the_reverse_and_keeps_the_data() {
    let orders = Orders::new("disable");
    orders.db.owner().execute("SELECT multitenancy.tenant_disable('orders')", &[]).unwrap();

    let mut su = orders.db.superuser();
    let snapshot = table_snapshot(&mut su, "orders");
    assert!(snapshot.contains("rls=f force=f"), "{snapshot}");
    assert!(!snapshot.contains("multitenancy_"), "policies are gone: {snapshot}");
    assert!(snapshot.contains("tenant_id uuid notnull=t default=\n"), "column kept, default dropped: {snapshot}");
    assert!(snapshot.contains("registered=0"), "{snapshot}");
    // Without RLS the app sees every row again: what a DBA asks for when disabling.
    assert_eq!(count(&mut orders.db.app(), "SELECT count(*) FROM orders"), orders.rows_a + orders.rows_b);
}

#[test]
fn repairing_a_forced_table_sees_every_row_not_only_the_owners_tenant() {
    // An enabled table forces RLS on its owner, and the owner has no tenant context while
    // migrating; tenant_enable must still count and backfill the rows the repair is about.
    let orders = Orders::new("enable_repair_forced");
    orders.db.unguarded(
        "ALTER TABLE orders ALTER COLUMN tenant_id DROP NOT NULL;
         INSERT INTO orders (item, tenant_id) VALUES ('orphan', NULL);",
    );
    let mut su = orders.db.superuser();
    let damaged = table_snapshot(&mut su, "orders");
    let mut owner = orders.db.owner();

    let err = expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_enable('orders')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(err.message().contains("1 row(s) whose tenant_id is NULL"), "{}", err.message());
    assert_eq!(table_snapshot(&mut su, "orders"), damaged, "a refused repair changes nothing");

    owner.execute("SELECT multitenancy.tenant_enable('orders', $1::text::uuid)", &[&orders.a]).unwrap();
    let orphan_owner: String =
        su.query_one("SELECT tenant_id::text FROM orders WHERE item = 'orphan'", &[]).unwrap().get(0);
    assert_eq!(orphan_owner, orders.a);
    let forced: bool =
        su.query_one("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'orders'::regclass", &[]).unwrap().get(0);
    assert!(forced, "FORCE is back on after the repair");
    assert_eq!(orders.true_count(&orders.b), orders.rows_b, "other tenants' rows are untouched");
}
