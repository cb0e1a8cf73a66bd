"""Run a function, a scheduled job or a command on exactly one process of a fleet: the holder of a Consul lock.

::

    from singleton import leader_only, StopToken

    @leader_only(key="reports/nightly", ttl=15)
    def nightly(stop_token: StopToken | None = None) -> int: ...
"""

from singleton._runtime import configure, get_elector, get_settings, shutdown
from singleton._version import __version__
from singleton.config import ConsulSettings, LeaseSpec, Settings
from singleton.decorators import LeaderOnlyFunction, LeaderOnlyHandle, leader_only
from singleton.election import Election, ElectionStatus, Elector, Role
from singleton.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    LeadershipLost,
    NotLeader,
    SessionInvalidated,
    SingletonError,
)
from singleton.goapi import LeadershipOutcome, maybe_acquire_leadership
from singleton.token import StopCause, StopToken, current_token

__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "ConsulSettings",
    "Election",
    "ElectionStatus",
    "Elector",
    "LeaderOnlyFunction",
    "LeaderOnlyHandle",
    "LeadershipLost",
    "LeadershipOutcome",
    "LeaseSpec",
    "NotLeader",
    "Role",
    "SessionInvalidated",
    "Settings",
    "SingletonError",
    "StopCause",
    "StopToken",
    "__version__",
    "configure",
    "current_token",
    "get_elector",
    "get_settings",
    "leader_only",
    "maybe_acquire_leadership",
    "shutdown",
]
