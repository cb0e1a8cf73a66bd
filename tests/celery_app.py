"""The Celery app of the beat fleet tests: ``celery -A tests.celery_app beat -S singleton.contrib.celery:...``.

Configured by the environment the test gives each ``celery beat`` process:

``CELERY_TEST_BROKER``    the broker URL: ``filesystem://`` (the default) or a Redis server's ``redis://...``
``CELERY_TEST_QUEUE``     the folder of kombu's filesystem transport (every message is a file there)
``CELERY_TEST_EVENTS``    the event log shared by the processes (one short O_APPEND line per event)
``CELERY_TEST_MODE``      ``persistent`` (PersistentScheduler, a shelve file per process) or ``database``
                          (django-celery-beat's DatabaseScheduler on the SQLite file ``CELERY_TEST_DB``)
``CELERY_TEST_INTERVAL``  the interval of the one entry, ``tick`` (seconds, default 1)

and the usual ``CONSUL_HTTP_ADDR``, ``SINGLETON_KEY_PREFIX``, ``SINGLETON_TTL``, ``SINGLETON_LOCK_DELAY``.
Events: ``<wall time> <pid> ready``, ``lead <fence>``, ``follow``, and ``publish <task> <fence> <id>`` from
a ``before_task_publish`` handler (the fence of ``singleton.current_token()`` while beat sends, and the
message's id).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped, unused-ignore]
from celery.signals import beat_init, before_task_publish  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton.election import Election

MODE = os.environ.get("CELERY_TEST_MODE", "persistent")
QUEUE = os.environ.get("CELERY_TEST_QUEUE", "")
EVENTS = os.environ.get("CELERY_TEST_EVENTS", "")
INTERVAL = float(os.environ.get("CELERY_TEST_INTERVAL", "1"))

if MODE == "database":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery_django_settings")
    import django  # type: ignore[import-untyped, unused-ignore]

    django.setup()

# Short Consul timeouts: a paused or killed agent is noticed quickly.
singleton.configure(timeout=2, watch_wait=5)

app = Celery("singleton_beat_test", broker=os.environ.get("CELERY_TEST_BROKER") or "filesystem://")
app.conf.update(
    broker_transport_options={"data_folder_in": QUEUE, "data_folder_out": QUEUE, "control_folder": QUEUE},
    beat_schedule={"tick": {"task": "tests.celery_app.tick", "schedule": INTERVAL}},
    beat_enable_remote_control=False,
    singleton_scheduler="django" if MODE == "database" else None,
)


def tick() -> None:
    """Never run here: the tests read the messages beat sends, and no worker consumes them."""


app.task(name="tests.celery_app.tick")(tick)


def log(event: str) -> None:
    if EVENTS:
        with open(EVENTS, "a") as sink:
            sink.write(f"{time.time():.6f} {os.getpid()} {event}\n")


def _on_beat_init(sender: Any, **_: Any) -> None:
    election: Election = sender.scheduler.election

    def on_leadership(changed: Election) -> None:
        token = changed.token
        log(f"lead {token.fence}" if token is not None else "follow")

    election.add_listener(on_leadership)
    if election.is_leader:  # won before the listener was added
        on_leadership(election)
    log("ready")


def _on_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    try:
        fence = singleton.current_token().fence
    except LookupError:
        fence = -1
    log(f"publish {sender} {fence} {(headers or {}).get('id')}")


beat_init.connect(_on_beat_init)
before_task_publish.connect(_on_publish)
