#!/usr/bin/env python
"""The psycopg 3 helper `multitenancy_client.tenant` against a real server, as the app role.

MT_DSN: libpq connection string; MT_TRUTH: ground truth read by the superuser,
{"acme": {"id", "notes"}, "globex": {...}}. Asserts, then prints a JSON summary (the checks run
and the ids the Rust test looks up as the superuser).
"""
import json
import os
import sys
import threading
import uuid

import psycopg
from psycopg.pq import TransactionStatus

from multitenancy_client import TenantScopeError, TransactionRolledBackError, current_tenant, tenant

TRUTH = json.loads(os.environ["MT_TRUTH"])
DSN = os.environ["MT_DSN"]
ran = []
out = {}
# Notes this script committed, by tenant: what each tenant must see besides the ground truth.
added = {"acme": [], "globex": []}


def check(condition, what, detail=None):
    if not condition:
        sys.exit("FAILED: %s: %r" % (what, detail))


def refused(action, what, sqlstate="28000", mentioning=None):
    try:
        action()
    except psycopg.Error as error:
        check(error.sqlstate == sqlstate, what + ": SQLSTATE " + sqlstate, (error.sqlstate, str(error)))
        if mentioning:
            check(mentioning in str(error), what + ": mentions " + mentioning, str(error))
        return str(error)
    sys.exit("FAILED: %s: not refused" % what)


