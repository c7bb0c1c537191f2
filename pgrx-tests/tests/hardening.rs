//! Constraint and privilege hardening: on enabled tables, unique constraints and foreign keys
//! include `tenant_id`, so that neither reveals another tenant's values to [`APP`] (no oracle),
//! and privileges that bypass row level security (TRUNCATE, TRIGGER, REFERENCES) are not held by
//! anyone but the owner.
//!
//! The catalog shape is asserted as the superuser; the guarantees themselves are shown as
//! [`APP`] (NOSUPERUSER, NOBYPASSRLS) against the ground truth, with positive controls.
use multitenancy_integration::*;

/// The definition of one index, by name.
fn index_def(su: &mut Client, index: &str) -> String {
    su.query_one("SELECT pg_get_indexdef($1::text::regclass)", &[&index])
        .unwrap_or_else(|e| panic!("expected index {index} to exist: {e}"))
        .get(0)
}

/// `true` when `grantee` holds `privilege` on `table` (PostgreSQL's own check).
fn has(su: &mut Client, grantee: &str, table: &str, privilege: &str) -> bool {
    su.query_one("SELECT has_table_privilege($1::text::name, $2::text, $3::text)", &[&grantee, &table, &privilege])
        .unwrap()
        .get(0)
}

/// Privileges granted to PUBLIC on `table`, from its ACL.
fn public_privileges(su: &mut Client, table: &str) -> Vec<String> {
    su.query(
        "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
          WHERE c.oid = $1::text::regclass AND a.grantee = 0 ORDER BY 1",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Replace every standalone number `id` (a run of letters and digits equal to it, so never a
/// piece of a uuid) with `<id>`: two error texts about different ids compare equal when the
/// server said the same thing about both.
fn normalise(text: &str, id: &str) -> String {
    let mut out = String::new();
    let mut token = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_alphanumeric() {
            token.push(c);
            continue;
        }
        out.push_str(if token == id { "<id>" } else { &token });
        token.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Unique constraints and indexes
// ---------------------------------------------------------------------------------------------

/// tenant_enable rebuilds unique constraints and unique indexes without tenant_id with tenant_id
/// leading, under the same name; the primary key stays as it is and gets a
/// `UNIQUE (tenant_id, <pk>)` twin (what composite foreign keys reference).
#[test]
fn tenant_enable_puts_tenant_id_into_unique_constraints_and_indexes() {
    let db = TestDb::new("hardening_unique");
    db.owner()
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, handle text,
                                 CONSTRAINT users_email_key UNIQUE (email));
             CREATE UNIQUE INDEX users_handle_idx ON users (handle);
             SELECT multitenancy.tenant_enable('users');",
        )
        .unwrap();
    let mut su = db.superuser();

    let uniques = constraints(&mut su, "users", "u");
    assert!(
        uniques.contains(&("users_email_key".into(), "UNIQUE (tenant_id, email)".into())),
        "expected users_email_key rebuilt as UNIQUE (tenant_id, email), found {uniques:?}"
    );
    assert!(
        uniques.iter().any(|(_, def)| def == "UNIQUE (tenant_id, id)"),
        "expected a UNIQUE (tenant_id, id) twin of the primary key, found {uniques:?}"
    );
    assert_eq!(
        constraints(&mut su, "users", "p"),
        [("users_pkey".to_string(), "PRIMARY KEY (id)".to_string())],
        "expected the primary key unchanged"
    );
    let handle = index_def(&mut su, "users_handle_idx");
    assert!(
        handle.starts_with("CREATE UNIQUE INDEX users_handle_idx") && handle.ends_with("(tenant_id, handle)"),
        "expected users_handle_idx rebuilt as a unique index on (tenant_id, handle), found {handle}"
    );
}

/// A unique constraint or unique index added later to an enabled table — ADD CONSTRAINT, a
/// column added with UNIQUE, CREATE UNIQUE INDEX — gets tenant_id too: ADD CONSTRAINT and
/// CREATE UNIQUE INDEX are built with it from the start (no rebuild, no NOTICE), a column added
/// with UNIQUE is rebuilt with a NOTICE.
#[test]
fn unique_constraints_added_later_get_tenant_id_too() {
    let db = TestDb::new("hardening_unique_later");
    db.owner()
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, handle text);
             SELECT multitenancy.tenant_enable('users');",
        )
        .unwrap();
    let mut su = db.superuser();
    let (mut owner, notices) = db.connect_with_notices(OWNER);

    owner.batch_execute("ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email)").unwrap();
    let said = notices.take();
    assert!(
        !said.iter().any(|n| n.contains("users_email_key")),
        "users_email_key is built with tenant_id from the start, nothing to rebuild: {said:?}"
    );
    owner.batch_execute("ALTER TABLE users ADD COLUMN code text CONSTRAINT users_code_key UNIQUE").unwrap();
    let said = notices.take();
    assert!(
        said.iter().any(|n| n.contains("users_code_key")),
        "expected a NOTICE about rebuilding users_code_key, got {said:?}"
    );
    owner.batch_execute("CREATE UNIQUE INDEX users_handle_idx ON users (handle)").unwrap();

    let uniques = constraints(&mut su, "users", "u");
    for expected in [("users_email_key", "UNIQUE (tenant_id, email)"), ("users_code_key", "UNIQUE (tenant_id, code)")] {
        assert!(
            uniques.iter().any(|(n, d)| n == expected.0 && d == expected.1),
            "expected {} rebuilt as {}, found {uniques:?}",
            expected.0,
            expected.1
        );
    }
    let handle = index_def(&mut su, "users_handle_idx");
    assert!(
        handle.ends_with("(tenant_id, handle)"),
        "expected users_handle_idx on (tenant_id, handle), found {handle}"
    );
}

