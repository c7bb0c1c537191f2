//! Plans made with the tenant as a constant (`src/context/planning.rs`) never run for another
//! tenant. The planner puts the checked tenant of the context into the plan; every way
//! PostgreSQL keeps a plan for later — prepared statements (protocol-level and PREPARE, custom
//! and generic plans, every `plan_cache_mode`), SQL and PL/pgSQL functions' cached plans,
//! cursors held past their transaction — is run under tenant A, then B, then A again in one
//! session, as the application role, with both tenants' rows existing (ground truth read by the
//! superuser). Contexts from `tenant_set`, a signed token, claims and admin mode; and a context
//! changed behind the extension's back, which the check at executor start refuses.
use multitenancy_integration::*;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, Row};

const NO_CONTEXT: &SqlState = &SqlState::INVALID_AUTHORIZATION_SPECIFICATION;

const SUPPORT: &str = "mt_plan_support";
static SUPPORT_ROLE: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// acme (A) 4 rows, globex (B) 3 rows.
fn orders(tag: &str) -> Orders {
    let o = Orders::with_rows(tag, 4, 3);
    assert!(o.true_count(&o.a) == 4 && o.true_count(&o.b) == 3, "ground truth: both tenants have rows");
    o
}

fn items(rows: Vec<Row>) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

/// `items` are exactly the rows of tenant `slug` (id `tenant`), by ground truth.
#[track_caller]
fn assert_rows_of(o: &Orders, items: &[String], slug: &str, tenant: &str, situation: &str) {
    assert!(items.iter().all(|i| i.starts_with(&format!("{slug}-"))), "{situation}: rows of another tenant: {items:?}");
    assert_eq!(items.len() as i64, o.true_count(tenant), "{situation}: all of {slug}'s rows: {items:?}");
}

