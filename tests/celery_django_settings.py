"""Django settings of the DatabaseScheduler fleet: django-celery-beat's models on the SQLite file CELERY_TEST_DB."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "singleton-tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_celery_beat"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CELERY_TEST_DB", ":memory:"),
        # Three processes share the file: wait for its lock rather than fail.
        "OPTIONS": {"timeout": 30},
    }
}
