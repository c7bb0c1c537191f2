//! Frameworks' migrations on tenant-enabled tables (issue 17): the DDL Django, Rails and friends
//! write — a foreign key or a unique key added in a later migration, an upsert by a natural key,
//! their bookkeeping tables, seed rows, a data migration over every tenant — works unchanged.
//!
//! DDL runs as [`OWNER`] (the migration role) without a tenant context, data is written and read
//! as [`APP`] with one, and every outcome is checked twice: in the catalog and the rows as the
//! superuser (ground truth), and in what the application sees.
use multitenancy_integration::*;

/// SQLSTATE, message and hint of a failed statement, for panic messages.
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {} (hint: {:?})", db.code().code(), db.message(), db.hint()),
        None => error.to_string(),
    }
}

/// Run `sql` (one or more statements), panicking with the server's error when it fails.
#[track_caller]
fn run(client: &mut impl postgres::GenericClient, sql: &str) {
    if let Err(error) = client.batch_execute(sql) {
        panic!("{sql}\nfailed: {}", describe(&error));
    }
}

/// The definition of one constraint of `table`, by name.
#[track_caller]
fn constraint_def(su: &mut Client, table: &str, name: &str) -> String {
    su.query_one(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
        &[&table, &name],
    )
    .unwrap_or_else(|e| panic!("expected constraint {name} on {table}: {e}"))
    .get(0)
}

/// Whether a constraint of `table` is validated (`pg_constraint.convalidated`).
fn validated(su: &mut Client, table: &str, name: &str) -> bool {
    su.query_one(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
        &[&table, &name],
    )
    .unwrap()
    .get(0)
}

/// The definition of one index, by name, and whether it is valid.
#[track_caller]
fn index_def(su: &mut Client, index: &str) -> (String, bool) {
    let row = su
        .query_one(
            "SELECT pg_get_indexdef(indexrelid), indisvalid FROM pg_index WHERE indexrelid = $1::text::regclass",
            &[&index],
        )
        .unwrap_or_else(|e| panic!("expected index {index} to exist: {e}"));
    (row.get(0), row.get(1))
}

/// `GRANT EXECUTE ON FUNCTION <functions> TO` the migration role (a DBA's part).
fn grant_to_owner(db: &TestDb, functions: &str) {
    run(&mut db.superuser(), &format!("GRANT EXECUTE ON FUNCTION {functions} TO {OWNER}"));
}

/// Whether every listed table still has row level security enabled and forced (ground truth).
fn all_forced(su: &mut Client, tables: &[&str]) -> bool {
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let forced: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_class WHERE oid = ANY ($1::text[]::regclass[])
                AND relrowsecurity AND relforcerowsecurity",
            &[&names],
        )
        .unwrap()
        .get(0);
    forced == tables.len() as i64
}

// ---------------------------------------------------------------------------------------------
// 1. Foreign keys added later
// ---------------------------------------------------------------------------------------------

