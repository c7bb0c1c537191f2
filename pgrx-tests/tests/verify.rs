//! `multitenancy.verify()`: empty on a healthy database, and one row (severity, object, problem,
//! fix) for every way tenant data can be left unprotected. Each problem is created by a
//! superuser with `multitenancy.ddl_guard` off (the guard would refuse it), and each test first
//! checks that verify() did not report it before — so a row cannot come from something else.
//!
//! Roles are cluster-wide: the test that creates BYPASSRLS / SUPERUSER roles and the tests that
//! expect no role problems at all are serialised with [`ROLES`] (every test of this binary
//! shares one server; other binaries have their own).
use multitenancy_integration::*;
use std::sync::{Mutex, MutexGuard};

static ROLES: Mutex<()> = Mutex::new(());

fn roles_lock() -> MutexGuard<'static, ()> {
    ROLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rows whose object contains `object` and whose problem (or object) contains `problem`
/// (case-insensitively).
fn matching<'a>(problems: &'a [Problem], object: &str, problem: &str) -> Vec<&'a Problem> {
    problems
        .iter()
        .filter(|p| p.object.contains(object))
        .filter(|p| {
            let text = format!("{} {}", p.object, p.problem).to_lowercase();
            problem.to_lowercase().split('|').all(|needle| text.contains(needle))
        })
        .collect()
}

/// verify() reports `problem` (`|` separates substrings that must all appear) on `object`,
/// with `severity` when given, and a fix; returns the matching rows.
#[track_caller]
fn assert_reported<'a>(
    problems: &'a [Problem],
    severity: Option<&str>,
    object: &str,
    problem: &str,
) -> Vec<&'a Problem> {
    let found = matching(problems, object, problem);
    assert!(!found.is_empty(), "expected verify() to report {problem:?} on {object:?}; it returned {problems:#?}");
    for row in &found {
        assert!(
            row.severity == "error" || row.severity == "warning",
            "expected severity 'error' or 'warning', got {row:?}"
        );
        if let Some(severity) = severity {
            assert_eq!(row.severity, severity, "expected severity {severity} for {row:?}");
        }
        assert!(!row.fix.trim().is_empty(), "expected a fix for {row:?}");
    }
    found
}

#[track_caller]
fn assert_not_reported(problems: &[Problem], object: &str, problem: &str) {
    let found = matching(problems, object, problem);
    assert!(found.is_empty(), "expected verify() not to report {problem:?} on {object:?} (yet); found {found:#?}");
}

// ---------------------------------------------------------------------------------------------
// Healthy databases
// ---------------------------------------------------------------------------------------------

/// A fresh database with the extension, and one with enabled tables (plain, partitioned, with
/// hardened constraints and a security_invoker view), an exempt table and the application's
/// grants, verifies clean: no row at all.
#[test]
fn a_healthy_database_verifies_clean() {
    let _roles = roles_lock();
    let fresh = TestDb::new("verify_fresh");
    assert_eq!(fresh.verify(), [], "expected no problems right after CREATE EXTENSION");

    let o = Orders::new("verify_clean");
    let mut owner = o.db.owner();
    let invoker = invoker(&mut owner);
    owner
        .batch_execute(&format!(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_exempt('countries', 'reference data shared by all tenants');
             CREATE TABLE events (id int NOT NULL, at date NOT NULL, note text) PARTITION BY RANGE (at);
             CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             SELECT multitenancy.tenant_enable('events');
             CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, country text REFERENCES countries (code));
             SELECT multitenancy.tenant_enable('customers');
             CREATE TABLE invoices (id int PRIMARY KEY, customer_id int REFERENCES customers (id));
             SELECT multitenancy.tenant_enable('invoices');
             CREATE VIEW orders_report{invoker} AS SELECT * FROM orders;
             GRANT SELECT, INSERT, UPDATE, DELETE ON events, customers, invoices TO {APP};
             GRANT SELECT ON countries, orders_report TO {APP};"
        ))
        .unwrap();
    assert_eq!(o.db.verify(), [], "expected no problems on a database the extension built");
}

