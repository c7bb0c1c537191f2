//! The DDL guard: event triggers that refuse schema changes which would leave tenant data
//! unprotected, for every role (owner and superuser alike), unless a superuser turns
//! `multitenancy.ddl_guard` off.
//!
//! Every refusal is checked the same way: SQLSTATE 42501, a message starting with `refused:`
//! that names the object, a hint, and a catalog snapshot (read as the superuser) proving that
//! nothing changed. Where a refusal protects rows, the rows are shown to exist (ground truth) and
//! to stay invisible to the other tenant as [`APP`]; and every refusal has a positive control —
//! the right way of doing the same thing is accepted.
use multitenancy_integration::*;

const COMMIT_REFUSAL: &str = "refused: COMMIT would leave new table(s) in guarded schemas unprotected: ";

/// The ids of the two tenants every fixture here uses.
fn tenants(db: &TestDb) -> (String, String) {
    (db.tenant("Acme", "acme"), db.tenant("Globex", "globex"))
}

/// Run `statement` and assert the guard refused it (see [`expect_refused`]); the panic names the
/// statement.
#[track_caller]
fn refuse(client: &mut impl postgres::GenericClient, statement: &str, object: &str) -> DbError {
    match client.batch_execute(statement) {
        Ok(()) => panic!("expected the guard to refuse {statement:?} (42501), but it succeeded"),
        result => expect_refused(result, object),
    }
}

