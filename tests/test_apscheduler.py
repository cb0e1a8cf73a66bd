"""singleton.contrib.apscheduler: real schedulers, a real Consul agent, several real processes."""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import (  # type: ignore[import-untyped, unused-ignore]
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
)
from apscheduler.executors.pool import (  # type: ignore[import-untyped, unused-ignore]
    ThreadPoolExecutor as PoolExecutor,
)
from apscheduler.job import Job  # type: ignore[import-untyped, unused-ignore]
from apscheduler.jobstores.base import (  # type: ignore[import-untyped, unused-ignore]
    BaseJobStore,
    ConflictingIdError,
    JobLookupError,
)
from apscheduler.jobstores.memory import MemoryJobStore  # type: ignore[import-untyped, unused-ignore]
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore  # type: ignore[import-untyped, unused-ignore]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped, unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped, unused-ignore]
from apscheduler.triggers.date import DateTrigger  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton import ConfigurationError, Elector, LeadershipLost, LeaseSpec, Role, Settings
from singleton.contrib.apscheduler import GRID_ORIGIN, PLUGIN_NAME, LeaderOnlyJobStore, leader_only_scheduler
from singleton.testing import ConsulAgent, ConsulNotFound, find_consul

from .apscheduler_fleet import SchedulerFleet, cpu_seconds

TTL = 10.0
LOCK_DELAY = LeaseSpec(ttl=TTL).min_lock_delay
#: Consul may take up to twice the TTL to invalidate a crashed holder's session, then the lock-delay.
CRASH_BOUND = 2 * TTL + LOCK_DELAY
EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)


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
    """Two electors in this process: two 'processes' as far as Consul can tell."""
    made = [elector(consul_agent.settings(timeout=2), key_prefix, f"test-{name}:1") for name in "ab"]
    yield made
    for each in made:
        each.close(grace=0)


def memory_elector(identity: str = "unit:1") -> Elector:
    """An elector on the in-process reference backend: for tests that only need a started store."""
    return Elector(Settings(backend="memory://", identity=identity))


def plain_job(job_id: str = "job", when: datetime | None = None) -> Any:
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    return Job(
        scheduler,
        id=job_id,
        func="builtins:print",
        trigger=DateTrigger(when or EPOCH, timezone=timezone.utc),
        executor="default",
        args=(),
        kwargs={},
        name=job_id,
        misfire_grace_time=1,
        coalesce=True,
        max_instances=1,
        next_run_time=when or EPOCH,
    )


def ticks(low: float, high: float) -> list[float]:
    """The whole seconds in ``[low, high]``: the scheduled times of a 1 s job started at EPOCH."""
    return [float(t) for t in range(math.ceil(low), math.floor(high) + 1)]


