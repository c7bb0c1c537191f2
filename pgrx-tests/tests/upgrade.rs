//! Releases (issue 19): `ALTER EXTENSION multitenancy UPDATE` from every released version, and
//! `DROP EXTENSION`.
//!
//! - A database made with a released version (its install script is kept in
//!   `sql/versions/`) — tenants, members, an enabled table with both tenants' rows, quotas and
//!   usage, a signing key — is updated to the current version. Then its catalog (every object of
//!   the extension's schema and the extension's objects on the enabled table) equals a fresh
//!   install's, exactly; the rows, isolation, the guard, quotas and `verify()` work as before. A
//!   mutation check runs the upgrade with its last paragraph left out and expects the comparison
//!   to see it.
//! - `DROP EXTENSION multitenancy CASCADE` by the DBA leaves every enabled table closed: the
//!   application reads none of the rows that exist (ground truth).
use multitenancy_integration::*;

/// The extension's catalog, one line per fact, sorted: every object of schema `multitenancy`
/// with its definition, ACL and comment, the extension's members and configuration tables, the
/// event triggers, and the extension's objects on the enabled table `$1` (policies, triggers,
/// constraints, indexes, column defaults, row level security flags). Names, never oids.
const DESCRIBE: &str = "
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'multitenancy'),
     nsp AS (SELECT 'multitenancy'::regnamespace::oid AS oid),
     rels AS (SELECT c.oid FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid),
     tables AS (SELECT oid FROM rels UNION ALL SELECT $1::text::regclass::oid)
SELECT line FROM (
    SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid) AS line
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || ' acl=' || coalesce(p.proacl::text, '-')
           || ' leakproof=' || p.proleakproof || ' cost=' || p.procost || E'\n' || pg_get_functiondef(p.oid)
      FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid AND p.prokind IN ('f', 'p')
    UNION ALL
    SELECT 'aggregate ' || p.oid::regprocedure::text || ' acl=' || coalesce(p.proacl::text, '-')
      FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid AND p.prokind NOT IN ('f', 'p')
    UNION ALL
    SELECT format('relation %s kind=%s acl=%s options=%s rls=%s force=%s persistence=%s',
                  c.oid::regclass, c.relkind, c.relacl, c.reloptions, c.relrowsecurity,
                  c.relforcerowsecurity, c.relpersistence)
      FROM pg_class c WHERE c.oid IN (SELECT oid FROM tables) OR (c.oid IN (SELECT oid FROM rels) AND c.relkind = 'S')
    UNION ALL
    SELECT format('column %s.%s %s notnull=%s default=%s identity=%s generated=%s acl=%s collation=%s',
                  a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attacl, a.attcollation)
      FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attrelid IN (SELECT oid FROM tables) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s.%s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
      FROM pg_constraint WHERE conrelid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
      FROM pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM tables) AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s.%s permissive=%s cmd=%s roles=%s using=%s check=%s', polrelid::regclass, polname,
                  polpermissive, polcmd, polroles::regrole[], pg_get_expr(polqual, polrelid),
                  pg_get_expr(polwithcheck, polrelid))
      FROM pg_policy WHERE polrelid IN (SELECT oid FROM tables)
    UNION ALL
    SELECT 'view ' || c.oid::regclass::text || E'\n' || pg_get_viewdef(c.oid)
      FROM pg_class c WHERE c.oid IN (SELECT oid FROM rels) AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('event trigger %s on %s tags=%s function=%s enabled=%s', evtname, evtevent, evttags,
                  evtfoid::regprocedure, evtenabled)
      FROM pg_event_trigger
    UNION ALL
    SELECT format('type %s typtype=%s', t.oid::regtype, t.typtype) FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid
    UNION ALL
    SELECT format('comment %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
      FROM pg_description d
     WHERE (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT p.oid FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid))
        OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rels))
        OR (d.classoid = 'pg_namespace'::regclass AND d.objoid IN (SELECT oid FROM nsp))
    UNION ALL
    SELECT format('configuration table %s condition=%s', x.r::regclass, x.c)
      FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(r, c) WHERE e.extname = 'multitenancy'
    UNION ALL
    SELECT format('schema owner=%s acl=%s', nspowner::regrole, nspacl) FROM pg_namespace WHERE nspname = 'multitenancy'
) facts ORDER BY line";

