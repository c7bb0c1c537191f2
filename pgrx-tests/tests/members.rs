//! Members and roles (issue 5): who may add, remove and re-role the members of a tenant, the
//! last-owner rule, the role questions (`is_member`, `tenant_role`, `has_role`), membership as a
//! condition of the tenant context, application policies built on `has_role`, `user_tenants`,
//! `member_list`, and `tenant_create` making the signing-up user the owner.
//!
//! End users are uuids in `multitenancy.user_id`; the database role is [`APP`] (NOSUPERUSER,
//! NOBYPASSRLS, owns nothing) wherever the application would do it. Every refusal is checked
//! with its SQLSTATE and a message fragment, and next to it the ground truth as superuser (the
//! member rows exist and are unchanged), with a positive control where one makes sense.
use multitenancy_integration::expect_sqlstate_mentioning as refused;
use multitenancy_integration::*;

// ---------------------------------------------------------------------------------------------
// End users (values of multitenancy.user_id). Their order as uuids is the order below.
// ---------------------------------------------------------------------------------------------

const U_OWNER: &str = "11111111-1111-4111-8111-111111111111";
const U_OWNER2: &str = "22222222-2222-4222-8222-222222222222";
const U_ADMIN: &str = "33333333-3333-4333-8333-333333333333";
const U_MEMBER: &str = "44444444-4444-4444-8444-444444444444";
const U_GUEST: &str = "55555555-5555-4555-8555-555555555555";
const U_NEW: &str = "66666666-6666-4666-8666-666666666666";
const U_STRANGER: &str = "77777777-7777-4777-8777-777777777777";

// ---------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------

/// A database with tenants acme and globex (no members yet), and their ids.
fn tenants(tag: &str) -> (TestDb, String, String) {
    let db = TestDb::new(tag);
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    (db, a, b)
}

fn add(tenant: &str, user: &str, role: &str) -> String {
    format!("SELECT multitenancy.member_add('{tenant}', '{user}', '{role}')")
}

fn remove(tenant: &str, user: &str) -> String {
    format!("SELECT multitenancy.member_remove('{tenant}', '{user}')")
}

fn set_role(tenant: &str, user: &str, role: &str) -> String {
    format!("SELECT multitenancy.member_set_role('{tenant}', '{user}', '{role}')")
}

/// As the DBA (superuser, an operator): add a member, which must work.
#[track_caller]
fn dba_add(su: &mut Client, tenant: &str, user: &str, role: &str) {
    su.execute(&add(tenant, user, role), &[])
        .unwrap_or_else(|e| panic!("DBA member_add({tenant}, {user}, {role}): {e}"));
}

