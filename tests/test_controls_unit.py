"""Pause, resume and step-down, metrics counts and health: on the memory backend with a fake clock, nothing sleeps."""

from __future__ import annotations

import threading
import time

import pytest

from singleton import Elector, Phase, leader_only
from singleton._controls import (
    PAUSE,
    STEP_DOWN,
    clear_pause,
    parse_pause,
    parse_step_down,
    record_key,
    request_step_down,
    split_record_key,
    write_pause,
)
from singleton._watch import KeyChanged, PrefixWatch
from singleton.backends.base import Acquisition, KeyInfo
from singleton.backends.memory import MemoryBackend
from singleton.errors import BackendUnavailable
from singleton.token import StopCause

from .helpers import FakeClock, Partitionable, memory_elector

KEY = "jobs/report"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_767_225_600.0)


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def pair(backend: MemoryBackend, clock: FakeClock, wall: FakeClock, **kw: object) -> tuple[Elector, Elector]:
    a = memory_elector(backend, clock, identity="host-a:1", wall_clock=wall, **kw)  # type: ignore[arg-type]
    b = memory_elector(backend, clock, identity="host-b:2", wall_clock=wall, **kw)  # type: ignore[arg-type]
    return a, b


def steps(*electors: Elector, times: int = 1) -> None:
    for _ in range(times):
        for elector in electors:
            elector.step()


def holder_session(backend: MemoryBackend) -> str | None:
    return backend.read(KEY)[1].session  # type: ignore[union-attr]


def test_record_keys_are_the_key_and_a_reserved_suffix() -> None:
    assert record_key("app/jobs/x", PAUSE) == "app/jobs/x#pause"
    assert split_record_key("app/jobs/x#step-down") == ("app/jobs/x", STEP_DOWN)
    assert split_record_key("app/jobs/x") is None
    assert split_record_key("app/jobs/x#other") is None


def test_any_value_pauses_and_a_request_without_a_session_is_nobodys() -> None:
    by_hand = parse_pause(KeyInfo(KEY + "#pause", None, b"db migration\x1b[2J", 0, 5, 5, 0))
    assert by_hand.reason == "db migration\\x1b[2J", "text written by hand is the reason, escaped"
    assert by_hand.until is None
    assert "until resumed" in by_hand.describe()
    assert parse_step_down(KeyInfo(KEY + "#step-down", None, b"please", 0, 6, 6, 0)) is None
    odd = parse_step_down(KeyInfo(KEY + "#step-down", None, b'{"session": "s", "for": -3}', 0, 7, 7, 0))
    assert odd is not None
    assert odd.seconds == 10.0, "a duration out of range falls back on the default"