# -- construction and configuration (no Consul) -------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"key": ""}, "key"),
        ({"key": "/abs"}, "key"),
        ({"key": None}, "key"),
        ({"key": "k", "ttl": 5}, "ttl"),
        ({"key": "k", "lock_delay": 61}, "lock_delay"),
        ({"key": "k", "ttl": 15, "margin": 12}, "margin"),
        ({"key": "k", "margin": 0}, "margin"),
        ({"key": "k", "shared": "sometimes"}, "shared"),
        ({"key": "k", "poll_interval": 0}, "poll_interval"),
        ({"key": "k", "elector": "consul"}, "elector"),
    ],
)
def test_bad_options_raise_a_configuration_error_naming_the_parameter(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as caught:
        LeaderOnlyJobStore(MemoryJobStore(), **options)
    assert isinstance(caught.value, ValueError)


class DictJobStore(BaseJobStore):  # type: ignore[misc]
    """A job store type this library does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryJobStore()

    def lookup_job(self, job_id: str) -> Any:
        return self.memory.lookup_job(job_id)

    def get_due_jobs(self, now: datetime) -> list[Any]:
        return self.memory.get_due_jobs(now)  # type: ignore[no-any-return]

    def get_next_run_time(self) -> datetime | None:
        return self.memory.get_next_run_time()  # type: ignore[no-any-return]

    def get_all_jobs(self) -> list[Any]:
        return self.memory.get_all_jobs()  # type: ignore[no-any-return]

    def add_job(self, job: Any) -> None:
        self.memory.add_job(job)

    def update_job(self, job: Any) -> None:
        self.memory.update_job(job)

    def remove_job(self, job_id: str) -> None:
        self.memory.remove_job(job_id)

    def remove_all_jobs(self) -> None:
        self.memory.remove_all_jobs()


def test_the_store_type_decides_shared_or_per_process_and_the_user_can_override(tmp_path: Path) -> None:
    assert not LeaderOnlyJobStore(MemoryJobStore(), key="k").shared
    assert LeaderOnlyJobStore(MemoryJobStore(), key="k", shared=True).shared
    assert LeaderOnlyJobStore(SQLAlchemyJobStore(url=f"sqlite:///{tmp_path}/jobs.sqlite"), key="k").shared
    assert not LeaderOnlyJobStore(SQLAlchemyJobStore(url="sqlite://"), key="k").shared
    assert not LeaderOnlyJobStore(SQLAlchemyJobStore(url="sqlite:///:memory:"), key="k").shared
    assert not LeaderOnlyJobStore(
        SQLAlchemyJobStore(url=f"sqlite:///{tmp_path}/j.sqlite"), key="k", shared="false"
    ).shared
    with pytest.raises(ConfigurationError, match="shared must be given for a DictJobStore"):
        LeaderOnlyJobStore(DictJobStore(), key="k")
    assert LeaderOnlyJobStore(DictJobStore(), key="k", shared=True).shared


def test_inner_may_be_given_as_configuration(tmp_path: Path) -> None:
    store = LeaderOnlyJobStore("memory", key="k")
    assert type(store.inner) is MemoryJobStore
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    store = LeaderOnlyJobStore({"type": "sqlalchemy", "url": url, "tablename": "t"}, key="k")
    assert type(store.inner) is SQLAlchemyJobStore
    assert store.shared
    store = LeaderOnlyJobStore({"class": "apscheduler.jobstores.memory:MemoryJobStore"}, key="k")
    assert type(store.inner) is MemoryJobStore
    with pytest.raises(ConfigurationError, match=r"inner\['type'\].*memory.*sqlalchemy"):
        LeaderOnlyJobStore({"type": "nosuch"}, key="k")
    with pytest.raises(ConfigurationError, match=r"inner\['class'\]"):
        LeaderOnlyJobStore({"class": "nosuch.module:Store"}, key="k")
    with pytest.raises(ConfigurationError, match="inner must"):
        LeaderOnlyJobStore(42, key="k")
    with pytest.raises(ConfigurationError, match="not another LeaderOnlyJobStore"):
        LeaderOnlyJobStore(LeaderOnlyJobStore(MemoryJobStore(), key="k"), key="k")
    # The wrapped store's own errors stay its own.
    with pytest.raises(ValueError, match='Need either "engine" or "url"'):
        LeaderOnlyJobStore({"type": "sqlalchemy"}, key="k")


def test_the_scheduler_configuration_dict_builds_it(tmp_path: Path) -> None:
    scheduler = BackgroundScheduler(
        {
            "apscheduler.jobstores.default.class": "singleton.contrib.apscheduler:LeaderOnlyJobStore",
            "apscheduler.jobstores.default.key": "billing",
            "apscheduler.jobstores.default.ttl": "20",
            "apscheduler.jobstores.default.inner.type": "sqlalchemy",
            "apscheduler.jobstores.default.inner.url": f"sqlite:///{tmp_path}/jobs.sqlite",
        }
    )
    store = scheduler._lookup_jobstore("default")
    assert isinstance(store, LeaderOnlyJobStore)
    assert (store.key, store.ttl, store.shared) == ("billing", 20.0, True)
    assert store.engine is store.inner.engine  # public attributes of the wrapped store reach through


def test_the_entry_point_names_the_store() -> None:
    entry = metadata.EntryPoint(
        name=PLUGIN_NAME, value="singleton.contrib.apscheduler:LeaderOnlyJobStore", group="apscheduler.jobstores"
    )
    assert entry.load() is LeaderOnlyJobStore
    installed = {ep.name: ep for ep in metadata.entry_points(group="apscheduler.jobstores")}
    assert PLUGIN_NAME in installed, "setup.cfg registers the store under the apscheduler.jobstores entry point"
    assert installed[PLUGIN_NAME].value == entry.value
    scheduler = BackgroundScheduler(jobstores={"default": {"type": PLUGIN_NAME, "key": "k", "inner": "memory"}})
    assert isinstance(scheduler._lookup_jobstore("default"), LeaderOnlyJobStore)


def test_it_delegates_to_the_wrapped_store_and_keeps_its_errors() -> None:
    inner = MemoryJobStore()
    store = LeaderOnlyJobStore(inner, key="k")
    job = plain_job("a")
    store.add_job(job)
    assert store.lookup_job("a") is job
    assert store.get_all_jobs() == [job]
    assert inner.get_all_jobs() == [job]
    with pytest.raises(ConflictingIdError):
        store.add_job(plain_job("a"))
    with pytest.raises(JobLookupError):
        store.update_job(plain_job("b"))
    with pytest.raises(JobLookupError):
        store.remove_job("b")
    store.remove_job("a")
    assert store.get_all_jobs() == []
    with pytest.raises(AttributeError):
        _ = store.no_such_attribute
    assert "key='k'" in repr(store)
    assert "per-process" in repr(store)


def test_it_pickles_and_copies_as_its_configuration() -> None:
    store = LeaderOnlyJobStore(MemoryJobStore(), key="billing", ttl=20, lock_delay=17, poll_interval=3)
    store.add_job(plain_job("a"))
    for clone in (pickle.loads(pickle.dumps(store)), copy.deepcopy(store)):
        assert isinstance(clone, LeaderOnlyJobStore)
        assert (clone.key, clone.ttl, clone.lock_delay, clone.poll_interval, clone.shared) == (
            "billing",
            20,
            17,
            3,
            False,
        )
        assert [j.id for j in clone.get_all_jobs()] == ["a"]
        assert clone.election is None


def test_leader_only_scheduler_wraps_every_store_before_start(tmp_path: Path) -> None:
    scheduler = BackgroundScheduler(jobstores={"db": SQLAlchemyJobStore(url=f"sqlite:///{tmp_path}/jobs.sqlite")})
    own = memory_elector()
    try:
        assert leader_only_scheduler(scheduler, key="k", elector=own) is scheduler
        default, db = scheduler._lookup_jobstore("default"), scheduler._lookup_jobstore("db")
        assert isinstance(default, LeaderOnlyJobStore)
        assert not default.shared
        assert isinstance(db, LeaderOnlyJobStore)
        assert db.shared
        leader_only_scheduler(scheduler, key="k", elector=own)  # idempotent
        assert scheduler._lookup_jobstore("default") is default
        with pytest.raises(ConfigurationError, match="ttl"):
            leader_only_scheduler(BackgroundScheduler(), key="k", ttl=1)
        with pytest.raises(ConfigurationError, match="scheduler must be"):
            leader_only_scheduler(object(), key="k")
        scheduler.start(paused=True)
        try:
            with pytest.raises(ConfigurationError, match=r"before scheduler\.start\(\)"):
                leader_only_scheduler(scheduler, key="k")
        finally:
            scheduler.shutdown(wait=False)
    finally:
        own.close(grace=0)


def test_importing_without_apscheduler_says_which_extra_to_install() -> None:
    code = "import sys; sys.modules['apscheduler'] = None; import singleton.contrib.apscheduler"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "consul-singleton[apscheduler]" in result.stderr


def test_with_apscheduler_4_installed_the_import_says_what_to_do(tmp_path: Path) -> None:
    # An APScheduler 4 layout: the package exists, apscheduler.jobstores does not.
    (tmp_path / "apscheduler").mkdir()
    (tmp_path / "apscheduler" / "__init__.py").write_text("")
    dist = tmp_path / "APScheduler-4.0.0a6.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: APScheduler\nVersion: 4.0.0a6\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import singleton.contrib.apscheduler"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "supports APScheduler 3.x, but 4.0.0a6 is installed" in result.stderr
    assert "consul-singleton[apscheduler]" in result.stderr


def test_the_public_api_of_the_module() -> None:
    import singleton.contrib.apscheduler as module

    assert module.__all__ == ["LeaderOnlyJobStore", "leader_only_scheduler"]


# -- one process, real Consul ----------------------------------------------------------------------


class CountingMemoryJobStore(MemoryJobStore):  # type: ignore[misc]
    """A MemoryJobStore that counts how often the scheduler's passes look at it."""

    def __init__(self) -> None:
        super().__init__()
        self.due_calls = 0
        self.looks = 0

    def get_due_jobs(self, now: datetime) -> list[Any]:
        self.due_calls += 1
        return super().get_due_jobs(now)  # type: ignore[no-any-return]

    def get_next_run_time(self) -> datetime | None:
        self.looks += 1
        return super().get_next_run_time()  # type: ignore[no-any-return]


@dataclass
class Recorder:
    """What the jobs and the scheduler's events reported."""

    bodies: list[tuple[str, int]] = field(default_factory=list)
    executed: list[tuple[str, float]] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    def listen(self, scheduler: Any) -> None:
        def on_event(event: Any) -> None:
            if event.code == EVENT_JOB_EXECUTED:
                self.executed.append((event.job_id, event.scheduled_run_time.timestamp()))
            else:
                self.errors.append((event.job_id, event.exception))

        scheduler.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)


