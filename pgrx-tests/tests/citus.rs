//! Scaling out with Citus, on a real three-node cluster: a coordinator and two workers, each a
//! PostgreSQL started here with `shared_preload_libraries = 'citus,multitenancy'` (Citus first,
//! so the extension's planner hook puts the tenant in before Citus plans). Citus is built from
//! the vendored source by `scripts/citus.sh`; these tests are `#[ignore]`d in the ordinary
//! integration runs and run by the test command's Citus tier (`-- --ignored`, one at a time) on
//! the PostgreSQL major Citus supports there.
//!
//! Every test works as the real roles: the app role (NOBYPASSRLS, owns nothing) through the
//! coordinator, the owner for migrations, the superuser only for setup and ground truth (which
//! Citus reads from the workers as the superuser, past row level security).
use multitenancy_integration::*;
use std::sync::OnceLock;

struct Cluster {
    coordinator: &'static Server,
    workers: Vec<&'static Server>,
}

const DB: &str = "postgres";

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        // The servers run as the postgres OS user with root's environment: no client certificates.
        let options = "-c shared_preload_libraries=citus,multitenancy -c citus.shard_count=8 -c citus.node_conninfo=sslmode=disable \
                       -c wal_level=logical -c output_plugin_libraries=pgoutput,citus";
        let coordinator = Server::private(options);
        let workers = vec![Server::private(options), Server::private(options)];
        for server in std::iter::once(coordinator).chain(workers.iter().copied()) {
            server.connect(DB, SUPERUSER).batch_execute("CREATE EXTENSION citus").unwrap();
        }
        let mut su = coordinator.connect(DB, SUPERUSER);
        su.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", &[&i32::from(coordinator.port())]).unwrap();
        for worker in &workers {
            su.execute("SELECT citus_add_node('127.0.0.1', $1)", &[&i32::from(worker.port())]).unwrap();
        }
        // Citus sends CREATE EXTENSION (and the GRANTs) on to the workers it knows.
        su.batch_execute(&format!(
            "CREATE EXTENSION multitenancy;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT CREATE, USAGE ON SCHEMA public TO {OWNER};
             GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid),
                                       multitenancy.tenant_exempt(regclass, text),
                                       multitenancy.tenant_key_scope(regclass, text),
                                       multitenancy.tenant_distribute(regclass) TO {OWNER};"
        ))
        .unwrap();
        Cluster { coordinator, workers }
    })
}

impl Cluster {
    fn superuser(&self) -> Client {
        self.coordinator.connect(DB, SUPERUSER)
    }
    fn owner(&self) -> Client {
        self.coordinator.connect(DB, OWNER)
    }
    fn app(&self) -> Client {
        self.coordinator.connect(DB, APP)
    }
}

/// Two tenants of a test: (id of a, id of b).
fn tenants(prefix: &str) -> (String, String) {
    let mut su = cluster().superuser();
    let mut create = |slug: String| -> String {
        su.query_one("SELECT multitenancy.tenant_create($1, $1)::text", &[&slug]).unwrap().get(0)
    };
    (create(format!("{prefix}-a")), create(format!("{prefix}-b")))
}

