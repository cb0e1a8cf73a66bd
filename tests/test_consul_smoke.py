"""The harness is real: a dev agent started by the fixtures, reached through the library's own Consul layer."""

from __future__ import annotations

import json
import urllib.request

from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings


def test_session_lock_round_trip(consul_backend: ConsulBackend, key_prefix: str) -> None:
    backend = consul_backend
    key = key_prefix + "smoke"
    session = backend.create_session(name="smoke:1", ttl=10, lock_delay=0)
    info = backend.session_info(session)
    assert info is not None
    assert (info.name, info.ttl, info.lock_delay) == ("smoke:1", 10.0, 0.0)

    first = backend.acquire(key, session, b"smoke:1", flags=7)
    assert first.acquired
    assert first.entry is not None
    assert (first.entry.session, first.entry.holder, first.entry.flags) == (session, "smoke:1", 7)
    assert first.entry.lock_index == 1
    assert first.entry.modify_index > 0

    other = backend.create_session(name="smoke:2", ttl=10, lock_delay=0)
    refused = backend.acquire(key, other, b"smoke:2")
    assert not refused.acquired
    assert refused.entry is not None
    assert refused.entry.session == session
    assert not refused.in_lock_delay

    assert backend.release(key, session, b"smoke:1")
    _, released = backend.read(key)
    assert released is not None
    assert released.session is None
    assert released.modify_index > first.entry.modify_index

    second = backend.acquire(key, other, b"smoke:2")
    assert second.acquired
    assert second.entry is not None
    assert second.entry.lock_index == 2  # a new holder: LockIndex and ModifyIndex both grew
    assert second.entry.modify_index > released.modify_index

    backend.destroy_session(session)
    backend.destroy_session(other)
    assert backend.session_info(session) is None
    _, after = backend.read(key)
    assert after is not None
    assert after.session is None


def test_sessions_carry_no_health_check_that_could_end_them_before_their_ttl(
    consul_settings: ConsulSettings, consul_backend: ConsulBackend
) -> None:
    backend = consul_backend
    session = backend.create_session(name="ttl-only", ttl=10, lock_delay=15)
    with urllib.request.urlopen(f"{consul_settings.address}/v1/session/info/{session}", timeout=5) as response:
        (info,) = json.loads(response.read())
    assert info["NodeChecks"] == []
    assert not info.get("ServiceChecks")
    assert (info["TTL"], info["Behavior"], info["LockDelay"]) == ("10s", "release", 15_000_000_000)
    backend.destroy_session(session)