def wait_until(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.mark.consul
def test_a_follower_sleeps_until_a_job_is_due_and_advances_it_as_the_leader_would(electors: list[Elector]) -> None:
    holder, follower = electors
    assert holder.register("jobs").wait_for_leadership(10)
    inner = CountingMemoryJobStore()
    store = LeaderOnlyJobStore(inner, key="jobs", elector=follower)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    recorder = Recorder()
    recorder.listen(scheduler)
    soon = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    scheduler.add_job(recorder.bodies.append, "interval", seconds=1, start_date=EPOCH, args=[("tick", 0)], id="tick")
    scheduler.add_job(recorder.bodies.append, "date", run_date=soon, args=[("once", 0)], id="once")
    started = time.monotonic()
    scheduler.start()
    try:
        assert store.election is not None
        assert store.election.wait_settled(10)
        for _ in range(30):
            upcoming = store.get_next_run_time()
            assert upcoming is not None
            assert upcoming > datetime.now(timezone.utc), "a follower never asks to be woken in the past"
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        # Advanced as the leader would have: the date job fell due and is retired, the interval job
        # is due within the next second.
        now = datetime.now(timezone.utc)
        jobs = {job.id: job for job in inner.get_all_jobs()}
        assert "once" not in jobs
        assert now < jobs["tick"].next_run_time <= now + timedelta(seconds=1.01)
    finally:
        scheduler.shutdown()
    assert not store.is_leader
    assert recorder.bodies == []
    assert recorder.executed == []
    # About one look per due time (a busy loop makes hundreds of thousands).
    assert 2 <= inner.due_calls <= elapsed + 6, inner.due_calls


@pytest.mark.consul
def test_consul_unreachable_at_start_neither_runs_jobs_nor_spins(
    fresh_consul_agent: ConsulAgent, key_prefix: str
) -> None:
    own = elector(fresh_consul_agent.settings(timeout=2), key_prefix, "outage:1")
    inner = CountingMemoryJobStore()
    store = LeaderOnlyJobStore(inner, key="jobs", elector=own)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    ran: list[str] = []
    overdue = datetime.now(timezone.utc) - timedelta(seconds=1)
    scheduler.add_job(ran.append, "date", run_date=overdue, args=["once"], misfire_grace_time=None, id="once")
    scheduler.add_job(ran.append, "interval", seconds=1, start_date=EPOCH, args=["tick"], id="tick")
    try:
        with fresh_consul_agent.paused():  # every call hangs until its timeout
            began = time.monotonic()
            scheduler.start()  # does not raise, does not block
            assert time.monotonic() - began < 1.0
            time.sleep(3.5)
            assert store.election is not None
            assert not store.is_leader
            assert ran == [], "no job runs in a process that cannot prove it holds the lock"
            # The first attempt took its 2 s timeout: the overdue job waited (without spinning),
            # then, settled as a follower, the store retired it as the leader would have.
            assert inner.looks < 40, inner.looks
            upcoming = store.get_next_run_time()
            assert upcoming is not None
            assert upcoming > datetime.now(timezone.utc)
        assert store.election.wait_for_leadership(30), store.election.status()
        assert wait_until(lambda: "tick" in ran, 5)
    finally:
        scheduler.shutdown()
        own.close(grace=0)
    assert "once" not in ran


@pytest.mark.consul
def test_leadership_arriving_wakes_the_scheduler_at_once(electors: list[Elector]) -> None:
    holder, follower = electors
    held = holder.register("jobs")
    assert held.wait_for_leadership(10)
    # shared=True: the followers leave the store alone and the new leader catches up.
    inner = CountingMemoryJobStore()
    store = LeaderOnlyJobStore(inner, key="jobs", elector=follower, shared=True)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    ran: list[float] = []
    due = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    scheduler.add_job(lambda: ran.append(time.monotonic()), "date", run_date=due, misfire_grace_time=None, id="once")
    scheduler.start()
    try:
        assert store.election is not None
        assert store.election.wait_settled(10)
        time.sleep(1.5)
        assert ran == []
        assert inner.due_calls == 0, "a follower of a shared store does not read it"
        assert store.get_next_run_time() is None, "it sleeps until leadership arrives"
        assert [job.id for job in inner.get_all_jobs()] == ["once"], "the date job that fell due is kept"
        assert held.resign(5)
        assert store.election.wait_for_leadership(5)
        became_leader = time.monotonic()
        # (get_jobs() waits for the scheduler's pass to finish: shutting down in the middle of one
        # races inside APScheduler.)
        assert wait_until(lambda: bool(ran) and not scheduler.get_jobs(), 5)
        assert ran[0] - became_leader < 1.0
    finally:
        scheduler.shutdown()


@pytest.mark.consul
def test_after_a_step_down_no_job_starts_and_running_jobs_see_their_token(electors: list[Elector]) -> None:
    store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=electors[0])
    # One worker thread in the default executor: the queued job waits behind the long one.
    executors = {"default": PoolExecutor(1), "ticks": PoolExecutor(2)}
    scheduler = BackgroundScheduler(jobstores={"default": store}, executors=executors, timezone=timezone.utc)
    recorder = Recorder()
    recorder.listen(scheduler)
    started = threading.Event()
    tick_times: list[float] = []

    def long_job() -> None:
        token = singleton.current_token()
        recorder.bodies.append(("long", token.fence))
        started.set()
        token.wait(30)
        recorder.stopped.append(token.reason or "")

    def queued_job() -> None:
        recorder.bodies.append(("queued", singleton.current_token().fence))

    due = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    scheduler.add_job(long_job, "date", run_date=due, id="a-long", misfire_grace_time=None)
    scheduler.add_job(queued_job, "date", run_date=due, id="b-queued", misfire_grace_time=None)
    scheduler.add_job(lambda: tick_times.append(time.time()), "interval", seconds=1, start_date=EPOCH, executor="ticks")
    scheduler.start()
    try:
        assert store.election is not None
        assert store.election.wait_for_leadership(10)
        token = store.election.token
        assert token is not None
        assert started.wait(10)
        assert recorder.bodies == [("long", token.fence)]
        assert wait_until(lambda: bool(tick_times), 3), "the leader runs the interval job"
        stepped_down = time.time()
        assert store.election.resign(5)
        assert wait_until(lambda: bool(recorder.stopped), 5)
        assert time.time() - stepped_down < 1.0
        assert recorder.stopped == ["resigned"]
        assert wait_until(lambda: bool(recorder.errors), 5)
        time.sleep(2.2)  # two more ticks fall due
    finally:
        scheduler.shutdown()
    assert recorder.bodies == [("long", token.fence)], "the queued job did not start after the step-down"
    assert [(job, type(exc)) for job, exc in recorder.errors] == [("b-queued", LeadershipLost)]
    assert all(at < stepped_down for at in tick_times), "no tick ran after the step-down"