/// An email that tenant B uses can be used by tenant A: the unique constraint neither blocks A
/// nor tells A that the value exists. A duplicate inside A is still a unique violation.
#[test]
fn a_unique_value_of_another_tenant_neither_blocks_nor_reveals() {
    let db = TestDb::new("hardening_unique_oracle");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
             SELECT multitenancy.tenant_enable('users');
             GRANT SELECT, INSERT ON users TO {APP};"
        ))
        .unwrap();
    let mut app = db.app();
    let insert = "INSERT INTO users (id, email) VALUES ($1, 'ceo@example.com')";

    let mut tx = begin_as(&mut app, "globex");
    tx.execute(insert, &[&1]).unwrap();
    tx.commit().unwrap();

    let mut tx = begin_as(&mut app, "acme");
    tx.execute(insert, &[&2]).expect("A may use an email B uses: no unique violation, nothing revealed");
    tx.commit().unwrap();

    // Positive control: the constraint still works within a tenant.
    let mut tx = begin_as(&mut app, "acme");
    expect_sqlstate(tx.execute(insert, &[&3]), &SqlState::UNIQUE_VIOLATION);
    drop(tx);

    let mut su = db.superuser();
    let owners: Vec<String> = su
        .query("SELECT tenant_id::text FROM users WHERE email = 'ceo@example.com' ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, [b, a], "ground truth: the email exists once for B and once for A");
}

// ---------------------------------------------------------------------------------------------
// Foreign keys
// ---------------------------------------------------------------------------------------------

const COMPOSITE: &str = "FOREIGN KEY (tenant_id, parent_id) REFERENCES";

#[track_caller]
fn assert_composite_fk(su: &mut Client, child: &str, parent: &str) {
    let fks = constraints(su, child, "f");
    let expected = format!("{COMPOSITE} {parent}(tenant_id, id)");
    assert!(
        !fks.is_empty() && fks.iter().all(|(_, def)| def.starts_with(&expected)),
        "expected every foreign key of {child} to be {expected}, found {fks:?}"
    );
}

