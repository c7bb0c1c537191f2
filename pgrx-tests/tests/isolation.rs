//! Tenant isolation, tested the way an attacker or a buggy application would meet it: through a
//! real connection as the application role ([`APP`]: NOSUPERUSER, NOBYPASSRLS, owns nothing).
//!
//! Every security assertion is paired with
//! - ground truth read by the superuser (the rows we fail to see do exist, the rows we fail to
//!   change are unchanged), and
//! - a positive control (the same session, with the right tenant, does see / change them),
//!
//! so that no assertion can pass merely because the table is empty or the query is broken.
use multitenancy_integration::*;

// ---------------------------------------------------------------------------------------------
// Private helpers (candidates for the harness, see the report).
// ---------------------------------------------------------------------------------------------

/// Ground truth (as superuser): `(id, item, amount)` of every row of a tenant, ordered by id.
fn rows_of(o: &Orders, tenant_id: &str) -> Vec<(i64, String, i32)> {
    o.db.superuser()
        .query("SELECT id, item, amount FROM orders WHERE tenant_id = $1::text::uuid ORDER BY id", &[&tenant_id])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Ground truth (as superuser): ids of a tenant's rows.
fn ids_of(o: &Orders, tenant_id: &str) -> Vec<i64> {
    rows_of(o, tenant_id).into_iter().map(|(id, _, _)| id).collect()
}

/// Ground truth (as superuser): every row of the table, whatever its tenant.
fn total_rows(o: &Orders) -> i64 {
    count(&mut o.db.superuser(), "SELECT count(*) FROM orders")
}

/// Ground truth (as superuser): the tenant of one row, as text.
fn tenant_of_row(o: &Orders, id: i64) -> String {
    o.db.superuser().query_one("SELECT tenant_id::text FROM orders WHERE id = $1", &[&id]).unwrap().get(0)
}

/// Both tenants have rows: the precondition that makes "0 rows" or "an error" meaningful.
#[track_caller]
fn assert_both_tenants_have_rows(o: &Orders) {
    assert_eq!(o.true_count(&o.a), o.rows_a, "ground truth: tenant A's rows exist");
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: tenant B's rows exist");
    assert!(o.rows_a > 0 && o.rows_b > 0, "the fixture must give both tenants rows");
}

/// The value of `multitenancy.tenant_id` as `current_setting` shows it.
fn setting(client: &mut impl postgres::GenericClient) -> String {
    client.query_one("SELECT current_setting('multitenancy.tenant_id')", &[]).unwrap().get(0)
}

/// The client's tenant sees exactly its own rows: the positive control negative checks lean on.
#[track_caller]
fn assert_sees_exactly_own_rows(tx: &mut impl postgres::GenericClient, own: &str, own_rows: i64) {
    assert_eq!(count(tx, "SELECT count(*) FROM orders"), own_rows, "a tenant sees all of its own rows");
    let own_count: i64 =
        tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&own]).unwrap().get(0);
    assert_eq!(own_count, own_rows, "a tenant sees its own rows when filtering by its own id");
}

// ---------------------------------------------------------------------------------------------
// 1-5: reads and writes across tenants
// ---------------------------------------------------------------------------------------------

#[test]
fn tenant_cannot_select_another_tenants_rows() {
    let o = Orders::new("select_isolation");
    assert_both_tenants_have_rows(&o);
    let b_ids = ids_of(&o, &o.b);
    let a_ids = ids_of(&o, &o.a);
    let mut app = o.db.app();

    {
        let mut tx = begin_as(&mut app, "acme");
        // Positive control: A sees exactly its own rows.
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        let seen: Vec<i64> =
            tx.query("SELECT id FROM orders ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(seen, a_ids, "A sees exactly A's ids");
        assert_eq!(count(&mut tx, "SELECT count(DISTINCT tenant_id) FROM orders"), 1);
        // By count of B's tenant id.
        let by_tenant: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap().get(0);
        assert_eq!(by_tenant, 0, "A sees none of B's rows by WHERE tenant_id = B");
        // By id lookup of each known B id.
        for id in &b_ids {
            let rows = tx.query("SELECT id, item FROM orders WHERE id = $1", &[id]).unwrap();
            assert!(rows.is_empty(), "A must not see B's row {id}, got {rows:?}");
        }
        // A's own id lookup works (positive control for the lookup itself).
        assert_eq!(tx.query("SELECT id FROM orders WHERE id = $1", &[&a_ids[0]]).unwrap().len(), 1);
        tx.commit().unwrap();
    }
    {
        // Positive control: B, on the same connection, does see these very rows.
        let mut tx = begin_as(&mut app, "globex");
        assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
        for id in &b_ids {
            assert_eq!(tx.query("SELECT id FROM orders WHERE id = $1", &[id]).unwrap().len(), 1);
        }
        let by_a: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.a]).unwrap().get(0);
        assert_eq!(by_a, 0, "and B sees none of A's");
        tx.commit().unwrap();
    }
    assert_both_tenants_have_rows(&o);
}

