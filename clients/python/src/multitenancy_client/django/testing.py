"""Test helpers for Django projects on the multitenancy extension.

Django's TestCase runs a whole class in one transaction (setUpTestData included) and each test
in a savepoint of it. The server lets a transaction act for ONE tenant, so:

- `TenantTestCase` (a TestCase): one tenant per class, the class attribute `tenant` (slug or
  uuid; `tenant_user` optional). It is set in the class's transaction right after Django opens
  it, before `setUpTestData`, so fixtures and every test act for that tenant; the context ends
  when Django rolls the class's transaction back, so the next class starts with none. A test
  that sets another tenant is refused (28000). `tenant = None`: no context at all (fail-closed
  tests). Tests of another tenant go in another class.
- `TenantTransactionTestCase` (a TransactionTestCase): no transaction around the tests; each
  `with self.tenant_scope("acme"):` block is its own transaction for its own tenant, so one test
  may use several tenants one after the other; `tenant_scope()` refuses to start inside an
  enclosing atomic block. After each test the helper drops a connection a test left inside a
  transaction, and asks in a fresh autocommit query for a tenant context, which can only find a
  session-level one (a role granted session_context): transaction-local contexts ended with
  their transactions. Data is
  committed: clean up what you write (Django's flush truncates only managed models' tables, and
  an enabled table needs a tenant context or admin mode to be emptied row by row).
"""
from contextlib import contextmanager

from django.db import connections
from django.test import TestCase, TransactionTestCase

from ..core import current_tenant, set_tenant
from . import tenant_atomic


class TenantTestCase(TestCase):
    tenant = None
    tenant_user = None

    @classmethod
    def _enter_atomics(cls):
        # Django opens the class-wide atomic blocks here and calls setUpTestData right after:
        # the only point where the class's transaction exists and no fixture has run yet.
        atomics = super()._enter_atomics()
        cls.tenant_id = None
        if cls.tenant is not None:
            for alias in cls._databases_names(include_mirrors=False):
                with connections[alias].cursor() as cursor:
                    cls.tenant_id = set_tenant(cursor, cls.tenant, cls.tenant_user)
        return atomics


class TenantTransactionTestCase(TransactionTestCase):
    @contextmanager
    def tenant_scope(self, tenant, user=None, using="default"):
        """One transaction acting for `tenant`: committed at the end of the block, rolled back
        on an exception. Yields the tenant's id (text). Refused with TenantScopeError inside an
        enclosing atomic block (it would be a savepoint; the tenant would outlive the block)."""
        with tenant_atomic(tenant, user=user, using=using) as tenant_id:
            yield tenant_id

    def _post_teardown(self):
        leftovers = []
        try:
            for alias in self._databases_names(include_mirrors=False):
                connection = connections[alias]
                if connection.connection is None:
                    continue
                if connection.in_atomic_block or not connection.get_autocommit():
                    # Only possible by calling transaction internals by hand: drop the
                    # connection, and with it the transaction (the server rolls it back).
                    leftovers.append("%s: an open transaction" % alias)
                    connection.close()
                    continue
                # A fresh autocommit query sees only a session context (a role granted
                # session_context); transaction-local contexts ended with their transaction.
                with connection.cursor() as cursor:
                    remaining = current_tenant(cursor)
                if remaining is not None:
                    leftovers.append("%s: tenant %s" % (alias, remaining))
                    connection.close()
        finally:
            super()._post_teardown()
        if leftovers:
            raise AssertionError("a test left a transaction or tenant context open: %s" % ", ".join(leftovers))