/// Tables that existed before CREATE EXTENSION keep working as they did (the owner reads and
/// writes them; none is enabled behind its back), and verify() lists each as a warning — neither
/// tenant-enabled nor exempt — until a migration enables or exempts it.
#[test]
fn tables_from_before_the_extension_keep_working_and_are_reported() {
    let _roles = roles_lock();
    let db = TestDb::with_setup(
        "verify_existing",
        &format!(
            "SET ROLE {OWNER};
             CREATE TABLE pre_customers (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO pre_customers VALUES (1, 'one'), (2, 'two');
             CREATE TABLE pre_empty (id int);
             CREATE TABLE pre_tenanted (id int, tenant_id uuid);
             INSERT INTO pre_tenanted VALUES (1, NULL);
             RESET ROLE;"
        ),
    );
    let a = db.tenant("Acme", "acme");
    let mut su = db.superuser();
    let mut owner = db.owner();
    owner.execute("INSERT INTO pre_customers VALUES (3, 'three')", &[]).expect("the owner still writes its table");
    owner.execute("UPDATE pre_customers SET name = 'uno' WHERE id = 1", &[]).unwrap();
    owner
        .execute("INSERT INTO pre_tenanted VALUES (2, NULL)", &[])
        .expect("no tenant rule was imposed on an old table");
    assert_eq!(count(&mut owner, "SELECT count(*) FROM pre_customers"), 3, "the owner sees every row, as before");
    for table in ["pre_customers", "pre_empty", "pre_tenanted"] {
        assert!(!is_enabled(&mut su, table), "{table} must not be enabled by CREATE EXTENSION");
    }

    let problems = db.verify();
    for table in ["public.pre_customers", "public.pre_empty", "public.pre_tenanted"] {
        assert_reported(&problems, Some("warning"), table, "neither tenant-enabled nor exempt");
    }
    let errors: Vec<&Problem> = problems.iter().filter(|p| p.severity == "error").collect();
    assert!(errors.is_empty(), "expected only warnings for tables that merely predate the extension, got {errors:#?}");

    // The migration path: enable one (its rows go to tenant A), exempt another.
    owner.execute("SELECT multitenancy.tenant_enable('pre_customers', $1::text::uuid)", &[&a]).unwrap();
    owner.execute("SELECT multitenancy.tenant_exempt('pre_empty', 'legacy, unused')", &[]).unwrap();
    let problems = db.verify();
    assert_not_reported(&problems, "pre_customers", "");
    assert_not_reported(&problems, "pre_empty", "");
    assert_reported(&problems, Some("warning"), "public.pre_tenanted", "neither tenant-enabled nor exempt");
}

// ---------------------------------------------------------------------------------------------
// a. The protected shape of enabled tables
// ---------------------------------------------------------------------------------------------

/// An enabled table whose row level security was disabled or not forced, or whose isolation
/// policy was dropped or altered, is an error.
#[test]
fn verify_reports_weakened_row_level_security_and_policies() {
    let db = TestDb::new("verify_rls");
    let tables = ["w_noforce", "w_disabled", "w_nopolicy", "w_altered"];
    let sql: String = tables
        .iter()
        .map(|t| format!("CREATE TABLE {t} (id int PRIMARY KEY, v text); SELECT multitenancy.tenant_enable('{t}');"))
        .collect();
    db.owner().batch_execute(&sql).unwrap();
    let cases = [
        ("public.w_noforce", "not forced"),
        ("public.w_disabled", "row level security is disabled"),
        ("public.w_nopolicy", "policy multitenancy_isolation is missing"),
        ("public.w_altered", "differs from the canonical one"),
    ];
    let before = db.verify();
    for (object, problem) in cases {
        assert_not_reported(&before, object, problem);
    }

    db.unguarded(
        "ALTER TABLE w_noforce NO FORCE ROW LEVEL SECURITY;
         ALTER TABLE w_disabled DISABLE ROW LEVEL SECURITY;
         DROP POLICY multitenancy_isolation ON w_nopolicy;
         ALTER POLICY multitenancy_isolation ON w_altered USING (true);",
    );
    let after = db.verify();
    for (object, problem) in cases {
        assert_reported(&after, Some("error"), object, problem);
    }
}

/// An enabled table without a btree index that has tenant_id first is an error (every tenant
/// query would scan the table). The table has no primary key, so no UNIQUE (tenant_id, ...)
/// constraint stands in for the index.
#[test]
fn verify_reports_a_missing_tenant_index() {
    let db = TestDb::new("verify_index");
    db.owner().batch_execute("CREATE TABLE w_logs (msg text); SELECT multitenancy.tenant_enable('w_logs');").unwrap();
    assert_not_reported(&db.verify(), "public.w_logs", "no valid btree index");
    let indexes: Vec<String> = db
        .superuser()
        .query("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'w_logs'::regclass", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!indexes.is_empty(), "precondition: tenant_enable built an index on w_logs");
    db.unguarded(&indexes.iter().map(|i| format!("DROP INDEX {i};")).collect::<String>());
    assert_reported(&db.verify(), Some("error"), "public.w_logs", "no valid btree index");
}

// ---------------------------------------------------------------------------------------------
// b. Unprotected tables
// ---------------------------------------------------------------------------------------------

/// A table in a guarded schema that is neither enabled nor exempt is a warning; exempt tables
/// and tables in other schemas are not reported.
#[test]
fn verify_warns_about_unprotected_tables_in_guarded_schemas() {
    let db = TestDb::new("verify_unprotected");
    db.superuser().batch_execute(&format!("CREATE SCHEMA scratch AUTHORIZATION {OWNER}")).unwrap();
    db.owner()
        .batch_execute(
            "CREATE TABLE scratch.free (id int);
             CREATE TABLE countries (code text PRIMARY KEY);
             SELECT multitenancy.tenant_exempt('countries', 'reference data');",
        )
        .unwrap();
    assert_not_reported(&db.verify(), "w_legacy", "");
    db.legacy("CREATE TABLE w_legacy (id int, body text)");
    let problems = db.verify();
    assert_reported(&problems, Some("warning"), "public.w_legacy", "neither tenant-enabled nor exempt");
    assert_not_reported(&problems, "countries", "");
    assert_not_reported(&problems, "scratch.free", "");
}

// ---------------------------------------------------------------------------------------------
// c-d. Constraints
// ---------------------------------------------------------------------------------------------

/// A unique constraint without tenant_id on an enabled table (a cross-tenant oracle), and a
/// foreign key between enabled tables without tenant_id (one tenant can reference another's
/// rows), are reported.
#[test]
fn verify_reports_unique_constraints_and_foreign_keys_without_tenant_id() {
    let db = TestDb::new("verify_constraints");
    db.owner()
        .batch_execute(
            "CREATE TABLE w_users (id int PRIMARY KEY, email text);
             SELECT multitenancy.tenant_enable('w_users');
             CREATE TABLE w_parents (id int PRIMARY KEY);
             SELECT multitenancy.tenant_enable('w_parents');
             CREATE TABLE w_children (id int PRIMARY KEY, parent_id int);
             SELECT multitenancy.tenant_enable('w_children');",
        )
        .unwrap();
    let before = db.verify();
    assert_not_reported(&before, "w_users", "does not include tenant_id");
    assert_not_reported(&before, "w_children", "foreign key|without tenant_id");

    db.unguarded(
        "ALTER TABLE w_users ADD CONSTRAINT w_users_email_key UNIQUE (email);
         ALTER TABLE w_children ADD CONSTRAINT w_children_plain_fk FOREIGN KEY (parent_id) REFERENCES w_parents (id);",
    );
    let after = db.verify();
    assert_reported(&after, None, "w_users", "does not include tenant_id");
    assert_reported(&after, None, "w_children", "foreign key|without tenant_id");
}

// ---------------------------------------------------------------------------------------------
// e. Partitions
// ---------------------------------------------------------------------------------------------

/// A partition of an enabled table that is not protected itself (readable directly, without
/// policies) is an error.
#[test]
fn verify_reports_an_unprotected_partition() {
    let db = TestDb::new("verify_partition");
    db.owner()
        .batch_execute(
            "CREATE TABLE w_events (id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
             SELECT multitenancy.tenant_enable('w_events');",
        )
        .unwrap();
    assert_not_reported(&db.verify(), "w_events_2026", "partition of tenant-enabled table");
    db.unguarded("CREATE TABLE w_events_2026 PARTITION OF w_events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')");
    assert!(!is_enabled(&mut db.superuser(), "w_events_2026"), "precondition: with the guard off it was not enabled");
    assert_reported(&db.verify(), Some("error"), "w_events_2026", "partition of tenant-enabled table");
}

// ---------------------------------------------------------------------------------------------
// f. Views
// ---------------------------------------------------------------------------------------------

/// A view over an enabled table that is not security_invoker, and a materialized view over one,
/// are reported; a security_invoker view is not.
#[test]
fn verify_reports_definer_views_and_materialized_views() {
    let _roles = roles_lock(); // asserts an empty verify()
    let o = Orders::new("verify_views");
    let mut owner = o.db.owner();
    let invoker = invoker(&mut owner);
    owner.batch_execute(&format!("CREATE VIEW w_invoker{invoker} AS SELECT * FROM orders")).unwrap();
    let before = o.db.verify();
    assert_eq!(before, [], "precondition: nothing to report");

    o.db.unguarded(
        "CREATE VIEW w_report AS SELECT * FROM orders;
         CREATE MATERIALIZED VIEW w_snapshot AS SELECT * FROM orders;",
    );
    let after = o.db.verify();
    // Created by the superuser: not security_invoker (on 14: reading as a superuser).
    let problem = if invoker.is_empty() { "as its owner, a superuser" } else { "not security_invoker" };
    assert_reported(&after, None, "w_report", problem);
    assert_reported(&after, None, "w_snapshot", "materialized view");
    assert_not_reported(&after, "w_invoker", "");
}

// ---------------------------------------------------------------------------------------------
// g. Publications
// ---------------------------------------------------------------------------------------------

/// A publication that includes an enabled table is reported under the publication's name; one
/// of an exempt table is not.
#[test]
fn verify_reports_publications_of_enabled_tables() {
    let _roles = roles_lock(); // asserts an empty verify()
    let o = Orders::new("verify_publications");
    o.db.owner()
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY);
             SELECT multitenancy.tenant_exempt('countries', 'reference data');",
        )
        .unwrap();
    o.db.superuser().batch_execute("CREATE PUBLICATION w_pub_ref FOR TABLE countries").unwrap();
    assert_eq!(o.db.verify(), [], "precondition: a publication of an exempt table is fine");

    o.db.unguarded("CREATE PUBLICATION w_pub_orders FOR TABLE orders");
    let problems = o.db.verify();
    let rows = assert_reported(&problems, None, "w_pub_orders", "publishes tenant-enabled table");
    assert!(rows.iter().any(|r| r.object == "w_pub_orders"), "expected the object to be the publication: {rows:#?}");
    assert_not_reported(&problems, "w_pub_ref", "");
}

