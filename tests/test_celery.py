"""singleton.contrib.celery: real Celery apps, a real transport, a real Consul agent, real beat processes."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery  # type: ignore[import-untyped, unused-ignore]
from celery.beat import PersistentScheduler, Scheduler  # type: ignore[import-untyped, unused-ignore]
from celery.signals import before_task_publish  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton import ConfigurationError, Elector, LeaseSpec, Role, Settings, leader_only
from singleton.contrib.celery import LeaderOnlyScheduler, default_key
from singleton.testing import ConsulAgent, ConsulNotFound, find_consul
from singleton.testing._agent import free_ports

from .apscheduler_fleet import cpu_seconds
from .celery_fleet import ROOT, BeatFleet, Message, read_messages

TTL = 10.0
LOCK_DELAY = LeaseSpec(ttl=TTL).min_lock_delay
#: How far a send may be from one interval (1 s) after the one before it: beat's pass, the store's
#: write and the publish, on a busy machine. A time lost or sent twice is off by a whole interval.
SLACK = 0.5
#: Consul may take up to twice the TTL to invalidate a crashed holder's session, then the lock-delay.
CRASH_BOUND = 2 * TTL + LOCK_DELAY


def elector(settings: Any, key_prefix: str, identity: str) -> Elector:
    return Elector(
        Settings(
            consul=settings,
            key_prefix=key_prefix,
            lease=LeaseSpec(ttl=TTL, lock_delay=LOCK_DELAY),
            identity=identity,
            watch_wait=5,
        )
    )


@pytest.fixture
def electors(consul_agent: ConsulAgent, key_prefix: str) -> Iterator[list[Elector]]:
    """Two electors in this process: two beat processes as far as Consul can tell."""
    made = [elector(consul_agent.settings(timeout=2), key_prefix, f"beat-{name}:1") for name in "ab"]
    yield made
    for each in made:
        each.close(grace=0)


@pytest.fixture
def own_elector() -> Iterator[Elector]:
    """An elector on the in-process reference backend: for tests that only need a leader."""
    made = Elector(Settings(backend="memory://", identity="unit:1"))
    yield made
    made.close(grace=0)


def noop() -> None:
    """A task body; no worker runs it here."""


def make_app(tmp_path: Path, **conf: Any) -> Any:
    """A Celery app on kombu's filesystem transport in ``tmp_path/queue``, with one entry every second."""
    queue = tmp_path / "queue"
    queue.mkdir(exist_ok=True)
    app = Celery("unit", broker="filesystem://", set_as_current=False)
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(queue),
        },
        beat_schedule={"tick": {"task": "unit.tick", "schedule": 1.0}},
        beat_max_loop_interval=5,
        beat_enable_remote_control=False,
    )
    app.conf.update(conf)
    app.task(name="unit.tick", shared=False)(noop)
    return app


def sent(tmp_path: Path) -> list[Message]:
    return read_messages(tmp_path / "queue")


def run_ticks(scheduler: LeaderOnlyScheduler, seconds: float) -> int:
    """Drive the scheduler as beat's loop does (it sleeps inside tick()), for about ``seconds``."""
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        scheduler.tick()
        count += 1
    return count


