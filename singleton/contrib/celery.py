"""Celery beat on every host, each scheduled task sent by one: the holder of a Consul lock.

A second ``celery beat`` sends every periodic task twice; a single one is a single point of failure.
Run beat on every host with this scheduler and only the holder of ``key`` sends due tasks::

    celery -A proj beat -S singleton.contrib.celery:LeaderOnlyScheduler

or ``beat_scheduler = "singleton.contrib.celery:LeaderOnlyScheduler"`` in the app's configuration.
It wraps another scheduler class, which keeps the schedule: ``singleton_scheduler`` (a class, a
``"module:Class"`` path or an alias such as ``"django"``), else ``beat_scheduler`` when it names
another class (so ``-S`` on the command line wraps the configured one), else Celery's
``PersistentScheduler``.

Settings, from the app's configuration (``app.conf``; with Django's ``namespace="CELERY"``, the
``CELERY_SINGLETON_*`` settings):

``singleton_key``         the Consul key (under the key prefix); default ``celery-beat/<app.main>``
``singleton_ttl``         session TTL, 10..86400 s; default the process setting (``SINGLETON_TTL``, 15)
``singleton_lock_delay``  0..60 s; default the process setting (``SINGLETON_LOCK_DELAY``, 15)
``singleton_margin``      the local lease is ``ttl - margin``; default ``max(1, ttl/5)``
``singleton_check_ttl``   fast failover, 1..ttl/2 s: a crashed leader is replaced about
                          ``check_ttl + lock_delay`` later; default the process setting (off)
``singleton_scheduler``   the scheduler class to wrap (see above)
``singleton_shared``      True when every beat reads the same stored schedule (a database), False when
                          each has its own copy; default by the class (PersistentScheduler: False,
                          django-celery-beat's DatabaseScheduler: True; any other class must say)

Consul is reached as everywhere else in ``singleton``: the process-wide elector
(``singleton.configure()``, ``CONSUL_HTTP_ADDR``, ``SINGLETON_KEY_PREFIX``, ...). Install with
``pip install 'consul-singleton[celery]'`` (Celery 5.3 or later).

Per-process and shared schedules
--------------------------------
*Per-process* (``PersistentScheduler``: a shelve file on each host). Every beat holds its own copy of
the schedule and ticks it; followers advance each entry at its due time exactly as the leader does,
without sending (and without opening a broker connection). So a new leader has no backlog to burst
through, and knows nothing it must send again. Interval entries (``"schedule": 30`` or a
``timedelta``) are aligned to multiples of their interval since the Unix epoch (every 300 s: at
:00, :05, :10, ...) and keep those times instead of drifting by the send latency: every beat
computes the same scheduled times, so after a handover the next send comes one interval after the
previous one. A new leader never sends a time that fell due after its beat started and before its
term began: it cannot tell whether the previous leader sent it, and a time sent twice is worse than
a time missed. So after a crash the sends of the failover window are lost. Entries that were already
overdue when beat started (a stale schedule file) are sent by the process that leads at startup.

*Shared* (django-celery-beat's ``DatabaseScheduler``). Followers do not touch the store: they neither
read nor write it, and do not even set it up (``beat_schedule`` is written into the database by the
leader). Each new term builds a fresh scheduler from the store, so a new leader starts from what the
previous one recorded. The leader records each entry's new ``last_run_at`` in the store *before* it
sends the task (a crash can lose a send, never repeat one; when the write fails the task is not
sent). After a crash the new leader finds the entries overdue and, as beat always does, sends each
once at its first tick: the scheduled times of the failover window are coalesced into that one send.

What happens when
-----------------
*Leadership arrives.* The election thread wakes beat at once (beat sleeps in the scheduler, on an
event, instead of in ``time.sleep``): a shared schedule is loaded and due tasks are sent; a per-process
schedule sends its next due entry on time.

*Leadership is lost* (another process took the key, the session was invalidated, Consul could not be
reached for the whole local lease, beat stops). The term's stop token fires, at least ``margin``
seconds before another process could take the key; every send checks it first and runs as a body of
the term (``singleton.current_token()`` works in ``before_task_publish`` handlers), so no task is sent
afterwards. Each message carries the term's fence (header ``singleton_fence``) and its scheduled time
(``singleton_scheduled``, ISO 8601 UTC), so a worker can refuse a send from a stale term or
deduplicate by scheduled time.

*Consul is down.* Nothing raises into beat. A leader keeps sending for as long as its local lease
lasts, then stops; a follower stays a follower. Beat never sends from a process that cannot prove it
holds the lock. While the first acquisition attempt has no outcome, beat sends and advances nothing.

*Beat stops.* SIGTERM or SIGINT (celery beat's handler closes the scheduler): the schedule is synced,
then the key is resigned (released without a lock-delay), so another beat takes over within
milliseconds and sends the next due task on time. Beat's handler runs wherever beat is: one that
lands in the middle of a pass (between recording an entry's run and sending it) waits until the pass
ends, milliseconds, so a run recorded is a run sent; a second signal of the same kind does not wait.
``kill -9``: the key frees itself when Consul expires the session (between ``ttl`` and ``2 x ttl``)
plus ``lock_delay``.

*Follower CPU.* A follower with a per-process schedule wakes at each due time (to advance it); with
a shared one it wakes every ``beat_max_loop_interval`` (5 s for DatabaseScheduler) or when leadership
arrives. It never spins.

*Fork.* ``celery worker -B`` and ``celery beat`` build the scheduler in the process that runs it, which
campaigns with its own session.

``@leader_only`` on a task
--------------------------
Refused. Celery hands each message to one worker; on every worker but the key's holder the body would
be skipped and the task would succeed, so most sends would be lost without a trace. Beat refuses to
start when an entry of ``beat_schedule`` names such a task (:class:`~singleton.errors.ConfigurationError`),
and never sends one found in a shared schedule (an error in beat's log). Call a ``@leader_only``
function from inside an ordinary task instead, if only the holder of a key may do the work: the task
then runs wherever it is delivered and its body decides.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

try:
    import celery  # type: ignore[import-untyped, unused-ignore]
    from celery import schedules  # type: ignore[import-untyped, unused-ignore]
    from celery.beat import PersistentScheduler, Scheduler  # type: ignore[import-untyped, unused-ignore]
    from celery.utils.imports import (  # type: ignore[import-untyped, unused-ignore]
        load_extension_class_names,
        symbol_by_name,
    )
except ImportError as exc:
    raise ImportError(
        "singleton.contrib.celery needs Celery 5.3 or later; install it with: pip install 'consul-singleton[celery]'"
    ) from exc

if tuple(celery.VERSION[:2]) < (5, 3):  # pragma: no cover - depends on the environment
    raise ImportError(
        f"singleton.contrib.celery needs Celery 5.3 or later (found {celery.__version__}): "
        "pip install -U 'consul-singleton[celery]'"
    )

from singleton import _runtime
from singleton._attach import Attachment
from singleton.config import LeaseOverrides, check_flag, validate_key
from singleton.decorators import LeaderOnlyHandle
from singleton.election import Election, Elector, Role
from singleton.errors import ConfigurationError, LeadershipLost
from singleton.token import StopToken

__all__ = ["HEADER_FENCE", "HEADER_SCHEDULED", "LeaderOnlyScheduler"]

_log = logging.getLogger("singleton.contrib.celery")

#: The class wrapped when neither ``singleton_scheduler`` nor ``beat_scheduler`` names another.
DEFAULT_SCHEDULER = "celery.beat:PersistentScheduler"
#: Message headers of every task this scheduler sends: the term's fence, and the scheduled time.
HEADER_FENCE = "singleton_fence"
HEADER_SCHEDULED = "singleton_scheduled"
#: How long close() waits for the key to be released.
RESIGN_WAIT = 2.0
#: Celery's tick wakes 10 ms before an entry is due and then asks to be called again at once until it
#: is: thousands of calls. When a tick did nothing and asks for no sleep, sleep this long instead.
SPIN_GUARD = 0.005
_SHARED_SCHEDULER_MODULES = ("django_celery_beat.schedulers",)


class LeaderOnlyScheduler(Scheduler):  # type: ignore[misc]
    """A beat scheduler that sends due tasks only in the process holding ``key``; see the module docstring.

    Celery builds it as ``LeaderOnlyScheduler(app=..., schedule_filename=..., max_interval=...,
    lazy=...)``; the keyword-only arguments override the ``singleton_*`` settings of ``app.conf``
    (``inner`` is ``singleton_scheduler``), and ``elector`` replaces the process-wide elector.
    Other keyword arguments go to the wrapped scheduler. With ``lazy=True`` (what beat builds for its
    banner) nothing campaigns and nothing is read or written.

    :raises ConfigurationError: at construction, for a bad setting (named), a scheduler class that
        cannot be loaded or needs ``singleton_shared``; at setup, a ``beat_schedule`` entry whose task
        is ``@leader_only``, or bad process settings (``CONSUL_HTTP_ADDR``, ...).
    """

    def __init__(
        self,
        app: Any,
        schedule_filename: str | None = None,
        max_interval: float | None = None,
        lazy: bool = False,
        *,
        key: str | None = None,
        ttl: float | None = None,
        lock_delay: float | None = None,
        margin: float | None = None,
        check_ttl: float | None = None,
        inner: Any = None,
        shared: bool | str | None = None,
        elector: Elector | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        conf = app.conf
        value, name = _option(key, "key", conf, "singleton_key")
        self.key = validate_key(value if value is not None else default_key(app), name)
        lease = {
            name: _option(given, name, conf, f"singleton_{name}")
            for name, given in (("ttl", ttl), ("lock_delay", lock_delay), ("margin", margin), ("check_ttl", check_ttl))
        }
        self.lease = LeaseOverrides.checked(
            **{name: value for name, (value, _) in lease.items()},
            names={name: shown for name, (_, shown) in lease.items()},
        )
        self.ttl, self.lock_delay, self.margin = self.lease.ttl, self.lease.lock_delay, self.lease.margin
        self.check_ttl = self.lease.check_ttl
        if elector is not None and not isinstance(elector, Elector):
            raise ConfigurationError(f"elector must be a singleton Elector or None, got {elector!r}")
        spec, name = _option(inner, "inner", conf, "singleton_scheduler")
        self.inner_class: type = _configured_scheduler(conf) if spec is None else _scheduler_class(spec, name)
        value, name = _option(shared, "shared", conf, "singleton_shared")
        flag = _flag(name, value)
        self.shared: bool = flag if flag is not None else _shared_by_type(self.inner_class)
        self._hooked: Any = _hooked(self.inner_class)
        self._inner_kwargs = {"schedule_filename": schedule_filename, "max_interval": max_interval, **kwargs}
        self._attachment = Attachment(self.key, self.lease, elector, owner=f"{type(self).__name__}({self.key!r})")
        self._election: Election | None = None
        #: Shared schedule: the term the current inner scheduler was built for (None: not leading).
        self._term: StopToken | None = None
        self._wake = threading.Event()
        self._closed = False
        #: Wall-clock time of setup: per-process entries due from then until a term began are the
        #: previous leader's.
        self._started_at = math.inf
        self._refused: set[str] = set()
        # A lazy inner scheduler tells beat its max_interval and info; with a per-process schedule it is
        # also the one that runs.
        self._inner: Any = self._new_inner(lazy=True)
        super().__init__(app, max_interval=self._inner.max_interval, lazy=True)
        if not lazy:
            self.setup_schedule()

    def __repr__(self) -> str:
        mode = "shared" if self.shared else "per-process"
        return f"<{type(self).__name__} key={self.key!r} {mode} inner={self.inner_class.__name__}>"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this object lacks: hand public ones to the wrapped scheduler.
        inner = self.__dict__.get("_inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)

    # -- the election -----------------------------------------------------------------------------

    @property
    def election(self) -> Election | None:
        """This beat's election (``is_leader``, ``holder``, ``status()``, ``resign()``); None before setup."""
        return self._election

    @property
    def is_leader(self) -> bool:
        """Whether this beat sends due tasks now. A read of cached state, never a network call."""
        election = self._election
        return election is not None and election.is_leader

    @property
    def inner(self) -> Any:
        """The wrapped scheduler instance (with a shared schedule: the current term's, or a lazy one)."""
        return self._inner

    def _attach(self) -> Election | None:
        """The election of ``key``, registered now; None when this process cannot campaign (singleton
        shut down): then this beat never sends, and says so in the log."""
        election = self._attachment.get()
        if election is None:
            why = self._attachment.unavailable
            _log.error("%r: cannot campaign for %r (%s); this beat will not send tasks", self, self.key, why)
        return election

    def _on_leadership(self, election: Election) -> None:
        """On the election thread, on every change of leadership: wake beat, which sleeps in tick()."""
        self._wake.set()

    def _leading(self, inner: Any) -> bool:
        """Whether ``inner`` may send now: this process leads, and (shared) ``inner`` is this term's."""
        election = self._election
        if self._closed or election is None:
            return False
        token = election.token
        if token is None:
            return False
        return not self.shared or (inner is self._inner and token is self._term)

    def _may_write(self) -> bool:
        """A per-process schedule is this process's own; a shared one is written by its term only."""
        if not self.shared:
            return True
        term = self._term
        return term is not None and not term.stopped

    # -- the scheduler interface beat uses ------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Set up the wrapped schedule (per-process) and campaign for the key (no network call here)."""
        _refuse_leader_only_entries(self.app)
        self._started_at = time.time()
        if not self.shared:
            self._inner.setup_schedule()
            for entry in list(self._inner.schedule.values()):
                _align(entry)
        election = self._attach()
        self._election = election
        if election is None:
            return
        election.remove_listener(self._on_leadership)
        election.add_listener(self._on_leadership)
        if election.role is Role.RESIGNED:  # set up again after close()
            election.campaign()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of the wrapped scheduler (when it may run), then the sleep until the next one.

        Returns 0: beat's loop sleeps in ``time.sleep``, which nothing can cut short, so this sleeps
        here instead, on an event the leadership listener sets.
        """
        if self._closed:
            return float(self.max_interval)
        self._wake.clear()
        election = self._election
        if election is not None and election.role is Role.STARTING:
            # Before the first attempt has an outcome nobody knows who leads: neither send nor advance.
            election.wait_settled(self.max_interval)
            return 0.0
        delay = self._pass(election)
        if delay > 0:
            self._wake.wait(min(delay, self.max_interval))
        inner = self._inner
        if self._may_write() and not self._closed and inner.should_sync():
            inner._do_sync()
        return 0.0

    def _pass(self, election: Election | None) -> float:
        token = election.token if election is not None else None
        if self.shared:
            if token is None:
                self._end_term()
                return float(self.max_interval)
            if self._term is not token:
                self._end_term()
                # A new term starts from the store: what the previous leader recorded, not what this
                # process read when it last led.
                try:
                    inner = self._new_inner(lazy=False)
                except Exception:  # the store is down: stay the leader and try again, as beat would
                    _log.exception("%r: cannot load the shared schedule; trying again in %ss", self, self.max_interval)
                    return float(self.max_interval)
                self._inner, self._term = inner, token
        inner = self._inner
        reserved = inner._singleton_reserved
        with _signals_held():
            delay = float(inner.tick())
        if delay <= 0 and inner._singleton_reserved == reserved:
            delay = SPIN_GUARD
        return delay

    def should_sync(self) -> bool:
        return False  # tick() syncs the wrapped scheduler itself

    def sync(self) -> None:
        if self._may_write() and not self._closed:
            self._inner.sync()

    def close(self) -> None:
        """Sync and close the wrapped schedule, then resign the key (another beat takes over at once).

        Idempotent; safe inside beat's SIGTERM handler. Waits up to ``RESIGN_WAIT`` seconds for the
        release (when Consul is slow or down the session's expiry frees the key); never raises a Consul
        error. A shared schedule is synced only while this beat still leads.
        """
        if self._closed:
            return
        election = self._election
        try:
            if election is not None:
                election.remove_listener(self._on_leadership)
            if self._may_write():
                self._inner.close()
            else:
                _discard(self._inner)
        finally:
            self._closed = True
            self._term = None
            if election is not None and not election.elector.closed:
                election.resign(RESIGN_WAIT)

    def get_schedule(self) -> Any:
        """The wrapped schedule (empty on a follower of a shared schedule, which does not read it)."""
        if self.shared and not self._leading(self._inner):
            return {}
        return self._inner.schedule

    def set_schedule(self, schedule: Any) -> None:
        self._inner.schedule = schedule

    schedule = property(get_schedule, set_schedule)

    @property
    def info(self) -> str:
        mode = "shared schedule" if self.shared else "per-process schedule"
        try:
            elector = self._attachment.elector
            settings = elector.settings if elector is not None else _runtime.get_settings()
            full_key = settings.full_key(self.key)
        except ConfigurationError:
            full_key = self.key
        lines = [f"    . leader-only -> {full_key} ({mode}; {_qualname(self.inner_class)})"]
        inner_info = self._inner.info
        if inner_info:
            lines.append(inner_info)
        return "\n".join(lines)

    # -- the wrapped scheduler --------------------------------------------------------------------

    def _new_inner(self, *, lazy: bool) -> Any:
        inner = self._hooked.__new__(self._hooked)
        inner._singleton_owner = self
        inner.__init__(app=self.app, lazy=lazy, **self._inner_kwargs)
        return inner

    def _end_term(self) -> None:
        """Shared schedule, term over: forget its scheduler without writing anything."""
        if self._term is None:
            return
        self._term = None
        _discard(self._inner)
        self._inner = self._new_inner(lazy=True)

    def _send(
        self, inner: Any, entry: Any, producer: Any, advance: bool, options: dict[str, Any], send: Callable[..., Any]
    ) -> Any:
        """Send ``entry`` (the wrapped scheduler's ``apply_async``) if this term may, as a body of the term."""
        election = self._election
        if election is None or not self._leading(inner):
            _log.debug("not sending %s: this beat does not lead %r", entry.name, self.key)
            return None
        token = self._term if self.shared else election.token
        if token is None:
            return None
        task_key = _leader_only_key(self.app.tasks.get(entry.task))
        if task_key is not None:
            if entry.task not in self._refused:
                self._refused.add(entry.task)
                _log.error("not sending %s: %s", entry.name, _leader_only_message(entry.task, entry.name, task_key))
            return None
        due = _due_time(entry)
        if not self.shared and self._started_at <= due < token.since:
            _log.info(
                "not sending %s scheduled at %s: it fell due before this beat became the leader of %r, and a "
                "per-process schedule cannot tell whether the previous leader sent it",
                entry.name,
                _iso(due),
                self.key,
            )
            return None
        if advance:
            entry = inner.reserve(entry)
        if self.shared:
            # Record the entry's new last_run_at before sending: a crash can lose this send, never repeat it.
            inner.sync()
            if entry.name in getattr(inner, "_dirty", ()):
                _log.warning("not sending %s: its run could not be recorded in the shared schedule", entry.name)
                return None
        saved = entry.options
        headers = {**(saved.get("headers") or {}), HEADER_FENCE: token.fence, HEADER_SCHEDULED: _iso(due)}
        entry.options = {**saved, "headers": headers}
        try:
            with election.body(token):
                return send(entry, producer=producer or inner.producer, advance=False, **options)
        except LeadershipLost:
            _log.info("not sending %s: leadership of %r was lost", entry.name, self.key)
            return None
        finally:
            entry.options = saved


class _Hooks(Scheduler):  # type: ignore[misc]
    """Put between the wrapped scheduler class and its tick: what a tick may send, and when it advances."""

    _singleton_owner: LeaderOnlyScheduler
    #: How many entries this scheduler has advanced (to tell a tick that did nothing).
    _singleton_reserved = 0

    @property
    def producer(self) -> Any:
        # tick() evaluates self.producer before each apply_entry: a follower must not connect for it.
        if not self._singleton_owner._leading(self):
            return None
        producer = self.__dict__.get("producer")
        if producer is None:
            producer = self.__dict__["producer"] = self.Producer(self._ensure_connected(), auto_declare=False)
        return producer

    def reserve(self, entry: Any) -> Any:
        new_entry = super().reserve(entry)
        self._singleton_reserved += 1
        if not self._singleton_owner.shared:
            _align(new_entry)
        return new_entry

    def is_due(self, entry: Any) -> Any:
        state = super().is_due(entry)
        if state[0] and not self._singleton_owner.shared:
            # Celery looks again one interval after *now*: a late pass would make every later one as
            # late. An aligned entry is looked at again at its next aligned time.
            step = _interval(entry)
            if step is not None:
                now = time.time()
                return schedules.schedstate(True, max(0.0, (math.floor(now / step + 1e-9) + 1) * step - now))
        return state

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if not self._singleton_owner._leading(self):
            return  # a follower: the tick has advanced the entry (reserve), and sends nothing
        super().apply_entry(entry, producer=producer)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        return self._singleton_owner._send(self, entry, producer, advance, kwargs, super().apply_async)


#: What beat's own handler does on these (``install_sync_handler``: close the scheduler, then raise
#: SystemExit) must not happen between recording a run and sending it.
_HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT for one pass of the wrapped scheduler; deliver them when it ends.

    Beat's handler closes the scheduler and raises SystemExit wherever the main thread is. Landing
    between a shared schedule's write of an entry's new ``last_run_at`` and the send, it lost that
    scheduled time on a graceful stop: recorded as sent by the old leader, never sent, skipped by the
    new one. Held, the pass finishes (milliseconds; the sleep between passes is not held) and the
    handler runs right after it. A second signal of the same kind is not held: it is delivered at
    once. Only the main thread can touch handlers; elsewhere, and for a handler not installed from
    Python, nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    caught: list[int] = []

    def deliver() -> None:
        """Put the handlers back, then raise what was held (their handler may raise: SystemExit)."""
        while previous:
            signum, handler = previous.popitem()
            signal.signal(signum, handler)
        while caught:
            signal.raise_signal(caught.pop(0))

    def hold(signum: int, frame: Any) -> None:
        if signum in caught:  # asked twice: stop waiting for the pass
            deliver()
            return
        caught.append(signum)
        _log.info("%s while beat sends: delivered when this pass ends", signal.Signals(signum).name)

    for signum in _HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:
            previous[signum] = handler
            signal.signal(signum, hold)
    try:
        yield
    finally:
        deliver()


_hooked_classes: dict[type, type] = {}
_hooked_lock = threading.Lock()


def _hooked(cls: type) -> type:
    """``cls`` with :class:`_Hooks` in front of it (one class per wrapped class)."""
    with _hooked_lock:
        hooked = _hooked_classes.get(cls)
        if hooked is None:
            hooked = type(cls.__name__, (_Hooks, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
            _hooked_classes[cls] = hooked
        return hooked


def _discard(inner: Any) -> None:
    """Drop a wrapped scheduler without syncing it: release its broker connection, cancel its exit hook."""
    inner.__dict__.pop("producer", None)
    connection = inner.__dict__.pop("connection", None)
    if connection is not None:
        try:
            connection.release()
        except Exception as exc:
            _log.debug("could not release the broker connection: %s", exc)
    finalize = inner.__dict__.get("_finalize")  # DatabaseScheduler syncs at exit
    if finalize is not None:
        finalize.cancel()


# -- scheduled times --------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> float:
    """Epoch seconds; a naive datetime is UTC, as Celery takes it."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _due_time(entry: Any) -> float:
    """When ``entry`` was due (epoch seconds): one interval after its last run, or its schedule's estimate."""
    schedule = entry.schedule
    try:
        if type(schedule) is schedules.schedule:
            return _timestamp(entry.last_run_at) + float(schedule.run_every.total_seconds())
        return time.time() + float(schedule.remaining_estimate(entry.last_run_at).total_seconds())
    except Exception:  # a schedule of its own kind that cannot say: take now
        return time.time()


def _interval(entry: Any) -> float | None:
    """The interval of an entry on a plain interval schedule (seconds), or None."""
    schedule: Any = getattr(entry, "schedule", None)
    if type(schedule) is not schedules.schedule:
        return None
    step = float(schedule.run_every.total_seconds())
    return step if step > 0 else None


def _align(entry: Any) -> None:
    """Move an interval entry's ``last_run_at`` back to a multiple of its interval since the epoch."""
    step = _interval(entry)
    last: Any = getattr(entry, "last_run_at", None)
    if step is None or not isinstance(last, datetime):
        return
    stamp = _timestamp(last)
    slot = math.floor(stamp / step + 1e-9) * step
    if slot == stamp:
        return
    aligned = datetime.fromtimestamp(slot, last.tzinfo or timezone.utc)
    entry.last_run_at = aligned if last.tzinfo is not None else aligned.replace(tzinfo=None)


# -- @leader_only tasks -----------------------------------------------------------------------------


def _leader_only_key(task: Any) -> str | None:
    """The key of the ``@leader_only`` function a task runs as its body, or None."""
    func = getattr(task, "run", None)
    for _ in range(8):
        if func is None:
            return None
        handle = getattr(func, "election", None)
        if isinstance(handle, LeaderOnlyHandle):
            return handle.key
        func = getattr(func, "__wrapped__", None)
    return None


def _leader_only_message(task: str, entry: str, key: str) -> str:
    return (
        f"task {task!r} (schedule entry {entry!r}) is decorated with @leader_only(key={key!r}): a Celery worker "
        f"takes each message, and on every worker but the one holding {key!r} the task would succeed without "
        "running its body. LeaderOnlyScheduler already sends each scheduled time once: remove @leader_only from "
        "the task, or call a @leader_only function from inside it if only the key's holder may do the work"
    )


def _refuse_leader_only_entries(app: Any) -> None:
    """:raises ConfigurationError: an entry of ``beat_schedule`` names a task whose body is @leader_only."""
    for name, entry in dict(app.conf.beat_schedule or {}).items():
        task: Any = entry.get("task") if isinstance(entry, Mapping) else getattr(entry, "task", None)
        key = _leader_only_key(app.tasks.get(task)) if isinstance(task, str) else None
        if key is not None:
            raise ConfigurationError(_leader_only_message(task, name, key))


# -- configuration ----------------------------------------------------------------------------------


def default_key(app: Any) -> str:
    """``celery-beat/<app.main>``, or ``celery-beat`` for an app without a name."""
    main = getattr(app, "main", None)
    return f"celery-beat/{main}" if main and main != "__main__" else "celery-beat"


def _option(given: Any, argument: str, conf: Any, setting: str) -> tuple[Any, str]:
    """An argument when given, else the app's setting; with the name an error should use."""
    if given is not None:
        return given, argument
    return conf.get(setting), setting


def _flag(name: str, value: object) -> bool | None:
    return check_flag(
        name,
        value,
        "True (every beat reads the same stored schedule), False (each beat has its own "
        "copy) or None (decide by the scheduler class)",
    )


def _configured_scheduler(conf: Any) -> type:
    """``beat_scheduler`` when it names a class other than this one, else Celery's default."""
    configured = conf.get("beat_scheduler")
    if configured not in (None, ""):
        cls = _load_scheduler(configured, "beat_scheduler")
        if not issubclass(cls, LeaderOnlyScheduler):
            return cls
    return _load_scheduler(DEFAULT_SCHEDULER, "singleton_scheduler")


def _scheduler_class(spec: Any, name: str) -> type:
    """The class to wrap: any beat scheduler class but this one."""
    cls = _load_scheduler(spec, name)
    if issubclass(cls, LeaderOnlyScheduler):
        raise ConfigurationError(f"{name} must name the scheduler to wrap, not LeaderOnlyScheduler itself")
    return cls


def _load_scheduler(spec: Any, name: str) -> type:
    """The scheduler class ``spec`` names: a class, ``"module:Class"``, ``"module.Class"`` or an alias."""
    if isinstance(spec, str):
        aliases = dict(load_extension_class_names("celery.beat_schedulers") or ())
        try:
            cls = symbol_by_name(spec, aliases=aliases)
        except Exception as exc:  # whatever importing the module raised
            known = ", ".join(sorted(aliases)) or "none installed"
            raise ConfigurationError(
                f"{name} must name a beat scheduler class as 'module:Class' or an alias ({known}); "
                f"{spec!r} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
    else:
        cls = spec
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ConfigurationError(f"{name} must name a subclass of celery.beat.Scheduler, got {spec!r}")
    return cls


def _shared_by_type(cls: type) -> bool:
    """False for Celery's own schedulers (in memory, a shelve file per host), True for known database ones."""
    if cls is Scheduler or issubclass(cls, PersistentScheduler):
        return False
    if any(klass.__module__ in _SHARED_SCHEDULER_MODULES for klass in cls.__mro__):
        return True
    raise ConfigurationError(
        f"singleton_shared must be given for {_qualname(cls)}: True if every beat reads the same stored "
        "schedule (a database), False if each beat keeps its own copy (memory, a local file)"
    )


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
