//! The life of a tenant (issue 5) — suspend, activate, soft delete, purge, rename — and the
//! audit log and registry visibility that go with it.
//!
//! Lifecycle functions are DBA functions: the tests call them as the superuser, or as [`APP`]
//! after a GRANT. Every refusal is checked with its SQLSTATE and a message fragment and with a
//! snapshot (as superuser) showing that nothing changed; every "cannot see" is paired with the
//! ground truth that the rows exist.
use multitenancy_integration::expect_sqlstate_mentioning as refused;
use multitenancy_integration::*;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// End users (values of multitenancy.user_id)
// ---------------------------------------------------------------------------------------------

const U_OWNER: &str = "11111111-1111-4111-8111-111111111111";
const U_OWNER2: &str = "22222222-2222-4222-8222-222222222222";
const U_MEMBER: &str = "44444444-4444-4444-8444-444444444444";
const U_NEW: &str = "66666666-6666-4666-8666-666666666666";

/// Every action the audit log knows (issue 5 contract).
const ALL_ACTIONS: [&str; 16] = [
    "admin_begin",
    "domain_add",
    "domain_remove",
    "domain_verify",
    "member_add",
    "member_remove",
    "member_set_role",
    "plan_set",
    "setting_set",
    "tenant_activate",
    "tenant_change_plan",
    "tenant_create",
    "tenant_delete",
    "tenant_purge",
    "tenant_rename",
    "tenant_suspend",
];

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// The status, status_reason and whether deleted_at is set, of a tenant (ground truth).
fn status_of(su: &mut Client, tenant_id: &str) -> (String, Option<String>, bool) {
    let row = su
        .query_one(
            "SELECT status, status_reason, deleted_at IS NOT NULL FROM multitenancy.tenants WHERE id = $1::text::uuid",
            &[&tenant_id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A `tenant_set` in a transaction of its own (rolled back): the id, or the error.
fn try_set(client: &mut Client, tenant: &str) -> Result<String, postgres::Error> {
    let mut tx = client.transaction().unwrap();
    let id = tx.query_one("SELECT multitenancy.tenant_set($1)::text", &[&tenant]).map(|r| r.get::<_, String>(0));
    tx.rollback().unwrap();
    id
}

/// One row of `multitenancy.audit_log`, as the superuser reads it (`row`: the whole row as text).
#[derive(Debug, Clone, PartialEq)]
struct AuditRow {
    id: i64,
    action: String,
    tenant: Option<String>,
    session_role: String,
    row: String,
}

fn audit_rows(su: &mut Client) -> Vec<AuditRow> {
    su.query(
        "SELECT id, action, tenant_id::text, session_role::text, a::text FROM multitenancy.audit_log a ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| AuditRow { id: r.get(0), action: r.get(1), tenant: r.get(2), session_role: r.get(3), row: r.get(4) })
    .collect()
}

/// Exactly one audit row was added since `before` (which is unchanged), with this action and
/// tenant; returns it.
#[track_caller]
fn one_new_audit_row(su: &mut Client, before: &[AuditRow], action: &str, tenant: Option<&str>) -> AuditRow {
    let after = audit_rows(su);
    let kept: Vec<AuditRow> = after.iter().filter(|r| before.contains(r)).cloned().collect();
    assert_eq!(kept, before, "{action}: every earlier audit row is still there, unchanged");
    let new: Vec<AuditRow> = after.into_iter().filter(|r| !before.contains(r)).collect();
    assert_eq!(new.len(), 1, "{action}: exactly one new audit row, got {new:#?}");
    let row = new.into_iter().next().unwrap();
    assert_eq!(row.action, action, "the new audit row's action: {row:?}");
    assert_eq!(row.tenant.as_deref(), tenant, "{action}: the audit row's tenant_id: {row:?}");
    row
}

/// Run one state-changing call and check that it wrote exactly one audit row; record the action.
#[track_caller]
fn audited<R>(
    su: &mut Client,
    covered: &mut Vec<String>,
    action: &str,
    tenant: Option<&str>,
    call: impl FnOnce() -> R,
) -> (R, AuditRow) {
    let before = audit_rows(su);
    let result = call();
    let row = one_new_audit_row(su, &before, action, tenant);
    covered.push(action.to_string());
    (result, row)
}

/// Run a call that must be refused, and check that it wrote no audit row.
#[track_caller]
fn refused_unaudited<T: std::fmt::Debug>(
    su: &mut Client,
    what: &str,
    code: &SqlState,
    any_of: &[&str],
    call: impl FnOnce() -> Result<T, postgres::Error>,
) {
    let before = audit_rows(su);
    let error = refused(call(), code, any_of);
    assert_eq!(audit_rows(su), before, "{what} (refused: {}) must write no audit row", error.message());
}

/// (table, tenant id or "-") -> (rows, digest of the rows), as the superuser sees it: every
/// enabled table, members, domains, the audit log, one row per tenant of the registry, and the
/// exempt `countries` table when there is one.
type Snapshot = BTreeMap<(String, String), (i64, String)>;

fn enabled_tables(su: &mut Client) -> Vec<String> {
    su.query("SELECT relid::regclass::text FROM multitenancy.enabled_tables ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn snapshot(su: &mut Client) -> Snapshot {
    let mut tables = enabled_tables(su);
    tables.extend(["multitenancy.members", "multitenancy.domains", "multitenancy.audit_log"].map(String::from));
    let mut snap = Snapshot::new();
    for table in tables {
        let sql = format!(
            "SELECT coalesce(tenant_id::text, '-'), count(*), md5(string_agg(t::text, ',' ORDER BY t::text))
               FROM {table} t GROUP BY 1"
        );
        for row in su.query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")) {
            snap.insert((table.clone(), row.get(0)), (row.get(1), row.get(2)));
        }
    }
    for row in su.query("SELECT id::text, md5(t::text) FROM multitenancy.tenants t", &[]).unwrap() {
        snap.insert(("multitenancy.tenants".into(), row.get(0)), (1, row.get(1)));
    }
    if relation_exists(su, "public.countries") {
        let row = su
            .query_one("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM countries t", &[])
            .unwrap();
        snap.insert(("countries".into(), "-".into()), (row.get(0), row.get(1)));
    }
    snap
}

/// Rows of one tenant in a snapshot's table.
fn rows_in(snap: &Snapshot, table: &str, tenant_id: &str) -> i64 {
    snap.get(&(table.to_string(), tenant_id.to_string())).map_or(0, |v| v.0)
}

/// A database for purging: tenants acme, globex and initech; three enabled tables (projects <-
/// tasks <- comments, plain foreign keys, enabled parent first) with rows of every tenant
/// written by APP; an exempt table; members, verified domains and a setting for each tenant.
struct World {
    db: TestDb,
    /// (slug, id) of acme, globex, initech.
    tenants: Vec<(String, String)>,
}

impl World {
    fn new(tag: &str) -> World {
        let db = TestDb::new(tag);
        let tenants: Vec<(String, String)> = [("Acme", "acme"), ("Globex", "globex"), ("Initech", "initech")]
            .iter()
            .map(|(name, slug)| (slug.to_string(), db.tenant(name, slug)))
            .collect();
        let mut owner = db.owner();
        owner
            .batch_execute(&format!(
                "CREATE TABLE projects (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
                 SELECT multitenancy.tenant_enable('projects');
                 CREATE TABLE tasks (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                     project_id bigint NOT NULL REFERENCES projects (id), title text NOT NULL);
                 SELECT multitenancy.tenant_enable('tasks');
                 CREATE TABLE comments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                        task_id bigint NOT NULL REFERENCES tasks (id), body text NOT NULL);
                 SELECT multitenancy.tenant_enable('comments');
                 GRANT SELECT, INSERT, UPDATE, DELETE ON projects, tasks, comments TO {APP};"
            ))
            .unwrap();
        create_exempt_countries(&mut owner);

        let mut app = db.app();
        for (n, (slug, _)) in tenants.iter().enumerate() {
            // acme: 2 projects, globex: 3, initech: 1; two tasks per project, one comment per task.
            let projects = [2, 3, 1][n];
            let mut tx = begin_as(&mut app, slug);
            for p in 0..projects {
                let project: i64 = tx
                    .query_one("INSERT INTO projects (name) VALUES ($1) RETURNING id", &[&format!("{slug}-p{p}")])
                    .unwrap()
                    .get(0);
                for t in 0..2 {
                    let task: i64 = tx
                        .query_one(
                            "INSERT INTO tasks (project_id, title) VALUES ($1, $2) RETURNING id",
                            &[&project, &format!("{slug}-p{p}-t{t}")],
                        )
                        .unwrap()
                        .get(0);
                    tx.execute("INSERT INTO comments (task_id, body) VALUES ($1, 'looks good')", &[&task]).unwrap();
                }
            }
            tx.commit().unwrap();
        }

        let mut su = db.superuser();
        for (n, (slug, _)) in tenants.iter().enumerate() {
            // U_OWNER owns all three (purging one tenant must keep its other memberships).
            su.execute("SELECT multitenancy.member_add($1::text, $2::text::uuid, 'owner')", &[slug, &U_OWNER]).unwrap();
            let member = format!("{:08x}-0000-4000-8000-000000000000", n + 1);
            su.execute("SELECT multitenancy.member_add($1::text, $2::text::uuid, 'member')", &[slug, &member]).unwrap();
            let domain = format!("{slug}.example.test");
            let token: String =
                su.query_one("SELECT multitenancy.domain_add($1::text, $2::text)", &[slug, &domain]).unwrap().get(0);
            su.execute("SELECT multitenancy.domain_verify($1::text, $2::text)", &[&domain, &token]).unwrap();
            su.execute("SELECT multitenancy.setting_set($1::text, 'color', '\"red\"'::jsonb)", &[slug]).unwrap();
        }
        World { db, tenants }
    }

    fn id(&self, slug: &str) -> String {
        self.tenants.iter().find(|(s, _)| s == slug).unwrap().1.clone()
    }
}

/// Ground truth (as superuser): `(count, digest)` of a registry table's rows.
fn table_digest(su: &mut Client, table: &str) -> (i64, Option<String>) {
    let row = su
        .query_one(&format!("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"), &[])
        .unwrap();
    (row.get(0), row.get(1))
}

const REGISTRY: [&str; 5] = [
    "multitenancy.tenants",
    "multitenancy.members",
    "multitenancy.domains",
    "multitenancy.audit_log",
    "multitenancy.plans",
];

fn registry_digest(su: &mut Client) -> Vec<(i64, Option<String>)> {
    REGISTRY.iter().map(|t| table_digest(su, t)).collect()
}

// ---------------------------------------------------------------------------------------------
// Suspend and activate
// ---------------------------------------------------------------------------------------------

#[test]
fn a_suspended_tenant_is_refused_and_activate_restores_it() {
    let o = Orders::new("lifecycle_suspend");
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    assert_eq!(try_set(&mut app, "globex").unwrap(), o.b, "positive control: globex is usable");

    // A reason is required; a refusal changes nothing.
    for reason in [Some(""), Some("   "), None] {
        refused(
            su.execute("SELECT multitenancy.tenant_suspend('globex', $1)", &[&reason]),
            &SqlState::INVALID_PARAMETER_VALUE,
            &["reason"],
        );
        assert_eq!(status_of(&mut su, &o.b), ("active".into(), None, false));
    }

    su.execute("SELECT multitenancy.tenant_suspend('globex', 'unpaid invoice')", &[]).unwrap();
    assert_eq!(status_of(&mut su, &o.b), ("suspended".into(), Some("unpaid invoice".into()), false));
    for key in ["globex", o.b.as_str()] {
        refused(try_set(&mut app, key), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, &["suspended"]);
    }
    // SET LOCAL of its id fails at the first query too.
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", o.b)).unwrap();
        refused(
            tx.query_one("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["suspended"],
        );
    }
    // The data is kept, and acme is unaffected.
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: a suspended tenant's rows are kept");
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
    }
    // Suspending it again is not a change: 55000.
    refused(
        su.execute("SELECT multitenancy.tenant_suspend('globex', 'again')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["suspended"],
    );
    assert_eq!(status_of(&mut su, &o.b), ("suspended".into(), Some("unpaid invoice".into()), false));

    su.execute("SELECT multitenancy.tenant_activate('globex')", &[]).unwrap();
    assert_eq!(status_of(&mut su, &o.b).0, "active");
    {
        let mut tx = begin_as(&mut app, "globex");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b, "activated: usable again, rows intact");
    }
    // Activating an active tenant is not a change: 55000.
    refused(
        su.execute("SELECT multitenancy.tenant_activate('acme')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["active"],
    );
    assert_eq!(status_of(&mut su, &o.a).0, "active");
}

#[test]
fn a_session_level_context_stops_working_in_the_next_transaction_after_suspension() {
    let o = Orders::new("lifecycle_session_set");
    allow_session_context(&o.db);
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    app.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.b)).unwrap();

    let mut tx = app.transaction().unwrap();
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b, "before the suspension");
    su.execute("SELECT multitenancy.tenant_suspend('globex', 'fraud review')", &[]).unwrap();
    assert_eq!(status_of(&mut su, &o.b).0, "suspended", "the suspension is committed");
    // Checked once per transaction: the transaction that already used the context goes on.
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b, "the current transaction keeps working");
    tx.commit().unwrap();

    // The next transaction (explicit or not) fails.
    {
        let mut tx = app.transaction().unwrap();
        refused(
            tx.query_one("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["suspended"],
        );
    }
    refused(
        app.query_one("SELECT multitenancy.current_tenant_id()", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["suspended"],
    );
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: the rows are still there");

    // Positive control: the same session, switched to acme, works.
    app.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.a)).unwrap();
    assert_eq!(count(&mut app, "SELECT count(*) FROM orders"), o.rows_a);
    // And after activation, globex works again in that session.
    su.execute("SELECT multitenancy.tenant_activate('globex')", &[]).unwrap();
    app.batch_execute(&format!("SET multitenancy.tenant_id = '{}'", o.b)).unwrap();
    assert_eq!(count(&mut app, "SELECT count(*) FROM orders"), o.rows_b);
}

