"""The election engine: one thread per process that holds every lock the process campaigns for.

An :class:`Elector` owns one session per lease setting (``ttl``, ``lock_delay``, ``margin``; with the
defaults that is one session for the whole process) and one :class:`Election` per key. Every network
call is made by the election thread or by the elector's watch threads (one blocking query per key);
reading an Election's state (``is_leader``, ``token``) never touches the network, so a decorated call
costs no round trip.

What happens when
-----------------
*The key is free.* The election thread acquires it (``?acquire=<session>``, value ``hostname:pid``,
flags = acquisition time in ms). The key's ModifyIndex read right after is the term's fence, and a new
:class:`~singleton.token.StopToken` starts the term.

*Another process holds it.* The watch thread's blocking query (HTTP timeout above wait + wait/16)
returns when the key changes. A release is seen within one round trip and the key acquired at once. A
key freed by an invalidated session is inside its lock-delay: the next attempt is made when that delay
can have ended (the release as seen here plus the old holder's lock-delay, read from its session while
it held the key), not on a coarse poll.

*This process holds it.* The session is renewed every ``ttl / 3``. Each successful renewal extends a
local lease to ``ttl - margin`` after the moment it was *sent*. The token fires, and bodies are no
longer started, when the lease runs out, when a renewal answers 404 (session invalidated), or when the
watch sees the key's Session change or the key deleted. The lease runs out before Consul could hand the
lock to anyone else, however late the election thread is: tokens check it themselves.

*Consul is down.* Renewals are retried with short backoff; an outage shorter than the lease changes
nothing. A longer one ends the term (the token fires) and the process becomes a follower that keeps
campaigning with capped backoff; if its session survived, it takes its keys back as soon as a renewal
lands, otherwise it waits out the lock-delay like everyone else. Errors never reach a decorated call:
they are logged (rate-limited) and shown by ``Election.status()``.

*Shutdown* (:meth:`Elector.close`, and at interpreter exit for the default elector): tokens fire,
running bodies get ``shutdown_grace`` seconds, then each key is *released* and the session destroyed.
Release first: a destroy alone would start the lock-delay, a release lets a follower take over at once.
A key whose body is still running after the grace is not released; the session's destruction frees it
after its lock-delay.

*Fork.* An Elector belongs to the process that created it. In a forked child every elector of the
parent is disowned: its tokens fire, it refuses all use, and nothing is released (the parent still
holds the keys). The process-wide one is replaced by a new elector on first use (``singleton._runtime``).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from singleton._log import RateLimitedLogger
from singleton.backends import Backend, KeyInfo, create_backend
from singleton.config import LeaseSpec, Settings, holder_identity
from singleton.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    LeadershipLost,
    SessionInvalidated,
    SingletonError,
)
from singleton.token import Lease, StopCause, StopToken

__all__ = ["Election", "ElectionStatus", "Elector", "Role"]

_log = logging.getLogger("singleton.election")

#: After a lock-delay has surely ended by our clock, Consul's own clock may still need a moment.
LOCK_DELAY_SLACK = 0.05
#: The election thread wakes at least this often even with nothing due (a safety net, not a poll).
IDLE_WAKEUP = 30.0
_NEVER = -math.inf


class Role(str, enum.Enum):
    STARTING = "starting"  # registered, first attempt not made yet
    LEADER = "leader"
    FOLLOWER = "follower"
    RESIGNED = "resigned"  # not campaigning (resign() or shutdown)


@dataclass(frozen=True)
class ElectionStatus:
    """A snapshot of one key's election, as this process sees it."""

    key: str
    full_key: str
    role: Role
    #: ``hostname:pid`` of the holder last seen (this process when leading), or None if free.
    holder: str | None
    holder_session: str | None
    #: This process's session for the key, if it has one.
    session: str | None
    #: The current term's fence (ModifyIndex at acquisition), when leading.
    fence: int | None
    #: Wall-clock time the current term began, when leading.
    since: float | None
    #: Seconds left on the local lease if no renewal lands, when leading.
    lease_remaining: float | None
    #: Why this process is not leading (or why it stopped), in words.
    reason: str | None
    #: The last error seen, in words (kept after a success: a history for operators).
    last_error: str | None
    ttl: float
    lock_delay: float
    #: The error of the latest session or acquisition attempt; None once one succeeded.
    error: BackendError | None = None
    #: The key is free but inside the lock-delay its last holder left: nobody may take it yet.
    in_lock_delay: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


