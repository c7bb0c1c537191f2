"""Keys added to tables that already hold rows of two tenants, by Django's own operations.

No tenant context here (each migration is its own transaction): the new foreign keys are
validated over every tenant's rows. `Order.billing_customer` references a table with rows of
both tenants; `Product.supplier` references a table created (and tenant-enabled) in this
migration. `Product.sku` becomes unique while both tenants have a product 'sku-1'.
"""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_seed")]

    operations = [
        migrations.CreateModel(
            name="Supplier",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
            ],
        ),
        migrations.RunSQL(
            sql="SELECT multitenancy.tenant_enable('shop_supplier')",
            reverse_sql="SELECT multitenancy.tenant_disable('shop_supplier')",
        ),
        migrations.AddField(
            model_name="product",
            name="supplier",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to="shop.supplier"
            ),
        ),
        migrations.AddField(
            model_name="order",
            name="billing_customer",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="billed_orders",
                to="shop.customer",
            ),
        ),
        migrations.AlterField(
            model_name="product",
            name="sku",
            field=models.CharField(max_length=32, unique=True),
        ),
    ]
