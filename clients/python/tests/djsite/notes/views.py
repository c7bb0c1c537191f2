from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import Http404, JsonResponse

from multitenancy_client import current_tenant, set_tenant

from .models import Note


def failure(error):
    cause = error.__cause__ or error
    return {"sqlstate": getattr(cause, "sqlstate", None), "message": str(error).strip()}


def backend():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return {"pid": pid, "in_transaction": connection.in_atomic_block}


def notes(request):
    info = backend()
    try:
        info["ids"] = list(Note.objects.order_by("id").values_list("id", flat=True))
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(array_agg(DISTINCT tenant_id::text), '{}') FROM notes")
            info["tenants_seen"] = cursor.fetchone()[0]
    except DatabaseError as error:  # only without a tenant (autocommit): fail closed
        info.update(failure(error))
        return JsonResponse(info, status=403)
    info["tenant_id"] = request.tenant_id
    return JsonResponse(info)


def add(request):
    note = Note.objects.create(body=request.body.decode())
    return JsonResponse({"id": note.id, "tenant_id": request.tenant_id, **backend()})


def boom(request):
    Note.objects.create(body=request.body.decode())
    raise RuntimeError("the view fails after writing")


def switch(request):
    """Try to act for another tenant inside the request's transaction."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                set_tenant(cursor, request.GET["to"])
    except DatabaseError as error:
        with connection.cursor() as cursor:
            still = current_tenant(cursor)
        return JsonResponse({**failure(error), "still": still}, status=409)
    return JsonResponse({"switched": True})


def missing(request):
    """Writes, then answers 404 by raising Http404: the write must not commit."""
    Note.objects.create(body=request.body.decode())
    raise Http404("no such thing")


# on_commit hooks that ran (wsgi_check.py runs in this process and reads it).
HOOKS = []


def caught(request):
    """Writes, then catches a database error without a savepoint: the transaction has failed on
    the server, so nothing may commit (and on_commit hooks must not run)."""
    note = Note.objects.create(body=request.body.decode())
    transaction.on_commit(lambda: HOOKS.append(note.body))
    try:
        if request.GET.get("how") == "cursor":
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO notes (id, body) VALUES (%s, 'duplicate')", [note.id])
        else:
            Note(id=note.id, body="duplicate").save(force_insert=True)
    except IntegrityError:
        pass
    return JsonResponse({"id": note.id})