/// Ground truth (as superuser): `(user_id, role, invited_by, joined_at)` of every member of a
/// tenant, by user id.
fn members_of(su: &mut Client, tenant_id: &str) -> Vec<(String, String, Option<String>, String)> {
    su.query(
        "SELECT user_id::text, role, invited_by::text, joined_at::text FROM multitenancy.members
          WHERE tenant_id = $1::text::uuid ORDER BY user_id",
        &[&tenant_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Ground truth (as superuser): `(user_id, role)` of every member of a tenant, by user id.
fn roles_of(su: &mut Client, tenant_id: &str) -> Vec<(String, String)> {
    members_of(su, tenant_id).into_iter().map(|(u, r, _, _)| (u, r)).collect()
}

/// Ground truth (as superuser): the role of one user in one tenant, if a member.
fn role_of(su: &mut Client, tenant_id: &str, user: &str) -> Option<String> {
    roles_of(su, tenant_id).into_iter().find(|(u, _)| u == user).map(|(_, r)| r)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(u, r)| (u.to_string(), r.to_string())).collect()
}

/// Acme with one member of every role, globex with its own owner (U_OWNER2), all added by the DBA.
fn staffed(tag: &str) -> (TestDb, String, String) {
    let (db, a, b) = tenants(tag);
    let mut su = db.superuser();
    dba_add(&mut su, "acme", U_OWNER, "owner");
    dba_add(&mut su, "acme", U_ADMIN, "admin");
    dba_add(&mut su, "acme", U_MEMBER, "member");
    dba_add(&mut su, "acme", U_GUEST, "guest");
    dba_add(&mut su, "globex", U_OWNER2, "owner");
    assert_eq!(
        roles_of(&mut su, &a),
        pairs(&[(U_OWNER, "owner"), (U_ADMIN, "admin"), (U_MEMBER, "member"), (U_GUEST, "guest")])
    );
    assert_eq!(roles_of(&mut su, &b), pairs(&[(U_OWNER2, "owner")]));
    (db, a, b)
}

// ---------------------------------------------------------------------------------------------
// Who may add, remove and change members
// ---------------------------------------------------------------------------------------------

#[test]
fn the_dba_adds_the_first_owner_and_the_owner_adds_an_admin_and_a_member() {
    let (db, a, b) = tenants("members_first_owner");
    let mut su = db.superuser();
    assert!(members_of(&mut su, &a).is_empty(), "a new tenant created without a user id has no members");

    // The DBA (superuser: an operator) needs neither a tenant context nor a user id.
    dba_add(&mut su, "acme", U_OWNER, "owner");
    assert_eq!(roles_of(&mut su, &a), pairs(&[(U_OWNER, "owner")]));

    // The owner, through the application role, with acme's context and its user id.
    let mut app = db.app();
    as_user(&mut app, "acme", U_OWNER, &add("acme", U_ADMIN, "admin")).unwrap();
    // The role defaults to member.
    as_user(&mut app, "acme", U_OWNER, &format!("SELECT multitenancy.member_add('acme', '{U_MEMBER}')")).unwrap();
    // The tenant argument may be the id as well as the slug.
    as_user(&mut app, "acme", U_OWNER, &add(&a, U_GUEST, "guest")).unwrap();

    assert_eq!(
        roles_of(&mut su, &a),
        pairs(&[(U_OWNER, "owner"), (U_ADMIN, "admin"), (U_MEMBER, "member"), (U_GUEST, "guest")])
    );
    for (user, _, invited_by, _) in members_of(&mut su, &a) {
        if user != U_OWNER {
            assert_eq!(invited_by.as_deref(), Some(U_OWNER), "{user} was invited by the owner");
        }
    }
    assert!(members_of(&mut su, &b).is_empty(), "nothing was added to globex");

    // The new admin is now a member: its user id can take acme's context.
    let mut tx = begin_as_user(&mut app, "acme", U_ADMIN);
    let role: Option<String> = tx.query_one("SELECT multitenancy.tenant_role()", &[]).unwrap().get(0);
    assert_eq!(role.as_deref(), Some("admin"));
}

#[test]
fn an_admin_adds_members_but_cannot_add_promote_remove_or_demote_an_owner() {
    let (db, a, _) = staffed("members_admin_limits");
    let mut su = db.superuser();
    let mut app = db.app();

    // Positive controls: an admin adds a member, and an admin.
    as_user(&mut app, "acme", U_ADMIN, &add("acme", U_NEW, "member")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_NEW).as_deref(), Some("member"));
    as_user(&mut app, "acme", U_ADMIN, &add("acme", U_STRANGER, "admin")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_STRANGER).as_deref(), Some("admin"));
    // And removes a member again.
    as_user(&mut app, "acme", U_ADMIN, &remove("acme", U_NEW)).unwrap();
    assert_eq!(role_of(&mut su, &a, U_NEW), None);

    let before = members_of(&mut su, &a);
    for (what, sql) in [
        ("add an owner", add("acme", U_NEW, "owner")),
        ("promote a member to owner", set_role("acme", U_MEMBER, "owner")),
        ("promote itself to owner", set_role("acme", U_ADMIN, "owner")),
        ("remove the owner", remove("acme", U_OWNER)),
        ("demote the owner", set_role("acme", U_OWNER, "admin")),
    ] {
        let error = refused(as_user(&mut app, "acme", U_ADMIN, &sql), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
        assert_eq!(members_of(&mut su, &a), before, "an admin may not {what} ({}): nothing changed", error.message());
    }
    assert_eq!(role_of(&mut su, &a, U_OWNER).as_deref(), Some("owner"));
    assert_eq!(role_of(&mut su, &a, U_NEW), None);

    // Positive control: the owner can do what the admin could not.
    as_user(&mut app, "acme", U_OWNER, &set_role("acme", U_MEMBER, "owner")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_MEMBER).as_deref(), Some("owner"));
}