fn describe(db: &TestDb) -> Vec<String> {
    db.superuser()
        .query(DESCRIBE, &[&"public.orders"])
        .unwrap_or_else(|e| panic!("describe {}: {:?}", db.name, e.as_db_error()))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What the first list has that the second lacks, and the other way round, for messages.
fn difference(left: &[String], right: &[String]) -> (Vec<String>, Vec<String>) {
    let only = |a: &[String], b: &[String]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    (only(left, right), only(right, left))
}

/// Tenants A and B with members, `orders` enabled (both tenants' rows), a row quota and metered
/// usage, a signing key: what a database in production holds when it is upgraded.
fn populate(db: &TestDb) -> (String, String) {
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    create_orders(db);
    let mut su = db.superuser();
    su.batch_execute(
        "SELECT multitenancy.member_add('acme', '00000000-0000-4000-8000-00000000a001', 'owner');
         SELECT multitenancy.member_add('globex', '00000000-0000-4000-8000-00000000b001', 'owner');
         SELECT multitenancy.quota_set('acme', 'rows', 1000);
         SELECT multitenancy.signing_key_add('k1', decode(repeat('ab', 32), 'hex'));",
    )
    .unwrap_or_else(|e| panic!("populate {}: {e}", db.name));
    let mut app = db.app();
    for (slug, rows) in [("acme", 3), ("globex", 2)] {
        let mut tx = begin_as(&mut app, slug);
        for i in 0..rows {
            tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&format!("{slug}-{i}")]).unwrap();
        }
        tx.query_one("SELECT multitenancy.usage_record('api_calls', 7)", &[]).unwrap();
        tx.commit().unwrap();
    }
    (a, b)
}

fn update_to(db: &TestDb, version: &str) {
    db.superuser()
        .batch_execute(&format!("ALTER EXTENSION multitenancy UPDATE TO '{version}'"))
        .unwrap_or_else(|e| panic!("ALTER EXTENSION multitenancy UPDATE TO '{version}' in {}: {e}", db.name));
}

fn rows_of(db: &TestDb, tenant: &str) -> i64 {
    count(&mut db.superuser(), &format!("SELECT count(*) FROM orders WHERE tenant_id = '{tenant}'"))
}