def wait_until(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


class CountingScheduler(PersistentScheduler):  # type: ignore[misc]
    """A PersistentScheduler that counts the passes beat makes over it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ticks = 0
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        self.ticks += 1
        return super().tick(*args, **kwargs)


# -- configuration (no Consul) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "options", "named"),
    [
        ({"singleton_key": ""}, {}, "singleton_key"),
        ({"singleton_key": "/abs"}, {}, "singleton_key"),
        ({}, {"key": 5}, "key"),
        ({"singleton_ttl": 5}, {}, "singleton_ttl"),
        ({}, {"ttl": "soon"}, "ttl"),
        ({"singleton_lock_delay": 61}, {}, "singleton_lock_delay"),
        ({"singleton_ttl": 15, "singleton_margin": 12}, {}, "singleton_margin"),
        ({"singleton_margin": 0}, {}, "singleton_margin"),
        ({"singleton_shared": "sometimes"}, {}, "singleton_shared"),
        ({"singleton_scheduler": "nosuch.module:Scheduler"}, {}, "singleton_scheduler"),
        ({"singleton_scheduler": "builtins:dict"}, {}, "singleton_scheduler"),
        ({"singleton_scheduler": "singleton.contrib.celery:LeaderOnlyScheduler"}, {}, "singleton_scheduler"),
        ({"beat_scheduler": "nosuch.module:Scheduler"}, {}, "beat_scheduler"),
        ({}, {"elector": "consul"}, "elector"),
    ],
)
def test_bad_settings_raise_a_configuration_error_naming_them(
    tmp_path: Path, conf: dict[str, Any], options: dict[str, Any], named: str
) -> None:
    app = make_app(tmp_path, **conf)
    with pytest.raises(ConfigurationError, match=named) as caught:
        LeaderOnlyScheduler(app, lazy=True, **options)
    assert isinstance(caught.value, ValueError)


def test_settings_come_from_the_app_and_arguments_override_them(tmp_path: Path) -> None:
    app = make_app(
        tmp_path, singleton_key="billing/beat", singleton_ttl=20, singleton_lock_delay="18", singleton_margin=3
    )
    scheduler = LeaderOnlyScheduler(app, lazy=True)
    assert (scheduler.key, scheduler.ttl, scheduler.lock_delay, scheduler.margin) == ("billing/beat", 20, 18, 3)
    assert scheduler.inner_class is PersistentScheduler
    assert not scheduler.shared
    scheduler = LeaderOnlyScheduler(app, lazy=True, key="other", ttl=30, lock_delay=30, margin=None)
    assert (scheduler.key, scheduler.ttl, scheduler.lock_delay, scheduler.margin) == ("other", 30, 30, 3)
    assert LeaderOnlyScheduler(make_app(tmp_path), lazy=True).key == "celery-beat/unit"
    assert default_key(Celery(set_as_current=False)) == "celery-beat"


def test_the_wrapped_class_and_the_kind_of_schedule(tmp_path: Path) -> None:
    # beat_scheduler naming another class is the one wrapped: `-S` on the command line wraps the configured one.
    assert LeaderOnlyScheduler(make_app(tmp_path, beat_scheduler="celery.beat:Scheduler"), lazy=True).inner_class is (
        Scheduler
    )
    ours = make_app(tmp_path, beat_scheduler="singleton.contrib.celery:LeaderOnlyScheduler")
    assert LeaderOnlyScheduler(ours, lazy=True).inner_class is PersistentScheduler
    scheduler = LeaderOnlyScheduler(ours, lazy=True, inner="celery.beat.Scheduler")
    assert scheduler.inner_class is Scheduler
    assert not scheduler.shared

    class OwnStore(Scheduler):  # type: ignore[misc]
        """A scheduler class this library does not know."""

    with pytest.raises(ConfigurationError, match=r"singleton_shared must be given for .*OwnStore"):
        LeaderOnlyScheduler(ours, lazy=True, inner=OwnStore)
    assert LeaderOnlyScheduler(ours, lazy=True, inner=OwnStore, shared="true").shared
    assert LeaderOnlyScheduler(make_app(tmp_path, singleton_shared=True), lazy=True, inner=OwnStore).shared
    # django-celery-beat's schedulers keep one schedule in the database (told by their module).
    database_like = type("DatabaseScheduler", (Scheduler,), {"__module__": "django_celery_beat.schedulers"})
    assert LeaderOnlyScheduler(ours, lazy=True, inner=database_like).shared
    assert not LeaderOnlyScheduler(ours, lazy=True, inner=database_like, shared=False).shared


def test_lazy_construction_campaigns_for_nothing_and_gives_beat_its_banner(
    tmp_path: Path, own_elector: Elector
) -> None:
    filename = tmp_path / "schedule"
    scheduler = LeaderOnlyScheduler(
        make_app(tmp_path, singleton_key="k"), lazy=True, elector=own_elector, schedule_filename=str(filename)
    )
    assert scheduler.election is None
    assert own_elector.elections == []
    assert "leader-only -> k (per-process schedule; celery.beat.PersistentScheduler)" in scheduler.info
    assert f"db -> {filename}" in scheduler.info
    assert scheduler.max_interval == 5
    assert list(tmp_path.glob("schedule*")) == [], "nothing was opened"
    assert "per-process" in repr(scheduler)


def test_a_leader_only_task_in_the_schedule_is_refused_at_setup(tmp_path: Path, own_elector: Elector) -> None:
    app = make_app(tmp_path, beat_schedule={"guarded": {"task": "unit.guarded", "schedule": 1.0}})

    def guarded() -> None: ...

    app.task(name="unit.guarded", shared=False)(leader_only(key="guarded")(guarded))

    with pytest.raises(ConfigurationError, match=r"'unit\.guarded' .*@leader_only\(key='guarded'\)"):
        LeaderOnlyScheduler(app, elector=own_elector, schedule_filename=str(tmp_path / "schedule"))
    assert own_elector.elections == [], "beat refused before campaigning"


def test_a_leader_only_task_found_in_a_shared_schedule_is_never_sent(
    tmp_path: Path, own_elector: Elector, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path, beat_schedule={})

    def guarded() -> None: ...

    app.task(name="unit.guarded", shared=False)(leader_only(key="guarded-shared")(guarded))

    class Store(Scheduler):  # type: ignore[misc]
        """A shared store that holds an entry beat_schedule does not have (added in an admin, say)."""

        def setup_schedule(self) -> None:
            self.update_from_dict(
                {
                    "guarded": {"task": "unit.guarded", "schedule": 0.2},
                    "tick": {"task": "unit.tick", "schedule": 0.2},
                }
            )

    scheduler = LeaderOnlyScheduler(app, elector=own_elector, inner=Store, shared=True)
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_for_leadership(5)
        with caplog.at_level(logging.ERROR, logger="singleton.contrib.celery"):
            run_ticks(scheduler, 1.0)
    finally:
        scheduler.close()
    assert {m.task for m in sent(tmp_path)} == {"unit.tick"}
    refusals = [r.getMessage() for r in caplog.records if "unit.guarded" in r.getMessage()]
    assert len(refusals) == 1, "said once"
    assert "@leader_only(key='guarded-shared')" in refusals[0]


def test_importing_without_celery_says_which_extra_to_install() -> None:
    code = "import sys; sys.modules['celery'] = None; import singleton.contrib.celery"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "consul-singleton[celery]" in result.stderr


def test_the_public_api_of_the_module() -> None:
    import singleton.contrib.celery as module

    assert module.__all__ == ["HEADER_FENCE", "HEADER_SCHEDULED", "LeaderOnlyScheduler"]


# -- one process, real Consul ----------------------------------------------------------------------


@pytest.mark.consul
def test_a_follower_advances_its_schedule_as_the_leader_would_and_sends_nothing(
    electors: list[Elector], tmp_path: Path
) -> None:
    holder, follower = electors
    assert holder.register("beat").wait_for_leadership(10)
    app = make_app(
        tmp_path,
        beat_schedule={
            "tick": {"task": "unit.tick", "schedule": 1.0},
            "hourly": {"task": "unit.tick", "schedule": 3600.0},
        },
    )
    scheduler = LeaderOnlyScheduler(
        app, key="beat", elector=follower, inner=CountingScheduler, schedule_filename=str(tmp_path / "schedule")
    )
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_settled(10)
        seconds = 3.5
        run_ticks(scheduler, seconds)
        inner = scheduler.inner
        tick, hourly = inner.schedule["tick"], inner.schedule["hourly"]
        assert not scheduler.is_leader
        assert sent(tmp_path) == []
        assert "connection" not in inner.__dict__, "a follower opens no broker connection"
        # Advanced at each due time, as the leader does, to times every process agrees on.
        assert tick.total_run_count >= 3
        assert tick.last_run_at.timestamp() % 1 == 0
        assert time.time() - tick.last_run_at.timestamp() < 1.1
        assert hourly.last_run_at.timestamp() % 3600 == 0
        # A few passes per due time (a busy loop makes thousands).
        assert inner.ticks <= 10 * seconds, inner.ticks
    finally:
        scheduler.close()


@pytest.mark.consul
def test_the_leader_sends_each_time_once_with_its_fence_as_a_body_of_its_term(
    electors: list[Elector], tmp_path: Path
) -> None:
    seen: list[int] = []

    def on_publish(**_: Any) -> None:
        seen.append(singleton.current_token().fence)

    before_task_publish.connect(on_publish, weak=False)
    scheduler = LeaderOnlyScheduler(
        make_app(tmp_path), key="beat", elector=electors[0], schedule_filename=str(tmp_path / "schedule")
    )
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_for_leadership(10)
        token = scheduler.election.token
        assert token is not None
        run_ticks(scheduler, 2.6)
    finally:
        scheduler.close()
        before_task_publish.disconnect(on_publish)
    messages = sent(tmp_path)
    assert 2 <= len(messages) <= 3, messages
    assert {m.fence for m in messages} == {token.fence}
    assert seen == [token.fence] * len(messages), "current_token() inside the send is the term's token"
    scheduled = [m.scheduled for m in messages]
    assert scheduled == [scheduled[0] + i for i in range(len(messages))], "every second, aligned, once"
    assert all(at % 1 == 0 for at in scheduled)
    assert all(0 <= m.at - m.scheduled < 0.5 for m in messages), "each sent on time"
    assert scheduler.election.role is Role.RESIGNED, "close() resigned the key"


@pytest.mark.consul
def test_leadership_arriving_wakes_beat_at_once_and_the_shared_schedule_is_loaded_then(
    electors: list[Elector], tmp_path: Path
) -> None:
    holder, follower = electors
    held = holder.register("beat")
    assert held.wait_for_leadership(10)
    setups: list[float] = []

    class Store(Scheduler):  # type: ignore[misc]
        """A shared store: it records when it is set up (it would read the database then)."""

        def setup_schedule(self) -> None:
            setups.append(time.monotonic())
            super().setup_schedule()

    scheduler = LeaderOnlyScheduler(
        make_app(tmp_path, beat_max_loop_interval=30), key="beat", elector=follower, inner=Store, shared=True
    )
    stop = threading.Event()
    passes: list[float] = []

    def beat_loop() -> None:
        while not stop.is_set():
            scheduler.tick()
            passes.append(time.monotonic())

    loop = threading.Thread(target=beat_loop, name="beat-loop", daemon=True)
    loop.start()
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_settled(10)
        time.sleep(1.5)
        assert setups == [], "a follower of a shared schedule does not read it"
        assert scheduler.schedule == {}
        assert len(passes) <= 2, "it sleeps for max_interval (30 s) when nothing wakes it"
        assert held.resign(5)
        assert scheduler.election.wait_for_leadership(5)
        became_leader = time.monotonic()
        assert wait_until(lambda: bool(setups), 2)
        assert setups[0] - became_leader < 0.5, "woken at once, not after max_interval"
        assert wait_until(lambda: bool(sent(tmp_path)), 3)
        token = scheduler.election.token
        assert token is not None
        assert {m.fence for m in sent(tmp_path)} == {token.fence}
    finally:
        stop.set()
        deadline = time.monotonic() + 10
        while loop.is_alive() and time.monotonic() < deadline:
            scheduler._wake.set()  # the loop sleeps in tick(): wake it to see the stop
            loop.join(0.05)
        scheduler.close()
    assert not loop.is_alive()


def test_a_signal_during_a_pass_is_held_until_it_ends_and_a_second_one_is_not() -> None:
    from singleton.contrib.celery import _signals_held

    seen: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signal.Signals(signum).name)

    saved = signal.signal(signal.SIGTERM, handler)
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("pass ends")
        assert seen == ["pass ends", "SIGTERM"]
        assert signal.getsignal(signal.SIGTERM) is handler
        seen.clear()
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("pass ends")
        assert seen == ["SIGTERM", "pass ends"], "asked twice: delivered at once, and only once"
        seen.clear()

        def interrupted_pass() -> None:
            with _signals_held():
                os.kill(os.getpid(), signal.SIGINT)  # Python's own SIGINT handler, held too
                seen.append("pass ends")

        with pytest.raises(KeyboardInterrupt):
            interrupted_pass()
        assert seen == ["pass ends"]

        def elsewhere() -> None:
            with _signals_held():
                seen.append(repr(signal.getsignal(signal.SIGTERM) is handler))

        seen.clear()
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(5)
        assert seen == ["True"], "off the main thread nothing is held (handlers cannot be changed there)"
    finally:
        signal.signal(signal.SIGTERM, saved)


@pytest.mark.consul
def test_beats_stop_signal_in_the_middle_of_a_send_waits_for_the_send(electors: list[Elector], tmp_path: Path) -> None:
    """Beat's own SIGTERM handler (close the scheduler, raise SystemExit) landing between the write of a
    shared entry's run and its send: the run recorded is sent, then beat stops (seen in CI: a scheduled
    time recorded by the old leader, never sent, and skipped by the new one)."""
    from celery.beat import Service  # type: ignore[import-untyped, unused-ignore]

    recorded: list[float] = []

    class Store(Scheduler):  # type: ignore[misc]
        """A shared store that records each run it writes, and is stopped right after its first write."""

        armed = False

        def reserve(self, entry: Any) -> Any:
            self.armed = True
            return super().reserve(entry)

        def sync(self) -> None:
            if self.armed:
                self.armed = False
                recorded.append(self.schedule["tick"].last_run_at.timestamp())
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line

    app = make_app(tmp_path)
    scheduler = LeaderOnlyScheduler(app, key="beat", elector=electors[0], inner=Store, shared=True)
    service = Service(app)
    service.__dict__["scheduler"] = scheduler  # what beat's Service builds and its handler closes
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    app.Beat().install_sync_handler(service)
    beats_handler = signal.getsignal(signal.SIGTERM)
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_for_leadership(10)
        with pytest.raises(SystemExit):
            run_ticks(scheduler, 5)
        assert recorded, "the store was written, and beat was stopped there"
        assert scheduler._closed
        assert scheduler.election.role is Role.RESIGNED, "beat's handler closed the scheduler: the key is resigned"
        assert signal.getsignal(signal.SIGTERM) is beats_handler, "beat's handler is back in place"
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        scheduler.close()
    messages = sent(tmp_path)
    assert len(messages) == len(recorded) == 1, (messages, recorded)


@pytest.mark.consul
def test_a_new_leader_does_not_send_times_that_fell_due_before_its_term(
    electors: list[Elector], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, follower = electors
    held = holder.register("beat")
    assert held.wait_for_leadership(10)
    scheduler = LeaderOnlyScheduler(
        make_app(tmp_path), key="beat", elector=follower, schedule_filename=str(tmp_path / "schedule")
    )
    try:
        assert scheduler.election is not None
        assert scheduler.election.wait_settled(10)
        # No pass for a while (a busy beat, or leadership arriving just before its pass): its copy of the
        # schedule still holds the times that fell due, which the previous leader sent.
        time.sleep(2.5)
        assert held.resign(5)
        assert scheduler.election.wait_for_leadership(5)
        token = scheduler.election.token
        assert token is not None
        with caplog.at_level(logging.INFO, logger="singleton.contrib.celery"):
            run_ticks(scheduler, 1.6)
    finally:
        scheduler.close()
    messages = sent(tmp_path)
    assert messages, "the times of its own term are sent"
    assert all(m.scheduled >= token.since for m in messages), (messages, token.since)
    # Its first pass came late (when leadership arrived); the sends after it are on time all the same.
    assert all(m.at - m.scheduled < 0.3 for m in messages), [m.at - m.scheduled for m in messages]
    assert any("fell due before this beat became the leader" in r.getMessage() for r in caplog.records)


@pytest.mark.consul
def test_consul_unreachable_at_start_neither_sends_nor_spins(
    fresh_consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path
) -> None:
    own = elector(fresh_consul_agent.settings(timeout=2), key_prefix, "outage:1")
    scheduler: LeaderOnlyScheduler | None = None
    try:
        with fresh_consul_agent.paused():  # every call hangs until its timeout
            began = time.monotonic()
            scheduler = LeaderOnlyScheduler(
                make_app(tmp_path),
                key="beat",
                elector=own,
                inner=CountingScheduler,
                schedule_filename=str(tmp_path / "schedule"),
            )
            assert time.monotonic() - began < 1.0, "setting up does not wait for Consul"
            run_ticks(scheduler, 3.5)  # does not raise
            assert not scheduler.is_leader
            assert sent(tmp_path) == [], "nothing is sent by a process that cannot prove it holds the lock"
            assert scheduler.inner.ticks < 40, scheduler.inner.ticks
        assert scheduler.election is not None
        assert scheduler.election.wait_for_leadership(30), scheduler.election.status()
        run_ticks(scheduler, 1.5)
        assert sent(tmp_path)
    finally:
        if scheduler is not None:
            scheduler.close()
        own.close(grace=0)


# -- three celery beat processes, real Consul ------------------------------------------------------------


@dataclass
class Scenario:
    """Three beats: a steady phase, a graceful stop of the leader (SIGTERM), then a crash (SIGKILL) of the next."""

    fleet: BeatFleet
    steady: tuple[float, float] = (0.0, 0.0)
    follower_cpu: dict[int, float] = field(default_factory=dict)
    first: int = 0
    second: int = 0
    third: int = 0
    stopped_at: float = 0.0
    graceful_takeover: float = 0.0
    graceful_lead: float = 0.0
    first_exit: int | None = None
    killed_at: float = 0.0
    crash_lead: float = 0.0
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="scenario", daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.fleet.stop()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(CRASH_BOUND + 90)
        assert not self.thread.is_alive(), "the scenario did not finish"

    def _run(self) -> None:
        fleet = self.fleet
        fleet.wait_for(lambda: len(fleet.events("ready")) == 3 and bool(fleet.leads()), 60, "three ready beats")
        self.first = fleet.leads()[0].pid
        followers = [pid for pid in fleet.pids if pid != self.first]
        time.sleep(1.0)
        before = {pid: cpu_seconds(pid) for pid in followers}
        start = time.time()
        time.sleep(4.0)
        self.steady = (start, time.time())
        self.follower_cpu = {pid: cpu_seconds(pid) - before[pid] for pid in followers}

        self.stopped_at = fleet.signal(self.first, signal.SIGTERM)
        lead = fleet.wait_for_lead(self.stopped_at, {self.first}, 10)
        self.second, self.graceful_lead = lead.pid, lead.at
        self.graceful_takeover = lead.at - self.stopped_at
        self.first_exit = fleet.proc(self.first).wait(15)
        time.sleep(3.0)

        self.killed_at = fleet.signal(self.second, signal.SIGKILL)
        lead = fleet.wait_for_lead(self.killed_at, {self.first, self.second}, CRASH_BOUND + 10)
        self.third, self.crash_lead = lead.pid, lead.at
        time.sleep(3.0)

    def by(self, pid: int) -> list[Message]:
        return [m for m in self.fleet.messages() if m.pid == pid]

    def summary(self) -> str:
        cpu = ", ".join(f"{used:.3f}s" for used in self.follower_cpu.values())
        crash = self.by(self.third)
        first_send = crash[0].at - self.killed_at if crash else float("nan")
        return (
            f"follower CPU in {self.steady[1] - self.steady[0]:.1f}s: {cpu}; graceful takeover "
            f"{self.graceful_takeover * 1000:.0f} ms; crash: new leader after {self.crash_lead - self.killed_at:.1f}s, "
            f"first send after {first_send:.1f}s; messages {Counter(m.pid for m in self.fleet.messages())}"
        )

    def check(self) -> None:
        """What holds for every schedule: one sender at a time, each scheduled time once, quick takeovers."""
        if self.error is not None:
            raise AssertionError(f"the scenario failed: {self.error!r}\n{self.fleet.report()}") from self.error
        fleet, report = self.fleet, self.fleet.report()
        messages = fleet.messages("tests.celery_app.tick")
        twice = {at: n for at, n in Counter(m.scheduled for m in messages).items() if n > 1}
        assert not twice, f"scheduled times sent more than once: {twice}\n{report}"
        gaps = [b.at - a.at for a, b in itertools.pairwise(messages)]
        assert min(gaps) > 0.5, f"two sends within half an interval: {gaps}\n{report}"
        # Steady phase: the leader alone, once a second.
        low, high = self.steady
        steady = [m for m in messages if low + 0.5 <= m.at <= high - 0.5]
        assert {m.pid for m in steady} == {self.first}, report
        assert len(steady) in (2, 3, 4), report
        # Each process sent only while it led, with its term's fence.
        leads = {e.pid: int(e.fields[0]) for e in fleet.leads()}
        assert all(m.at < self.stopped_at + 0.1 for m in self.by(self.first)), report
        assert all(self.graceful_lead - 0.1 <= m.at <= self.killed_at for m in self.by(self.second)), report
        assert all(m.at >= self.crash_lead - 0.1 for m in self.by(self.third)), report
        for pid in (self.first, self.second, self.third):
            assert {m.fence for m in self.by(pid)} == {leads[pid]}, report
        # current_token() is the term's token while beat sends (before_task_publish).
        publishes = fleet.events("publish")
        assert len(publishes) == len(fleet.messages()), report
        assert all(int(e.fields[1]) == leads[e.pid] for e in publishes), report
        # Graceful stop: the next leader within a second, and its first send on time.
        assert self.first_exit == 0, report
        assert self.graceful_takeover < 1.0, f"graceful takeover took {self.graceful_takeover:.2f}s"
        first_of_second = self.by(self.second)[0]
        assert first_of_second.at - first_of_second.scheduled < 0.5, report
        assert first_of_second.scheduled - self.by(self.first)[-1].at < 2.6, "at most one scheduled time lost"
        # Crash: the new leader's first send within the failover bound (plus one interval for the tick).
        first_of_third = self.by(self.third)[0]
        assert first_of_third.at - self.killed_at <= CRASH_BOUND + 1 + 2, self.summary()
        for pid, used in self.follower_cpu.items():
            assert used < 0.3, f"follower {pid} used {used:.2f}s of CPU in {high - low:.1f}s"
        outputs = "".join(out.read_text(errors="replace") for out in fleet.outputs)
        assert "Traceback" not in outputs, report


@pytest.fixture(scope="module")
def scenarios(consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scenario]]:
    """Both fleets, started at once and running in the background; a test joins the one it checks."""
    tmp = tmp_path_factory.mktemp("celery-fleets")
    db = tmp / "beat.sqlite3"
    # The tables, once, before three processes start together.
    env = {"DJANGO_SETTINGS_MODULE": "tests.celery_django_settings", "CELERY_TEST_DB": str(db), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    prefix = f"test/celery-{time.time_ns()}/"
    found = {
        "persistent": Scenario(BeatFleet(tmp / "persistent", consul_agent.address, prefix, mode="persistent")),
        "database": Scenario(BeatFleet(tmp / "database", consul_agent.address, prefix + "db/", mode="database", db=db)),
    }
    for scenario in found.values():
        scenario.start()
    try:
        yield found
    finally:
        for scenario in found.values():
            scenario.fleet.stop()
            if scenario.thread is not None:
                scenario.thread.join(30)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own on a free port ($REDIS_BIN or PATH; scripts/get-redis installs one)."""
    binary = os.environ.get("REDIS_BIN") or shutil.which("redis-server")
    if not binary or not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        reason = f"no redis-server ({binary or 'none on PATH'}; set REDIS_BIN, or run scripts/get-redis)"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    import redis

    tmp = tmp_path_factory.mktemp("redis")
    (port,) = free_ports(1)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with open(tmp / "redis.log", "wb") as sink:
        server = subprocess.Popen([*command, "--dir", str(tmp)], stdout=sink, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    try:
        assert wait_until(lambda: _pings(client), 15), (tmp / "redis.log").read_text()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        server.terminate()
        server.wait(15)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def redis_scenario(
    consul_agent: ConsulAgent, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """The PersistentScheduler fleet again, on a real Redis broker, in the background."""
    tmp = tmp_path_factory.mktemp("celery-redis-fleet")
    prefix = f"test/celery-redis-{time.time_ns()}/"
    scenario = Scenario(BeatFleet(tmp, consul_agent.address, prefix, mode="persistent", broker=redis_url))
    scenario.start()
    try:
        yield scenario
    finally:
        scenario.fleet.stop()
        if scenario.thread is not None:
            scenario.thread.join(30)


@pytest.fixture(scope="module", autouse=True)
def _fleets_start_with_the_module(request: pytest.FixtureRequest) -> None:
    """The fleets spend most of their time waiting out a crashed leader's session TTL: start them first,
    so that the other tests of this module run in the meantime."""
    selected = {
        item.name
        for item in request.session.items
        if item.get_closest_marker("slow") is not None and item.path == request.path
    }
    try:
        find_consul()
    except ConsulNotFound:
        return  # the fleet tests skip (or fail under CI) through their own fixtures
    if selected - {test_three_beats_on_a_redis_broker_send_each_time_once_and_fail_over.__name__}:
        request.getfixturevalue("scenarios")
    if test_three_beats_on_a_redis_broker_send_each_time_once_and_fail_over.__name__ in selected:
        try:
            request.getfixturevalue("redis_scenario")
        except pytest.skip.Exception:
            pass  # the Redis test skips through its own fixture, and says why


@pytest.mark.consul
@pytest.mark.slow
def test_three_beats_with_a_persistent_schedule_send_each_time_once_and_fail_over(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["persistent"]
    scenario.join()
    print("PersistentScheduler:", scenario.summary())
    scenario.check()
    messages = scenario.fleet.messages("tests.celery_app.tick")
    # Every beat computes the same scheduled times: whole seconds, each sent once, none lost outside the
    # crash window but (at most) one around the graceful handover.
    assert all(m.scheduled % 1 == 0 for m in messages)
    before_crash = [m.scheduled for m in messages if m.scheduled < scenario.killed_at]
    missing = set(range(int(before_crash[0]), int(before_crash[-1]) + 1)) - set(before_crash)
    assert len(missing) <= 1, (missing, scenario.fleet.report())
    # A per-process schedule does not catch up: the new leader sends nothing scheduled before its term.
    assert all(m.scheduled >= scenario.crash_lead - 0.01 for m in scenario.by(scenario.third))


@pytest.mark.consul
@pytest.mark.slow
def test_three_beats_with_django_celery_beat_send_each_time_once_and_catch_up_once(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["database"]
    scenario.join()
    print("DatabaseScheduler:", scenario.summary())
    scenario.check()
    messages = scenario.fleet.messages("tests.celery_app.tick")
    report = scenario.fleet.report()
    # One shared schedule: each send is scheduled one interval after the one before it, whoever sent
    # that one (recorded before sending), across the graceful handover too.
    catch_up = scenario.by(scenario.third)[0]
    for previous, message in itertools.pairwise(messages):
        if message == catch_up:
            continue
        assert abs(message.scheduled - (previous.at + 1)) < SLACK, report
    # After the crash: one catch-up send for the whole failover window, scheduled one interval after the
    # dead leader's last send, then the schedule resumes from it.
    caught, after = scenario.by(scenario.third)[:2]
    last_of_second = scenario.by(scenario.second)[-1]
    assert abs(caught.scheduled - (last_of_second.at + 1)) < SLACK, report
    assert caught.scheduled < scenario.crash_lead
    assert abs(after.scheduled - (caught.at + 1)) < SLACK, report


@pytest.mark.consul
@pytest.mark.slow
def test_three_beats_on_a_redis_broker_send_each_time_once_and_fail_over(redis_scenario: Scenario) -> None:
    redis_scenario.join()
    print("PersistentScheduler on Redis:", redis_scenario.summary())
    redis_scenario.check()
    messages = redis_scenario.fleet.messages("tests.celery_app.tick")
    assert all(m.scheduled % 1 == 0 for m in messages)
    assert all(m.scheduled >= redis_scenario.crash_lead - 0.01 for m in redis_scenario.by(redis_scenario.third))
