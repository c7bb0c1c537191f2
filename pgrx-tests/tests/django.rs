//! A real Django 5 project, unchanged, against the extension: `manage.py migrate` as the
//! migration role, then Django's ORM as the application role.
//!
//! The project is `pgrx-tests/django/` (settings `mtsite`, app `shop`, hand-written migrations):
//! - 0001 creates the tables with `CreateModel` (Django adds their foreign keys at the end of
//!   the migration, after the `RunSQL` that tenant-enables every table, m2m table included);
//! - 0002 writes rows for two tenants (`tenant_set` in one transaction per tenant: a transaction
//!   acts for one tenant, so the migration is `atomic = False`),
//!   sharing a customer e-mail and a product sku;
//! - 0003 adds foreign keys (`AddField`) between tables that hold rows of both tenants and makes
//!   `Product.sku` unique (`AlterField`) while both tenants have 'sku-1';
//! - 0004 updates every tenant's rows after `admin_begin(..., write => true)`.
//!
//! The DBA's part is what the README asks of a Django deployment and nothing else: Django's own
//! tables are declared global with the shipped patterns (`framework_patterns('django')`), the
//! migration role may call `tenant_enable` and is a member of `multitenancy_admin`. Then
//! `pgrx-tests/django/orm_check.py`, as [`APP`], works for each tenant in its own
//! `transaction.atomic()` block with `tenant_set` first (create, upsert by the unique e-mail,
//! `get_or_create`, `select_for_update`, read back) and makes the usual mistakes (a foreign key to
//! another tenant's row, a forgotten `tenant_set`); its JSON is compared with the ground truth
//! read by the superuser.
//!
//! Python: the virtualenv `scripts/setup.sh` makes (`MT_PYENV`, default
//! `/opt/multitenancy-pyenv`) with Django 5 and psycopg 3.
use multitenancy_integration::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// The tenants the migrations and the ORM script write for: (name, slug).
const TENANTS: [(&str, &str); 2] = [("Acme", "acme"), ("Globex", "globex")];

/// The shop app's tables (all tenant data), the m2m through table included.
const SHOP_TABLES: [&str; 5] = ["shop_customer", "shop_supplier", "shop_product", "shop_order", "shop_order_products"];

/// The tables of Django's contrib apps (contenttypes, auth, admin, sessions) and its migration
/// history: global, declared so by the shipped patterns.
const DJANGO_TABLES: [&str; 10] = [
    "django_migrations",
    "django_content_type",
    "django_admin_log",
    "django_session",
    "auth_permission",
    "auth_group",
    "auth_group_permissions",
    "auth_user",
    "auth_user_groups",
    "auth_user_user_permissions",
];

const SHOP_MIGRATIONS: [&str; 4] = ["0001_initial", "0002_seed", "0003_keys", "0004_every_tenant"];

/// The reason 0004 gives `admin_begin` (pgrx-tests/django/shop/migrations/0004_every_tenant.py).
const ADMIN_REASON: &str = "django migration shop.0004: upper-case product titles, fill billing customers";

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("django")
}

/// Run the virtualenv's python with `args` in the Django project, connected to `db` as `user`
/// (the settings read MT_DB_*). libpq's PG* variables of the caller are not passed on.
fn run_python(db: &TestDb, user: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(framework_python());
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("PG") || name.starts_with("PYTHON") || name.starts_with("DJANGO") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .current_dir(project())
        .env("MT_DB_HOST", "127.0.0.1")
        .env("MT_DB_PORT", db.server().port.to_string())
        .env("MT_DB_NAME", &db.name)
        .env("MT_DB_USER", user)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd.output().unwrap_or_else(|e| panic!("run {}: {e}", framework_python().display()))
}

/// A client error with the server's SQLSTATE, message and hint, for panic messages.
fn pg_error(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {} (hint: {:?})", db.code().code(), db.message(), db.hint()),
        None => error.to_string(),
    }
}