@pytest.mark.consul
def test_a_new_leader_does_not_rerun_times_that_fell_due_before_its_term(electors: list[Elector]) -> None:
    executed: dict[str, list[float]] = {"a": [], "b": []}
    schedulers: dict[str, Any] = {}
    stores: dict[str, LeaderOnlyJobStore] = {}
    for name, own in zip("ab", electors, strict=True):
        stores[name] = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=own)
        scheduler = BackgroundScheduler(jobstores={"default": stores[name]}, timezone=timezone.utc)

        def on_event(event: Any, name: str = name) -> None:
            executed[name].append(event.scheduled_run_time.timestamp())

        scheduler.add_listener(on_event, EVENT_JOB_EXECUTED)
        # No coalescing, no misfire limit: a store that kept the old times would run every one of them.
        scheduler.add_job(print, "interval", seconds=1, start_date=EPOCH, coalesce=False, misfire_grace_time=None)
        schedulers[name] = scheduler
    schedulers["a"].start()
    try:
        a, b = stores["a"].election, None
        assert a is not None
        assert a.wait_for_leadership(10)
        # b's scheduler is paused: its copy of the job keeps the times that fall due, as a scheduler
        # does when its leadership arrives a moment before its own pass for that time.
        schedulers["b"].start(paused=True)
        b = stores["b"].election
        assert b is not None
        assert b.wait_settled(10)
        assert wait_until(lambda: len(executed["a"]) >= 2, 5)
        assert a.resign(5)
        assert b.wait_for_leadership(5)
        schedulers["b"].resume()
        assert wait_until(lambda: len(executed["b"]) >= 2, 5)
    finally:
        for scheduler in schedulers.values():
            if scheduler.running:
                scheduler.shutdown()
    assert not set(executed["a"]) & set(executed["b"]), executed
    assert min(executed["b"]) > max(executed["a"])