// ---------------------------------------------------------------------------------------------
// Delete (soft) and purge
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_is_soft_refuses_the_context_and_activate_undoes_it() {
    let o = Orders::new("lifecycle_delete");
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    let before = table_snapshot(&mut su, "orders");

    su.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
    let (status, _, deleted_at) = status_of(&mut su, &o.b);
    assert_eq!((status.as_str(), deleted_at), ("deleted", true));
    assert_eq!(o.true_count(&o.b), o.rows_b, "ground truth: a deleted tenant's rows are all still there");
    assert_eq!(table_snapshot(&mut su, "orders"), before, "delete touched no row of orders");

    for key in ["globex", o.b.as_str()] {
        refused(try_set(&mut app, key), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, &["deleted"]);
    }
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{}'", o.b)).unwrap();
        refused(
            tx.query_one("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["deleted"],
        );
    }
    refused(
        su.execute("SELECT multitenancy.tenant_delete('globex')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["deleted"],
    );
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "acme is unaffected");
    }

    su.execute("SELECT multitenancy.tenant_activate('globex')", &[]).unwrap();
    let (status, _, deleted_at) = status_of(&mut su, &o.b);
    assert_eq!((status.as_str(), deleted_at), ("active", false), "activate clears deleted_at");
    let mut tx = begin_as(&mut app, "globex");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_b);
}