class _Group:
    """One session and the keys it holds: every key with the same lease settings."""

    def __init__(self, spec: LeaseSpec) -> None:
        self.spec = spec
        self.id: str | None = None
        self.lease = Lease(_NEVER)
        self.next_renew = _NEVER
        self.retry_at = _NEVER
        self.failures = 0
        self.renew_failures = 0
        self.elections: list[Election] = []

    def valid(self, now: float) -> bool:
        return self.id is not None and now < self.lease.deadline

    def troubled(self) -> bool:
        return self.failures > 0 or self.renew_failures > 0


class Election:
    """One key inside one :class:`Elector`. Any thread may read it; only the election thread changes it."""

    def __init__(self, elector: Elector, key: str, full_key: str, spec: LeaseSpec) -> None:
        self.elector = elector
        self.key = key
        self.full_key = full_key
        self.spec = spec
        self._token: StopToken | None = None
        self._active = True
        self._started = False
        self._settled = threading.Event()
        self._group: _Group | None = None
        self._next_attempt: float | None = None
        self._delay_until = _NEVER
        self._failures = 0
        self._seen_index = 0
        self._holder: str | None = None
        self._holder_session: str | None = None
        self._holder_lock_delay: float | None = None
        #: The session that last acquired the key here: what a release at shutdown must name.
        self._acquired_by: str | None = None
        self._released_at: float | None = None
        self._released_lock_delay: float | None = None
        self._reason: str | None = "not started"
        self._last_error: str | None = None
        self._error: BackendError | None = None
        #: One item per leader-only body running now. list.append and list.pop are atomic, so the call
        #: path counts bodies without a lock.
        self._bodies: list[None] = []
        self._listeners: list[Callable[[Election], object]] = []

    def __repr__(self) -> str:
        return f"<Election {self.full_key!r} {self.role.value}>"

    # -- listeners ------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Election], object]) -> None:
        """Call ``callback(election)`` each time this process becomes, or stops being, the leader.

        It runs on the election thread right after the change (read :attr:`is_leader` to know which):
        keep it short and never block in it. Exceptions are logged and ignored.
        """
        self._listeners = [*self._listeners, callback]

    def remove_listener(self, callback: Callable[[Election], object]) -> None:
        self._listeners = [cb for cb in self._listeners if cb is not callback]

    def _emit(self) -> None:
        for callback in self._listeners:
            try:
                callback(self)
            except Exception:
                _log.exception("leadership listener %r of %r failed", callback, self.key)

    # -- reading (any thread, no I/O) -----------------------------------------------------------

    @property
    def token(self) -> StopToken | None:
        """The current term's stop token, or None when not leading."""
        token = self._token
        return None if token is None or token.stopped else token

    @property
    def is_leader(self) -> bool:
        token = self._token
        return token is not None and not token.stopped

    @property
    def role(self) -> Role:
        if self.is_leader:
            return Role.LEADER
        if not self._active:
            return Role.RESIGNED
        return Role.FOLLOWER if self._settled.is_set() else Role.STARTING

    @property
    def holder(self) -> str | None:
        return self._holder

    @property
    def running(self) -> int:
        """How many leader-only bodies of this key are running now."""
        return len(self._bodies)

    def status(self) -> ElectionStatus:
        token = self._token
        leading = token is not None and not token.stopped
        group = self._group
        return ElectionStatus(
            key=self.key,
            full_key=self.full_key,
            role=self.role,
            holder=self._holder,
            holder_session=self._holder_session,
            session=group.id if group is not None else None,
            fence=token.fence if leading and token else None,
            since=token.since if leading and token else None,
            lease_remaining=token.remaining() if leading and token else None,
            reason=None if leading else (token.reason if token is not None else self._reason),
            last_error=self._last_error,
            ttl=self.spec.ttl,
            lock_delay=self.spec.lock_delay,
            error=None if leading else self._error,
            in_lock_delay=not leading and self._delay_until > self.elector._clock(),
        )

    # -- waiting --------------------------------------------------------------------------------

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait until the first acquisition attempt has an outcome (leader, follower, or an error)."""
        return self._settled.wait(timeout)

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this process leads the key, or ``timeout`` seconds pass. Returns :attr:`is_leader`."""
        self.elector.start()
        end = None if timeout is None else time.monotonic() + timeout
        with self.elector._changed:
            while not self.is_leader:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.elector._changed.wait(remaining if remaining is not None else IDLE_WAKEUP)
        return self.is_leader

    # -- commands -------------------------------------------------------------------------------

    def resign(self, timeout: float | None = 10.0) -> bool:
        """Stop campaigning: fire the token, release the key (no lock-delay), stay a follower.

        Returns True once the election thread has released the key (within ``timeout``).
        """
        self._active = False
        token = self._token
        if token is not None:
            token.fire("resigned", StopCause.RESIGNED)
        done = threading.Event()
        self.elector._post(("resign", self, done))
        if self.elector._thread is None:
            return False
        return done.wait(timeout)

    def campaign(self) -> None:
        """Campaign again after :meth:`resign`."""
        self._active = True
        self.elector._post(("campaign", self))
        self.elector.start()

    # -- bodies ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def body(self, token: StopToken | None = None) -> Iterator[StopToken]:
        """Run a block as a leader-only body of this key: integrations (schedulers, commands) use it.

        Inside, ``token`` (default: the current term's) is :func:`~singleton.token.current_token`, and
        the block counts as running, so shutdown waits for it before releasing the key.

        :raises LeadershipLost: the token has fired already (or, without one, this process does not lead).
        """
        if token is None:
            token = self.token
            if token is None:
                raise LeadershipLost(self.key, self._reason or "this process does not hold the key")
        token.raise_if_stopped()
        self._bodies.append(None)
        try:
            with token.activate():
                yield token
        finally:
            self._bodies.pop()


