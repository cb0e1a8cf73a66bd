"""Run a function, a scheduled job or a command on exactly one process of a fleet: the holder of a Consul lock."""

from singleton._version import __version__
from singleton.config import ConsulSettings, LeaseSpec, Settings
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

__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "ConsulSettings",
    "LeadershipLost",
    "LeaseSpec",
    "NotLeader",
    "SessionInvalidated",
    "Settings",
    "SingletonError",
    "__version__",
]
