"""The app config: checks ``settings.SINGLETON`` when Django starts and configures the engine with it."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton.contrib.django import conf


class SingletonConfig(AppConfig):  # type: ignore[misc, unused-ignore]
    """``"singleton.contrib.django"`` in ``INSTALLED_APPS``: provides the ``leader_only`` command.

    :meth:`ready` validates ``settings.SINGLETON`` (when the project defines it) and passes it to
    :func:`singleton.configure`, so every ``@leader_only`` function of the project and every
    leader-only command read the same settings. A bad value raises
    :class:`~singleton.errors.ConfigurationError` naming the key, and Django does not start.
    Without ``settings.SINGLETON`` nothing is configured here: the environment (or your own
    ``singleton.configure()`` call) rules, as without Django.
    """

    name = "singleton.contrib.django"
    label = "singleton"
    verbose_name = "singleton (Consul leader election)"

    def ready(self) -> None:
        from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

        if hasattr(settings, conf.SETTING):
            singleton.configure(conf.settings_from(getattr(settings, conf.SETTING)))
