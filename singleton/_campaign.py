"""One key's campaign: the phases it goes through, and how each answer from Consul moves it.

A campaign is in exactly one :class:`Phase`, with a due time and a reason; :meth:`Campaign._to` is the
only place that writes them, and the one place that logs a change of leadership, notifies waiters and
calls listeners. Only the election thread calls a campaign's methods (and, once that thread has stopped,
the thread that shuts the elector down); any thread may read its fields.

::

    STARTING --attempt--> LEADING | WATCHING | LOCK_DELAY | BACKING_OFF
    WATCHING --key freed--> ATTEMPT_DUE --attempt--> ...
    LOCK_DELAY --delay over--> (attempt) ...
    LEADING --lease ran out / session lost / key released, deleted--> ATTEMPT_DUE
    LEADING --key taken--> WATCHING
    any --resign()--> RESIGNED --campaign()--> ATTEMPT_DUE
    LEADING, campaigning --pause--> PAUSED --resume, or its end--> ATTEMPT_DUE
    LEADING, PAUSED --step-down--> STEPPING_DOWN --bodies ended, released--> STEPPED_DOWN --its time--> ATTEMPT_DUE

The operators' phases (the last two lines) follow the rules of ``singleton._controls``.

The judgements, as numbered steps, are in :meth:`Campaign.judge_attempt` (an acquisition's answer) and
:meth:`Campaign.on_key_changed` (a watch's answer).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from singleton import _retry
from singleton._controls import Controls
from singleton._keyview import KeyView
from singleton._log import RateLimitedLogger
from singleton._phase import ATTEMPTING, Phase
from singleton._session import LeaseExpired, SessionEvent, SessionKeeper, SessionLost, SessionUnavailable
from singleton._stats import EngineStats
from singleton._watch import KeyChanged
from singleton.backends.base import Acquisition, Backend, KeyInfo
from singleton.config import LeaseSpec
from singleton.errors import AccessDenied, BackendError, SessionInvalidated
from singleton.token import StopCause, StopToken

__all__ = ["Campaign", "Phase"]

_log = logging.getLogger("singleton.election")

_NOW_OR_NEVER = math.inf


_GRACEFUL = frozenset({StopCause.RESIGNED, StopCause.SHUTDOWN, StopCause.PAUSED, StopCause.STEPPED_DOWN})
#: Phases in which a change of the key only updates what is known of it.
_ASIDE = frozenset({Phase.RESIGNED, Phase.STARTING, Phase.PAUSED, Phase.STEPPING_DOWN, Phase.STEPPED_DOWN})


class Campaign:
    """The campaign for one key, under the session of its lease group (see the module docstring)."""

    # Slots: the call path reads ``token`` and ``bodies``, and counts ``runs``, on every decorated call.
    __slots__ = (
        "_clock",
        "_denied",
        "_errors",
        "_notify",
        "_rlog",
        "_wall",
        "backend",
        "bodies",
        "callers",
        "controls",
        "due",
        "error",
        "full_key",
        "held_by",
        "identity",
        "keeper",
        "key",
        "last_error",
        "listeners",
        "owner",
        "phase",
        "reason",
        "resigning",
        "runs",
        "settled",
        "spec",
        "stats",
        "terms_ended",
        "terms_won",
        "token",
        "view",
    )

    def __init__(
        self,
        key: str,
        full_key: str,
        spec: LeaseSpec,
        *,
        keeper: SessionKeeper,
        backend: Backend,
        identity: str,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        rng: _retry.Random,
        rlog: RateLimitedLogger,
        notify: Callable[[], None],
        grace: float = 5.0,
        stats: EngineStats | None = None,
    ) -> None:
        self.key = key
        self.full_key = full_key
        self.spec = spec
        self.keeper = keeper
        self.backend = backend
        self.identity = identity
        self._clock = clock
        self._wall = wall_clock
        self._rlog = rlog
        self._notify = notify
        # -- the state; written by _to() only -------------------------------------------------
        self.phase = Phase.STARTING
        self.due = clock()
        self.reason: str | None = "not started"
        #: The current term's token while LEADING (it may have stopped by its own lease meanwhile).
        self.token: StopToken | None = None
        #: Set by Election.resign() in the caller's thread before it releases the key, cleared when the
        #: election thread handles the resignation: until then, no attempt and no reaction to the release.
        self.resigning = False
        #: What this process knows of the key's holders.
        self.view = KeyView(backend, spec.lock_delay or 0.0, rng)
        #: The session that holds the key by the latest news (ours or None): what shutdown releases.
        self.held_by: str | None = None
        #: The error of the latest attempt (or session creation); None once one had an answer.
        self.error: BackendError | None = None
        #: The last error seen, in words, kept after a success (a history for operators).
        self.last_error: str | None = None
        #: Set once the first attempt has an outcome (leader, follower or an error).
        self.settled = threading.Event()
        #: One item per leader-only body running now (deque.append/pop are atomic: no lock on the call
        #: path). A deque, not a list: a list reallocates at each append to and pop from an empty one,
        #: a deque allocates nothing, which more than pays for counting ``runs`` on the call path.
        self.bodies: deque[None] = deque()
        self.listeners: list[Callable[[Any], object]] = []
        #: What listeners are called with (the public Election).
        self.owner: object = self
        self._errors = _retry.ACQUIRE_ERROR.start(rng)
        self._denied = _retry.ACCESS_DENIED.start(rng)
        #: Pause and step-down (``grace``: what running bodies get when stepping down).
        self.controls = Controls(self, grace=grace, rng=rng)
        # -- counts, for metrics (singleton._stats) ------------------------------------------------
        self.stats = stats if stats is not None else EngineStats()
        self.terms_won = 0
        #: Terms ended, by the value of the StopCause their token fired with.
        self.terms_ended: Counter[str] = Counter()
        #: Bodies started: decorated calls that ran, and Election.body blocks.
        self.runs = 0
        #: The decorated functions' handles calling this key, each with its count of skipped calls when
        #: it bound here: they count their skips themselves, so the call path counts nothing more.
        self.callers: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<Campaign {self.full_key!r} {self.phase.value}>"

    # -- reading (any thread) ---------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        token = self.token
        return token is not None and not token.stopped

    @property
    def holder(self) -> str | None:
        return self.view.holder

    @property
    def holder_session(self) -> str | None:
        return self.view.holder_session

    @property
    def skipped(self) -> int:
        """Decorated calls of this key that did not run their body, since their functions bound here."""
        return sum(max(0, handle.skipped - start) for handle, start in list(self.callers.items()))

    def wants_attempt(self, now: float) -> bool:
        return self.phase in ATTEMPTING and now >= self.due and not self.resigning

    # -- the one transition -----------------------------------------------------------------------

    def _to(
        self,
        phase: Phase,
        reason: str | None,
        *,
        due: float = _NOW_OR_NEVER,
        token: StopToken | None = None,
        cause: StopCause | None = None,
        ended: str | None = None,
        forked: bool = False,
    ) -> None:
        """Enter ``phase``: the only writer of phase, due and reason (see the module docstring).

        Leaving LEADING fires the term's token first (why: ``ended``, default ``reason``; and ``cause``),
        so that a caller holding it sees it stopped before anything else happens. ``forked``: in a forked
        child, where other threads' locks may be held for ever: no lock, no log, no waiter, no listener.
        """
        was_leading = self.phase is Phase.LEADING
        if was_leading and phase is not Phase.LEADING:
            why = ended or reason or "stopped"
            term, self.token = self.token, None
            if forked:
                if term is not None:
                    term._fire_in_forked_child(why)
                self.phase, self.due, self.reason = phase, due, reason
                return
            if term is not None:
                term.fire(why, cause)
                cause = term.cause or cause  # the token may have fired first, by its own lease
            self.terms_ended[cause.value if cause is not None else "other"] += 1
        if phase is Phase.LEADING:
            assert token is not None
            self.token = token
            self.error = None
            self.terms_won += 1
        self.phase, self.due, self.reason = phase, due, reason
        if forked:
            return
        if phase is not Phase.STARTING:
            self.settled.set()
        self._notify()
        changed = was_leading != (phase is Phase.LEADING)
        if changed:
            for callback in list(self.listeners):
                try:
                    callback(self.owner)
                except Exception:
                    _log.exception("leadership listener %r of %r failed", callback, self.key)
            # Logged last: waiters and listeners (a scheduler to wake) come before a write to a log.
            if phase is Phase.LEADING:
                assert token is not None
                _log.warning("%s is now the leader of %r (fence %d)", self.identity, self.key, token.fence)
            else:
                level = logging.INFO if cause in _GRACEFUL else logging.WARNING
                _log.log(level, "%s is no longer the leader of %r: %s", self.identity, self.key, ended or reason)

    def end_term(
        self, reason: str, cause: StopCause, *, then: Phase = Phase.ATTEMPT_DUE, then_reason: str | None = None
    ) -> None:
        """End the term for ``reason``; go on in ``then`` (an attempt at once, by default)."""
        if self.phase is Phase.LEADING:
            due = self._clock() if then is Phase.ATTEMPT_DUE else _NOW_OR_NEVER
            self._to(then, then_reason or reason, due=due, cause=cause, ended=reason)

    # -- an acquisition attempt ---------------------------------------------------------------------

    def attempt(self) -> SessionLost | None:
        """Try to acquire the key with the keeper's session (valid when called); judge the answer.

        Returns the keeper's :class:`SessionLost` when Consul says the session is gone (the elector
        hands it to every campaign of the group).
        """
        session = self.keeper.id
        assert session is not None
        return self.judge_outcome(session, self.acquire_io(session))

    def acquire_io(self, session: str) -> Acquisition | BackendError:
        """The acquisition call alone, changing nothing here: any thread may make it (a watch thread does
        when it sees the key freed, sparing the hand-off; see :meth:`on_key_changed`)."""
        try:
            return self.backend.acquire(self.full_key, session, self.identity.encode(), flags=int(self._wall() * 1000))
        except BackendError as exc:
            return exc

    def on_attempted(self, session: str, outcome: Acquisition | BackendError) -> SessionLost | None:
        """The answer of an attempt a watch thread made: judged as if this thread had made it, unless the
        campaign moved on meanwhile (resigned, paused, or its session was replaced)."""
        if self.phase is Phase.ATTEMPT_DUE and self.due == _NOW_OR_NEVER and self.keeper.id == session:
            return self.judge_outcome(session, outcome)
        if isinstance(outcome, Acquisition) and outcome.acquired and self.phase in (Phase.RESIGNED, Phase.PAUSED):
            try:  # taken just as it resigned or was paused: give it back at once
                self.backend.release(self.full_key, session, self.identity.encode())
            except BackendError as exc:
                self.note_error(exc, "release the key", current=False, operation="release")
        return None

    def judge_outcome(self, session: str, outcome: Acquisition | BackendError) -> SessionLost | None:
        """An acquisition's answer, or its error: what it means (see :meth:`judge_attempt`)."""
        if isinstance(outcome, SessionInvalidated):
            self.stats.count_error("acquire", outcome)
            return self.keeper.forget(f"session invalidated: {outcome}")
        if isinstance(outcome, BackendError):
            exc = outcome
            policy = self._denied if isinstance(exc, AccessDenied) else self._errors
            self.note_error(exc, "acquire the key", operation="acquire")
            self._to(Phase.BACKING_OFF, f"could not acquire the key: {exc}", due=self._clock() + policy.next())
            return None
        self._errors.reset()
        self._denied.reset()
        self.error = None
        self.judge_attempt(outcome, session)
        return None

    def judge_attempt(self, result: Acquisition, session: str) -> None:
        """What an acquisition's answer means, step by step."""
        now = self._clock()
        entry = result.entry
        holder_session = entry.session if entry is not None else None
        # 1. Acquired. If the lease ran out during the call, the session must be proven first.
        if result.acquired and entry is not None:
            if not self.keeper.valid(now):
                self._to(Phase.ATTEMPT_DUE, "the local lease ran out during the attempt", due=now)
                return
            self._lead(entry, session)
            return
        # 2. Refused, yet the key's Session is ours. Consul judges the lock-delay before the holder, so
        #    this is a lock-delay: servers restarted from their data replay old invalidations, with
        #    their delays counted from the restart. Our session still holds the key and nobody else can
        #    take it: the term resumes, fenced by the key's ModifyIndex (unchanged since we took it).
        if entry is not None and holder_session == session:
            if not self.keeper.valid(now):
                self._to(Phase.ATTEMPT_DUE, "the local lease ran out during the attempt", due=now)
                return
            _log.warning(
                "%r: Consul refused to re-acquire the key that our session %s holds (a lock-delay, replayed "
                "after a server restart): leadership resumes on that session",
                self.key,
                session,
            )
            self._lead(entry, session)
            return
        self.view.observe(entry, now, self.keeper.id)
        # 3. Refused: another session holds the key. The watch says when that changes.
        if holder_session is not None:
            self.held_by = None
            self._to(Phase.WATCHING, f"held by {self.holder or 'another session'}")
            return
        # 4. Refused: the key is free (or missing), so inside a lock-delay; or, on a backend without
        #    lock-delays, another process won a race.
        if not self.backend.lock_delays:
            self._to(
                Phase.LOCK_DELAY, "the key was taken and let go meanwhile; looking again", due=self.view.race_end(now)
            )
            return
        end = self.view.lock_delay_end(now)
        self._to(
            Phase.LOCK_DELAY, f"the key is free but inside a lock-delay; next attempt in {end - now:.2f}s", due=end
        )

    def _lead(self, entry: KeyInfo, session: str) -> None:
        self.view.ours(entry, self.identity, session)
        self.held_by = session
        # The key is ours; a term starts unless an operator paused it (singleton._controls, rule 1).
        unread = self.controls.ensure_known()
        if unread is not None:
            why = f"could not read the key's control records: {unread}"
            self._to(Phase.BACKING_OFF, why, due=self._clock() + self._errors.next())
            return
        if self.controls.pause_instead():
            return
        token = StopToken(
            self.key, fence=entry.modify_index, lease=self.keeper.lease, clock=self._clock, since=self._wall()
        )
        self._to(Phase.LEADING, None, token=token)

    # -- a watch's news -----------------------------------------------------------------------------

    def on_key_changed(self, change: KeyChanged) -> None:
        """What a change of the key means, step by step."""
        # 1. An index that went backwards (a restarted dev agent) resets what we know.
        view = self.view
        if change.reset:
            view.seen_index = 0
        # 2. Older than what we know already: a watch that began before our own acquisition.
        if change.index < view.seen_index:
            return
        view.seen_index = change.index
        now = self._clock()
        entry = change.entry
        session = entry.session if entry is not None else None
        ours = self.keeper.id
        view.observe(entry, now, ours)
        if session is None or session != ours:
            self.held_by = None
        # 3. Leading: the key must still carry our session; anything else ends the term (unless this
        #    process is letting go of it: resign() released it, and its message follows).
        if self.phase is Phase.LEADING:
            if (session is not None and session == ours) or self.resigning:
                return
            if entry is None:
                self.end_term("the key was deleted", StopCause.KEY_DELETED)
            elif session is None:
                self.end_term(
                    "the key was released by Consul (session invalidated or released by an operator)",
                    StopCause.KEY_RELEASED,
                )
            else:
                self.end_term(
                    f"the key is now held by {entry.holder} (session {session})",
                    StopCause.KEY_TAKEN,
                    then=Phase.WATCHING,
                    then_reason=f"held by {self.holder or 'another session'}",
                )
            return
        if self.phase in _ASIDE:
            return
        # 4. Campaigning: free (or ours) means an attempt now, or when the lock-delay ends. When the watch
        #    thread has sent that attempt already (it saw the key freed while we watched), its answer is
        #    judged when it comes (on_attempted): nothing is due until then.
        if session is None or session == ours:
            if self.phase is Phase.LOCK_DELAY and self.due > now:
                return
            if self.phase is Phase.BACKING_OFF:
                return  # the backoff's own due time stands
            free = f"free (last held by {entry.holder})" if entry and entry.holder else "free"
            self._to(Phase.ATTEMPT_DUE, free, due=_NOW_OR_NEVER if change.attempting else now)
            return
        # 5. Another session holds it: watch.
        if self.phase is not Phase.WATCHING:
            self._to(Phase.WATCHING, f"held by {self.holder or 'another session'}")

    def note_error(self, exc: BackendError, doing: str, *, current: bool = True, operation: str | None = None) -> None:
        """Keep ``exc`` for status (``current``: it is the latest attempt's) and log it, rate-limited.

        ``operation`` counts it for metrics (errors that reach every campaign are counted where they happen).
        """
        if operation is not None:
            self.stats.count_error(operation, exc)
        self.last_error = f"{doing}: {exc}"
        if current:
            self.error = exc
        level = logging.ERROR if isinstance(exc, AccessDenied) else logging.WARNING
        self._rlog.log(level, f"{doing}:{type(exc).__name__}", "%r: could not %s: %s", self.key, doing, exc)

    # -- the session's news -----------------------------------------------------------------------

    def on_session_event(self, event: SessionEvent) -> None:
        if isinstance(event, LeaseExpired):
            self.end_term(event.reason, StopCause.LEASE_EXPIRED)
        elif isinstance(event, SessionLost):
            self.held_by = None
            if self.phase is Phase.LEADING:
                self.end_term(event.reason, StopCause.SESSION_GONE)
            elif self.phase in ATTEMPTING:
                self._to(self.phase, self.reason, due=min(self.due, self._clock()))
        elif isinstance(event, SessionUnavailable):
            self.note_error(event.error, "create a session")
            if self.phase in ATTEMPTING:
                self._to(Phase.BACKING_OFF, f"could not create a session: {event.error}", due=self.due)

    # -- commands -----------------------------------------------------------------------------------

    def resign(self, *, released_elsewhere: bool = False) -> None:
        """Stop campaigning; release the key if our session holds it (no lock-delay follows).

        ``released_elsewhere``: the resigning thread sends the release itself.
        """
        if self.phase is Phase.LEADING:
            self.end_term("resigned", StopCause.RESIGNED, then=Phase.RESIGNED)
        elif self.phase is not Phase.RESIGNED:
            self._to(Phase.RESIGNED, "resigned")
        self.resigning = False
        if released_elsewhere:
            self.held_by = None
            return
        try:
            self.release()
        except BackendError as exc:
            self.note_error(exc, "release the key", current=False, operation="release")

    def rejoin(self) -> None:
        """Campaign again after :meth:`resign` (unless the key is paused)."""
        if self.phase is Phase.RESIGNED:
            self.controls.campaign_again("campaigning again")

    def release(self) -> None:
        """Release the key if our session holds it, by the latest news (resign and shutdown).

        :raises BackendError: as :meth:`Backend.release`.
        """
        session = self.keeper.id
        if session is None or self.held_by != session:
            return
        self.backend.release(self.full_key, session, self.identity.encode())
        self.held_by = None

    def disown(self, reason: str) -> None:
        """In a forked child: the parent holds the key; this copy fires its token and stops (no I/O)."""
        self._to(Phase.RESIGNED, reason, forked=True)

    def shut_down(self) -> None:
        """The elector is closing (its thread has stopped): end the term and stop campaigning."""
        if self.phase is Phase.LEADING:
            self.end_term("shutting down", StopCause.SHUTDOWN, then=Phase.RESIGNED)
        elif self.phase is not Phase.RESIGNED:
            self._to(Phase.RESIGNED, "shut down")
