"""Tenant resolvers for TenantMiddleware: callables `resolver(request) -> str | None` (a slug or
a tenant uuid; None: the request runs without a tenant context).

These resolvers ROUTE a request; they do not authorize it. A client sends any Host header it
likes (and ALLOWED_HOSTS wildcards such as ".example.com" accept it) and any X-Tenant header:
with `host` or `header` alone, any client acts for any tenant it names. The database checks
only that the tenant exists and is active. Authorization needs MULTITENANCY_USER_RESOLVER (the
server refuses a user who is not a member: tenant_set answers 28000) or a check of your own
(e.g. the authenticated user's membership) before the view.
"""
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections


def header(request):
    """The `MULTITENANCY_TENANT_HEADER` request header (default `X-Tenant`), or None. Only
    behind a trusted reverse proxy or gateway that strips the client's header and sets its own.
    Mind the underscore: WSGI servers turn both `X-Tenant` and `X_Tenant` into HTTP_X_TENANT,
    so a proxy that strips only `X-Tenant` lets a client's `X_Tenant` through (strip both, or
    have the proxy drop headers with underscores, as nginx does by default)."""
    name = getattr(settings, "MULTITENANCY_TENANT_HEADER", "X-Tenant")
    value = request.headers.get(name, "").strip()
    return value or None


def host(request):
    """The tenant the request's host routes to (`multitenancy.tenant_resolve(host)`: tenants'
    <slug>.<multitenancy.base_domain> and their verified custom domains), or None. One
    autocommit query before the request's transaction; it needs no tenant context."""
    try:
        name = request.get_host()
    except Exception:  # DisallowedHost: no tenant; Django answers 400 itself when it asks again
        return None
    alias = getattr(settings, "MULTITENANCY_DATABASE", DEFAULT_DB_ALIAS)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT multitenancy.tenant_resolve(%s)::text", [name.split(":")[0]])
        row = cursor.fetchone()
    return row[0] if row else None
