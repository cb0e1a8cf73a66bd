"""The public API is exactly this: adding or removing a name is a decision, made here."""

from __future__ import annotations

import singleton

EXPECTED = {
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
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(singleton.__all__) == EXPECTED
    assert singleton.__all__ == sorted(singleton.__all__)


def test_every_exported_name_exists_and_belongs_to_the_package() -> None:
    for name in singleton.__all__:
        member = getattr(singleton, name)
        module = getattr(member, "__module__", "singleton")
        assert module.startswith("singleton"), (name, module)


def test_error_tree() -> None:
    assert issubclass(singleton.ConfigurationError, ValueError)
    assert issubclass(singleton.BackendUnavailable, ConnectionError)
    assert issubclass(singleton.AccessDenied, PermissionError)
    for name in ("ConfigurationError", "NotLeader", "LeadershipLost", "BackendError", "SessionInvalidated"):
        assert issubclass(getattr(singleton, name), singleton.SingletonError)
