"""The election engine's public face: one :class:`Elector` per process, one :class:`Election` per key.

The elector is a facade over three parts, each in a module of its own, with arrows one way:
``singleton._session`` (one session per lease setting: create, renew, the local lease),
``singleton._watch`` (a few blocking queries that tell when a key changes) and ``singleton._campaign``
(each key's phases and the judgement of every answer). Every network call is made by the election
thread or the watch threads; reading an Election's state (``is_leader``, ``token``) never touches the
network, so a decorated call costs no round trip.

What happens when
-----------------
*The key is free.* The election thread acquires it (``?acquire=<session>``, value ``hostname:pid``,
flags = acquisition time in ms). The key's ModifyIndex is the term's fence, and a new
:class:`~singleton.token.StopToken` starts the term.

*Another process holds it.* The watch's blocking query returns when the key changes; a release is seen
within one round trip and the key acquired at once. A key freed by an invalidated session is inside its
lock-delay: the next attempt is made when that delay can have ended (the release as seen here plus the
old holder's lock-delay, read from its session while it held the key), and if Consul still refuses then,
a little later each time.

*This process holds it.* The session is renewed every ``ttl / 3``. Each successful renewal extends a
local lease to ``ttl - margin`` after the moment it was *sent*. The token fires, and bodies are no
longer started, when the lease runs out, when a renewal answers 404 (session invalidated), or when the
watch sees the key's Session change or the key deleted. Consul cannot expire the session before ``ttl``
after it received that renewal; and when Consul ends the session early (it deregisters the node: the
agent left, ``consul force-leave``), the key stays locked for the lock-delay, which is never shorter than
the lease (:class:`~singleton.config.LeaseSpec`). So the token fires before anyone else can take the
key, however late the election thread is: tokens check the lease themselves.

*Consul is down.* Renewals are retried with short backoff; an outage shorter than the lease changes
nothing. A longer one ends the term (the token fires) and the process keeps campaigning with capped
backoff. If its session survived, it takes its keys back as soon as a renewal lands, even when restarted
servers replay an old lock-delay on the key (Consul refuses to re-acquire it then, but the key is still
held by our session: nobody else can have it). Errors never reach a decorated call: they are logged
(rate-limited) and shown by :meth:`Election.status`.

*Shutdown* (:meth:`Elector.close`, and at interpreter exit for the default elector): tokens fire,
running bodies get ``shutdown_grace`` seconds, then each key this process holds is *released* and the
session destroyed. Release first: a destroy alone would start the lock-delay, a release lets a follower
take over at once. A key whose body is still running after the grace is not released; the session's
destruction frees it after its lock-delay.

*Operators' controls* (``singleton._controls``): a record beside the key, ``<key>#pause`` or
``<key>#step-down``, reaches every campaign through the watch that covers the key. While paused no
body starts anywhere and the holder keeps the key (its token fired); asked to step down, the holder
ends its term, gives running bodies ``shutdown_grace``, releases, and stays out for the time asked.

*Fork.* An Elector belongs to the process that created it. In a forked child every elector of the
parent is disowned: its tokens fire, it refuses all use, and nothing is released (the parent still
holds the keys). The process-wide one is replaced by a new elector on first use (``singleton._runtime``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from singleton import _controls
from singleton._campaign import Campaign, Phase
from singleton._health import Health, check
from singleton._log import RateLimitedLogger
from singleton._phase import ATTEMPTING, TIMED
from singleton._session import SessionEvent, SessionKeeper, SessionUnavailable
from singleton._stats import EngineStats
from singleton._watch import KeyChanged, Watches, WatchFailed
from singleton.backends import Acquisition, Backend, create_backend
from singleton.config import LOCK_DELAY_MAX, LeaseOverrides, LeaseSpec, Settings, holder_identity
from singleton.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    LeadershipLost,
    SingletonError,
)
from singleton.token import StopCause, StopToken

__all__ = ["AcquireOutcome", "AcquireResult", "Election", "ElectionStatus", "Elector", "Phase", "Role"]

_log = logging.getLogger("singleton.election")

#: The election thread wakes at least this often even with nothing due (a safety net, not a poll).
IDLE_WAKEUP = 30.0
#: How often :meth:`Election.acquire` calls its ``interrupt`` hook.
INTERRUPT_EVERY = 0.1


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
    error: SingletonError | None = None
    #: The key is free but inside the lock-delay its last holder left: nobody may take it yet.
    in_lock_delay: bool = False
    #: The campaign's phase (see :class:`~singleton._campaign.Phase`).
    phase: str = Phase.STARTING.value
    #: Seconds until the next acquisition attempt, when one is scheduled (paused: until the pause ends;
    #: stepped down: until this process campaigns again).
    next_attempt_in: float | None = None
    #: An operator paused the key: no process runs its body (``reason`` says who, until when, why).
    paused: bool = False

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


class AcquireOutcome(str, enum.Enum):
    """How :meth:`Election.acquire` ended."""

    #: This process leads the key; the result carries the term's token.
    LEADER = "leader"
    #: Another process held the key when the wait ran out.
    HELD_ELSEWHERE = "held_elsewhere"
    #: Consul could not be used: no answer in time, an error on the first attempt, or one at the end.
    UNAVAILABLE = "unavailable"
    #: The elector was closed, or the key resigned, while waiting.
    CLOSED = "closed"
    #: An operator paused the key (``singleton pause``) and the wait ran out before the pause did.
    PAUSED = "paused"


@dataclass(frozen=True)
class AcquireResult:
    outcome: AcquireOutcome
    #: The term's token (LEADER only).
    token: StopToken | None = None
    #: ``hostname:pid`` of the other holder (HELD_ELSEWHERE).
    holder: str | None = None
    #: Why it did not lead, in words.
    reason: str | None = None
    #: The error behind UNAVAILABLE, when there was one.
    error: SingletonError | None = None


class Election:
    """One key inside one :class:`Elector`. Any thread may read it; only the election thread changes it."""

    def __init__(self, elector: Elector, campaign: Campaign) -> None:
        self.elector = elector
        self._campaign = campaign
        campaign.owner = self

    def __repr__(self) -> str:
        return f"<Election {self.full_key!r} {self.role.value}>"

    @property
    def key(self) -> str:
        return self._campaign.key

    @property
    def full_key(self) -> str:
        return self._campaign.full_key

    @property
    def spec(self) -> LeaseSpec:
        return self._campaign.spec

    # -- listeners ------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Election], object]) -> None:
        """Call ``callback(election)`` each time this process becomes, or stops being, the leader.

        It runs on the election thread right after the change (read :attr:`is_leader` to know which):
        keep it short and never block in it. Exceptions are logged and ignored.
        """
        campaign = self._campaign
        campaign.listeners = [*campaign.listeners, callback]

    def remove_listener(self, callback: Callable[[Election], object]) -> None:
        campaign = self._campaign
        campaign.listeners = [cb for cb in campaign.listeners if cb is not callback]

    # -- reading (any thread, no I/O) -----------------------------------------------------------

    @property
    def token(self) -> StopToken | None:
        """The current term's stop token, or None when not leading."""
        token = self._campaign.token
        return None if token is None or token.stopped else token

    @property
    def is_leader(self) -> bool:
        return self._campaign.leading

    @property
    def role(self) -> Role:
        campaign = self._campaign
        if campaign.leading:
            return Role.LEADER
        if campaign.phase is Phase.RESIGNED:
            return Role.RESIGNED
        return Role.STARTING if campaign.phase is Phase.STARTING else Role.FOLLOWER

    @property
    def phase(self) -> Phase:
        return self._campaign.phase

    @property
    def holder(self) -> str | None:
        return self._campaign.holder

    @property
    def running(self) -> int:
        """How many leader-only bodies of this key are running now."""
        return len(self._campaign.bodies)

    def status(self) -> ElectionStatus:
        c = self._campaign
        token = c.token
        leading = token is not None and not token.stopped
        now = self.elector._clock()
        scheduled = c.phase in ATTEMPTING or c.phase in (Phase.PAUSED, Phase.STEPPED_DOWN)
        return ElectionStatus(
            key=c.key,
            full_key=c.full_key,
            role=self.role,
            holder=c.holder,
            holder_session=c.holder_session,
            session=c.keeper.id,
            fence=token.fence if leading and token else None,
            since=token.since if leading and token else None,
            lease_remaining=token.remaining() if leading and token else None,
            reason=None if leading else (token.reason if token is not None else c.reason),
            last_error=c.last_error,
            ttl=c.spec.ttl,
            lock_delay=c.spec.lock_delay or 0.0,
            error=None if leading else c.error,
            in_lock_delay=not leading and c.phase is Phase.LOCK_DELAY and c.due > now,
            phase=c.phase.value,
            next_attempt_in=max(0.0, c.due - now) if scheduled and math.isfinite(c.due) else None,
            paused=c.controls.paused(now),
        )

    # -- waiting --------------------------------------------------------------------------------

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait until the first acquisition attempt has an outcome (leader, follower, or an error)."""
        return self._campaign.settled.wait(timeout)

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this process leads the key, or ``timeout`` seconds pass. Returns :attr:`is_leader`."""
        self.elector.start()
        end = None if timeout is None else time.monotonic() + timeout
        with self.elector._changed:
            while not self.is_leader and not self.elector.closed:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.elector._changed.wait(min(remaining, IDLE_WAKEUP) if remaining is not None else IDLE_WAKEUP)
        return self.is_leader

    def acquire(
        self,
        timeout: float | None = None,
        *,
        settle_timeout: float | None = None,
        give_up_on_error: bool = True,
        interrupt: Callable[[], None] | None = None,
    ) -> AcquireResult:
        """Block until this process leads the key, or until it is clear that it will not.

        :param timeout: how long to wait for another holder to let go: None waits for ever, 0 not at
            all (the answer comes as soon as the first attempt sees another holder). A key that is
            free but inside a lock-delay is waited for in any case: the delay ends within 60 s.
        :param settle_timeout: how long the first attempt may take before the result is UNAVAILABLE
            (default: the settings' ``startup_timeout``, at least the HTTP timeout plus a second).
        :param give_up_on_error: an error on the first attempt (Consul unreachable, an ACL denial), or
            at the end of ``timeout``, makes the result UNAVAILABLE; False retries for as long as it
            takes, as Go's ``MaybeAcquireLeadership`` did.
        :param interrupt: called at every wake-up, at least every 0.1 s, outside any lock of ours; it may
            raise to abandon the wait (the command line handles signals with it).
        """
        elector = self.elector
        elector.start()
        settings = elector.settings
        if settle_timeout is None:
            settle_timeout = max(settings.startup_timeout, settings.consul.timeout + 1.0)
        wait = _AcquireWait(self, timeout, settle_timeout, give_up_on_error)
        while True:
            if interrupt is not None:
                interrupt()
            with elector._changed:  # read and wait under the lock that every change notifies through
                verdict = wait.verdict(time.monotonic())
                if isinstance(verdict, AcquireResult):
                    return verdict
                elector._changed.wait(verdict if interrupt is None else min(verdict, INTERRUPT_EVERY))

    # -- commands -------------------------------------------------------------------------------

    def resign(self, timeout: float | None = 10.0) -> bool:
        """Stop campaigning: fire the token, release the key (no lock-delay), stay a follower.

        Returns True once the election thread has released the key (within ``timeout``).
        """
        campaign, elector = self._campaign, self.elector
        token = campaign.token
        if token is not None:
            token.fire("resigned", StopCause.RESIGNED)
        done = threading.Event()
        session = campaign.keeper.id
        # The release goes out from this thread at once, sparing a hand-off to the election thread (and
        # the wait for the GIL it would then hold): a follower takes over sooner. ``resigning`` keeps the
        # election thread from taking the key back meanwhile; the message that follows ends the term.
        here = elector._thread is not None and session is not None and campaign.held_by == session
        campaign.resigning = True
        if here:
            assert session is not None
            try:
                elector.backend.release(campaign.full_key, session, elector.identity.encode())
            except BackendError as exc:
                here = False  # the election thread tries again
                _log.debug("%r: the release on resign failed (%s); the election thread retries it", campaign.key, exc)
        elector._post(_Resign(campaign, done, released_here=here))
        if elector._thread is None:
            return False
        return done.wait(timeout)

    def campaign(self) -> None:
        """Campaign again after :meth:`resign`."""
        self.elector._post(_Rejoin(self._campaign))
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
                raise LeadershipLost(self.key, self._campaign.reason or "this process does not hold the key")
        token.raise_if_stopped()
        campaign = self._campaign
        campaign.runs += 1
        bodies = campaign.bodies
        bodies.append(None)
        try:
            with token.activate():
                yield token
        finally:
            bodies.pop()


