"""The election engine against a real Consul agent: several processes, real failures, no mocks."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import singleton
from singleton import Election, Elector, LeaseSpec, Role, Settings, StopToken, leader_only
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings
from singleton.errors import AccessDenied
from singleton.testing import ConsulAgent

from .fleet import Event, Fleet, assert_no_overlap
from .helpers import in_fork

pytestmark = pytest.mark.consul

TTL = 10.0
LOCK_DELAY = LeaseSpec(ttl=TTL).min_lock_delay


def elector_for(settings: ConsulSettings, key_prefix: str, identity: str, lock_delay: float = LOCK_DELAY) -> Elector:
    return Elector(
        Settings(
            consul=settings,
            key_prefix=key_prefix,
            lease=LeaseSpec(ttl=TTL, lock_delay=lock_delay),
            identity=identity,
            watch_wait=5,
        )
    )


@pytest.fixture
def leading(fresh_consul_agent: ConsulAgent, key_prefix: str) -> Iterator[tuple[Election, StopToken]]:
    """This process leads "job" on an agent of the test's own (1 s HTTP timeout); closed afterwards."""
    elector = elector_for(fresh_consul_agent.settings(timeout=1), key_prefix, "faults:1")
    try:
        election = elector.register("job")
        assert election.wait_for_leadership(10)
        token = election.token
        assert token is not None
        yield election, token
    finally:
        elector.close(grace=0)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[list[Fleet]]:
    fleets: list[Fleet] = []
    yield fleets
    for fleet in fleets:
        fleet.stop()


