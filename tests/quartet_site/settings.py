"""
Django settings of the test QU4RTET site.

The database and the folder quartet_capture stores task data in come from
the environment, so that each test gets its own:

- C{QUARTET_SITE_DB}: the SQLite file (required).
- C{QUARTET_SITE_MEDIA}: quartet_capture's storage folder (default: next to
  the database).
- C{QUARTET_SITE_EAGER}: C{1} (default) runs Celery tasks in the caller's
  thread; C{0} sends them to the broker in C{QUARTET_SITE_BROKER}.
"""

from __future__ import annotations

import os
from pathlib import Path

_DB = Path(os.environ["QUARTET_SITE_DB"])

SECRET_KEY = "quartet-sftpd tests only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework.authtoken",
    "quartet_capture",
    "quartet_epcis",
]

# The capture API, for the http backend's tests: logged-in users only, by
# password or token, and rules in pages of two so that paging is exercised.
ROOT_URLCONF = "tests.quartet_site.urls"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 2,
}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_DB),
        # Several threads and processes write: wait for the lock, not fail.
        "OPTIONS": {"timeout": 30},
    }
}

MEDIA_ROOT = os.environ.get("QUARTET_SITE_MEDIA", str(_DB.parent / "media"))

CELERY_TASK_ALWAYS_EAGER = os.environ.get("QUARTET_SITE_EAGER", "1") == "1"
CELERY_BROKER_URL = os.environ.get("QUARTET_SITE_BROKER", "memory://localhost/")
CELERY_TASK_STORE_EAGER_RESULT = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
