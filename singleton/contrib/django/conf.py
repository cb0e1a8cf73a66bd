"""``settings.SINGLETON``: the Django way to write what :meth:`Settings.from_env` takes as overrides.

::

    SINGLETON = {
        "ADDRESS": "consul.service.consul:8500",   # as CONSUL_HTTP_ADDR takes it
        "TOKEN": os.environ["CONSUL_HTTP_TOKEN"],  # ACL token
        "TTL": 15,                                 # session TTL, 10..86400 s
        "LOCK_DELAY": 15,                          # 0..60 s
        "KEY_PREFIX": "myapp/",                    # every key lives under it
    }

Each key is the upper-case name of a :meth:`~singleton.config.Settings.from_env` override, and is
validated by the same code: ``ADDRESS``, ``TOKEN``, ``TTL``, ``LOCK_DELAY``, ``MARGIN``, ``KEY_PREFIX``,
``BACKEND``, ``CA_CERT``, ``CLIENT_CERT``, ``CLIENT_KEY``, ``VERIFY``, ``DATACENTER``, ``TIMEOUT``,
``WATCH_WAIT``, ``STARTUP_TIMEOUT``, ``SHUTDOWN_GRACE``, ``IDENTITY``, ``SESSION_NAME`` (and ``HOST``,
``PORT``, ``SCHEME``, which ``ADDRESS`` sets in one go). A key given here wins over the environment
(``CONSUL_HTTP_ADDR``, ``SINGLETON_TTL``, ...); what it leaves out is read from the environment as
everywhere else, so a project without ``SINGLETON`` is configured by the environment alone.

Failure modes: a value that is not a dict, an unknown or lower-case key, or a value out of range raises
:class:`~singleton.errors.ConfigurationError` naming ``settings.SINGLETON[...]`` and the allowed range
(a ``TOKEN`` of the wrong type is named by its type, never quoted). The app config
(:mod:`singleton.contrib.django.apps`) checks it when Django starts and reports it as the system check
warning ``singleton.W001``; leader-only commands then exit 64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import singleton
from singleton.config import ConsulSettings, LeaseOverrides, Settings
from singleton.errors import ConfigurationError

__all__ = ["SETTING", "allowed_keys", "get_settings", "overrides_from", "settings_from"]

#: The name of the Django setting.
SETTING = "SINGLETON"

# Settings fields that are objects of their own: their parts are given by name instead.
_COMPOSITE = {"consul", "lease"}
# Checked only together with the others: margin's range depends on ttl; a client cert needs its key.
_JOINT = {"margin", "client_cert", "client_key"}
_LEASE = {"ttl", "lock_delay", "check_ttl"}
# Values the engine would take as they are: a string "false" must not turn certificate checks on.
_STRINGS = {
    "address",
    "backend",
    "ca_cert",
    "client_cert",
    "client_key",
    "datacenter",
    "host",
    "identity",
    "key_prefix",
    "scheme",
    "session_name",
    "token",
}
_BOOLEANS = {"verify"}
# Values that may be secrets: an error names their type, never the value.
_SECRETS = {"token"}


def _shown(name: str, item: object) -> str:
    """``item`` as an error message may show it: its repr, or only its type for a secret."""
    if name in _SECRETS:
        return f"a value of type {type(item).__name__} (not shown: it may be a secret)"
    return repr(item)


def allowed_keys() -> list[str]:
    """Every key ``settings.SINGLETON`` accepts, sorted (upper case)."""
    names = {f.name for f in dataclasses.fields(Settings)} - _COMPOSITE
    names |= {"ttl", "lock_delay", "margin", "check_ttl", "address"}
    names |= {f.name for f in dataclasses.fields(ConsulSettings)}
    return sorted(name.upper() for name in names)


def _where(key: str) -> str:
    return f"settings.{SETTING}[{key!r}]"


def overrides_from(value: object) -> dict[str, Any]:
    """``settings.SINGLETON`` as keyword overrides of :meth:`Settings.from_env` (``{"TTL": 20}`` -> ``{"ttl": 20}``).

    Each value is checked on its own first, so an error names the key that is wrong.

    :raises ConfigurationError: not a dict, an unknown key, or a bad value.
    """
    if not isinstance(value, Mapping):  # its type only: the value may hold the token
        raise ConfigurationError(
            f"settings.{SETTING} must be a dict such as {{'ADDRESS': 'consul:8500'}}, got a {type(value).__name__}"
        )
    allowed = allowed_keys()
    overrides: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or key not in allowed:
            hint = ""
            if isinstance(key, str) and key.upper() in allowed:
                hint = f" (keys are upper case: {key.upper()!r})"
            raise ConfigurationError(
                f"settings.{SETTING} has an unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"
            )
        name = key.lower()
        if item is not None and name in _STRINGS and not isinstance(item, str):
            raise ConfigurationError(f"{_where(key)} must be a string, got {_shown(name, item)}")
        if item is not None and name in _BOOLEANS and not isinstance(item, bool):
            raise ConfigurationError(f"{_where(key)} must be True or False, got {_shown(name, item)}")
        if name not in _JOINT and item is not None:
            try:
                if name in _LEASE:  # alone, only its range: how it fits the others is checked below
                    LeaseOverrides.checked(**{name: item})
                else:
                    Settings.from_env({}, **{name: item})
            except ConfigurationError as exc:  # ours already: the key's name is all that is added
                raise ConfigurationError(f"{_where(key)}: {exc}") from None
            except (TypeError, ValueError):  # a value of the wrong type deeper down
                raise ConfigurationError(f"{_where(key)}: invalid value {_shown(name, item)}") from None
        overrides[name] = item
    try:
        Settings.from_env({}, **overrides)
    except ConfigurationError as exc:
        raise ConfigurationError(f"settings.{SETTING}: {exc}") from None
    return overrides


def settings_from(value: object, environ: Mapping[str, str] | None = None) -> Settings:
    """The :class:`Settings` that ``settings.SINGLETON = value`` gives: its keys, then the environment.

    :raises ConfigurationError: a bad ``value`` (named as in :func:`overrides_from`), or a bad
        environment variable for what ``value`` leaves out.
    """
    overrides = overrides_from(value)
    try:
        return Settings.from_env(environ, **overrides)
    except ConfigurationError as exc:
        raise ConfigurationError(f"settings.{SETTING} together with the environment: {exc}") from None


def get_settings() -> Settings:
    """The settings a leader-only command campaigns with.

    ``settings.SINGLETON`` when the Django settings define it (read anew on each call, so
    ``override_settings`` works); otherwise the process-wide settings of :func:`singleton.configure`,
    or the environment.

    :raises ConfigurationError: as :func:`settings_from`.
    """
    from django.conf import settings  # type: ignore[import-untyped, unused-ignore]

    if hasattr(settings, SETTING):
        return settings_from(getattr(settings, SETTING))
    return singleton.get_settings()