/// Ground truth (superuser): ids of a tenant's rows in `table`, ordered.
fn true_ids(su: &mut Client, table: &str, tenant_id: &str) -> Vec<i64> {
    su.query(&format!("SELECT id FROM {table} WHERE tenant_id = $1::text::uuid ORDER BY id"), &[&tenant_id])
        .unwrap_or_else(|e| panic!("ground truth of {table}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Ground truth (superuser): a tenant's (order_id, product_id) pairs of the m2m table, ordered.
fn true_order_products(su: &mut Client, tenant_id: &str) -> Vec<(i64, i64)> {
    su.query(
        "SELECT order_id, product_id FROM shop_order_products WHERE tenant_id = $1::text::uuid ORDER BY 1, 2",
        &[&tenant_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// `value[key]`, or a panic naming the missing key.
#[track_caller]
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| v.get(key).unwrap_or_else(|| panic!("the ORM script's JSON has no {path:?}: {v}")))
}

#[track_caller]
fn int(value: &Value, path: &[&str]) -> i64 {
    at(value, path).as_i64().unwrap_or_else(|| panic!("{path:?} is not an integer: {value}"))
}

#[track_caller]
fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("{path:?} is not a string: {value}"))
}

#[track_caller]
fn boolean(value: &Value, path: &[&str]) -> bool {
    at(value, path).as_bool().unwrap_or_else(|| panic!("{path:?} is not a boolean: {value}"))
}

/// The `id`s of a JSON array of objects, or the integers of a JSON array.
#[track_caller]
fn ids(value: &Value, path: &[&str]) -> Vec<i64> {
    let list = at(value, path).as_array().unwrap_or_else(|| panic!("{path:?} is not an array: {value}"));
    list.iter().map(|v| v.get("id").unwrap_or(v).as_i64().unwrap_or_else(|| panic!("{path:?}: no id in {v}"))).collect()
}

#[track_caller]
fn pairs(value: &Value, path: &[&str]) -> Vec<(i64, i64)> {
    let list = at(value, path).as_array().unwrap_or_else(|| panic!("{path:?} is not an array: {value}"));
    list.iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap())).collect()
}

/// What one tenant sees through the ORM is exactly its ground truth, the other tenant's rows
/// exist, and none of them is seen.
#[track_caller]
fn assert_sees_own_rows_only(what: &str, seen: &[i64], own: &[i64], other: &[i64]) {
    assert!(!own.is_empty(), "ground truth: the tenant must have {what} for the check to mean anything");
    assert!(!other.is_empty(), "ground truth: the other tenant must have {what} for the check to mean anything");
    assert_eq!(seen, own, "the ORM shows exactly the tenant's own {what}");
    assert!(seen.iter().all(|id| !other.contains(id)), "the ORM shows none of the other tenant's {what}");
}