#[test]
fn every_released_version_updates_to_what_a_fresh_install_is() {
    let current = current_version();
    let server = Server::shared();
    let fresh = TestDb::on(server, "upgrade_fresh", "");
    populate(&fresh);
    let expected = describe(&fresh);
    assert!(expected.iter().any(|l| l.starts_with("policy orders.multitenancy_isolation")), "describe sees the table");
    eprintln!("a fresh install of {current}: {} facts", expected.len());

    let released: Vec<String> = released_versions().into_iter().filter(|v| *v != current).collect();
    assert!(!released.is_empty(), "a released version to update from (sql/versions/released)");
    for version in &released {
        install_released_script(version);
        let db = TestDb::with_version(server, &format!("upgrade_from_{version}"), "", Some(version));
        let installed: String = db
            .superuser()
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'multitenancy'", &[])
            .unwrap()
            .get(0);
        assert_eq!(&installed, version, "ground truth: the database starts at {version}");
        let (a, b) = populate(&db);
        let before = (rows_of(&db, &a), rows_of(&db, &b));
        assert_eq!(before, (3, 2));

        update_to(&db, &current);
        // (a) The catalog is a fresh install's.
        let upgraded = describe(&db);
        let (missing, extra) = difference(&expected, &upgraded);
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{version} -> {current} differs from a fresh install of {current}.\nmissing after the update:\n{}\n\
             not in a fresh install:\n{}",
            missing.join("\n"),
            extra.join("\n")
        );

        // (b) The data, isolation, the guard and quotas work as before.
        assert_eq!((rows_of(&db, &a), rows_of(&db, &b)), before, "every row is still there");
        assert_isolated(db.server(), &db.name, "orders", &[("acme", &a), ("globex", &b)]);
        expect_refused(db.owner().batch_execute("ALTER TABLE orders NO FORCE ROW LEVEL SECURITY"), "public.orders");
        assert_eq!(usage_drift(&mut db.superuser()), Vec::<String>::new(), "the usage counters are exact");
        db.superuser().batch_execute("SELECT multitenancy.quota_set('acme', 'rows', 3)").unwrap();
        let mut app = db.app();
        let mut tx = begin_as(&mut app, "acme");
        expect_sqlstate(
            tx.execute("INSERT INTO orders (item) VALUES ('over')", &[]),
            &SqlState::CONFIGURATION_LIMIT_EXCEEDED,
        );
        drop(tx);
        let mut tx = begin_as(&mut app, "globex");
        tx.execute("INSERT INTO orders (item) VALUES ('globex-new')", &[]).expect("B has no row quota");
        tx.commit().unwrap();
        let mut tx = begin_as(&mut app, "acme");
        let used: Option<i64> =
            tx.query_one("SELECT used FROM multitenancy.usage_get('api_calls')", &[]).unwrap().get(0);
        drop(tx);
        let used = used.unwrap_or_default();
        assert_eq!(used, 7, "metered usage survives the update");
        // (c) The table enabled under the old version verifies clean.
        assert_eq!(db.verify(), vec![], "verify() after {version} -> {current}");

        // Mutation check: the same update without its last paragraph is seen by the comparison.
        let script = std::fs::read_to_string(format!(
            "{}/../sql/multitenancy--{version}--{current}.sql",
            env!("CARGO_MANIFEST_DIR")
        ));
        if let Ok(script) = script {
            let cut = script.trim_end().rfind("\n\n").expect("an upgrade script of more than one paragraph");
            let mutant = TestDb::with_version(server, &format!("upgrade_mutant_{version}"), "", Some(version));
            populate(&mutant);
            install_upgrade_script(version, "mutant", &script[..cut]);
            update_to(&mutant, "mutant");
            let (missing, extra) = difference(&expected, &describe(&mutant));
            eprintln!(
                "mutant {version} -> mutant: {} facts missing, {} extra: {missing:?} {extra:?}",
                missing.len(),
                extra.len()
            );
            assert!(
                !missing.is_empty() || !extra.is_empty(),
                "an upgrade script without its last paragraph must not pass for a fresh install"
            );
        }
    }
}

/// `DROP EXTENSION multitenancy CASCADE` never opens an enabled table: the policies go with the
/// extension and row level security stays forced with no policy, so the application (and the
/// table owner) read none of the rows that exist. Shown against 0.1.0, whose permissive
/// `USING (true)` stayed behind and opened every row (the mutation this test catches), and after
/// updating such a database.
#[test]
fn drop_extension_leaves_enabled_tables_closed() {
    let server = Server::shared();
    let closed = |db: &TestDb, what: &str| {
        let (a, b) = (db.tenant("Acme", "acme"), db.tenant("Globex", "globex"));
        create_orders(db);
        let mut app = db.app();
        for slug in ["acme", "globex"] {
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&slug]).unwrap();
            tx.commit().unwrap();
        }
        expect_sqlstate(
            db.superuser().batch_execute("DROP EXTENSION multitenancy"),
            &SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
        );
        db.superuser().batch_execute("DROP EXTENSION multitenancy CASCADE").unwrap();
        // Ground truth: both tenants' rows exist, and the table is still forced.
        assert_eq!((rows_of(db, &a), rows_of(db, &b)), (1, 1), "{what}: ground truth");
        let app_sees = count(&mut db.app(), "SELECT count(*) FROM orders");
        let owner_sees = count(&mut db.owner(), "SELECT count(*) FROM orders");
        let insert = db.app().batch_execute(&format!("INSERT INTO orders (item, tenant_id) VALUES ('x', '{b}')"));
        (app_sees, owner_sees, insert.is_ok())
    };

    let db = TestDb::on(server, "drop_current", "");
    assert_eq!(closed(&db, "current"), (0, 0, false), "after DROP EXTENSION: nothing readable or writable");
    let flags: (bool, bool) = db
        .superuser()
        .query_one("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'orders'::regclass", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(flags, (true, true), "row level security stays enabled and forced");

    for version in released_versions().into_iter().filter(|v| *v != current_version()) {
        install_released_script(&version);
        let old = TestDb::with_version(server, &format!("drop_{version}"), "", Some(&version));
        let (app_sees, _, _) = closed(&old, &version);
        if version == "0.1.0" {
            assert_eq!(app_sees, 2, "ground truth for the mutation: 0.1.0 left USING (true) behind");
        }
        let updated = TestDb::with_version(server, &format!("drop_updated_{version}"), "", Some(&version));
        let (a, b) = (updated.tenant("Acme", "acme"), updated.tenant("Globex", "globex"));
        create_orders(&updated);
        for (slug, id) in [("acme", &a), ("globex", &b)] {
            let mut app = updated.app();
            let mut tx = begin_as(&mut app, slug);
            tx.execute("INSERT INTO orders (item) VALUES ($1)", &[id]).unwrap();
            tx.commit().unwrap();
        }
        update_to(&updated, &current_version());
        updated.superuser().batch_execute("DROP EXTENSION multitenancy CASCADE").unwrap();
        assert_eq!((rows_of(&updated, &a), rows_of(&updated, &b)), (1, 1), "ground truth");
        assert_eq!(count(&mut updated.app(), "SELECT count(*) FROM orders"), 0, "{version} updated, then dropped");
    }
}