/// Foreign keys between enabled tables become `(tenant_id, parent_id) REFERENCES parent
/// (tenant_id, id)` whatever the order of enabling — parent first, child first, in separate
/// transactions — and when added later (ALTER TABLE ... ADD CONSTRAINT / ADD COLUMN ...
/// REFERENCES, or a new table enabled automatically at CREATE). Foreign keys to tables that are
/// not enabled stay as they are.
#[test]
fn foreign_keys_between_enabled_tables_include_tenant_id() {
    let db = TestDb::new("hardening_fk_shape");
    let mut su = db.superuser();
    let mut owner = db.owner();

    owner
        .batch_execute(
            "CREATE TABLE p1 (id int PRIMARY KEY);
             SELECT multitenancy.tenant_enable('p1');
             CREATE TABLE c1 (id int PRIMARY KEY, parent_id int REFERENCES p1 (id));
             SELECT multitenancy.tenant_enable('c1');",
        )
        .unwrap();
    assert_composite_fk(&mut su, "c1", "p1");

    owner
        .batch_execute(
            "CREATE TABLE p2 (id int PRIMARY KEY);
             CREATE TABLE c2 (id int PRIMARY KEY, parent_id int REFERENCES p2 (id));
             SELECT multitenancy.tenant_enable('c2');
             SELECT multitenancy.tenant_enable('p2');",
        )
        .unwrap();
    assert_composite_fk(&mut su, "c2", "p2");

    db.legacy(
        "CREATE TABLE p3 (id int PRIMARY KEY); CREATE TABLE c3 (id int PRIMARY KEY, parent_id int REFERENCES p3 (id));",
    );
    owner.execute("SELECT multitenancy.tenant_enable('c3')", &[]).unwrap();
    owner.execute("SELECT multitenancy.tenant_enable('p3')", &[]).unwrap();
    assert_composite_fk(&mut su, "c3", "p3");

    owner
        .batch_execute(
            "CREATE TABLE c4 (id int PRIMARY KEY, parent_id int);
             SELECT multitenancy.tenant_enable('c4');",
        )
        .unwrap();
    // A foreign key added later to enabled (FORCE RLS) tables, as a migration writes it, by the
    // owner without a tenant context: built composite from the start, and its validation of the
    // existing rows (a query PostgreSQL runs as the owner) is not filtered by FORCE (issue 17).
    owner
        .batch_execute("ALTER TABLE c4 ADD CONSTRAINT c4_parent_fk FOREIGN KEY (parent_id) REFERENCES p1 (id)")
        .unwrap();
    assert_composite_fk(&mut su, "c4", "p1");
    // NOT VALID, then VALIDATE by the owner, works the same way.
    owner.batch_execute("ALTER TABLE c4 DROP CONSTRAINT c4_parent_fk").unwrap();
    owner
        .batch_execute(
            "ALTER TABLE c4 ADD CONSTRAINT c4_parent_fk FOREIGN KEY (parent_id) REFERENCES p1 (id) NOT VALID",
        )
        .unwrap();
    assert_composite_fk(&mut su, "c4", "p1");
    owner.batch_execute("ALTER TABLE c4 VALIDATE CONSTRAINT c4_parent_fk").unwrap();
    assert_composite_fk(&mut su, "c4", "p1");
    let names: Vec<String> = constraints(&mut su, "c4", "f").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["c4_parent_fk"], "expected the foreign key to keep its name");

    owner
        .batch_execute("CREATE TABLE c5 (id int PRIMARY KEY, tenant_id uuid, parent_id int REFERENCES p1 (id))")
        .unwrap();
    assert!(is_enabled(&mut su, "c5"), "c5 has a tenant_id uuid column: enabled at CREATE");
    assert_composite_fk(&mut su, "c5", "p1");

    owner
        .batch_execute(
            "CREATE TABLE c6 (id int PRIMARY KEY);
             SELECT multitenancy.tenant_enable('c6');",
        )
        .unwrap();
    owner.batch_execute("ALTER TABLE c6 ADD COLUMN parent_id int REFERENCES p2 (id)").unwrap();
    assert_composite_fk(&mut su, "c6", "p2");

    // Positive control: a foreign key to a table that is not enabled (an exempt one) is left alone.
    owner
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY);
             SELECT multitenancy.tenant_exempt('countries', 'reference data');
             CREATE TABLE addresses (id int PRIMARY KEY, country text REFERENCES countries (code));
             SELECT multitenancy.tenant_enable('addresses');",
        )
        .unwrap();
    let fks = constraints(&mut su, "addresses", "f");
    assert_eq!(fks.len(), 1, "expected one foreign key on addresses, found {fks:?}");
    assert_eq!(
        fks[0].1, "FOREIGN KEY (country) REFERENCES countries(code)",
        "expected the FK to an exempt table unchanged"
    );
}