#[test]
fn purge_is_refused_unless_deleted_and_confirmed_and_a_refusal_changes_nothing() {
    let w = World::new("lifecycle_purge_refused");
    let (b, i) = (w.id("globex"), w.id("initech"));
    let mut su = w.db.superuser();

    // An active tenant: 55000.
    let s0 = snapshot(&mut su);
    assert!(rows_in(&s0, "projects", &b) > 0 && rows_in(&s0, "multitenancy.members", &b) > 0);
    refused(
        su.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["deleted"],
    );
    assert_eq!(snapshot(&mut su), s0, "a refused purge of an active tenant changed nothing");

    // A suspended tenant: 55000 too.
    su.execute("SELECT multitenancy.tenant_suspend('initech', 'closing down')", &[]).unwrap();
    let s1 = snapshot(&mut su);
    refused(
        su.query_one("SELECT multitenancy.tenant_purge('initech', 'initech')", &[]),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["deleted"],
    );
    assert_eq!(snapshot(&mut su), s1, "a refused purge of a suspended tenant changed nothing");
    assert_eq!(status_of(&mut su, &i).0, "suspended");

    // A deleted tenant without the right confirmation: 22023.
    su.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
    let s2 = snapshot(&mut su);
    for confirm in ["globe", "acme", b.as_str(), ""] {
        refused(
            su.query_one("SELECT multitenancy.tenant_purge('globex', $1)", &[&confirm]),
            &SqlState::INVALID_PARAMETER_VALUE,
            &["confirm", "slug"],
        );
        assert_eq!(snapshot(&mut su), s2, "a purge with confirm_slug {confirm:?} changed nothing");
    }
    assert_eq!(status_of(&mut su, &b).0, "deleted");

    // Positive control: confirmed, it works.
    let purged: i64 = su.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]).unwrap().get(0);
    assert!(purged > 0);
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.tenants WHERE id = '{b}'")), 0);
}

