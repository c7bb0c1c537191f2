"""The test helpers inside a real Django test run (`manage.py test --keepdb notes`).

MT_TRUTH (JSON, read by the superuser before the run): {"acme": {"id", "notes"}, "globex": ...}.
"""
import json
import os
import unittest
from unittest import mock

from django.db import DatabaseError, IntegrityError, connection, transaction

from multitenancy_client import TenantScopeError, current_tenant, set_tenant
from multitenancy_client.django import tenant_atomic
from multitenancy_client.django.testing import TenantTestCase, TenantTransactionTestCase

from .models import Note

TRUTH = json.loads(os.environ["MT_TRUTH"])


def sqlstate(error):
    return getattr(error.__cause__, "sqlstate", None)


def seen():
    return list(Note.objects.order_by("id").values_list("id", flat=True))


class Isolation:
    def assert_sees_only(self, slug, extra=()):
        own, other = TRUTH[slug]["notes"], TRUTH["globex" if slug == "acme" else "acme"]["notes"]
        self.assertTrue(own and other, "ground truth: both tenants have notes")
        ids = seen()
        self.assertEqual(ids, sorted(own + list(extra)))
        self.assertFalse(set(ids) & set(other), "none of the other tenant's notes")
        with connection.cursor() as cursor:
            cursor.execute("SELECT array_agg(DISTINCT tenant_id::text) FROM notes")
            self.assertEqual(cursor.fetchone()[0], [TRUTH[slug]["id"]])


class AcmeTests(Isolation, TenantTestCase):
    tenant = "acme"

    @classmethod
    def setUpTestData(cls):
        # Runs in the class's transaction, after the helper set the tenant.
        cls.fixture = Note.objects.create(body="fixture of acme (rolled back by Django)")

    def test_fixture_and_own_rows_only(self):
        self.assertEqual(self.tenant_id, TRUTH["acme"]["id"])
        self.assert_sees_only("acme", extra=[self.fixture.id])

    def test_another_tenant_is_refused(self):
        with self.assertRaises(DatabaseError) as refused:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    set_tenant(cursor, "globex")
        self.assertEqual(sqlstate(refused.exception), "28000")
        with connection.cursor() as cursor:
            self.assertEqual(current_tenant(cursor), TRUTH["acme"]["id"])

    def test_save_with_a_chosen_id_is_an_existence_oracle(self):
        # Model(id=...).save() is UPDATE ... WHERE id = %s, then INSERT when nothing matched.
        # Another tenant's id: the UPDATE sees no row (RLS), the INSERT hits the global primary
        # key: 23505 tells that the id exists elsewhere. (Documented; don't let clients pick ids.)
        foreign = TRUTH["globex"]["notes"][0]
        with self.assertRaises(IntegrityError) as duplicate:
            with transaction.atomic():
                Note(id=foreign, body="chosen id").save()
        self.assertEqual(sqlstate(duplicate.exception), "23505")
        # An id nobody has: inserted (and rolled back with the test).
        with transaction.atomic():
            Note(id=10**12, body="chosen free id").save()
        self.assertTrue(Note.objects.filter(id=10**12).exists())

    def test_writes_roll_back(self):
        Note.objects.create(body="written by an acme test (rolled back by Django)")
        self.assertEqual(len(seen()), len(TRUTH["acme"]["notes"]) + 2)


class GlobexTests(Isolation, TenantTestCase):
    """The next class acts for another tenant: nothing of AcmeTests' transaction is left."""

    tenant = "globex"

    def test_own_rows_only(self):
        self.assert_sees_only("globex")


class NoTenantTests(TenantTestCase):
    tenant = None

    def test_fails_closed(self):
        with self.assertRaises(DatabaseError) as refused:
            with transaction.atomic():
                seen()
        self.assertEqual(sqlstate(refused.exception), "28000")


class ScopeTests(Isolation, TenantTransactionTestCase):
    def test_two_tenants_one_after_the_other(self):
        with self.tenant_scope("acme") as acme:
            self.assertEqual(acme, TRUTH["acme"]["id"])
            self.assert_sees_only("acme")
        with self.tenant_scope("globex"):
            self.assert_sees_only("globex")
        with self.assertRaises(DatabaseError) as refused:
            seen()
        self.assertEqual(sqlstate(refused.exception), "28000")

    def test_an_exception_rolls_the_scope_back(self):
        with self.assertRaises(ValueError):
            with self.tenant_scope("acme"):
                Note.objects.create(body="scope rolled back")
                raise ValueError("boom")
        with self.tenant_scope("acme"):
            self.assertFalse(Note.objects.filter(body="scope rolled back").exists())

    def test_committed_and_cleaned_up(self):
        with self.tenant_scope("globex"):
            note = Note.objects.create(body="scope committed")
        with self.tenant_scope("acme"):
            self.assertFalse(Note.objects.filter(id=note.id).exists(), "acme cannot see globex's new note")
        with self.tenant_scope("globex"):
            self.assertTrue(Note.objects.filter(id=note.id).exists())
            Note.objects.filter(id=note.id).delete()

    def test_scope_refused_inside_an_atomic_block(self):
        # Inside an outer atomic it would be a savepoint: the tenant would outlive the block.
        with transaction.atomic():
            with self.assertRaises(TenantScopeError):
                with self.tenant_scope("acme"):
                    pass
            with connection.cursor() as cursor:
                self.assertIsNone(current_tenant(cursor))

    def test_tenant_atomic_refused_inside_an_atomic_block(self):
        with transaction.atomic():
            with self.assertRaises(TenantScopeError):
                with tenant_atomic("acme"):
                    pass
            with connection.cursor() as cursor:
                self.assertIsNone(current_tenant(cursor))
        with tenant_atomic("acme") as acme:
            self.assertEqual(acme, TRUTH["acme"]["id"])
            self.assert_sees_only("acme")

    def test_teardown_check_failing_still_tears_down(self):
        # _post_teardown's own check may fail (here: its query raises); Django's teardown
        # (super()._post_teardown(), which calls _fixture_teardown) must run all the same.
        torn_down = []

        class Inner(TenantTransactionTestCase):
            def _fixture_teardown(self):
                torn_down.append(True)

            def test_query(self):
                with self.tenant_scope("acme"):
                    seen()

        result = unittest.TestResult()
        with mock.patch("multitenancy_client.django.testing.current_tenant", side_effect=RuntimeError("check")):
            Inner("test_query")(result)  # __call__: with _pre_setup and _post_teardown
        self.assertEqual(len(result.errors), 1, result.errors)
        self.assertEqual(torn_down, [True], "Django's teardown ran")