class _AcquireWait:
    """The rules of :meth:`Election.acquire`, judged again at every change."""

    def __init__(
        self, election: Election, timeout: float | None, settle_timeout: float, give_up_on_error: bool
    ) -> None:
        self.election = election
        self.timeout = timeout
        self.settle_timeout = settle_timeout
        self.give_up_on_error = give_up_on_error
        began = time.monotonic()
        self.settle_by = began + settle_timeout
        self.wait_end = None if timeout is None else began + max(0.0, timeout)
        self.free_since: float | None = None
        self.judged_first = False

    def verdict(self, now: float) -> AcquireResult | float:
        """The result, or how long to wait for the next change (at most IDLE_WAKEUP)."""
        election = self.election
        c = election._campaign
        token = election.token
        if token is not None:
            return AcquireResult(AcquireOutcome.LEADER, token=token)
        if election.elector.closed or c.phase is Phase.RESIGNED:
            return AcquireResult(AcquireOutcome.CLOSED, reason=c.reason or "closed")
        wait_over = self.wait_end is not None and now >= self.wait_end
        until: float | None = self.wait_end
        if not c.settled.is_set():
            if now >= self.settle_by:
                description = election.elector.backend.description
                return AcquireResult(
                    AcquireOutcome.UNAVAILABLE,
                    reason=f"{description} did not answer within {self.settle_timeout:g}s",
                    error=c.error,
                )
            until = self.settle_by
        elif c.error is not None and self.give_up_on_error and (not self.judged_first or wait_over):
            return AcquireResult(AcquireOutcome.UNAVAILABLE, reason=c.reason or str(c.error), error=c.error)
        elif c.phase in (Phase.WATCHING, Phase.STEPPING_DOWN, Phase.STEPPED_DOWN):
            self.free_since = None
            if wait_over:
                return AcquireResult(AcquireOutcome.HELD_ELSEWHERE, holder=c.holder, reason=c.reason)
        elif c.phase is Phase.PAUSED:
            self.free_since = None
            if wait_over:
                return AcquireResult(AcquireOutcome.PAUSED, holder=c.holder, reason=c.reason)
        elif c.phase is Phase.BACKING_OFF:
            if not self.give_up_on_error:
                until = None
        else:
            # Free, inside a lock-delay, or about to be attempted: waited for in any case, within a
            # bound (a lock-delay ends within LOCK_DELAY_MAX, then one of the waiting processes wins).
            if self.free_since is None:
                self.free_since = now
            if self.timeout is not None:
                give_up = max(self.free_since + LOCK_DELAY_MAX + self.settle_timeout, self.wait_end or 0.0)
                if now >= give_up:
                    return AcquireResult(
                        AcquireOutcome.UNAVAILABLE, reason=c.reason or "the key could not be acquired", error=c.error
                    )
                until = give_up
        self.judged_first = self.judged_first or c.settled.is_set()
        return IDLE_WAKEUP if until is None else min(IDLE_WAKEUP, max(0.0, until - now))


