from multitenancy_client.django import resolvers


def host_or_header(request):
    """The tenant of the host (<slug>.<base_domain>), else the X-Tenant header."""
    return resolvers.host(request) or resolvers.header(request)
