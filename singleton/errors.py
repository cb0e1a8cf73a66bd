"""The exceptions `singleton` raises. Every one derives from :class:`SingletonError`.

::

    SingletonError
    ├── ConfigurationError (ValueError)   bad argument, setting or environment variable
    ├── NotLeader                         a leader-only call on a follower, with on_follower="raise"
    ├── LeadershipLost                    StopToken.raise_if_stopped() after the token fired
    └── BackendError                      the lock service failed; the message says which call
        ├── BackendUnavailable (ConnectionError)   unreachable, timed out, no cluster leader, 5xx
        ├── AccessDenied (PermissionError)         an ACL denied the call; names the rule needed
        ├── SessionInvalidated                     the session is gone (expired, destroyed)
        └── CheckNotFound                          the agent does not hold our health check (fast failover)

Errors of the HTTP layer (``socket``, ``ssl``, ``http.client``) and Consul's refusals are translated
into these in ``singleton.backends.consul`` and its ``_http`` module and nowhere else, always
chained with ``raise ... from exc``.
A decorated call never raises a backend error into the host application: the election thread
catches them, logs them (rate-limited) and shows the last one on the function's ``election``
handle.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendUnavailable",
    "CheckNotFound",
    "ConfigurationError",
    "LeadershipLost",
    "NotLeader",
    "SessionInvalidated",
    "SingletonError",
]


class SingletonError(Exception):
    """Root of every exception this library raises."""


class ConfigurationError(SingletonError, ValueError):
    """A parameter, setting or environment variable is out of range or malformed.

    The message names the parameter, the allowed range and the value given. Raised where the
    mistake is made: at decoration time, in ``configure()``, or when the settings are built.
    """


class NotLeader(SingletonError):
    """A ``@leader_only(on_follower="raise")`` function was called on a process that does not hold its key."""

    def __init__(self, key: str, holder: str | None = None, reason: str | None = None) -> None:
        self.key = key
        self.holder = holder
        self.reason = reason
        detail = f"held by {holder}" if holder else (reason or "not held by this process")
        super().__init__(f"not the leader for {key!r}: {detail}")


class LeadershipLost(SingletonError):
    """Raised by ``StopToken.raise_if_stopped()``: this process no longer holds the key (or soon may not)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"leadership of {key!r} lost: {reason}")


class BackendError(SingletonError):
    """The lock service (Consul, a lock file, ...) failed to do what was asked."""


class BackendUnavailable(BackendError, ConnectionError):
    """The lock service cannot be reached or cannot answer now (refused, timed out, no leader, 5xx)."""


class AccessDenied(BackendError, PermissionError):
    """An ACL denied the call. The message names the key or session and the ACL rule that is needed."""


class SessionInvalidated(BackendError):
    """The session no longer exists: its TTL ran out, or it was destroyed (by us or by an operator)."""


class CheckNotFound(BackendError):
    """The agent does not hold the health check this process registered (fast failover): the agent was
    restarted without it, or the address reaches another agent each time (a load-balanced pool)."""