/// The tenants in the order the tests visit them: A, B, A.
fn visits(o: &Orders) -> [(&'static str, String); 3] {
    [("acme", o.a.clone()), ("globex", o.b.clone()), ("acme", o.a.clone())]
}

/// The uuid constant an EXPLAIN shows for the tenant predicate.
fn explained(tx: &mut impl GenericClient, sql: &str) -> String {
    tx.query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn prepared_statements_follow_the_tenant_in_every_plan_cache_mode() {
    let o = orders("plan_cache_prepared");
    for mode in ["auto", "force_generic_plan", "force_custom_plan"] {
        let mut app = o.db.app();
        app.batch_execute(&format!(
            "SET plan_cache_mode = {mode};
             PREPARE by_item(text) AS SELECT item FROM orders WHERE item <> $1 ORDER BY item"
        ))
        .unwrap();
        // A protocol-level prepared statement (what drivers with statement caching send).
        let statement = app.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
        for (round, (slug, tenant)) in visits(&o).iter().enumerate() {
            let mut tx = begin_as(&mut app, slug);
            // More than 5 executions: past the custom plans, the generic plan is chosen (auto).
            for i in 0..7 {
                let situation = format!("{mode}, visit {round} ({slug}), execution {i}");
                let got = items(tx.query(&statement, &[&"none"]).unwrap());
                assert_rows_of(&o, &got, slug, tenant, &format!("protocol-level statement, {situation}"));
                let got = items(tx.query("EXECUTE by_item('none')", &[]).unwrap());
                assert_rows_of(&o, &got, slug, tenant, &format!("PREPARE/EXECUTE, {situation}"));
            }
            // EXPLAIN shows what runs: the current tenant's constant, or (a generic plan in a
            // session that switches tenants) the context read when it runs — never the previous
            // tenant's constant.
            let plan = explained(&mut tx, "EXECUTE by_item('none')");
            assert!(
                plan.contains(tenant.as_str()) || plan.contains("InitPlan"),
                "{mode}, {slug}: the plan names the tenant or reads the context: {plan}"
            );
            let other = if tenant == &o.a { &o.b } else { &o.a };
            assert!(!plan.contains(other.as_str()), "{mode}, {slug}: the plan names another tenant: {plan}");
            tx.commit().unwrap();
        }
        // The plan cache did keep a plan: the mode was exercised, not bypassed.
        let (generic, custom): (i64, i64) = {
            let row = app
                .query_one("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'by_item'", &[])
                .unwrap();
            (row.get(0), row.get(1))
        };
        match mode {
            "force_custom_plan" => assert!(generic == 0 && custom >= 21, "{mode}: {generic} generic, {custom} custom"),
            _ => assert!(generic > 0, "{mode}: a generic plan was used ({generic} generic, {custom} custom)"),
        }
    }
}

#[test]
fn sql_and_plpgsql_functions_cached_plans_follow_the_tenant() {
    let o = orders("plan_cache_functions");
    o.db.owner()
        .batch_execute(&format!(
            "CREATE FUNCTION items_plpgsql() RETURNS SETOF text LANGUAGE plpgsql STABLE AS
                 $$ BEGIN RETURN QUERY SELECT item FROM orders ORDER BY item; END $$;
             CREATE FUNCTION items_plpgsql_loop() RETURNS SETOF text LANGUAGE plpgsql STABLE AS
                 $$ DECLARE r record; BEGIN
                      FOR r IN SELECT item FROM orders ORDER BY item LOOP RETURN NEXT r.item; END LOOP;
                    END $$;
             -- The SET clause keeps the SQL function from being inlined into the caller's query.
             CREATE FUNCTION items_sql() RETURNS SETOF text LANGUAGE sql STABLE SET search_path = public AS
                 $$ SELECT item FROM orders ORDER BY item $$;
             GRANT EXECUTE ON FUNCTION items_plpgsql(), items_plpgsql_loop(), items_sql() TO {APP};"
        ))
        .unwrap();
    let mut app = o.db.app();
    for (round, (slug, tenant)) in visits(&o).iter().enumerate() {
        let mut tx = begin_as(&mut app, slug);
        for function in ["items_plpgsql", "items_plpgsql_loop", "items_sql"] {
            for i in 0..7 {
                let got = items(tx.query(&format!("SELECT * FROM {function}()"), &[]).unwrap());
                assert_rows_of(&o, &got, slug, tenant, &format!("{function}, visit {round} ({slug}), call {i}"));
            }
        }
        tx.commit().unwrap();
    }
}

#[test]
fn cursors_held_past_their_transaction_keep_their_own_tenant() {
    let o = orders("plan_cache_cursors");
    let mut app = o.db.app();
    let mut tx = begin_as(&mut app, "acme");
    tx.batch_execute("DECLARE held_a CURSOR WITH HOLD FOR SELECT item FROM orders ORDER BY item").unwrap();
    tx.commit().unwrap();
    let mut tx = begin_as(&mut app, "globex");
    tx.batch_execute("DECLARE held_b CURSOR WITH HOLD FOR SELECT item FROM orders ORDER BY item").unwrap();
    // A cursor of the same text in B's transaction reads B's rows, not A's.
    let got = items(tx.query("FETCH ALL FROM held_b", &[]).unwrap());
    assert_rows_of(&o, &got, "globex", &o.b, "cursor declared under B");
    tx.commit().unwrap();
    // A held cursor holds the rows its own transaction read, for its own tenant.
    let got = items(app.query("FETCH ALL FROM held_a", &[]).unwrap());
    assert_rows_of(&o, &got, "acme", &o.a, "cursor declared under A, fetched after B's transaction");
    // And one declared under A again, after B's, reads A's.
    let mut tx = begin_as(&mut app, "acme");
    tx.batch_execute("DECLARE again CURSOR FOR SELECT item FROM orders ORDER BY item").unwrap();
    let got = items(tx.query("FETCH ALL FROM again", &[]).unwrap());
    assert_rows_of(&o, &got, "acme", &o.a, "cursor declared under A after B");
}

/// The support role: a member of multitenancy_admin, no other privilege than the app's.
fn support(o: &Orders) -> Client {
    SUPPORT_ROLE.get_or_init(|| {
        o.db.superuser()
            .batch_execute(&format!(
                "DO $$ BEGIN
                     CREATE ROLE {SUPPORT} LOGIN NOSUPERUSER NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END $$;
                 GRANT multitenancy_admin TO {SUPPORT};"
            ))
            .unwrap();
    });
    o.db.owner().batch_execute(&format!("GRANT SELECT ON orders TO {SUPPORT}")).unwrap();
    o.db.connect(SUPPORT)
}

#[test]
fn admin_mode_entered_and_left_never_reuses_a_plan_of_the_other_mode() {
    let o = orders("plan_cache_admin");
    let total = count(&mut o.db.superuser(), "SELECT count(*) FROM orders");
    let mut support = support(&o);
    let statement = support.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    for (round, (slug, tenant)) in visits(&o).iter().enumerate() {
        let mut tx = begin_as(&mut support, slug);
        for _ in 0..7 {
            let got = items(tx.query(&statement, &[&"none"]).unwrap());
            assert_rows_of(&o, &got, slug, tenant, &format!("visit {round} ({slug}) before admin mode"));
        }
        // Entered: every tenant's rows, with the tenant still set.
        tx.batch_execute("SAVEPOINT before_admin; SELECT multitenancy.admin_begin('plan cache test')").unwrap();
        for _ in 0..7 {
            let got = items(tx.query(&statement, &[&"none"]).unwrap());
            assert_eq!(got.len() as i64, total, "visit {round} ({slug}) in admin mode: every row: {got:?}");
        }
        // Left (the savepoint it was entered in rolled back): the tenant's rows again.
        tx.batch_execute("ROLLBACK TO SAVEPOINT before_admin").unwrap();
        for _ in 0..7 {
            let got = items(tx.query(&statement, &[&"none"]).unwrap());
            assert_rows_of(&o, &got, slug, tenant, &format!("visit {round} ({slug}) after admin mode"));
        }
        tx.commit().unwrap();
    }
}

#[test]
fn signed_contexts_follow_the_tenant() {
    let o = orders("plan_cache_signed");
    let mut su = o.db.superuser();
    su.batch_execute(&format!(
        "SELECT multitenancy.signing_key_add('k1', decode(repeat('ab', 32), 'hex'));
         ALTER ROLE {APP} IN DATABASE {} SET multitenancy.require_signed = on;",
        o.db.name
    ))
    .unwrap();
    let mut app = o.db.app();
    let statement = app.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    for (round, (slug, tenant)) in visits(&o).iter().enumerate() {
        let token: String = su.query_one("SELECT multitenancy.tenant_token($1)", &[slug]).unwrap().get(0);
        let mut tx = app.transaction().unwrap();
        tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token]).unwrap();
        for i in 0..7 {
            let got = items(tx.query(&statement, &[&"none"]).unwrap());
            assert_rows_of(&o, &got, slug, tenant, &format!("signed, visit {round} ({slug}), execution {i}"));
        }
        tx.commit().unwrap();
    }
}