/// The family of a test: `<p>_countries` (global: a reference table), `<p>_customers` and
/// `<p>_orders` (tenant data, `orders` → `customers` by a per-tenant foreign key, `customers` →
/// `countries`), distributed with one `tenant_distribute` call, as a migration would.
fn distributed_family(p: &str) -> Vec<(String, String)> {
    let mut owner = cluster().owner();
    let mut tx = owner.transaction().unwrap();
    tx.batch_execute(&format!(
        "CREATE TABLE {p}_countries (code text PRIMARY KEY, name text);
         SELECT multitenancy.tenant_exempt('{p}_countries', 'ISO 3166 list, the same for every tenant');
         CREATE TABLE {p}_customers (id bigint PRIMARY KEY, name text, country text REFERENCES {p}_countries);
         CREATE TABLE {p}_orders (id bigint PRIMARY KEY, customer_id bigint, total int);
         SELECT multitenancy.tenant_enable('{p}_customers');
         SELECT multitenancy.tenant_enable('{p}_orders');
         SELECT multitenancy.tenant_key_scope('{p}_customers', 'tenant');
         ALTER TABLE {p}_orders ADD FOREIGN KEY (tenant_id, customer_id) REFERENCES {p}_customers (tenant_id, id);"
    ))
    .unwrap();
    tx.commit().unwrap();
    owner.batch_execute(&format!("INSERT INTO {p}_countries VALUES ('de', 'Germany'), ('fr', 'France')")).unwrap();
    let done: Vec<(String, String)> = owner
        .query(&format!("SELECT table_name, citus_table FROM multitenancy.tenant_distribute('{p}_orders')"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // One statement each: Citus refuses DDL on a reference table after parallel DDL on
    // distributed tables in one transaction.
    owner
        .batch_execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {p}_customers, {p}_orders TO {APP}"))
        .unwrap();
    owner.batch_execute(&format!("GRANT SELECT ON {p}_countries TO {APP}")).unwrap();
    done
}

/// Rows of each tenant, written by the app role in the tenant's own transactions.
fn fill(p: &str, a: &str, b: &str) {
    let mut app = cluster().app();
    for (tenant, name, base) in [(a, "a", 0i64), (b, "b", 100)] {
        let mut tx = begin_as(&mut app, tenant);
        for i in 1..=3i64 {
            tx.execute(
                &format!("INSERT INTO {p}_customers (id, name, country) VALUES ($1, $2, 'de')"),
                &[&(base + i), &format!("{name}{i}")],
            )
            .unwrap();
            tx.execute(
                &format!("INSERT INTO {p}_orders (id, customer_id, total) VALUES ($1, $2, $3)"),
                &[&(base + i), &(base + i), &((base + i) as i32 * 10)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Ground truth: the ids of a tenant's rows as the superuser reads them (past row level
/// security, on the workers too).
fn truth(p: &str, table: &str, tenant: &str) -> Vec<i64> {
    let mut su = cluster().superuser();
    su.query(&format!("SELECT id FROM {p}_{table} WHERE tenant_id = $1::text::uuid ORDER BY id"), &[&tenant])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn ids(tx: &mut Transaction, sql: &str) -> Vec<i64> {
    tx.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

/// The number of tasks in Citus's plan of `sql`, as the app with `tenant`'s context.
fn task_count(p: &str, tenant: &str, sql: &str) -> i64 {
    let mut app = cluster().app();
    let mut tx = begin_as(&mut app, tenant);
    let plan: Vec<String> =
        tx.query(&format!("EXPLAIN {}", sql.replace("{p}", p)), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let line = plan.iter().find(|l| l.contains("Task Count:")).unwrap_or_else(|| panic!("no Citus plan: {plan:?}"));
    line.trim().trim_start_matches("Task Count:").trim().parse().unwrap()
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn a_family_distributes_by_tenant_and_its_global_table_becomes_a_reference_table() {
    let done = distributed_family("fam");
    assert_eq!(
        done,
        vec![
            ("public.fam_countries".to_string(), "reference".to_string()),
            ("public.fam_customers".to_string(), "distributed".to_string()),
            ("public.fam_orders".to_string(), "distributed".to_string()),
        ]
    );
    let mut su = cluster().superuser();
    let colocated: i64 = su
        .query_one(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition \
              WHERE logicalrelid IN ('fam_customers'::regclass, 'fam_orders'::regclass) AND partmethod = 'h' \
                AND partkey IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(colocated, 1, "the enabled tables of a family share one colocation group");
    // The shape on every shard: exactly one policy, the isolation predicate (Citus makes every
    // policy permissive there, so there may be no other), forced row level security.
    for worker in &cluster().workers {
        let mut w = worker.connect(DB, SUPERUSER);
        // Citus hides shards from catalog queries of clients it does not know.
        w.batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'").unwrap();
        let rows = w
            .query(
                "SELECT c.relname::text, c.relforcerowsecurity, count(p.*), \
                        bool_and(pg_get_expr(p.polqual, p.polrelid) LIKE '%tenant_id = multitenancy.current_tenant_id()%') \
                   FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid \
                  WHERE c.relname ~ '^fam_(customers|orders)_[0-9]+$' GROUP BY 1, 2",
                &[],
            )
            .unwrap();
        assert!(!rows.is_empty(), "the worker holds shards");
        for row in rows {
            let shard: String = row.get(0);
            assert!(row.get::<_, bool>(1), "{shard}: row level security forced");
            assert_eq!(row.get::<_, i64>(2), 1, "{shard}: one policy");
            assert!(row.get::<_, bool>(3), "{shard}: the policy is the tenant predicate");
        }
    }
    assert_eq!(verify_all(&mut su), vec![], "verify() finds nothing to fix");
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn the_app_sees_and_changes_only_its_tenants_rows_on_the_cluster() {
    distributed_family("iso");
    let (a, b) = tenants("iso");
    fill("iso", &a, &b);
    let (a_orders, b_orders) = (truth("iso", "orders", &a), truth("iso", "orders", &b));
    assert_eq!((a_orders.len(), b_orders.len()), (3, 3), "ground truth: both tenants have rows");

    let mut app = cluster().app();
    let mut tx = begin_as(&mut app, &a);
    assert_eq!(ids(&mut tx, "SELECT id FROM iso_orders ORDER BY id"), a_orders);
    assert_eq!(ids(&mut tx, "SELECT id FROM iso_customers ORDER BY id"), truth("iso", "customers", &a));
    assert_eq!(
        ids(&mut tx, "SELECT o.id FROM iso_orders o JOIN iso_customers c USING (tenant_id) ORDER BY 1 LIMIT 1"),
        vec![a_orders[0]]
    );
    // Another tenant's rows, named by id: invisible, and not changed.
    let b_id = b_orders[0];
    assert_eq!(ids(&mut tx, &format!("SELECT id FROM iso_orders WHERE id = {b_id}")), Vec::<i64>::new());
    assert_eq!(tx.execute(&format!("UPDATE iso_orders SET total = 0 WHERE id = {b_id}"), &[]).unwrap(), 0);
    assert_eq!(tx.execute(&format!("DELETE FROM iso_orders WHERE id = {b_id}"), &[]).unwrap(), 0);
    assert_eq!(tx.execute("UPDATE iso_orders SET total = total + 1", &[]).unwrap(), 3, "its own rows");
    // Writing a row for the other tenant, or moving one there: refused by the policy.
    expect_sqlstate(
        tx.execute(&format!("INSERT INTO iso_customers (id, name, tenant_id) VALUES (50, 'x', '{b}')"), &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    drop(tx);
    // Moving a row to the other tenant: the policy's WITH CHECK refuses it, and so does Citus
    // (a distribution column does not change).
    let mut tx = begin_as(&mut app, &a);
    let error = tx.execute(&format!("UPDATE iso_customers SET tenant_id = '{b}' WHERE id = 1"), &[]).unwrap_err();
    let code = db_error(&error).code().clone();
    assert!([SqlState::INSUFFICIENT_PRIVILEGE, SqlState::FEATURE_NOT_SUPPORTED].contains(&code), "refused: {error}");
    drop(tx);
    // Usage statistics leave distributed tables out (review finding: they failed with 28000).
    let mut tx = begin_as(&mut app, &a);
    let stats: i64 = tx.query_one("SELECT count(*) FROM multitenancy.tenant_stats()", &[]).unwrap().get(0);
    assert!(stats >= 0);
    drop(tx);
    // The global table: every tenant reads it.
    let mut tx = begin_as(&mut app, &b);
    let countries: i64 = tx.query_one("SELECT count(*) FROM iso_countries", &[]).unwrap().get(0);
    assert_eq!(countries, 2);
    tx.commit().unwrap();

    let mut su = cluster().superuser();
    let untouched: Vec<(i64, i32)> = su
        .query("SELECT id, total FROM iso_orders WHERE tenant_id = $1::text::uuid ORDER BY id", &[&b])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(untouched, vec![(101, 1010), (102, 1020), (103, 1030)], "tenant b's rows are as b wrote them");
    assert_eq!(truth("iso", "customers", &b).len(), 3);
    assert_eq!(usage_drift(&mut su), Vec::<String>::new(), "usage_drift() runs, with nothing to report");

    // No context: 28000, outside a transaction block and inside one.
    let error = expect_sqlstate(
        app.query("SELECT count(*) FROM iso_orders", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("no tenant context"), "{}", error.message());
    let mut tx = app.transaction().unwrap();
    expect_sqlstate(tx.query("SELECT count(*) FROM iso_orders", &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn a_tenants_point_range_and_join_queries_go_to_one_shard() {
    distributed_family("rt");
    let (a, b) = tenants("rt");
    fill("rt", &a, &b);
    for sql in [
        "SELECT * FROM {p}_orders WHERE id = 1",
        "SELECT * FROM {p}_orders WHERE total BETWEEN 10 AND 30",
        "SELECT * FROM {p}_orders",
        "SELECT o.id, c.name FROM {p}_orders o JOIN {p}_customers c ON c.tenant_id = o.tenant_id AND c.id = o.customer_id",
    ] {
        assert_eq!(task_count("rt", &a, sql), 1, "{sql}");
        assert_eq!(task_count("rt", &b, sql), 1, "{sql}");
    }
    // The same filter without a constant the planner knows (a role past row level security,
    // a context function the planner does not replace) fans out to every shard: what the
    // plan-time tenant saves.
    let mut su = cluster().superuser();
    let mut tx = begin_as(&mut su, &a);
    let plan: Vec<String> = tx
        .query("EXPLAIN SELECT * FROM rt_orders WHERE tenant_id = multitenancy.current_tenant_id_or_null()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(tx);
    let shards: i64 = su
        .query_one("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'rt_orders'::regclass", &[])
        .unwrap()
        .get(0);
    assert!(shards > 1);
    assert!(plan.iter().any(|l| l.trim() == format!("Task Count: {shards}")), "{plan:?}");
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn a_prepared_statement_switching_tenants_returns_only_the_current_tenants_rows() {
    distributed_family("prep");
    let (a, b) = tenants("prep");
    fill("prep", &a, &b);
    let (a_orders, b_orders) = (truth("prep", "orders", &a), truth("prep", "orders", &b));
    let mut app = cluster().app();
    // A named server-side statement: after five custom plans PostgreSQL may use a generic one.
    let statement = app.prepare("SELECT id FROM prep_orders WHERE total > $1 ORDER BY id").unwrap();
    for round in 0..14 {
        let (tenant, expected) = if round % 3 == 2 { (&b, &b_orders) } else { (&a, &a_orders) };
        let mut tx = begin_as(&mut app, tenant);
        let got: Vec<i64> = tx.query(&statement, &[&0i32]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(&got, expected, "round {round}");
        tx.commit().unwrap();
    }
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn a_tenant_isolated_to_its_own_shard_still_routes_and_is_isolated() {
    distributed_family("big");
    let (a, b) = tenants("big");
    fill("big", &a, &b);
    let mut su = cluster().superuser();
    let shard: i64 = su
        .query_one("SELECT isolate_tenant_to_new_shard('big_orders', $1::text::uuid, 'CASCADE')", &[&a])
        .unwrap()
        .get(0);
    let (tenants_on_shard, rows_on_shard): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(DISTINCT tenant_id), count(*) FROM big_orders \
                  WHERE get_shard_id_for_distribution_column('big_orders', tenant_id) = $1",
                &[&shard],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((tenants_on_shard, rows_on_shard), (1, 3), "the new shard holds tenant a's rows only");
    assert_eq!(task_count("big", &a, "SELECT * FROM {p}_orders"), 1);
    let mut app = cluster().app();
    let mut tx = begin_as(&mut app, &a);
    assert_eq!(ids(&mut tx, "SELECT id FROM big_orders ORDER BY id"), truth("big", "orders", &a));
    assert_eq!(tx.execute("DELETE FROM big_orders WHERE id > 100", &[]).unwrap(), 0, "b's rows are out of reach");
    drop(tx);
    let mut tx = begin_as(&mut app, &b);
    assert_eq!(ids(&mut tx, "SELECT id FROM big_orders ORDER BY id"), truth("big", "orders", &b));
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn the_app_cannot_name_the_tenant_the_workers_see() {
    distributed_family("fake");
    let (a, b) = tenants("fake");
    fill("fake", &a, &b);
    let mut app = cluster().app();
    let mut tx = begin_as(&mut app, &a);
    tx.batch_execute("SET LOCAL citus.propagate_set_commands = 'local'").unwrap();
    expect_sqlstate(
        tx.batch_execute(&format!("SET LOCAL multitenancy.cluster_tenant = '{b}'")),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    drop(tx);
    let mut tx = begin_as(&mut app, &a);
    expect_sqlstate(
        tx.query_one("SELECT set_config('multitenancy.cluster_tenant', $1, true)", &[&b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    drop(tx);
    // Citus's functions that run SQL text on the workers: refused for the app and the owner
    // (through them the app could name a tenant on a worker, the owner drop a shard's policy).
    for (role, sql) in [
        (APP, "SELECT result FROM run_command_on_shards('fake_orders', $$SELECT count(*) FROM %s$$)"),
        (APP, "SELECT * FROM run_command_on_workers($$SELECT 1$$)"),
        (
            OWNER,
            "SELECT * FROM run_command_on_placements('fake_orders', $$ALTER TABLE %s NO FORCE ROW LEVEL SECURITY$$)",
        ),
    ] {
        let mut client = cluster().coordinator.connect(DB, role);
        let error = expect_sqlstate(client.query(sql, &[]), &SqlState::INSUFFICIENT_PRIVILEGE);
        assert!(error.message().contains("runs SQL text on the Citus workers"), "{}", error.message());
        // Also from inside a DO block (planned there).
        let body = sql.replace("$$", "$q$");
        expect_sqlstate(
            client.batch_execute(&format!("DO $d$ BEGIN PERFORM * FROM ({body}) s; END $d$")),
            &SqlState::INSUFFICIENT_PRIVILEGE,
        );
    }
    // A query pushed down to a worker cannot change the tenant there: set_config() of the
    // setting runs inside a query (review finding: the next statements of the transaction on
    // that worker connection read the other tenant's rows).
    let mut tx = begin_as(&mut app, &a);
    tx.batch_execute("SET LOCAL citus.max_adaptive_executor_pool_size = 1").unwrap();
    let attempt = tx.query(
        &format!("SELECT count(*) FROM fake_orders WHERE (SELECT set_config('multitenancy.cluster_tenant', '{b}', true)) IS NOT NULL"),
        &[],
    );
    expect_sqlstate(attempt, &SqlState::INSUFFICIENT_PRIVILEGE);
    drop(tx);
    let mut tx = begin_as(&mut app, &a);
    assert_eq!(ids(&mut tx, &format!("SELECT id FROM fake_orders WHERE tenant_id = '{b}'")), Vec::<i64>::new());
    drop(tx);
    // Citus forwards the text of a SET LOCAL to the workers, and joins the texts of a transaction
    // into the query that opens each later worker connection: no SET of an RLS-bound role is
    // forwarded (review findings: standard_conforming_strings off here and on there, and a
    // trailing comment swallowing the next text, each smuggled a SET of the cluster tenant).
    let attacks: [Vec<String>; 3] = [
        vec![
            "SET LOCAL standard_conforming_strings = off".into(),
            format!("SET LOCAL myapp.x = 'x\\'; SET LOCAL multitenancy.cluster_tenant = $${b}$$; -- '"),
        ],
        vec![
            "SET LOCAL myapp.a TO 'x' --".into(),
            format!("SET LOCAL myapp.b TO '\n;SET LOCAL multitenancy.cluster_tenant TO \"{b}\";/*' -- */"),
        ],
        vec!["SET LOCAL statement_timeout = '5s'".into()],
    ];
    for attack in attacks {
        let mut tx = begin_as(&mut app, &a);
        tx.batch_execute("SELECT 1").unwrap();
        tx.batch_execute("SET LOCAL citus.propagate_set_commands = 'local'").unwrap();
        let mut refused = None;
        for sql in &attack {
            if let Err(e) = tx.batch_execute(sql) {
                refused = Some(e);
                break;
            }
        }
        let error = refused.unwrap_or_else(|| panic!("{attack:?} went through"));
        let error = db_error(&error);
        assert_eq!(error.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "{attack:?}: {}", error.message());
        assert!(error.message().contains("citus.propagate_set_commands"), "{}", error.message());
    }
    // Without forwarding, SET LOCAL is the coordinator's business; the tenant still reaches the
    // workers, and only it.
    let mut tx = begin_as(&mut app, &a);
    tx.batch_execute("SET LOCAL statement_timeout = '5s'").unwrap();
    assert_eq!(ids(&mut tx, "SELECT id FROM fake_orders ORDER BY id"), truth("fake", "orders", &a));
    assert_eq!(ids(&mut tx, &format!("SELECT id FROM fake_orders WHERE tenant_id = '{b}'")), Vec::<i64>::new());
    drop(tx);
    // Code the coordinator delegates to a worker cannot call them there either (review
    // finding: a distributed function with force_delegation ran run_command_on_workers).
    let mut owner = cluster().owner();
    owner
        .batch_execute(
            "CREATE FUNCTION public.fake_leak(tid uuid, cmd text) RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE r text; BEGIN
               SELECT string_agg(result, ',') INTO r FROM run_command_on_workers(cmd); RETURN r; END $f$",
        )
        .unwrap();
    owner
        .query(
            "SELECT create_distributed_function('public.fake_leak(uuid,text)', 'tid', colocate_with := 'fake_orders', \
                    force_delegation := true)",
            &[],
        )
        .unwrap();
    let mut tx = begin_as(&mut owner, &a);
    let error = expect_sqlstate(
        tx.query_one("SELECT public.fake_leak($1::text::uuid, 'SELECT 1')", &[&a]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert!(error.message().contains("runs SQL text on the Citus workers"), "{}", error.message());
    drop(tx);
    // A worker reached directly: without the setting no tenant (28000); set_config() is refused.
    let worker = cluster().workers[0];
    let mut direct = worker.connect(DB, APP);
    direct.batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'").unwrap();
    let shard: String = direct
        .query_one("SELECT relname::text FROM pg_class WHERE relname ~ '^fake_orders_[0-9]+$' LIMIT 1", &[])
        .unwrap()
        .get(0);
    let mut tx = direct.transaction().unwrap();
    expect_sqlstate(
        tx.query(&format!("SELECT count(*) FROM {shard}"), &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    drop(tx);
    let mut tx = direct.transaction().unwrap();
    expect_sqlstate(
        tx.query_one("SELECT set_config('multitenancy.cluster_tenant', $1, true)", &[&b]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn every_context_mode_reaches_the_workers() {
    distributed_family("modes");
    let (a, b) = tenants("modes");
    fill("modes", &a, &b);
    let (a_orders, b_orders) = (truth("modes", "orders", &a), truth("modes", "orders", &b));
    let mut su = cluster().superuser();
    su.batch_execute(
        "CREATE ROLE modes_signed LOGIN; CREATE ROLE modes_claims LOGIN;
         GRANT SELECT ON modes_orders TO modes_signed, modes_claims;
         ALTER ROLE modes_signed SET multitenancy.require_signed = on;
         ALTER ROLE modes_claims SET multitenancy.claims_setting = 'request.jwt.claims';
         SELECT multitenancy.signing_key_add('cluster-k1', decode(repeat('ab', 32), 'hex'));",
    )
    .unwrap();
    // Plain mode, SET LOCAL of the setting itself.
    let mut app = cluster().app();
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{a}'")).unwrap();
    assert_eq!(ids(&mut tx, "SELECT id FROM modes_orders ORDER BY id"), a_orders, "SET LOCAL");
    drop(tx);
    // Signed mode: a token names the tenant; the session cannot choose another.
    let token: String = su.query_one("SELECT multitenancy.tenant_token($1)", &[&b]).unwrap().get(0);
    let mut signed = cluster().coordinator.connect(DB, "modes_signed");
    let mut tx = signed.transaction().unwrap();
    tx.query_one("SELECT multitenancy.tenant_set_signed($1)", &[&token]).unwrap();
    assert_eq!(ids(&mut tx, "SELECT id FROM modes_orders ORDER BY id"), b_orders, "signed");
    assert_eq!(ids(&mut tx, &format!("SELECT id FROM modes_orders WHERE tenant_id = '{a}'")), Vec::<i64>::new());
    drop(tx);
    let mut tx = signed.transaction().unwrap();
    expect_sqlstate(tx.query("SELECT id FROM modes_orders", &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    drop(tx);
    // Claims mode: the tenant comes from the framework's JSON claims.
    let mut claims = cluster().coordinator.connect(DB, "modes_claims");
    let mut tx = claims.transaction().unwrap();
    tx.execute("SELECT set_config('request.jwt.claims', $1, true)", &[&format!("{{\"tenant_id\": \"{a}\"}}")]).unwrap();
    assert_eq!(ids(&mut tx, "SELECT id FROM modes_orders ORDER BY id"), a_orders, "claims");
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn a_literal_that_splits_on_the_worker_cannot_set_the_tenant_there() {
    // Review finding: a role default of standard_conforming_strings = off (Citus copies ALTER
    // ROLE ... SET to the workers) made the shard query Citus deparsed from the app's 'x\' split
    // into statements on the worker (with the binary protocol off, sent as one simple query),
    // one of them a top-level SET of the cluster tenant: the app read and wrote another tenant's
    // rows. A worker takes the setting only from Citus's own framing, with the setting on.
    let mut owner = cluster().owner();
    let mut tx = owner.transaction().unwrap();
    tx.batch_execute(
        "CREATE TABLE inj_t (id bigint PRIMARY KEY, secret text); SELECT multitenancy.tenant_enable('inj_t');",
    )
    .unwrap();
    tx.commit().unwrap();
    owner.query("SELECT * FROM multitenancy.tenant_distribute('inj_t')", &[]).unwrap();
    let mut su = cluster().superuser();
    // A role made on the coordinator after Citus: Citus propagates it, and its ALTER ROLE.
    su.batch_execute("CREATE ROLE inj_app LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON inj_t TO inj_app").unwrap();
    let (a, b) = tenants("inj");
    for (tenant, id, secret) in [(&a, 1i64, "a-secret"), (&b, 2, "b-secret")] {
        let mut c = cluster().coordinator.connect(DB, "inj_app");
        let mut tx = begin_as(&mut c, tenant);
        tx.execute("INSERT INTO inj_t (id, secret) VALUES ($1, $2)", &[&id, &secret]).unwrap();
        tx.commit().unwrap();
    }
    let shard: String = su
        .query_one(
            "SELECT shard_name('inj_t'::regclass, get_shard_id_for_distribution_column('inj_t', $1::text::uuid))",
            &[&a],
        )
        .unwrap()
        .get(0);
    cluster()
        .coordinator
        .connect(DB, "inj_app")
        .batch_execute("ALTER ROLE inj_app SET standard_conforming_strings = off")
        .unwrap();
    let mut c = cluster().coordinator.connect(DB, "inj_app");
    c.batch_execute("SET standard_conforming_strings = on; SET citus.enable_binary_protocol = off").unwrap();
    let mut tx = begin_as(&mut c, &a);
    let attack = format!(
        "SELECT * FROM inj_t WHERE secret <> 'x\\' OR secret = ')); COMMIT; BEGIN; \
         SET LOCAL multitenancy.cluster_tenant = $q${b}$q$; \
         INSERT INTO {shard} (id, secret, tenant_id) VALUES (71, $q$planted$q$, $q${b}$q$); COMMIT --'"
    );
    let result = tx.query(&attack, &[]);
    drop(tx);
    let planted: i64 = su
        .query_one(
            "SELECT count(*) FROM run_command_on_shards('inj_t', $$SELECT count(*) FROM %s WHERE id = 71$$) r \
              WHERE r.result <> '0'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(planted, 0, "no row was planted for tenant b (the query: {result:?})");
    // With standard_conforming_strings off on the workers' connections the tenant does not
    // reach them at all: the role's queries fail closed until its default is gone.
    let mut c = cluster().coordinator.connect(DB, "inj_app");
    let mut tx = begin_as(&mut c, &b);
    expect_sqlstate(tx.query("SELECT id FROM inj_t", &[]), &SqlState::INSUFFICIENT_PRIVILEGE);
    drop(tx);
    c.batch_execute("ALTER ROLE inj_app RESET standard_conforming_strings").unwrap();
    let mut c = cluster().coordinator.connect(DB, "inj_app");
    let mut tx = begin_as(&mut c, &b);
    let ids: Vec<i64> = tx.query("SELECT id FROM inj_t ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![2], "tenant b's rows are b's own");
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn the_guard_keeps_a_distributed_table_to_its_one_policy() {
    distributed_family("grd");
    let mut owner = cluster().owner();
    let error = expect_sqlstate(
        owner.batch_execute("CREATE POLICY open ON grd_orders AS PERMISSIVE FOR SELECT USING (true)"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    assert!(error.message().contains("PERMISSIVE"), "{}", error.message());
    expect_sqlstate(
        owner.batch_execute("DROP POLICY multitenancy_isolation_distributed ON grd_orders"),
        &SqlState::INSUFFICIENT_PRIVILEGE,
    );
    let mut su = cluster().superuser();
    let policies: i64 =
        su.query_one("SELECT count(*) FROM pg_policy WHERE polrelid = 'grd_orders'::regclass", &[]).unwrap().get(0);
    assert_eq!(policies, 1);
    // On a worker, where the coordinator's guard does not look (the owner's code gets there as
    // a function Citus pushes down, or a direct connection): the shard keeps its protection.
    for worker in &cluster().workers {
        let mut direct = worker.connect(DB, OWNER);
        direct.batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'").unwrap();
        let shard: String = direct
            .query_one("SELECT relname::text FROM pg_class WHERE relname ~ '^grd_orders_[0-9]+$' LIMIT 1", &[])
            .unwrap()
            .get(0);
        for attempt in [
            format!("ALTER TABLE {shard} NO FORCE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {shard} DISABLE ROW LEVEL SECURITY"),
            format!("DROP POLICY multitenancy_isolation_distributed ON {shard}"),
            format!("ALTER POLICY multitenancy_isolation_distributed ON {shard} USING (true)"),
            format!("ALTER POLICY multitenancy_isolation_distributed ON {shard} RENAME TO gone"),
            format!("CREATE POLICY open ON {shard} USING (true)"),
            format!("ALTER TABLE {shard} RENAME TO {shard}_old"),
            format!("CREATE RULE copy_out AS ON INSERT TO {shard} DO ALSO NOTIFY leak"),
            format!(
                "CREATE TRIGGER copy_out BEFORE UPDATE ON {shard} FOR EACH ROW \
                 EXECUTE FUNCTION suppress_redundant_updates_trigger()"
            ),
            format!("DO $$ BEGIN EXECUTE 'ALTER TABLE {shard} NO FORCE ROW LEVEL SECURITY'; END $$"),
        ] {
            let error = expect_sqlstate(direct.batch_execute(&attempt), &SqlState::INSUFFICIENT_PRIVILEGE);
            assert!(error.message().contains("Citus worker"), "{attempt}: {}", error.message());
        }
        let mut w = worker.connect(DB, SUPERUSER);
        w.batch_execute("SET citus.show_shards_for_app_name_prefixes = '*'").unwrap();
        let (forced, policies): (bool, i64) = {
            let row = w
                .query_one(
                    &format!(
                        "SELECT relforcerowsecurity AND relrowsecurity, \
                                (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) \
                           FROM pg_class c WHERE relname = '{shard}'"
                    ),
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!((forced, policies), (true, 1), "{shard} as it was");
    }
}

#[test]
#[ignore = "needs the Citus cluster: run by scripts/test.sh's Citus tier"]
fn what_citus_cannot_distribute_is_refused_before_anything_changes() {
    let mut owner = cluster().owner();
    let mut tx = owner.transaction().unwrap();
    // A policy of the owner's: Citus would make it permissive on the shards, ORed with the
    // isolation policy.
    tx.batch_execute(
        "CREATE TABLE bad_accounts (id bigint PRIMARY KEY, email text);
         SELECT multitenancy.tenant_enable('bad_accounts');
         CREATE POLICY everyone_reads ON bad_accounts FOR SELECT USING (true);",
    )
    .unwrap();
    tx.commit().unwrap();
    let error = expect_sqlstate(
        owner.query("SELECT * FROM multitenancy.tenant_distribute('bad_accounts')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    assert!(error.message().contains("policies of its own (everyone_reads)"), "{}", error.message());
    assert!(error.hint().is_some());
    let mut su = cluster().superuser();
    let (distributed, policies, pkey): (bool, i64, String) = {
        let row = su
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'bad_accounts'::regclass), \
                        (SELECT count(*) FROM pg_policy WHERE polrelid = 'bad_accounts'::regclass), \
                        (SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                          WHERE conrelid = 'bad_accounts'::regclass AND contype = 'p')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((distributed, policies, pkey.as_str()), (false, 3, "PRIMARY KEY (id)"), "nothing changed");
    // Not enabled at all.
    owner
        .batch_execute(
            "BEGIN; CREATE TABLE bad_plain (id int); SELECT multitenancy.tenant_exempt('bad_plain', 'x'); COMMIT",
        )
        .unwrap();
    expect_sqlstate(
        owner.query("SELECT * FROM multitenancy.tenant_distribute('bad_plain')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
}
