"""The psycopg 3 helper: one transaction, one tenant."""
import threading
import weakref
from contextlib import contextmanager

# Connections inside a `tenant()` block: (owning thread id, depth of nesting).
_open_blocks = weakref.WeakKeyDictionary()


class TenantScopeError(RuntimeError):
    """`tenant()` was asked to run in a transaction it did not open: it could not commit (or
    end the tenant context) at the end of its block."""


class TransactionRolledBackError(RuntimeError):
    """A block ended normally but its transaction had failed on the server (an error was caught
    inside it): it was rolled back instead of committed. `sqlstate` is "40000"
    (transaction_rollback), like the server's class for a transaction it rolled back."""

    sqlstate = "40000"


def set_tenant(cursor, tenant, user=None):
    """In the cursor's current transaction: set the end user (when given, transaction-local)
    and then the tenant (slug or uuid). Returns the tenant's id as text.

    The tenant goes in as a bound parameter of `SELECT multitenancy.tenant_set(%s)`: PostgreSQL's
    `SET LOCAL multitenancy.tenant_id = $1` does not accept parameters, and formatting the value
    into a SET statement would be an injection point."""
    if user is not None:
        cursor.execute("SELECT set_config('multitenancy.user_id', %s, true)", [str(user)])
    cursor.execute("SELECT multitenancy.tenant_set(%s)::text", [str(tenant)])
    return cursor.fetchone()[0]


def current_tenant(cursor):
    """The current transaction's tenant id as text, or None without a context."""
    cursor.execute("SELECT multitenancy.current_tenant_id_or_null()::text")
    return cursor.fetchone()[0]


@contextmanager
def tenant(conn, tenant, user=None):
    """Run the block in a transaction acting for `tenant` (slug or uuid), optionally as end user
    `user` (uuid; the server checks membership). Yields the tenant's id (text).

        with tenant(conn, "acme") as tenant_id:
            conn.execute("INSERT INTO orders (item) VALUES (%s)", ["anvil"])

    `conn` is a psycopg 3 `Connection` (also one from `psycopg_pool`'s `pool.connection()`).
    On a normal exit the transaction commits, on an exception it rolls back, and the context
    ends with it: the connection's next transaction has no tenant (28000 on enabled tables).

    Nested in another `tenant()` block of the same connection, the block is a savepoint of the
    outer transaction: the same tenant again is fine, another tenant is refused by the server
    (28000, "cannot switch"), and the outer block decides whether anything commits.

    A connection already inside a transaction that no `tenant()` block opened is refused with
    TenantScopeError: the block could not commit at its end, and the tenant would stay for the
    rest of that transaction. The usual cause is a connection with autocommit off that ran a
    query before (psycopg then opens a transaction implicitly): commit or roll back first, or
    connect with `autocommit=True`.

    A connection inside a `tenant()` block of another thread is refused with TenantScopeError
    (psycopg connections are not to be shared by threads in a transaction).
    """
    from psycopg.pq import TransactionStatus

    me = threading.get_ident()
    owner, depth = _open_blocks.get(conn, (me, 0))
    if owner != me:
        raise TenantScopeError("the connection is inside a tenant() block of another thread")
    if depth == 0 and conn.info.transaction_status != TransactionStatus.IDLE:
        raise TenantScopeError(
            "the connection is already in a transaction that tenant() did not open "
            "(autocommit off and an earlier query?): commit or roll back first"
        )
    _open_blocks[conn] = (me, depth + 1)
    try:
        with conn.transaction() as tx:
            with conn.cursor() as cursor:
                tenant_id = set_tenant(cursor, tenant, user)
            yield tenant_id
            if depth == 0 and conn.info.transaction_status == TransactionStatus.INERROR:
                # COMMIT would answer ROLLBACK without psycopg raising: say so.
                raise TransactionRolledBackError(
                    "the tenant() block's transaction failed on the server (an error was caught "
                    "inside the block) and was rolled back: nothing of the block committed"
                )
    finally:
        if depth:
            _open_blocks[conn] = (me, depth)
        else:
            _open_blocks.pop(conn, None)