#[test]
fn tenant_cannot_update_another_tenants_rows() {
    let o = Orders::new("update_isolation");
    assert_both_tenants_have_rows(&o);
    let b_before = rows_of(&o, &o.b);
    let a_before = rows_of(&o, &o.a);
    let mut app = o.db.app();

    let mut tx = begin_as(&mut app, "acme");
    for (id, _, _) in &b_before {
        let n = tx.execute("UPDATE orders SET item = 'stolen', amount = 666 WHERE id = $1", &[id]).unwrap();
        assert_eq!(n, 0, "UPDATE of B's row {id} as A must affect nothing");
    }
    let n = tx
        .execute("UPDATE orders SET item = 'stolen', amount = 666 WHERE tenant_id = $1::text::uuid", &[&o.b])
        .unwrap();
    assert_eq!(n, 0, "UPDATE ... WHERE tenant_id = B as A must affect nothing");
    // Positive control: an UPDATE without WHERE changes exactly A's rows.
    let n = tx.execute("UPDATE orders SET amount = amount + 100", &[]).unwrap();
    assert_eq!(n as i64, o.rows_a, "UPDATE without WHERE affects exactly A's rows");
    tx.commit().unwrap();

    assert_eq!(rows_of(&o, &o.b), b_before, "B's rows are unchanged (item and amount)");
    let a_after = rows_of(&o, &o.a);
    let expected: Vec<_> = a_before.iter().map(|(id, item, amount)| (*id, item.clone(), amount + 100)).collect();
    assert_eq!(a_after, expected, "A's rows were updated (the UPDATE itself worked)");
    assert_both_tenants_have_rows(&o);
}

