"""Tenant resolvers for TenantMiddleware: callables `resolver(request) -> str | None` (a slug or
a tenant uuid; None: the request runs without a tenant context).

Choose the tenant from something the client cannot forge for another tenant: a verified host
name, the authenticated user's membership, or a header set by a trusted proxy. The database
still checks that the tenant exists and is active (and, with a user, that the user is a member).
"""
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections


def header(request):
    """The `MULTITENANCY_TENANT_HEADER` request header (default `X-Tenant`), or None. Only for
    a header set by a trusted reverse proxy or gateway, never one the browser controls."""
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