#[test]
fn a_member_cannot_add_or_change_anyone_but_may_leave() {
    let (db, a, _) = staffed("members_member_limits");
    let mut su = db.superuser();
    let mut app = db.app();

    let before = members_of(&mut su, &a);
    for user in [U_MEMBER, U_GUEST] {
        for (what, sql) in [
            ("add a member", format!("SELECT multitenancy.member_add('acme', '{U_NEW}')")),
            ("add a guest", add("acme", U_NEW, "guest")),
            ("add an admin", add("acme", U_NEW, "admin")),
            ("promote itself", set_role("acme", user, "admin")),
            ("change another member's role", set_role("acme", U_ADMIN, "guest")),
            ("remove an admin", remove("acme", U_ADMIN)),
            ("remove the owner", remove("acme", U_OWNER)),
        ] {
            let error = refused(as_user(&mut app, "acme", user, &sql), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
            assert_eq!(members_of(&mut su, &a), before, "{user} may not {what} ({}): nothing changed", error.message());
        }
    }
    // Leaving is removing oneself, not someone else.
    refused(as_user(&mut app, "acme", U_MEMBER, &remove("acme", U_GUEST)), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
    assert_eq!(members_of(&mut su, &a), before);

    // A member may leave.
    as_user(&mut app, "acme", U_MEMBER, &remove("acme", U_MEMBER)).unwrap();
    assert_eq!(role_of(&mut su, &a, U_MEMBER), None, "the member left");
    assert_eq!(members_of(&mut su, &a).len(), before.len() - 1, "and nobody else did");
    // Having left, its user id no longer gets acme's context.
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_MEMBER}'")).unwrap();
    refused(
        tx.query_one("SELECT multitenancy.tenant_set('acme')", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["not a member"],
    );
}

#[test]
fn member_management_needs_that_tenants_context_and_a_user_id() {
    let (db, a, b) = staffed("members_context_and_user");
    let mut su = db.superuser();
    // U_OWNER becomes owner of globex too: the refusals below are about the context alone.
    dba_add(&mut su, "globex", U_OWNER, "owner");
    let globex_before = members_of(&mut su, &b);
    let acme_before = members_of(&mut su, &a);
    let mut app = db.app();

    // Acting on globex (by slug or id) with acme's context: refused.
    for tenant in ["globex", b.as_str()] {
        for sql in [add(tenant, U_NEW, "member"), remove(tenant, U_OWNER2), set_role(tenant, U_OWNER2, "admin")] {
            refused(as_user(&mut app, "acme", U_OWNER, &sql), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
        }
    }
    assert_eq!(members_of(&mut su, &b), globex_before, "globex's members are unchanged");

    // No user id set: the context alone does not make anyone an admin.
    for sql in [add("acme", U_NEW, "member"), remove("acme", U_GUEST), set_role("acme", U_GUEST, "owner")] {
        let mut tx = begin_as(&mut app, "acme");
        refused(tx.execute(&sql, &[]), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
    }
    assert_eq!(members_of(&mut su, &a), acme_before, "acme's members are unchanged");

    // Positive control: the same user, with globex's context, manages globex.
    as_user(&mut app, "globex", U_OWNER, &add("globex", U_NEW, "member")).unwrap();
    assert_eq!(role_of(&mut su, &b, U_NEW).as_deref(), Some("member"));
    assert_eq!(role_of(&mut su, &a, U_NEW), None, "and acme got no member");
}

// ---------------------------------------------------------------------------------------------
// The last owner
// ---------------------------------------------------------------------------------------------

#[test]
fn the_last_owner_cannot_be_removed_or_demoted() {
    let (db, a, b) = staffed("members_last_owner");
    let mut su = db.superuser();
    // Another tenant's owner does not count as one of acme's.
    assert_eq!(role_of(&mut su, &b, U_OWNER2).as_deref(), Some("owner"));
    let before = members_of(&mut su, &a);
    assert_eq!(before.iter().filter(|m| m.1 == "owner").count(), 1, "ground truth: acme has exactly one owner");
    let mut app = db.app();

    // The owner itself, through the application.
    for sql in [remove("acme", U_OWNER), set_role("acme", U_OWNER, "admin"), set_role("acme", U_OWNER, "guest")] {
        let error =
            refused(as_user(&mut app, "acme", U_OWNER, &sql), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, &["owner"]);
        assert_eq!(members_of(&mut su, &a), before, "{sql} ({}): the member row is unchanged", error.message());
    }
    // Not even the DBA.
    for sql in [remove("acme", U_OWNER), set_role("acme", U_OWNER, "member")] {
        refused(su.execute(&sql, &[]), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, &["owner"]);
        assert_eq!(members_of(&mut su, &a), before, "{sql} as the DBA: the member row is unchanged");
    }
    assert_eq!(role_of(&mut su, &a, U_OWNER).as_deref(), Some("owner"));
}

#[test]
fn with_two_owners_one_can_be_demoted_or_removed() {
    let (db, a, _) = staffed("members_two_owners");
    let mut su = db.superuser();
    let mut app = db.app();

    // An owner adds a second owner, demotes and promotes it again.
    as_user(&mut app, "acme", U_OWNER, &add("acme", U_NEW, "owner")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_NEW).as_deref(), Some("owner"));
    as_user(&mut app, "acme", U_OWNER, &set_role("acme", U_NEW, "admin")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_NEW).as_deref(), Some("admin"), "with two owners, one can be demoted");
    as_user(&mut app, "acme", U_OWNER, &set_role("acme", U_NEW, "owner")).unwrap();
    assert_eq!(role_of(&mut su, &a, U_NEW).as_deref(), Some("owner"));

    // The second owner removes the first.
    as_user(&mut app, "acme", U_NEW, &remove("acme", U_OWNER)).unwrap();
    assert_eq!(role_of(&mut su, &a, U_OWNER), None, "with two owners, one can be removed");
    let owners: Vec<String> = roles_of(&mut su, &a).into_iter().filter(|(_, r)| r == "owner").map(|(u, _)| u).collect();
    assert_eq!(owners, [U_NEW]);

    // Now U_NEW is the last owner again.
    let before = members_of(&mut su, &a);
    refused(
        as_user(&mut app, "acme", U_NEW, &remove("acme", U_NEW)),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["owner"],
    );
    refused(
        as_user(&mut app, "acme", U_NEW, &set_role("acme", U_NEW, "admin")),
        &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        &["owner"],
    );
    assert_eq!(members_of(&mut su, &a), before);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_roles_duplicates_unknown_tenants_and_unknown_members_are_refused() {
    let (db, a, b) = staffed("members_bad_input");
    let mut su = db.superuser();
    let mut app = db.app();
    let acme_before = members_of(&mut su, &a);
    let globex_before = members_of(&mut su, &b);

    // Invalid role names: 22023, from the DBA and from an owner.
    for role in ["superadmin", "root", ""] {
        refused(su.execute(&add("acme", U_NEW, role), &[]), &SqlState::INVALID_PARAMETER_VALUE, &["role"]);
        refused(
            as_user(&mut app, "acme", U_OWNER, &add("acme", U_NEW, role)),
            &SqlState::INVALID_PARAMETER_VALUE,
            &["role"],
        );
        refused(su.execute(&set_role("acme", U_MEMBER, role), &[]), &SqlState::INVALID_PARAMETER_VALUE, &["role"]);
    }
    let error =
        refused(su.execute(&add("acme", U_NEW, "superadmin"), &[]), &SqlState::INVALID_PARAMETER_VALUE, &["role"]);
    assert!(error.message().contains("superadmin"), "the message names the bad role: {}", error.message());

    // Adding an existing member (whatever the role asked for): 23505, the existing row stays.
    for role in ["member", "admin", "owner"] {
        refused(
            su.execute(&add("acme", U_MEMBER, role), &[]),
            &SqlState::UNIQUE_VIOLATION,
            &["member", "already", "exists"],
        );
        refused(
            as_user(&mut app, "acme", U_OWNER, &add("acme", U_MEMBER, role)),
            &SqlState::UNIQUE_VIOLATION,
            &["member", "already", "exists"],
        );
    }
    assert_eq!(role_of(&mut su, &a, U_MEMBER).as_deref(), Some("member"));

    // Unknown tenants: 42704, by slug and by id.
    for tenant in ["nobody", "00000000-0000-4000-8000-000000000000"] {
        for sql in [add(tenant, U_NEW, "member"), remove(tenant, U_MEMBER), set_role(tenant, U_MEMBER, "admin")] {
            refused(su.execute(&sql, &[]), &SqlState::UNDEFINED_OBJECT, &["does not exist", "not found", "unknown"]);
        }
    }
    // Unknown members: 42704 (U_OWNER2 is a member of globex, not of acme).
    for sql in [remove("acme", U_STRANGER), set_role("acme", U_STRANGER, "admin"), remove("acme", U_OWNER2)] {
        refused(su.execute(&sql, &[]), &SqlState::UNDEFINED_OBJECT, &["member", "does not exist", "not found"]);
    }

    assert_eq!(members_of(&mut su, &a), acme_before, "acme's members are unchanged");
    assert_eq!(members_of(&mut su, &b), globex_before, "globex's members are unchanged");
}

// ---------------------------------------------------------------------------------------------
// is_member, tenant_role, has_role
// ---------------------------------------------------------------------------------------------

#[test]
fn is_member_tenant_role_and_has_role_answer_for_the_current_user() {
    let (db, a, b) = staffed("members_role_questions");
    let mut app = db.app();

    let expectations = [
        (U_OWNER, "owner", [true, true, true, true]),
        (U_ADMIN, "admin", [true, true, true, false]),
        (U_MEMBER, "member", [true, true, false, false]),
        (U_GUEST, "guest", [true, false, false, false]),
    ];
    for (user, role, has) in expectations {
        let mut tx = begin_as_user(&mut app, "acme", user);
        let row = tx
            .query_one(
                "SELECT multitenancy.tenant_role(), multitenancy.is_member(), multitenancy.is_member($1::text::uuid),
                        multitenancy.has_role('guest'), multitenancy.has_role('member'),
                        multitenancy.has_role('admin'), multitenancy.has_role('owner')",
                &[&a],
            )
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some(role), "tenant_role() of {user}");
        assert!(row.get::<_, bool>(1), "is_member() of {user} (defaults)");
        assert!(row.get::<_, bool>(2), "is_member(acme) of {user} (default user)");
        let got: [bool; 4] = [row.get(3), row.get(4), row.get(5), row.get(6)];
        assert_eq!(got, has, "has_role(guest, member, admin, owner) of {user} ({role})");
        tx.commit().unwrap();
    }

    // Explicit arguments about the current tenant: another member, and a user who is not one.
    {
        let mut tx = begin_as_user(&mut app, "acme", U_MEMBER);
        let yes: bool = tx
            .query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&a, &U_ADMIN])
            .unwrap()
            .get(0);
        assert!(yes, "U_ADMIN is a member of acme");
        let no: bool = tx
            .query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&a, &U_OWNER2])
            .unwrap()
            .get(0);
        assert!(!no, "U_OWNER2 is globex's owner, not a member of acme");
        // An unknown role name is an error, not false.
        refused(
            tx.query_one("SELECT multitenancy.has_role('bogus')", &[]),
            &SqlState::INVALID_PARAMETER_VALUE,
            &["bogus"],
        );
    }

    // With a context but no user id: no role, and has_role is not true for any role.
    {
        let mut tx = begin_as(&mut app, "acme");
        let row = tx
            .query_one(
                "SELECT multitenancy.tenant_role(), multitenancy.has_role('guest'), multitenancy.has_role('owner')",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0), None, "tenant_role() without a user id");
        assert_ne!(row.get::<_, Option<bool>>(1), Some(true), "has_role('guest') without a user id");
        assert_ne!(row.get::<_, Option<bool>>(2), Some(true), "has_role('owner') without a user id");
        // is_member()'s default user is current_user_id(), which has nothing to give.
        refused(
            tx.query_one("SELECT multitenancy.is_member()", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["user"],
        );
    }

    // The DBA may ask about anyone, with explicit arguments and no context.
    let mut su = db.superuser();
    let row = su
        .query_one(
            "SELECT multitenancy.is_member($1::text::uuid, $3::text::uuid), multitenancy.is_member($2::text::uuid, $3::text::uuid)",
            &[&a, &b, &U_OWNER2],
        )
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (false, true), "U_OWNER2 is in globex, not in acme");
}