/// A foreign key between two enabled tables, added by the migration role without a tenant
/// context — on empty tables, in the transaction that created them, on tables holding rows of
/// two tenants, `NOT VALID` then `VALIDATE CONSTRAINT`, and inline with `ADD COLUMN ...
/// REFERENCES` (Django's AddField) — succeeds, comes out composite `(tenant_id, x) REFERENCES
/// parent (tenant_id, y)`, really validates every tenant's rows (a cross-tenant row fails it),
/// and leaves FORCE on. As the application, tenant A cannot reference B's parent row (23503)
/// while that row exists.
#[test]
fn foreign_keys_added_later_between_enabled_tables_are_composite_and_validated() {
    let db = TestDb::new("migrations_fk_later");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    let mut owner = db.owner();

    // Both tables empty; the key comes in a later migration.
    run(
        &mut owner,
        "CREATE TABLE p_empty (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
         SELECT multitenancy.tenant_enable('p_empty');
         CREATE TABLE c_empty (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, p_id bigint);
         SELECT multitenancy.tenant_enable('c_empty');",
    );
    run(&mut owner, "ALTER TABLE c_empty ADD CONSTRAINT c_empty_p_fk FOREIGN KEY (p_id) REFERENCES p_empty (id)");
    assert_eq!(
        constraint_def(&mut su, "c_empty", "c_empty_p_fk"),
        "FOREIGN KEY (tenant_id, p_id) REFERENCES p_empty(tenant_id, id)"
    );

    // In the transaction that creates and enables both tables.
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        "CREATE TABLE p_tx (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
         SELECT multitenancy.tenant_enable('p_tx');
         CREATE TABLE c_tx (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, p_id bigint);
         SELECT multitenancy.tenant_enable('c_tx');
         ALTER TABLE c_tx ADD CONSTRAINT c_tx_p_fk FOREIGN KEY (p_id) REFERENCES p_tx (id);",
    );
    tx.commit().unwrap_or_else(|e| panic!("COMMIT of the migration: {}", describe(&e)));
    assert_eq!(
        constraint_def(&mut su, "c_tx", "c_tx_p_fk"),
        "FOREIGN KEY (tenant_id, p_id) REFERENCES p_tx(tenant_id, id)"
    );

    // Tables holding rows of two tenants, written by the application.
    run(
        &mut owner,
        &format!(
            "CREATE TABLE parents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_enable('parents');
             CREATE TABLE children (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, parent_id bigint,
                                    note text NOT NULL);
             SELECT multitenancy.tenant_enable('children');
             GRANT SELECT, INSERT, UPDATE, DELETE ON parents, children TO {APP};"
        ),
    );
    let mut app = db.app();
    let mut parent_of = |slug: &str| -> i64 {
        let mut tx = begin_as(&mut app, slug);
        let id: i64 = tx.query_one("INSERT INTO parents (name) VALUES ($1) RETURNING id", &[&slug]).unwrap().get(0);
        for i in 0..2 {
            tx.execute("INSERT INTO children (parent_id, note) VALUES ($1, $2)", &[&id, &format!("{slug}-{i}")])
                .unwrap();
        }
        tx.commit().unwrap();
        id
    };
    let (parent_a, parent_b) = (parent_of("acme"), parent_of("globex"));

    // Validation checks every tenant's rows with the composite key: a child of A pointing at B's
    // parent (written by the superuser, who bypasses RLS) makes it fail ...
    su.execute(
        "INSERT INTO children (tenant_id, parent_id, note) VALUES ($1::text::uuid, $2, 'cross-tenant')",
        &[&a, &parent_b],
    )
    .unwrap();
    let add_fk =
        "ALTER TABLE children ADD CONSTRAINT children_parent_fk FOREIGN KEY (parent_id) REFERENCES parents (id)";
    let error = match owner.batch_execute(add_fk) {
        Ok(()) => panic!("a foreign key over a child of A that points at B's parent must not validate"),
        Err(e) => e,
    };
    assert_eq!(
        db_error(&error).code(),
        &SqlState::FOREIGN_KEY_VIOLATION,
        "validating over a cross-tenant row: {}",
        describe(&error)
    );
    // ... NOT VALID skips the existing rows, VALIDATE finds it, and passes once it is gone.
    run(&mut owner, &format!("{add_fk} NOT VALID"));
    let expected = "FOREIGN KEY (tenant_id, parent_id) REFERENCES parents(tenant_id, id) NOT VALID";
    assert_eq!(constraint_def(&mut su, "children", "children_parent_fk"), expected);
    expect_sqlstate(
        owner.batch_execute("ALTER TABLE children VALIDATE CONSTRAINT children_parent_fk"),
        &SqlState::FOREIGN_KEY_VIOLATION,
    );
    su.execute("DELETE FROM children WHERE note = 'cross-tenant'", &[]).unwrap();
    run(&mut owner, "ALTER TABLE children VALIDATE CONSTRAINT children_parent_fk");
    assert!(validated(&mut su, "children", "children_parent_fk"), "VALIDATE CONSTRAINT validated the key");
    assert_eq!(
        constraint_def(&mut su, "children", "children_parent_fk"),
        "FOREIGN KEY (tenant_id, parent_id) REFERENCES parents(tenant_id, id)"
    );

    // Added in one step over both tenants' rows, as a migration writes it.
    run(&mut owner, "ALTER TABLE children DROP CONSTRAINT children_parent_fk");
    run(&mut owner, add_fk);
    assert_eq!(
        constraints(&mut su, "children", "f"),
        [(
            "children_parent_fk".to_string(),
            "FOREIGN KEY (tenant_id, parent_id) REFERENCES parents(tenant_id, id)".into()
        )]
    );
    assert!(validated(&mut su, "children", "children_parent_fk"));

    // Inline, as Django's AddField writes it.
    run(&mut owner, "ALTER TABLE children ADD COLUMN other_parent_id bigint REFERENCES parents (id)");
    let fks = constraints(&mut su, "children", "f");
    assert!(
        fks.iter().any(|(_, def)| def == "FOREIGN KEY (tenant_id, other_parent_id) REFERENCES parents(tenant_id, id)"),
        "expected the inline foreign key composite, found {fks:?}"
    );

    // The application: A cannot reference B's parent, which exists (ground truth) ...
    let b_parent_exists: i64 = su
        .query_one("SELECT count(*) FROM parents WHERE id = $1 AND tenant_id = $2::text::uuid", &[&parent_b, &b])
        .unwrap()
        .get(0);
    assert_eq!(b_parent_exists, 1, "ground truth: B's parent exists");
    for column in ["parent_id", "other_parent_id"] {
        let insert = format!("INSERT INTO children ({column}, note) VALUES ($1, 'a child')");
        let mut tx = begin_as(&mut app, "acme");
        expect_sqlstate(tx.execute(&insert, &[&parent_b]), &SqlState::FOREIGN_KEY_VIOLATION);
        drop(tx);
        // ... and can reference its own (positive control).
        let mut tx = begin_as(&mut app, "acme");
        tx.execute(&insert, &[&parent_a]).unwrap_or_else(|e| panic!("A referencing its own parent: {}", describe(&e)));
        tx.commit().unwrap();
    }
    let cross: i64 = su
        .query_one(
            "SELECT count(*) FROM children c JOIN parents p ON p.id IN (c.parent_id, c.other_parent_id)
              WHERE c.tenant_id <> p.tenant_id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cross, 0, "ground truth: no child references another tenant's parent");
    assert_isolated(db.server(), &db.name, "children", &[("acme", &a), ("globex", &b)]);

    // FORCE was lifted only while PostgreSQL validated: every table is forced again.
    assert!(
        all_forced(&mut su, &["p_empty", "c_empty", "p_tx", "c_tx", "parents", "children"]),
        "row level security must be enabled and forced on every table after the migrations"
    );
    assert_eq!(db.verify(), vec![], "verify() after the foreign keys were added");
}

// ---------------------------------------------------------------------------------------------
// 2. Unique keys added later
// ---------------------------------------------------------------------------------------------

