"""Settings of the Django project the framework suite (pgrx-tests/tests/django.rs) drives.

The database comes from the environment: MT_DB_HOST, MT_DB_PORT, MT_DB_NAME and MT_DB_USER
(trust authentication on the test server, no password). The migrations run as the table owner,
the ORM checks as the application role; both are the same settings with another MT_DB_USER.
"""
import os

SECRET_KEY = "multitenancy-integration-tests-only"
DEBUG = False
ALLOWED_HOSTS = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "shop",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["MT_DB_HOST"],
        "PORT": os.environ["MT_DB_PORT"],
        "NAME": os.environ["MT_DB_NAME"],
        "USER": os.environ["MT_DB_USER"],
        "PASSWORD": "",
    }
}
