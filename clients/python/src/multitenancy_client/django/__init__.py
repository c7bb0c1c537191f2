"""Django helpers for the multitenancy extension.

- `multitenancy_client.django.middleware.TenantMiddleware`: each request in one transaction
  acting for the tenant its resolver names; requests without a tenant run with no context.
- `multitenancy_client.django.resolvers`: `header` (X-Tenant, behind a trusted proxy) and
  `host` (`multitenancy.tenant_resolve(host)`: <slug>.<base_domain> and verified domains).
- `multitenancy_client.django.testing`: `TenantTestCase` (one tenant per TestCase class) and
  `TenantTransactionTestCase` (a tenant per block, any number per test).
- `tenant_atomic(tenant, user=None, using=None)`: `transaction.atomic()` with the tenant set,
  for management commands, Celery tasks and scripts.
"""
from contextlib import contextmanager


@contextmanager
def tenant_atomic(tenant, user=None, using=None):
    """`transaction.atomic(using)` acting for `tenant`; yields the tenant's id (text).

    Refused with TenantScopeError inside an enclosing atomic block: it would be a savepoint, and
    the tenant would stay set for the rest of the outer transaction."""
    from django.db import connections, transaction, DEFAULT_DB_ALIAS

    from ..core import TenantScopeError, set_tenant

    alias = using or DEFAULT_DB_ALIAS
    if connections[alias].in_atomic_block:
        raise TenantScopeError(
            "tenant_atomic() inside an enclosing atomic block: the tenant would outlive the block"
        )
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            tenant_id = set_tenant(cursor, tenant, user)
        yield tenant_id