#[test]
fn is_member_about_another_tenant_and_user_is_refused_to_the_app() {
    let (db, a, b) = staffed("members_is_member_other");
    let mut su = db.superuser();
    // Ground truth: the answer the app must not get is "true".
    assert_eq!(role_of(&mut su, &b, U_OWNER2).as_deref(), Some("owner"));
    let mut app = db.app();

    let mut tx = begin_as_user(&mut app, "acme", U_ADMIN);
    refused(
        tx.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&b, &U_OWNER2]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        DENIED,
    );
    drop(tx);
    // The same without a user id (context only).
    let mut tx = begin_as(&mut app, "acme");
    refused(
        tx.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&b, &U_OWNER2]),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        DENIED,
    );
    drop(tx);

    // Positive control: the same question about its own tenant is answered.
    let mut tx = begin_as_user(&mut app, "acme", U_ADMIN);
    let own: bool =
        tx.query_one("SELECT multitenancy.is_member($1::text::uuid, $2::text::uuid)", &[&a, &U_OWNER]).unwrap().get(0);
    assert!(own);
}

// ---------------------------------------------------------------------------------------------
// Membership as a condition of the tenant context
// ---------------------------------------------------------------------------------------------

#[test]
fn tenant_set_with_a_user_id_refuses_a_non_member_and_accepts_a_member() {
    let o = Orders::new("members_tenant_set");
    let mut su = o.db.superuser();
    dba_add(&mut su, "acme", U_OWNER, "owner");
    dba_add(&mut su, "acme", U_MEMBER, "member");
    dba_add(&mut su, "globex", U_STRANGER, "owner");
    // Ground truth: U_STRANGER is a real user, just not one of acme's.
    assert_eq!(role_of(&mut su, &o.a, U_STRANGER), None);
    assert_eq!(role_of(&mut su, &o.b, U_STRANGER).as_deref(), Some("owner"));
    assert_eq!(o.true_count(&o.a), o.rows_a);
    let mut app = o.db.app();

    for key in ["acme", o.a.as_str()] {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_STRANGER}'")).unwrap();
        refused(
            tx.query_one("SELECT multitenancy.tenant_set($1)", &[&key]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["not a member"],
        );
        // The transaction is aborted, and the next one has no context.
        expect_sqlstate(tx.query("SELECT count(*) FROM orders", &[]), &SqlState::IN_FAILED_SQL_TRANSACTION);
        tx.rollback().unwrap();
        let none: Option<String> =
            app.query_one("SELECT multitenancy.current_tenant_id_or_null()::text", &[]).unwrap().get(0);
        assert_eq!(none, None, "a refused tenant_set({key}) left no context");
    }

    // Positive controls: a member gets acme, the stranger gets its own globex, and without a user
    // id (plain mode) tenant_set works as before.
    for (user, tenant, id, rows) in [(U_MEMBER, "acme", &o.a, o.rows_a), (U_STRANGER, "globex", &o.b, o.rows_b)] {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{user}'")).unwrap();
        let got: String = tx.query_one("SELECT multitenancy.tenant_set($1)::text", &[&tenant]).unwrap().get(0);
        assert_eq!(&got, id);
        assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), rows);
        tx.commit().unwrap();
    }
    let mut tx = begin_as(&mut app, "acme");
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
}