/// Tenant A referencing tenant B's parent row fails exactly like referencing a row that never
/// existed — same SQLSTATE, same message, same detail once the id is normalised — so a foreign
/// key is no oracle for other tenants' ids. Positive controls: A referencing its own parent
/// works, and so does B referencing its own.
#[test]
fn a_foreign_key_reveals_nothing_about_another_tenants_rows() {
    let db = TestDb::new("hardening_fk_oracle");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE parents (id int PRIMARY KEY);
             CREATE TABLE children (id int PRIMARY KEY, parent_id int REFERENCES parents (id));
             SELECT multitenancy.tenant_enable('parents');
             SELECT multitenancy.tenant_enable('children');
             GRANT SELECT, INSERT, UPDATE, DELETE ON parents, children TO {APP};"
        ))
        .unwrap();
    let mut app = db.app();
    let mut tx = begin_as(&mut app, "globex");
    tx.batch_execute("INSERT INTO parents (id) VALUES (100); INSERT INTO children (id, parent_id) VALUES (1, 100)")
        .unwrap();
    tx.commit().expect("positive control: B references its own parent");
    let mut tx = begin_as(&mut app, "acme");
    tx.batch_execute("INSERT INTO parents (id) VALUES (1)").unwrap();
    tx.commit().unwrap();

    let mut su = db.superuser();
    let parent_100: String = su.query_one("SELECT tenant_id::text FROM parents WHERE id = 100", &[]).unwrap().get(0);
    assert_eq!(parent_100, b, "ground truth: parent 100 exists and is B's");
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM parents WHERE id = 999"),
        0,
        "ground truth: parent 999 never existed"
    );

    let attempt = |app: &mut Client, child: i32, parent: i32| -> DbError {
        let mut tx = begin_as(app, "acme");
        expect_sqlstate(
            tx.execute("INSERT INTO children (id, parent_id) VALUES ($1, $2)", &[&child, &parent]),
            &SqlState::FOREIGN_KEY_VIOLATION,
        )
    };
    let others = attempt(&mut app, 10, 100);
    let nobodys = attempt(&mut app, 11, 999);
    assert_eq!(
        normalise(others.message(), "100"),
        normalise(nobodys.message(), "999"),
        "A referencing B's parent must read exactly like referencing a parent that does not exist"
    );
    assert_eq!(
        others.detail().map(|d| normalise(d, "100")),
        nobodys.detail().map(|d| normalise(d, "999")),
        "the details must not differ either"
    );
    assert_eq!(others.hint(), nobodys.hint(), "nor the hints");

    let mut tx = begin_as(&mut app, "acme");
    tx.execute("INSERT INTO children (id, parent_id) VALUES (12, 1)", &[])
        .expect("positive control: A references its own parent");
    tx.commit().unwrap();
    let children: Vec<(i32, i32, String)> = su
        .query("SELECT id, parent_id, tenant_id::text FROM children ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(children, [(1, 100, b), (12, 1, a)], "ground truth: only the two legitimate children exist");
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// TRUNCATE empties a table without row level security (and TRIGGER and REFERENCES run code or
/// checks outside it): tenant_enable revokes them from every grantee but the owner, including
/// PUBLIC, and a later GRANT (ALL, or the privileges by name, by the owner or a superuser) does
/// not give them back. As [`APP`], TRUNCATE fails and the other tenant's rows survive; DELETE
/// still works on the tenant's own rows.
#[test]
fn privileges_that_bypass_row_level_security_are_revoked() {
    let db = TestDb::new("hardening_privileges");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    db.legacy(&format!(
        "CREATE TABLE ledger (id int PRIMARY KEY, amount int NOT NULL);
         GRANT ALL ON ledger TO {APP};
         GRANT TRUNCATE, TRIGGER, REFERENCES ON ledger TO PUBLIC;"
    ));
    let mut su = db.superuser();
    assert!(has(&mut su, APP, "ledger", "TRUNCATE"), "precondition: the app holds TRUNCATE before enabling");
    db.owner().execute("SELECT multitenancy.tenant_enable('ledger')", &[]).unwrap();

    #[track_caller]
    fn assert_hardened(su: &mut Client, situation: &str) {
        for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
            assert!(has(su, APP, "ledger", privilege), "{situation}: expected {APP} to keep {privilege}");
        }
        for privilege in ["TRUNCATE", "TRIGGER", "REFERENCES"] {
            assert!(!has(su, APP, "ledger", privilege), "{situation}: expected {APP} not to hold {privilege}");
        }
        let public = public_privileges(su, "ledger");
        assert!(public.is_empty(), "{situation}: expected PUBLIC to hold nothing on ledger, found {public:?}");
    }
    assert_hardened(&mut su, "after tenant_enable");

    let (mut owner, notices) = db.connect_with_notices(OWNER);
    owner.batch_execute(&format!("GRANT ALL ON ledger TO {APP}")).expect("GRANT ALL is allowed");
    let said = notices.take();
    assert!(!said.is_empty(), "expected a NOTICE about the privileges revoked again");
    assert_hardened(&mut su, "after GRANT ALL by the owner");
    let _ = owner.batch_execute(&format!("GRANT TRUNCATE, TRIGGER, REFERENCES ON ledger TO {APP}, PUBLIC"));
    assert_hardened(&mut su, "after GRANT TRUNCATE, TRIGGER, REFERENCES by the owner");
    let _ = owner.batch_execute(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP}"));
    assert_hardened(&mut su, "after GRANT ALL ON ALL TABLES IN SCHEMA public");
    let _ = su.batch_execute(&format!("GRANT TRUNCATE ON ledger TO {APP}"));
    assert_hardened(&mut su, "after GRANT TRUNCATE by a superuser");

    let mut app = db.app();
    for (slug, id) in [("acme", 1), ("globex", 2)] {
        let mut tx = begin_as(&mut app, slug);
        tx.execute("INSERT INTO ledger (id, amount) VALUES ($1, 10)", &[&id]).unwrap();
        tx.commit().unwrap();
    }
    {
        let mut tx = begin_as(&mut app, "acme");
        expect_sqlstate(tx.batch_execute("TRUNCATE ledger"), &SqlState::INSUFFICIENT_PRIVILEGE);
    }
    let tenants: Vec<String> =
        su.query("SELECT tenant_id::text FROM ledger ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, [a.clone(), b.clone()], "ground truth: TRUNCATE as A removed nothing, B's row survives");
    let mut tx = begin_as(&mut app, "acme");
    assert_eq!(tx.execute("DELETE FROM ledger", &[]).unwrap(), 1, "positive control: A deletes exactly its own row");
    tx.commit().unwrap();
    let tenants: Vec<String> =
        su.query("SELECT tenant_id::text FROM ledger ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, [b], "ground truth: only B's row is left");
}