def notes(conn):
    return [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id").fetchall()]


def isolation(conn):
    for slug, other in [("acme", "globex"), ("globex", "acme")]:
        check(TRUTH[other]["notes"], "ground truth: %s has notes" % other)
        with tenant(conn, slug) as tenant_id:
            check(tenant_id == TRUTH[slug]["id"], "tenant() yields the id", tenant_id)
            ids = notes(conn)
            check(ids == sorted(TRUTH[slug]["notes"] + added[slug]), "%s sees exactly its notes" % slug, ids)
            foreign = set(TRUTH[other]["notes"] + added[other])
            check(not set(ids) & foreign, "%s sees none of %s's" % (slug, other), ids)
        check(conn.info.transaction_status == TransactionStatus.IDLE, "committed and idle after the block")


def forgotten(conn):
    def read():
        if conn.autocommit:
            notes(conn)
        else:
            try:
                notes(conn)
            finally:
                conn.rollback()

    refused(read, "a query after a forgotten tenant", mentioning="no tenant context")


def main():
    for autocommit in (True, False):
        with psycopg.connect(DSN, autocommit=autocommit) as conn:
            mode = "autocommit" if autocommit else "transactional"
            role = conn.execute("SELECT current_user::text").fetchone()[0]
            check(role == "mt_app", "runs as the application role", role)
            if not autocommit:
                # psycopg opened a transaction for that query: tenant() refuses to run in it
                # (it could not commit at its end, and the tenant would outlive the block).
                try:
                    with tenant(conn, "acme"):
                        sys.exit("FAILED: tenant() ran inside an implicit transaction")
                except TenantScopeError:
                    pass
                conn.rollback()
                ran.append("implicit transaction refused/" + mode)
            isolation(conn)
            forgotten(conn)  # right after acme and globex blocks on the same connection
            ran.append("isolation+forgotten/" + mode)

            # An exception inside the block: rolled back, the connection idle, no context left.
            marker = "psycopg rolled back (%s)" % mode
            try:
                with tenant(conn, "acme"):
                    conn.execute("INSERT INTO notes (body) VALUES (%s)", [marker])
                    raise RuntimeError("the application fails")
            except RuntimeError:
                pass
            check(conn.info.transaction_status == TransactionStatus.IDLE, "idle after the exception")
            forgotten(conn)
            with tenant(conn, "acme"):
                check(
                    conn.execute("SELECT count(*) FROM notes WHERE body = %s", [marker]).fetchone()[0] == 0,
                    "the row written before the exception is gone",
                )
            ran.append("exception/" + mode)

            # A database error caught inside the block: the transaction has failed, COMMIT would
            # answer ROLLBACK without psycopg raising. tenant() rolls back and says so.
            caught = "psycopg caught error (%s)" % mode
            try:
                with tenant(conn, "acme"):
                    row = conn.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id", [caught]).fetchone()
                    try:
                        conn.execute("INSERT INTO notes (id, body) VALUES (%s, 'duplicate')", [row[0]])
                    except psycopg.errors.UniqueViolation:
                        pass
                sys.exit("FAILED: a block whose transaction failed ended as if it committed")
            except TransactionRolledBackError as error:
                check(error.sqlstate == "40000", "TransactionRolledBackError.sqlstate", error.sqlstate)
            check(conn.info.transaction_status == TransactionStatus.IDLE, "idle after the failed block")
            forgotten(conn)
            out.setdefault("caught", []).append(caught)
            ran.append("caught error/" + mode)

            # A connection inside a tenant() block of this thread: another thread is refused.
            with tenant(conn, "acme"):
                seen = []

                def other_thread():
                    try:
                        with tenant(conn, "acme"):
                            seen.append("entered")
                    except TenantScopeError:
                        seen.append("refused")

                worker = threading.Thread(target=other_thread)
                worker.start()
                worker.join()
                check(seen == ["refused"], "tenant() from another thread is refused", seen)
            ran.append("thread/" + mode)

            # Nesting: the same tenant is a savepoint; another tenant is refused by the server,
            # and the outer block goes on acting for its tenant and commits.
            outer = "psycopg nested outer (%s)" % mode
            with tenant(conn, "acme") as acme:
                added["acme"].append(
                    conn.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id", [outer]).fetchone()[0]
                )
                with tenant(conn, "acme") as again:
                    check(again == acme, "nesting the same tenant is fine")

                def nest_globex():
                    with tenant(conn, "globex"):
                        pass

                refused(nest_globex, "nesting another tenant", mentioning="cannot switch")
                with conn.cursor() as cur:
                    check(current_tenant(cur) == acme, "the outer block still acts for acme")
            out.setdefault("nested_outer", []).append(outer)
            ran.append("nesting/" + mode)

            # A committed write lands in the block's tenant (the Rust test checks as superuser).
            committed = "psycopg committed by globex (%s)" % mode
            with tenant(conn, "globex"):
                added["globex"].append(
                    conn.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id", [committed]).fetchone()[0]
                )
            out.setdefault("committed_globex", []).append(committed)

            # An end user who is not a member: refused, nothing left behind.
            def stranger():
                with tenant(conn, "acme", user=uuid.uuid4()):
                    notes(conn)

            try:
                stranger()
                sys.exit("FAILED: a non-member user was admitted")
            except psycopg.Error as error:
                out.setdefault("stranger", []).append([error.sqlstate, str(error).splitlines()[0]])
            check(conn.info.transaction_status == TransactionStatus.IDLE, "idle after the refusal")
            forgotten(conn)
            ran.append("user/" + mode)

            # Outside a transaction block, tenant_set itself is refused (25P01): the reason the
            # helper opens the transaction.
            if autocommit:
                refused(
                    lambda: conn.execute("SELECT multitenancy.tenant_set('acme')"),
                    "tenant_set in autocommit",
                    sqlstate="25P01",
                )
                ran.append("25P01/" + mode)

    try:
        import psycopg_pool
    except ImportError:
        out["pool"] = "psycopg_pool not installed: skipped"
    else:
        with psycopg_pool.ConnectionPool(DSN, min_size=1, max_size=1, open=True) as pool:
            pids = []
            for slug in ["acme", "globex", "acme"]:
                with pool.connection() as conn, tenant(conn, slug):
                    check(notes(conn) == sorted(TRUTH[slug]["notes"] + added[slug]), "pool: %s sees its notes" % slug)
                    pids.append(conn.info.backend_pid)
            with pool.connection() as conn:
                forgotten(conn)
            check(len(set(pids)) == 1, "pool: one server connection reused", pids)
        out["pool"] = "tested"
        ran.append("pool")

    out["ran"] = ran
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