#[test]
fn set_local_context_of_a_non_member_fails_at_the_first_query() {
    let o = Orders::new("members_set_local");
    let mut su = o.db.superuser();
    dba_add(&mut su, "acme", U_MEMBER, "owner");
    dba_add(&mut su, "globex", U_STRANGER, "owner");
    assert_eq!(role_of(&mut su, &o.a, U_STRANGER), None, "ground truth: U_STRANGER is not a member of acme");
    assert_eq!(o.true_count(&o.a), o.rows_a, "ground truth: acme has rows");
    let mut app = o.db.app();

    let user_first =
        format!("SET LOCAL multitenancy.user_id = '{U_STRANGER}'; SET LOCAL multitenancy.tenant_id = '{}'", o.a);
    let tenant_first =
        format!("SET LOCAL multitenancy.tenant_id = '{}'; SET LOCAL multitenancy.user_id = '{U_STRANGER}'", o.a);
    for sets in [&user_first, &tenant_first] {
        for query in ["SELECT multitenancy.current_tenant_id()::text", "SELECT count(*)::text FROM orders"] {
            let mut tx = app.transaction().unwrap();
            tx.batch_execute(sets).unwrap();
            refused(tx.query_one(query, &[]), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION, &["member"]);
        }
    }
    // set_config in the same transaction works the same way.
    {
        let mut tx = app.transaction().unwrap();
        tx.query_one(
            "SELECT set_config('multitenancy.user_id', $1, true), set_config('multitenancy.tenant_id', $2, true)",
            &[&U_STRANGER, &o.a],
        )
        .unwrap();
        refused(
            tx.query_one("SELECT count(*) FROM orders", &[]),
            &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            &["member"],
        );
    }

    // Positive control: the same SET LOCALs with a member's user id.
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL multitenancy.user_id = '{U_MEMBER}'; SET LOCAL multitenancy.tenant_id = '{}'",
        o.a
    ))
    .unwrap();
    let current: String = tx.query_one("SELECT multitenancy.current_tenant_id()::text", &[]).unwrap().get(0);
    assert_eq!(current, o.a);
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders"), o.rows_a);
}

