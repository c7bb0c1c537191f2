from multitenancy_client.django import resolvers


def host_or_header(request):
    """The tenant of the host (<slug>.<base_domain>), else the X-Tenant header."""
    return resolvers.host(request) or resolvers.header(request)


def user_header(request):
    """Tests only: the end user from the X-Test-User header (a real project reads request.user
    behind AuthenticationMiddleware)."""
    return request.headers.get("X-Test-User") or None
