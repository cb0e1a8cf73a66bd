"""Fast failover (``check_ttl``) against a real agent: a crashed holder replaced in seconds, never early."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from singleton import Elector, LeaseSpec, Settings
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings
from singleton.errors import AccessDenied
from singleton.testing import ConsulAgent

from .fleet import Fleet, assert_no_overlap
from .helpers import ROOT_TOKEN, acl_agent, acl_token

TTL = 10.0
CHECK_TTL = 2.0
SPEC = LeaseSpec(ttl=TTL, check_ttl=CHECK_TTL)
FAST = ["--ttl", str(TTL), "--check-ttl", str(CHECK_TTL)]


def leader_of(fleet: Fleet, since: float = 0.0) -> int:
    fleet.wait_for(lambda: bool(fleet.leaders(since)), 30, "a leader")
    (leader,) = fleet.leaders(since)
    return leader


@pytest.mark.consul
def test_a_killed_holder_is_replaced_within_check_ttl_and_lock_delay(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, fleets: list[Fleet]
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", extra=FAST)
    fleets.append(fleet)
    leader = leader_of(fleet)
    time.sleep(1.0)
    killed_at = fleet.signal(leader, signal.SIGKILL)
    took = fleet.wait_for(lambda: bool(fleet.leaders(killed_at)), 30, "a new leader")
    # The check goes critical check_ttl after its last feed, Consul ends the session, the lock-delay
    # runs (2 s for check_ttl 2), then a watch sees the release. Generous: this machine is shared.
    assert took < CHECK_TTL + SPEC.min_lock_delay + 4, f"{took:.1f}s: not the {2 * TTL:g}s of a session expiry"
    assert_no_overlap(fleet.events())


@pytest.mark.consul
def test_a_holder_frozen_past_its_check_has_stopped_before_the_next_one_starts(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, fleets: list[Fleet]
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", extra=[*FAST, "--mode", "long"])
    fleets.append(fleet)
    leader = leader_of(fleet)
    frozen_at = fleet.signal(leader, signal.SIGSTOP)
    try:
        fleet.wait_for(lambda: bool(fleet.leaders(frozen_at)), 30, "a new leader while the old one is frozen")
    finally:
        fleet.signal(leader, signal.SIGCONT)
    fleet.wait_for(lambda: any(e.pid == leader for e in fleet.events("stopped")), 10, "the old leader's token")
    (stopped,) = [e for e in fleet.events("stopped") if e.pid == leader]
    lease_ended = float(stopped.fields[0])
    (new_start,) = [e for e in fleet.events("start") if e.at >= frozen_at]
    # Whichever thread noticed first after SIGCONT named the cause; what matters is when the lease ended.
    assert stopped.fields[1] in ("lease_expired", "key_released", "session_gone"), stopped.detail
    assert lease_ended < new_start.at, "its leadership had ended by its own clock before the other began"
    assert new_start.at - lease_ended >= SPEC.min_lock_delay - SPEC.lease - 0.1, "with the lock-delay's margin"


@pytest.mark.consul
def test_fast_mode_needs_the_service_rule_and_says_so(consul_binary: str, tmp_path: Path) -> None:
    agent = acl_agent(consul_binary, tmp_path / "acl")
    try:
        token = acl_token(agent, 'session_prefix "" { policy = "write" }\nkey_prefix "" { policy = "write" }')
        elector = Elector(
            Settings(consul=agent.settings(token=token), lease=SPEC, identity="fast:1", startup_timeout=5)
        )
        try:
            election = elector.register("fast/job")
            assert election.wait_settled(10)
            status = election.status()
            assert not status.is_leader
            assert isinstance(status.error, AccessDenied)
            assert 'service "singleton" { policy = "write" }' in str(status.error)
            assert token not in (status.reason or "")
        finally:
            elector.close(grace=0)
        allowed = acl_token(
            agent,
            'session_prefix "" { policy = "write" }\nkey_prefix "" { policy = "write" }\n'
            'service "singleton" { policy = "write" }',
        )
        elector = Elector(Settings(consul=agent.settings(token=allowed), lease=SPEC, identity="fast:2"))
        try:
            assert elector.register("fast/job").wait_for_leadership(10), "with that rule, it leads"
        finally:
            elector.close(grace=0)
        assert not [s for s in _services(agent) if s.startswith("singleton-")], "and it left nothing behind"
    finally:
        agent.stop()


def _services(agent: ConsulAgent) -> list[str]:
    request = urllib.request.Request(f"{agent.url}/v1/agent/services", headers={"X-Consul-Token": ROOT_TOKEN})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return list(json.loads(answer.read()))


@pytest.mark.consul
def test_the_check_is_registered_fed_and_gone_after_shutdown(consul_agent: ConsulAgent, key_prefix: str) -> None:
    elector = Elector(Settings(consul=ConsulSettings(port=consul_agent.http_port), key_prefix=key_prefix, lease=SPEC))
    election = elector.register("job")
    try:
        assert election.wait_for_leadership(10)
        keeper = election._campaign.keeper
        assert keeper.fast
        session = election.status().session
        assert session is not None
        with ConsulBackend(ConsulSettings(port=consul_agent.http_port)) as backend:
            info = backend.session_info(session)
            assert info is not None
            assert info.lock_delay == SPEC.min_lock_delay == 2.0
        assert keeper.service_id in _services(consul_agent)
        time.sleep(3 * CHECK_TTL)  # fed all along: still leading
        assert election.is_leader
    finally:
        elector.close(grace=0)
    assert keeper.service_id not in _services(consul_agent), "deregistered after the session was destroyed"
