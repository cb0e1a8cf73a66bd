"""Every state transition of the election engine, on the memory backend with a fake clock: nothing sleeps."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from singleton._watch import PrefixWatch
from singleton.backends.base import Acquisition, KeyInfo
from singleton.backends.memory import MemoryBackend
from singleton.config import Settings
from singleton.election import Election, Elector, Phase, Role
from singleton.errors import BackendUnavailable, ConfigurationError
from singleton.token import StopCause, StopToken

from .helpers import FakeClock, Partitionable, memory_elector

KEY = "jobs/report"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def two_nodes(backend: MemoryBackend, clock: FakeClock, **kw: object) -> tuple[Elector, Elector, Partitionable]:
    link_a = Partitionable(backend)
    a = memory_elector(link_a, clock, identity="host-a:1", **kw)  # type: ignore[arg-type]
    b = memory_elector(backend, clock, identity="host-b:2", **kw)  # type: ignore[arg-type]
    return a, b, link_a


def step_until_taken(
    clock: FakeClock, a: Elector, b: Elector, taker: Election, token: StopToken, *, limit: float = 10.0
) -> tuple[float | None, float | None]:
    """Step both electors 50 ms at a time until ``taker`` leads (at most ``limit`` s): when the holder's
    ``token`` fired, and when the key was taken (None for what did not happen)."""
    fired_at = taken_at = None
    for _ in range(round(limit / 0.05)):
        clock.advance(0.05)
        if fired_at is None and token.stopped:
            fired_at = clock.now
        a.step()
        b.step()
        if taker.is_leader:
            taken_at = clock.now
            break
    return fired_at, taken_at


def test_first_step_acquires_a_free_key(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    assert election.role is Role.STARTING
    a.step()
    assert election.is_leader
    status = election.status()
    assert status.role is Role.LEADER
    assert status.holder == "host-a:1"
    _, entry = backend.read(KEY)
    assert entry is not None
    assert entry.holder == "host-a:1"
    assert entry.session == status.session
    assert election.token is not None
    assert election.token.fence == entry.modify_index == status.fence
    assert status.lease_remaining == pytest.approx(12.0)  # ttl 15 - margin 3
    assert [s.name for s in backend.sessions()] == ["host-a:1"]


def test_second_process_follows_and_knows_the_holder(backend: MemoryBackend, clock: FakeClock) -> None:
    a, b, _ = two_nodes(backend, clock)
    a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    assert not eb.is_leader
    assert eb.token is None
    status = eb.status()
    assert status.role is Role.FOLLOWER
    assert status.holder == "host-a:1"
    assert status.reason == "held by host-a:1"
    attempts = backend.calls["acquire"]
    for _ in range(5):
        clock.advance(1)
        b.step()
    assert backend.calls["acquire"] == attempts, "a follower must not poll the lock"


def test_renews_every_third_of_the_ttl_and_extends_the_lease(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    assert a.step() == pytest.approx(5.0)  # the next thing due is the renewal at ttl / 3
    clock.advance(4.9)
    a.step()
    assert backend.calls["renew_session"] == 0
    clock.advance(0.1)
    a.step()
    assert backend.calls["renew_session"] == 1
    assert election.status().lease_remaining == pytest.approx(12.0)


def test_outage_shorter_than_the_lease_changes_nothing(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    link.partitioned = True
    for _ in range(100):  # 10 s of retries at most every 2 s, short of the 12 s lease
        clock.advance(0.1)
        a.step()
    assert election.is_leader
    assert backend.calls["renew_session"] == 0
    link.partitioned = False
    clock.advance(1.0)
    a.step()
    assert election.is_leader
    assert election.token is token, "the same term goes on"
    assert not token.stopped
    assert election.status().lease_remaining == pytest.approx(12.0)


def test_token_fires_when_the_lease_runs_out_even_without_the_thread(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    link.partitioned = True
    clock.advance(11.999)
    assert not token.stopped
    clock.advance(0.001)
    # No step(): the token itself sees the lease end, 3 s before Consul could expire the session.
    assert token.stopped
    assert token.reason is not None
    assert "lease" in token.reason
    assert not election.is_leader
    a.step()
    assert election.status().role is Role.FOLLOWER
    assert "lease" in (election.status().reason or "")


def test_leadership_comes_back_when_the_session_survived_the_outage(backend: MemoryBackend, clock: FakeClock) -> None:
    a, b, link = two_nodes(backend, clock)
    election = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    first = election.token
    assert first is not None
    link.partitioned = True
    clock.advance(13)
    a.step()
    assert first.stopped
    link.partitioned = False  # back before the session's 15 s TTL ran out
    clock.advance(0.5)
    a.step()
    a.step()
    assert election.is_leader
    second = election.token
    assert second is not None
    assert second is not first
    assert first.stopped, "a fired token never comes back"
    assert second.fence > first.fence
    b.step()
    assert not eb.is_leader


def test_after_a_long_partition_the_other_node_waits_out_the_lock_delay_exactly(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    a, b, link = two_nodes(backend, clock, lock_delay=13)
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    assert ea.is_leader
    link.partitioned = True
    lost_at = None
    released_at = None
    for _ in range(400):
        clock.advance(0.1)
        a.step()
        b.step()
        if lost_at is None and not ea.is_leader:
            lost_at = clock.now
        if released_at is None and eb.status().holder is None:
            released_at = clock.now
        if eb.is_leader:
            break
    assert lost_at is not None
    assert released_at is not None
    assert eb.is_leader
    taken_at = clock.now
    start = 1000.0
    assert lost_at == pytest.approx(start + 12.0, abs=0.11)  # the lease: ttl 15 - margin 3
    assert released_at == pytest.approx(start + 15.0, abs=0.11)  # the session TTL (expiry_factor 1)
    assert taken_at - released_at == pytest.approx(13.0 + 0.05, abs=0.11)  # lock-delay + slack, no poll
    assert backend.calls["acquire"] <= 4, "no coarse polling through the lock-delay"
    # A comes back: its session is gone, it follows the new holder.
    link.partitioned = False
    clock.advance(1)
    a.step()
    a.step()
    assert not ea.is_leader
    assert ea.status().holder == "host-b:2"


def test_operator_destroying_the_session_fires_the_token(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock, lock_delay=13)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    session = election.status().session
    assert session is not None
    backend.invalidate_session(session)
    a.step()
    assert token.stopped
    assert "session invalidated" in (token.reason or "") or "released by Consul" in (token.reason or "")
    assert not election.is_leader
    # It campaigns again with a new session, after the lock-delay its old session left behind.
    clock.advance(13.1)
    a.step()
    a.step()
    assert election.is_leader
    assert election.status().session != session


def test_operator_deleting_the_key_fires_the_token_and_a_new_term_begins(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    backend.delete(KEY)
    a.step()
    assert token.stopped
    assert token.reason == "the key was deleted"
    a.step()
    assert election.is_leader
    new = election.token
    assert new is not None
    assert new.fence > token.fence


def test_renewal_answering_404_ends_the_term(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    session = election.status().session
    assert session is not None
    backend.invalidate_session(session)
    clock.advance(5)
    a._poll_watches = lambda: None  # type: ignore[method-assign]  # only the renewal may notice
    a.step()
    assert token.stopped
    assert "session invalidated" in (token.reason or "")


def test_graceful_close_hands_over_without_lock_delay(backend: MemoryBackend, clock: FakeClock) -> None:
    a, b, _ = two_nodes(backend, clock)
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    token = ea.token
    assert token is not None
    a.close(grace=0)
    assert token.stopped
    assert token.reason == "shutting down"
    assert backend.sessions()
    assert all(s.name != "host-a:1" for s in backend.sessions())
    b.step()
    assert eb.is_leader, "a released key is free at once: no lock-delay after a release"
    _, entry = backend.read(KEY)
    assert entry is not None
    assert entry.holder == "host-b:2"


def test_resign_releases_and_stops_campaigning(backend: MemoryBackend, clock: FakeClock) -> None:
    a, b, _ = two_nodes(backend, clock)
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    token = ea.token
    assert token is not None
    ea.resign()
    assert token.stopped
    a.step()
    assert ea.status().role is Role.RESIGNED
    b.step()
    assert eb.is_leader
    b.close(grace=0)
    a.step()
    assert not ea.is_leader, "a resigned election does not take the key back"
    ea.campaign()
    a.step()
    assert ea.is_leader


def test_lock_delay_unseen_release_retries_after_own_lock_delay(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock, identity="host-a:1", lock_delay=13)
    a.register(KEY)
    a.step()
    session = a.status()[0].session
    assert session is not None
    backend.invalidate_session(session)  # the key is free, inside a 13 s lock-delay
    a.close(grace=0)
    b = memory_elector(backend, clock, identity="host-b:2", lock_delay=13)
    eb = b.register(KEY)
    b.step()
    assert not eb.is_leader
    assert "lock-delay; next attempt in 13.05s" in (eb.status().reason or "")
    assert eb.status().phase == "lock_delay"
    clock.advance(5)
    assert b.step() == pytest.approx(5.0)  # renewed at 5 s; the next renewal (10 s) comes first
    clock.advance(5)
    assert b.step() == pytest.approx(3.05)  # renewed at 10 s; the retry is next
    clock.advance(3.0)
    b.step()
    assert not eb.is_leader
    clock.advance(0.05)
    b.step()
    assert eb.is_leader


def test_keys_share_one_session_and_one_renewal(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    elections = [a.register(f"jobs/{i}") for i in range(20)]
    a.step()
    assert all(e.is_leader for e in elections)
    assert len(backend.sessions()) == 1
    clock.advance(5)
    a.step()
    assert backend.calls["renew_session"] == 1


def test_a_key_with_other_lease_settings_gets_its_own_session(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    a.register("jobs/a")
    a.register("jobs/b", ttl=60)
    a.step()
    assert sorted(s.ttl or 0 for s in backend.sessions()) == [15, 60]


def test_registering_a_key_twice_with_other_settings_is_refused(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    assert a.register(KEY) is a.register(KEY)
    with pytest.raises(ConfigurationError, match=r"already campaigned for with ttl=15.*got ttl=30"):
        a.register(KEY, ttl=30)


def test_backend_down_from_the_start_settles_as_follower_with_the_reason(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    backend.set_down(True)
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    delay = a.step()
    assert election.wait_settled(0)
    assert not election.is_leader
    status = election.status()
    assert status.role is Role.FOLLOWER
    assert "memory backend is down" in (status.reason or "")
    assert 0.3 < delay <= 0.7  # capped backoff, not a tight loop
    attempts = backend.calls["create_session"]
    for _ in range(60):
        clock.advance(1)
        a.step()
    assert backend.calls["create_session"] - attempts <= 15, "backoff is capped at about 5 s"
    backend.set_down(False)
    clock.advance(5)
    a.step()
    assert election.is_leader


def test_a_fired_token_is_not_revived_by_a_late_renewal(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    clock.advance(5)  # a renewal is due ...
    link.partitioned = True
    a.step()
    clock.advance(8)  # ... and the lease (12 s) runs out before one lands
    link.partitioned = False
    assert token.stopped
    a.step()
    assert token.stopped
    assert election.is_leader
    assert election.token is not token


def test_acquisition_value_and_flags_identify_the_holder(backend: MemoryBackend, clock: FakeClock) -> None:
    a = Elector(
        memory_elector(backend, clock).settings,
        backend=backend,
        clock=clock,
        wall_clock=lambda: 1_700_000_000.5,
        watch="inline",
    )
    a.register(KEY)
    a.step()
    _, entry = backend.read(KEY)
    assert entry is not None
    assert entry.value == b"host-a:1"
    assert entry.flags == 1_700_000_000_500


def test_next_due_tracks_renewals_and_lease(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock)
    a.register(KEY)
    a.step()
    link.partitioned = True
    clock.advance(5)
    delay = a.step()
    assert 0 < delay <= 0.3  # renewal retried soon
    clock.advance(6.9)
    delay = a.step()
    assert delay <= 0.1 + 1e-9  # and never later than the lease deadline (at 12 s)


def test_listeners_hear_every_change_of_leadership(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    heard: list[bool] = []
    election.add_listener(lambda e: heard.append(e.is_leader))
    election.add_listener(lambda e: 1 / 0)  # logged, and the others still hear
    a.step()
    backend.delete(KEY)
    a.step()
    a.step()
    a.close(grace=0)
    assert heard == [True, False, True, False]


def test_session_name_can_differ_from_the_identity(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock, session_name="reports-service")
    a.register(KEY)
    a.step()
    assert [s.name for s in backend.sessions()] == ["reports-service"]
    _, entry = backend.read(KEY)
    assert entry is not None
    assert entry.holder == "host-a:1"


class Scripted(Partitionable):
    """Answers watches from a script, to put the watcher in the races a real agent allows."""

    def __init__(self, inner: MemoryBackend, answers: list[tuple[int, list[KeyInfo]]]) -> None:
        super().__init__(inner)
        self.answers = answers
        self.armed = False

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        if not self.armed:
            return super().watch_prefix(prefix, index, wait)
        return self.answers.pop(0)


def test_watcher_reports_a_key_created_and_deleted_between_two_answers(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    # The watcher saw the key missing at index 2; the holder acquired it (index 3) and an operator
    # deleted it (index 4) before the next answer, which shows it missing again. It must still post.
    scripted = Scripted(backend, [(2, []), (4, [])])
    a = memory_elector(scripted, clock)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    a._watch_mode = "thread"  # from here, consume only what the watch below posts: no inline reads
    scripted.armed = True
    watch = PrefixWatch(KEY, scripted, lambda: [KEY], 60)
    index, changes = watch.poll(0)
    assert index == 2
    assert [c.entry for c in changes] == [None]
    backend.delete(KEY)
    index, changes = watch.poll(2)
    assert index == 4
    assert len(changes) == 1, "the key was missing before and after, but the index moved: a change"
    for change in changes:
        a._post(change)
    a.step()
    assert token.stopped
    assert token.reason == "the key was deleted"


def test_with_a_key_prefix_one_blocking_query_watches_every_key() -> None:
    backend = MemoryBackend()
    a = memory_elector(backend, identity="prefix:1", inline=False, key_prefix="app")
    try:
        elections = [a.register(f"jobs/{i}") for i in range(20)]
        for election in elections:
            assert election.wait_for_leadership(5)
        assert backend.calls["watch"] == 0
        assert 1 <= backend.calls["watch_prefix"] <= 25  # one query, answered again on each change
        assert len(a._watches.threads) == 1
        token = elections[7].token
        assert token is not None
        backend.delete("app/jobs/7")
        assert token.wait(5)
        assert token.reason == "the key was deleted"
        assert all(e.is_leader for e in elections[:7] + elections[8:])
        assert elections[7].wait_for_leadership(5), "and it is taken again"
    finally:
        a.close(grace=0)


def test_each_loss_tells_its_cause(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock, lock_delay=13)
    election = a.register(KEY)
    a.step()
    causes: list[StopCause | None] = []

    def lose(action: Callable[[], object], heal: Callable[[], object] = lambda: None) -> None:
        token = election.token
        assert token is not None
        action()
        for _ in range(200):
            if token.stopped:
                break
            clock.advance(0.1)
            a.step()
        causes.append(token.cause)
        heal()
        for _ in range(200):  # and lead again (after a lock-delay, when there is one)
            if election.is_leader:
                return
            clock.advance(0.1)
            a.step()

    lose(lambda: backend.delete(KEY))
    lose(lambda: backend.invalidate_session(election.status().session or ""))
    lose(lambda: setattr(link, "partitioned", True), heal=lambda: setattr(link, "partitioned", False))
    lose(election.resign)
    assert causes == [StopCause.KEY_DELETED, StopCause.KEY_RELEASED, StopCause.LEASE_EXPIRED, StopCause.RESIGNED]


def test_status_tells_the_current_error_and_the_lock_delay(backend: MemoryBackend, clock: FakeClock) -> None:
    backend.set_down(True)
    a = memory_elector(backend, clock, lock_delay=13)
    election = a.register(KEY)
    a.step()
    status = election.status()
    assert isinstance(status.error, BackendUnavailable)
    assert not status.in_lock_delay
    backend.set_down(False)
    clock.advance(5)
    a.step()
    status = election.status()
    assert status.is_leader
    assert status.error is None
    assert status.last_error is not None, "the history stays"
    backend.invalidate_session(status.session or "")
    a.step()  # the loss is seen; the old session is found gone
    a.step()  # a new session; the key is inside the old one's lock-delay
    status = election.status()
    assert not status.is_leader
    assert status.error is None
    assert status.in_lock_delay
    clock.advance(13.1)
    a.step()
    assert not election.status().in_lock_delay


def test_close_gives_up_the_network_after_the_first_unreachable_call(backend: MemoryBackend, clock: FakeClock) -> None:
    a, _, link = two_nodes(backend, clock)
    for i in range(10):
        a.register(f"jobs/{i}")
    a.step()
    link.partitioned = True
    before = sum(backend.calls.values())
    link_calls: list[str] = []
    original = link._check

    def counting_check() -> None:
        link_calls.append("call")
        original()

    link._check = counting_check  # type: ignore[method-assign]
    a.close(grace=0)
    assert len(link_calls) == 1, "one release found the backend down; nothing more was tried"
    assert sum(backend.calls.values()) == before


class Slow(Partitionable):
    """Every acquisition takes a second of the fake clock, as against an overloaded agent."""

    def __init__(self, inner: MemoryBackend, clock: FakeClock) -> None:
        super().__init__(inner)
        self.clock = clock

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        self.clock.advance(1.0)
        return super().acquire(key, session_id, value, flags)


def test_a_long_run_of_attempts_does_not_push_the_renewal_past_the_lease(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    a = memory_elector(Slow(backend, clock), clock)
    elections = [a.register(f"jobs/{i}") for i in range(30)]  # 30 s of attempts in one step
    a.step()
    assert all(e.is_leader for e in elections[:5]), "the first terms survived the slow run"
    assert backend.calls["renew_session"] >= 5, "renewed between attempts, every ttl/3"


# -- lock-delays replayed by restarted servers, sessions ended early, shutdown -------------------------


def test_a_replayed_lock_delay_on_our_own_key_does_not_strand_the_fleet(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    # Every server was down longer than the lease; restarted from their data, they replay an old
    # invalidation of the key, so Consul refuses to re-acquire the key our surviving session holds.
    a, b, link = two_nodes(backend, clock, lock_delay=13)
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    first = ea.token
    session = ea.status().session
    assert first is not None
    assert session is not None
    link.partitioned = True
    clock.advance(12.5)  # past the 12 s lease, before the 15 s TTL: the session survives
    a.step()
    assert first.stopped
    backend.replay_lock_delay(KEY, 13)
    link.partitioned = False
    for _ in range(5):  # the renewal's backoff, then the renewal, then the attempt
        clock.advance(0.1)
        a.step()
    assert ea.is_leader, "our session still holds the key: leadership resumes at once"
    second = ea.token
    assert second is not None
    assert second is not first
    assert second.fence >= first.fence, "the fence never goes back"
    assert ea.status().session == session
    b.step()
    assert not eb.is_leader, "and nobody else leads"
    assert eb.status().holder == "host-a:1"


def test_the_lock_delay_recheck_backs_off(backend: MemoryBackend, clock: FakeClock) -> None:
    # The holder's session was invalidated, and Consul keeps refusing the free key after its lock-delay
    # should have ended (a delay replayed by restarted servers): look again a little later each time.
    other = backend.create_session(name="other:9", ttl=15, lock_delay=13)
    assert backend.acquire(KEY, other, b"other:9").acquired
    a = memory_elector(backend, clock, lock_delay=13)
    election = a.register(KEY)
    a.step()
    assert election.status().phase == "watching"
    backend.invalidate_session(other)
    backend.replay_lock_delay(KEY, 3600)
    a.step()  # sees the release; the attempt is refused: wait out the holder's 13 s lock-delay
    status = election.status()
    assert status.phase == "lock_delay"
    assert status.next_attempt_in == pytest.approx(13.05)
    waits = []
    for _ in range(6):
        clock.advance(election.status().next_attempt_in or 0.0)
        a.step()
        waits.append(election.status().next_attempt_in or 0.0)
    assert not election.is_leader
    assert all(later > earlier for earlier, later in itertools.pairwise(waits[:5])), waits
    assert waits[0] < 0.1, waits
    assert 0.5 < waits[-1] <= 1.2, waits


def test_a_session_ended_early_cannot_let_anyone_start_before_the_token_fired(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    # Consul deregisters the holder's node (its agent left, `consul force-leave`): the session ends at
    # once, and the holder, cut off with its agent, hears nothing. Only the lock-delay protects it.
    a, b, link = two_nodes(backend, clock, ttl=10, lock_delay=8.5)  # lease 8 s; the smallest lock-delay allowed
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    token = ea.token
    assert token is not None
    assert ea.spec.lock_delay == ea.spec.min_lock_delay == 8.5
    clock.advance(3.4)
    a.step()  # a renewal, sent now: the lease runs 8 s from here
    link.partitioned = True
    backend.invalidate_session(ea.status().session or "")
    fired_at, taken_at = step_until_taken(clock, a, b, eb, token)
    assert taken_at is not None, "the other process took the key"
    assert fired_at is not None, "the holder's token fired"
    assert taken_at - fired_at >= 0.45, "the token fired at least 0.5 s before the other process took the key"


def test_shutdown_releases_only_the_keys_it_holds(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock)
    held = a.register("jobs/held")
    resigned = a.register("jobs/resigned")
    taken = a.register("jobs/taken")
    a.step()
    assert held.is_leader
    assert resigned.is_leader
    assert taken.is_leader
    resigned.resign()
    a.step()
    backend.delete("jobs/taken")  # an operator deleted it; someone else holds it now
    other = backend.create_session(name="other:9", ttl=15, lock_delay=13)
    assert backend.acquire("jobs/taken", other, b"other:9").acquired
    a.step()
    assert not taken.is_leader
    releases = backend.calls["release"]
    a.close(grace=0)
    assert backend.calls["release"] - releases == 1, "only jobs/held: nothing resigned or lost is released again"
    _, entry = backend.read("jobs/held")
    assert entry is not None
    assert entry.session is None


def test_status_names_the_phase_and_the_next_attempt(backend: MemoryBackend, clock: FakeClock) -> None:
    backend.set_down(True)
    a = memory_elector(backend, clock)
    election = a.register(KEY)
    assert election.status().phase == "starting"
    a.step()
    status = election.status()
    assert status.phase == "backing_off"
    assert status.reason is not None
    assert "could not create a session" in status.reason
    backend.set_down(False)
    clock.advance(1)
    a.step()
    assert election.status().phase == "leading"
    assert election.status().next_attempt_in is None


# -- fast failover: a health check of the process linked to its session ----------------------------


def test_fast_mode_links_a_fed_check_and_leases_by_both_proofs(backend: MemoryBackend, clock: FakeClock) -> None:
    a = memory_elector(backend, clock, ttl=10, check_ttl=2)
    election = a.register(KEY)
    a.step()
    assert election.is_leader
    spec = election.spec
    assert (spec.check_lease, spec.check_interval, spec.lease, spec.lock_delay) == (1.5, 0.5, 1.5, 2.0)
    assert backend.calls["register_check"] == 1
    assert election.status().lease_remaining == pytest.approx(1.5), "the check's lease, the shorter one"
    for _ in range(40):  # 4 s: the check is fed every 0.5 s, the session renewed every 0.75 s
        clock.advance(0.1)
        a.step()
    assert election.is_leader
    assert 7 <= backend.calls["pass_check"] <= 9
    assert 5 <= backend.calls["renew_session"] <= 6


def test_fast_mode_a_crashed_holder_is_replaced_after_check_ttl_and_lock_delay(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    a, b, link = two_nodes(backend, clock, ttl=10, check_ttl=2)
    ea = a.register(KEY)
    a.step()
    eb = b.register(KEY)
    b.step()
    token = ea.token
    assert token is not None
    link.partitioned = True  # the holder stops feeding its check, as a dead process would
    stopped_at = clock.now
    fired_at, taken_at = step_until_taken(clock, a, b, eb, token)
    assert fired_at is not None
    assert taken_at is not None
    # Critical 2 s after the last feed (sent at most 0.5 s before the stop), then the 2 s lock-delay.
    assert 3.4 <= taken_at - stopped_at <= 4.2, taken_at - stopped_at
    assert taken_at - fired_at >= 2.0, "the token fired before the check could go critical, a lock-delay ahead"


def test_fast_mode_an_agent_that_lost_the_check_ends_the_term_and_registers_it_again(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    a = memory_elector(backend, clock, ttl=10, check_ttl=2)
    election = a.register(KEY)
    a.step()
    token = election.token
    assert token is not None
    backend.drop_checks()  # as an agent restarted without the checks registered through its API
    for _ in range(100):
        clock.advance(0.05)
        a.step()
        if token.stopped and election.is_leader:
            break
    assert token.stopped
    assert election.is_leader, "registered again, and leading again after the lock-delay"
    assert backend.calls["register_check"] == 2
    assert any("does not hold the health check" in r.getMessage() for r in caplog.records)


def test_fast_mode_shutdown_destroys_the_session_before_it_deregisters_the_check(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    a = memory_elector(backend, clock, ttl=10, check_ttl=2)
    a.register(KEY)
    a.step()
    order: list[str] = []
    original_destroy, original_deregister = backend.destroy_session, backend.deregister_check

    def destroy(session_id: str) -> None:
        order.append("destroy")
        original_destroy(session_id)

    def deregister(service_id: str) -> None:
        order.append("deregister")
        original_deregister(service_id)

    backend.destroy_session = destroy  # type: ignore[method-assign]
    backend.deregister_check = deregister  # type: ignore[method-assign]
    a.close(grace=0)
    assert order == ["destroy", "deregister"]
    assert backend.calls["release"] == 1, "and the key was released before both"


class Recording(Partitionable):
    """Records which thread made each acquisition attempt."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.attempts: list[str] = []

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        self.attempts.append(threading.current_thread().name)
        return super().acquire(key, session_id, value, flags)