#[test]
fn tenant_cannot_delete_another_tenants_rows() {
    let o = Orders::new("delete_isolation");
    assert_both_tenants_have_rows(&o);
    let b_before = rows_of(&o, &o.b);
    let mut app = o.db.app();

    let mut tx = begin_as(&mut app, "acme");
    for (id, _, _) in &b_before {
        assert_eq!(tx.execute("DELETE FROM orders WHERE id = $1", &[id]).unwrap(), 0, "DELETE of B's row {id}");
    }
    assert_eq!(tx.execute("DELETE FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap(), 0);
    // Positive control: DELETE without WHERE removes exactly A's rows.
    let n = tx.execute("DELETE FROM orders", &[]).unwrap();
    assert_eq!(n as i64, o.rows_a, "DELETE without WHERE deletes exactly A's rows");
    tx.commit().unwrap();

    assert_eq!(rows_of(&o, &o.b), b_before, "B's rows still exist, unchanged");
    assert_eq!(o.true_count(&o.a), 0, "A's rows are gone (the DELETE itself worked)");
}

#[test]
fn tenant_cannot_insert_a_row_for_another_tenant() {
    let o = Orders::new("insert_isolation");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();

    {
        let mut tx = begin_as(&mut app, "acme");
        let error = expect_sqlstate(
            tx.execute("INSERT INTO orders (item, tenant_id) VALUES ('forged', $1::text::uuid)", &[&o.b]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert!(
            error.message().contains("new row violates row-level security policy"),
            "unexpected message {:?}",
            error.message()
        );
    } // dropped: rolled back
    {
        // Positive controls: an explicit tenant_id of A's own is accepted, and so is the default.
        let mut tx = begin_as(&mut app, "acme");
        tx.execute("INSERT INTO orders (item, tenant_id) VALUES ('own-explicit', $1::text::uuid)", &[&o.a]).unwrap();
        tx.execute("INSERT INTO orders (item) VALUES ('own-default')", &[]).unwrap();
        tx.commit().unwrap();
    }

    let mut su = o.db.superuser();
    assert_eq!(count(&mut su, "SELECT count(*) FROM orders WHERE item = 'forged'"), 0, "no forged row exists");
    assert_eq!(o.true_count(&o.b), o.rows_b, "B's row count is unchanged");
    assert_eq!(o.true_count(&o.a), o.rows_a + 2, "A's own inserts landed, as A's");
}

#[test]
fn tenant_cannot_move_its_row_to_another_tenant() {
    let o = Orders::new("update_moves_tenant");
    assert_both_tenants_have_rows(&o);
    let a_id = ids_of(&o, &o.a)[0];
    let a_before = rows_of(&o, &o.a);
    let mut app = o.db.app();

    {
        let mut tx = begin_as(&mut app, "acme");
        let error = expect_sqlstate(
            tx.execute("UPDATE orders SET tenant_id = $1::text::uuid WHERE id = $2", &[&o.b, &a_id]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert!(error.message().contains("new row violates row-level security policy"), "{}", error.message());
    }
    {
        // Without WHERE or RETURNING the UPDATE needs no SELECT right, so PostgreSQL checks the new
        // rows against the WITH CHECK expressions only (the USING of the SELECT policies is not
        // applied to them): this variant fails if the isolation policy's WITH CHECK is weakened.
        let mut tx = begin_as(&mut app, "acme");
        let error = expect_sqlstate(
            tx.execute("UPDATE orders SET tenant_id = $1::text::uuid", &[&o.b]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert!(error.message().contains("new row violates row-level security policy"), "{}", error.message());
    }
    {
        // Positive control: the same row can be updated while it stays A's.
        let mut tx = begin_as(&mut app, "acme");
        let n = tx.execute("UPDATE orders SET tenant_id = $1::text::uuid WHERE id = $2", &[&o.a, &a_id]).unwrap();
        assert_eq!(n, 1, "the row is visible and updatable by its own tenant");
        tx.rollback().unwrap();
    }

    assert_eq!(tenant_of_row(&o, a_id), o.a, "the row still belongs to A");
    assert_eq!(rows_of(&o, &o.a), a_before, "A's rows are unchanged");
    assert_eq!(o.true_count(&o.b), o.rows_b, "B gained no row");
}

// ---------------------------------------------------------------------------------------------
// 6: isolation is RESTRICTIVE
// ---------------------------------------------------------------------------------------------

#[test]
fn an_application_permissive_policy_does_not_widen_access() {
    let o = Orders::new("permissive_policy");
    assert_both_tenants_have_rows(&o);
    o.db.owner()
        .batch_execute("CREATE POLICY app_wide ON orders AS PERMISSIVE FOR ALL USING (true) WITH CHECK (true)")
        .unwrap();
    // The policy really is there, and really is permissive: were isolation a permissive policy
    // too, PostgreSQL would OR them and A would see everything.
    let permissive: Vec<String> =
        o.db.superuser()
            .query(
                "SELECT policyname::text FROM pg_policies WHERE tablename = 'orders' AND permissive = 'PERMISSIVE' \
             ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(permissive, ["app_wide", "multitenancy_access"]);

    let mut app = o.db.app();
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        let b_seen: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap().get(0);
        assert_eq!(b_seen, 0, "app_wide must not let A see B's rows");
        let error = expect_sqlstate(
            tx.execute("INSERT INTO orders (item, tenant_id) VALUES ('forged', $1::text::uuid)", &[&o.b]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
        assert!(error.message().contains("new row violates row-level security policy"), "{}", error.message());
    }
    {
        let mut tx = begin_as(&mut app, "acme");
        let b_id = ids_of(&o, &o.b)[0];
        assert_eq!(tx.execute("UPDATE orders SET amount = 0 WHERE id = $1", &[&b_id]).unwrap(), 0);
        assert_eq!(tx.execute("DELETE FROM orders WHERE id = $1", &[&b_id]).unwrap(), 0);
        tx.commit().unwrap();
    }
    {
        let mut tx = begin_as(&mut app, "globex");
        assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
        tx.commit().unwrap();
    }
    assert_both_tenants_have_rows(&o);
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE item = 'forged'"), 0);
}

// ---------------------------------------------------------------------------------------------
// 7: no context fails closed
// ---------------------------------------------------------------------------------------------

#[test]
fn no_tenant_context_fails_closed_with_an_error() {
    let o = Orders::new("no_context");
    assert_both_tenants_have_rows(&o);

    // (a) A fresh connection that never set anything.
    assert_no_context(&mut o.db.app(), "fresh connection");

    // (b) Explicitly empty.
    {
        let mut app = o.db.app();
        app.batch_execute("SET multitenancy.tenant_id = ''").unwrap();
        assert_no_context(&mut app, "SET multitenancy.tenant_id = ''");
    }

    // (c) RESET, (d) DISCARD ALL (what poolers run between clients), (e) RESET ALL, each after
    // a session-level SET that works (positive control).
    for (clear, tenant, rows) in [
        ("RESET multitenancy.tenant_id", &o.a, o.rows_a),
        ("DISCARD ALL", &o.a, o.rows_a),
        ("RESET ALL", &o.b, o.rows_b),
    ] {
        let mut app = o.db.app();
        {
            let mut tx = app.transaction().unwrap();
            tx.batch_execute(&format!("SET multitenancy.tenant_id = '{tenant}'")).unwrap();
            assert_sees_exactly_own_rows(&mut tx, tenant, rows);
            tx.commit().unwrap();
        }
        app.batch_execute(clear).unwrap();
        assert_no_context(&mut app, &format!("after {clear}"));
        assert_eq!(setting(&mut app), "", "after {clear}");
    }

    // (f) Malformed: a slug is not a uuid (SET takes ids; slugs go through tenant_set).
    {
        let mut app = o.db.app();
        {
            let mut tx = app.transaction().unwrap();
            tx.batch_execute("SET multitenancy.tenant_id = 'acme'").unwrap();
            let error = expect_sqlstate(
                tx.query("SELECT count(*) FROM orders", &[]),
                &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            );
            assert!(error.message().contains("invalid tenant context"), "{}", error.message());
        }
        // The same inside a transaction with SET LOCAL.
        let mut tx = app.transaction().unwrap();
        tx.batch_execute("SET LOCAL multitenancy.tenant_id = 'not-a-uuid'").unwrap();
        let error = expect_sqlstate(
            tx.query("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("invalid tenant context"), "{}", error.message());
    }

    // INSERT without context: the column default calls current_tenant_id(), which raises.
    let total_before = total_rows(&o);
    {
        let mut app = o.db.app();
        expect_sqlstate(
            app.execute("INSERT INTO orders (item) VALUES ('no-context')", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        // Nor can an explicit tenant_id get a row in without context (the policy needs one).
        expect_sqlstate(
            app.execute("INSERT INTO orders (item, tenant_id) VALUES ('no-context', $1::text::uuid)", &[&o.a]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        // Nor UPDATE or DELETE.
        expect_sqlstate(
            app.execute("UPDATE orders SET amount = 0", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        expect_sqlstate(app.execute("DELETE FROM orders", &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    }
    assert_eq!(total_rows(&o), total_before, "no row was inserted or deleted");
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE item = 'no-context'"), 0);
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE amount = 0"), 0);
    assert_both_tenants_have_rows(&o);
}

// ---------------------------------------------------------------------------------------------
// 8: cached plans follow the tenant
// ---------------------------------------------------------------------------------------------

#[test]
fn prepared_statements_follow_a_tenant_switch_under_generic_plans() {
    // Different row counts, so a plan that kept the first tenant would be visible.
    let o = Orders::with_rows("prepared_generic", 5, 2);
    assert_both_tenants_have_rows(&o);
    let truth = [("acme", o.a.clone(), o.true_count(&o.a)), ("globex", o.b.clone(), o.true_count(&o.b))];
    assert_ne!(truth[0].2, truth[1].2);

    let mut app = o.db.app();
    app.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();

    // Protocol-level prepared statements: one without and one with a parameter (with a
    // parameter, force_generic_plan is what stops a per-execution custom plan).
    let plain = app.prepare("SELECT count(*), count(DISTINCT tenant_id) FROM orders").unwrap();
    let param = app.prepare("SELECT count(*), count(DISTINCT tenant_id) FROM orders WHERE amount >= $1").unwrap();
    // SQL-level PREPARE / EXECUTE.
    app.batch_execute(
        "PREPARE sql_plain AS SELECT count(*), count(DISTINCT tenant_id) FROM orders;
         PREPARE sql_param(int) AS SELECT count(*), count(DISTINCT tenant_id) FROM orders WHERE amount >= $1",
    )
    .unwrap();

    for round in 0..8 {
        let (slug, id, expected) = &truth[round % 2];
        let mut tx = begin_as(&mut app, slug);
        let results: [(&str, (i64, i64)); 4] = [
            ("protocol, no parameter", {
                let r = tx.query_one(&plain, &[]).unwrap();
                (r.get(0), r.get(1))
            }),
            ("protocol, parameter", {
                let r = tx.query_one(&param, &[&0i32]).unwrap();
                (r.get(0), r.get(1))
            }),
            ("EXECUTE, no parameter", {
                let r = tx.query_one("EXECUTE sql_plain", &[]).unwrap();
                (r.get(0), r.get(1))
            }),
            ("EXECUTE, parameter", {
                let r = tx.query_one("EXECUTE sql_param(0)", &[]).unwrap();
                (r.get(0), r.get(1))
            }),
        ];
        for (how, (n, tenants)) in results {
            assert_eq!(n, *expected, "round {round} as {slug} ({how}): count must be {slug}'s true count");
            assert_eq!(tenants, 1, "round {round} as {slug} ({how}): one tenant only");
        }
        let mine: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[id]).unwrap().get(0);
        assert_eq!(mine, *expected);
        tx.commit().unwrap();
    }

    // The statements really ran on generic plans (so a plan built for the first tenant was reused).
    let plans = app
        .query("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements ORDER BY statement", &[])
        .unwrap();
    let mut checked = 0;
    for row in &plans {
        let statement: String = row.get(0);
        if !statement.contains("FROM orders") {
            continue;
        }
        let (generic, custom): (i64, i64) = (row.get(1), row.get(2));
        assert!(generic >= 8 && custom == 0, "{statement}: {generic} generic / {custom} custom plans");
        checked += 1;
    }
    assert_eq!(checked, 4, "all four prepared statements are listed: {plans:?}");

    // And without a context the cached plans fail closed too.
    let mut tx = app.transaction().unwrap();
    expect_sqlstate(tx.query_one(&plain, &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
}

// ---------------------------------------------------------------------------------------------
// 9-10: the context is transaction-local
// ---------------------------------------------------------------------------------------------

#[test]
fn tenant_context_does_not_outlive_its_transaction() {
    let o = Orders::new("context_lifetime");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();

    // COMMIT
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        tx.commit().unwrap();
    }
    assert_no_context(&mut app, "after COMMIT of a tenant_set transaction");
    assert_eq!(setting(&mut app), "", "the setting is empty after COMMIT");

    // ROLLBACK
    {
        let mut tx = begin_as(&mut app, "globex");
        assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
        tx.rollback().unwrap();
    }
    assert_no_context(&mut app, "after ROLLBACK of a tenant_set transaction");
    assert_eq!(setting(&mut app), "", "the setting is empty after ROLLBACK");

    // SET LOCAL behaves the same.
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", o.a)).unwrap();
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        tx.commit().unwrap();
    }
    assert_no_context(&mut app, "after COMMIT of a SET LOCAL transaction");

    // And the next transaction on the same connection starts without context too.
    let mut tx = app.transaction().unwrap();
    let none: Option<String> =
        tx.query_one("SELECT multitenancy.current_tenant_id_or_null()::text", &[]).unwrap().get(0);
    assert_eq!(none, None);
    assert_no_context(&mut tx, "in the next transaction");
}

#[test]
fn tenant_set_outside_a_transaction_block_is_refused() {
    let o = Orders::new("tenant_set_autocommit");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();

    let error = expect_sqlstate(
        app.query_one("SELECT multitenancy.tenant_set('acme')", &[]),
        &SqlState::NO_ACTIVE_SQL_TRANSACTION,
    );
    assert!(error.message().contains("transaction block"), "{}", error.message());
    assert_no_context(&mut app, "after a refused tenant_set");
    let none: Option<String> =
        app.query_one("SELECT multitenancy.current_tenant_id_or_null()::text", &[]).unwrap().get(0);
    assert_eq!(none, None);

    // Same over the simple-query protocol (one statement = its own implicit transaction).
    let error = app.simple_query("SELECT multitenancy.tenant_set('acme')").unwrap_err();
    assert_eq!(db_error(&error).code(), &SqlState::NO_ACTIVE_SQL_TRANSACTION);
    assert_no_context(&mut app, "after a refused tenant_set (simple query)");

    // Positive control: the same call inside a transaction block works.
    let mut tx = begin_as(&mut app, "acme");
    assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
}

// ---------------------------------------------------------------------------------------------
// 11-12: roles
// ---------------------------------------------------------------------------------------------

#[test]
fn table_owner_is_subject_to_row_level_security() {
    let o = Orders::new("owner_forced");
    assert_both_tenants_have_rows(&o);
    let mut owner = o.db.owner();
    let is_owner: bool = owner
        .query_one(
            "SELECT pg_get_userbyid(relowner) = current_user AND NOT rolsuper AND NOT rolbypassrls \
             FROM pg_class, pg_roles WHERE pg_class.oid = 'orders'::regclass AND rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(is_owner, "the test runs as the table's owner, who is neither superuser nor BYPASSRLS");

    {
        let mut tx = begin_as(&mut owner, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        let b_seen: i64 =
            tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.b]).unwrap().get(0);
        assert_eq!(b_seen, 0, "the owner with A's context sees none of B's rows");
        let b_id = ids_of(&o, &o.b)[0];
        assert_eq!(tx.execute("UPDATE orders SET amount = 0 WHERE id = $1", &[&b_id]).unwrap(), 0);
        tx.commit().unwrap();
    }
    {
        let mut tx = begin_as(&mut owner, "globex");
        assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
        tx.commit().unwrap();
    }
    assert_no_context(&mut owner, "owner without context");
    assert_both_tenants_have_rows(&o);
    assert_eq!(count(&mut o.db.superuser(), "SELECT count(*) FROM orders WHERE amount = 0"), 0);
}

#[test]
fn app_role_cannot_touch_the_registry_or_manage_tables() {
    let o = Orders::new("registry_privileges");
    let mut su = o.db.superuser();
    let tenants_before = count(&mut su, "SELECT count(*) FROM multitenancy.tenants");
    assert_eq!(tenants_before, 2, "ground truth: the registry holds acme and globex");
    let enabled_before = count(&mut su, "SELECT count(*) FROM multitenancy.enabled_tables");
    assert_eq!(enabled_before, 1);

    let mut app = o.db.app();
    let denied = SqlState::INSUFFICIENT_PRIVILEGE;
    // The tenant registry is readable through row level security: without a context no row,
    // with one only the context's own row (the ground truth above says both exist).
    assert_eq!(count(&mut app, "SELECT count(*) FROM multitenancy.tenants"), 0);
    {
        let mut tx = begin_as(&mut app, "acme");
        let seen: Vec<String> =
            tx.query("SELECT id::text FROM multitenancy.tenants", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(seen, std::slice::from_ref(&o.a));
    }
    expect_sqlstate(app.query("SELECT * FROM multitenancy.enabled_tables", &[]), &denied);
    expect_sqlstate(app.execute("INSERT INTO multitenancy.tenants (slug, name) VALUES ('evil', 'Evil')", &[]), &denied);
    expect_sqlstate(app.execute("UPDATE multitenancy.tenants SET status = 'active'", &[]), &denied);
    expect_sqlstate(app.execute("DELETE FROM multitenancy.enabled_tables", &[]), &denied);
    expect_sqlstate(app.query("SELECT multitenancy.tenant_create('x')", &[]), &denied);
    expect_sqlstate(app.query("SELECT multitenancy.tenant_create('Evil', 'evil', 'free')", &[]), &denied);
    expect_sqlstate(app.query("SELECT multitenancy.tenant_enable('orders')", &[]), &denied);
    expect_sqlstate(app.query("SELECT multitenancy.tenant_disable('orders')", &[]), &denied);
    // Not the table's owner either: no way to switch RLS off or drop the policies.
    expect_sqlstate(
        app.batch_execute("ALTER TABLE orders NO FORCE ROW LEVEL SECURITY"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    expect_sqlstate(
        app.batch_execute("DROP POLICY multitenancy_isolation ON orders"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );

    // Positive control: what the app is meant to do still works.
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.tenants"), tenants_before);
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.tenants WHERE status <> 'active'"), 0);
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.enabled_tables"), enabled_before);
    let policies = count(&mut su, "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass");
    assert_eq!(policies, 2);
}

// ---------------------------------------------------------------------------------------------
// 13-14: other ways of setting the context
// ---------------------------------------------------------------------------------------------

#[test]
fn set_config_switches_the_tenant_in_plain_mode() {
    // Plain mode trusts the application's SQL: whoever can run SQL as the app role can name any
    // tenant with set_config / SET LOCAL, exactly as tenant_set does. The isolation this mode
    // guarantees is between tenants *given* a correct context (no rows of other tenants, no
    // context = error). A later hardened mode (signed/locked context) is what addresses an
    // application whose SQL is attacker-controlled; this test pins the plain-mode behaviour.
    let o = Orders::new("set_config_plain");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();

    // One tenant per transaction: a transaction that acts for A cannot switch to B (28000),
    // whichever way the setting is changed; A's rows stay A's.
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
        tx.query_one("SELECT set_config('multitenancy.tenant_id', $1, true)", &[&o.b]).unwrap();
        let error = expect_sqlstate(
            tx.query("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        assert!(error.message().contains("cannot switch"), "{}", error.message());
    }

    // A new transaction may name B with set_config alone.
    let mut tx = app.transaction().unwrap();
    let set: String = tx.query_one("SELECT set_config('multitenancy.tenant_id', $1, true)", &[&o.b]).unwrap().get(0);
    assert_eq!(set, o.b);
    let current: String = tx.query_one("SELECT multitenancy.current_tenant_id()::text", &[]).unwrap().get(0);
    assert_eq!(current, o.b);
    assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
    let a_seen: i64 =
        tx.query_one("SELECT count(*) FROM orders WHERE tenant_id = $1::text::uuid", &[&o.a]).unwrap().get(0);
    assert_eq!(a_seen, 0, "after switching to B, none of A's rows are visible");
    let ids: Vec<i64> = tx.query("SELECT id FROM orders ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ids_of(&o, &o.b), "exactly B's rows");
    tx.commit().unwrap();

    // is_local = true: gone after the transaction.
    assert_no_context(&mut app, "after a set_config(..., true) transaction");
}

#[test]
fn tenant_set_refuses_suspended_deleted_and_unknown_tenants() {
    let o = Orders::new("tenant_set_refusals");
    assert_both_tenants_have_rows(&o);
    let mut app = o.db.app();

    // Positive control: globex can be selected while active.
    {
        let mut tx = begin_as(&mut app, "globex");
        assert_sees_exactly_own_rows(&mut tx, &o.b, o.rows_b);
        tx.commit().unwrap();
    }

    // Checks that a refused tenant_set aborted the transaction and left no context behind.
    fn refused(app: &mut Client, tenant: &str, code: &SqlState, message: &str) {
        let mut tx = app.transaction().unwrap();
        let error = expect_sqlstate(tx.query_one("SELECT multitenancy.tenant_set($1)", &[&tenant]), code);
        assert!(error.message().contains(message), "tenant_set({tenant:?}): {}", error.message());
        // The transaction is aborted: nothing runs in it any more.
        expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), &SqlState::IN_FAILED_SQL_TRANSACTION);
        tx.rollback().unwrap();
        // A fresh transaction has no context.
        let mut tx = app.transaction().unwrap();
        let none: Option<String> =
            tx.query_one("SELECT multitenancy.current_tenant_id_or_null()::text", &[]).unwrap().get(0);
        assert_eq!(none, None, "tenant_set({tenant:?}) left a context behind");
        assert_no_context(&mut tx, "after a refused tenant_set");
        tx.rollback().unwrap();
    }

    let mut su = o.db.superuser();
    su.execute("UPDATE multitenancy.tenants SET status = 'suspended' WHERE slug = 'globex'", &[]).unwrap();
    refused(&mut app, "globex", &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "suspended");
    refused(&mut app, &o.b, &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "suspended");
    su.execute("UPDATE multitenancy.tenants SET status = 'deleted' WHERE slug = 'globex'", &[]).unwrap();
    refused(&mut app, "globex", &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "deleted");

    refused(&mut app, "nobody", &SqlState::UNDEFINED_OBJECT, "does not exist");
    refused(&mut app, "00000000-0000-4000-8000-000000000000", &SqlState::UNDEFINED_OBJECT, "does not exist");

    // A refused tenant_set in a transaction that already had a context does not keep serving it.
    {
        let mut tx = begin_as(&mut app, "acme");
        expect_sqlstate(
            tx.query_one("SELECT multitenancy.tenant_set('globex')", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        );
        expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), &SqlState::IN_FAILED_SQL_TRANSACTION);
    }
    assert_no_context(&mut app, "after the aborted transaction");

    // Positive control: acme (active) still works, and globex's rows still exist.
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_sees_exactly_own_rows(&mut tx, &o.a, o.rows_a);
    }
    assert_both_tenants_have_rows(&o);
}

// ---------------------------------------------------------------------------------------------
// 15: no default tenant survives RESET / DISCARD ALL
// ---------------------------------------------------------------------------------------------

#[test]
fn no_role_database_or_connection_default_can_set_a_tenant() {
    let o = Orders::new("no_default_tenant");
    assert_both_tenants_have_rows(&o);
    let db = &o.db.name;

    // The app role may change its own session defaults for ordinary settings; for the tenant it
    // is refused (the library is loaded first, so the setting's check runs).
    let mut app = o.db.app();
    app.query_one("SELECT multitenancy.current_tenant_id_or_null()", &[]).unwrap();
    for statement in [
        format!("ALTER ROLE CURRENT_USER SET multitenancy.tenant_id = '{}'", o.a),
        format!("ALTER ROLE CURRENT_USER IN DATABASE {db} SET multitenancy.tenant_id = '{}'", o.a),
    ] {
        let error = expect_sqlstate(app.batch_execute(&statement), &SqlState::INVALID_PARAMETER_VALUE);
        assert!(
            error.message().contains("cannot have a server, database, role or connection default"),
            "{}",
            error.message()
        );
    }
    // The same for a DBA whose session has the library loaded.
    let mut su = o.db.superuser();
    su.query_one("SELECT multitenancy.current_tenant_id_or_null()", &[]).unwrap();
    for statement in [
        format!("ALTER ROLE {APP} SET multitenancy.tenant_id = '{}'", o.a),
        format!("ALTER DATABASE {db} SET multitenancy.tenant_id = '{}'", o.a),
        format!("ALTER SYSTEM SET multitenancy.tenant_id = '{}'", o.a),
    ] {
        assert!(su.batch_execute(&statement).is_err(), "{statement} must be refused");
    }
    let stored = count(
        &mut su,
        "SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%multitenancy.tenant_id%'",
    );
    assert_eq!(stored, 0, "no default was stored");

    // The library is preloaded on the test server, so every session validates: a fresh
    // superuser session cannot store the default either, and a startup option is refused when
    // the connection starts (or, if a server lets it through, gives no tenant).
    let mut fresh_su = o.db.superuser();
    let statement = format!("ALTER ROLE {APP} IN DATABASE {db} SET multitenancy.tenant_id = '{}'", o.a);
    assert!(fresh_su.batch_execute(&statement).is_err(), "{statement} must be refused");
    let url = format!("{} options='-c multitenancy.tenant_id={}'", o.db.server().url(db, APP), o.a);
    match Client::connect(&url, NoTls) {
        Err(error) => {
            let message = db_error(&error).message();
            assert!(message.contains("cannot have a server, database, role or connection default"), "{message}");
        }
        Ok(mut with_option) => assert_no_context(&mut with_option, "a connection startup option"),
    }

    // Positive control: SET in a transaction still works, and RESET clears it.
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.a)).unwrap();
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
        tx.commit().unwrap();
    }
    app.batch_execute("RESET multitenancy.tenant_id").unwrap();
    assert_no_context(&mut app, "after RESET");
    assert_both_tenants_have_rows(&o);
}

/// Without shared_preload_libraries, a session that has not loaded the library cannot validate
/// the setting: a superuser's ALTER ROLE stores the default as a placeholder, and a startup
/// option is accepted as one. Neither may become a tenant when the library loads in an app
/// session (the check refuses them then), not even after DISCARD ALL.
#[test]
fn without_preloading_a_stored_or_startup_default_sets_no_tenant() {
    let o = Orders::on(Server::private(""), "no_default_tenant_unloaded", 3, 2);
    assert_both_tenants_have_rows(&o);
    let db = &o.db.name;
    let mut fresh_su = o.db.superuser();
    fresh_su
        .batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {db} SET multitenancy.tenant_id = '{}'", o.a))
        .unwrap();
    let mut app = o.db.app();
    assert_no_context(&mut app, "a stored role default");
    app.batch_execute("DISCARD ALL").unwrap();
    assert_no_context(&mut app, "a stored role default, after DISCARD ALL");
    fresh_su.batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {db} RESET multitenancy.tenant_id")).unwrap();

    let url = format!("{} options='-c multitenancy.tenant_id={}'", o.db.server().url(db, APP), o.a);
    let mut with_option = Client::connect(&url, NoTls).unwrap();
    assert_no_context(&mut with_option, "a connection startup option");
    // Positive control on this server: a SET in the transaction works.
    let mut tx = with_option.transaction().unwrap();
    tx.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.a)).unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
    tx.commit().unwrap();
    assert_both_tenants_have_rows(&o);
}
