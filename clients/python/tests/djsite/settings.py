"""A small Django project for the client helpers' tests (pgrx-tests/tests/client_python.rs).

The table `notes` (tenant-enabled) is created by the Rust test as the table owner; the model is
unmanaged and the project has no migrations, so `manage.py test --keepdb` runs against the
test's own database, as the application role, without creating anything.
Database from the environment: MT_DB_HOST, MT_DB_PORT, MT_DB_NAME, MT_DB_USER.
"""
import os

SECRET_KEY = "multitenancy-client-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["notes"]
ROOT_URLCONF = "notes.urls"
MIDDLEWARE = ["multitenancy_client.django.middleware.TenantMiddleware"]
MULTITENANCY_TENANT_RESOLVER = "notes.resolvers.host_or_header"
MULTITENANCY_USER_RESOLVER = "notes.resolvers.user_header"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["MT_DB_HOST"],
        "PORT": os.environ["MT_DB_PORT"],
        "NAME": os.environ["MT_DB_NAME"],
        "USER": os.environ["MT_DB_USER"],
        "PASSWORD": "",
        # Persistent connections: every request after the first reuses the same server session.
        "CONN_MAX_AGE": 600,
        # `manage.py test --keepdb` uses the test's database as it is (the app role may not
        # create databases).
        "TEST": {"NAME": os.environ["MT_DB_NAME"]},
    }
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.request": {"level": "CRITICAL"}},
}