def test_pause_stops_the_holder_keeps_its_key_and_resume_starts_a_new_term(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    a, b = pair(backend, clock, wall)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    first = ea.token
    assert first is not None
    session = holder_session(backend)
    write_pause(backend, KEY, seconds=None, reason="migration", by="ops@bastion", wall=wall)
    steps(a, b)
    assert first.stopped
    assert first.cause is StopCause.PAUSED
    assert first.reason == "paused by ops@bastion until resumed: migration"
    for election in (ea, eb):
        status = election.status()
        assert status.paused
        assert status.phase == Phase.PAUSED.value
        assert status.reason == "paused by ops@bastion until resumed: migration"
        assert not election.is_leader
    assert holder_session(backend) == session, "the paused holder keeps the key: nobody else can start"
    attempts = backend.calls["acquire"]
    for _ in range(30):
        clock.advance(1)
        steps(a, b)
    assert backend.calls["acquire"] == attempts, "a paused campaign makes no attempt"
    assert holder_session(backend) == session, "and its session is renewed"
    assert clear_pause(backend, KEY) is not None
    steps(a, b)
    second = ea.token
    assert second is not None, "the holder leads again at once"
    assert second.fence > first.fence, "a new term, with a new fence"
    assert eb.status().phase == Phase.WATCHING.value
    assert not eb.status().paused


def test_a_pause_for_some_time_ends_by_itself(backend: MemoryBackend, clock: FakeClock, wall: FakeClock) -> None:
    a, b = pair(backend, clock, wall)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    write_pause(backend, KEY, seconds=60, reason=None, by="ops", wall=wall)
    steps(a, b)
    status = eb.status()
    assert status.paused
    assert status.next_attempt_in == pytest.approx(60)
    assert "until 2026-01-01T00:01:00Z" in (status.reason or "")
    for _ in range(59):
        clock.advance(1)
        wall.advance(1)
        steps(a, b)
    assert not ea.is_leader
    clock.advance(1)
    wall.advance(1)
    steps(a, b)
    assert ea.is_leader, "the pause is over: the holder takes a new term"
    assert not eb.status().paused


def test_a_process_that_acquires_before_its_watch_spoke_reads_the_pause_first(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    class BlindWatch(Partitionable):
        """The prefix watch fails; the read of the key's own records works."""

        def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
            if not prefix.endswith("#"):
                raise BackendUnavailable("the watch is slow today")
            return super().watch_prefix(prefix, index, wait)

    write_pause(backend, KEY, seconds=None, reason="frozen", by="ops", wall=wall)
    a = memory_elector(BlindWatch(backend), clock, wall_clock=wall)
    election = a.register(KEY)
    a.step()
    assert election.phase is Phase.PAUSED
    assert election.token is None, "no term: the pause was read before one started"
    assert holder_session(backend) is not None, "the key is held, as by a paused holder"


def test_step_down_waits_for_running_bodies_then_hands_over_and_stays_out(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    a, b = pair(backend, clock, wall, shutdown_grace=5)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    _, entry = backend.read(KEY)
    assert entry is not None
    body = ea.body()
    token = body.__enter__()
    request_step_down(backend, KEY, entry, seconds=30, by="ops", wall=wall)
    steps(a, b)
    assert token.stopped
    assert token.cause is StopCause.STEPPED_DOWN
    assert ea.phase is Phase.STEPPING_DOWN
    assert backend.read(KEY + "#step-down")[1] is None, "the request is consumed"
    assert holder_session(backend) == entry.session, "held while a body runs"
    clock.advance(2)
    steps(a, b)
    assert holder_session(backend) == entry.session
    assert not eb.is_leader
    body.__exit__(None, None, None)
    clock.advance(0.02)
    steps(a, b)
    assert eb.is_leader, "released once the body ended: the other process leads"
    assert ea.phase is Phase.STEPPED_DOWN
    assert ea.status().next_attempt_in == pytest.approx(30, abs=0.1)
    eb.resign()
    for _ in range(29):
        clock.advance(1)
        steps(b, a)
    assert not ea.is_leader, "out of the campaign for the time asked"
    clock.advance(1)
    steps(a)
    assert ea.is_leader, "then back in it"


def test_a_body_that_ignores_its_token_keeps_the_key_held_past_the_grace(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    a, b = pair(backend, clock, wall, shutdown_grace=1)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    _, entry = backend.read(KEY)
    assert entry is not None
    with ea.body():
        request_step_down(backend, KEY, entry, seconds=10, by="ops", wall=wall)
        for _ in range(40):
            clock.advance(0.25)
            steps(a, b)
        assert holder_session(backend) == entry.session, "never two runs at once"
        assert "past the 1s grace keep the key held" in (ea.status().reason or "")
    clock.advance(0.25)
    steps(a, b)
    assert eb.is_leader


def test_a_request_for_another_session_is_left_alone(backend: MemoryBackend, clock: FakeClock, wall: FakeClock) -> None:
    a, b = pair(backend, clock, wall)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    _, entry = backend.read(KEY)
    assert entry is not None
    stale = KeyInfo(KEY, "an-earlier-holders-session", b"old:1", 0, 1, 1, 1)
    request_step_down(backend, KEY, stale, seconds=10, by="ops", wall=wall)
    steps(a, b, times=2)
    assert ea.is_leader
    assert eb.phase is Phase.WATCHING
    assert backend.read(KEY + "#step-down")[1] is not None, "not ours to consume"


def test_step_down_while_paused_releases_and_the_pause_still_holds_after(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    a, b = pair(backend, clock, wall)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    _, entry = backend.read(KEY)
    assert entry is not None
    write_pause(backend, KEY, seconds=None, reason=None, by="ops", wall=wall)
    steps(a, b)
    request_step_down(backend, KEY, entry, seconds=5, by="ops", wall=wall)
    steps(a, b)
    assert holder_session(backend) is None, "released"
    assert eb.phase is Phase.PAUSED, "and nobody takes it while paused"
    clock.advance(5)
    steps(a, b)
    assert ea.phase is Phase.PAUSED, "back from stepping down: still paused"


def test_counts_for_metrics(backend: MemoryBackend, clock: FakeClock, wall: FakeClock) -> None:
    link = Partitionable(backend)
    a = memory_elector(link, clock, identity="host-a:1", wall_clock=wall)
    b = memory_elector(backend, clock, identity="host-b:2", wall_clock=wall)

    @leader_only(key=KEY, elector=a)
    def job() -> int:
        return 1

    @leader_only(key=KEY, elector=b)
    def same_job() -> int:
        return 1

    job.election.start()
    a.step()
    assert [job() for _ in range(3)] == [1, 1, 1]
    same_job.election.start()
    b.step()
    assert [same_job() for _ in range(2)] == [None, None]
    ca, cb = a.elections[0]._campaign, b.elections[0]._campaign
    assert (ca.runs, ca.skipped, cb.runs, cb.skipped) == (3, 0, 0, 2)
    assert ca.terms_won == 1
    write_pause(backend, KEY, seconds=None, reason=None, by="ops", wall=wall)
    steps(a, b)
    clear_pause(backend, KEY)
    for _ in range(6):
        clock.advance(1)
        steps(a, b)
    link.partitioned = True
    for _ in range(130):
        clock.advance(0.1)
        a.step()
    assert ca.terms_won == 2
    assert dict(ca.terms_ended) == {"paused": 1, "lease_expired": 1}
    errors = a.stats.errors()
    assert errors[("renew", "unavailable")] >= 3
    assert a.stats.renewals.count == 1, "the renewal that landed before the partition"
    assert a.stats.renewals.cumulative()[-1] == (float("inf"), 1)


def test_health_follows_the_renewals_of_a_holding_session(backend: MemoryBackend, clock: FakeClock) -> None:
    link = Partitionable(backend)
    a = memory_elector(link, clock)
    a.register(KEY)
    a.step()
    health = a.health()
    assert health.ok
    assert health.leading == (KEY,)
    assert str(health) == "ok"
    link.partitioned = True
    clock.advance(7.4)  # ttl 15: a renewal every 5 s, late after 7.5 s
    a.step()
    assert a.health().ok
    clock.advance(0.2)
    a.step()
    health = a.health()
    assert not health.ok
    assert "no renewal of session" in health.reasons[0]
    assert repr(KEY) in health.reasons[0]
    assert a.health(tolerance=5).ok, "a tolerance of one's own"
    link.partitioned = False
    clock.advance(2)
    a.step()
    assert a.health().ok
    a.close(grace=0)
    assert not a.health().ok
    assert "closed" in str(a.health())


def test_health_of_a_follower_does_not_depend_on_consul(backend: MemoryBackend, clock: FakeClock) -> None:
    a, link = memory_elector(backend, clock), Partitionable(backend)
    b = memory_elector(link, clock, identity="host-b:2")
    a.register(KEY)
    b.register(KEY)
    steps(a, b)
    link.partitioned = True
    clock.advance(20)
    b.step()
    assert b.health().ok, "it holds nothing: restarting it would not help"


def test_the_watch_reports_a_missing_record_once_not_at_every_index(backend: MemoryBackend) -> None:
    records = [KEY + "#pause", KEY + "#step-down"]
    watch = PrefixWatch("jobs/", backend, lambda: [KEY, *records], 60)
    _, first = watch.poll(0)
    assert {c.full_key for c in first} == {KEY, *records}, "each key is reported when first watched"
    session = backend.create_session(name="x", ttl=10, lock_delay=0)
    assert backend.acquire(KEY, session, b"x:1").acquired
    _, changes = watch.poll(0)
    assert [c.full_key for c in changes] == [KEY], "the index moved; the missing records did not change"
    backend.put(records[0], b"why")
    _, changes = watch.poll(0)
    assert [(c.full_key, c.entry is not None) for c in changes] == [(records[0], True)]


def test_health_sees_an_election_thread_that_does_not_come_back() -> None:
    from singleton.config import ConsulSettings

    release = threading.Event()
    a = memory_elector(MemoryBackend(), inline=False, consul=ConsulSettings(timeout=0.1))
    try:
        election = a.register(KEY, start=False)
        election.add_listener(lambda e: release.wait(10))  # a listener that blocks the election thread
        a.start()
        deadline = time.monotonic() + 5
        while a.health().ok and time.monotonic() < deadline:
            time.sleep(0.05)
        health = a.health()
        assert not health.ok
        assert "the election thread has not come back from a step" in health.reasons[0]
        release.set()
        deadline = time.monotonic() + 5
        while not a.health().ok and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.health().ok
    finally:
        release.set()
        a.close(grace=0)


def test_an_attempt_answered_after_a_pause_came_gives_the_key_back(
    backend: MemoryBackend, clock: FakeClock, wall: FakeClock
) -> None:
    a, b = pair(backend, clock, wall)
    ea, eb = a.register(KEY), b.register(KEY)
    steps(a, b)
    ea.resign()
    steps(a)
    # What b's watch thread does when it sees the key freed: the change (marked), then the attempt.
    campaign, session = eb._campaign, eb._campaign.keeper.id
    assert session is not None
    index, entry = backend.read(KEY)
    campaign.on_key_changed(KeyChanged(KEY, index, entry, attempting=True))
    outcome = campaign.acquire_io(session)
    assert isinstance(outcome, Acquisition)
    assert outcome.acquired
    # ... and a pause lands before the election thread judges the answer.
    write_pause(backend, KEY, seconds=None, reason=None, by="ops", wall=wall)
    _, record = backend.read(KEY + "#pause")
    assert record is not None
    campaign.controls.on_record(PAUSE, KeyChanged(KEY + "#pause", record.modify_index, record))
    assert eb.phase is Phase.PAUSED
    campaign.on_attempted(session, outcome)
    assert holder_session(backend) is None, "given back: nobody runs it, and no key is held unknowingly"
    assert eb.token is None
