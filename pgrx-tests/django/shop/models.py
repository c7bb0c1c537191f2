"""The shop's models: every table of this app is tenant data (tenant_enable in the migrations).

The models do not know `tenant_id`: the column, its default (the transaction's tenant) and the
row level security filter are the database's business. The state here is the one after the
last migration.
"""
from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)  # unique per tenant once tenant-enabled
    name = models.CharField(max_length=100)


class Supplier(models.Model):
    name = models.CharField(max_length=100)


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)  # made unique in 0003, on rows of two tenants
    title = models.CharField(max_length=100)
    supplier = models.ForeignKey(Supplier, null=True, blank=True, on_delete=models.SET_NULL)


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    billing_customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="billed_orders"
    )
    note = models.CharField(max_length=200, blank=True)
    products = models.ManyToManyField(Product)