fn claims_app(o: &Orders) -> Client {
    o.db.superuser()
        .batch_execute(&format!(
            "ALTER ROLE {APP} IN DATABASE {} SET multitenancy.claims_setting = 'request.jwt.claims'",
            o.db.name
        ))
        .unwrap();
    o.db.app()
}

fn claims(tenant: &str) -> String {
    serde_json::json!({"tenant_id": tenant, "role": "authenticated"}).to_string()
}

/// Claims live in a setting the extension does not own (PostgREST's `request.jwt.claims`): the
/// plans made with them are discarded when their transaction ends.
#[test]
fn claims_contexts_follow_the_tenant() {
    let o = orders("plan_cache_claims");
    let mut app = claims_app(&o);
    let statement = app.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    app.batch_execute("PREPARE by_item(text) AS SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    for (round, (slug, tenant)) in visits(&o).iter().enumerate() {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT set_config('request.jwt.claims', $1, true)", &[&claims(tenant)]).unwrap();
        for i in 0..7 {
            let got = items(tx.query(&statement, &[&"none"]).unwrap());
            assert_rows_of(&o, &got, slug, tenant, &format!("claims, visit {round} ({slug}), execution {i}"));
            let got = items(tx.query("EXECUTE by_item('none')", &[]).unwrap());
            assert_rows_of(&o, &got, slug, tenant, &format!("claims, PREPARE, visit {round} ({slug}), execution {i}"));
        }
        // Claims plans are discarded at the end of each transaction: a generic plan reads the
        // context when it runs rather than being made again in every transaction.
        let plan = explained(&mut tx, "EXECUTE by_item('none')");
        assert!(plan.contains("InitPlan") && !plan.contains(&o.a) && !plan.contains(&o.b), "{slug}: {plan}");
        tx.commit().unwrap();
    }
}