_Message = tuple[Any, ...]


class Elector:
    """Campaigns for keys on behalf of one process. See the module docstring for the behaviour.

    ``settings`` default to :meth:`Settings.from_env`; ``backend`` defaults to the one they name.
    ``clock`` is the monotonic clock every deadline is measured on (inject a fake one in tests, and
    drive the elector with :meth:`step` and ``watch="inline"`` instead of threads).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        watch: Literal["thread", "inline"] = "thread",
        rng: random.Random | None = None,
        name: str = "singleton-elector",
    ) -> None:
        if watch not in ("thread", "inline"):
            raise ConfigurationError(f"watch must be 'thread' or 'inline', got {watch!r}")
        self.settings = settings if settings is not None else Settings.from_env()
        self.backend = backend if backend is not None else create_backend(self.settings)
        self.identity = self.settings.identity or holder_identity()
        self.session_name = self.settings.session_name or self.identity
        self.pid = os.getpid()
        self.name = name
        self._clock = clock
        self._wall = wall_clock
        self._watch_mode = watch
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._inbox: collections.deque[_Message] = collections.deque()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._elections: dict[str, Election] = {}
        self._groups: dict[LeaseSpec, _Group] = {}
        self._watchers: dict[str, _Watcher] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._rlog = RateLimitedLogger(_log, clock=clock)
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Elector {self.identity} {self.backend.description} keys={len(self._elections)}>"

    # -- public face ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def elections(self) -> list[Election]:
        with self._lock:
            return list(self._elections.values())

    def election(self, key: str) -> Election | None:
        """The registered election of ``key`` (as the user names it), or None."""
        return self._elections.get(self.settings.full_key(key))

    def register(
        self,
        key: str,
        *,
        ttl: float | None = None,
        lock_delay: float | None = None,
        margin: float | None = None,
        start: bool = True,
    ) -> Election:
        """Campaign for ``key`` (idempotent). The first attempt is made at once by the election thread.

        :raises ConfigurationError: a bad key or lease setting, or ``key`` already registered with
            different lease settings.
        """
        full_key = self.settings.full_key(key)
        spec = self.settings.lease_for(ttl, lock_delay, margin)
        with self._lock:
            if self._closed:
                raise SingletonError(f"this elector is closed; cannot campaign for {key!r}")
            election = self._elections.get(full_key)
            if election is not None:
                if election.spec != spec:
                    raise ConfigurationError(
                        f"key {key!r} is already campaigned for with ttl={election.spec.ttl:g}, "
                        f"lock_delay={election.spec.lock_delay:g}, margin={election.spec.margin:g}; "
                        f"got ttl={spec.ttl:g}, lock_delay={spec.lock_delay:g}, margin={spec.margin:g}"
                    )
                return election
            election = Election(self, key, full_key, spec)
            self._elections[full_key] = election
        self._post(("register", election))
        if start:
            self.start()
        return election

    def start(self) -> Elector:
        """Start the election thread (and the watch threads) if not yet started. Idempotent."""
        if self._watch_mode == "inline":
            return self
        with self._lock:
            if self._thread is not None or self._closed:
                return self
            if os.getpid() != self.pid:
                raise SingletonError("an Elector cannot be used in a forked child; the child needs its own")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def status(self) -> list[ElectionStatus]:
        return [e.status() for e in self.elections]

    def close(self, grace: float | None = None) -> None:
        """Fire every token, give running bodies ``grace`` seconds, release the keys, destroy the sessions.

        Never raises a backend error: Consul being down at exit is logged, not raised. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        grace = self.settings.shutdown_grace if grace is None else grace
        if os.getpid() != self.pid:  # an inherited copy in a forked child: the parent owns the session
            self._stop.set()
            return
        elections = self.elections
        for election in elections:
            election._active = False
            token = election._token
            if token is not None and token.fire("shutting down", StopCause.SHUTDOWN):
                election._emit()
        end = time.monotonic() + grace
        with self._changed:
            while any(e._bodies for e in elections):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.005))  # bodies end without notifying: poll briefly
        self._stop.set()
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.consul.timeout + 1.0)
        self._release_all(elections)
        # Watch threads are daemons blocked in a query for up to watch_wait: they see _stop and end when
        # it returns. Waiting for them would only delay the exit.
        self.backend.close()
        with self._changed:
            self._changed.notify_all()

    def _disown_after_fork(self) -> None:
        """In a forked child: this elector belongs to the parent. Fire its tokens (without locks or
        callbacks, which belong to the parent's threads), make it refuse all use, and let the backend
        drop what would keep the parent's locks alive. No network call: the parent still holds the keys."""
        self._lock = threading.Lock()
        self._closed = True
        for election in list(self._elections.values()):
            token = election._token
            if token is not None:
                token._fire_in_forked_child("this process is a fork of the leader; leadership stays with the parent")
            election._token = None
            election._active = False
        try:
            self.backend.after_fork_in_child()
        except Exception:
            _log.exception("the backend's after-fork clean-up failed")

    def _release_all(self, elections: list[Election]) -> None:
        """Release each key this process holds, then destroy the sessions.

        Once a call finds the backend unreachable the rest are skipped, so a down Consul delays the
        shutdown by one request timeout, not one per key: the sessions then expire on their own.
        """
        value = self.identity.encode()
        unreachable: BackendError | None = None
        for election in elections:
            group = election._group
            if group is None or group.id is None or election._acquired_by != group.id:
                continue
            election._token = None
            election._reason = "shut down"
            if election._bodies:
                _log.warning(
                    "%r still has %d running bodies after the shutdown grace: not released; it frees "
                    "itself %gs after the session is destroyed (lock-delay)",
                    election.key,
                    election.running,
                    group.spec.lock_delay,
                )
                continue
            if unreachable is not None:
                continue
            try:
                self.backend.release(election.full_key, group.id, value)
            except BackendUnavailable as exc:
                unreachable = exc
            except BackendError as exc:
                _log.warning("could not release %r at shutdown: %s", election.key, exc)
        for group in list(self._groups.values()):
            if group.id is None:
                continue
            if unreachable is None:
                try:
                    self.backend.destroy_session(group.id)
                except BackendUnavailable as exc:
                    unreachable = exc
                except BackendError as exc:
                    _log.warning("could not destroy session %s at shutdown: %s", group.id, exc)
            group.id = None
        if unreachable is not None:
            _log.warning(
                "could not release the keys at shutdown (%s); Consul frees them when the session expires "
                "(after its TTL, then the lock-delay)",
                unreachable,
            )

    # -- the election thread --------------------------------------------------------------------

    def _post(self, message: _Message) -> None:
        self._inbox.append(message)
        self._wakeup.set()

    def _run(self) -> None:
        _log.debug("election thread started for %s", self.identity)
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # the thread must outlive any bug: log it and carry on
                _log.exception("unexpected error in the election thread")
                delay = 1.0
            self._wakeup.wait(delay)
            self._wakeup.clear()
        _log.debug("election thread stopped")

    def step(self) -> float:
        """Do everything due now; return the seconds until something is due next.

        The election thread calls this in a loop; tests with a fake clock call it directly.
        """
        self._drain()
        if self._stop.is_set():
            return IDLE_WAKEUP
        if self._watch_mode == "inline":
            self._poll_watches()
        for group in list(self._groups.values()):
            self._tend_session(group)
        for election in self.elections:
            self._tend_election(election)
        return self._next_due()

    def _drain(self) -> None:
        while self._inbox:
            message = self._inbox.popleft()
            kind, election = message[0], message[1]
            if kind == "register":
                self._adopt(election)
            elif kind == "watch":
                self._on_watch(election, message[2], message[3], message[4])
            elif kind == "watch_error":  # the acquisition attempts say why better; keep it as last_error
                self._note_error(election, message[2], "watch", set_reason=False)
            elif kind == "resign":
                self._on_resign(election)
                message[2].set()
            elif kind == "campaign":
                election._next_attempt = self._clock()

    def _adopt(self, election: Election) -> None:
        group = self._groups.get(election.spec)
        if group is None:
            group = self._groups[election.spec] = _Group(election.spec)
        if group.id is None and group.retry_at > self._clock():
            group.retry_at = self._clock()  # a new key: try to create the session now
        election._group = group
        election._next_attempt = self._clock()
        group.elections.append(election)
        if self._watch_mode == "thread" and not self._stop.is_set():
            prefix = self.settings.key_prefix
            if prefix:  # one recursive blocking query for every key of the process
                if prefix not in self._watchers:
                    self._watchers[prefix] = _Watcher(self, None, prefix)
                    self._watchers[prefix].start()
            else:
                watcher = _Watcher(self, election)
                self._watchers[election.full_key] = watcher
                watcher.start()

    # -- sessions -------------------------------------------------------------------------------

    def _backoff(self, failures: int, base: float, cap: float) -> float:
        delay = min(cap, base * 2.0 ** max(0, failures - 1))
        return delay * (0.8 + 0.4 * self._rng.random())

    def _tend_session(self, group: _Group) -> None:
        now = self._clock()
        if group.id is None:
            if now >= group.retry_at and any(e._active for e in group.elections):
                self._create_session(group)
            return
        if now >= group.lease.deadline:
            self._end_terms(
                group.elections,
                f"no renewal reached Consul within the {group.spec.lease:g}s lease (ttl {group.spec.ttl:g}s "
                f"minus margin {group.spec.margin:g}s)",
                StopCause.LEASE_EXPIRED,
            )
        if now >= group.next_renew:
            self._renew(group)

    def _create_session(self, group: _Group) -> None:
        sent = self._clock()
        try:
            session_id = self.backend.create_session(
                name=self.session_name, ttl=group.spec.ttl, lock_delay=group.spec.lock_delay
            )
        except BackendError as exc:
            group.failures += 1
            group.retry_at = self._clock() + self._backoff(group.failures, 0.5, 5.0)
            for election in group.elections:
                self._note_error(election, exc, "create a session")
                election._settled.set()
            return
        if group.failures:
            _log.info("%s: session created again after %d failed attempts", self.backend.description, group.failures)
            self._rlog.reset("session")
        group.failures = 0
        group.id = session_id
        for election in group.elections:
            election._error = None
        group.lease = Lease(sent + group.spec.lease)
        group.next_renew = sent + group.spec.renew_interval
        for election in group.elections:
            if election._next_attempt is None:
                election._next_attempt = sent

    def _renew(self, group: _Group) -> None:
        assert group.id is not None
        sent = self._clock()
        try:
            self.backend.renew_session(group.id)
        except SessionInvalidated as exc:
            self._session_lost(group, f"session invalidated: {exc}")
            return
        except BackendError as exc:
            group.renew_failures += 1
            now = self._clock()
            cap = min(2.0, group.spec.renew_interval)
            group.next_renew = now + self._backoff(group.renew_failures, 0.25, cap)
            remaining = group.lease.deadline - now
            self._rlog.log(
                logging.WARNING,
                "renew",
                "session renewal failed (%s); %s",
                exc,
                f"leadership ends in {remaining:.1f}s unless a renewal lands"
                if remaining > 0 and any(e._token for e in group.elections)
                else "retrying",
            )
            for election in group.elections:
                election._last_error = f"renewing the session: {exc}"
                election._error = exc
            return
        now = self._clock()
        if group.renew_failures:
            _log.info("session %s renewed again after %d failed attempts", group.id, group.renew_failures)
            self._rlog.reset("renew")
        group.renew_failures = 0
        group.next_renew = sent + group.spec.renew_interval
        for election in group.elections:
            election._error = None
        if now >= group.lease.deadline:
            # The lease ran out before this renewal was answered: the old terms are over for good.
            self._end_terms(
                group.elections, "the local lease ran out before a renewal was answered", StopCause.LEASE_EXPIRED
            )
            group.lease = Lease(sent + group.spec.lease)
            for election in group.elections:
                if election._active and election._next_attempt is None:
                    election._next_attempt = now
        else:
            group.lease.deadline = sent + group.spec.lease

    def _session_lost(self, group: _Group, reason: str) -> None:
        self._end_terms(group.elections, reason, StopCause.SESSION_GONE)
        _log.warning("%s; creating a new session", reason)
        now = self._clock()
        group.id = None
        group.lease = Lease(_NEVER)
        group.next_renew = _NEVER
        group.retry_at = now
        for election in group.elections:
            if election._next_attempt is None:
                election._next_attempt = now

    # -- keys -----------------------------------------------------------------------------------

    def _tend_election(self, election: Election) -> None:
        if not election._active or election._token is not None or election._next_attempt is None:
            return
        group = election._group
        now = self._clock()
        if group is None or now < election._next_attempt:
            return
        if group.id is not None and now >= group.next_renew:
            # Many attempts in one step against a slow agent must not push a renewal past the lease.
            self._renew(group)
            now = self._clock()
        if not group.valid(now):
            if group.troubled() and not election._settled.is_set():
                election._reason = election._reason or "no valid session"
                election._settled.set()
            return
        self._attempt(election, group)

    def _attempt(self, election: Election, group: _Group) -> None:
        assert group.id is not None
        try:
            result = self.backend.acquire(
                election.full_key, group.id, self.identity.encode(), flags=int(self._wall() * 1000)
            )
        except SessionInvalidated as exc:
            self._session_lost(group, f"session invalidated: {exc}")
            election._settled.set()
            return
        except BackendError as exc:
            election._failures += 1
            cap = 60.0 if isinstance(exc, AccessDenied) else 5.0
            election._next_attempt = self._clock() + self._backoff(election._failures, 0.5, cap)
            self._note_error(election, exc, "acquire the key")
            election._settled.set()
            return
        now = self._clock()
        election._failures = 0
        election._error = None
        entry = result.entry
        if result.acquired and entry is not None:
            if not group.valid(now):  # the lease ran out during the call: prove the session first
                election._next_attempt = now
                return
            token = StopToken(
                election.key, fence=entry.modify_index, lease=group.lease, clock=self._clock, since=self._wall()
            )
            election._seen_index = max(election._seen_index, entry.modify_index)
            election._holder, election._holder_session = self.identity, group.id
            election._acquired_by = group.id
            election._next_attempt = None
            election._delay_until = _NEVER
            election._reason = None
            election._token = token
            _log.info("%s is now the leader of %r (fence %d)", self.identity, election.key, entry.modify_index)
            election._settled.set()
            self._notify()
            election._emit()
            return
        self._observe(election, entry, now)
        if result.in_lock_delay:
            end = self._lock_delay_end(election, now)
            election._delay_until = end
            election._next_attempt = end
            election._reason = f"the key is free but inside a lock-delay; next attempt in {end - now:.2f}s"
        else:
            election._next_attempt = None  # the watch tells us when it changes
            election._reason = f"held by {election._holder or 'another session'}"
        election._settled.set()

    def _lock_delay_end(self, election: Election, now: float) -> float:
        """When the lock-delay of the key's last holder has surely ended, by our clock."""
        if not self.backend.lock_delays:  # a free key refused: another process won a race, or the
            election._failures += 1  # dying holder's lock is not gone yet. Look again very soon.
            return now + min(0.5, 0.01 * 2.0 ** min(election._failures, 6))
        spec = election.spec
        seen = election._released_at
        delay = election._released_lock_delay
        if delay is None:
            delay = spec.lock_delay
        end = (now if seen is None else seen) + delay + LOCK_DELAY_SLACK
        if end <= now:
            # By our reckoning it is over, yet Consul still refuses: a clock or a delay we do not
            # know. Retry soon, a little later each time.
            election._failures += 1
            end = now + min(1.0, 0.05 * 2 ** min(election._failures, 5))
        return end

    def _observe(self, election: Election, entry: KeyInfo | None, now: float) -> None:
        """Record who holds the key, and when a holder let go (for the lock-delay arithmetic)."""
        session = entry.session if entry is not None else None
        if session != election._holder_session:
            if election._holder_session is not None and session is None:
                election._released_at = now
                election._released_lock_delay = election._holder_lock_delay
            election._holder_lock_delay = None
            group = election._group
            if session is not None and (group is None or session != group.id):
                try:
                    info = self.backend.session_info(session)
                    election._holder_lock_delay = info.lock_delay if info is not None else None
                except BackendError as exc:
                    _log.debug("could not read the holder's session %s: %s", session, exc)
            election._holder_session = session
        election._holder = entry.holder if entry is not None and session is not None else None
        if session is None and entry is not None and entry.holder:
            election._reason = f"free (last held by {entry.holder})"

    def _on_watch(self, election: Election, index: int, entry: KeyInfo | None, reset: bool) -> None:
        if reset:
            election._seen_index = 0
        if index < election._seen_index:
            return  # older than what we already know (a watch that began before our acquisition)
        election._seen_index = index
        now = self._clock()
        group = election._group
        ours = group.id if group is not None else None
        self._observe(election, entry, now)
        session = entry.session if entry is not None else None
        if election._token is not None:
            if session is not None and session == ours:
                return
            if entry is None:
                reason, cause = "the key was deleted", StopCause.KEY_DELETED
            elif session is None:
                reason = "the key was released by Consul (session invalidated or released by an operator)"
                cause = StopCause.KEY_RELEASED
            else:
                reason, cause = f"the key is now held by {entry.holder} (session {session})", StopCause.KEY_TAKEN
            self._end_term(election, reason, cause)
            election._next_attempt = now
            return
        if election._active and (session is None or session == ours):
            if election._delay_until > now:
                election._next_attempt = election._delay_until
            else:
                election._next_attempt = now

    def _on_resign(self, election: Election) -> None:
        self._end_term(election, "resigned", StopCause.RESIGNED)
        election._reason = "resigned"
        election._next_attempt = None
        group = election._group
        if group is None or group.id is None or election._acquired_by != group.id:
            return
        try:
            self.backend.release(election.full_key, group.id, self.identity.encode())
        except BackendError as exc:
            self._note_error(election, exc, "release the key")

    def _end_terms(self, elections: Iterable[Election], reason: str, cause: StopCause) -> None:
        for election in list(elections):
            self._end_term(election, reason, cause)

    def _end_term(self, election: Election, reason: str, cause: StopCause) -> None:
        token = election._token
        if token is None:
            return
        token.fire(reason, cause)  # first: a caller holding this token must see it stopped
        election._token = None
        election._reason = reason
        level = logging.INFO if reason in ("resigned", "shutting down") else logging.WARNING
        _log.log(level, "%s is no longer the leader of %r: %s", self.identity, election.key, reason)
        self._notify()
        election._emit()

    def _note_error(self, election: Election, exc: BackendError, doing: str, set_reason: bool = True) -> None:
        election._last_error = f"{doing}: {exc}"
        if set_reason:
            election._error = exc
        if set_reason and not election._token:
            election._reason = f"could not {doing}: {exc}"
        level = logging.ERROR if isinstance(exc, AccessDenied) else logging.WARNING
        self._rlog.log(level, f"{doing}:{type(exc).__name__}", "%r: could not %s: %s", election.key, doing, exc)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _poll_watches(self) -> None:
        """watch="inline": read every key once instead of blocking queries (for tests without threads)."""
        for election in self.elections:
            if election._group is None:
                continue
            try:
                index, entry = self.backend.read(election.full_key)
            except BackendError as exc:
                self._note_error(election, exc, "read the key")
                continue
            if index != election._seen_index:
                self._on_watch(election, index, entry, index < election._seen_index)

    def _next_due(self) -> float:
        now = self._clock()
        due = now + IDLE_WAKEUP
        for group in list(self._groups.values()):
            if group.id is None:
                if any(e._active for e in group.elections):
                    due = min(due, group.retry_at)
                continue
            due = min(due, group.next_renew)
            if any(e._token is not None for e in group.elections):
                due = min(due, group.lease.deadline)
            if group.valid(now):
                for election in group.elections:
                    if election._active and election._token is None and election._next_attempt is not None:
                        due = min(due, election._next_attempt)
        return max(0.0, due - now)