@pytest.mark.consul
def test_a_job_overdue_at_start_waits_for_the_first_attempt_and_runs_once_on_the_first_leader(
    fresh_consul_agent: ConsulAgent, key_prefix: str
) -> None:
    own = elector(fresh_consul_agent.settings(timeout=5), key_prefix, "startup:1")
    ran: list[str] = []
    store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=own)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    overdue = datetime.now(timezone.utc) - timedelta(seconds=1)  # run at startup
    scheduler.add_job(ran.append, "date", run_date=overdue, args=["startup"], misfire_grace_time=30)
    try:
        with fresh_consul_agent.paused():  # the first attempt hangs for a while, shorter than its timeout
            scheduler.start()
            time.sleep(1.0)
            assert store.election is not None
            assert store.election.role is Role.STARTING
            assert ran == []
        assert store.election.wait_for_leadership(10)
        assert wait_until(lambda: bool(ran) and not scheduler.get_jobs(), 5)
    finally:
        scheduler.shutdown()
        own.close(grace=0)
    assert ran == ["startup"]


#: (reader store, what the job saw): for record_what_is_stored, which a persistent store names by reference.
_stored_seen: tuple[Any, list[tuple[float, float | None]]] | None = None


def record_what_is_stored() -> None:
    """A job: when it starts, what would a new leader find in the shared store if this process died now?"""
    assert _stored_seen is not None
    reader, seen = _stored_seen
    stored = reader.lookup_job("job")
    seen.append((time.time(), None if stored.next_run_time is None else stored.next_run_time.timestamp()))


@pytest.mark.consul
def test_a_shared_store_records_the_next_run_time_before_the_job_runs(electors: list[Elector], tmp_path: Path) -> None:
    global _stored_seen
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    reader = SQLAlchemyJobStore(url=url)
    seen: list[tuple[float, float | None]] = []
    _stored_seen = (reader, seen)
    store = LeaderOnlyJobStore(SQLAlchemyJobStore(url=url), key="jobs", elector=electors[0])
    # The debug executor runs the job inside submit_job(), before the scheduler updates the store.
    scheduler = BackgroundScheduler(
        jobstores={"default": store}, executors={"default": {"type": "debug"}}, timezone=timezone.utc
    )
    scheduler.start(paused=True)
    try:
        reader.start(scheduler, "reader")
        scheduler.add_job(f"{__name__}:record_what_is_stored", "interval", seconds=1, start_date=EPOCH, id="job")
        assert store.election is not None
        assert store.election.wait_for_leadership(10)
        scheduler.resume()
        assert wait_until(lambda: len(seen) >= 2, 5)
    finally:
        scheduler.shutdown()
        reader.shutdown()
        _stored_seen = None
    for began, stored in seen:
        assert stored is not None
        assert stored > began, "the store already holds the run after the one that is starting"


@pytest.mark.consul
def test_jobs_handed_to_a_process_pool_pickle_as_plain_jobs(electors: list[Elector], tmp_path: Path) -> None:
    store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=electors[0])
    scheduler = BackgroundScheduler(
        jobstores={"default": store}, executors={"default": {"type": "processpool", "max_workers": 1}}
    )
    made = tmp_path / "made-by-the-pool"
    due = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    # A bound method: pickled, APScheduler keeps its instance in the job's args. It runs in the pool's
    # process, without a token.
    scheduler.add_job(made.mkdir, "date", run_date=due, misfire_grace_time=None)
    recorder = Recorder()
    recorder.listen(scheduler)
    scheduler.start()
    try:
        assert store.election is not None
        assert store.election.wait_for_leadership(10)
        assert wait_until(lambda: bool(recorder.executed or recorder.errors) and not scheduler.get_jobs(), 20)
    finally:
        scheduler.shutdown()
    assert recorder.errors == []
    assert made.is_dir()