#[test]
fn django_migrate_and_orm_work_unchanged() {
    let started = Instant::now();
    let db = TestDb::new("django");
    let tenant_ids: Vec<String> = TENANTS.iter().map(|(name, slug)| db.tenant(name, slug)).collect();
    let mut su = db.superuser();

    // The DBA, once: Django's own tables are global; the migration role may enable tables and
    // enter admin mode for data migrations over every tenant.
    let patterns: i64 = su
        .query_one(
            "SELECT count(*) FROM (SELECT multitenancy.exempt_pattern(pattern, reason)
                                     FROM multitenancy.framework_patterns('django')) p",
            &[],
        )
        .unwrap_or_else(|e| {
            panic!("declaring Django's tables global with framework_patterns('django'): {}", pg_error(&e))
        })
        .get(0);
    assert!(patterns > 0, "framework_patterns('django') ships no pattern");
    su.batch_execute(&format!(
        "GRANT multitenancy_admin TO {OWNER};
         GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) TO {OWNER};"
    ))
    .unwrap();

    // The migrations, as Django runs them, with no workaround.
    let migrate_started = Instant::now();
    let migrate = run_python(&db, OWNER, &["manage.py", "migrate", "--no-input"]);
    assert_ran(&migrate, &format!("`manage.py migrate` as {OWNER}"));
    let migrate_seconds = migrate_started.elapsed().as_secs_f64();

    // Ground truth after migrate.
    let applied: Vec<String> = su
        .query("SELECT name FROM django_migrations WHERE app = 'shop' ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, SHOP_MIGRATIONS, "every migration of shop is recorded as applied");
    for table in SHOP_TABLES {
        assert!(is_enabled(&mut su, table), "{table} is tenant-enabled by the migrations");
    }
    for table in DJANGO_TABLES {
        assert!(is_exempt(&mut su, table), "{table} is declared global by framework_patterns('django')");
    }
    let unprotected: Vec<String> = su
        .query(
            "SELECT c.relname::text FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
                AND NOT EXISTS (SELECT 1 FROM multitenancy.enabled_tables e WHERE e.relid = c.oid)
                AND NOT EXISTS (SELECT 1 FROM multitenancy.exempt_tables x WHERE x.relid = c.oid)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unprotected, Vec::<String>::new(), "every table of the Django project is enabled or exempt");
    assert_eq!(db.verify(), vec![], "verify() finds nothing wrong in the migrated database");

    // Keys: every foreign key between shop tables is composite, every unique key is per tenant.
    // Exactly as Django declared them (DEFERRABLE INITIALLY DEFERRED, no database-level actions,
    // validated), with tenant_id added on both sides.
    let foreign_keys: Vec<(String, String)> = su
        .query(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE contype = 'f' AND conrelid::regclass::text LIKE 'shop\\_%' ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected_foreign_keys: Vec<(String, String)> = [
        ("shop_order", "billing_customer_id", "shop_customer"),
        ("shop_order", "customer_id", "shop_customer"),
        ("shop_order_products", "order_id", "shop_order"),
        ("shop_order_products", "product_id", "shop_product"),
        ("shop_product", "supplier_id", "shop_supplier"),
    ]
    .iter()
    .map(|(table, column, parent)| {
        (
            table.to_string(),
            format!(
                "FOREIGN KEY (tenant_id, {column}) REFERENCES {parent}(tenant_id, id) DEFERRABLE INITIALLY DEFERRED"
            ),
        )
    })
    .collect();
    assert_eq!(foreign_keys, expected_foreign_keys, "Django's five foreign keys, each composite with tenant_id");
    let unique_keys: Vec<(String, String)> = su
        .query(
            "SELECT indrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
              WHERE indisunique AND NOT indisprimary AND indrelid::regclass::text LIKE 'shop\\_%' ORDER BY 1, 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (table, def) in &unique_keys {
        assert!(def.contains("(tenant_id, "), "every unique key of {table} leads with tenant_id: {def}");
    }
    for (table, columns) in [
        ("shop_customer", "(tenant_id, email)"),
        ("shop_product", "(tenant_id, sku)"),
        ("shop_order_products", "(tenant_id, order_id, product_id)"),
    ] {
        assert!(
            unique_keys.iter().any(|(t, def)| t == table && def.contains(columns)),
            "{table} has the unique key {columns}: {unique_keys:#?}"
        );
    }

    // Data: 0002 wrote both tenants' rows, 0003's keys hold over them, 0004 changed every tenant's.
    let (a, b) = (&tenant_ids[0], &tenant_ids[1]);
    for id in [a, b] {
        let mut count_of =
            |sql: &str| -> i64 { su.query_one(sql, &[id]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0) };
        assert_eq!(count_of("SELECT count(*) FROM shop_customer WHERE tenant_id = $1::text::uuid"), 2);
        assert_eq!(count_of("SELECT count(*) FROM shop_order WHERE tenant_id = $1::text::uuid"), 2);
        assert_eq!(count_of("SELECT count(*) FROM shop_order_products WHERE tenant_id = $1::text::uuid"), 3);
        assert_eq!(
            count_of("SELECT count(*) FROM shop_product WHERE tenant_id = $1::text::uuid AND sku = 'sku-1'"),
            1,
            "each tenant has its product 'sku-1' under the unique sku"
        );
        assert_eq!(
            count_of(
                "SELECT count(*) FROM shop_product WHERE tenant_id = $1::text::uuid
                    AND (title = 'WIDGET' OR title LIKE 'GADGET OF %')"
            ),
            2,
            "0004 upper-cased this tenant's titles"
        );
        assert_eq!(
            count_of(
                "SELECT count(*) FROM shop_order WHERE tenant_id = $1::text::uuid
                    AND billing_customer_id = customer_id"
            ),
            2,
            "0004 filled this tenant's billing customers"
        );
    }
    let lower_case = count(&mut su, "SELECT count(*) FROM shop_product WHERE title <> upper(title)");
    assert_eq!(lower_case, 0, "0004 upper-cased every tenant's titles");
    let admin_audits: i64 = su
        .query_one(
            "SELECT count(*) FROM multitenancy.audit_log WHERE action = 'admin_begin'
                AND details->>'reason' = $1 AND (details->>'write')::boolean",
            &[&ADMIN_REASON],
        )
        .unwrap()
        .get(0);
    assert_eq!(admin_audits, 1, "0004's admin_begin is audited with its reason");

    // The application role: DML on the shop's tables and their sequences, nothing else.
    su.batch_execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {APP}", SHOP_TABLES.join(", "))).unwrap();
    for table in SHOP_TABLES {
        let sequence: String = su.query_one("SELECT pg_get_serial_sequence($1, 'id')", &[&table]).unwrap().get(0);
        su.batch_execute(&format!("GRANT USAGE ON SEQUENCE {sequence} TO {APP}")).unwrap();
    }
    let seeded_ann: Vec<i64> = [a, b]
        .iter()
        .map(|id| {
            su.query_one(
                "SELECT id FROM shop_customer WHERE tenant_id = $1::text::uuid AND email = 'ann@example.com'",
                &[id],
            )
            .unwrap()
            .get(0)
        })
        .collect();

    let orm_started = Instant::now();
    let orm = run_python(&db, APP, &["orm_check.py"]);
    assert_ran(&orm, &format!("orm_check.py as {APP}"));
    let orm_seconds = orm_started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&orm.stdout);
    let json: Value = serde_json::from_str(stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default())
        .unwrap_or_else(|e| panic!("orm_check.py printed no JSON ({e}):\n{stdout}"));
    assert_eq!(text(&json, &["role"]), APP, "the ORM script runs as the application role");

    for (i, (_, slug)) in TENANTS.iter().enumerate() {
        let (own, other) = (&tenant_ids[i], &tenant_ids[1 - i]);
        let t = at(&json, &["tenants", slug]);
        assert_eq!(text(t, &["tenant_id"]), own, "tenant_set({slug}) returns the tenant's id");

        // Each tenant sees exactly its own rows, while the other's exist.
        for (key, table) in [("customers", "shop_customer"), ("products", "shop_product"), ("orders", "shop_order")] {
            let own_ids = true_ids(&mut su, table, own);
            let other_ids = true_ids(&mut su, table, other);
            assert_sees_own_rows_only(&format!("{table} rows ({slug})"), &ids(t, &["seen", key]), &own_ids, &other_ids);
        }
        let own_pairs = true_order_products(&mut su, own);
        assert!(!true_order_products(&mut su, other).is_empty(), "ground truth: the other tenant has m2m rows");
        assert_eq!(pairs(t, &["seen", "order_products"]), own_pairs, "{slug} sees exactly its own m2m rows");
        assert_eq!(int(t, &["seen", "sku_1_count"]), 1, "{slug} sees one 'sku-1' (each tenant has one)");

        // The upsert (INSERT ... ON CONFLICT (email)) updated the tenant's ann, inserted dave once.
        assert_eq!(int(t, &["upsert", "ann_id_before"]), seeded_ann[i], "{slug}'s ann is the seeded row");
        assert_eq!(int(t, &["upsert", "ann_id_after"]), seeded_ann[i], "the upsert updated ann in place");
        assert_eq!(ids(t, &["upsert", "returned_ids"]).first(), Some(&seeded_ann[i]), "bulk_create returns ann's id");
        assert_eq!(int(t, &["seen", "ann_count"]), 1, "{slug} has one ann after the upsert, not two");
        let (ann_rows, ann_name, daves): (i64, String, i64) = {
            let row = su
                .query_one(
                    "SELECT (SELECT count(*) FROM shop_customer WHERE tenant_id = $1::text::uuid AND email = 'ann@example.com'),
                            (SELECT name FROM shop_customer WHERE id = $2),
                            (SELECT count(*) FROM shop_customer WHERE tenant_id = $1::text::uuid AND email = 'dave@example.com')",
                    &[own, &seeded_ann[i]],
                )
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        assert_eq!((ann_rows, ann_name.as_str(), daves), (1, format!("Ann upserted by {slug}").as_str(), 1));

        // get_or_create finds the tenant's own row, creates a new one once.
        let sku_1: Vec<i64> = su
            .query("SELECT id FROM shop_product WHERE tenant_id = $1::text::uuid AND sku = 'sku-1'", &[own])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!boolean(t, &["get_or_create", "sku_1", "created"]), "{slug}'s 'sku-1' is found, not created");
        assert_eq!(vec![int(t, &["get_or_create", "sku_1", "id"])], sku_1, "get_or_create found {slug}'s own 'sku-1'");
        assert!(boolean(t, &["get_or_create", "erin", "created"]), "erin is new for {slug}");
        assert!(!boolean(t, &["get_or_create", "erin_again", "created"]), "erin is found the second time");
        assert_eq!(int(t, &["get_or_create", "erin", "id"]), int(t, &["get_or_create", "erin_again", "id"]));

        // select_for_update locked (and updated) the tenant's rows only.
        let locked = ids(t, &["locked_ids"]);
        let own_locked: Vec<i64> = su
            .query(
                "SELECT id FROM shop_product WHERE tenant_id = $1::text::uuid AND sku IN ('sku-1', 'sku-2')
                    AND title LIKE '%(locked by ' || $2 || ')' ORDER BY id",
                &[own, slug],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(locked.len(), 2, "{slug} locked its two products");
        assert_eq!(locked, own_locked, "the rows {slug} locked and updated are its own");
        let foreign_touched: i64 = su
            .query_one(
                "SELECT count(*) FROM shop_product WHERE tenant_id = $1::text::uuid
                    AND title LIKE '%(locked by ' || $2 || ')'",
                &[other, slug],
            )
            .unwrap()
            .get(0);
        assert_eq!(foreign_touched, 0, "{slug}'s select_for_update touched no row of the other tenant");

        // A foreign key to the other tenant's customer fails like one to a missing row.
        assert_eq!(
            at(t, &["cross_tenant_fk", "sqlstate"]).as_str(),
            Some("23503"),
            "an order of {slug} referencing the other tenant's customer: {}",
            at(t, &["cross_tenant_fk"])
        );
    }
    let anns = count(&mut su, "SELECT count(*) FROM shop_customer WHERE email = 'ann@example.com'");
    assert_eq!(anns, 2, "ground truth: one ann per tenant, the upserts duplicated nothing");

    // A forgotten tenant_set: 28000, never rows (the tables have rows of both tenants).
    for case in ["select", "insert", "update", "autocommit_select"] {
        let outcome = at(&json, &["without_context", case]);
        assert_eq!(outcome["sqlstate"].as_str(), Some("28000"), "{case} without tenant_set: {outcome}");
        assert!(text(outcome, &["message"]).contains("no tenant context"), "{case}: {outcome}");
    }
    let overwritten = count(&mut su, "SELECT count(*) FROM shop_product WHERE title = 'overwritten'");
    assert_eq!(overwritten, 0, "the UPDATE without a context changed nothing");

    // And the harness's own check, table by table, as the application role.
    let tenants: Vec<(&str, &str)> = TENANTS.iter().zip(&tenant_ids).map(|((_, s), id)| (*s, id.as_str())).collect();
    for table in ["shop_customer", "shop_product", "shop_order", "shop_order_products"] {
        assert_isolated(db.server(), &db.name, table, &tenants);
    }
    eprintln!(
        "django: migrate {migrate_seconds:.1} s, ORM script {orm_seconds:.1} s, whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