_MISSING = object()

#: Every elector of this process, so that a forked child can disown them all.
_live: weakref.WeakSet[Elector] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for elector in list(_live):
        if elector.pid != os.getpid():
            elector._disown_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Watcher(threading.Thread):
    """Blocking queries that post each change of a key to the election thread.

    With ``prefix`` None it watches one key. With a prefix it watches every key under it with one
    recursive blocking query, and posts a change for each registered key whose entry changed: one
    HTTP connection per process instead of one per key (Consul limits connections per client IP,
    ``limits.http_max_conns_per_client``, 200 by default).
    """

    def __init__(self, elector: Elector, election: Election | None, prefix: str | None = None) -> None:
        target = prefix if election is None else election.full_key
        super().__init__(name=f"singleton-watch[{target}{'*' if election is None else ''}]", daemon=True)
        self.elector = elector
        self.election = election
        self.prefix = prefix

    def _elections(self) -> list[Election]:
        if self.election is not None:
            return [self.election]
        return self.elector.elections

    def _query(self, index: int) -> tuple[int, list[tuple[Election, int, KeyInfo | None]]]:
        elector = self.elector
        wait = elector.settings.watch_wait
        if self.election is not None:
            new_index, entry = elector.backend.watch(self.election.full_key, index, wait)
            return new_index, [(self.election, new_index, entry)]
        assert self.prefix is not None
        new_index, entries = elector.backend.watch_prefix(self.prefix, index, wait)
        by_key = {e.key: e for e in entries}
        found = []
        for election in self._elections():
            entry = by_key.get(election.full_key)
            found.append((election, entry.modify_index if entry is not None else new_index, entry))
        return new_index, found

    def run(self) -> None:
        elector = self.elector
        index = 0
        failures = 0
        quick = 0
        seen: dict[str, object] = {}
        while not elector._stop.is_set():
            began = time.monotonic()
            try:
                new_index = self.poll(index, seen)
            except BackendError as exc:
                if elector._stop.is_set():
                    break
                failures += 1
                for election in self._elections():
                    elector._post(("watch_error", election, exc))
                elector._stop.wait(elector._backoff(failures, 0.5, 5.0))
                continue
            except Exception:  # never let a bug kill the watch silently
                _log.exception("unexpected error in %s", self.name)
                elector._stop.wait(1.0)
                continue
            failures = 0
            if new_index == index and time.monotonic() - began < 0.05:
                quick += 1  # answered at once with nothing new: do not spin
                if quick >= 3:
                    elector._stop.wait(0.5)
            else:
                quick = 0
            index = 0 if new_index < index else max(new_index, 1)

    def poll(self, index: int, seen: dict[str, object]) -> int:
        """One blocking query: post what changed since ``seen`` (updated in place); return the new index."""
        new_index, results = self._query(index)
        reset = new_index < index
        for election, key_index, entry in results:
            # A missing key is "changed" whenever the index moved: it may have been created and
            # deleted between two answers (a holder must hear of that deletion).
            marker: object = entry.modify_index if entry is not None else ("missing", key_index)
            if reset or seen.get(election.full_key, _MISSING) != marker:
                seen[election.full_key] = marker
                self.elector._post(("watch", election, key_index, entry, reset))
        return new_index