@pytest.mark.consul
def test_an_asyncio_scheduler_runs_coroutine_jobs_only_on_the_leader(electors: list[Elector]) -> None:
    events: list[tuple[str, str, float]] = []
    stops: list[tuple[str, str]] = []

    async def tick(name: str) -> None:
        token = singleton.current_token()
        events.append((name, threading.current_thread().name, token.fence))

    async def long_job(name: str) -> None:
        token = singleton.current_token()
        await token.wait_async(30)
        stops.append((name, token.reason or ""))

    async def main() -> tuple[float, float]:
        schedulers: dict[str, Any] = {}
        executed: list[tuple[str, float]] = []
        for name, own in zip("ab", electors, strict=True):
            store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=own)
            scheduler = AsyncIOScheduler(jobstores={"default": store}, timezone=timezone.utc)

            def on_event(event: Any, name: str = name) -> None:
                executed.append((name, event.scheduled_run_time.timestamp()))

            scheduler.add_listener(on_event, EVENT_JOB_EXECUTED)
            scheduler.add_job(tick, "interval", seconds=1, start_date=EPOCH, args=[name], id="tick")
            scheduler.add_job(long_job, "date", run_date=datetime.now(timezone.utc) + timedelta(seconds=1), args=[name])
            scheduler.start()
            schedulers[name] = scheduler
        await asyncio.sleep(3.2)
        first = {name for name, _, _ in events}
        assert len(first) == 1, events
        (leader,) = first
        other = "b" if leader == "a" else "a"
        leader_store = schedulers[leader]._lookup_jobstore("default")
        handed_over = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, leader_store.election.resign, 5)
        other_store = schedulers[other]._lookup_jobstore("default")
        ok = await asyncio.get_running_loop().run_in_executor(None, other_store.election.wait_for_leadership, 5)
        assert ok
        took = time.monotonic() - handed_over
        await asyncio.sleep(2.5)
        for scheduler in schedulers.values():
            scheduler.shutdown(wait=False)
        await asyncio.sleep(0.1)
        assert Counter(at for _, at in executed).most_common(1)[0][1] == 1, "no scheduled time ran twice"
        return took, handed_over

    took, _ = asyncio.run(main())
    names = [name for name, _, _ in events]
    assert names[0] != names[-1], "the other scheduler took over"
    assert took < 1.0
    assert all(thread == "MainThread" for _, thread, _ in events), "coroutine jobs run on the event loop"
    assert len(stops) == 1, "the long job ran once, on the leader, and saw its token fire"
    assert stops[0][1] == "resigned"
    assert names.count(names[0]) >= 2
    assert names.count(names[-1]) >= 2


# -- three processes, real Consul ------------------------------------------------------------------


@dataclass
class Scenario:
    """Three schedulers: a steady phase, a graceful stop of the leader, then a crash (SIGKILL) of the next."""

    fleet: SchedulerFleet
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
    crash_takeover: float = 0.0
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
        self.thread.join(CRASH_BOUND + 60)
        assert not self.thread.is_alive(), "the scenario did not finish"

    def _run(self) -> None:
        fleet = self.fleet
        fleet.wait_for(lambda: len(fleet.events("ready")) == 3 and bool(fleet.leads()), 45, "three ready workers")
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
        self.crash_takeover = lead.at - self.killed_at
        time.sleep(3.0)

    def summary(self) -> str:
        cpu = ", ".join(f"{used:.3f}s" for used in self.follower_cpu.values())
        return (
            f"follower CPU in {self.steady[1] - self.steady[0]:.1f}s: {cpu}; graceful takeover "
            f"{self.graceful_takeover * 1000:.0f} ms; crash takeover {self.crash_takeover:.1f}s; "
            f"runs {Counter(run.job for run in self.fleet.runs())}"
        )

    def check(self, jobs: list[str]) -> None:
        """What holds for every store: one runner at a time, once per scheduled time, quick takeovers."""
        if self.error is not None:
            raise AssertionError(f"the scenario failed: {self.error!r}\n{self.fleet.report()}") from self.error
        fleet, report = self.fleet, self.fleet.report()
        for job in jobs:
            runs = fleet.runs(job)
            counts = Counter(run.scheduled for run in runs)
            twice = {at: n for at, n in counts.items() if n > 1}
            assert not twice, f"{job}: scheduled times run more than once: {twice}\n{report}"
            # Steady phase: the leader alone, exactly once per scheduled time (one scheduler, not three).
            low, high = self.steady
            in_window = [run for run in runs if low + 0.5 <= run.scheduled <= high - 0.5]
            assert {run.pid for run in in_window} == {self.first}, report
            assert sorted(run.scheduled for run in in_window) == ticks(low + 0.5, high - 0.5), report
            # Each process ran only while it led: before the stop, after the takeover, after the crash.
            assert all(run.scheduled < self.stopped_at for run in runs if run.pid == self.first), report
            # (A catch-up run may be reported a moment before the worker logs its "lead" line.)
            assert all(self.graceful_lead - 0.5 <= run.at <= self.killed_at for run in runs if run.pid == self.second)
            assert all(run.at >= self.crash_lead - 0.5 for run in runs if run.pid == self.third), report
            assert any(run.pid == self.third for run in runs), report
        bodies = fleet.events("body")
        assert {e.pid for e in bodies} <= {self.first, self.second, self.third}
        leads = {e.pid: int(e.fields[0]) for e in fleet.leads()}
        for pid in (self.first, self.second, self.third):
            fences = {int(e.fields[1]) for e in bodies if e.pid == pid}
            assert fences <= {leads[pid]}, "jobs see their term's token (current_token())"
        assert not fleet.events("error"), report
        for pid, used in self.follower_cpu.items():
            assert used < 0.3, f"follower {pid} used {used:.2f}s of CPU in {self.steady[1] - self.steady[0]:.1f}s"
        assert self.first_exit == 0, report
        assert self.graceful_takeover < 1.0, f"graceful takeover took {self.graceful_takeover:.2f}s"
        assert self.crash_takeover <= CRASH_BOUND + 2, f"crash failover took {self.crash_takeover:.1f}s"