/// A context moved to another tenant where the extension cannot see it (the claims setting,
/// changed in the middle of a transaction) finds the plan made for the first tenant refused when
/// it starts: an error, never the first tenant's rows.
#[test]
fn a_plan_never_starts_for_another_tenant_than_it_was_made_for() {
    let o = orders("plan_cache_unseen");
    let mut app = claims_app(&o);
    let statement = app.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('request.jwt.claims', $1, true)", &[&claims(&o.a)]).unwrap();
    for _ in 0..7 {
        let got = items(tx.query(&statement, &[&"none"]).unwrap());
        assert_rows_of(&o, &got, "acme", &o.a, "claims of A");
    }
    tx.execute("SELECT set_config('request.jwt.claims', $1, true)", &[&claims(&o.b)]).unwrap();
    let result = tx.query(&statement, &[&"none"]);
    let error = expect_sqlstate(result, NO_CONTEXT);
    assert!(error.message().contains("one tenant") || error.message().contains("already acts"), "{error:?}");
}

/// No context: a plan made with a tenant does not run without one (28000, as without plans).
#[test]
fn a_kept_plan_does_not_run_without_a_context() {
    let o = orders("plan_cache_no_context");
    let mut app = o.db.app();
    app.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
    let statement = app.prepare("SELECT item FROM orders WHERE item <> $1 ORDER BY item").unwrap();
    let mut tx = begin_as(&mut app, "acme");
    let got = items(tx.query(&statement, &[&"none"]).unwrap());
    assert_rows_of(&o, &got, "acme", &o.a, "with A's context");
    tx.commit().unwrap();
    let error = expect_sqlstate(app.query(&statement, &[&"none"]), NO_CONTEXT);
    assert!(error.message().contains("tenant"), "{error:?}");
    // A session-level value set in an earlier transaction does not count either.
    app.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.a)).unwrap();
    expect_sqlstate(app.query(&statement, &[&"none"]), NO_CONTEXT);
}

