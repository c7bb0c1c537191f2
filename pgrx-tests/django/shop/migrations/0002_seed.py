"""Data for two tenants, written through each tenant's context inside the migration.

The migration role is filtered by row level security like the application (the tables' row
level security is forced), so the rows are written per tenant: `tenant_set` inside the
tenant's own transaction, then plain ORM writes; `tenant_id` comes from the column default. A
transaction acts for one tenant, so the migration is not atomic as a whole (`atomic = False`) and
runs one `transaction.atomic()` per tenant. Both
tenants get the same customer e-mail and the same product sku ('sku-1') and title: keys that
0003 makes unique must be unique per tenant, not across tenants.
"""
from django.db import migrations, transaction

TENANTS = ["acme", "globex"]


def seed(apps, schema_editor):
    Customer = apps.get_model("shop", "Customer")
    Product = apps.get_model("shop", "Product")
    Order = apps.get_model("shop", "Order")
    db = schema_editor.connection.alias
    for slug in TENANTS:
        with transaction.atomic(using=db), schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT multitenancy.tenant_set(%s)", [slug])
            ann = Customer.objects.using(db).create(email="ann@example.com", name="Ann")
            bob = Customer.objects.using(db).create(email=f"bob@{slug}.example", name=f"Bob of {slug}")
            widget = Product.objects.using(db).create(sku="sku-1", title="widget")
            gadget = Product.objects.using(db).create(sku="sku-2", title=f"gadget of {slug}")
            first = Order.objects.using(db).create(customer=ann, note=f"{slug}: first order")
            first.products.add(widget, gadget)
            second = Order.objects.using(db).create(customer=bob, note=f"{slug}: second order")
            second.products.add(widget)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