@pytest.fixture(scope="module")
def scenarios(consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scenario]]:
    """Both fleets, started at once and running in the background; a test joins the one it checks."""
    tmp = tmp_path_factory.mktemp("apscheduler-fleets")
    db = tmp / "jobs.sqlite"
    # Create the table once, so that three processes starting together do not race to create it.
    seed = SQLAlchemyJobStore(url=f"sqlite:///{db}")
    seed.jobs_t.create(seed.engine, checkfirst=True)
    seed.engine.dispose()
    prefix = f"test/apscheduler-{time.time_ns()}/"
    found = {
        "memory": Scenario(SchedulerFleet(tmp / "memory", consul_agent.address, prefix + "memory")),
        "sqlalchemy": Scenario(
            SchedulerFleet(
                tmp / "sqlalchemy", consul_agent.address, prefix + "sql", ["--store", "sqlalchemy", "--db", str(db)]
            )
        ),
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


@pytest.fixture(scope="module", autouse=True)
def _fleets_start_with_the_module(request: pytest.FixtureRequest) -> None:
    """The fleets spend most of their half minute waiting out a crashed leader's session TTL: start them
    first, so that the other tests of this module run in the meantime."""
    selected = any(
        item.get_closest_marker("slow") is not None and item.path == request.path for item in request.session.items
    )
    try:
        find_consul()
    except ConsulNotFound:
        return  # the fleet tests skip (or fail under CI) through their own fixtures
    if selected:
        request.getfixturevalue("scenarios")


@pytest.mark.consul
@pytest.mark.slow
def test_three_processes_with_a_memory_store_run_each_time_once_and_fail_over(scenarios: dict[str, Scenario]) -> None:
    scenario = scenarios["memory"]
    scenario.join()
    print("memory store:", scenario.summary())
    scenario.check(["tick"])
    runs = scenario.fleet.runs("tick")
    # A per-process store does not catch up: the new leader runs nothing scheduled before its term.
    assert all(run.scheduled >= scenario.crash_lead - 0.01 for run in runs if run.pid == scenario.third)
    # Outside the failovers, every scheduled time ran: at most one lost around the graceful handover.
    before_crash = [run.scheduled for run in runs if run.scheduled < scenario.killed_at - 1]
    missing = set(ticks(min(before_crash), max(before_crash))) - set(before_crash)
    assert len(missing) <= 1, (missing, scenario.fleet.report())


@pytest.mark.consul
@pytest.mark.slow
def test_three_processes_with_a_shared_sqlite_store_run_each_time_once_and_catch_up(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["sqlalchemy"]
    scenario.join()
    print("sqlalchemy store:", scenario.summary())
    scenario.check(["coalesced", "every"])
    fleet, report = scenario.fleet, scenario.fleet.report()
    gap = ticks(scenario.killed_at, scenario.crash_lead)
    assert len(gap) >= 5, "the crash failover waited out the session TTL"
    # coalesce=True: the scheduled times missed during the failover run once, as one run.
    caught = [r for r in fleet.runs("coalesced") if r.pid == scenario.third and r.scheduled < scenario.crash_lead]
    assert len(caught) == 1, report
    # coalesce=False, no misfire grace limit: every missed time runs, each once; nothing is lost but
    # (at most) the one the killed leader had recorded and not yet run.
    every = sorted(run.scheduled for run in fleet.runs("every"))
    missing = set(ticks(every[0], every[-1])) - set(every)
    assert len(missing) <= 1, (missing, report)
    assert all(at < scenario.crash_lead for at in missing)
    late = [r for r in fleet.runs("every") if r.pid == scenario.third and r.scheduled < scenario.crash_lead]
    assert len(late) >= len(gap) - 1, report


# -- interval jobs without a start_date (per-process stores) -------------------------------------------


def _offset(when: datetime, seconds: float) -> float:
    """Where ``when`` falls in its interval counted from the Unix epoch (0 on the common grid)."""
    return round((when - GRID_ORIGIN).total_seconds() % seconds, 6) % seconds


def test_interval_jobs_without_a_start_date_get_the_same_times_in_every_process() -> None:
    """``add_job(f, "interval", seconds=7)``, as APScheduler's docs write it, in two processes 0.37 s apart."""
    schedulers, stores = [], []
    try:
        for name in ("a", "b"):
            store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=memory_elector(f"{name}:1"))
            scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
            scheduler.add_job(print, "interval", seconds=7, id="tick")
            scheduler.add_job(print, "interval", seconds=0.3, id="fast")
            scheduler.add_job(print, "interval", hours=1, start_date=EPOCH + timedelta(seconds=3), id="mine")
            scheduler.start(paused=True)
            schedulers.append(scheduler)
            stores.append(store)
            time.sleep(0.37)
        for store in stores:
            tick, fast, mine = (store.lookup_job(job_id) for job_id in ("tick", "fast", "mine"))
            assert _offset(tick.next_run_time, 7) == 0, tick.next_run_time
            assert tick.next_run_time > datetime.now(timezone.utc)
            assert _offset(fast.next_run_time, 0.3) == 0, fast.next_run_time
            assert mine.trigger.start_date == EPOCH + timedelta(seconds=3), "a start in whole seconds is the user's"
        assert stores[0].lookup_job("tick").next_run_time == stores[1].lookup_job("tick").next_run_time
    finally:
        for scheduler in schedulers:
            scheduler.shutdown(wait=False)


def test_a_run_at_an_explicit_time_returns_to_the_grid_and_shared_stores_are_left_alone() -> None:
    store = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=memory_elector())
    shared = LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=memory_elector(), shared=True)
    for each in (store, shared):
        scheduler = BackgroundScheduler(jobstores={"default": each}, timezone=timezone.utc)
        now = datetime.now(timezone.utc)
        scheduler.add_job(print, "interval", seconds=5, next_run_time=now, id="soon")  # run at startup
        scheduler.start(paused=True)
        try:
            job = each.lookup_job("soon")
            assert job.next_run_time == now, "an explicit next_run_time is kept"
            # What the scheduler stores after that run: the run time plus the interval, off the grid.
            job.next_run_time = now + timedelta(seconds=5)
            each.update_job(job)
            stored = each.lookup_job("soon")
            if each is store:
                assert _offset(stored.next_run_time, 5) == 0, stored.next_run_time
                assert now + timedelta(seconds=5) <= stored.next_run_time < now + timedelta(seconds=10)
            else:
                assert stored.next_run_time == now + timedelta(seconds=5)
                assert stored.trigger.start_date.microsecond != 0 or _offset(stored.trigger.start_date, 5) != 0
        finally:
            scheduler.shutdown(wait=False)


