"""The shop's tables, tenant-enabled in the migration that creates them.

Django's CreateModel operations create the tables; on PostgreSQL the foreign keys (and the
indexes on them) are deferred SQL that the schema editor runs at the end of the migration, after
the RunSQL below: they are added between tables that are already tenant-enabled, as Django does
it, with no change to the migration. tenant_enable covers every table of the app, the
many-to-many through table included. Everything runs in the migration's one transaction: the DDL
guard refuses a COMMIT that leaves a new table unprotected.
"""
import django.db.models.deletion
from django.db import migrations, models

TABLES = ["shop_customer", "shop_product", "shop_order", "shop_order_products"]


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("email", models.EmailField(max_length=254, unique=True)),
                ("name", models.CharField(max_length=100)),
            ],
        ),
        migrations.CreateModel(
            name="Product",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("sku", models.CharField(max_length=32)),
                ("title", models.CharField(max_length=100)),
            ],
        ),
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("note", models.CharField(blank=True, max_length=200)),
                (
                    "customer",
                    models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="shop.customer"),
                ),
                ("products", models.ManyToManyField(to="shop.product")),
            ],
        ),
        migrations.RunSQL(
            sql=[f"SELECT multitenancy.tenant_enable('{table}')" for table in TABLES],
            reverse_sql=[f"SELECT multitenancy.tenant_disable('{table}')" for table in reversed(TABLES)],
        ),
    ]