def test_exactly_one_of_three_processes_runs_the_body(
    consul_agent: ConsulAgent,
    key_prefix: str,
    tmp_path: Path,
    fleet_factory: list[Fleet],
    consul_backend: ConsulBackend,
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", extra=["--interval", "0.05"])
    fleet_factory.append(fleet)
    fleet.wait_for(lambda: len(fleet.events("ready")) == 3, 30, "three workers")
    fleet.wait_for(lambda: len(fleet.events("end")) >= 30, 30, "30 runs")
    time.sleep(1.0)
    starts = fleet.events("start")
    assert len({e.pid for e in starts}) == 1, fleet.report()
    assert_no_overlap(fleet.events())
    fences = {e.detail for e in starts}
    assert len(fences) == 1, "one term, one fence"
    # The holder is visible to operators as hostname:pid.
    _, entry = consul_backend.read(key_prefix + "job")
    assert entry is not None
    assert entry.holder is not None
    assert entry.holder.endswith(f":{starts[0].pid}")


def test_graceful_stop_hands_over_at_once(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, fleet_factory: list[Fleet]
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", extra=["--interval", "0.02"])
    fleet_factory.append(fleet)
    fleet.wait_for(lambda: len(fleet.events("end")) >= 5, 30, "a leader")
    (leader,) = fleet.leaders()
    stopped_at = time.time()
    fleet.signal(leader, signal.SIGTERM)
    took = fleet.wait_for(lambda: bool(fleet.leaders(stopped_at) - {leader}), 10, "a new leader")
    assert took < 5, f"graceful handoff took {took:.2f}s (release first: no lock-delay)"
    assert fleet.proc(leader).wait(10) == 0
    assert_no_overlap(fleet.events())


def test_crash_of_the_leader_fails_over_within_the_bound(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, fleet_factory: list[Fleet]
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", extra=["--interval", "0.05"])
    fleet_factory.append(fleet)
    fleet.wait_for(lambda: len(fleet.events("end")) >= 5, 30, "a leader")
    (leader,) = fleet.leaders()
    killed_at = time.time()
    fleet.signal(leader, signal.SIGKILL)
    bound = 2 * TTL + LOCK_DELAY + 0.5
    took = fleet.wait_for(lambda: bool(fleet.leaders(killed_at) - {leader}), bound + 10, "a new leader")
    assert took <= bound + 2, f"crash failover took {took:.1f}s, bound {bound}s"
    new_leaders = fleet.leaders(killed_at) - {leader}
    assert len(new_leaders) == 1
    events = [e for e in fleet.events() if not (e.pid == leader and e.at > killed_at)]
    events.append(Event(killed_at, leader, "end", "killed"))
    assert_no_overlap(events)
    old_fence = max(int(e.detail) for e in fleet.events("start") if e.pid == leader)
    new_fence = min(int(e.detail) for e in fleet.events("start") if e.pid in new_leaders)
    assert new_fence > old_fence, "the fence grows with the new holder"


def test_long_job_sees_its_token_when_an_operator_destroys_the_session(
    consul_agent: ConsulAgent,
    key_prefix: str,
    tmp_path: Path,
    fleet_factory: list[Fleet],
    consul_backend: ConsulBackend,
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", size=1, extra=["--mode", "long"])
    fleet_factory.append(fleet)
    fleet.wait_for(lambda: bool(fleet.events("start")), 30, "the long job")
    backend = consul_backend
    _, entry = backend.read(key_prefix + "job")
    assert entry is not None
    assert entry.session is not None
    destroyed_at = time.time()
    backend.destroy_session(entry.session)  # what `consul session destroy` does
    took = fleet.wait_for(lambda: bool(fleet.events("stopped")), 10, "the stop token")
    assert took < 5
    (stopped,) = fleet.events("stopped")
    assert stopped.fields[1] in ("key_released", "session_gone"), stopped.detail
    # The process campaigns again, waits out the lock-delay, and runs a new term with a higher fence.
    fleet.wait_for(lambda: len(fleet.events("start")) == 2, 20, "a new term")
    first, second = fleet.events("start")
    assert int(second.detail) > int(first.detail)
    assert second.at - destroyed_at >= LOCK_DELAY - 0.1


def test_long_job_sees_its_token_when_an_operator_deletes_the_key(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, fleet_factory: list[Fleet]
) -> None:
    fleet = Fleet(tmp_path, consul_agent.address, key_prefix + "job", size=1, extra=["--mode", "long"])
    fleet_factory.append(fleet)
    fleet.wait_for(lambda: bool(fleet.events("start")), 30, "the long job")
    request = urllib.request.Request(f"{consul_agent.url}/v1/kv/{key_prefix}job", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()
    fleet.wait_for(lambda: bool(fleet.events("stopped")), 10, "the stop token")
    (stopped,) = fleet.events("stopped")
    assert stopped.detail.endswith("key_deleted the key was deleted"), stopped.detail


def test_agent_down_longer_than_the_lease_fires_the_token_before_the_ttl(
    fresh_consul_agent: ConsulAgent, leading: tuple[Election, StopToken]
) -> None:
    election, token = leading
    stopped_at = time.monotonic()
    fresh_consul_agent.stop()
    assert token.wait(TTL + 5)
    took = time.monotonic() - stopped_at
    lease = LeaseSpec(ttl=TTL).lease
    # Not at the first failed renewal, and before Consul could expire the session (TTL).
    assert lease - LeaseSpec(ttl=TTL).renew_interval - 0.5 < took < TTL, took
    assert "lease" in (token.reason or "")
    assert election.status().role is Role.FOLLOWER
    # Consul back (a dev agent comes back empty): the process takes the key again.
    fresh_consul_agent.start()
    assert election.wait_for_leadership(30)
    new = election.token
    assert new is not None
    assert new is not token


def test_short_agent_pause_does_not_cause_a_step_down(
    fresh_consul_agent: ConsulAgent, leading: tuple[Election, StopToken]
) -> None:
    election, token = leading
    with fresh_consul_agent.paused():
        time.sleep(4)  # shorter than the 8 s lease: renewals time out and are retried
    time.sleep(2)
    assert not token.stopped, token.reason
    assert election.token is token


def test_agent_restart_then_leadership_recovered(
    fresh_consul_agent: ConsulAgent, leading: tuple[Election, StopToken]
) -> None:
    election, token = leading
    fresh_consul_agent.restart()  # a dev agent forgets every session and key
    assert token.wait(TTL), "the old term ends: its session is gone"
    assert election.wait_for_leadership(30)
    assert election.token is not token


def test_forked_child_does_not_run_as_leader(consul_agent: ConsulAgent, key_prefix: str) -> None:
    singleton.configure(address=consul_agent.address, key_prefix=key_prefix, ttl=TTL, lock_delay=LOCK_DELAY)
    try:

        @leader_only(key="forked", default="skipped")
        def job() -> str:
            return f"ran in {os.getpid()}"

        assert job() == f"ran in {os.getpid()}"
        parent_token = job.election.token
        assert parent_token is not None
        _, result = in_fork(
            lambda: {
                "inherited_token_stopped": parent_token.stopped,
                "call": job(),
                "holder": job.election.holder,
            }
        )
        assert result["inherited_token_stopped"] is True
        assert result["call"] == "skipped"
        assert result["holder"].endswith(f":{os.getpid()}")
        assert not parent_token.stopped, "the parent keeps its leadership"
        assert job() == f"ran in {os.getpid()}"
    finally:
        singleton.shutdown()


def _acl_agent(binary: str, tmp_path: Path) -> ConsulAgent:
    acl = 'acl { enabled = true, default_policy = "deny", tokens { master = "root-token", agent = "root-token" } }'
    return ConsulAgent(binary, workdir=tmp_path / "acl", extra_args=["-hcl", acl], token="root-token").start()


def _put_json(url: str, body: dict[str, object], token: str) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="PUT", headers={"X-Consul-Token": token}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_acl_denial_names_the_key_and_the_rule_needed(consul_binary: str, tmp_path: Path) -> None:
    agent = _acl_agent(consul_binary, tmp_path)
    try:
        with (
            ConsulBackend(agent.settings()) as anonymous,
            pytest.raises(AccessDenied, match=r'session_prefix "" \{ policy = "write" \}'),
        ):
            anonymous.create_session(name="x", ttl=10, lock_delay=0)
        _put_json(
            f"{agent.url}/v1/acl/policy",
            {"Name": "sessions-only", "Rules": 'session_prefix "" { policy = "write" }'},
            "root-token",
        )
        token = _put_json(f"{agent.url}/v1/acl/token", {"Policies": [{"Name": "sessions-only"}]}, "root-token")
        limited = agent.settings(token=str(token["SecretID"]))
        with ConsulBackend(limited) as backend:
            session = backend.create_session(name="x", ttl=10, lock_delay=0)
            with pytest.raises(AccessDenied, match=r"acquiring key 'reports/nightly'.*key_prefix \"reports/nightly\""):
                backend.acquire("reports/nightly", session, b"x")
        # Through the engine: the call does not run, does not raise, and says why.
        elector = Elector(Settings(consul=limited, identity="acl:1"))
        try:

            @leader_only(key="reports/nightly", elector=elector, default="denied")
            def job() -> str:
                return "ran"

            assert job() == "denied"
            status = job.election.status()
            assert status is not None
            assert 'key_prefix "reports/nightly" { policy = "write" }' in (status.reason or "")
        finally:
            elector.close(grace=0)
    finally:
        agent.stop()