@pytest.mark.consul
def test_interval_jobs_without_a_start_date_never_run_a_tick_twice_across_graceful_handoffs(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    """Three processes booting 0.3 s apart, each adding ``add_job(f, "interval", seconds=1)``; two handoffs."""
    fleet = SchedulerFleet(
        tmp_path,
        consul_agent.address,
        f"test/apscheduler-grid-{time.time_ns()}/jobs",
        ["--no-start-date", "--stagger", "0.3"],
    )
    try:
        fleet.wait_for(lambda: len(fleet.events("ready")) == 3 and bool(fleet.leads()), 45, "three ready workers")
        leaders = [fleet.leads()[0].pid]
        for _ in range(2):
            time.sleep(2.5)
            stopped_at = fleet.signal(leaders[-1], signal.SIGTERM)
            leaders.append(fleet.wait_for_lead(stopped_at, set(leaders), 10).pid)
        time.sleep(2.5)
    finally:
        fleet.stop()
    report = fleet.report()
    runs = sorted(fleet.runs("tick"), key=lambda run: run.at)
    assert {run.pid for run in runs} == set(leaders), report
    assert all(abs(run.scheduled - round(run.scheduled)) < 0.002 for run in runs), f"one grid for all: {report}"
    counts = Counter(run.scheduled for run in runs)
    assert not {at for at, n in counts.items() if n > 1}, f"a tick ran twice\n{report}"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(runs)]
    assert min(gaps) > 0.5, f"two runs {min(gaps):.3f}s apart (the same tick, at two phases)\n{report}"
    assert not fleet.events("error"), report


def test_on_one_host_the_file_backend_runs_each_job_in_one_scheduler(tmp_path: Path) -> None:
    """Two schedulers (two electors, as two worker processes would have) sharing a lock directory."""
    backend = f"file://{tmp_path / 'locks'}"
    runs: list[str] = []
    schedulers: list[Any] = []
    electors: list[Elector] = []
    try:
        for name in ("a", "b"):
            worker = Elector(Settings(backend=backend, identity=f"{name}:1"), name=f"singleton-{name}")
            electors.append(worker)
            scheduler = BackgroundScheduler(timezone=timezone.utc)
            scheduler.add_jobstore(LeaderOnlyJobStore(MemoryJobStore(), key="jobs", elector=worker), "default")
            scheduler.add_job(
                runs.append, "interval", seconds=0.2, args=[name], id="tick", start_date=EPOCH, coalesce=True
            )
            scheduler.start()
            schedulers.append(scheduler)
        deadline = time.monotonic() + 10
        while len(runs) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(runs) >= 8
        assert len(set(runs)) == 1, f"one scheduler ran the job: {Counter(runs)}"
        leader = runs[0]
        index = 0 if leader == "a" else 1
        schedulers[index].shutdown(wait=True)  # resigns: the other takes over at once
        before = len(runs)
        deadline = time.monotonic() + 10
        while not runs[before:] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(runs[before:]) == {"b" if leader == "a" else "a"}
    finally:
        for scheduler in schedulers:
            if scheduler.running:
                scheduler.shutdown(wait=False)
        for worker in electors:
            worker.close(grace=0)
