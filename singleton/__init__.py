"""Run a function, a scheduled job or a command on exactly one process of a fleet: the holder of a Consul lock.

::

    from singleton import leader_only, StopToken

    @leader_only(key="reports/nightly", ttl=15)
    def nightly(stop_token: StopToken | None = None) -> int: ...
"""

from singleton._health import Health
from singleton._runtime import configure, get_elector, get_settings, health, shutdown
from singleton._version import __version__
from singleton.config import ConsulSettings, LeaseOverrides, LeaseSpec, Settings
from singleton.decorators import LeaderOnlyBound, LeaderOnlyFunction, LeaderOnlyHandle, leader_only
from singleton.election import AcquireOutcome, AcquireResult, Election, ElectionStatus, Elector, Phase, Role
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
    "AcquireOutcome",
    "AcquireResult",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "ConsulSettings",
    "Election",
    "ElectionStatus",
    "Elector",
    "Health",
    "LeaderOnlyBound",
    "LeaderOnlyFunction",
    "LeaderOnlyHandle",
    "LeadershipLost",
    "LeadershipOutcome",
    "LeaseOverrides",
    "LeaseSpec",
    "NotLeader",
    "Phase",
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
    "health",
    "leader_only",
    "maybe_acquire_leadership",
    "shutdown",
]
