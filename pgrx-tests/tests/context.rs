//! `tenant_set` answers from a per-session cache of the registry (so that setting the tenant
//! costs what SET LOCAL costs). These tests hold the cache to the registry as it is: every
//! committed change is seen by every session's next lookup, uncommitted changes by no other
//! session, and a rolled-back change leaves nothing behind.
use multitenancy_integration::*;
use postgres::error::SqlState;
use postgres::Client;

fn set(client: &mut Client, tenant: &str) -> Result<String, postgres::Error> {
    let mut tx = client.transaction().unwrap();
    let id = tx.query_one("SELECT multitenancy.tenant_set($1)::text", &[&tenant]).map(|r| r.get::<_, String>(0));
    tx.rollback().unwrap();
    id
}

#[test]
fn tenant_set_follows_registry_changes_made_by_other_sessions() {
    let o = Orders::new("cache_other_sessions");
    let mut app = o.db.app();
    let mut su = o.db.superuser();
    // Looked up twice by slug and once by id: all three are answered from the cache from now on.
    assert_eq!(set(&mut app, "acme").unwrap(), o.a);
    assert_eq!(set(&mut app, "acme").unwrap(), o.a);
    assert_eq!(set(&mut app, &o.a).unwrap(), o.a);

    // A renamed slug: the old one is gone for the session that cached it, the new one works.
    su.execute("UPDATE multitenancy.tenants SET slug = 'acme-inc' WHERE slug = 'acme'", &[]).unwrap();
    let error = expect_sqlstate(set(&mut app, "acme"), &SqlState::UNDEFINED_OBJECT);
    assert!(error.message().contains("does not exist"), "{}", error.message());
    assert_eq!(set(&mut app, "acme-inc").unwrap(), o.a);

    // An uncommitted suspension is invisible to others; once committed, it is refused by slug
    // and by id in the next transaction.
    let mut dba = su.transaction().unwrap();
    dba.execute("UPDATE multitenancy.tenants SET status = 'suspended' WHERE id = $1::text::uuid", &[&o.a]).unwrap();
    assert_eq!(set(&mut app, "acme-inc").unwrap(), o.a, "not committed yet");
    dba.commit().unwrap();
    for key in ["acme-inc", o.a.as_str()] {
        let error = expect_sqlstate(set(&mut app, key), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
        assert!(error.message().contains("suspended"), "{key}: {}", error.message());
    }

    // Reactivated: usable again, and the rows are the tenant's.
    su.execute("UPDATE multitenancy.tenants SET status = 'active' WHERE id = $1::text::uuid", &[&o.a]).unwrap();
    let mut tx = begin_as(&mut app, "acme-inc");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
    assert_eq!(o.true_count(&o.a), o.rows_a);
}

#[test]
fn a_rolled_back_registry_change_leaves_no_trace_in_the_cache() {
    let o = Orders::new("cache_rollback");
    // The DBA's own session looks globex up, changes it, looks again, and rolls back.
    let mut su = o.db.superuser();
    assert_eq!(set(&mut su, "globex").unwrap(), o.b);
    let mut tx = su.transaction().unwrap();
    tx.execute("UPDATE multitenancy.tenants SET status = 'suspended' WHERE slug = 'globex'", &[]).unwrap();
    let error = expect_sqlstate(
        tx.query_one("SELECT multitenancy.tenant_set('globex')", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    assert!(error.message().contains("suspended"), "its own change is seen at once: {}", error.message());
    tx.rollback().unwrap();
    assert_eq!(set(&mut su, "globex").unwrap(), o.b, "the rolled-back suspension is forgotten");

    // Likewise a tenant created and rolled back: not found afterwards.
    let mut tx = su.transaction().unwrap();
    tx.execute("SELECT multitenancy.tenant_create('Initech', 'initech')", &[]).unwrap();
    tx.query_one("SELECT multitenancy.tenant_set('initech')", &[]).unwrap();
    tx.rollback().unwrap();
    expect_sqlstate(set(&mut su, "initech"), &SqlState::UNDEFINED_OBJECT);
}