/// The ground truth that the guard's promise is about: `table` is listed in the registry and
/// has row level security enabled and forced, with both of the extension's policies.
#[track_caller]
fn assert_protected(su: &mut Client, table: &str) {
    assert!(is_enabled(su, table), "expected {table} to be listed in multitenancy.enabled_tables");
    let row = su
        .query_one(
            "SELECT c.relrowsecurity, c.relforcerowsecurity,
                    (SELECT array_agg(polname::text ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid)
               FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .unwrap();
    let (rls, force, policies): (bool, bool, Option<Vec<String>>) = (row.get(0), row.get(1), row.get(2));
    assert!(rls && force, "expected row level security enabled and forced on {table}, got rls={rls} force={force}");
    let policies = policies.unwrap_or_default();
    for policy in ["multitenancy_access", "multitenancy_isolation"] {
        assert!(policies.iter().any(|p| p == policy), "expected policy {policy} on {table}, found {policies:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The guard is on by default and guards `public`: a fresh database is protected without any
/// configuration.
#[test]
fn the_guard_is_on_by_default_and_guards_public() {
    let db = TestDb::new("guard_defaults");
    let mut su = db.superuser();
    su.query_one("SELECT multitenancy.current_tenant_id_or_null()", &[]).unwrap(); // load the library
    let guard: String = su.query_one("SHOW multitenancy.ddl_guard", &[]).unwrap().get(0);
    assert_eq!(guard, "on", "expected multitenancy.ddl_guard to default to on");
    let schemas: String = su.query_one("SHOW multitenancy.guarded_schemas", &[]).unwrap().get(0);
    assert_eq!(schemas, "public", "expected multitenancy.guarded_schemas to default to public");
}

// ---------------------------------------------------------------------------------------------
// 1. New tables in guarded schemas
// ---------------------------------------------------------------------------------------------

/// A transaction that creates a table in a guarded schema and neither enables nor exempts it is
/// refused at COMMIT (42501, listing every such table), and the tables do not exist afterwards —
/// whether the table came from CREATE TABLE, CREATE TABLE AS or SELECT INTO, in an explicit
/// transaction, a multi-statement query string or a single autocommit statement.
#[test]
fn a_new_table_left_unprotected_is_refused_at_commit_and_rolled_back() {
    let db = TestDb::new("guard_commit_refused");
    let mut su = db.superuser();
    let mut owner = db.owner();

    // A single autocommit statement is its own transaction: refused at once (both protocols).
    refuse(&mut owner, "CREATE TABLE notes (id int PRIMARY KEY, body text)", "public.notes");
    expect_refused(owner.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)", &[]), "public.notes");
    refuse(&mut owner, "CREATE TABLE totals AS SELECT 1 AS n", "public.totals");
    refuse(&mut owner, "SELECT 1 AS n INTO totals_into", "public.totals_into");

    // An explicit transaction: every statement runs, COMMIT is refused.
    let mut tx = owner.transaction().unwrap();
    tx.batch_execute("CREATE TABLE drafts (id int); INSERT INTO drafts VALUES (1)")
        .expect("statements before COMMIT run: the check is at the end of the transaction");
    let error = expect_sqlstate(tx.commit(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(
        error.message(),
        format!("{COMMIT_REFUSAL}public.drafts"),
        "expected the COMMIT refusal naming public.drafts"
    );
    assert!(error.hint().is_some_and(|h| !h.is_empty()), "expected a hint with the fix");

    // A multi-statement query string is one implicit transaction: refused at its end, listing all.
    let error = expect_sqlstate(
        owner.batch_execute(
            "CREATE TABLE first_t (id int); CREATE TABLE second_t (id int); INSERT INTO first_t VALUES (1)",
        ),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert!(error.message().starts_with(COMMIT_REFUSAL), "expected the COMMIT refusal, got {:?}", error.message());
    for table in ["public.first_t", "public.second_t"] {
        assert!(error.message().contains(table), "expected the refusal to list {table}: {:?}", error.message());
    }

    for table in ["notes", "totals", "totals_into", "drafts", "first_t", "second_t"] {
        assert!(!relation_exists(&mut su, table), "a refused transaction must leave no table {table} behind");
    }
    // The session is usable afterwards (positive control that the refusal was a clean ERROR).
    assert_eq!(count(&mut owner, "SELECT count(*) FROM pg_class WHERE relname = 'drafts'"), 0);
}

/// The documented migration patterns commit: CREATE TABLE (or CREATE TABLE AS) and
/// `tenant_enable` in one transaction, or CREATE TABLE and `tenant_exempt` with a reason.
#[test]
fn a_new_table_enabled_or_exempt_in_its_transaction_commits() {
    let db = TestDb::new("guard_commit_allowed");
    let mut su = db.superuser();
    let mut owner = db.owner();

    let mut tx = owner.transaction().unwrap();
    tx.batch_execute("CREATE TABLE invoices (id int PRIMARY KEY, total int NOT NULL)").unwrap();
    tx.execute("SELECT multitenancy.tenant_enable('invoices')", &[]).unwrap();
    tx.commit().expect("CREATE TABLE + tenant_enable in one transaction must commit");

    owner
        .batch_execute("CREATE TABLE payments (id int PRIMARY KEY); SELECT multitenancy.tenant_enable('payments');")
        .expect("CREATE TABLE + tenant_enable in one query string must commit");
    owner
        .batch_execute("CREATE TABLE invoice_totals AS SELECT 1 AS n WHERE false; SELECT multitenancy.tenant_enable('invoice_totals');")
        .expect("CREATE TABLE AS + tenant_enable in one query string must commit");
    owner
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_exempt('countries', 'reference data shared by all tenants');",
        )
        .expect("CREATE TABLE + tenant_exempt in one query string must commit");

    for table in ["invoices", "payments", "invoice_totals"] {
        assert_protected(&mut su, table);
    }
    let exempt = su
        .query_one("SELECT relid::text, reason, exempted_by::text FROM multitenancy.exempt_tables", &[])
        .expect("expected exactly one exempt table");
    let exempt: (String, String, String) = (exempt.get(0), exempt.get(1), exempt.get(2));
    assert_eq!(
        exempt,
        ("countries".into(), "reference data shared by all tenants".into(), OWNER.into()),
        "expected the registry to record the exempt table, its reason and who exempted it"
    );
    assert!(!is_enabled(&mut su, "countries"), "an exempt table is not tenant-enabled");
}

/// What counts is the state at COMMIT: protection undone later in the transaction (rolled back
/// to a savepoint, disabled, unexempted) is refused, and a table that no longer exists at COMMIT
/// (dropped, or created in a rolled-back savepoint) is not.
#[test]
fn the_commit_check_sees_the_final_state_of_the_transaction() {
    let db = TestDb::new("guard_commit_final");
    let mut su = db.superuser();
    let mut owner = db.owner();

    {
        let mut tx = owner.transaction().unwrap();
        tx.batch_execute("CREATE TABLE undone (id int)").unwrap();
        let mut sp = tx.savepoint("before_enable").unwrap();
        sp.execute("SELECT multitenancy.tenant_enable('undone')", &[]).unwrap();
        sp.rollback().unwrap();
        let error = expect_sqlstate(tx.commit(), &SqlState::INSUFFICIENT_PRIVILEGE);
        assert_eq!(
            error.message(),
            format!("{COMMIT_REFUSAL}public.undone"),
            "tenant_enable rolled back to a savepoint must not count"
        );
    }
    {
        let error = expect_sqlstate(
            owner.batch_execute(
                "CREATE TABLE flipped (id int);
                 SELECT multitenancy.tenant_enable('flipped');
                 SELECT multitenancy.tenant_disable('flipped');",
            ),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert_eq!(error.message(), format!("{COMMIT_REFUSAL}public.flipped"), "enabled then disabled must not count");
    }
    {
        let error = expect_sqlstate(
            owner.batch_execute(
                "CREATE TABLE unexempted (id int);
                 SELECT multitenancy.tenant_exempt('unexempted', 'scratch');
                 SELECT multitenancy.tenant_unexempt('unexempted');",
            ),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert_eq!(
            error.message(),
            format!("{COMMIT_REFUSAL}public.unexempted"),
            "exempt then unexempt must not count"
        );
    }
    for table in ["undone", "flipped", "unexempted"] {
        assert!(!relation_exists(&mut su, table), "refused: {table} must not exist");
    }

    // Positive controls: nothing unprotected is left at COMMIT.
    owner
        .batch_execute("CREATE TABLE scratch_t (id int); INSERT INTO scratch_t VALUES (1); DROP TABLE scratch_t;")
        .expect("a table created and dropped in one transaction leaves nothing unprotected");
    let mut tx = owner.transaction().unwrap();
    let mut sp = tx.savepoint("before_create").unwrap();
    sp.batch_execute("CREATE TABLE abandoned (id int)").unwrap();
    sp.rollback().unwrap();
    tx.commit().expect("a table created in a rolled-back savepoint does not exist at COMMIT");
    assert!(!relation_exists(&mut su, "abandoned"), "ground truth: the savepoint's table is gone");
}

/// Only schemas listed in `multitenancy.guarded_schemas` are checked: another schema and
/// temporary tables (the README's bulk-load recipe, as [`APP`]) are not; a DBA extends the list
/// per database with ALTER DATABASE ... SET, and then that schema is checked too.
#[test]
fn only_guarded_schemas_are_checked_and_a_dba_chooses_them_per_database() {
    let db = TestDb::new("guard_schemas");
    let mut su = db.superuser();
    su.batch_execute(&format!("CREATE SCHEMA scratch AUTHORIZATION {OWNER}; GRANT USAGE ON SCHEMA scratch TO {APP}"))
        .unwrap();

    let mut owner = db.owner();
    owner.batch_execute("CREATE TABLE scratch.tmp (id int)").expect("scratch is not guarded: the table commits");
    db.app()
        .batch_execute("CREATE TEMP TABLE staging (item text); INSERT INTO staging VALUES ('x')")
        .expect("temporary tables are not in a guarded schema: an application can stage rows in one");
    // Positive control in the same session: public is guarded.
    refuse(&mut owner, "CREATE TABLE public.unprotected (id int)", "public.unprotected");

    su.batch_execute(&format!("ALTER DATABASE {} SET multitenancy.guarded_schemas = 'public, scratch'", db.name))
        .expect("a superuser sets guarded_schemas per database");
    let mut owner = db.owner(); // a new session gets the database's setting
    refuse(&mut owner, "CREATE TABLE scratch.tmp2 (id int)", "scratch.tmp2");
    refuse(&mut owner, "CREATE TABLE public.unprotected (id int)", "public.unprotected");
    assert!(relation_exists(&mut su, "scratch.tmp"), "the table created while scratch was not guarded is still there");
    assert!(!relation_exists(&mut su, "scratch.tmp2"), "the refused table must not exist");
    assert!(!relation_exists(&mut su, "public.unprotected"), "the refused table must not exist");
}

/// A table created in a guarded schema with a `tenant_id uuid` column is tenant-enabled at
/// CREATE (NOTICE), by CREATE TABLE or by CREATE TABLE AS; it then isolates tenants as [`APP`].
#[test]
fn a_new_table_with_a_tenant_id_uuid_column_is_enabled_automatically() {
    let o = Orders::new("guard_auto_enable");
    let mut su = o.db.superuser();
    let (mut owner, notices) = o.db.connect_with_notices(OWNER);

    owner
        .batch_execute("CREATE TABLE invoices (id int PRIMARY KEY, tenant_id uuid, total int NOT NULL DEFAULT 0)")
        .expect("a table with a tenant_id uuid column commits on its own: it is enabled automatically");
    let said = notices.take();
    assert!(
        said.iter().any(|n| n.contains("tenant-enabled automatically")),
        "expected a NOTICE saying the table was tenant-enabled automatically, got {said:?}"
    );
    assert_protected(&mut su, "invoices");
    let snapshot = table_snapshot(&mut su, "invoices");
    assert!(
        snapshot.contains("tenant_id uuid notnull=t default=multitenancy.current_tenant_id()"),
        "expected tenant_id NOT NULL DEFAULT current_tenant_id(): {snapshot}"
    );

    owner.batch_execute(&format!("GRANT SELECT, INSERT ON invoices TO {APP}")).unwrap();
    let mut app = o.db.app();
    for (slug, ids) in [("acme", [1, 2]), ("globex", [3, 4])] {
        let mut tx = begin_as(&mut app, slug);
        for id in ids {
            tx.execute("INSERT INTO invoices (id, total) VALUES ($1, 10)", &[&id]).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_isolated(o.db.server(), &o.db.name, "invoices", &[("acme", &o.a), ("globex", &o.b)]);

    // CREATE TABLE AS copying tenant_id (a superuser reads every tenant's rows).
    let (mut su_notices, su_said) = o.db.connect_with_notices(SUPERUSER);
    su_notices
        .batch_execute("CREATE TABLE orders_copy AS SELECT * FROM orders")
        .expect("CREATE TABLE AS with a tenant_id uuid column commits: it is enabled automatically");
    let said = su_said.take();
    assert!(said.iter().any(|n| n.contains("tenant-enabled automatically")), "expected the NOTICE, got {said:?}");
    assert_protected(&mut su, "orders_copy");
    su.batch_execute(&format!("GRANT SELECT ON orders_copy TO {APP}")).unwrap();
    assert_isolated(o.db.server(), &o.db.name, "orders_copy", &[("acme", &o.a), ("globex", &o.b)]);
}

// ---------------------------------------------------------------------------------------------
// 3. DDL on enabled tables
// ---------------------------------------------------------------------------------------------

/// On an enabled table, DDL that would weaken the protection is refused (42501), names the table
/// and what would break, and changes nothing — as the table's owner and as a superuser — and the
/// tenants stay isolated for [`APP`] afterwards.
#[test]
fn ddl_that_would_unprotect_an_enabled_table_is_refused_and_changes_nothing() {
    let o = Orders::new("guard_refusals");
    let mut su = o.db.superuser();
    let before = table_snapshot(&mut su, "orders");
    let mut owner = o.db.owner();
    let owns: bool = owner
        .query_one("SELECT pg_get_userbyid(relowner) = current_user FROM pg_class WHERE oid = 'orders'::regclass", &[])
        .unwrap()
        .get(0);
    assert!(owns, "the DDL is attempted by the table's owner, whom PostgreSQL itself would allow");

    for statement in [
        "ALTER TABLE orders DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY multitenancy_isolation ON orders",
        "DROP POLICY multitenancy_access ON orders",
        "ALTER POLICY multitenancy_isolation ON orders USING (true)",
        "ALTER POLICY multitenancy_isolation ON orders WITH CHECK (true)",
        "ALTER POLICY multitenancy_isolation ON orders TO mt_owner",
        "ALTER TABLE orders DROP COLUMN tenant_id CASCADE",
        "ALTER TABLE orders ALTER COLUMN tenant_id DROP NOT NULL",
        "ALTER TABLE orders ALTER COLUMN tenant_id DROP DEFAULT",
        "ALTER TABLE orders ALTER COLUMN tenant_id SET DEFAULT gen_random_uuid()",
        // A harmless subcommand does not carry a harmful one through.
        "ALTER TABLE orders ADD COLUMN note text, NO FORCE ROW LEVEL SECURITY",
    ] {
        let error = refuse(&mut owner, statement, "\"public.orders\"");
        assert!(
            error.message().contains("would leave tenant-enabled table \"public.orders\" unprotected"),
            "{statement}: expected the message to say what it would leave unprotected, got {:?}",
            error.message()
        );
        assert_eq!(table_snapshot(&mut su, "orders"), before, "{statement}: refused, so nothing may have changed");
    }

    // PostgreSQL may refuse these first (the policies depend on the column); either way they
    // fail and nothing changes.
    for statement in ["ALTER TABLE orders DROP COLUMN tenant_id", "ALTER TABLE orders ALTER COLUMN tenant_id TYPE text"]
    {
        let result = owner.batch_execute(statement);
        assert!(result.is_err(), "{statement}: expected an error, it succeeded");
        assert_eq!(table_snapshot(&mut su, "orders"), before, "{statement}: failed, so nothing may have changed");
    }

    // In a transaction block the refusal aborts the transaction; nothing of it survives.
    {
        let mut tx = owner.transaction().unwrap();
        tx.batch_execute("ALTER TABLE orders ADD COLUMN note text").unwrap();
        refuse(&mut tx, "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "\"public.orders\"");
    }
    assert_eq!(table_snapshot(&mut su, "orders"), before, "the aborted transaction changed nothing");

    // The guard is not a privilege check: the superuser is refused too.
    for statement in ["ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "DROP POLICY multitenancy_isolation ON orders"]
    {
        refuse(&mut su, statement, "\"public.orders\"");
        assert_eq!(table_snapshot(&mut su, "orders"), before, "{statement} as superuser: nothing changed");
    }

    assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", &o.a), ("globex", &o.b)]);
}

/// What keeps the protection intact is allowed on an enabled table: the application's own
/// policies (isolation, being RESTRICTIVE, still holds for [`APP`]), ordinary columns and
/// indexes, and dropping the table (which forgets it in the registry).
#[test]
fn ddl_that_keeps_the_protection_is_allowed() {
    let o = Orders::new("guard_allowed");
    let mut su = o.db.superuser();
    let mut owner = o.db.owner();

    owner
        .batch_execute("CREATE POLICY app_own ON orders USING (item <> 'x')")
        .expect("the application's own policy must be allowed");
    owner.batch_execute("ALTER POLICY app_own ON orders USING (item <> 'y')").expect("and altering it");
    owner.batch_execute("ALTER TABLE orders ADD COLUMN note text").expect("adding an ordinary column must be allowed");
    owner.batch_execute("CREATE INDEX orders_item_idx ON orders (item)").expect("an ordinary index must be allowed");
    let policies = count(&mut su, "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass");
    assert_eq!(policies, 3, "ground truth: app_own exists next to the extension's two policies");
    assert_protected(&mut su, "orders");
    assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", &o.a), ("globex", &o.b)]);

    owner
        .batch_execute("DROP POLICY app_own ON orders")
        .expect("dropping the application's own policy must be allowed");
    owner.batch_execute("DROP TABLE orders").expect("dropping an enabled table leaves nothing unprotected");
    assert!(!relation_exists(&mut su, "orders"), "ground truth: the table is gone");
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.enabled_tables"), 0, "the registry forgot it");
}

// ---------------------------------------------------------------------------------------------
// 4. Partitions and inheritance
// ---------------------------------------------------------------------------------------------

/// A partition or child of an enabled table is enabled automatically — created with PARTITION OF
/// (in a guarded schema or not), attached with ATTACH PARTITION, created with INHERITS or joined
/// with ALTER TABLE ... INHERIT — so reading it directly as [`APP`] shows one tenant only, while
/// the other tenant's rows are in it.
#[test]
fn partitions_and_children_of_an_enabled_table_are_enabled() {
    let db = TestDb::new("guard_partitions");
    let (a, b) = tenants(&db);
    let mut su = db.superuser();
    su.batch_execute(&format!("CREATE SCHEMA archive AUTHORIZATION {OWNER}; GRANT USAGE ON SCHEMA archive TO {APP}"))
        .unwrap();
    let mut owner = db.owner();
    owner
        .batch_execute(
            "CREATE TABLE events (id int NOT NULL, at date NOT NULL, note text) PARTITION BY RANGE (at);
             SELECT multitenancy.tenant_enable('events');
             CREATE TABLE docs (id int NOT NULL, body text);
             SELECT multitenancy.tenant_enable('docs');",
        )
        .unwrap();

    owner
        .batch_execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        .expect("a partition of an enabled table commits: it is enabled automatically");
    owner
        .batch_execute("CREATE TABLE archive.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
        .expect("a partition in a schema that is not guarded is enabled too");
    // An existing, unprotected table with rows of both tenants, attached later.
    db.legacy(&format!(
        "CREATE TABLE events_2024 (LIKE events);
         INSERT INTO events_2024 (id, at, note, tenant_id)
              VALUES (1, '2024-05-01', 'a', '{a}'), (2, '2024-05-02', 'b', '{b}');"
    ));
    owner
        .batch_execute(
            "ALTER TABLE events ATTACH PARTITION events_2024 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        )
        .expect("attaching a table to an enabled partitioned table enables it");
    owner
        .batch_execute("CREATE TABLE docs_archived (archived_at date) INHERITS (docs)")
        .expect("a child of an enabled table commits: it is enabled automatically");
    db.legacy(&format!(
        "CREATE TABLE docs_imported (id int NOT NULL, body text, tenant_id uuid NOT NULL);
         INSERT INTO docs_imported VALUES (1, 'a', '{a}'), (2, 'b', '{b}');"
    ));
    owner.batch_execute("ALTER TABLE docs_imported INHERIT docs").expect("joining an enabled parent enables the child");

    su.batch_execute(&format!(
        "INSERT INTO events (id, at, note, tenant_id) VALUES
             (10, '2026-03-01', 'a', '{a}'), (11, '2026-03-02', 'b', '{b}'), (12, '2026-03-03', 'b', '{b}'),
             (20, '2025-03-01', 'a', '{a}'), (21, '2025-03-02', 'b', '{b}');
         INSERT INTO docs_archived (id, body, tenant_id) VALUES (1, 'a', '{a}'), (2, 'b', '{b}');"
    ))
    .unwrap();
    let tables =
        ["events", "events_2026", "archive.events_2025", "events_2024", "docs", "docs_archived", "docs_imported"];
    owner.batch_execute(&format!("GRANT SELECT ON {} TO {APP}", tables.join(", "))).unwrap();
    for table in tables {
        assert_protected(&mut su, table);
        assert_isolated(db.server(), &db.name, table, &[("acme", &a), ("globex", &b)]);
    }
}

/// `tenant_enable` on a partitioned table that already has partitions enables every partition:
/// each one, read directly as [`APP`], shows one tenant only.
#[test]
fn enabling_a_partitioned_table_enables_its_existing_partitions() {
    let db = TestDb::new("guard_enable_partitioned");
    let (a, b) = tenants(&db);
    let mut su = db.superuser();
    db.legacy(
        "CREATE TABLE metrics (at date NOT NULL, value int) PARTITION BY RANGE (at);
         CREATE TABLE metrics_h1 PARTITION OF metrics FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
         CREATE TABLE metrics_h2 PARTITION OF metrics FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');",
    );
    let mut owner = db.owner();
    owner.execute("SELECT multitenancy.tenant_enable('metrics')", &[]).unwrap();
    owner.batch_execute(&format!("GRANT SELECT, INSERT ON metrics, metrics_h1, metrics_h2 TO {APP}")).unwrap();

    let mut app = db.app();
    for slug in ["acme", "globex"] {
        let mut tx = begin_as(&mut app, slug);
        tx.batch_execute("INSERT INTO metrics (at, value) VALUES ('2026-02-01', 1), ('2026-08-01', 2)").unwrap();
        tx.commit().unwrap();
    }
    for table in ["metrics", "metrics_h1", "metrics_h2"] {
        assert_protected(&mut su, table);
        assert_isolated(db.server(), &db.name, table, &[("acme", &a), ("globex", &b)]);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Views
// ---------------------------------------------------------------------------------------------

/// A view that reads an enabled table — directly, through a join or a subquery, or through
/// another view — must be `security_invoker`: otherwise it runs as its owner, not as the
/// querying role. Creating, replacing or altering one into a definer view is refused; a
/// security_invoker view works and shows [`APP`] one tenant only; views over tables that are not
/// enabled are not concerned.
#[test]
fn views_over_enabled_tables_must_be_security_invoker() {
    let o = Orders::new("guard_views");
    let mut su = o.db.superuser();
    let mut owner = o.db.owner();
    create_exempt_countries(&mut owner);
    if server_version(&mut su) < 150000 {
        return views_before_security_invoker(&o, &mut su, &mut owner);
    }

    let error = refuse(&mut owner, "CREATE VIEW orders_report AS SELECT * FROM orders", "public.orders_report");
    assert!(
        error.message().contains(
            "view \"public.orders_report\" reads tenant-enabled table \"public.orders\" but is not security_invoker"
        ),
        "expected the message to name the view, the table and the reason, got {:?}",
        error.message()
    );
    for (statement, view) in [
        ("CREATE VIEW orders_report WITH (security_invoker = false) AS SELECT id FROM orders", "public.orders_report"),
        (
            "CREATE VIEW orders_by_country AS SELECT c.code, o.id FROM countries c CROSS JOIN orders o",
            "public.orders_by_country",
        ),
        (
            "CREATE VIEW busy_countries AS SELECT code FROM countries WHERE EXISTS (SELECT 1 FROM orders)",
            "public.busy_countries",
        ),
    ] {
        refuse(&mut owner, statement, view);
    }
    for view in ["orders_report", "orders_by_country", "busy_countries"] {
        assert!(!relation_exists(&mut su, view), "refused: view {view} must not exist");
    }

    owner
        .batch_execute(&format!(
            "CREATE VIEW orders_report WITH (security_invoker = true) AS SELECT * FROM orders;
             GRANT SELECT ON orders_report TO {APP};"
        ))
        .expect("a security_invoker view over an enabled table is allowed");
    assert_isolated(o.db.server(), &o.db.name, "orders_report", &[("acme", &o.a), ("globex", &o.b)]);

    let options = |su: &mut Client| -> Option<Vec<String>> {
        su.query_one("SELECT reloptions FROM pg_class WHERE oid = 'orders_report'::regclass", &[]).unwrap().get(0)
    };
    let before = options(&mut su);
    assert_eq!(before, Some(vec!["security_invoker=true".to_string()]));
    for statement in [
        "ALTER VIEW orders_report SET (security_invoker = false)",
        "ALTER VIEW orders_report RESET (security_invoker)",
        // CREATE OR REPLACE VIEW replaces the options with the (empty) new list.
        "CREATE OR REPLACE VIEW orders_report AS SELECT * FROM orders",
    ] {
        refuse(&mut owner, statement, "public.orders_report");
        assert_eq!(options(&mut su), before, "{statement}: refused, so the view is still security_invoker");
    }
    assert_isolated(o.db.server(), &o.db.name, "orders_report", &[("acme", &o.a), ("globex", &o.b)]);

    // A view over the view reads orders too.
    refuse(&mut owner, "CREATE VIEW orders_report_2 AS SELECT * FROM orders_report", "public.orders_report_2");
    owner
        .batch_execute("CREATE VIEW orders_report_2 WITH (security_invoker = true) AS SELECT * FROM orders_report")
        .expect("a security_invoker view over a security_invoker view is allowed");

    // Positive control: a plain view over a table that is not enabled.
    owner
        .batch_execute("CREATE VIEW country_names AS SELECT name FROM countries")
        .expect("views over tables that are not enabled are fine");
}

/// PostgreSQL 14 has no `security_invoker`: a view reads as its owner, which FORCE filters by the
/// querying session's tenant unless the owner is a superuser or has BYPASSRLS. So the guard
/// refuses views over enabled tables owned by such roles (created by them, or given to them
/// later) and accepts the table owner's.
fn views_before_security_invoker(o: &Orders, su: &mut Client, owner: &mut Client) {
    refuse(su, "CREATE VIEW su_report AS SELECT * FROM orders", "public.su_report");
    assert!(!relation_exists(su, "su_report"), "refused: the superuser's view must not exist");
    owner
        .batch_execute(&format!(
            "CREATE VIEW orders_report AS SELECT * FROM orders;
             CREATE VIEW orders_report_2 AS SELECT * FROM orders_report;
             GRANT SELECT ON orders_report, orders_report_2 TO {APP};"
        ))
        .expect("a view over an enabled table owned by the (filtered) table owner is allowed");
    // The views read as their owner, whom FORCE filters by the querying session's tenant: the
    // app sees exactly its tenant's rows (ground truth from the table, as the superuser).
    let isolated = |su: &mut Client, view: &str| {
        let mut app = o.db.app();
        for (slug, id) in [("acme", &o.a), ("globex", &o.b)] {
            let truth = count(su, &format!("SELECT count(*) FROM orders WHERE tenant_id = '{id}'"));
            assert!(truth > 0, "ground truth: {slug} has rows");
            let mut tx = begin_as(&mut app, slug);
            let seen: i64 = tx.query_one(&format!("SELECT count(*) FROM {view}"), &[]).unwrap().get(0);
            let others: i64 =
                tx.query_one(&format!("SELECT count(*) FROM {view} WHERE tenant_id <> '{id}'"), &[]).unwrap().get(0);
            assert_eq!((seen, others), (truth, 0), "{view} as the app with {slug}'s context");
        }
    };
    for view in ["orders_report", "orders_report_2"] {
        isolated(su, view);
    }
    su.batch_execute("CREATE ROLE mt_bypass_view NOLOGIN BYPASSRLS").unwrap();
    refuse(su, "ALTER VIEW orders_report OWNER TO mt_bypass_view", "public.orders_report");
    let owner_name: String = su
        .query_one("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'orders_report'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(owner_name, OWNER, "refused: the view keeps its filtered owner");
    isolated(su, "orders_report");
}

/// A materialized view over an enabled table stores its rows outside row level security: it is
/// refused, whether filled (by a superuser, who reads every tenant's rows) or created empty.
#[test]
fn materialized_views_over_enabled_tables_are_refused() {
    let o = Orders::new("guard_matviews");
    let mut su = o.db.superuser();
    refuse(&mut su, "CREATE MATERIALIZED VIEW orders_mv AS SELECT * FROM orders", "public.orders_mv");
    expect_refused(
        o.db.owner()
            .batch_execute("CREATE MATERIALIZED VIEW orders_mv AS SELECT id, tenant_id FROM orders WITH NO DATA"),
        "public.orders_mv",
    );
    let invoker = if server_version(&mut su) < 150000 { "" } else { " WITH (security_invoker = true)" };
    expect_refused(
        o.db.owner().batch_execute(&format!(
            "CREATE VIEW orders_inv{invoker} AS SELECT * FROM orders;
             CREATE MATERIALIZED VIEW orders_inv_mv AS SELECT * FROM orders_inv WITH NO DATA;",
        )),
        "public.orders_inv_mv",
    );
    for relation in ["orders_mv", "orders_inv", "orders_inv_mv"] {
        assert!(!relation_exists(&mut su, relation), "refused: {relation} must not exist");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Publications
// ---------------------------------------------------------------------------------------------

/// Logical replication copies rows without row level security: a publication that would include
/// an enabled table — by name, FOR ALL TABLES, by schema, or added later — is refused even for a
/// superuser; with `multitenancy.ddl_guard` off a superuser can do it.
#[test]
fn publications_of_enabled_tables_are_refused_unless_the_guard_is_off() {
    let o = Orders::new("guard_publications");
    create_exempt_countries(&mut o.db.owner());
    let mut su = o.db.superuser();
    su.batch_execute("CREATE SCHEMA refdata").unwrap();
    let publications = |su: &mut Client| -> Vec<String> {
        su.query("SELECT format('%s:%s', pubname, tablename) FROM pg_publication_tables ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .chain(
                su.query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[]).unwrap().iter().map(|r| r.get(0)),
            )
            .collect()
    };

    // FOR TABLES IN SCHEMA is PostgreSQL 15's.
    let schemas = server_version(&mut su) >= 150000;
    for statement in [
        "CREATE PUBLICATION pub_orders FOR TABLE orders",
        "CREATE PUBLICATION pub_all FOR ALL TABLES",
        "CREATE PUBLICATION pub_public FOR TABLES IN SCHEMA public",
    ] {
        if schemas || !statement.contains("IN SCHEMA") {
            refuse(&mut su, statement, "orders");
        }
    }
    assert!(publications(&mut su).is_empty(), "refused: no publication may exist: {:?}", publications(&mut su));

    // Positive controls: publications without enabled tables.
    su.batch_execute("CREATE PUBLICATION pub_ref FOR TABLE countries").expect("publishing an exempt table is allowed");
    if schemas {
        su.batch_execute("CREATE PUBLICATION pub_refdata FOR TABLES IN SCHEMA refdata")
            .expect("a schema without enabled tables");
    }
    let before = publications(&mut su);
    for statement in [
        "ALTER PUBLICATION pub_ref ADD TABLE orders",
        "ALTER PUBLICATION pub_ref SET TABLE orders",
        "ALTER PUBLICATION pub_ref ADD TABLES IN SCHEMA public",
    ] {
        if !schemas && statement.contains("IN SCHEMA") {
            continue;
        }
        refuse(&mut su, statement, "orders");
        assert_eq!(publications(&mut su), before, "{statement}: refused, so the publication is unchanged");
    }

    su.batch_execute("SET multitenancy.ddl_guard = off").unwrap();
    su.batch_execute(if schemas {
        "CREATE PUBLICATION pub_orders FOR TABLE orders;
         CREATE PUBLICATION pub_all FOR ALL TABLES;
         CREATE PUBLICATION pub_public FOR TABLES IN SCHEMA public;
         ALTER PUBLICATION pub_ref ADD TABLE orders;"
    } else {
        "CREATE PUBLICATION pub_orders FOR TABLE orders;
         CREATE PUBLICATION pub_all FOR ALL TABLES;
         CREATE PUBLICATION pub_public FOR TABLE orders;
         ALTER PUBLICATION pub_ref ADD TABLE orders;"
    })
    .expect("with multitenancy.ddl_guard off a superuser may publish enabled tables");
    let after = publications(&mut su);
    for expected in ["pub_orders:orders", "pub_all:orders", "pub_public:orders", "pub_ref:orders"] {
        assert!(after.iter().any(|p| p == expected), "expected {expected} in {after:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7-8. Turning the guard off
// ---------------------------------------------------------------------------------------------

/// Only a superuser can turn the guard off or change the guarded schemas: the owner and the
/// application get 42501, and the back doors — a SET before the library is loaded, a connection
/// option, a role default — do not switch it off. A superuser can, and then the command is
/// allowed and logged.
#[test]
fn only_a_superuser_can_turn_the_guard_off() {
    let o = Orders::new("guard_off");
    let mut su = o.db.superuser();
    let before = table_snapshot(&mut su, "orders");

    for role in [OWNER, APP] {
        let mut client = o.db.connect(role);
        client.query_one("SELECT multitenancy.current_tenant_id_or_null()", &[]).unwrap(); // load the library
        for statement in [
            "SET multitenancy.ddl_guard = off",
            "SET LOCAL multitenancy.ddl_guard = off",
            "SELECT set_config('multitenancy.ddl_guard', 'off', false)",
            "SET multitenancy.guarded_schemas = ''",
        ] {
            let error = expect_sqlstate(client.batch_execute(statement), &SqlState::INSUFFICIENT_PRIVILEGE);
            assert!(
                error.message().contains("permission denied to set parameter"),
                "{role}: {statement}: expected PostgreSQL's permission error, got {:?}",
                error.message()
            );
        }
    }

    // Before the library is loaded, PostgreSQL may accept the SET as a placeholder; the guard
    // must still be on when the DDL runs.
    let mut owner = o.db.owner();
    let _ = owner.batch_execute("SET multitenancy.ddl_guard = off; SET multitenancy.guarded_schemas = ''");
    refuse(&mut owner, "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "\"public.orders\"");
    refuse(&mut owner, "CREATE TABLE sneaky (id int)", "public.sneaky");

    // Connection startup options (PGOPTIONS) of a non-superuser.
    let url = format!(
        "{} options='-c multitenancy.ddl_guard=off -c multitenancy.guarded_schemas=nothing'",
        o.db.server().url(&o.db.name, OWNER)
    );
    if let Ok(mut with_options) = Client::connect(&url, NoTls) {
        refuse(&mut with_options, "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "\"public.orders\"");
        refuse(&mut with_options, "CREATE TABLE sneaky (id int)", "public.sneaky");
    }

    // A role default the owner would give itself.
    let mut owner = o.db.owner();
    let result = owner
        .batch_execute(&format!("ALTER ROLE CURRENT_USER IN DATABASE {} SET multitenancy.ddl_guard = off", o.db.name));
    assert!(result.is_err(), "a non-superuser must not store a default for multitenancy.ddl_guard");
    let stored = count(
        &mut su,
        "SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%ddl_guard%'",
    );
    assert_eq!(stored, 0, "no default for multitenancy.ddl_guard was stored");
    expect_refused(o.db.owner().batch_execute("ALTER TABLE orders NO FORCE ROW LEVEL SECURITY"), "\"public.orders\"");
    assert_eq!(table_snapshot(&mut su, "orders"), before, "none of the attempts changed anything");
    assert!(!relation_exists(&mut su, "sneaky"), "none of the attempts created a table");

    // A superuser can; the skipped check is logged (LOG, from this backend).
    let pid: i32 = su.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    su.batch_execute("SET multitenancy.ddl_guard = off").expect("a superuser may turn the guard off");
    su.batch_execute("ALTER TABLE orders NO FORCE ROW LEVEL SECURITY").expect("with the guard off the DDL runs");
    assert!(table_snapshot(&mut su, "orders").contains("rls=t force=f"), "ground truth: FORCE was switched off");
    let log = std::fs::read_to_string(o.db.server().log_path()).unwrap();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains(&format!("[{pid}]")) && l.contains("LOG:")).collect();
    assert!(
        ours.iter().any(|l| l.to_lowercase().contains("guard")),
        "expected a LOG line from backend {pid} about the command the guard skipped; its LOG lines: {ours:#?}"
    );
}

/// The event triggers fire whatever `session_replication_role` says (ENABLE ALWAYS): a superuser
/// in replica mode is still refused.
#[test]
fn replica_mode_does_not_skip_the_guard() {
    let o = Orders::new("guard_replica");
    let mut su = o.db.superuser();
    let before = table_snapshot(&mut su, "orders");
    let mut replica = o.db.superuser();
    replica.batch_execute("SET session_replication_role = replica").unwrap();
    refuse(&mut replica, "ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", "\"public.orders\"");
    refuse(&mut replica, "CREATE TABLE replicated (id int)", "public.replicated");
    assert_eq!(table_snapshot(&mut su, "orders"), before, "refused in replica mode: nothing changed");
    assert!(!relation_exists(&mut su, "replicated"), "refused in replica mode: no table");
}

// ---------------------------------------------------------------------------------------------
// Exemptions
// ---------------------------------------------------------------------------------------------

/// `tenant_exempt` / `tenant_unexempt`: a table is enabled or exempt, never both (55000 either
/// way, nothing changed); a reason is required (22023); applications cannot call them (42501);
/// dropping an exempt table forgets it.
#[test]
fn exemptions_are_explicit_exclusive_and_for_migrations_only() {
    let o = Orders::new("guard_exempt");
    let mut su = o.db.superuser();
    let mut owner = o.db.owner();
    create_exempt_countries(&mut owner);
    let orders_before = table_snapshot(&mut su, "orders");
    let countries_before = table_snapshot(&mut su, "countries");

    let error = expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_exempt('orders', 'shared')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(
        error.message().contains("enabled"),
        "expected the refusal to say the table is tenant-enabled: {:?}",
        error.message()
    );
    assert!(!is_exempt(&mut su, "orders"), "an enabled table must not become exempt");
    assert_eq!(table_snapshot(&mut su, "orders"), orders_before, "refused: orders unchanged");
    // With backfill_tenant, so that the rows in countries are not the reason for the refusal.
    let error = expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_enable('countries', $1::text::uuid)", &[&o.a]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(
        error.message().contains("exempt"),
        "expected the refusal to say the table is exempt: {:?}",
        error.message()
    );
    assert!(!is_enabled(&mut su, "countries"), "an exempt table must not become enabled");
    assert_eq!(table_snapshot(&mut su, "countries"), countries_before, "refused: countries unchanged");

    o.db.legacy("CREATE TABLE colors (name text)");
    expect_sqlstate(
        owner.execute("SELECT multitenancy.tenant_exempt('colors', '')", &[]),
        &SqlState::INVALID_PARAMETER_VALUE,
    );
    assert!(!is_exempt(&mut su, "colors"), "an exemption needs a reason");

    let mut app = o.db.app();
    expect_sqlstate(
        app.execute("SELECT multitenancy.tenant_exempt('colors', 'x')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    expect_sqlstate(
        app.execute("SELECT multitenancy.tenant_unexempt('countries')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert!(is_exempt(&mut su, "countries") && !is_exempt(&mut su, "colors"), "the application changed nothing");

    // Positive controls: exempt, unexempt, then enable.
    owner.execute("SELECT multitenancy.tenant_exempt('colors', 'palette')", &[]).unwrap();
    assert!(is_exempt(&mut su, "colors"));
    owner.execute("SELECT multitenancy.tenant_unexempt('colors')", &[]).unwrap();
    assert!(!is_exempt(&mut su, "colors"), "tenant_unexempt removes the registry row");
    owner.execute("SELECT multitenancy.tenant_enable('colors')", &[]).expect("a table no longer exempt can be enabled");
    assert!(is_enabled(&mut su, "colors"));

    owner.batch_execute("DROP TABLE countries").unwrap();
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM multitenancy.exempt_tables"),
        0,
        "a dropped table leaves the registry"
    );
}
