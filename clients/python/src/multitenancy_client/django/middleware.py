"""TenantMiddleware: each request in ONE transaction acting for its tenant.

Settings:
- `MULTITENANCY_TENANT_RESOLVER`: dotted path of `resolver(request) -> str | None` (slug or
  uuid); default `multitenancy_client.django.resolvers.header`.
- `MULTITENANCY_USER_RESOLVER`: optional dotted path of `resolver(request) -> uuid | None`, the
  end user (`multitenancy.user_id`; the server checks that the user is a member).
- `MULTITENANCY_DATABASE`: the database alias (default "default").

Why a middleware and not ATOMIC_REQUESTS: ATOMIC_REQUESTS wraps only the view, so middleware
that touches the database (sessions, auth, ...) would run outside the tenant's transaction, and
`tenant_set` outside a transaction block is refused (25P01). Put this middleware first in
MIDDLEWARE (or at least before every middleware that reads tenant tables) so that everything
after it runs inside the transaction. ATOMIC_REQUESTS may stay on; the view's atomic block is
then a savepoint of the request's transaction.

A request whose resolver returns None runs as usual with no tenant context: every query of a
tenant-enabled table fails with 28000 (fail closed); global (exempt) tables work.

The transaction commits when the response is produced, and rolls back when the response is a
server error (status >= 500, e.g. an unhandled exception Django turned into a 500) or when an
exception escapes. A StreamingHttpResponse whose iterator queries the database runs after the
commit, without a tenant context (28000): build such data in the view.
"""
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils.module_loading import import_string

from ..core import set_tenant


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.alias = getattr(settings, "MULTITENANCY_DATABASE", DEFAULT_DB_ALIAS)
        self.resolve_tenant = import_string(
            getattr(settings, "MULTITENANCY_TENANT_RESOLVER", "multitenancy_client.django.resolvers.header")
        )
        user_resolver = getattr(settings, "MULTITENANCY_USER_RESOLVER", None)
        self.resolve_user = import_string(user_resolver) if user_resolver else None

    def __call__(self, request):
        tenant = self.resolve_tenant(request)
        request.tenant_id = None
        if tenant is None:
            return self.get_response(request)
        user = self.resolve_user(request) if self.resolve_user else None
        with transaction.atomic(using=self.alias):
            with connections[self.alias].cursor() as cursor:
                request.tenant_id = set_tenant(cursor, tenant, user)
            response = self.get_response(request)
            if response.status_code >= 500:
                transaction.set_rollback(True, using=self.alias)
        return response
