#!/usr/bin/env python
"""TenantMiddleware through Django's real WSGI handler, with persistent connections.

Calls django.core.handlers.wsgi.WSGIHandler with WSGI environ dicts, as a WSGI server does
(including closing each response, which fires request_finished). Asserts against MT_TRUTH
(ground truth read by the superuser) and prints a JSON summary for the Rust test.
"""
import io
import json
import os
import sys
import uuid
from wsgiref.util import setup_testing_defaults

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
TRUTH = json.loads(os.environ["MT_TRUTH"])
BASE = os.environ["MT_BASE_DOMAIN"]


def call(method, path, tenant=None, host="localhost", body=b"", query="", user=None):
    environ = {}
    setup_testing_defaults(environ)
    environ.update(
        REQUEST_METHOD=method,
        PATH_INFO=path,
        QUERY_STRING=query,
        HTTP_HOST=host,
        CONTENT_LENGTH=str(len(body)),
        CONTENT_TYPE="text/plain",
        **{"wsgi.input": io.BytesIO(body)},
    )
    if tenant is not None:
        environ["HTTP_X_TENANT"] = tenant
    if user is not None:
        environ["HTTP_X_TEST_USER"] = user
    status = []
    result = application(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        content = b"".join(result)
    finally:
        result.close()
    code = int(status[0].split()[0])
    try:
        return code, json.loads(content)
    except ValueError:
        return code, {"raw": content.decode(errors="replace")[:200]}


def check(condition, what, response):
    if not condition:
        sys.exit("FAILED: %s: %r" % (what, response))


def expect_own(slug, response, extra=()):
    code, body = response
    other = "globex" if slug == "acme" else "acme"
    check(code == 200, "%s: 200" % slug, response)
    check(body["tenant_id"] == TRUTH[slug]["id"], "%s: request.tenant_id" % slug, response)
    check(body["in_transaction"], "%s: the view runs inside the request's transaction" % slug, response)
    check(TRUTH[other]["notes"], "ground truth: %s has notes" % other, TRUTH)
    check(body["ids"] == sorted(TRUTH[slug]["notes"] + list(extra)), "%s sees exactly its notes" % slug, response)
    check(not set(body["ids"]) & set(TRUTH[other]["notes"]), "%s sees none of %s's notes" % (slug, other), response)
    check(body["tenants_seen"] == [TRUTH[slug]["id"]], "%s: only its tenant_id" % slug, response)


def expect_no_context(response, what):
    code, body = response
    check(code == 403 and body.get("sqlstate") == "28000", what + ": 28000", response)
    check("no tenant context" in body.get("message", ""), what + ": no tenant context", response)
    check(not body["in_transaction"], what + ": no transaction", response)


log = []


def step(name, response):
    log.append({"step": name, "status": response[0], "pid": response[1].get("pid")})
    return response


expect_own("acme", step("acme", call("GET", "/notes/", tenant="acme")))
expect_own("globex", step("globex", call("GET", "/notes/", tenant="globex")))
expect_no_context(step("none", call("GET", "/notes/")), "no tenant after globex")
expect_own("acme", step("acme by host", call("GET", "/notes/", host="acme.%s" % BASE)))
expect_no_context(step("unknown host", call("GET", "/notes/", host="nobody.%s" % BASE)), "unknown host")
code, added = step("globex add", call("POST", "/notes/add/", tenant="globex", body=b"wsgi: globex"))
check(code == 200 and added["tenant_id"] == TRUTH["globex"]["id"], "globex add", added)
code, boom = step("acme boom", call("POST", "/notes/boom/", tenant="acme", body=b"wsgi: acme boom"))
check(code == 500, "a failing view answers 500", boom)
# Http404 after a write: Django answers 404 before the middleware sees the response; the
# middleware's process_exception rolls the write back.
code, missing = step("acme 404", call("POST", "/notes/missing/", tenant="acme", body=b"wsgi: acme 404"))
check(code == 404, "Http404 answers 404", missing)
# A caught database error: the transaction failed on the server; COMMIT would silently roll
# back. The middleware rolls back and answers 500; on_commit hooks do not run.
from notes import views  # noqa: E402

for how in ["save", "cursor"]:
    body = ("wsgi: acme caught %s" % how).encode()
    code, caught = step("acme caught " + how, call("POST", "/notes/caught/", tenant="acme", body=body, query="how=" + how))
    check(code == 500, "a caught error (%s) answers 500, not 200" % how, caught)
check(views.HOOKS == [], "no on_commit hook ran for a rolled-back request", views.HOOKS)
# The user resolver: a user who is not a member of acme is refused by tenant_set (a 500).
code, stranger = step("stranger", call("GET", "/notes/", tenant="acme", user=str(uuid.uuid4())))
check(code == 500, "a user who is not a member is refused", stranger)
expect_own("acme", step("acme after boom", call("GET", "/notes/", tenant="acme")))
code, switched = step("switch", call("GET", "/notes/switch/", tenant="acme", query="to=globex"))
check(code == 409 and switched["sqlstate"] == "28000", "switching tenants in a request is refused", switched)
check(switched["still"] == TRUTH["acme"]["id"], "the request still acts for acme", switched)
expect_own("globex", step("globex again", call("GET", "/notes/", tenant="globex")), extra=[added["id"]])
expect_no_context(step("none again", call("GET", "/notes/")), "no tenant after a tenant request")
code, unknown = step("unknown tenant", call("GET", "/notes/", tenant="no-such-tenant"))
check(code == 500, "an unknown tenant is an error, not rows", unknown)
expect_own("acme", step("acme last", call("GET", "/notes/", tenant="acme")))

# No default resolver: the middleware refuses to start without MULTITENANCY_TENANT_RESOLVER.
from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from multitenancy_client.django.middleware import TenantMiddleware  # noqa: E402

with override_settings():
    del settings.MULTITENANCY_TENANT_RESOLVER
    try:
        TenantMiddleware(lambda request: None)
        sys.exit("FAILED: TenantMiddleware started without MULTITENANCY_TENANT_RESOLVER")
    except ImproperlyConfigured:
        pass

json.dump({"added": added["id"], "steps": log}, sys.stdout)
sys.stdout.write("\n")