/// PL/pgSQL evaluates a query of no table ("simple expression": `v := current_tenant_id()`,
/// `RETURN current_tenant_id()`) from its cached plan without starting an executor: such a query
/// keeps reading the context when it runs. Found by the review: a tenant constant there carried
/// the previous transaction's tenant into a transaction with no context (or a suspended tenant),
/// and a superuser's SECURITY DEFINER helper that filters by it returned the previous tenant's
/// rows.
#[test]
fn plpgsql_simple_expressions_read_the_context_when_they_run() {
    let o = orders("plan_cache_simple_expressions");
    let mut su = o.db.superuser();
    su.batch_execute(&format!(
        "CREATE FUNCTION public.my_tenant() RETURNS uuid LANGUAGE plpgsql STABLE AS
             $$ BEGIN RETURN multitenancy.current_tenant_id(); END $$;
         -- An application helper that filters by the context itself (it bypasses RLS).
         CREATE FUNCTION public.order_items() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
             SET search_path = pg_catalog, public AS
             $$ DECLARE v uuid := multitenancy.current_tenant_id();
                BEGIN RETURN (SELECT string_agg(item, ',' ORDER BY item) FROM public.orders WHERE tenant_id = v); END $$;
         GRANT EXECUTE ON FUNCTION public.my_tenant(), public.order_items() TO {APP};"
    ))
    .unwrap();
    let mut app = o.db.app();
    let mut tx = begin_as(&mut app, "acme");
    for _ in 0..3 {
        let mine: String = tx.query_one("SELECT public.my_tenant()::text", &[]).unwrap().get(0);
        assert_eq!(mine, o.a);
        let items: String = tx.query_one("SELECT public.order_items()", &[]).unwrap().get(0);
        assert!(items.starts_with("acme-"), "{items}");
    }
    tx.commit().unwrap();
    // Next transaction, no context: 28000, not A's tenant or rows.
    for sql in ["SELECT public.my_tenant()", "SELECT public.order_items()"] {
        let mut tx = app.transaction().unwrap();
        expect_sqlstate(tx.query_one(sql, &[]), NO_CONTEXT);
    }
    // A's context again, but A is suspended meanwhile: 28000.
    su.batch_execute("SELECT multitenancy.tenant_suspend('acme', 'plan cache test')").unwrap();
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT set_config('multitenancy.tenant_id', $1, true)", &[&o.a]).unwrap();
    expect_sqlstate(tx.query_one("SELECT public.my_tenant()", &[]), NO_CONTEXT);
}

/// A session that switches tenants keeps one generic plan that reads the context when it runs
/// (no planning after every switch); once it has kept one tenant for 8 transactions, its generic
/// plans are made again with the constant. Custom and one-shot plans always get the constant.
#[test]
fn generic_plans_follow_how_the_session_uses_tenants() {
    let o = orders("plan_cache_steady");
    let mut app = o.db.app();
    app.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE by_item(text) AS SELECT item FROM orders WHERE item <> $1 ORDER BY item",
    )
    .unwrap();
    let mut plan_under = |slug: &str| {
        let mut tx = begin_as(&mut app, slug);
        let got = items(tx.query("EXECUTE by_item('none')", &[]).unwrap());
        let tenant = if slug == "acme" { &o.a } else { &o.b };
        assert_rows_of(&o, &got, slug, tenant, slug);
        let plan = explained(&mut tx, "EXECUTE by_item('none')");
        tx.commit().unwrap();
        plan
    };
    // A new session counts as steady: the constant.
    let plan = plan_under("acme");
    assert!(plan.contains(&o.a) && !plan.contains("InitPlan"), "steady session: {plan}");
    // Switching: the generic plan reads the context when it runs.
    for slug in ["globex", "acme", "globex"] {
        let plan = plan_under(slug);
        assert!(plan.contains("InitPlan") && !plan.contains(&o.a) && !plan.contains(&o.b), "{slug}: {plan}");
    }
    // Steady again after 8 transactions of one tenant.
    let mut last = String::new();
    for _ in 0..9 {
        last = plan_under("globex");
    }
    assert!(last.contains(&o.b) && !last.contains("InitPlan"), "steady again: {last}");
    // One-shot statements always get the constant, also while switching.
    for slug in ["acme", "globex"] {
        let mut tx = begin_as(&mut app, slug);
        let plan = explained(&mut tx, "SELECT item FROM orders ORDER BY item");
        let tenant = if slug == "acme" { &o.a } else { &o.b };
        assert!(plan.contains(tenant.as_str()), "{slug}: {plan}");
        tx.commit().unwrap();
    }
}