/// A permissive policy of the owner's (which the guard allows next to the isolation policy, even
/// `USING (true)`) would remain alone after `DROP EXTENSION ... CASCADE` and open the table: the
/// drop (and `DROP SCHEMA multitenancy CASCADE`) is refused, 2BP01, while one exists; a
/// restrictive policy of the owner's does not open anything and does not block it.
#[test]
fn drop_extension_is_refused_while_an_owner_policy_would_open_a_table() {
    let o = Orders::new("drop_owner_policy");
    let mut su = o.db.superuser();
    let mut owner = o.db.owner();
    owner
        .batch_execute(
            "CREATE POLICY app_visible ON orders AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK (true);
             CREATE POLICY small_amounts ON orders AS RESTRICTIVE FOR ALL TO PUBLIC USING (amount < 1000);",
        )
        .expect("the application's own policies are allowed");
    for statement in ["DROP EXTENSION multitenancy CASCADE", "DROP SCHEMA multitenancy CASCADE"] {
        let error = expect_sqlstate(su.batch_execute(statement), &SqlState::DEPENDENT_OBJECTS_STILL_EXIST);
        assert!(error.message().contains("public.orders (policy app_visible)"), "{statement}: {}", error.message());
        assert!(error.hint().is_some_and(|h| h.contains("tenant_disable")), "{statement}: a hint");
    }
    assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", &o.a), ("globex", &o.b)]);

    // A policy whose expression depends on the extension goes with it: no reason to refuse.
    owner.batch_execute("DROP POLICY app_visible ON orders").unwrap();
    owner
        .batch_execute(
            "CREATE POLICY with_context ON orders AS PERMISSIVE FOR SELECT USING (multitenancy.current_tenant_id() IS NOT NULL)",
        )
        .unwrap();
    // The extension's permissive policy, once its function is no longer the extension's (a
    // superuser's catalog surgery), would stay: refused too.
    su.batch_execute("ALTER EXTENSION multitenancy DROP FUNCTION multitenancy._installed()").unwrap();
    let error = expect_sqlstate(
        su.batch_execute("DROP EXTENSION multitenancy CASCADE"),
        &SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
    );
    assert!(error.message().contains("(policy multitenancy_access)"), "{}", error.message());
    su.batch_execute("ALTER EXTENSION multitenancy ADD FUNCTION multitenancy._installed()").unwrap();
    su.batch_execute("DROP EXTENSION multitenancy CASCADE").expect("no policy of the owner's would open a table");
    assert_eq!((o.true_count(&o.a), o.true_count(&o.b)), (o.rows_a, o.rows_b), "ground truth: the rows exist");
    assert_eq!(count(&mut o.db.app(), "SELECT count(*) FROM orders"), 0, "closed to the app");
    assert_eq!(count(&mut o.db.owner(), "SELECT count(*) FROM orders"), 0, "closed to the owner");
}

