"""APScheduler 3.x: an existing scheduler runs its jobs only in the process that holds a Consul lock.

Under gunicorn or uWSGI workers, or on several replicas, every process starts the same scheduler and
every job runs N times. Wrap the job store and only the holder of ``key`` runs due jobs::

    from apscheduler.jobstores.memory import MemoryJobStore
    from singleton.contrib.apscheduler import LeaderOnlyJobStore

    scheduler.add_jobstore(LeaderOnlyJobStore(MemoryJobStore(), key="billing"), "default")

or wrap every store of a scheduler that is not started yet: ``leader_only_scheduler(scheduler,
key="billing")``; or name it in the scheduler's configuration (plugin ``leader_only``, registered
under the ``apscheduler.jobstores`` entry point)::

    BackgroundScheduler(jobstores={"default": {"type": "leader_only", "key": "billing",
                                               "inner": {"type": "sqlalchemy", "url": DB_URL}}})

Install with ``pip install 'consul-singleton[apscheduler]'`` (APScheduler 3.10 or 3.11). Consul is
reached as everywhere else in ``singleton``: the process-wide elector (``singleton.configure()``,
``CONSUL_HTTP_ADDR``, ...) unless an ``elector`` is given.

Every process keeps its scheduler running and campaigns for ``key`` from ``scheduler.start()``.
Inside the scheduler's lock the store only *reads* the elector's cached state; it never makes a
network call there.

Per-process and shared stores
-----------------------------
*Per-process* (``shared=False``; the default for :class:`~apscheduler.jobstores.memory.MemoryJobStore`
and SQLite ``:memory:``): every process holds its own copy of the jobs, so every process must add the
same jobs (same ids, same triggers). All processes must agree on the scheduled times: an interval job
added as APScheduler's docs add it (``add_job(f, "interval", seconds=60)``, no ``start_date``) would
start at each process's own ``now + interval``, so the store moves such a start (one with a fraction
of a second, as ``now`` has) to the first multiple of the interval since the Unix epoch
(:data:`GRID_ORIGIN`): every process then fires at the same times (every 60 s at :00, every 5 min at
:00, :05, ...). A ``start_date`` in whole seconds is yours and is kept; a job's next run after an
explicit ``next_run_time`` is moved up onto the grid. Interval jobs with ``jitter`` fire at times of
each process's own (a warning says so): use a shared store for those. Cron and date triggers are the
same everywhere already (give the scheduler an explicit ``timezone``). Followers advance each job at
its due time exactly as the leader does,
without running it: a new leader inherits no backlog to burst through, and a date job that fell due
while it followed (and was run by the leader) is gone from its store too. A new leader never runs a
scheduled time that fell due after its scheduler started but before its term began: it cannot tell
whether the previous leader ran it, and a time run twice is worse than a time missed. So after a crash
the runs of the failover window are not caught up. At a graceful handoff nothing is lost or repeated:
the old leader ran only times before its token fired, which is before it released the key, and the
new leader runs only times from its acquisition on (as read on the hosts' clocks, which must agree:
a skew between hosts is a window in which a time can run twice). Jobs that were already overdue when the scheduler
started (``next_run_time=datetime.now()``: run at startup) are run by whichever process leads first.
A job added at run time to one process's store exists only there: add dynamic jobs to a shared store.

*Shared* (``shared=True``; the default for SQLAlchemy, Redis, MongoDB, ZooKeeper, RethinkDB and etcd
stores): every process sees the same stored jobs. Followers never read or write them; the leader is the
only process that moves a job's ``next_run_time``. It records the next run time in the store *before*
handing a job to the executor, so a crash of the leader can lose a run but never repeat one. After a
failover the new leader finds the runs that were missed and applies the job's own ``coalesce`` and
``misfire_grace_time`` to them. The leader looks again at the store every ``poll_interval`` seconds,
which is how jobs added by other processes are found.

A store type the module does not know must be given ``shared=True`` or ``shared=False``.

What happens when
-----------------
*Leadership arrives.* The election thread calls ``scheduler.wakeup()`` at once (for Twisted through
``reactor.callFromThread``; Qt and gevent schedulers cannot be woken from another thread and notice at
their next check, at most a second later). Due jobs are handed to the executor.

*Leadership is lost* (another process took the key, the session was invalidated, Consul could not be
reached for the whole local lease, the process shuts down). No job is started afterwards: due jobs are
left to the next leader, and a job handed to the executor while leading but not yet started raises
:class:`~singleton.errors.LeadershipLost` instead of running (APScheduler reports it as a job error).
Running jobs see their stop token fire: ``singleton.current_token()`` inside the job (thread, or
``async def`` job on the event loop). A job in a ``ProcessPoolExecutor`` runs in another process and has
no token.

*Consul is down.* Nothing raises into the scheduler. A leader keeps running jobs for as long as its
local lease lasts (``ttl - margin`` after the last renewal that reached Consul), then steps down; a
follower stays a follower. Jobs never run in a process that cannot prove it holds the lock.

*Follower CPU.* A follower never returns a next run time in the past: it sleeps until a job is due (to
advance it) or, with a shared store, until leadership arrives.

*Scheduler shutdown.* The store resigns the key (the token fires, the key is released without a
lock-delay, another process takes over at once) and shuts the wrapped store down. APScheduler shuts the
executors down first: with ``scheduler.shutdown(wait=True)`` a long job that waits for its token
should be stopped first (``store.election.resign()``, or ``singleton.shutdown()``, which the exit hook
also calls before non-daemon threads are joined). Stores that share a key share one election.

*Fork.* Start the scheduler in each worker after the fork (gunicorn ``post_worker_init``, uWSGI
``@postfork`` with ``--enable-threads``, as APScheduler itself requires). A store started before a fork
is useless in the child: the child's inherited token has fired, and its scheduler thread is gone.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any, TypeVar

from singleton._attach import Attachment
from singleton.config import LeaseOverrides, check_flag, check_range, validate_key
from singleton.election import Election, Elector, Role
from singleton.errors import ConfigurationError
from singleton.token import StopToken

_INSTALL_HINT = "install it with: pip install 'consul-singleton[apscheduler]'"

try:
    from apscheduler.job import Job  # type: ignore[import-untyped, unused-ignore]
    from apscheduler.jobstores.base import BaseJobStore  # type: ignore[import-untyped, unused-ignore]
    from apscheduler.jobstores.memory import MemoryJobStore  # type: ignore[import-untyped, unused-ignore]
    from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped, unused-ignore]
    from apscheduler.util import iscoroutinefunction_partial, maybe_ref  # type: ignore[import-untyped, unused-ignore]
except ImportError as exc:
    _version: str | None
    try:
        _version = metadata.version("APScheduler")
    except metadata.PackageNotFoundError:
        _version = None
    if _version is not None and not _version.startswith("3."):
        raise ImportError(
            f"singleton.contrib.apscheduler supports APScheduler 3.x, but {_version} is installed. "
            "APScheduler 4 coordinates its schedulers itself through a shared data store; "
            f"for 3.x, {_INSTALL_HINT}"
        ) from exc
    raise ImportError(f"singleton.contrib.apscheduler needs APScheduler 3.x; {_INSTALL_HINT}") from exc

__all__ = ["LeaderOnlyJobStore", "leader_only_scheduler"]

_log = logging.getLogger("singleton.contrib.apscheduler")

#: The name under the ``apscheduler.jobstores`` entry point.
PLUGIN_NAME = "leader_only"
#: A follower whose store still holds an overdue job checks again after this long (never sooner).
FOLLOWER_RECHECK = 1.0
#: Before the first acquisition attempt has an outcome, due jobs wait; checked again this often.
STARTING_RECHECK = 0.2
#: How long shutdown waits for the key to be released.
RESIGN_WAIT = 2.0
#: Schedulers whose wakeup() must not be called from another thread: they notice leadership by polling.
_POLLED_SCHEDULERS = ("apscheduler.schedulers.qt", "apscheduler.schedulers.gevent")
_SHARED_STORE_MODULES = (
    "apscheduler.jobstores.sqlalchemy",
    "apscheduler.jobstores.redis",
    "apscheduler.jobstores.mongodb",
    "apscheduler.jobstores.zookeeper",
    "apscheduler.jobstores.rethinkdb",
    "apscheduler.jobstores.etcd",
)

SchedulerT = TypeVar("SchedulerT")


class LeaderOnlyJobStore(BaseJobStore):  # type: ignore[misc]
    """A job store whose due jobs run only in the process that holds ``key``; everything else is ``inner``'s.

    :param inner: the job store to wrap: an instance (``MemoryJobStore()``, ``SQLAlchemyJobStore(...)``,
        ...), a plugin name (``"memory"``), or a mapping with ``"type"`` (plugin name) or ``"class"``
        (``"module:Class"``) and the store's own options, as in a scheduler's configuration.
    :param key: the Consul key (under the configured ``key_prefix``); one key per set of jobs that must
        run once across the fleet. Give it a key of its own: shutting the store down resigns the key.
    :param ttl: session TTL, 10..86400 s; default the process setting (15 s).
    :param lock_delay: 0..60 s; default the process setting (15 s).
    :param margin: the local lease is ``ttl - margin``; ``0 < margin < 2/3 ttl``; default ``max(1, ttl/5)``.
    :param check_ttl: fast failover (1..ttl/2 s): a crashed leader is replaced about ``check_ttl +
        lock_delay`` later; default the process setting (off).
    :param shared: True when every process sees the same stored jobs, False when each has its own copy
        (see the module docstring); None decides by the store's type. ``"true"``/``"false"`` are
        accepted too, as a configuration file gives them.
    :param poll_interval: with a shared store, how often the leader looks at the store for jobs that
        other processes added or changed (0.1..3600 s).
    :param elector: an :class:`~singleton.election.Elector` of your own instead of the process-wide one
        (not kept when the store is pickled).
    :raises ConfigurationError: at construction, for any bad option or a store type that needs ``shared``.

    Public attributes of the wrapped store (``engine``, ``redis``, ...) are reachable through this one;
    its exceptions (``ConflictingIdError``, ``JobLookupError``, database errors) pass through unchanged.
    """

    def __init__(
        self,
        inner: Any,
        *,
        key: str,
        ttl: float | None = None,
        lock_delay: float | None = None,
        margin: float | None = None,
        check_ttl: float | None = None,
        shared: bool | str | None = None,
        poll_interval: float = 10.0,
        elector: Elector | None = None,
    ) -> None:
        super().__init__()
        self.key = validate_key(key)
        self.lease = LeaseOverrides.checked(ttl=ttl, lock_delay=lock_delay, margin=margin, check_ttl=check_ttl)
        self.ttl, self.lock_delay, self.margin = self.lease.ttl, self.lease.lock_delay, self.lease.margin
        self.check_ttl = self.lease.check_ttl
        self.poll_interval = check_range("poll_interval", poll_interval, 0.1, 3600.0)
        if elector is not None and not isinstance(elector, Elector):
            raise ConfigurationError(f"elector must be a singleton Elector or None, got {elector!r}")
        self.inner: Any = _resolve_store(inner)
        flag = _flag("shared", shared)
        self.shared: bool = flag if flag is not None else _shared_by_type(self.inner)
        self._attachment = Attachment(self.key, self.lease, elector, owner=f"{type(self).__name__}({self.key!r})")
        #: Wall-clock time of the last start(): overdue runs older than this are the startup backlog.
        self._started_at = math.inf
        self._wake_mode = "direct"

    def __repr__(self) -> str:
        mode = "shared" if self.shared else "per-process"
        return f"<{type(self).__name__} key={self.key!r} {mode} inner={self.inner!r}>"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this object lacks: hand public ones to the wrapped store.
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only (the wrapped store pickles as itself); the election is not kept."""
        return {
            "inner": self.inner,
            "key": self.key,
            "ttl": self.ttl,
            "lock_delay": self.lock_delay,
            "margin": self.margin,
            "check_ttl": self.check_ttl,
            "shared": self.shared,
            "poll_interval": self.poll_interval,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- the election -----------------------------------------------------------------------------

    @property
    def election(self) -> Election | None:
        """This store's election (``is_leader``, ``holder``, ``status()``, ``resign()``); None before start."""
        return self._attachment.election

    @property
    def is_leader(self) -> bool:
        """Whether this process runs the store's jobs now. A read of cached state, never a network call."""
        election = self._attachment.election
        return election is not None and election.is_leader

    def _attach(self) -> Election | None:
        """The election of ``key``, registering it on first use; None when this process cannot campaign
        (singleton shut down): then the store is a follower for good and says so in the log."""
        election = self._attachment.get()
        if election is None:
            why = self._attachment.unavailable
            _log.error("%r: cannot campaign for %r (%s); its jobs will not run in this process", self, self.key, why)
        return election

    def _on_leadership(self, election: Election) -> None:
        """On the election thread, right after a change of leadership: make the scheduler look again."""
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running or self._wake_mode == "poll":
            return
        try:
            if self._wake_mode == "twisted":
                scheduler._reactor.callFromThread(scheduler.wakeup)
            else:
                scheduler.wakeup()
        except Exception as exc:  # a scheduler shutting down, an event loop already closed
            _log.debug("%r: could not wake the scheduler: %s", self, exc)

    # -- BaseJobStore -----------------------------------------------------------------------------

    def start(self, scheduler: Any, alias: str) -> None:
        """Start the wrapped store, then campaign for the key (no network call here: the election thread
        makes the attempt, and wakes the scheduler when it wins).

        :raises ConfigurationError: bad process settings (``CONSUL_HTTP_ADDR``, ...), or ``key`` already
            campaigned for in this process with other lease settings (by another store or a
            ``@leader_only`` function).
        """
        super().start(scheduler, alias)
        self.inner.start(scheduler, alias)
        self._started_at = time.time()
        self._wake_mode = _wake_mode(scheduler)
        election = self._attach()
        if election is None:
            return
        election.remove_listener(self._on_leadership)
        election.add_listener(self._on_leadership)
        if election.role is Role.RESIGNED:  # a scheduler started again after shutdown()
            election.campaign()

    def shutdown(self) -> None:
        """Resign the key, then shut ``inner`` down.

        Running jobs see their token fire; the key is released without a lock-delay, so another process
        takes over at once. Waits up to ``RESIGN_WAIT`` seconds for the release (when Consul is slow or
        down the session's expiry frees the key instead); never raises a Consul error.
        """
        election = self._attachment.election
        if election is not None:
            election.remove_listener(self._on_leadership)
            if not election.elector.closed:
                election.resign(RESIGN_WAIT)
        self.inner.shutdown()

    def lookup_job(self, job_id: str) -> Any:
        return self.inner.lookup_job(job_id)

    def get_all_jobs(self) -> list[Any]:
        return self.inner.get_all_jobs()  # type: ignore[no-any-return]

    def add_job(self, job: Any) -> None:
        job = _plain(job)
        if not self.shared:
            _agree(job, adding=True)
        self.inner.add_job(job)

    def update_job(self, job: Any) -> None:
        job = _plain(job)
        if not self.shared:
            _agree(job, adding=False)
        self.inner.update_job(job)

    def remove_job(self, job_id: str) -> None:
        self.inner.remove_job(job_id)

    def remove_all_jobs(self) -> None:
        self.inner.remove_all_jobs()

    def get_due_jobs(self, now: datetime) -> list[Any]:
        """The wrapped store's due jobs when leading, bound to the term's stop token; none otherwise.

        Called by the scheduler under its lock: leadership is read from cached state. Not leading, a
        per-process store advances the due jobs as the leader does (once the first acquisition attempt
        has an outcome); a shared store is not touched.
        """
        election = self._attachment.election
        token = election.token if election is not None else None
        if token is None or election is None:
            if not self.shared and (election is None or election.role is not Role.STARTING):
                self._skip(self.inner.get_due_jobs(now), now, -math.inf, math.inf, report=False)
            return []
        jobs = self.inner.get_due_jobs(now)
        if self.shared:
            self._record_ahead(jobs, now)
        else:
            # Times that fell due after this scheduler started and before this term began are the
            # previous leader's: a per-process store cannot know whether it ran them. (A startup
            # backlog older than such a time goes with it.)
            jobs = self._skip(jobs, now, self._started_at, token.since, report=True)
        return [_bind(job, election, token) for job in jobs]

    def get_next_run_time(self) -> datetime | None:
        """When the scheduler should look again: never a time in the past while not leading."""
        election = self._attachment.election
        leading = election is not None and election.is_leader
        now = datetime.now(timezone.utc)
        if self.shared:
            if not leading:
                # The leadership listener wakes the scheduler; a polled scheduler checks every second.
                return now + timedelta(seconds=FOLLOWER_RECHECK) if self._wake_mode == "poll" else None
            soon = now + timedelta(seconds=self.poll_interval)
            upcoming: datetime | None = self.inner.get_next_run_time()
            return soon if upcoming is None or upcoming > soon else upcoming
        upcoming = self.inner.get_next_run_time()
        if leading:
            return upcoming
        starting = election is not None and election.role is Role.STARTING
        if self._wake_mode == "poll":
            cap = now + timedelta(seconds=FOLLOWER_RECHECK)
            upcoming = cap if upcoming is None or upcoming > cap else upcoming
        if upcoming is not None and upcoming <= now:
            return now + timedelta(seconds=STARTING_RECHECK if starting else FOLLOWER_RECHECK)
        return upcoming

    # -- moving run times -------------------------------------------------------------------------

    def _skip(self, jobs: list[Any], now: datetime, low: float, high: float, *, report: bool) -> list[Any]:
        """Advance each job past its run times in ``[low, high)`` (epoch seconds) without running them,
        as the scheduler does after running them. Returns the jobs that are still due."""
        due = []
        for job in jobs:
            run_times = job._get_run_times(now)
            skipped = [t for t in run_times if low <= t.timestamp() < high]
            if not skipped:
                due.append(job)
                continue
            upcoming = _on_grid(job.trigger, job.trigger.get_next_fire_time(skipped[-1], now))
            if report:
                _log.info(
                    "job %r: not running %d run(s) scheduled from %s to %s: they fell due before this process "
                    "became the leader of %r, and a per-process job store cannot tell whether the previous "
                    "leader ran them",
                    job.id,
                    len(skipped),
                    skipped[0],
                    skipped[-1],
                    self.key,
                )
            if upcoming is None:
                self.inner.remove_job(job.id)
                continue
            job.next_run_time = upcoming
            self.inner.update_job(job)
            if upcoming <= now:
                due.append(job)
        return due

    def _record_ahead(self, jobs: list[Any], now: datetime) -> None:
        """Store each due job's next run time before the scheduler hands it to an executor (at most once).

        A job with no run after these becomes paused until the scheduler removes it a moment later.
        """
        for job in jobs:
            run_times = job._get_run_times(now)
            if not run_times:
                continue
            ahead = _copy_job(job, Job)
            ahead.next_run_time = job.trigger.get_next_fire_time(run_times[-1], now)
            self.inner.update_job(ahead)


def leader_only_scheduler(scheduler: SchedulerT, *, key: str, **options: Any) -> SchedulerT:
    """Wrap every job store of ``scheduler`` (adding the default one) in a :class:`LeaderOnlyJobStore`.

    Call it before ``scheduler.start()``; stores already wrapped are left alone. All stores campaign for
    the same ``key``; ``options`` are :class:`LeaderOnlyJobStore`'s. Returns ``scheduler``.

    :raises ConfigurationError: the scheduler is running, is not an APScheduler 3 scheduler, or an option
        is bad (then no store has been changed).
    """
    stores = getattr(scheduler, "_jobstores", None)
    if not isinstance(stores, dict) or not hasattr(scheduler, "add_jobstore"):
        raise ConfigurationError(f"scheduler must be an APScheduler 3.x scheduler, got {scheduler!r}")
    sched: Any = scheduler
    if sched.running:
        raise ConfigurationError("leader_only_scheduler() must be called before scheduler.start()")
    with sched._jobstores_lock:
        current = dict(stores)
    if "default" not in current:
        current["default"] = None
    wrapped = {}
    for alias, store in current.items():
        if isinstance(store, LeaderOnlyJobStore):
            continue
        inner = store if store is not None else sched._create_default_jobstore()
        wrapped[alias] = LeaderOnlyJobStore(inner, key=key, **options)
    for alias, store in wrapped.items():
        if current[alias] is not None:
            sched.remove_jobstore(alias, shutdown=False)
        sched.add_jobstore(store, alias)
    return scheduler


# -- jobs bound to a term ---------------------------------------------------------------------------


class _BoundJob(Job):  # type: ignore[misc]
    """A due job whose ``func`` runs under the term's stop token. Serialises as the plain job."""

    __slots__ = ("_singleton_func",)

    def __getstate__(self) -> dict[str, Any]:
        return _plain(self).__getstate__()  # type: ignore[no-any-return]


def _copy_job(job: Any, cls: Any) -> Any:
    copy = cls.__new__(cls)
    for name in Job.__slots__:
        if name != "__weakref__" and hasattr(job, name):
            setattr(copy, name, getattr(job, name))
    return copy


def _plain(job: Any) -> Any:
    """The job as the scheduler made it (a bound copy turned back into a plain one)."""
    if not isinstance(job, _BoundJob):
        return job
    plain = _copy_job(job, Job)
    plain.func = job._singleton_func
    return plain


def _bind(job: Any, election: Election, token: StopToken) -> Any:
    bound = _copy_job(job, _BoundJob)
    bound._singleton_func = job.func
    bound.func = _guarded(job.func, election, token)
    return bound


def _guarded(func: Any, election: Election, token: StopToken) -> Any:
    """``func`` that refuses to start once ``token`` fired, and runs with it as ``current_token()``."""
    if iscoroutinefunction_partial(func):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with election.body(token):
                return await func(*args, **kwargs)

        return functools.wraps(func)(run_async)

    def run(*args: Any, **kwargs: Any) -> Any:
        with election.body(token):
            return func(*args, **kwargs)

    return functools.wraps(func)(run)


# -- fire times every process agrees on (per-process stores) ---------------------------------------

#: Interval triggers of per-process stores count their fire times from here: every process agrees on it.
GRID_ORIGIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
#: Off the grid by less than this is the float rounding of APScheduler's own arithmetic, not a phase.
_GRID_SLACK_US = 1000
_jitter_warned: set[str] = set()


def _agree(job: Any, *, adding: bool) -> None:
    """Make a job of a per-process store fire at the same times in every process.

    ``add_job(f, "interval", seconds=1)`` starts the interval at ``now + interval``: every process has a
    phase of its own, and at a handoff the new leader runs "the same" tick a fraction of a second after
    the old one ran it. Such a start (one with a fraction of a second, as ``now`` always has) is moved
    to the first multiple of the interval since :data:`GRID_ORIGIN` at or after it, and a job's next run
    time off its trigger's grid (after an explicit ``next_run_time``) is moved up onto it. A start
    given in whole seconds is the user's and is kept.
    """
    trigger = job.trigger
    if not isinstance(trigger, IntervalTrigger):
        return
    if trigger.jitter:
        if adding and job.id not in _jitter_warned:
            _jitter_warned.add(job.id)
            _log.warning(
                "job %r: with jitter each process of a per-process job store has fire times of its own, so a "
                "new leader may run a time the previous leader ran a moment earlier; use a shared job store, "
                "or no jitter",
                job.id,
            )
        return
    start = trigger.start_date
    if start.microsecond:
        aligned_start = _grid_ceil(GRID_ORIGIN, trigger.interval, start).astimezone(start.tzinfo)
        if aligned_start != start:
            old_start = start
            trigger = copy.copy(trigger)
            trigger.start_date = aligned_start
            job.trigger = trigger
            if job.next_run_time is not None and _grid_offset(old_start, trigger.interval, job.next_run_time) == 0:
                # Computed by the scheduler from the old start: the same run, on the common grid.
                job.next_run_time = _grid_ceil(aligned_start, trigger.interval, job.next_run_time)
            if adding:
                _log.info(
                    "job %r: interval started at %s (this process's own moment); moved to %s, a multiple of "
                    "its interval since %s, so that every process runs the same times",
                    job.id,
                    old_start,
                    aligned_start,
                    GRID_ORIGIN.date(),
                )
            return
    if not adding:  # the run after an explicit next_run_time: back onto the grid
        job.next_run_time = _on_grid(trigger, job.next_run_time)


def _grid_offset(origin: datetime, step: timedelta, when: datetime) -> int:
    """Microseconds ``when`` lies after the last point of ``origin + k * step`` (0 on the grid)."""
    return ((when - origin) // _US) % (step // _US)


def _grid_ceil(origin: datetime, step: timedelta, when: datetime) -> datetime:
    """The first point of ``origin + k * step`` at or after ``when`` (exact: integer microseconds)."""
    offset = _grid_offset(origin, step, when)
    return when if offset == 0 else when + (step - offset * _US)


def _on_grid(trigger: Any, when: datetime | None) -> datetime | None:
    """``when`` moved up onto an interval trigger's grid (other triggers, jitter and None: unchanged)."""
    if when is None or not isinstance(trigger, IntervalTrigger) or trigger.jitter:
        return when
    offset = _grid_offset(trigger.start_date, trigger.interval, when)
    step = trigger.interval // _US
    if offset <= _GRID_SLACK_US or step - offset <= _GRID_SLACK_US:
        return when
    if trigger.end_date is not None and _grid_ceil(trigger.start_date, trigger.interval, when) > trigger.end_date:
        return None
    return _grid_ceil(trigger.start_date, trigger.interval, when).astimezone(when.tzinfo)


# -- configuration ----------------------------------------------------------------------------------


def _flag(name: str, value: object) -> bool | None:
    return check_flag(
        name,
        value,
        "True (every process sees the same stored jobs), False (each process has its own "
        "copy) or None (decide by the store's type)",
    )


def _resolve_store(inner: Any) -> Any:
    if isinstance(inner, LeaderOnlyJobStore):
        raise ConfigurationError(f"inner must be the job store to wrap, not another LeaderOnlyJobStore: {inner!r}")
    if isinstance(inner, BaseJobStore):
        return inner
    if isinstance(inner, str):
        inner = {"type": inner}
    if not isinstance(inner, Mapping):
        raise ConfigurationError(
            "inner must be a job store (such as MemoryJobStore()), a job store plugin name (such as 'memory' "
            f"or 'sqlalchemy') or a mapping with 'type' or 'class' and the store's options, got {inner!r}"
        )
    options = dict(inner)
    plugin = options.pop("type", None)
    reference = options.pop("class", None)
    if plugin:
        cls = _plugin(str(plugin))
    elif reference:
        try:
            cls = maybe_ref(reference)
        except (ValueError, LookupError, TypeError) as exc:
            raise ConfigurationError(f"inner['class'] must name a job store class as 'module:Class': {exc}") from exc
    else:
        raise ConfigurationError(f"inner must have a 'type' (plugin name) or a 'class' ('module:Class'), got {inner!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseJobStore)) or issubclass(cls, LeaderOnlyJobStore):
        raise ConfigurationError(f"inner must name an APScheduler job store class to wrap, got {cls!r}")
    return cls(**options)  # the store's own errors, as they are


def _plugin(name: str) -> Any:
    plugins = {ep.name: ep for ep in metadata.entry_points(group="apscheduler.jobstores")}
    if name == PLUGIN_NAME or name not in plugins:
        known = ", ".join(sorted(set(plugins) - {PLUGIN_NAME})) or "none installed"
        raise ConfigurationError(f"inner['type'] must be the name of a job store plugin ({known}), got {name!r}")
    return plugins[name].load()


def _shared_by_type(store: Any) -> bool:
    """False for stores that live in the process's memory, True for the database-backed ones."""
    for cls in type(store).__mro__:
        if cls is MemoryJobStore:
            return False
        if cls.__module__ == "apscheduler.jobstores.sqlalchemy":
            return not _sqlite_in_memory(store)
        if cls.__module__ in _SHARED_STORE_MODULES:
            return True
    raise ConfigurationError(
        f"shared must be given for a {type(store).__name__}: True if every process sees the same stored jobs "
        "(a database), False if each process has its own copy (in memory)"
    )


def _sqlite_in_memory(store: Any) -> bool:
    url = getattr(getattr(store, "engine", None), "url", None)
    if url is None or url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(url) or database.startswith("file::memory:")


def _wake_mode(scheduler: Any) -> str:
    modules = {cls.__module__ for cls in type(scheduler).__mro__}
    if "apscheduler.schedulers.twisted" in modules:
        return "twisted"
    if modules & set(_POLLED_SCHEDULERS):
        return "poll"
    return "direct"