# -- the election thread's inbox -------------------------------------------------------------------


@dataclass(frozen=True)
class _Register:
    campaign: Campaign


@dataclass(frozen=True)
class _Resign:
    campaign: Campaign
    done: threading.Event
    #: The caller's thread sends the release itself (see Election.resign).
    released_here: bool = False


@dataclass(frozen=True)
class _Rejoin:
    campaign: Campaign


@dataclass(frozen=True)
class _Attempted:
    """The answer of an acquisition attempt a watch thread made (see Elector._react)."""

    campaign: Campaign
    session: str
    outcome: Acquisition | BackendError


_Message = _Register | _Resign | _Rejoin | _Attempted | KeyChanged | WatchFailed


@dataclass
class _Group:
    """One session and the campaigns under it: every key with the same lease settings."""

    keeper: SessionKeeper
    campaigns: list[Campaign] = field(default_factory=list)

    def wanted(self) -> bool:
        return any(c.phase is not Phase.RESIGNED for c in self.campaigns)

    def leading(self) -> bool:
        return any(c.phase is Phase.LEADING for c in self.campaigns)


class Elector:
    """Campaigns for keys on behalf of one process. See the module docstring for the behaviour.

    ``settings`` default to :meth:`Settings.from_env`; ``backend`` defaults to the one they name.
    ``clock`` is the monotonic clock every deadline is measured on (inject a fake one in tests, and
    drive the elector with :meth:`step` and ``watch="inline"`` instead of threads). ``rng`` is the
    random source of the retry policies' jitter.
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
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigurationError(f"settings must be a singleton.Settings, got {type(settings).__name__}")
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
        # A SimpleQueue (C, one lock) wakes the election thread faster than an Event: a follower's
        # acquisition waits on that hand-off from its watch thread.
        self._inbox: queue.SimpleQueue[_Message | None] = queue.SimpleQueue()
        self._waiting: _Message | None = None
        self._stop = threading.Event()
        self._elections: dict[str, Election] = {}
        self._groups: dict[LeaseSpec, _Group] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._close_done = threading.Event()
        self._rlog = RateLimitedLogger(_log, clock=clock)
        #: Consul errors and renewal latency, for metrics (singleton.contrib.prometheus).
        self.stats = EngineStats()
        self._watches = Watches(
            self.backend,
            self._watched_keys,
            key_prefix=self.settings.key_prefix,
            wait=self.settings.watch_wait,
            threads=watch == "thread",
            post=self._post,
            react=self._react,
            stop=self._stop,
            rng=self._rng,
            stats=self.stats,
        )
        # The election thread's heartbeat (time.monotonic): when its last step ended, and the wait it chose.
        self._beat: float | None = None
        self._beat_wait = 0.0
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
        check_ttl: float | None = None,
        overrides: LeaseOverrides | None = None,
        start: bool = True,
    ) -> Election:
        """Campaign for ``key`` (idempotent). The first attempt is made at once by the election thread.

        The lease settings are the process's, changed by ``overrides`` (or ``ttl``, ``lock_delay``,
        ``margin``, ``check_ttl``): see :meth:`LeaseSpec.derive`.

        :raises ConfigurationError: a bad key or lease setting, or ``key`` already registered with
            different lease settings.
        """
        full_key = self.settings.full_key(key)
        if overrides is None:
            overrides = LeaseOverrides.checked(ttl=ttl, lock_delay=lock_delay, margin=margin, check_ttl=check_ttl)
        spec = self.settings.lease.derive(overrides)
        with self._lock:
            if self._closed:
                raise SingletonError(f"this elector is closed; cannot campaign for {key!r}")
            election = self._elections.get(full_key)
            if election is not None:
                if election.spec != spec:
                    old = election.spec
                    raise ConfigurationError(
                        f"key {key!r} is already campaigned for with ttl={old.ttl:g}, "
                        f"lock_delay={old.lock_delay:g}, margin={old.margin:g}; "
                        f"got ttl={spec.ttl:g}, lock_delay={spec.lock_delay:g}, margin={spec.margin:g}"
                    )
                return election
            group = self._groups.get(spec)
            if group is None:
                keeper = SessionKeeper(
                    spec,
                    self.backend,
                    name=self.session_name,
                    clock=self._clock,
                    rng=self._rng,
                    rlog=self._rlog,
                    stats=self.stats,
                )
                group = self._groups[spec] = _Group(keeper)
            campaign = Campaign(
                key,
                full_key,
                spec,
                keeper=group.keeper,
                backend=self.backend,
                identity=self.identity,
                clock=self._clock,
                wall_clock=self._wall,
                rng=self._rng,
                rlog=self._rlog,
                notify=self._notify,
                grace=self.settings.shutdown_grace,
                stats=self.stats,
            )
            election = Election(self, campaign)
            self._elections[full_key] = election
        self._post(_Register(campaign))
        if start:
            self.start()
        return election

    def start(self) -> Elector:
        """Start the election thread (and the watch threads) if not yet started. Idempotent.

        Started in the main thread, it also hands the keys over on SIGTERM (see ``singleton._signals``).
        """
        if self._watch_mode == "inline":
            return self
        with self._lock:
            if self._thread is not None or self._closed:
                return self
            if os.getpid() != self.pid:
                raise SingletonError("an Elector cannot be used in a forked child; the child needs its own")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._beat, self._beat_wait = time.monotonic(), 0.0
            self._thread.start()
        from singleton import _signals  # here: _signals reads this module's electors

        _signals.install(self.settings.handle_sigterm)
        return self

    def status(self) -> list[ElectionStatus]:
        return [e.status() for e in self.elections]

    def health(self, tolerance: float | None = None) -> Health:
        """Whether the election thread is alive and every session holding a key is renewed on time.

        For a readiness or liveness endpoint; see :func:`singleton.health` (``tolerance``: how late a
        renewal may be, in seconds past its interval; default half the interval).
        """
        return check(self, tolerance)

    def close(self, grace: float | None = None) -> None:
        """Fire every token, give running bodies ``grace`` seconds, release the keys, destroy the sessions.

        Never raises a backend error: Consul being down at exit is logged, not raised. Idempotent: a
        second call waits for a close in progress in another thread (SIGTERM's) to end.
        """
        grace = self.settings.shutdown_grace if grace is None else grace
        with self._lock:
            closing = self._closed
            self._closed = True
        if closing:
            if os.getpid() == self.pid:
                self._close_done.wait(grace + self.settings.consul.timeout * 2 + 2.0)
            return
        if os.getpid() != self.pid:  # an inherited copy in a forked child: the parent owns the session
            self._stop.set()
            return
        try:
            self._close(grace)
        finally:
            self._close_done.set()

    def _close(self, grace: float) -> None:
        campaigns = [e._campaign for e in self.elections]
        for campaign in campaigns:
            token = campaign.token
            if token is not None:
                token.fire("shutting down", StopCause.SHUTDOWN)
        self._notify()
        end = time.monotonic() + grace
        with self._changed:
            while any(c.bodies for c in campaigns):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.005))  # bodies end without notifying: poll briefly
        self._stop.set()
        self._inbox.put(None)  # wake the election thread
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.consul.timeout + 1.0)
        # The election thread has stopped: from here this thread is the campaigns' only writer.
        for campaign in campaigns:
            campaign.shut_down()
        _hand_back(campaigns, [group.keeper for group in self._groups.values()])
        # Watch threads are daemons blocked in a query for up to watch_wait: they see _stop and end when
        # it returns. Waiting for them would only delay the exit.
        self.backend.close()
        self._notify()

    def _disown_after_fork(self) -> None:
        """In a forked child: this elector belongs to the parent. Fire its tokens (without locks or
        callbacks, which belong to the parent's threads), make it refuse all use, and let the backend
        drop what would keep the parent's locks alive. No network call: the parent still holds the keys."""
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = True
        for election in list(self._elections.values()):
            election._campaign.disown("this process is a fork of the leader; leadership stays with the parent")
        try:
            self.backend.after_fork_in_child()
        except Exception:
            _log.exception("the backend's after-fork clean-up failed")

    # -- the election thread --------------------------------------------------------------------

    def _post(self, message: _Message) -> None:
        self._inbox.put(message)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _run(self) -> None:
        _log.debug("election thread started for %s", self.identity)
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # the thread must outlive any bug: log it and carry on
                _log.exception("unexpected error in the election thread")
                delay = 1.0
            self._beat_wait, self._beat = delay, time.monotonic()
            if self._stop.is_set():
                # close() sets _stop, then wakes this thread with a None; a step draining the inbox at
                # that moment has taken the None, and the wait would last IDLE_WAKEUP: longer than
                # close() waits, which then gave up on the hand-back (the key left to expire).
                break
            try:
                self._waiting = self._inbox.get(timeout=delay) if delay > 0 else None
            except queue.Empty:
                pass
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
        groups = list(self._groups.values())
        for group in groups:
            self._dispatch(group, group.keeper.tend(self._clock(), wanted=group.wanted()))
        for group in groups:
            keeper = group.keeper
            for campaign in list(group.campaigns):  # the operators' phases first (singleton._controls)
                if campaign.phase in TIMED and self._clock() >= campaign.due:
                    campaign.controls.tick(self._clock())
            for campaign in list(group.campaigns):
                if not campaign.wants_attempt(self._clock()):
                    continue
                # Many attempts in one step against a slow agent must not push a renewal past the lease.
                self._dispatch(group, keeper.renew_if_due())
                if keeper.valid(self._clock()):
                    lost = campaign.attempt()
                    if lost is not None:
                        self._dispatch(group, [lost])
                elif keeper.error is not None and campaign.phase is Phase.STARTING:
                    campaign.on_session_event(SessionUnavailable(keeper.error))
        return self._next_due()

    def _dispatch(self, group: _Group, events: list[SessionEvent]) -> None:
        for event in events:
            for campaign in list(group.campaigns):
                campaign.on_session_event(event)

    def _messages(self) -> Iterator[_Message]:
        """What the inbox holds now: the message the wait woke for first, then the rest, in order."""
        first, self._waiting = self._waiting, None
        if first is not None:
            yield first
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if message is not None:
                yield message

    def _drain(self) -> None:
        adopted = False
        for message in self._messages():
            if isinstance(message, KeyChanged):
                election = self._elections.get(message.full_key)
                if election is not None:
                    election._campaign.on_key_changed(message)
                elif (record := _controls.split_record_key(message.full_key)) is not None:
                    election = self._elections.get(record[0])
                    if election is not None:
                        election._campaign.controls.on_record(record[1], message)
            elif isinstance(message, WatchFailed):  # the attempts say why better; keep it as history
                election = self._elections.get(message.full_key)
                if election is not None:
                    election._campaign.note_error(message.error, "watch", current=False)
            elif isinstance(message, _Register):
                self._adopt(message.campaign)
                adopted = True
            elif isinstance(message, _Resign):
                message.campaign.resign(released_elsewhere=message.released_here)
                message.done.set()
            elif isinstance(message, _Rejoin):
                message.campaign.rejoin()
            elif isinstance(message, _Attempted):
                campaign = message.campaign
                lost = campaign.on_attempted(message.session, message.outcome)
                if lost is not None:
                    self._dispatch(self._groups[campaign.spec], [lost])
        if adopted:  # once per batch: a thousand keys registered at once regroup once
            self._watches.regroup(list(self._elections))

    def _adopt(self, campaign: Campaign) -> None:
        group = self._groups[campaign.spec]
        keeper = group.keeper
        if keeper.id is None and keeper.retry_at > self._clock():
            keeper.retry_at = self._clock()  # a new key: try to create the session now
        group.campaigns.append(campaign)

    def _react(self, change: KeyChanged) -> None:
        """On a watch thread: post ``change``; when it frees a key whose campaign watches it (another
        process let go), send the acquisition attempt from here and post its answer too.

        Only reads campaign state; the election thread judges both messages, in order.
        """
        election = self._elections.get(change.full_key)
        campaign = election._campaign if election is not None else None
        entry = change.entry
        session = campaign.keeper.id if campaign is not None else None
        if (
            campaign is None
            or session is None
            or (entry is not None and entry.session is not None)
            or campaign.phase is not Phase.WATCHING
            or campaign.resigning
            or self._closed
            or not campaign.keeper.valid(self._clock())
        ):
            self._post(change)
            return
        self._post(dataclasses.replace(change, attempting=True))
        outcome: Acquisition | BackendError = BackendUnavailable("the attempt was not made")
        try:
            outcome = campaign.acquire_io(session)
        finally:
            self._post(_Attempted(campaign, session, outcome))

    def _watched_keys(self) -> list[str]:
        """Every key campaigned for, each after its control records (singleton._controls): a pause that
        comes in the same answer as a release is posted before the watch thread may attempt."""
        keys: list[str] = []
        for full_key in list(self._elections):
            keys.extend(_controls.record_keys(full_key))
            keys.append(full_key)
        return keys

    def _poll_watches(self) -> None:
        """watch="inline": read every prefix once instead of blocking queries (for tests without threads)."""
        self._watches.poll()
        self._drain()

    def _next_due(self) -> float:
        now = self._clock()
        due = now + IDLE_WAKEUP
        for group in list(self._groups.values()):
            keeper = group.keeper
            due = min(due, keeper.due(now, wanted=group.wanted(), leading=group.leading()))
            valid = keeper.valid(now)
            for campaign in group.campaigns:
                if campaign.phase in TIMED or (valid and campaign.phase in ATTEMPTING):
                    due = min(due, campaign.due)
        return max(0.0, due - now)


def _hand_back(campaigns: list[Campaign], keepers: list[SessionKeeper]) -> None:
    """At shutdown: release each key this process holds, then destroy the sessions (and their checks).

    Once a call finds the backend unreachable the rest are skipped, so a down Consul delays the
    shutdown by one request timeout, not one per key: the sessions then expire on their own.
    """
    unreachable: BackendError | None = None
    for campaign in campaigns:
        keeper = campaign.keeper
        if keeper.id is None or campaign.held_by != keeper.id or unreachable is not None:
            continue
        if campaign.bodies:
            _log.warning(
                "%r still has %d running bodies after the shutdown grace: not released; it frees "
                "itself %gs after the session is destroyed (lock-delay)",
                campaign.key,
                len(campaign.bodies),
                campaign.spec.lock_delay,
            )
            continue
        try:
            campaign.release()
        except BackendUnavailable as exc:
            unreachable = exc
        except BackendError as exc:
            _log.warning("could not release %r at shutdown: %s", campaign.key, exc)
    for keeper in keepers:
        if unreachable is not None:
            keeper.id = None
            continue
        try:
            keeper.destroy()  # the session, then its health check (fast failover)
        except BackendUnavailable as exc:
            unreachable = exc
        except BackendError as exc:
            _log.warning("could not destroy the session at shutdown: %s", exc)
    if unreachable is not None:
        _log.warning(
            "could not release the keys at shutdown (%s); Consul frees them when the session expires "
            "(after its TTL, then the lock-delay)",
            unreachable,
        )


#: Every elector of this process, so that a forked child can disown them all.
_live: weakref.WeakSet[Elector] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for elector in list(_live):
        if elector.pid != os.getpid():
            elector._disown_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