/// The check cannot be raced or gone around: a policy created by a transaction that commits while
/// the DROP waits is seen (the tables are locked, the policies read afterwards); `DROP OWNED BY`
/// the role that created the extension and another extension's script dropping it are checked
/// too.
#[test]
fn drop_extension_cannot_be_raced_or_taken_around_the_check() {
    let server = Server::shared();
    let open_policy = "CREATE POLICY app_visible ON orders AS PERMISSIVE FOR SELECT USING (true)";

    // A migration's uncommitted policy while the DBA drops the extension.
    let o = Orders::on(server, "drop_race", 1, 1);
    let mut owner = o.db.owner();
    let mut migration = owner.transaction().unwrap();
    migration.batch_execute(open_policy).unwrap();
    let url_db = o.db.name.clone();
    let dba = std::thread::spawn(move || {
        let mut su = Server::shared().connect(&url_db, SUPERUSER);
        su.batch_execute("DROP EXTENSION multitenancy CASCADE")
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    migration.commit().unwrap();
    let result = dba.join().unwrap();
    expect_sqlstate(result, &SqlState::DEPENDENT_OBJECTS_STILL_EXIST);
    assert_isolated(o.db.server(), &o.db.name, "orders", &[("acme", &o.a), ("globex", &o.b)]);

    // DROP OWNED BY the superuser that created the extension.
    let db = TestDb::on(server, "drop_owned", "");
    let mut su = db.superuser();
    su.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE mt_ext_creator SUPERUSER NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DROP EXTENSION multitenancy;
         SET ROLE mt_ext_creator; CREATE EXTENSION multitenancy; RESET ROLE;
         GRANT EXECUTE ON FUNCTION multitenancy.tenant_enable(regclass, uuid) TO {OWNER};"
    ))
    .unwrap();
    let (a, b) = (db.tenant("Acme", "acme"), db.tenant("Globex", "globex"));
    create_orders(&db);
    let mut app = db.app();
    for slug in ["acme", "globex"] {
        let mut tx = begin_as(&mut app, slug);
        tx.execute("INSERT INTO orders (item) VALUES ($1)", &[&slug]).unwrap();
        tx.commit().unwrap();
    }
    db.owner().batch_execute(open_policy).unwrap();
    let error = expect_sqlstate(
        su.batch_execute("DROP OWNED BY mt_ext_creator CASCADE"),
        &SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
    );
    assert!(error.message().contains("DROP OWNED"), "{}", error.message());
    assert_isolated(db.server(), &db.name, "orders", &[("acme", &a), ("globex", &b)]);

    // Another extension whose script drops this one.
    install_extension_files(
        "mt_test_dropper",
        "comment = 'drops multitenancy'\ndefault_version = '1.0'\nrelocatable = true\nsuperuser = true\n",
        "DROP EXTENSION multitenancy CASCADE;\n",
    );
    expect_sqlstate(su.batch_execute("CREATE EXTENSION mt_test_dropper"), &SqlState::DEPENDENT_OBJECTS_STILL_EXIST);
    assert_isolated(db.server(), &db.name, "orders", &[("acme", &a), ("globex", &b)]);

    // On 0.2.0 the permissive policy is never rebuilt as USING (true), even when _installed() was
    // taken away (a superuser's catalog surgery, which drops the policies that call it).
    su.batch_execute(
        "ALTER EXTENSION multitenancy DROP FUNCTION multitenancy._installed();
         DROP FUNCTION multitenancy._installed() CASCADE;",
    )
    .unwrap();
    expect_sqlstate(
        db.owner().batch_execute("SELECT multitenancy.tenant_enable('orders')"),
        &SqlState::UNDEFINED_FUNCTION,
    );
    let permissive_true = count(
        &mut su,
        "SELECT count(*) FROM pg_policy WHERE polrelid = 'orders'::regclass AND polname = 'multitenancy_access'",
    );
    assert_eq!(permissive_true, 0, "no permissive policy was built without _installed()");
}
