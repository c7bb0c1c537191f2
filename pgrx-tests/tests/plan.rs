//! The policy shape costs what an explicit `WHERE tenant_id = ...` costs: on a 100 000-row
//! enabled table, tenant queries by the application role use an index, the tenant context is
//! evaluated once per query (an initPlan), and there is no per-row SubPlan.
use multitenancy_integration::*;
use serde_json::Value;

const TENANTS: i64 = 100;
const ROWS: i64 = 100_000;

struct Items {
    db: TestDb,
    /// The tenant of row id 12345.
    tenant: String,
}

fn items() -> Items {
    let db = TestDb::new("plan");
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "INSERT INTO multitenancy.tenants (name, slug) SELECT 'Tenant ' || g, 't' || g FROM generate_series(1, {TENANTS}) g;"
    ))
    .unwrap();
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text NOT NULL, qty int NOT NULL);
             SELECT multitenancy.tenant_enable('items');
             GRANT SELECT ON items TO {APP};"
        ))
        .unwrap();
    su.batch_execute(&format!(
        "INSERT INTO items (sku, qty, tenant_id)
         SELECT 'sku-' || g, g % 50, t.ids[1 + g % {TENANTS}]
           FROM generate_series(1, {ROWS}) g,
                (SELECT array_agg(id ORDER BY slug) AS ids FROM multitenancy.tenants) t;
         ANALYZE items;"
    ))
    .unwrap();
    let tenant: String = su.query_one("SELECT tenant_id::text FROM items WHERE id = 12345", &[]).unwrap().get(0);
    Items { db, tenant }
}

fn walk<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            walk(child, out);
        }
    }
}

/// EXPLAIN (ANALYZE, FORMAT JSON) of `query` as the app role in `tenant`'s context: all nodes.
fn explain(items: &Items, query: &str) -> Vec<Value> {
    let mut app = items.db.app();
    let mut tx = begin_as(&mut app, &items.tenant);
    let json: Value = tx
        .query_one(&format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) {query}"), &[])
        .unwrap()
        .get(0);
    let mut nodes = Vec::new();
    walk(&json[0]["Plan"], &mut nodes);
    nodes.into_iter().cloned().collect()
}

/// `tenant_id = <the initPlan's output>`: `$0` up to PostgreSQL 16, `(InitPlan 1).col1` from 17.
fn is_tenant_predicate(cond: &str) -> bool {
    cond.contains("tenant_id = $0") || cond.contains("tenant_id = (InitPlan 1).col1")
}

fn assert_context_evaluated_once(nodes: &[Value], query: &str) {
    let init_plans: Vec<&Value> = nodes.iter().filter(|n| n["Parent Relationship"] == "InitPlan").collect();
    assert_eq!(init_plans.len(), 1, "{query}: one initPlan reads the context: {nodes:#?}");
    assert_eq!(init_plans[0]["Actual Loops"], 1, "{query}: evaluated once: {:#?}", init_plans[0]);
    assert!(
        !nodes.iter().any(|n| n["Parent Relationship"] == "SubPlan"),
        "{query}: no per-row SubPlan: {nodes:#?}"
    );
}

#[test]
fn tenant_queries_use_an_index_and_read_the_context_once() {
    let items = items();

    let point = "SELECT * FROM items WHERE id = 12345";
    let nodes = explain(&items, point);
    assert_context_evaluated_once(&nodes, point);
    let scan = nodes
        .iter()
        .find(|n| n["Node Type"] == "Index Scan" || n["Node Type"] == "Index Only Scan")
        .unwrap_or_else(|| panic!("{point}: expected an index scan: {nodes:#?}"));
    assert_eq!(scan["Relation Name"], "items");
    assert_eq!(scan["Actual Rows"], 1, "the row is the tenant's and is found");
    let tenant_filter = [&scan["Index Cond"], &scan["Filter"]]
        .iter()
        .filter_map(|v| v.as_str())
        .any(is_tenant_predicate);
    assert!(tenant_filter, "{point}: the tenant predicate applies at the scan: {scan:#}");

    let per_tenant = "SELECT count(*) FROM items";
    let nodes = explain(&items, per_tenant);
    assert_context_evaluated_once(&nodes, per_tenant);
    // Any index with tenant_id first serves: items_tenant_id_idx, or the UNIQUE (tenant_id, id)
    // constraint tenant_enable adds next to the primary key.
    let tenant_indexes: Vec<String> = items
        .db
        .superuser()
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index
              WHERE indrelid = 'items'::regclass AND indkey[0] =
                    (SELECT attnum FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'tenant_id')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let index_scan = nodes
        .iter()
        .find(|n| n["Index Name"].as_str().is_some_and(|name| tenant_indexes.iter().any(|i| i == name)))
        .unwrap_or_else(|| panic!("{per_tenant}: expected an index with tenant_id first ({tenant_indexes:?}): {nodes:#?}"));
    assert!(is_tenant_predicate(index_scan["Index Cond"].as_str().unwrap_or_default()), "{index_scan:#}");
    assert_eq!(index_scan["Actual Rows"], ROWS / TENANTS, "exactly the tenant's rows are read");
}

#[test]
fn the_context_function_runs_once_per_query_not_once_per_row() {
    let items = items();
    // pg_stat counts C-function calls when track_functions = all (a superuser setting).
    items.db.superuser().batch_execute(&format!("ALTER ROLE {APP} IN DATABASE {} SET track_functions = 'all'", items.db.name)).unwrap();
    let mut app = items.db.app();
    let mut tx = begin_as(&mut app, &items.tenant);
    let rows: i64 = tx.query_one("SELECT count(*) FROM items WHERE qty >= 0", &[]).unwrap().get(0);
    assert_eq!(rows, ROWS / TENANTS);
    let calls: i64 = tx
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
              WHERE schemaname = 'multitenancy' AND funcname = 'current_tenant_id'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(calls, 1, "one call for a query over {rows} rows");
}
