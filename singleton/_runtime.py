"""The process-wide default elector: configure(), shutdown(), the exit hook and fork safety.

* :func:`configure` sets the settings before the first leader-only call (afterwards it refuses, until
  :func:`shutdown`).
* The default :class:`~singleton.election.Elector` is created on first use and closed at interpreter
  exit, *before* non-daemon threads are joined (``threading._register_atexit``, as concurrent.futures
  does), so jobs running in pool threads see their stop token fire instead of blocking the exit.
* After :func:`shutdown`, leader-only calls do not run their body (they return their default) until
  :func:`configure` is called again: a process on its way out never starts campaigning anew.
* SIGTERM: when it still has Python's default action, configure() (and any elector started in the
  main thread) installs a handler that releases the keys first (``singleton._signals``).
* Fork: the child forgets the parent's elector (``singleton.election`` disowns every elector of the
  parent: inherited tokens fire, nothing is released, the parent still holds the session) and starts
  its own on first use.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from singleton import _signals
from singleton._health import Health
from singleton.config import Settings, require_settings
from singleton.election import Elector
from singleton.errors import ConfigurationError, SingletonError

__all__ = ["configure", "get_elector", "get_settings", "health", "on_fork", "refuse", "shutdown"]

_log = logging.getLogger("singleton")

_lock = threading.RLock()
_settings: Settings | None = None
#: Set by refuse(): why this process must not campaign with the settings it could otherwise read.
_refusal: ConfigurationError | None = None
_elector: Elector | None = None
_shut_down = False
_exit_hook_registered = False
_fork_callbacks: weakref.WeakSet[Any] = weakref.WeakSet()


def configure(settings: Settings | None = None, **overrides: Any) -> Settings:
    """Set the process-wide settings: a :class:`Settings`, or overrides of :meth:`Settings.from_env`.

    Call it before the first leader-only call. ``configure(ttl=30, key_prefix="myapp/",
    address="consul:8500")`` reads everything else from the environment.

    :raises ConfigurationError: on a bad setting, or when the engine is already running (call
        :func:`shutdown` first).
    """
    global _settings, _shut_down, _refusal
    with _lock:
        if _elector is not None and not _elector.closed:
            raise ConfigurationError(
                "configure() must come before the first leader-only call; the election engine is already "
                "running (call singleton.shutdown() first to reconfigure)"
            )
        if settings is not None:
            settings = require_settings(settings)
        if settings is not None and overrides:
            settings = Settings.from_env(**{**_as_overrides(settings), **overrides})
        _settings = settings if settings is not None else Settings.from_env(**overrides)
        _shut_down = False
        _refusal = None
        configured = _settings
    _signals.install(configured.handle_sigterm)  # SIGTERM hands the keys over (in the main thread only)
    return configured


def refuse(error: ConfigurationError) -> None:
    """Make :func:`get_settings` (and so every leader-only call) raise ``error`` until :func:`configure`.

    For settings that were given but are bad (Django's ``settings.SINGLETON``): the process must not
    fall back on the environment and campaign with settings nobody wrote.
    """
    global _refusal
    with _lock:
        _refusal = error


def _as_overrides(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use when never configured)."""
    global _settings
    with _lock:
        if _refusal is not None:
            raise ConfigurationError(str(_refusal))  # a new one each time: tracebacks do not pile up
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def get_elector() -> Elector:
    """The process-wide elector, created and started on first use.

    :raises SingletonError: after :func:`shutdown` (until :func:`configure`).
    """
    global _elector
    elector = _elector
    if elector is not None and not elector.closed:
        return elector
    with _lock:
        if _shut_down:
            raise SingletonError("singleton was shut down in this process (call configure() to start again)")
        if _elector is None or _elector.closed:
            _elector = Elector(get_settings())
            _register_exit_hook()
        return _elector


def health(tolerance: float | None = None) -> Health:
    """Whether singleton can keep the leadership this process has: for a readiness or liveness endpoint.

    Unhealthy, with one reason per problem, when the election thread is dead or stuck, or when a session
    that holds a key has not been renewed within its interval plus ``tolerance`` seconds (default half
    the interval). Healthy before the first leader-only call, and on a follower. No network call.
    """
    elector = _elector
    if elector is None:
        if _shut_down:
            return Health(False, ("singleton was shut down in this process",))
        return Health(True)
    return elector.health(tolerance)


def shutdown(grace: float | None = None) -> None:
    """Stop campaigning in this process: fire stop tokens, wait up to ``grace`` seconds for running bodies,
    release every key, destroy the session. Safe to call more than once; never raises a backend error.
    """
    global _elector, _shut_down
    with _lock:
        elector, _elector = _elector, None
        _shut_down = True
    if elector is not None:
        elector.close(grace)


def _exit_hook() -> None:
    try:
        shutdown()
    except Exception:  # never turn an interpreter exit into a traceback
        _log.exception("singleton shutdown at exit failed")


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_exit_hook)
            return
        except RuntimeError:  # the interpreter is already shutting down
            pass
    atexit.register(_exit_hook)


def on_fork(owner: Any, callback: Callable[[], None]) -> None:
    """Run ``callback`` in a forked child for as long as ``owner`` lives (decorator handles use this)."""
    owner._singleton_fork_callback = callback
    _fork_callbacks.add(owner)


def _after_fork_in_child() -> None:
    # Every elector of the parent, this one included, is disowned by singleton.election's own hook.
    global _lock, _elector
    _lock = threading.RLock()
    _elector = None
    for owner in list(_fork_callbacks):
        try:
            owner._singleton_fork_callback()
        except Exception:
            _log.exception("after-fork callback failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
