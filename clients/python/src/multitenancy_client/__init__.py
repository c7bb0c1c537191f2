"""Client helpers for the multitenancy PostgreSQL extension.

- `tenant(conn, "acme", user=None)`: a psycopg 3 context manager that runs its block in one
  transaction acting for one tenant (`multitenancy.tenant_set`), committed on success and
  rolled back on an exception.
- `multitenancy_client.django`: a middleware that runs each request in one transaction with the
  tenant set, tenant resolvers, and TestCase helpers.

The server keeps every tenant context transaction-local and refuses a second tenant in a
transaction; these helpers only make the right pattern the easy one.
"""
from .core import TenantScopeError, TransactionRolledBackError, current_tenant, set_tenant, tenant

__all__ = ["tenant", "set_tenant", "current_tenant", "TenantScopeError", "TransactionRolledBackError"]
__version__ = "0.1.0"
