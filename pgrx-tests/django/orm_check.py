#!/usr/bin/env python
"""The application side of the framework suite: Django's ORM as the application role.

Run by pgrx-tests/tests/django.rs after `manage.py migrate`, connected as mt_app (NOSUPERUSER,
NOBYPASSRLS, owns nothing). For each tenant, in its own `transaction.atomic()` block with
`SELECT multitenancy.tenant_set(%s)` first: creates rows, upserts by the unique e-mail
(`bulk_create(update_conflicts=True)`, i.e. INSERT ... ON CONFLICT (email)), `get_or_create`,
`select_for_update()`, and reads everything back. Then the mistakes: a foreign key to another
tenant's row, and queries without tenant_set. Prints one JSON document on stdout; the Rust test
compares it with the ground truth it reads as the superuser. Any unexpected error ends the
script with a traceback and a non-zero exit.
"""
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtsite.settings")

import django  # noqa: E402

django.setup()

from django.db import DatabaseError, IntegrityError, connection, transaction  # noqa: E402

from shop.models import Customer, Order, Product  # noqa: E402

TENANTS = ["acme", "globex"]


def tenant_set(slug):
    with connection.cursor() as cursor:
        cursor.execute("SELECT multitenancy.tenant_set(%s)::text", [slug])
        return cursor.fetchone()[0]


def failure(error):
    """SQLSTATE and message of a database error raised through Django."""
    cause = error.__cause__
    return {"sqlstate": getattr(cause, "sqlstate", None), "message": str(error).strip()}


def snapshot():
    """Everything the current tenant sees, ordered."""
    return {
        "customers": [
            {"id": c.id, "email": c.email, "name": c.name} for c in Customer.objects.order_by("id")
        ],
        "products": [
            {"id": p.id, "sku": p.sku, "title": p.title} for p in Product.objects.order_by("id")
        ],
        "orders": [
            {"id": o.id, "customer": o.customer_id, "billing_customer": o.billing_customer_id}
            for o in Order.objects.order_by("id")
        ],
        "order_products": sorted(
            [o, p] for o, p in Order.products.through.objects.values_list("order_id", "product_id")
        ),
        "ann_count": Customer.objects.filter(email="ann@example.com").count(),
        "sku_1_count": Product.objects.filter(sku="sku-1").count(),
    }


def work_as(slug):
    result = {}
    with transaction.atomic():
        result["tenant_id"] = tenant_set(slug)
        ann_before = Customer.objects.get(email="ann@example.com")
        # New rows: the same e-mail and sku for both tenants (keys are unique per tenant).
        carol = Customer.objects.create(email="carol@example.com", name=f"Carol of {slug}")
        gizmo = Product.objects.create(sku="sku-3", title=f"gizmo of {slug}")
        order = Order.objects.create(customer=carol, billing_customer=carol, note=f"{slug}: orm order")
        order.products.add(gizmo, Product.objects.get(sku="sku-1"))
        # Upsert by the unique key: ann exists (updated), dave does not (inserted).
        upserted = Customer.objects.bulk_create(
            [
                Customer(email="ann@example.com", name=f"Ann upserted by {slug}"),
                Customer(email="dave@example.com", name=f"Dave of {slug}"),
            ],
            update_conflicts=True,
            unique_fields=["email"],
            update_fields=["name"],
        )
        ann_after = Customer.objects.get(email="ann@example.com")
        result["upsert"] = {
            "returned_ids": [c.pk for c in upserted],
            "ann_id_before": ann_before.id,
            "ann_id_after": ann_after.id,
            "ann_name_after": ann_after.name,
        }
        # get_or_create: an existing row of this tenant is found, a new one is created once.
        widget, widget_created = Product.objects.get_or_create(sku="sku-1", defaults={"title": "duplicate"})
        erin, erin_created = Customer.objects.get_or_create(email="erin@example.com", defaults={"name": "Erin"})
        erin_again, erin_created_again = Customer.objects.get_or_create(
            email="erin@example.com", defaults={"name": "Erin twice"}
        )
        result["get_or_create"] = {
            "sku_1": {"id": widget.id, "created": widget_created, "title": widget.title},
            "erin": {"id": erin.id, "created": erin_created},
            "erin_again": {"id": erin_again.id, "created": erin_created_again},
        }
        # select_for_update: locks this tenant's row(s) only, then updates through the ORM.
        locked = list(Product.objects.select_for_update().filter(sku__in=["sku-1", "sku-2"]).order_by("id"))
        for product in locked:
            product.title = f"{product.title} (locked by {slug})"
            product.save(update_fields=["title"])
        result["locked_ids"] = [p.id for p in locked]
        result["seen"] = snapshot()
    return result


def cross_tenant_reference(slug, foreign_customer_id):
    """An order of `slug` pointing at another tenant's customer: must fail like a missing row."""
    try:
        with transaction.atomic():
            tenant_set(slug)
            Order.objects.create(customer_id=foreign_customer_id, note=f"{slug}: cross-tenant")
    except IntegrityError as error:
        return failure(error)
    return {"sqlstate": None, "message": "the order was committed"}


def without_context():
    """Queries after a forgotten tenant_set: 28000, never rows."""
    outcomes = {}
    for name, action in [
        ("select", lambda: Customer.objects.count()),
        ("insert", lambda: Customer.objects.create(email="nobody@example.com", name="Nobody")),
        ("update", lambda: Product.objects.update(title="overwritten")),
    ]:
        try:
            with transaction.atomic():
                value = action()
            outcomes[name] = {"sqlstate": None, "message": f"succeeded: {value!r}"}
        except DatabaseError as error:
            outcomes[name] = failure(error)
    # Autocommit (no atomic block at all): the same.
    try:
        value = list(Order.objects.values_list("id", flat=True))
        outcomes["autocommit_select"] = {"sqlstate": None, "message": f"succeeded: {value!r}"}
    except DatabaseError as error:
        outcomes["autocommit_select"] = failure(error)
    return outcomes


def main():
    out = {"role": None, "tenants": {}}
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user::text")
        out["role"] = cursor.fetchone()[0]
    for slug in TENANTS:
        out["tenants"][slug] = work_as(slug)
    # Each tenant tries to reference the other's customer ann (an id it learned elsewhere).
    for slug, other in [("acme", "globex"), ("globex", "acme")]:
        foreign = out["tenants"][other]["upsert"]["ann_id_after"]
        out["tenants"][slug]["cross_tenant_fk"] = cross_tenant_reference(slug, foreign)
    out["without_context"] = without_context()
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
