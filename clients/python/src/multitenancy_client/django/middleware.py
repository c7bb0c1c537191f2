"""TenantMiddleware: each request in ONE transaction acting for its tenant.

Settings:
- `MULTITENANCY_TENANT_RESOLVER` (required; ImproperlyConfigured without it): dotted path of
  `resolver(request) -> str | None` (slug or uuid). It ROUTES the request; it does not authorize
  it: the host and a header are whatever the client sends. See resolvers.py.
- `MULTITENANCY_USER_RESOLVER`: optional dotted path of `resolver(request) -> uuid | None`, the
  end user (`multitenancy.user_id`; the server refuses a user who is not a member of the
  tenant, 28000). This, or a check of your own, is what authorizes the request for the tenant.
  It usually reads `request.user`: put TenantMiddleware AFTER SessionMiddleware and
  AuthenticationMiddleware then; their queries run in autocommit before the tenant's
  transaction, so their tables (django_session, auth_*) must be global (exempt), e.g.
  `framework_patterns('django')`.
- `MULTITENANCY_DATABASE`: the database alias (default "default").

Why a middleware and not ATOMIC_REQUESTS: ATOMIC_REQUESTS wraps only the view, so middleware
that touches tenant tables would run outside the tenant's transaction, and `tenant_set` outside
a transaction block is refused (25P01). Everything after this middleware in MIDDLEWARE runs
inside the transaction. ATOMIC_REQUESTS may stay on; the view's atomic block is then a savepoint
of the request's transaction.

A request whose resolver returns None runs as usual with no tenant context: every query of a
tenant-enabled table fails with 28000 (fail closed); global (exempt) tables work.

The transaction commits when the response is produced. It rolls back when:
- the view raised any exception (process_exception), including Http404, PermissionDenied,
  BadRequest and SuspiciousOperation, which Django turns into 4xx responses (as ATOMIC_REQUESTS
  does);
- the response is a server error (status >= 500);
- an exception escapes;
- the transaction failed on the server (an error was caught, e.g. `except IntegrityError: pass`
  outside a savepoint): COMMIT would silently answer ROLLBACK, so the middleware rolls back and
  raises TransactionRolledBackError (the client gets a 500; on_commit hooks do not run).
A StreamingHttpResponse whose iterator queries the database runs after the commit, without a
tenant context (28000): build such data in the view.
"""
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils.module_loading import import_string

from ..core import TransactionRolledBackError, set_tenant


def _in_error(connection):
    from psycopg.pq import TransactionStatus

    raw = connection.connection
    return raw is not None and raw.info.transaction_status == TransactionStatus.INERROR


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.alias = getattr(settings, "MULTITENANCY_DATABASE", DEFAULT_DB_ALIAS)
        resolver = getattr(settings, "MULTITENANCY_TENANT_RESOLVER", None)
        if not resolver:
            raise ImproperlyConfigured(
                "TenantMiddleware needs MULTITENANCY_TENANT_RESOLVER (there is no default: a "
                "header or host resolver only routes requests, the client chooses both)"
            )
        self.resolve_tenant = import_string(resolver)
        user_resolver = getattr(settings, "MULTITENANCY_USER_RESOLVER", None)
        self.resolve_user = import_string(user_resolver) if user_resolver else None

    def __call__(self, request):
        tenant = self.resolve_tenant(request)
        request.tenant_id = None
        if tenant is None:
            return self.get_response(request)
        user = self.resolve_user(request) if self.resolve_user else None
        with transaction.atomic(using=self.alias):
            connection = connections[self.alias]
            with connection.cursor() as cursor:
                request.tenant_id = set_tenant(cursor, tenant, user)
            response = self.get_response(request)
            if response.status_code >= 500 or getattr(request, "_multitenancy_view_failed", False):
                transaction.set_rollback(True, using=self.alias)
            elif _in_error(connection):
                transaction.set_rollback(True, using=self.alias)
                raise TransactionRolledBackError(
                    "the request's transaction failed on the server (an error was caught) and "
                    "was rolled back: nothing of the request committed"
                )
        return response

    def process_exception(self, request, exception):
        # Any exception of the view, also those Django answers with a 4xx (Http404,
        # PermissionDenied, ...): roll the request's writes back, like ATOMIC_REQUESTS.
        if getattr(request, "tenant_id", None) is not None:
            request._multitenancy_view_failed = True
            if connections[self.alias].in_atomic_block:
                transaction.set_rollback(True, using=self.alias)
        return None