def test_a_freed_key_is_attempted_from_the_watch_thread_and_judged_on_the_election_thread() -> None:
    # The graceful handoff at the floor: the follower's watch thread sends the attempt the moment it sees
    # the release (no hand-off before it); the election thread judges its answer, as for its own attempts.
    backend = MemoryBackend()
    recording = Recording(backend)
    holder = memory_elector(backend, identity="holder:1", inline=False)
    follower = memory_elector(recording, identity="follower:2", inline=False)
    try:
        first = holder.register(KEY)
        assert first.wait_for_leadership(5)
        second = follower.register(KEY)
        assert second.wait_settled(5)
        deadline = time.monotonic() + 5
        while second.phase is not Phase.WATCHING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.phase is Phase.WATCHING
        before = len(recording.attempts)
        first.resign()
        assert second.wait_for_leadership(5)
        attempts = recording.attempts[before:]
        assert attempts == [f"singleton-watch[{KEY}*]"], "one attempt, from the watch thread, none from elsewhere"
        _, entry = backend.read(KEY)
        assert entry is not None
        assert entry.holder == "follower:2"
    finally:
        holder.close(grace=0)
        follower.close(grace=0)


def test_close_ends_the_election_thread_when_a_step_swallowed_its_wake_up() -> None:
    """close() sets ``_stop``, then wakes the election thread with a None in its inbox. A step draining
    the inbox at that moment took the None, and the thread slept IDLE_WAKEUP (30 s): close() gave up
    on it, and ``singleton run`` exited without releasing its key (seen after a step-down, whose polls
    keep the thread stepping: the next holder came 28 s later, after the TTL and the lock-delay)."""
    elector = Elector(Settings(backend="memory://", identity="unit:1"))
    try:
        assert elector.register("k").wait_for_leadership(5)
        thread = elector._thread
        assert thread is not None
        drain = elector._drain

        def close_lands_mid_step() -> None:
            if threading.current_thread() is thread and not elector._stop.is_set():
                elector._stop.set()  # what close() does, in its order
                elector._inbox.put(None)
            drain()

        elector._drain = close_lands_mid_step  # type: ignore[method-assign]
        elector._inbox.put(None)  # wake the thread for one more step
        thread.join(5)
        assert not thread.is_alive(), "the election thread ends at once, not IDLE_WAKEUP later"
    finally:
        elector.close(grace=0)
