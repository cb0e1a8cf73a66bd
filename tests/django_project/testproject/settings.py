"""Settings of the test project: no database, the singleton app and one app with commands.

``settings.SINGLETON`` comes from the ``TEST_SINGLETON`` environment variable (JSON), so each test
gives its own Consul address and key prefix; without the variable the project has no SINGLETON setting
and the engine reads the environment (``CONSUL_HTTP_ADDR``, ``SINGLETON_*``), as it would without Django.
"""

from __future__ import annotations

import json
import os
from typing import Any

SECRET_KEY = "singleton-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS: list[str] = []
# LeaderOnlyCommand works without the app too (only the leader_only wrapper needs it).
INSTALLED_APPS = ["jobs"] if os.environ.get("TEST_WITHOUT_SINGLETON_APP") else ["singleton.contrib.django", "jobs"]
DATABASES: dict[str, dict[str, Any]] = {}

if "TEST_SINGLETON" in os.environ:
    SINGLETON = json.loads(os.environ["TEST_SINGLETON"])
