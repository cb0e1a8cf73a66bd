"""Django: management commands that run on exactly one process of the fleet (extra ``django``).

Install with ``pip install consul-singleton[django]`` (Django 4.2, 5.2 or 6.x), then::

    INSTALLED_APPS = [..., "singleton.contrib.django"]
    SINGLETON = {"ADDRESS": "consul:8500", "KEY_PREFIX": "myapp/", "TTL": 15, "LOCK_DELAY": 15}

* :class:`LeaderOnlyCommand`: subclass it instead of ``BaseCommand``; ``handle()`` runs only on the
  holder of the command's lock (see :mod:`singleton.contrib.django.command` for the options, the
  output and the exit codes).
* ``manage.py leader_only [--key K] [--ttl S] [--wait S] [--fail-if-held] COMMAND [ARGS...]`` does the
  same for a command you cannot edit (the app must be in ``INSTALLED_APPS`` for Django to find it).
* ``settings.SINGLETON`` configures the engine (:mod:`singleton.contrib.django.conf`); the app checks
  it when Django starts and hands it to :func:`singleton.configure`, so ``@leader_only`` functions of
  the project use it too.

Importing this package without Django installed raises ImportError naming the extra to install.
"""

from __future__ import annotations

try:
    import django  # type: ignore[import-untyped, unused-ignore]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "singleton.contrib.django needs Django: install it with  pip install 'consul-singleton[django]'"
    ) from exc

if django.VERSION < (4, 2):  # pragma: no cover - depends on the environment
    raise ImportError(
        f"singleton.contrib.django needs Django 4.2 or later (found {django.get_version()}): "
        "pip install -U 'consul-singleton[django]'"
    )

from singleton.contrib.django.command import LeaderOnlyCommand

__all__ = ["LeaderOnlyCommand"]
