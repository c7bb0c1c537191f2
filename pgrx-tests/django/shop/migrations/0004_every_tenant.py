"""A data migration over every tenant's rows: admin mode, then plain UPDATEs.

The migration role is a member of multitenancy_admin; `admin_begin(..., write => true)` lifts
isolation for the rest of this migration's transaction (audited with the reason). The second
UPDATE fills the foreign key 0003 added: each order's billing customer is a customer of the
order's own tenant, which the (tenant-scoped) foreign key checks.
"""
from django.db import migrations

REASON = "django migration shop.0004: upper-case product titles, fill billing customers"


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_keys")]

    operations = [
        migrations.RunSQL(
            sql=[
                f"SELECT multitenancy.admin_begin('{REASON}', write => true)",
                "UPDATE shop_product SET title = upper(title)",
                "UPDATE shop_order SET billing_customer_id = customer_id WHERE billing_customer_id IS NULL",
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