#[test]
fn purge_removes_every_row_of_the_tenant_and_nothing_of_the_others() {
    let w = World::new("lifecycle_purge");
    let b = w.id("globex");
    let mut su = w.db.superuser();
    let enabled = enabled_tables(&mut su);
    assert_eq!(enabled, ["comments", "projects", "tasks"], "the world's enabled tables");

    su.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
    let before = snapshot(&mut su);
    // Ground truth: every tenant has rows everywhere (so "zero" and "unchanged" mean something).
    for (slug, id) in &w.tenants {
        for table in enabled.iter().map(String::as_str).chain([
            "multitenancy.members",
            "multitenancy.domains",
            "multitenancy.audit_log",
        ]) {
            assert!(rows_in(&before, table, id) > 0, "ground truth: {slug} has rows in {table}");
        }
    }
    let expected: i64 = enabled.iter().map(|t| rows_in(&before, t, &b)).sum();
    assert_eq!(expected, 3 + 6 + 6, "globex: 3 projects, 6 tasks, 6 comments");

    let purged: i64 = su.query_one("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]).unwrap().get(0);
    assert_eq!(purged, expected, "tenant_purge returns the number of rows deleted from enabled tables");

    // None of globex's rows is left in any enabled table (asked of the registry, not of our list).
    for table in enabled_tables(&mut su) {
        let left = count(&mut su, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{b}'"));
        assert_eq!(left, 0, "{table} still has {left} row(s) of the purged tenant");
    }
    for table in ["multitenancy.members", "multitenancy.domains"] {
        let left = count(&mut su, &format!("SELECT count(*) FROM {table} WHERE tenant_id = '{b}'"));
        assert_eq!(left, 0, "{table} still has {left} row(s) of the purged tenant");
    }
    assert_eq!(
        count(&mut su, &format!("SELECT count(*) FROM multitenancy.tenants WHERE id = '{b}'")),
        0,
        "the tenant row is gone"
    );

    // Every other tenant's rows, the exempt table and the tenant-less audit rows are identical.
    let after = snapshot(&mut su);
    let others = |s: &Snapshot| -> Vec<((String, String), (i64, String))> {
        s.iter().filter(|((_, tenant), _)| tenant != &b).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    assert_eq!(others(&after), others(&before), "nothing of any other tenant changed");
    assert!(after.contains_key(&("countries".to_string(), "-".to_string())));

    // The tenant's audit history is kept, plus one row for the purge.
    assert_eq!(
        rows_in(&after, "multitenancy.audit_log", &b),
        rows_in(&before, "multitenancy.audit_log", &b) + 1,
        "audit rows of the purged tenant are kept (and the purge is one more)"
    );
    let last: String = su
        .query_one(
            &format!("SELECT action FROM multitenancy.audit_log WHERE tenant_id = '{b}' ORDER BY id DESC LIMIT 1"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(last, "tenant_purge");

    // The tenant no longer resolves; the others work as before.
    let mut app = w.db.app();
    for key in ["globex", b.as_str()] {
        refused(try_set(&mut app, key), &SqlState::UNDEFINED_OBJECT, &["does not exist"]);
    }
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.tenant_id = '{b}'")).unwrap();
        refused(
            tx.query_one("SELECT count(*) FROM projects", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["does not exist"],
        );
    }
    for (slug, id) in w.tenants.iter().filter(|(s, _)| s != "globex") {
        let mut tx = begin_as(&mut app, slug);
        for table in &enabled {
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table}")),
                rows_in(&before, table, id),
                "{slug} in {table}"
            );
        }
    }
    // A foreign key of the surviving tenants still holds: a task of acme cannot point at nothing.
    let mut tx = begin_as(&mut app, "acme");
    expect_sqlstate(
        tx.execute("INSERT INTO tasks (project_id, title) VALUES (-1, 'orphan')", &[]),
        &SqlState::FOREIGN_KEY_VIOLATION,
    );
}

// ---------------------------------------------------------------------------------------------
// Rename
// ---------------------------------------------------------------------------------------------

#[test]
fn rename_changes_name_and_slug_and_refuses_a_taken_slug() {
    let o = Orders::new("lifecycle_rename");
    let mut su = o.db.superuser();
    let mut app = o.db.app();
    let name_slug = |su: &mut Client, id: &str| -> (String, String) {
        let row =
            su.query_one("SELECT name, slug FROM multitenancy.tenants WHERE id = $1::text::uuid", &[&id]).unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(try_set(&mut app, "acme").unwrap(), o.a, "the old slug is cached in this session");

    su.execute("SELECT multitenancy.tenant_rename('acme', 'Acme Inc', 'acme-inc')", &[]).unwrap();
    assert_eq!(name_slug(&mut su, &o.a), ("Acme Inc".into(), "acme-inc".into()));
    refused(try_set(&mut app, "acme"), &SqlState::UNDEFINED_OBJECT, &["does not exist"]);
    assert_eq!(try_set(&mut app, "acme-inc").unwrap(), o.a);
    {
        let mut tx = begin_as(&mut app, "acme-inc");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a, "same tenant, same rows");
    }

    // A NULL slug keeps it; the tenant may be named by id.
    su.execute("SELECT multitenancy.tenant_rename($1::text, 'Globex Corporation')", &[&o.b]).unwrap();
    assert_eq!(name_slug(&mut su, &o.b), ("Globex Corporation".into(), "globex".into()));

    // A taken slug: 23505, nothing changes.
    refused(
        su.execute("SELECT multitenancy.tenant_rename('acme-inc', 'Whatever', 'globex')", &[]),
        &SqlState::UNIQUE_VIOLATION,
        &["globex", "already taken"],
    );
    // A malformed slug: 22023; an unknown tenant: 42704.
    refused(
        su.execute("SELECT multitenancy.tenant_rename('acme-inc', 'Whatever', 'Not A Slug')", &[]),
        &SqlState::INVALID_PARAMETER_VALUE,
        &["slug"],
    );
    refused(
        su.execute("SELECT multitenancy.tenant_rename('nobody', 'Whatever', 'nobody-2')", &[]),
        &SqlState::UNDEFINED_OBJECT,
        &["does not exist"],
    );
    assert_eq!(name_slug(&mut su, &o.a), ("Acme Inc".into(), "acme-inc".into()));
    assert_eq!(name_slug(&mut su, &o.b), ("Globex Corporation".into(), "globex".into()));
    assert_eq!(try_set(&mut app, "globex").unwrap(), o.b);
}

// ---------------------------------------------------------------------------------------------
// Privileges of the lifecycle functions
// ---------------------------------------------------------------------------------------------

#[test]
fn lifecycle_functions_are_not_executable_by_the_app_until_granted() {
    let o = Orders::new("lifecycle_grants");
    let mut su = o.db.superuser();
    su.execute("SELECT multitenancy.plan_set('pro')", &[]).unwrap();
    su.execute("SELECT multitenancy.tenant_delete('globex')", &[]).unwrap();
    su.execute("SELECT multitenancy.member_add('acme', $1::text::uuid, 'owner')", &[&U_OWNER]).unwrap();
    let before = registry_digest(&mut su);
    let mut app = o.db.app();

    let calls = [
        "SELECT multitenancy.tenant_suspend('acme', 'x')",
        "SELECT multitenancy.tenant_activate('globex')",
        "SELECT multitenancy.tenant_delete('acme')",
        "SELECT multitenancy.tenant_purge('globex', 'globex')",
        "SELECT multitenancy.tenant_rename('acme', 'Pwned', 'pwned')",
        "SELECT multitenancy.tenant_change_plan('acme', 'pro')",
        "SELECT multitenancy.plan_set('evil', '{}', '{\"everything\": true}')",
    ];
    for call in calls {
        // Without a context, and with acme's context and its owner as the user.
        refused(app.execute(call, &[]), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied for function"]);
        let mut tx = begin_as_user(&mut app, "acme", U_OWNER);
        refused(tx.execute(call, &[]), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied for function"]);
    }
    assert_eq!(registry_digest(&mut su), before, "no registry row changed (tenants, members, domains, audit, plans)");
    assert_eq!(status_of(&mut su, &o.a).0, "active");
    assert_eq!(o.true_count(&o.b), o.rows_b, "globex (deleted) was not purged");

    // Once the DBA grants two of them, the app can call exactly those.
    su.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION multitenancy.tenant_suspend(text, text), multitenancy.tenant_activate(text) TO {APP}"
    ))
    .unwrap();
    app.execute("SELECT multitenancy.tenant_suspend('acme', 'granted')", &[]).unwrap();
    assert_eq!(status_of(&mut su, &o.a), ("suspended".into(), Some("granted".into()), false));
    app.execute("SELECT multitenancy.tenant_activate('acme')", &[]).unwrap();
    assert_eq!(status_of(&mut su, &o.a).0, "active");
    refused(
        app.execute("SELECT multitenancy.tenant_purge('globex', 'globex')", &[]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &["permission denied for function"],
    );
    assert_eq!(o.true_count(&o.b), o.rows_b);
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

#[test]
fn every_state_changing_call_writes_exactly_one_audit_row() {
    let db = TestDb::new("audit_every_call");
    let a = db.tenant("Acme", "acme");
    let mut su = db.superuser(); // ground truth
    let mut dba = db.superuser(); // calls
    let mut app = db.app();
    let mut covered: Vec<String> = Vec::new();

    // tenant_create: the tenant is known from the call's result.
    let before = audit_rows(&mut su);
    let i: String = dba.query_one("SELECT multitenancy.tenant_create('Initech', 'initech')::text", &[]).unwrap().get(0);
    let row = one_new_audit_row(&mut su, &before, "tenant_create", Some(&i));
    assert_eq!(row.session_role, SUPERUSER);
    covered.push(row.action);

    audited(&mut su, &mut covered, "plan_set", None, || {
        dba.execute("SELECT multitenancy.plan_set('pro', '{\"seats\": 50}', '{\"sso\": true}')", &[]).unwrap()
    });
    audited(&mut su, &mut covered, "tenant_change_plan", Some(&i), || {
        dba.execute("SELECT multitenancy.tenant_change_plan('initech', 'pro')", &[]).unwrap()
    });
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.tenants WHERE slug = 'initech' AND plan = 'pro'"), 1);
    audited(&mut su, &mut covered, "tenant_rename", Some(&i), || {
        dba.execute("SELECT multitenancy.tenant_rename('initech', 'Initech Corp', 'initech-corp')", &[]).unwrap()
    });

    // Members: the DBA adds the owner, the owner (through the app) the rest.
    audited(&mut su, &mut covered, "member_add", Some(&a), || {
        dba.execute("SELECT multitenancy.member_add('acme', $1::text::uuid, 'owner')", &[&U_OWNER]).unwrap()
    });
    let (_, row) = audited(&mut su, &mut covered, "member_add", Some(&a), || {
        as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_add('acme', '{U_MEMBER}')")).unwrap()
    });
    assert_eq!(row.session_role, APP, "the audit row names the session role");
    audited(&mut su, &mut covered, "member_set_role", Some(&a), || {
        as_user(
            &mut app,
            "acme",
            U_OWNER,
            &format!("SELECT multitenancy.member_set_role('acme', '{U_MEMBER}', 'admin')"),
        )
        .unwrap()
    });

    // Domains and settings, as the owner through the app; verification by an operator who saw the token.
    let (token, _) = audited(&mut su, &mut covered, "domain_add", Some(&a), || {
        let mut tx = begin_as_user(&mut app, "acme", U_OWNER);
        let token: String =
            tx.query_one("SELECT multitenancy.domain_add('acme', 'shop.acme.test')", &[]).unwrap().get(0);
        tx.commit().unwrap();
        token
    });
    audited(&mut su, &mut covered, "domain_verify", Some(&a), || {
        dba.execute("SELECT multitenancy.domain_verify('shop.acme.test', $1::text)", &[&token]).unwrap()
    });
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM multitenancy.domains WHERE domain = 'shop.acme.test' AND verified_at IS NOT NULL"
        ),
        1
    );
    audited(&mut su, &mut covered, "setting_set", Some(&a), || {
        as_user(&mut app, "acme", U_OWNER, "SELECT multitenancy.setting_set('acme', 'color', '\"blue\"')").unwrap()
    });
    audited(&mut su, &mut covered, "domain_remove", Some(&a), || {
        as_user(&mut app, "acme", U_OWNER, "SELECT multitenancy.domain_remove('shop.acme.test')").unwrap()
    });
    audited(&mut su, &mut covered, "member_remove", Some(&a), || {
        as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_remove('acme', '{U_MEMBER}')")).unwrap()
    });

    // Admin access, by a member of multitenancy_admin.
    su.batch_execute(
        "DO $$ BEGIN CREATE ROLE mt_support LOGIN NOSUPERUSER NOBYPASSRLS;
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT multitenancy_admin TO mt_support;",
    )
    .unwrap();
    let mut support = db.connect("mt_support");
    let (_, row) = audited(&mut su, &mut covered, "admin_begin", None, || {
        let mut tx = support.transaction().unwrap();
        tx.execute("SELECT multitenancy.admin_begin('support ticket 4711')", &[]).unwrap();
        tx.commit().unwrap();
    });
    assert_eq!(row.session_role, "mt_support");

    // The rest of the lifecycle.
    audited(&mut su, &mut covered, "tenant_suspend", Some(&i), || {
        dba.execute("SELECT multitenancy.tenant_suspend('initech-corp', 'unpaid')", &[]).unwrap()
    });
    audited(&mut su, &mut covered, "tenant_activate", Some(&i), || {
        dba.execute("SELECT multitenancy.tenant_activate('initech-corp')", &[]).unwrap()
    });
    audited(&mut su, &mut covered, "tenant_delete", Some(&i), || {
        dba.execute("SELECT multitenancy.tenant_delete('initech-corp')", &[]).unwrap()
    });
    audited(&mut su, &mut covered, "tenant_purge", Some(&i), || {
        dba.query_one("SELECT multitenancy.tenant_purge('initech-corp', 'initech-corp')", &[]).unwrap()
    });

    covered.sort();
    covered.dedup();
    assert_eq!(covered, ALL_ACTIONS, "every audited action was exercised");
}

#[test]
fn refused_calls_write_no_audit_row() {
    let db = TestDb::new("audit_refused");
    let a = db.tenant("Acme", "acme");
    db.tenant("Globex", "globex");
    db.tenant("Initech", "initech");
    let mut su = db.superuser(); // ground truth
    let mut dba = db.superuser(); // calls
    for sql in [
        format!("SELECT multitenancy.member_add('acme', '{U_OWNER}', 'owner')"),
        format!("SELECT multitenancy.member_add('acme', '{U_MEMBER}', 'member')"),
        format!("SELECT multitenancy.member_add('globex', '{U_OWNER2}', 'owner')"),
        "SELECT multitenancy.domain_add('globex', 'shop.globex.test')".into(),
        "SELECT multitenancy.tenant_delete('initech')".into(),
    ] {
        dba.execute(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let members_before = table_digest(&mut su, "multitenancy.members");
    let tenants_before = table_digest(&mut su, "multitenancy.tenants");
    let mut app = db.app();
    let insufficient = SqlState::INSUFFICIENT_PRIVILEGE;
    let prerequisite = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;
    let invalid = SqlState::INVALID_PARAMETER_VALUE;
    let unique = SqlState::UNIQUE_VIOLATION;
    let undefined = SqlState::UNDEFINED_OBJECT;

    refused_unaudited(&mut su, "member_add by a member", &insufficient, DENIED, || {
        as_user(&mut app, "acme", U_MEMBER, &format!("SELECT multitenancy.member_add('acme', '{U_NEW}')"))
    });
    refused_unaudited(&mut su, "member_add of an existing member", &unique, &["already"], || {
        as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_add('acme', '{U_MEMBER}')"))
    });
    refused_unaudited(&mut su, "member_add with an invalid role", &invalid, &["role"], || {
        dba.execute(&format!("SELECT multitenancy.member_add('acme', '{U_NEW}', 'emperor')"), &[])
    });
    refused_unaudited(&mut su, "member_remove of the last owner", &prerequisite, &["owner"], || {
        as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_remove('acme', '{U_OWNER}')"))
    });
    refused_unaudited(&mut su, "member_set_role demoting the last owner", &prerequisite, &["owner"], || {
        dba.execute(&format!("SELECT multitenancy.member_set_role('acme', '{U_OWNER}', 'admin')"), &[])
    });
    refused_unaudited(&mut su, "member_add to an unknown tenant", &undefined, &["does not exist"], || {
        dba.execute(&format!("SELECT multitenancy.member_add('nobody', '{U_NEW}')"), &[])
    });
    refused_unaudited(&mut su, "domain_add by a member", &insufficient, DENIED, || {
        as_user(&mut app, "acme", U_MEMBER, "SELECT multitenancy.domain_add('acme', 'shop.acme.test')")
    });
    refused_unaudited(&mut su, "domain_add of another tenant's domain", &unique, &["already"], || {
        as_user(&mut app, "acme", U_OWNER, "SELECT multitenancy.domain_add('acme', 'shop.globex.test')")
    });
    refused_unaudited(
        &mut su,
        "domain_verify with a wrong token",
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["token"],
        || dba.execute("SELECT multitenancy.domain_verify('shop.globex.test', 'not-the-token')", &[]),
    );
    // Another tenant's domain is "not found" for acme's owner, as an unknown one is.
    refused_unaudited(
        &mut su,
        "domain_remove by another tenant's owner",
        &SqlState::UNDEFINED_OBJECT,
        &["no tenant for host"],
        || as_user(&mut app, "acme", U_OWNER, "SELECT multitenancy.domain_remove('shop.globex.test')"),
    );
    refused_unaudited(&mut su, "setting_set by a member", &insufficient, DENIED, || {
        as_user(&mut app, "acme", U_MEMBER, "SELECT multitenancy.setting_set('acme', 'color', '\"black\"')")
    });
    refused_unaudited(&mut su, "tenant_suspend without a reason", &invalid, &["reason"], || {
        dba.execute("SELECT multitenancy.tenant_suspend('acme', '')", &[])
    });
    refused_unaudited(&mut su, "tenant_activate of an active tenant", &prerequisite, &["active"], || {
        dba.execute("SELECT multitenancy.tenant_activate('acme')", &[])
    });
    refused_unaudited(&mut su, "tenant_delete of a deleted tenant", &prerequisite, &["deleted"], || {
        dba.execute("SELECT multitenancy.tenant_delete('initech')", &[])
    });
    refused_unaudited(&mut su, "tenant_purge of an active tenant", &prerequisite, &["deleted"], || {
        dba.query_one("SELECT multitenancy.tenant_purge('acme', 'acme')", &[])
    });
    refused_unaudited(&mut su, "tenant_purge without confirmation", &invalid, &["confirm", "slug"], || {
        dba.query_one("SELECT multitenancy.tenant_purge('initech', 'acme')", &[])
    });
    refused_unaudited(&mut su, "tenant_change_plan to an unknown plan", &undefined, &["nope", "plan"], || {
        dba.execute("SELECT multitenancy.tenant_change_plan('acme', 'nope')", &[])
    });
    refused_unaudited(&mut su, "tenant_rename to a taken slug", &unique, &["globex", "already taken"], || {
        dba.execute("SELECT multitenancy.tenant_rename('acme', 'Acme', 'globex')", &[])
    });
    refused_unaudited(
        &mut su,
        "admin_begin by a role outside multitenancy_admin",
        &insufficient,
        &["multitenancy_admin"],
        || {
            let mut tx = app.transaction().unwrap();
            tx.execute("SELECT multitenancy.admin_begin('curious')", &[])
        },
    );
    refused_unaudited(
        &mut su,
        "tenant_suspend by the app (not granted)",
        &insufficient,
        &["permission denied"],
        || app.execute("SELECT multitenancy.tenant_suspend('acme', 'x')", &[]),
    );

    assert_eq!(table_digest(&mut su, "multitenancy.members"), members_before, "no member changed");
    assert_eq!(table_digest(&mut su, "multitenancy.tenants"), tenants_before, "no tenant changed");
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.domains WHERE tenant_id = '{a}'")), 0);

    // Positive control: in this very database, an allowed call is audited.
    let before = audit_rows(&mut su);
    as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_add('acme', '{U_NEW}')")).unwrap();
    one_new_audit_row(&mut su, &before, "member_add", Some(&a));
}

#[test]
fn the_audit_log_is_append_only_for_the_app_and_owner_roles() {
    let o = Orders::new("audit_append_only");
    let mut su = o.db.superuser();
    su.execute("SELECT multitenancy.member_add('acme', $1::text::uuid, 'owner')", &[&U_OWNER]).unwrap();
    let acme_rows = count(&mut su, &format!("SELECT count(*) FROM multitenancy.audit_log WHERE tenant_id = '{}'", o.a));
    assert!(acme_rows >= 2, "ground truth: acme has audit rows (tenant_create, member_add)");
    let before = table_digest(&mut su, "multitenancy.audit_log");

    let statements = [
        "UPDATE multitenancy.audit_log SET action = 'forged'".to_string(),
        format!("UPDATE multitenancy.audit_log SET tenant_id = NULL WHERE tenant_id = '{}'", o.a),
        "DELETE FROM multitenancy.audit_log".to_string(),
        format!("DELETE FROM multitenancy.audit_log WHERE tenant_id = '{}'", o.a),
        "TRUNCATE multitenancy.audit_log".to_string(),
    ];
    for (who, mut client) in [(APP, o.db.app()), (OWNER, o.db.owner())] {
        for statement in &statements {
            // Without a context.
            refused(
                client.batch_execute(statement),
                &SqlState::INSUFFICIENT_PRIVILEGE,
                &["permission denied", "append-only"],
            );
            // With acme's context, where the rows are visible (positive control).
            let mut tx = begin_as(&mut client, "acme");
            assert_eq!(
                count(&mut tx, "SELECT count(*) FROM multitenancy.audit_log"),
                acme_rows,
                "{who} sees acme's audit rows"
            );
            refused(
                tx.batch_execute(statement),
                &SqlState::INSUFFICIENT_PRIVILEGE,
                &["permission denied", "append-only"],
            );
            drop(tx);
            // And as an end user who owns the tenant.
            if who == APP {
                let mut tx = begin_as_user(&mut client, "acme", U_OWNER);
                refused(
                    tx.batch_execute(statement),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    &["permission denied", "append-only"],
                );
            }
        }
        assert_eq!(table_digest(&mut su, "multitenancy.audit_log"), before, "{who} changed no audit row");
    }
    assert_eq!(before.0, count(&mut su, "SELECT count(*) FROM multitenancy.audit_log"));
}

// ---------------------------------------------------------------------------------------------
// Registry visibility
// ---------------------------------------------------------------------------------------------

/// Registry tables an app role may read, with the column that names the tenant.
const SCOPED: [(&str, &str); 4] = [
    ("multitenancy.tenants", "id"),
    ("multitenancy.members", "tenant_id"),
    ("multitenancy.domains", "tenant_id"),
    ("multitenancy.audit_log", "tenant_id"),
];

/// Orders, plus members, domains and a plan for both tenants.
fn populated_registry(tag: &str) -> Orders {
    let o = Orders::new(tag);
    let mut su = o.db.superuser();
    for sql in [
        format!("SELECT multitenancy.member_add('acme', '{U_OWNER}', 'owner')"),
        format!("SELECT multitenancy.member_add('acme', '{U_MEMBER}', 'member')"),
        format!("SELECT multitenancy.member_add('globex', '{U_OWNER2}', 'owner')"),
        "SELECT multitenancy.domain_add('acme', 'acme.example.test')".into(),
        "SELECT multitenancy.domain_add('globex', 'globex.example.test')".into(),
        "SELECT multitenancy.plan_set('pro', '{\"seats\": 5}', '{}')".into(),
    ] {
        su.execute(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    o
}

#[test]
fn the_app_sees_only_its_own_tenants_registry_rows() {
    let o = populated_registry("registry_visibility");
    let mut su = o.db.superuser();
    let mut app = o.db.app();

    for (slug, own, other) in [("acme", &o.a, &o.b), ("globex", &o.b, &o.a)] {
        let mut tx = begin_as(&mut app, slug);
        for (table, column) in SCOPED {
            let truth =
                |su: &mut Client, id: &str| count(su, &format!("SELECT count(*) FROM {table} WHERE {column} = '{id}'"));
            let (own_truth, other_truth) = (truth(&mut su, own), truth(&mut su, other));
            assert!(own_truth > 0 && other_truth > 0, "ground truth: both tenants have rows in {table}");
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table}")),
                own_truth,
                "{slug} sees all of its own rows of {table}, and only those"
            );
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table} WHERE {column} = '{own}'")),
                own_truth,
                "{slug}'s own rows of {table}"
            );
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table} WHERE {column} = '{other}'")),
                0,
                "{slug} sees none of the other tenant's {other_truth} row(s) of {table}"
            );
        }
        // Plans are the same for everyone.
        let plans = count(&mut su, "SELECT count(*) FROM multitenancy.plans");
        assert!(plans > 0);
        assert_eq!(count(&mut tx, "SELECT count(*) FROM multitenancy.plans"), plans);
        tx.commit().unwrap();
    }

    // With a user id as well (an end user of acme): still only acme's rows.
    {
        let mut tx = begin_as_user(&mut app, "acme", U_MEMBER);
        for (table, column) in SCOPED {
            assert_eq!(
                count(&mut tx, &format!("SELECT count(*) FROM {table} WHERE {column} = '{}'", o.b)),
                0,
                "{table}"
            );
        }
    }
    // Without a context: no rows (or the no-context error), never all of them.
    for (table, _) in SCOPED {
        match app.query_one(&format!("SELECT count(*) FROM {table}"), &[]) {
            Ok(row) => assert_eq!(row.get::<_, i64>(0), 0, "{table} without a context"),
            Err(e) => assert_eq!(db_error(&e).code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, "{table}: {e}"),
        }
    }
    // The tables registry stays private.
    for table in ["multitenancy.enabled_tables", "multitenancy.exempt_tables"] {
        let mut tx = begin_as(&mut app, "acme");
        refused(
            tx.query(&format!("SELECT * FROM {table}"), &[]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            &["permission denied"],
        );
    }
}

#[test]
fn the_app_cannot_write_the_registry() {
    let o = populated_registry("registry_writes");
    let mut su = o.db.superuser();
    let before = registry_digest(&mut su);
    let a = &o.a;
    let statements = [
        "INSERT INTO multitenancy.tenants (name, slug) VALUES ('Evil', 'evil')".to_string(),
        "UPDATE multitenancy.tenants SET name = 'Pwned', plan = 'pro'".into(),
        "DELETE FROM multitenancy.tenants".into(),
        format!("INSERT INTO multitenancy.members (tenant_id, user_id, role) VALUES ('{a}', '{U_NEW}', 'owner')"),
        "UPDATE multitenancy.members SET role = 'owner'".into(),
        "DELETE FROM multitenancy.members".into(),
        format!(
            "INSERT INTO multitenancy.domains (domain, tenant_id, verification_token) VALUES ('evil.example.test', '{a}', 'x')"
        ),
        "UPDATE multitenancy.domains SET verified_at = now()".into(),
        "DELETE FROM multitenancy.domains".into(),
        format!("INSERT INTO multitenancy.audit_log (acting_role, tenant_id, action) VALUES ('{APP}', '{a}', 'forged')"),
        "INSERT INTO multitenancy.plans (name) VALUES ('evil')".into(),
        "UPDATE multitenancy.plans SET features = '{\"everything\": true}'".into(),
        "DELETE FROM multitenancy.plans".into(),
    ];
    let mut app = o.db.app();
    for statement in &statements {
        refused(app.batch_execute(statement), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
        {
            let mut tx = begin_as(&mut app, "acme");
            refused(tx.batch_execute(statement), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
        }
        {
            // Even an owner of the tenant (as an end user) changes the registry only through functions.
            let mut tx = begin_as_user(&mut app, "acme", U_OWNER);
            refused(tx.batch_execute(statement), &SqlState::INSUFFICIENT_PRIVILEGE, &["permission denied"]);
        }
    }
    assert_eq!(registry_digest(&mut su), before, "no registry row changed");
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.members WHERE user_id = '{U_NEW}'")), 0);

    // Positive control: through the function, the owner can add a member.
    as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_add('acme', '{U_NEW}')")).unwrap();
    assert_eq!(count(&mut su, &format!("SELECT count(*) FROM multitenancy.members WHERE user_id = '{U_NEW}'")), 1);
}