/// Insert one `docs` row as `app` with `tenant`'s context, committed if it succeeds.
#[allow(clippy::too_many_arguments)]
fn insert_doc(
    app: &mut Client,
    tenant: &str,
    title: &str,
    deleted: bool,
    email: &str,
    login: &str,
    handle: &str,
    code: &str,
) -> Result<u64, postgres::Error> {
    let mut tx = begin_as(app, tenant);
    let n = tx.execute(
        "INSERT INTO docs (title, deleted_at, email, login, handle, code)
         VALUES ($1, CASE WHEN $2 THEN now() END, $3, $4, $5, $6)",
        &[&title, &deleted, &email, &login, &handle, &code],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Unique keys added later to a table holding rows of two tenants that share every value — a
/// partial unique index, an expression index, `ADD CONSTRAINT ... UNIQUE`, `CREATE UNIQUE INDEX
/// CONCURRENTLY` and `ADD CONSTRAINT ... UNIQUE USING INDEX` — are built per tenant from the
/// start: they succeed (built globally they would hit 23505), each key starts with tenant_id,
/// and a duplicate within one tenant is still a unique violation of that key.
#[test]
fn unique_keys_added_later_over_two_tenants_sharing_values_are_per_tenant() {
    let db = TestDb::new("migrations_unique_later");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    let mut owner = db.owner();
    run(
        &mut owner,
        &format!(
            "CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text NOT NULL,
                                deleted_at timestamptz, email text, login text, handle text, code text);
             SELECT multitenancy.tenant_enable('docs');
             GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO {APP};"
        ),
    );
    let mut app = db.app();
    for slug in ["acme", "globex"] {
        insert_doc(&mut app, slug, "Report", false, "Ann@Example.com", "ann", "ann-h", "c-1").unwrap();
        // A deleted row with the same title (and no other values): outside the partial index.
        let mut tx = begin_as(&mut app, slug);
        tx.execute("INSERT INTO docs (title, deleted_at) VALUES ('Report', now())", &[]).unwrap();
        tx.commit().unwrap();
    }
    let shared = count(
        &mut su,
        "SELECT count(DISTINCT tenant_id) FROM docs
          WHERE deleted_at IS NULL AND title = 'Report' AND email = 'Ann@Example.com' AND login = 'ann'
            AND handle = 'ann-h' AND code = 'c-1'",
    );
    assert_eq!(shared, 2, "ground truth: both tenants hold the same live values");

    run(&mut owner, "CREATE UNIQUE INDEX docs_live_title ON docs (title) WHERE deleted_at IS NULL");
    run(&mut owner, "CREATE UNIQUE INDEX docs_email_ci ON docs (lower(email))");
    run(&mut owner, "ALTER TABLE docs ADD CONSTRAINT docs_login_key UNIQUE (login)");
    run(&mut owner, "CREATE UNIQUE INDEX CONCURRENTLY docs_handle_idx ON docs (handle)");
    run(&mut owner, "CREATE UNIQUE INDEX docs_code_idx ON docs (code)");
    run(&mut owner, "ALTER TABLE docs ADD CONSTRAINT docs_code_key UNIQUE USING INDEX docs_code_idx");

    for (index, key) in [
        ("docs_live_title", "(tenant_id, title) WHERE (deleted_at IS NULL)"),
        ("docs_email_ci", "(tenant_id, lower(email))"),
        ("docs_login_key", "(tenant_id, login)"),
        ("docs_handle_idx", "(tenant_id, handle)"),
        ("docs_code_key", "(tenant_id, code)"),
    ] {
        let (def, valid) = index_def(&mut su, index);
        assert_eq!(def, format!("CREATE UNIQUE INDEX {index} ON public.docs USING btree {key}"));
        assert!(valid, "{index} is valid (a failed CONCURRENTLY build leaves an invalid index)");
    }
    let uniques = constraints(&mut su, "docs", "u");
    for expected in [("docs_code_key", "UNIQUE (tenant_id, code)"), ("docs_login_key", "UNIQUE (tenant_id, login)")] {
        assert!(
            uniques.iter().any(|(n, d)| n == expected.0 && d == expected.1),
            "expected constraint {} {}, found {uniques:?}",
            expected.0,
            expected.1
        );
    }

    // Within one tenant every key still holds: each duplicate fails on its own key.
    for (key, title, email, login, handle, code) in [
        ("docs_live_title", "Report", "x1@example.com", "x1", "x1-h", "x-1"),
        ("docs_email_ci", "Memo 2", "ANN@example.COM", "x2", "x2-h", "x-2"),
        ("docs_login_key", "Memo 3", "x3@example.com", "ann", "x3-h", "x-3"),
        ("docs_handle_idx", "Memo 4", "x4@example.com", "x4", "ann-h", "x-4"),
        ("docs_code_key", "Memo 5", "x5@example.com", "x5", "x5-h", "c-1"),
    ] {
        let error = expect_sqlstate(
            insert_doc(&mut app, "acme", title, false, email, login, handle, code),
            &SqlState::UNIQUE_VIOLATION,
        );
        assert_eq!(error.constraint(), Some(key), "a duplicate of A's own value violates {key}: {}", error.message());
    }
    // Positive controls: the partial index leaves deleted rows alone, and B may use a value only
    // A has used so far (no unique error tells B about it).
    insert_doc(&mut app, "acme", "Report", true, "x6@example.com", "x6", "x6-h", "x-6")
        .unwrap_or_else(|e| panic!("a deleted duplicate title is outside the partial index: {}", describe(&e)));
    insert_doc(&mut app, "acme", "Plan", false, "plan@example.com", "plan", "plan-h", "p-1").unwrap();
    insert_doc(&mut app, "globex", "Plan", false, "PLAN@example.com", "plan", "plan-h", "p-1")
        .unwrap_or_else(|e| panic!("B may use values A uses: {}", describe(&e)));
    for (tenant, expected) in [(&a, 1), (&b, 1)] {
        let plans: i64 = su
            .query_one("SELECT count(*) FROM docs WHERE tenant_id = $1::text::uuid AND login = 'plan'", &[tenant])
            .unwrap()
            .get(0);
        assert_eq!(plans, expected, "ground truth: one 'plan' row per tenant");
    }
    assert_isolated(db.server(), &db.name, "docs", &[("acme", &a), ("globex", &b)]);
    assert!(all_forced(&mut su, &["docs"]));
    assert_eq!(db.verify(), vec![], "verify() after the unique keys were added");
}

// ---------------------------------------------------------------------------------------------
// 3. Upserts
// ---------------------------------------------------------------------------------------------

/// `INSERT ... ON CONFLICT (email) DO UPDATE / DO NOTHING`, as ORMs write an upsert, on an
/// enabled table whose unique key is `(tenant_id, email)`: it works for the application (the
/// conflict target is the tenant's key), updates the tenant's own row and never touches the
/// other tenant's row with the same email.
#[test]
fn upserts_by_a_unique_column_work_per_tenant() {
    let db = TestDb::new("migrations_upsert");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    run(
        &mut db.owner(),
        &format!(
            "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                     email text NOT NULL UNIQUE, name text NOT NULL,
                                     visits int NOT NULL DEFAULT 0);
             SELECT multitenancy.tenant_enable('customers');
             GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO {APP};"
        ),
    );
    assert_eq!(
        constraints(&mut su, "customers", "u").iter().filter(|(_, d)| d == "UNIQUE (tenant_id, email)").count(),
        1
    );
    let mut app = db.app();
    let mut insert = |slug: &str, email: &str, name: &str| -> i64 {
        let mut tx = begin_as(&mut app, slug);
        let id = tx
            .query_one("INSERT INTO customers (email, name) VALUES ($1, $2) RETURNING id", &[&email, &name])
            .unwrap()
            .get(0);
        tx.commit().unwrap();
        id
    };
    let ann_a = insert("acme", "ann@example.com", "Ann of A");
    let ann_b = insert("globex", "ann@example.com", "Ann of B");
    let only_a = insert("acme", "only-a@example.com", "Only A");
    let truth = |su: &mut Client, id: i64| -> (String, i32, String) {
        let row = su.query_one("SELECT name, visits, tenant_id::text FROM customers WHERE id = $1", &[&id]).unwrap();
        (row.get(0), row.get(1), row.get(2))
    };

    let upsert = "INSERT INTO customers (email, name) VALUES ($1, $2)
                  ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name, visits = customers.visits + 1
                  RETURNING id";
    let mut app = db.app();
    let mut tx = begin_as(&mut app, "acme");
    let returned: Vec<i64> = tx
        .query(upsert, &[&"ann@example.com", &"Ann upserted by A"])
        .unwrap_or_else(|e| panic!("ON CONFLICT (email) DO UPDATE as {APP}: {}", describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().unwrap();
    assert_eq!(returned, [ann_a], "the upsert updated A's own ann in place");
    assert_eq!(truth(&mut su, ann_a), ("Ann upserted by A".into(), 1, a.clone()), "ground truth: A's ann updated");
    assert_eq!(truth(&mut su, ann_b), ("Ann of B".into(), 0, b.clone()), "ground truth: B's ann untouched");

    // DO NOTHING: A's existing ann is a conflict, nothing happens.
    let nothing = "INSERT INTO customers (email, name) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING";
    let mut tx = begin_as(&mut app, "acme");
    let n = tx
        .execute(nothing, &[&"ann@example.com", &"Ann again"])
        .unwrap_or_else(|e| panic!("ON CONFLICT (email) DO NOTHING as {APP}: {}", describe(&e)));
    tx.commit().unwrap();
    assert_eq!(n, 0, "A's ann exists: DO NOTHING inserts nothing");
    // B: an email only A has is no conflict for B (and B learns nothing about A's row).
    let mut tx = begin_as(&mut app, "globex");
    let n = tx.execute(nothing, &[&"only-a@example.com", &"B's own"]).unwrap();
    tx.commit().unwrap();
    assert_eq!(n, 1, "A's email is no conflict for B: B's row is inserted");
    // B's upsert of ann updates B's ann only.
    let mut tx = begin_as(&mut app, "globex");
    let returned: i64 = tx.query_one(upsert, &[&"ann@example.com", &"Ann upserted by B"]).unwrap().get(0);
    tx.commit().unwrap();
    assert_eq!(returned, ann_b);

    assert_eq!(
        truth(&mut su, ann_a),
        ("Ann upserted by A".into(), 1, a.clone()),
        "ground truth: B's upsert left A's ann"
    );
    assert_eq!(truth(&mut su, ann_b), ("Ann upserted by B".into(), 1, b.clone()));
    assert_eq!(truth(&mut su, only_a), ("Only A".into(), 0, a.clone()), "ground truth: A's only-a untouched");
    let per_email: Vec<(String, i64)> = su
        .query("SELECT email, count(*) FROM customers GROUP BY email ORDER BY email", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_email,
        [("ann@example.com".to_string(), 2), ("only-a@example.com".to_string(), 2)],
        "ground truth: one row per tenant and email, the upserts duplicated nothing"
    );
    // What A sees: its own ann, updated once, and nothing of B's.
    let mut tx = begin_as(&mut app, "acme");
    let seen: Vec<(i64, String)> = tx
        .query("SELECT id, name FROM customers WHERE email = 'ann@example.com'", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().unwrap();
    assert_eq!(seen, [(ann_a, "Ann upserted by A".to_string())]);
    assert_isolated(db.server(), &db.name, "customers", &[("acme", &a), ("globex", &b)]);
}

// ---------------------------------------------------------------------------------------------
// 4. Framework bookkeeping tables
// ---------------------------------------------------------------------------------------------

const COMMIT_REFUSAL: &str = "refused: COMMIT would leave new table(s) in guarded schemas unprotected: ";

/// `exempt_pattern` with `framework_patterns('django')` and `('rails')`: the frameworks'
/// bookkeeping tables, created later by the migration role outside and inside a transaction,
/// commit, are recorded as exempt with a reason naming the pattern, the declaration is audited
/// and listed by verify(); a table the patterns do not match (`_` is a literal underscore) is
/// still refused at COMMIT; the application cannot declare patterns.
#[test]
fn framework_bookkeeping_tables_are_exempt_by_pattern() {
    let db = TestDb::new("migrations_exempt_pattern");
    let mut su = db.superuser();
    // The DBA's one-liner of the README, per framework: each ships its own tables' patterns.
    for (framework, expected) in [
        ("django", &["auth\\_%", "django\\_%"][..]),
        ("rails", &["ar\\_internal\\_metadata", "schema\\_migrations"][..]),
    ] {
        let shipped: Vec<String> = su
            .query("SELECT pattern FROM multitenancy.framework_patterns($1) ORDER BY 1", &[&framework])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(shipped, expected, "framework_patterns('{framework}') ships {framework}'s patterns, no other's");
        run(
            &mut su,
            &format!(
                "SELECT multitenancy.exempt_pattern(pattern, reason) FROM multitenancy.framework_patterns('{framework}')"
            ),
        );
    }

    let mut owner = db.owner();
    // Outside a transaction, as Django's recorder creates it.
    run(
        &mut owner,
        "CREATE TABLE django_migrations (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                                         app varchar(255) NOT NULL, name varchar(255) NOT NULL,
                                         applied timestamptz NOT NULL)",
    );
    // Inside one, as Rails and Django's contrib migrations do.
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        "CREATE TABLE schema_migrations (version varchar NOT NULL PRIMARY KEY);
         CREATE TABLE ar_internal_metadata (key varchar NOT NULL PRIMARY KEY, value varchar,
                                            created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
         CREATE TABLE auth_user (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, username varchar(150) NOT NULL UNIQUE);
         INSERT INTO schema_migrations VALUES ('20240101000000');
         INSERT INTO django_migrations (app, name, applied) VALUES ('shop', '0001_initial', now());",
    );
    tx.commit().unwrap_or_else(|e| panic!("COMMIT of the framework tables: {}", describe(&e)));

    for (table, pattern) in [
        ("django_migrations", "django\\_%"),
        ("schema_migrations", "schema\\_migrations"),
        ("ar_internal_metadata", "ar\\_internal\\_metadata"),
        ("auth_user", "auth\\_%"),
    ] {
        assert!(is_exempt(&mut su, table), "{table} is declared global by its pattern");
        assert!(!is_enabled(&mut su, table), "{table} is not tenant data");
        let reason: String = su
            .query_one("SELECT reason FROM multitenancy.exempt_tables WHERE relid = $1::text::regclass", &[&table])
            .unwrap()
            .get(0);
        assert!(
            reason.contains(&format!("(exempt pattern {pattern})")),
            "the reason of {table} names {pattern}: {reason:?}"
        );
    }
    let audited: Vec<String> = su
        .query("SELECT details->>'pattern' FROM multitenancy.audit_log WHERE action = 'exempt_pattern' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited, ["ar\\_internal\\_metadata", "auth\\_%", "django\\_%", "schema\\_migrations"]);
    let listed: Vec<String> = verify_all(&mut su)
        .into_iter()
        .filter(|p| p.severity == "info" && p.object.starts_with("exempt pattern "))
        .map(|p| p.object)
        .collect();
    assert_eq!(
        listed,
        [
            "exempt pattern ar\\_internal\\_metadata",
            "exempt pattern auth\\_%",
            "exempt pattern django\\_%",
            "exempt pattern schema\\_migrations"
        ],
        "verify() lists every pattern as an info row"
    );
    assert_eq!(db.verify(), vec![], "no error or warning: the framework tables are exempt");

    // Tables the patterns do not match are refused at COMMIT, outside and inside a transaction.
    let error =
        expect_sqlstate(owner.batch_execute("CREATE TABLE djangoxlog (id int)"), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(error.message(), format!("{COMMIT_REFUSAL}public.djangoxlog"), "'_' in django\\_% is literal");
    // Another framework's bookkeeping name (TypeORM's `migrations`) is just the application's table here.
    let error = expect_sqlstate(
        owner.batch_execute("CREATE TABLE migrations (id bigint PRIMARY KEY, name text)"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert_eq!(error.message(), format!("{COMMIT_REFUSAL}public.migrations"), "no pattern of Django or Rails matches");
    let mut tx = owner.transaction().unwrap();
    run(&mut tx, "CREATE TABLE schema_migrations_old (version varchar)");
    let error = expect_sqlstate(tx.commit(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert_eq!(error.message(), format!("{COMMIT_REFUSAL}public.schema_migrations_old"));
    for table in ["djangoxlog", "migrations", "schema_migrations_old"] {
        assert!(!relation_exists(&mut su, table), "{table} was rolled back");
    }

    // The application: reads the global bookkeeping without a tenant context, cannot declare
    // patterns.
    run(&mut su, &format!("GRANT SELECT ON django_migrations TO {APP}"));
    let mut app = db.app();
    let applied: Vec<String> =
        app.query("SELECT name FROM django_migrations", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(applied, ["0001_initial"], "a global table needs no tenant context");
    expect_sqlstate_mentioning(
        app.execute("SELECT multitenancy.exempt_pattern('orders%', 'mine now')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        DENIED,
    );
    let patterns = count(&mut su, "SELECT count(*) FROM multitenancy.exempt_patterns WHERE pattern = 'orders%'");
    assert_eq!(patterns, 0, "ground truth: the application declared nothing");
}

// ---------------------------------------------------------------------------------------------
// 5. Key scope
// ---------------------------------------------------------------------------------------------

/// A natural-key table (`currency (code text PRIMARY KEY)`) with key scope `tenant`: the
/// primary key becomes `(tenant_id, code)`, both tenants can have 'usd', a foreign key from
/// another enabled table works per tenant, the guard refuses and verify() reports a primary key
/// changed back without `tenant_key_scope`, and an unknown scope is 22023.
#[test]
fn key_scope_tenant_makes_natural_keys_per_tenant() {
    let db = TestDb::new("migrations_key_scope");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    grant_to_owner(&db, "multitenancy.tenant_key_scope(regclass, text)");
    let mut su = db.superuser();
    let mut owner = db.owner();
    run(
        &mut owner,
        &format!(
            "CREATE TABLE currency (code text PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_enable('currency');
             GRANT SELECT, INSERT, UPDATE, DELETE ON currency TO {APP};"
        ),
    );
    run(&mut owner, "SELECT multitenancy.tenant_key_scope('currency', 'tenant')");
    assert_eq!(
        constraints(&mut su, "currency", "p"),
        [("currency_pkey".to_string(), "PRIMARY KEY (tenant_id, code)".to_string())]
    );
    let scope: String = su
        .query_one("SELECT key_scope FROM multitenancy.enabled_tables WHERE relid = 'currency'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(scope, "tenant");

    let mut app = db.app();
    for (slug, codes) in [("acme", &["usd"][..]), ("globex", &["usd", "eur"][..])] {
        let mut tx = begin_as(&mut app, slug);
        for code in codes {
            tx.execute("INSERT INTO currency (code, name) VALUES ($1, $2)", &[code, &format!("{code} of {slug}")])
                .unwrap_or_else(|e| panic!("{slug} inserts {code}: {}", describe(&e)));
        }
        tx.commit().unwrap();
    }
    let usd = count(&mut su, "SELECT count(DISTINCT tenant_id) FROM currency WHERE code = 'usd'");
    assert_eq!(usd, 2, "ground truth: 'usd' exists once per tenant");
    let mut tx = begin_as(&mut app, "acme");
    expect_sqlstate(
        tx.execute("INSERT INTO currency (code, name) VALUES ('usd', 'again')", &[]),
        &SqlState::UNIQUE_VIOLATION,
    );
    drop(tx);
    let mut tx = begin_as(&mut app, "acme");
    let seen: Vec<String> =
        tx.query("SELECT name FROM currency ORDER BY code", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    tx.commit().unwrap();
    assert_eq!(seen, ["usd of acme"], "A sees its own 'usd' only");

    // A foreign key from another enabled table, added later: per tenant.
    run(
        &mut owner,
        &format!(
            "CREATE TABLE prices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, currency_code text NOT NULL,
                                  amount numeric NOT NULL);
             SELECT multitenancy.tenant_enable('prices');
             GRANT SELECT, INSERT, UPDATE, DELETE ON prices TO {APP};"
        ),
    );
    run(
        &mut owner,
        "ALTER TABLE prices ADD CONSTRAINT prices_currency_fk FOREIGN KEY (currency_code) REFERENCES currency (code)",
    );
    assert_eq!(
        constraint_def(&mut su, "prices", "prices_currency_fk"),
        "FOREIGN KEY (tenant_id, currency_code) REFERENCES currency(tenant_id, code)"
    );
    let price = "INSERT INTO prices (currency_code, amount) VALUES ($1, 9.99)";
    for (slug, code) in [("acme", "usd"), ("globex", "usd"), ("globex", "eur")] {
        let mut tx = begin_as(&mut app, slug);
        tx.execute(price, &[&code]).unwrap_or_else(|e| panic!("{slug} prices in its own {code}: {}", describe(&e)));
        tx.commit().unwrap();
    }
    let eur_of_b: i64 = su
        .query_one("SELECT count(*) FROM currency WHERE code = 'eur' AND tenant_id = $1::text::uuid", &[&b])
        .unwrap()
        .get(0);
    assert_eq!(eur_of_b, 1, "ground truth: B's 'eur' exists");
    let mut tx = begin_as(&mut app, "acme");
    expect_sqlstate(tx.execute(price, &[&"eur"]), &SqlState::FOREIGN_KEY_VIOLATION);
    drop(tx);
    let cross = count(
        &mut su,
        "SELECT count(*) FROM prices p WHERE NOT EXISTS
           (SELECT 1 FROM currency c WHERE c.tenant_id = p.tenant_id AND c.code = p.currency_code)",
    );
    assert_eq!(cross, 0, "ground truth: every price uses its own tenant's currency");
    assert_isolated(db.server(), &db.name, "prices", &[("acme", &a), ("globex", &b)]);

    // The other ways migrations write that key — Django's AddField (inline, DEFERRABLE) and a
    // bare `REFERENCES currency` (its primary key) — must come out as the same composite key.
    // Checked here, asserted at the end (so that the rest of the test runs either way).
    let mut other_forms_failed = Vec::new();
    for (name, sql, expected) in [
        (
            "prices_inline_fk",
            "ALTER TABLE prices ADD COLUMN alt_code text
               CONSTRAINT prices_inline_fk REFERENCES currency (code) DEFERRABLE INITIALLY DEFERRED",
            "FOREIGN KEY (tenant_id, alt_code) REFERENCES currency(tenant_id, code) DEFERRABLE INITIALLY DEFERRED",
        ),
        (
            "prices_bare_fk",
            "ALTER TABLE prices ADD CONSTRAINT prices_bare_fk FOREIGN KEY (currency_code) REFERENCES currency",
            "FOREIGN KEY (tenant_id, currency_code) REFERENCES currency(tenant_id, code)",
        ),
    ] {
        match owner.batch_execute(sql) {
            Err(error) => other_forms_failed.push(format!("{sql}\n  -> {}", describe(&error))),
            Ok(()) => {
                let def = constraint_def(&mut su, "prices", name);
                if def != expected {
                    other_forms_failed.push(format!("{sql}\n  -> {def}, expected {expected}"));
                }
            }
        }
    }

    expect_sqlstate(
        owner.batch_execute("SELECT multitenancy.tenant_key_scope('currency', 'bogus')"),
        &SqlState::INVALID_PARAMETER_VALUE,
    );
    assert_eq!(db.verify(), vec![], "verify() with key scope tenant kept");

    // The primary key changed back by hand: with B's rows gone, so that (code) can be unique.
    run(&mut su, &format!("DELETE FROM prices WHERE tenant_id = '{b}'; DELETE FROM currency WHERE tenant_id = '{b}';"));
    let change_back =
        "ALTER TABLE currency DROP CONSTRAINT currency_pkey, ADD CONSTRAINT currency_pkey PRIMARY KEY (code)";
    expect_refused(owner.batch_execute(change_back), "public.currency");
    assert_eq!(constraint_def(&mut su, "currency", "currency_pkey"), "PRIMARY KEY (tenant_id, code)");
    db.unguarded(change_back);
    let problems = db.verify();
    assert!(
        problems.iter().any(|p| p.severity == "error"
            && p.object == "public.currency"
            && p.problem.contains("key scope is tenant")
            && p.fix.contains("tenant_key_scope")),
        "verify() reports the primary key without tenant_id: {problems:#?}"
    );
    assert!(
        other_forms_failed.is_empty(),
        "foreign keys to a table with key scope tenant, as migrations write them:\n{}",
        other_forms_failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Tenant templates
// ---------------------------------------------------------------------------------------------

/// Seed rows of a migration made the rows every tenant gets: in one transaction the migration
/// creates `shipping_option`, inserts 3 rows and calls `tenant_template` (→ 3); every active
/// tenant then has its own 3 rows, a suspended one none, a tenant created afterwards gets 3,
/// `template_apply` gives a copy on demand, and the application sees exactly its tenant's 3.
/// `tenant_template` on an enabled table is 22023; the application cannot call it.
#[test]
fn a_migrations_seed_rows_become_every_tenants_rows() {
    let db = TestDb::new("migrations_templates");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let c = db.tenant("Initech", "initech");
    let mut su = db.superuser();
    run(&mut su, "SELECT multitenancy.tenant_suspend('initech', 'unpaid invoices')");
    grant_to_owner(&db, "multitenancy.tenant_template(regclass)");

    let mut owner = db.owner();
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        &format!(
            "CREATE TABLE shipping_option (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                           name text NOT NULL, price numeric(10, 2) NOT NULL);
             INSERT INTO shipping_option (name, price) VALUES ('standard', 4.90), ('express', 9.90), ('pickup', 0);
             GRANT SELECT, INSERT, UPDATE, DELETE ON shipping_option TO {APP};"
        ),
    );
    let captured: i64 = tx
        .query_one("SELECT multitenancy.tenant_template('shipping_option')", &[])
        .unwrap_or_else(|e| panic!("tenant_template in the migration: {}", describe(&e)))
        .get(0);
    tx.commit().unwrap_or_else(|e| panic!("COMMIT of the migration: {}", describe(&e)));
    assert_eq!(captured, 3, "tenant_template returns the number of template rows");
    assert!(is_enabled(&mut su, "shipping_option"));

    let options = |su: &mut Client, tenant: &str| -> Vec<(String, String)> {
        su.query(
            "SELECT name, price::text FROM shipping_option WHERE tenant_id = $1::text::uuid ORDER BY name",
            &[&tenant],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let seed: Vec<(String, String)> =
        [("express", "9.90"), ("pickup", "0.00"), ("standard", "4.90")].map(|(n, p)| (n.into(), p.into())).into();
    assert_eq!(options(&mut su, &a), seed, "ground truth: A got the 3 rows");
    assert_eq!(options(&mut su, &b), seed, "ground truth: B got the 3 rows");
    assert_eq!(options(&mut su, &c), [], "ground truth: the suspended tenant got none");
    assert_eq!(count(&mut su, "SELECT count(*) FROM shipping_option"), 6, "no row without a tenant is left");

    let d = db.tenant("Umbrella", "umbrella");
    assert_eq!(options(&mut su, &d), seed, "ground truth: a tenant created afterwards gets the 3 rows");
    run(&mut su, "SELECT multitenancy.tenant_activate('initech')");
    let applied: i64 =
        su.query_one("SELECT multitenancy.template_apply('shipping_option', 'initech')", &[]).unwrap().get(0);
    assert_eq!(applied, 3);
    assert_eq!(options(&mut su, &c), seed, "ground truth: template_apply gave the tenant its copy");
    let distinct_ids = count(&mut su, "SELECT count(DISTINCT id) FROM shipping_option");
    assert_eq!(distinct_ids, 12, "every copy got identity values of its own");
    let audited = count(
        &mut su,
        "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'tenant_template'
            AND details->>'table' = 'public.shipping_option' AND (details->>'rows')::int = 3",
    );
    assert_eq!(audited, 1, "tenant_template is audited");

    // The application as A: exactly A's three rows.
    let mut app = db.app();
    let mut tx = begin_as(&mut app, "acme");
    let seen: Vec<(String, String)> = tx
        .query("SELECT name, price::text FROM shipping_option ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().unwrap();
    assert_eq!(seen, seed, "A sees exactly its own 3 rows");
    assert_isolated(
        db.server(),
        &db.name,
        "shipping_option",
        &[("acme", &a), ("globex", &b), ("initech", &c), ("umbrella", &d)],
    );

    expect_sqlstate(
        owner.query_one("SELECT multitenancy.tenant_template('shipping_option')", &[]),
        &SqlState::INVALID_PARAMETER_VALUE,
    );
    expect_sqlstate_mentioning(
        app.query_one("SELECT multitenancy.tenant_template('shipping_option')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        DENIED,
    );
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM shipping_option"),
        12,
        "ground truth: the refusals changed nothing"
    );
    assert_eq!(db.verify(), vec![]);
}

// ---------------------------------------------------------------------------------------------
// 7. Data migrations across tenants
// ---------------------------------------------------------------------------------------------

/// A data migration over every tenant's rows, the documented way: the migration role is a
/// member of `multitenancy_admin` and calls `admin_begin(reason, write => true)` in the
/// migration's transaction; the UPDATE changes both tenants' rows and the reason is audited.
/// Without it the same UPDATE fails closed (28000), and admin mode ends with the transaction.
/// (This already worked before issue 17; the test documents it.)
#[test]
fn a_data_migration_over_every_tenant_uses_admin_begin() {
    let db = TestDb::new("migrations_admin");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    run(&mut su, &format!("GRANT multitenancy_admin TO {OWNER}"));
    let mut owner = db.owner();
    run(
        &mut owner,
        &format!(
            "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                                 price numeric NOT NULL);
             SELECT multitenancy.tenant_enable('items');
             GRANT SELECT, INSERT, UPDATE, DELETE ON items TO {APP};"
        ),
    );
    let mut app = db.app();
    for (slug, prices) in [("acme", &[10, 20][..]), ("globex", &[5][..])] {
        let mut tx = begin_as(&mut app, slug);
        for price in prices {
            tx.execute("INSERT INTO items (name, price) VALUES ($1, $2::int)", &[&format!("{slug}-{price}"), price])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let totals = |su: &mut Client| -> Vec<String> {
        [&a, &b]
            .iter()
            .map(|t| {
                su.query_one("SELECT sum(price)::text FROM items WHERE tenant_id = $1::text::uuid", &[t])
                    .unwrap()
                    .get(0)
            })
            .collect()
    };
    assert_eq!(totals(&mut su), ["30", "5"]);

    let migrate = "UPDATE items SET price = price * 2";
    let error = expect_sqlstate(owner.execute(migrate, &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(error.message().contains("no tenant context"), "{}", error.message());
    assert_eq!(totals(&mut su), ["30", "5"], "ground truth: the refused UPDATE changed nothing");

    let mut tx = owner.transaction().unwrap();
    tx.execute("SELECT multitenancy.admin_begin('migration 0042', write => true)", &[])
        .unwrap_or_else(|e| panic!("admin_begin as the migration role: {}", describe(&e)));
    let updated = tx.execute(migrate, &[]).unwrap_or_else(|e| panic!("{migrate} in admin mode: {}", describe(&e)));
    tx.commit().unwrap();
    assert_eq!(updated, 3, "the migration updated every tenant's rows");
    assert_eq!(totals(&mut su), ["60", "10"], "ground truth: both tenants' prices doubled");
    let audited = count(
        &mut su,
        &format!(
            "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'admin_begin'
                AND details->>'reason' = 'migration 0042' AND (details->>'write')::boolean
                AND session_role = '{OWNER}'"
        ),
    );
    assert_eq!(audited, 1, "admin_begin is audited with the migration's reason");
    // Admin mode ended with the transaction.
    expect_sqlstate(owner.execute(migrate, &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert_eq!(totals(&mut su), ["60", "10"]);

    // What the application sees: its own rows, migrated.
    for (slug, expected) in [("acme", &["20", "40"][..]), ("globex", &["10"][..])] {
        let mut tx = begin_as(&mut app, slug);
        let seen: Vec<String> =
            tx.query("SELECT price::text FROM items ORDER BY price", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        tx.commit().unwrap();
        assert_eq!(seen, expected, "{slug} sees its own migrated prices");
    }
    assert_isolated(db.server(), &db.name, "items", &[("acme", &a), ("globex", &b)]);
}

// ---------------------------------------------------------------------------------------------
// 8. Guard cost
// ---------------------------------------------------------------------------------------------

/// `DROP INDEX` inspects the table whose index it drops, not every enabled table of the schema
/// (20 here): with one unrelated table (t20) already deviating from the spec (done with the
/// guard off, as legacy damage would be), dropping a harmless index of t2 is accepted, and
/// dropping t1's tenant index is refused naming t1 — not t20.
#[test]
fn drop_index_inspects_only_the_table_of_the_index() {
    let db = TestDb::new("migrations_drop_index");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    let mut owner = db.owner();
    let ddl: String = (1..=20)
        .map(|i| {
            format!(
                "CREATE TABLE t{i} (id bigint NOT NULL, v int);
                 CREATE INDEX t{i}_v_idx ON t{i} (v);
                 SELECT multitenancy.tenant_enable('t{i}');\n"
            )
        })
        .collect();
    run(&mut owner, &ddl);
    run(&mut owner, &format!("GRANT SELECT, INSERT ON t1, t2 TO {APP}"));
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.enabled_tables"), 20);
    let mut app = db.app();
    for slug in ["acme", "globex"] {
        let mut tx = begin_as(&mut app, slug);
        tx.batch_execute("INSERT INTO t1 VALUES (1, 1), (2, 2); INSERT INTO t2 VALUES (1, 1);").unwrap();
        tx.commit().unwrap();
    }

    db.unguarded("ALTER TABLE t20 NO FORCE ROW LEVEL SECURITY");
    let problems = db.verify();
    assert!(problems.iter().any(|p| p.object == "public.t20"), "ground truth: t20 deviates: {problems:#?}");

    owner
        .batch_execute("DROP INDEX t2_v_idx")
        .unwrap_or_else(|e| panic!("dropping a harmless index of t2 must not inspect t20: {}", describe(&e)));
    assert!(!relation_exists(&mut su, "t2_v_idx"), "ground truth: t2_v_idx is gone");

    let error = expect_refused(owner.batch_execute("DROP INDEX t1_tenant_id_idx"), "public.t1");
    assert!(!error.message().contains("t20"), "the refusal is about t1 only: {:?}", error.message());
    assert!(relation_exists(&mut su, "t1_tenant_id_idx"), "ground truth: t1's tenant index is still there");

    for table in ["t1", "t2"] {
        assert_isolated(db.server(), &db.name, table, &[("acme", &a), ("globex", &b)]);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. What makes a migration's DDL cheap must not open anything
// ---------------------------------------------------------------------------------------------

/// Reading `table` without a tenant context fails with 28000: FORCE applies to the owner.
#[track_caller]
fn closed_to_owner(client: &mut impl postgres::GenericClient, table: &str, situation: &str) {
    let error = expect_sqlstate(
        client.query(&format!("SELECT count(*) FROM {table}"), &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("no tenant context"), "{situation}: unexpected message {:?}", error.message());
}

/// The statements the extension vets before they run (an index created or dropped, a per-tenant
/// foreign key added) skip the guard's checks afterwards. What the owner's code runs *inside*
/// such a statement is a statement of its own and is checked; the foreign key's validation lifts
/// FORCE for that statement only, also when it fails in a savepoint; a DROP INDEX by a role that
/// does not own the table takes no lock before PostgreSQL refuses it; a dropped table leaves
/// every registry table.
#[test]
fn vetted_ddl_checks_what_runs_inside_it_and_lifts_force_for_itself_only() {
    let db = TestDb::new("migrations_vetted");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let mut su = db.superuser();
    let mut owner = db.owner();
    run(
        &mut owner,
        &format!(
            "CREATE TABLE parents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
             SELECT multitenancy.tenant_enable('parents');
             CREATE TABLE children (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, parent_id bigint,
                                    note text NOT NULL);
             CREATE INDEX children_note_idx ON children (note);
             SELECT multitenancy.tenant_enable('children');
             CREATE TABLE victim (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, secret text NOT NULL);
             SELECT multitenancy.tenant_enable('victim');
             GRANT SELECT, INSERT ON parents, children, victim TO {APP};"
        ),
    );
    let mut app = db.app();
    for slug in ["acme", "globex"] {
        let mut tx = begin_as(&mut app, slug);
        let id: i64 = tx.query_one("INSERT INTO parents (name) VALUES ($1) RETURNING id", &[&slug]).unwrap().get(0);
        tx.execute("INSERT INTO children (parent_id, note) VALUES ($1, $2)", &[&id, &slug]).unwrap();
        tx.execute("INSERT INTO victim (secret) VALUES ($1)", &[&format!("{slug}'s secret")]).unwrap();
        tx.commit().unwrap();
    }

    // The owner's function in an index expression weakens another enabled table while the
    // (vetted) CREATE INDEX builds: that ALTER TABLE is its own statement, and is refused.
    run(
        &mut owner,
        "CREATE FUNCTION sneaky_ddl(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
         BEGIN
             EXECUTE 'ALTER TABLE public.victim NO FORCE ROW LEVEL SECURITY';
             RETURN $1;
         END $$;
         CREATE FUNCTION sneaky(bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT public.sneaky_ddl($1)';",
    );
    // (Schema-qualified: PostgreSQL 17 runs index expressions with search_path = pg_catalog, pg_temp.)
    expect_refused(
        owner.batch_execute("CREATE INDEX children_sneaky_idx ON children (public.sneaky(id))"),
        "public.victim",
    );
    assert!(all_forced(&mut su, &["victim"]), "ground truth: victim is still forced");
    assert!(!relation_exists(&mut su, "children_sneaky_idx"), "ground truth: the index was not built");
    let b_secrets = count(&mut su, &format!("SELECT count(*) FROM victim WHERE tenant_id = '{b}'"));
    assert_eq!(b_secrets, 1, "ground truth: B's secret exists");
    closed_to_owner(&mut owner, "victim", "after the refused index");

    // The foreign key is validated over both tenants' rows (FORCE lifted for that statement) ...
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        "ALTER TABLE children ADD CONSTRAINT children_parent_fk FOREIGN KEY (parent_id) REFERENCES parents (id)",
    );
    // ... and in the next statement of the same transaction the owner is filtered again.
    closed_to_owner(&mut tx, "parents", "right after adding the foreign key");
    tx.rollback().unwrap();
    // A foreign key that fails its validation, caught in a savepoint: FORCE is back afterwards.
    su.execute("INSERT INTO children (tenant_id, parent_id, note) VALUES ($1::text::uuid, -1, 'orphan')", &[&a])
        .unwrap();
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        "DO $$ BEGIN
             ALTER TABLE children ADD CONSTRAINT children_parent_fk FOREIGN KEY (parent_id) REFERENCES parents (id);
         EXCEPTION WHEN foreign_key_violation THEN
             PERFORM pg_catalog.set_config('mt_test.caught', 'yes', true);
         END $$",
    );
    let caught: Option<String> =
        tx.query_one("SELECT pg_catalog.current_setting('mt_test.caught', true)", &[]).unwrap().get(0);
    assert_eq!(caught.as_deref(), Some("yes"), "the orphan fails the validation");
    closed_to_owner(&mut tx, "parents", "after a failed foreign key in a savepoint");
    tx.rollback().unwrap();
    su.execute("DELETE FROM children WHERE note = 'orphan'", &[]).unwrap();

    // DROP INDEX by a role that does not own the table: PostgreSQL's 42501, at once, not a wait
    // for the lock the owner's open transaction holds.
    let mut holder = db.owner();
    let mut hold = holder.transaction().unwrap();
    hold.batch_execute("LOCK TABLE children IN ACCESS SHARE MODE").unwrap();
    app.batch_execute("SET lock_timeout = '3s'").unwrap();
    expect_sqlstate(app.batch_execute("DROP INDEX children_note_idx"), &SqlState::INSUFFICIENT_PRIVILEGE);
    hold.rollback().unwrap();
    assert!(relation_exists(&mut su, "children_note_idx"), "ground truth: the index is still there");

    // A vetted DROP INDEX (no tenant_id in it) and the isolation after all of it.
    run(&mut owner, "DROP INDEX children_note_idx");
    assert!(!relation_exists(&mut su, "children_note_idx"));
    for table in ["parents", "children", "victim"] {
        assert_isolated(db.server(), &db.name, table, &[("acme", &a), ("globex", &b)]);
    }
    assert!(all_forced(&mut su, &["parents", "children", "victim"]));
    assert_eq!(db.verify(), vec![], "verify() after the vetted statements");

    // A dropped table leaves every registry table, its template rows included.
    grant_to_owner(&db, "multitenancy.tenant_template(regclass)");
    let mut tx = owner.transaction().unwrap();
    run(
        &mut tx,
        "CREATE TABLE seeded (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
         INSERT INTO seeded (name) VALUES ('one'), ('two');
         SELECT multitenancy.tenant_template('seeded');",
    );
    tx.commit().unwrap();
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.templates"), 2, "ground truth: the template");
    run(&mut owner, "DROP TABLE seeded, victim");
    for registry in ["enabled_tables WHERE relid::oid NOT IN ('parents'::regclass, 'children'::regclass)", "templates"]
    {
        assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.{registry}")), 0, "{registry}");
    }
}
