"""The app config: checks ``settings.SINGLETON`` when Django starts and configures the engine with it.

A bad ``settings.SINGLETON`` never stops Django and never breaks a command that does not use the lock
(``migrate``, ``shell``, ``help``, ``runserver``...):

* Django's system checks report it as the warning ``singleton.W001``, naming the key and what it may
  be (``manage.py check`` lists it; ``check --fail-level WARNING`` fails on it, for CI).
* Leader-only commands (``LeaderOnlyCommand`` subclasses, ``manage.py leader_only``) refuse to run:
  one line, exit 64 (``EXIT_USAGE``), before the lock is asked for.
* ``@leader_only`` functions of the process do not run with other settings instead: the engine is
  told to refuse (:func:`singleton._runtime.refuse`) until :func:`singleton.configure` succeeds, so
  they cannot campaign with the environment's settings, which nobody chose for this project.

A value that may be a secret (``TOKEN``) is never quoted, only its type.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped, unused-ignore]
from django.core import checks  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton import _runtime
from singleton.contrib.django import conf
from singleton.errors import ConfigurationError

#: The system check id of a bad ``settings.SINGLETON``.
CHECK_ID = "singleton.W001"


class SingletonConfig(AppConfig):  # type: ignore[misc, unused-ignore]
    """``"singleton.contrib.django"`` in ``INSTALLED_APPS``: provides the ``leader_only`` command.

    :meth:`ready` validates ``settings.SINGLETON`` (when the project defines it) and passes it to
    :func:`singleton.configure`, so every ``@leader_only`` function of the project and every
    leader-only command read the same settings. A bad value is reported as described in the module
    docstring; it never raises here. Without ``settings.SINGLETON`` nothing is configured here: the
    environment (or your own ``singleton.configure()`` call) rules, as without Django.
    """

    name = "singleton.contrib.django"
    label = "singleton"
    verbose_name = "singleton (Consul leader election)"

    def ready(self) -> None:
        from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

        checks.register(check_settings)
        if not hasattr(settings, conf.SETTING):
            return
        try:
            configured = conf.settings_from(getattr(settings, conf.SETTING))
        except ConfigurationError as exc:
            _runtime.refuse(exc)
            return
        singleton.configure(configured)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The system check of ``settings.SINGLETON``: one warning naming what is wrong, or nothing."""
    from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

    if not hasattr(settings, conf.SETTING):
        return []
    try:
        conf.settings_from(getattr(settings, conf.SETTING))
    except ConfigurationError as exc:
        return [
            checks.Warning(
                str(exc),
                hint="Leader-only commands exit 64 and @leader_only functions do not run until it is fixed; "
                f"allowed keys: {', '.join(conf.allowed_keys())}.",
                id=CHECK_ID,
            )
        ]
    return []