// ---------------------------------------------------------------------------------------------
// Application policies on roles
// ---------------------------------------------------------------------------------------------

#[test]
fn an_application_policy_on_has_role_filters_rows_by_role() {
    let (db, a, b) = staffed("members_has_role_policy");
    let mut su = db.superuser();
    dba_add(&mut su, "globex", U_STRANGER, "admin");
    // Created and enabled in one transaction by the migration role, with an application policy
    // that lets only admins (and owners) at the rows.
    db.owner()
        .batch_execute(&format!(
            "CREATE TABLE payroll (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                   employee text NOT NULL, salary int NOT NULL);
             SELECT multitenancy.tenant_enable('payroll');
             CREATE POLICY payroll_admins_only ON payroll AS RESTRICTIVE FOR ALL
                 USING (multitenancy.has_role('admin'));
             GRANT SELECT, INSERT, UPDATE, DELETE ON payroll TO {APP};"
        ))
        .unwrap();
    assert!(is_enabled(&mut su, "payroll"));
    let policy: bool = su
        .query_one(
            "SELECT NOT polpermissive FROM pg_policy WHERE polrelid = 'payroll'::regclass AND polname = 'payroll_admins_only'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(policy, "the application policy is there, and restrictive");

    let mut app = db.app();
    // Admins write rows (the policy's USING is also its WITH CHECK).
    {
        let mut tx = begin_as_user(&mut app, "acme", U_ADMIN);
        tx.batch_execute("INSERT INTO payroll (employee, salary) VALUES ('ann', 100), ('bob', 200), ('cid', 300)")
            .unwrap();
        tx.commit().unwrap();
        let mut tx = begin_as_user(&mut app, "globex", U_STRANGER);
        tx.batch_execute("INSERT INTO payroll (employee, salary) VALUES ('xi', 10), ('yu', 20)").unwrap();
        tx.commit().unwrap();
    }
    // A member cannot.
    {
        let mut tx = begin_as_user(&mut app, "acme", U_MEMBER);
        refused(
            tx.execute("INSERT INTO payroll (employee, salary) VALUES ('mallory', 999)", &[]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            &["row-level security"],
        );
    }
    let truth = |su: &mut Client, id: &str| -> i64 {
        su.query_one("SELECT count(*) FROM payroll WHERE tenant_id = $1::text::uuid", &[&id]).unwrap().get(0)
    };
    assert_eq!(truth(&mut su, &a), 3, "ground truth: acme's three rows exist");
    assert_eq!(truth(&mut su, &b), 2, "ground truth: globex's two rows exist");
    let digest_before: String =
        su.query_one("SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payroll p", &[]).unwrap().get(0);

    // Owner and admin see acme's rows (and none of globex's); member and guest see none.
    for (user, visible) in [(U_OWNER, 3), (U_ADMIN, 3), (U_MEMBER, 0), (U_GUEST, 0)] {
        let mut tx = begin_as_user(&mut app, "acme", user);
        assert_eq!(count(&mut tx, "SELECT count(*) FROM payroll"), visible, "rows of payroll visible to {user}");
        let leaked: i64 =
            tx.query_one("SELECT count(*) FROM payroll WHERE tenant_id = $1::text::uuid", &[&b]).unwrap().get(0);
        assert_eq!(leaked, 0, "{user} sees none of globex's rows");
        if visible == 0 {
            assert_eq!(tx.execute("UPDATE payroll SET salary = 0", &[]).unwrap(), 0, "{user} updates nothing");
            assert_eq!(tx.execute("DELETE FROM payroll", &[]).unwrap(), 0, "{user} deletes nothing");
        }
        tx.commit().unwrap();
    }
    // Without a user id: no role, no rows.
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_eq!(count(&mut tx, "SELECT count(*) FROM payroll"), 0, "no user id: no role, no rows");
        assert_eq!(tx.execute("DELETE FROM payroll", &[]).unwrap(), 0);
        tx.commit().unwrap();
    }
    let digest_after: String =
        su.query_one("SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payroll p", &[]).unwrap().get(0);
    assert_eq!(digest_after, digest_before, "the rows hidden from members are unchanged");
    assert_eq!(truth(&mut su, &a), 3);

    // Promoting the member (as the owner) shows it the rows.
    as_user(&mut app, "acme", U_OWNER, &set_role("acme", U_MEMBER, "admin")).unwrap();
    let mut tx = begin_as_user(&mut app, "acme", U_MEMBER);
    assert_eq!(count(&mut tx, "SELECT count(*) FROM payroll"), 3, "as an admin now, U_MEMBER sees acme's rows");
}

// ---------------------------------------------------------------------------------------------
// user_tenants, member_list, tenant_create
// ---------------------------------------------------------------------------------------------

#[test]
fn user_tenants_lists_exactly_the_current_users_tenants_with_roles() {
    let db = TestDb::new("members_user_tenants");
    let a = db.tenant("Acme", "acme");
    let b = db.tenant("Globex", "globex");
    let i = db.tenant("Initech", "initech");
    let u = db.tenant("Umbrella", "umbrella");
    let h = db.tenant("Hooli", "hooli");
    let mut su = db.superuser();
    dba_add(&mut su, "acme", U_ADMIN, "admin");
    dba_add(&mut su, "acme", U_OWNER, "owner");
    dba_add(&mut su, "globex", U_ADMIN, "member");
    dba_add(&mut su, "globex", U_OWNER2, "owner");
    dba_add(&mut su, "initech", U_ADMIN, "owner");
    dba_add(&mut su, "umbrella", U_ADMIN, "guest");
    dba_add(&mut su, "umbrella", U_OWNER2, "owner");
    dba_add(&mut su, "hooli", U_OWNER2, "owner");
    su.execute("SELECT multitenancy.tenant_suspend('initech', 'unpaid invoice')", &[]).unwrap();
    su.execute("SELECT multitenancy.tenant_delete('umbrella')", &[]).unwrap();
    // Ground truth: U_ADMIN is still a member of deleted umbrella (the listing omits it, the row is there).
    assert_eq!(role_of(&mut su, &u, U_ADMIN).as_deref(), Some("guest"));
    assert_eq!(role_of(&mut su, &h, U_ADMIN), None);

    let mut app = db.app();
    let list = |app: &mut Client, user: &str| -> Vec<(String, String, String, String, String)> {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{user}'")).unwrap();
        let rows = tx
            .query(
                "SELECT tenant_id::text, slug, name, role, status FROM multitenancy.user_tenants() ORDER BY slug",
                &[],
            )
            .unwrap_or_else(|e| panic!("user_tenants() as {user}: {e}"))
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        tx.commit().unwrap();
        rows
    };
    let row = |id: &str, slug: &str, name: &str, role: &str, status: &str| {
        (id.to_string(), slug.to_string(), name.to_string(), role.to_string(), status.to_string())
    };

    assert_eq!(
        list(&mut app, U_ADMIN),
        [
            row(&a, "acme", "Acme", "admin", "active"),
            row(&b, "globex", "Globex", "member", "active"),
            row(&i, "initech", "Initech", "owner", "suspended"),
        ],
        "U_ADMIN's tenants: not hooli (not a member), not umbrella (deleted)"
    );
    assert_eq!(
        list(&mut app, U_OWNER2),
        [row(&b, "globex", "Globex", "owner", "active"), row(&h, "hooli", "Hooli", "owner", "active")]
    );
    assert_eq!(list(&mut app, U_OWNER), [row(&a, "acme", "Acme", "owner", "active")]);
    assert!(list(&mut app, U_STRANGER).is_empty(), "a user of no tenant has no tenants");

    // With a tenant context too, the listing is still the user's, not the tenant's.
    {
        let mut tx = begin_as_user(&mut app, "acme", U_OWNER);
        let n = count(&mut tx, "SELECT count(*) FROM multitenancy.user_tenants()");
        assert_eq!(n, 1);
    }

    // Without a user id: 28000, with or without a tenant context.
    refused(
        app.query("SELECT * FROM multitenancy.user_tenants()", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["user"],
    );
    let mut tx = begin_as(&mut app, "acme");
    refused(
        tx.query("SELECT * FROM multitenancy.user_tenants()", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["user"],
    );
}

#[test]
fn member_list_is_for_the_tenants_own_context() {
    let (db, a, b) = staffed("members_member_list");
    let mut su = db.superuser();
    let mut app = db.app();
    // One member invited through the application, so invited_by is not NULL everywhere.
    as_user(&mut app, "acme", U_OWNER, &add("acme", U_NEW, "member")).unwrap();

    let truth = |su: &mut Client, id: &str| -> Vec<(String, String, Option<String>)> {
        members_of(su, id).into_iter().map(|(u, r, i, _)| (u, r, i)).collect()
    };
    let listed = |rows: Vec<Row>| -> Vec<(String, String, Option<String>)> {
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
    };
    const LIST: &str =
        "SELECT user_id::text, role, invited_by::text FROM multitenancy.member_list($1) ORDER BY user_id";
    let acme_truth = truth(&mut su, &a);
    assert_eq!(acme_truth.len(), 5, "ground truth: acme has five members");
    let globex_truth = truth(&mut su, &b);
    assert!(!globex_truth.is_empty(), "ground truth: globex has members");

    // acme's context, without and with a user id (any member), by slug and by id.
    {
        let mut tx = begin_as(&mut app, "acme");
        assert_eq!(listed(tx.query(LIST, &[&"acme"]).unwrap()), acme_truth);
        assert_eq!(listed(tx.query(LIST, &[&a]).unwrap()), acme_truth);
    }
    {
        let mut tx = begin_as_user(&mut app, "acme", U_GUEST);
        assert_eq!(listed(tx.query(LIST, &[&"acme"]).unwrap()), acme_truth);
    }
    // Another tenant's list: 42501, by slug and by id.
    for key in ["globex", b.as_str()] {
        let mut tx = begin_as_user(&mut app, "acme", U_OWNER);
        refused(tx.query(LIST, &[&key]), &SqlState::INSUFFICIENT_PRIVILEGE, DENIED);
    }
    // No context at all: no list (an authorization refusal, or no context).
    match app.query(LIST, &[&"acme"]) {
        Ok(rows) => panic!("member_list without a context must be refused, got {} row(s)", rows.len()),
        Err(e) => {
            let code = db_error(&e).code();
            assert!(
                code == &SqlState::INSUFFICIENT_PRIVILEGE || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "member_list without a context: {} {}",
                code.code(),
                db_error(&e).message()
            );
        }
    }
    // Positive control: globex's own context, and the DBA, list globex.
    let mut tx = begin_as(&mut app, "globex");
    assert_eq!(listed(tx.query(LIST, &[&"globex"]).unwrap()), globex_truth);
    drop(tx);
    assert_eq!(listed(su.query(LIST, &[&"globex"]).unwrap()), globex_truth);
}

#[test]
fn tenant_create_with_a_user_id_makes_that_user_the_owner() {
    let db = TestDb::new("members_tenant_create_owner");
    let mut su = db.superuser();

    // As the DBA, with a user id.
    let initech: String = {
        let mut tx = su.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_OWNER}'")).unwrap();
        let id = tx.query_one("SELECT multitenancy.tenant_create('Initech', 'initech')::text", &[]).unwrap().get(0);
        tx.commit().unwrap();
        id
    };
    assert_eq!(roles_of(&mut su, &initech), pairs(&[(U_OWNER, "owner")]));
    // Without a user id: no member.
    let plain = db.tenant("Umbrella", "umbrella");
    assert!(members_of(&mut su, &plain).is_empty(), "tenant_create without a user id adds no member");

    // As the application role: refused until the DBA grants EXECUTE.
    let mut app = db.app();
    {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_OWNER2}'")).unwrap();
        refused(
            tx.query_one("SELECT multitenancy.tenant_create('Hooli', 'hooli')::text", &[]),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            &["permission denied"],
        );
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM multitenancy.tenants WHERE slug = 'hooli'"), 0);
    su.batch_execute(&format!("GRANT EXECUTE ON FUNCTION multitenancy.tenant_create(text, text, text) TO {APP}"))
        .unwrap();
    let hooli: String = {
        let mut tx = app.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_OWNER2}'")).unwrap();
        let id = tx.query_one("SELECT multitenancy.tenant_create('Hooli', 'hooli')::text", &[]).unwrap().get(0);
        tx.commit().unwrap();
        id
    };
    assert_eq!(roles_of(&mut su, &hooli), pairs(&[(U_OWNER2, "owner")]));
    assert_eq!(roles_of(&mut su, &initech), pairs(&[(U_OWNER, "owner")]), "initech's members are unchanged");

    // The new owner can use it at once (the sign-up flow): context, role, and inviting someone.
    {
        let mut tx = begin_as_user(&mut app, "hooli", U_OWNER2);
        let role: Option<String> = tx.query_one("SELECT multitenancy.tenant_role()", &[]).unwrap().get(0);
        assert_eq!(role.as_deref(), Some("owner"));
        tx.commit().unwrap();
    }
    as_user(&mut app, "hooli", U_OWNER2, &add("hooli", U_MEMBER, "member")).unwrap();
    assert_eq!(role_of(&mut su, &hooli, U_MEMBER).as_deref(), Some("member"));
    // And initech's owner is not a member of hooli.
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL multitenancy.user_id = '{U_OWNER}'")).unwrap();
    refused(
        tx.query_one("SELECT multitenancy.tenant_set('hooli')", &[]),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        &["not a member"],
    );
}

/// Two owners each removing the other at the same time, as the app: without the tenant's row
/// lock both would see "another owner is left" and the tenant would end with none. The second
/// waits for the first, then sees it commit and is refused.
#[test]
fn two_owners_leaving_at_once_leave_one_owner() {
    let (db, a, _b) = staffed("members_concurrent_owners");
    let mut su = db.superuser();
    dba_add(&mut su, "acme", U_OWNER2, "owner");
    let mut first = db.app();
    let mut tx = begin_as_user(&mut first, "acme", U_OWNER);
    tx.execute(&remove("acme", U_OWNER2), &[]).unwrap();
    // The second owner, in another session, removes the first while the first removal is open.
    let second = {
        let url = db.server().url(&db.name, APP);
        std::thread::spawn(move || {
            let mut app = Client::connect(&url, NoTls).unwrap();
            let mut tx = begin_as_user(&mut app, "acme", U_OWNER2);
            let result = tx.execute(&remove("acme", U_OWNER), &[]).map(|_| ());
            if result.is_ok() {
                tx.commit().unwrap();
            }
            result
        })
    };
    // Let the second session reach the lock before the first commits.
    let waiting = |su: &mut Client| {
        count(
            su,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%member_remove%'",
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting(&mut su) == 0 {
        assert!(std::time::Instant::now() < deadline, "the second removal never waited for the tenant's lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tx.commit().unwrap();
    refused(second.join().unwrap(), &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, &["last owner"]);
    let owners: Vec<String> = roles_of(&mut su, &a).into_iter().filter(|(_, r)| r == "owner").map(|(u, _)| u).collect();
    assert_eq!(owners, [U_OWNER]);
}