// ---------------------------------------------------------------------------------------------
// h. Roles
// ---------------------------------------------------------------------------------------------

/// Drops the roles a test created (and their privileges in its database), even when it fails.
struct DropRoles<'a>(&'a TestDb, Vec<String>);

impl Drop for DropRoles<'_> {
    fn drop(&mut self) {
        let mut su = self.0.superuser();
        for role in &self.1 {
            let _ = su.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"));
        }
    }
}

/// Login roles that bypass row level security — BYPASSRLS or SUPERUSER — and can read an enabled
/// table are reported by name; the bootstrap superuser and the test's ordinary roles are not.
#[test]
fn verify_reports_login_roles_that_bypass_row_level_security() {
    let _roles = roles_lock();
    let o = Orders::new("verify_roles");
    let db = &o.db;
    let bypass = format!("mt_verify_bypass_{}", std::process::id());
    let superuser = format!("mt_verify_super_{}", std::process::id());
    let before = db.verify();
    assert_not_reported(&before, &bypass, "");
    assert_not_reported(&before, &superuser, "");

    let _cleanup = DropRoles(db, vec![bypass.clone(), superuser.clone()]);
    db.superuser()
        .batch_execute(&format!(
            "CREATE ROLE {bypass} LOGIN BYPASSRLS; CREATE ROLE {superuser} LOGIN SUPERUSER;
             GRANT SELECT ON orders TO {bypass};"
        ))
        .unwrap();
    // Ground truth: the BYPASSRLS role really reads every tenant's rows.
    let seen = count(&mut db.connect(&bypass), "SELECT count(*) FROM orders");
    assert_eq!(seen, o.rows_a + o.rows_b, "precondition: {bypass} reads all tenants' rows without a context");

    let problems = db.verify();
    let rows = assert_reported(&problems, None, &bypass, "BYPASSRLS");
    assert!(rows.iter().any(|r| r.object == bypass), "expected the object to be the role name: {rows:#?}");
    let rows = assert_reported(&problems, None, &superuser, "SUPERUSER");
    assert!(rows.iter().any(|r| r.object == superuser), "expected the object to be the role name: {rows:#?}");
    for role in [SUPERUSER, APP, OWNER] {
        let reported: Vec<&Problem> = problems.iter().filter(|p| p.object == role).collect();
        assert!(reported.is_empty(), "expected {role} never to be reported, found {reported:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// i-j. Privileges and the guard itself
// ---------------------------------------------------------------------------------------------

/// TRUNCATE on an enabled table granted to a role other than the owner (it empties every
/// tenant's rows without row level security) is reported.
#[test]
fn verify_reports_truncate_granted_on_an_enabled_table() {
    let o = Orders::new("verify_truncate");
    // The object may be the table or the grantee: the row must mention TRUNCATE and orders.
    let truncate_rows = |problems: &[Problem]| -> Vec<Problem> {
        problems
            .iter()
            .filter(|p| p.problem.contains("TRUNCATE") && format!("{} {}", p.object, p.problem).contains("orders"))
            .cloned()
            .collect()
    };
    assert_eq!(truncate_rows(&o.db.verify()), [], "precondition: tenant_enable left no TRUNCATE grant");
    o.db.unguarded(&format!("GRANT TRUNCATE ON orders TO {APP}"));
    let problems = o.db.verify();
    let found = truncate_rows(&problems);
    assert!(!found.is_empty(), "expected verify() to report TRUNCATE granted on orders; it returned {problems:#?}");
    assert!(found.iter().all(|p| !p.fix.trim().is_empty()), "expected a fix: {found:#?}");
}

/// A disabled guard event trigger is an error: nothing would stop the next unprotected table.
#[test]
fn verify_reports_a_disabled_event_trigger() {
    let db = TestDb::new("verify_event_trigger");
    assert_not_reported(&db.verify(), "", "event trigger");
    db.superuser().batch_execute("ALTER EVENT TRIGGER multitenancy_guard_ddl DISABLE").unwrap();
    let problems = db.verify();
    let rows = assert_reported(&problems, Some("error"), "", "event trigger");
    assert!(
        rows.iter().any(|r| format!("{} {}", r.object, r.problem).contains("multitenancy_guard_ddl")),
        "expected the row to name multitenancy_guard_ddl: {rows:#?}"
    );
}
