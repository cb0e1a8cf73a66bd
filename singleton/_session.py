"""The session keeper: one Consul session for every key with the same lease settings.

It creates the session when a campaign of its group wants one, renews it every ``ttl / 3``, and keeps
the *lease*: how long this process may act on the session's locks without hearing from Consul again.
Each successful renewal moves the lease's deadline to ``lease`` seconds after the renewal was *sent*
(:class:`~singleton.config.LeaseSpec` says why that is safe). It makes every call itself and tells what
happened as a :class:`SessionEvent`; it knows nothing of keys or campaigns (the elector hands its events
to them).

Events, and what the elector does with them:

* :class:`LeaseExpired`: no renewal landed within the lease: every term of the group ends.
* :class:`SessionLost`: Consul no longer knows the session (a renewal or an attempt answered 404): every
  term ends, and a new session is created at once.
* :class:`SessionUnavailable`: the session could not be created (Consul down, ACL): campaigns that had no
  outcome yet are told why.
* :class:`SessionReady`: a session was created, or the lease that had run out was renewed again (the
  session survived an outage): campaigns waiting for one may attempt now.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from singleton import _retry
from singleton._log import RateLimitedLogger
from singleton._stats import EngineStats
from singleton.backends.base import Backend
from singleton.config import LeaseSpec
from singleton.errors import BackendError, SessionInvalidated
from singleton.token import Lease

__all__ = [
    "LeaseExpired",
    "SessionEvent",
    "SessionKeeper",
    "SessionLost",
    "SessionReady",
    "SessionUnavailable",
]

_log = logging.getLogger("singleton.session")
_NEVER = -math.inf


@dataclass(frozen=True)
class LeaseExpired:
    reason: str


@dataclass(frozen=True)
class SessionLost:
    reason: str


@dataclass(frozen=True)
class SessionUnavailable:
    error: BackendError


@dataclass(frozen=True)
class SessionReady:
    session: str


SessionEvent = LeaseExpired | SessionLost | SessionUnavailable | SessionReady


class SessionKeeper:
    """The session of one lease group. Only the election thread calls it; any thread may read it."""

    def __init__(
        self,
        spec: LeaseSpec,
        backend: Backend,
        *,
        name: str,
        clock: Callable[[], float],
        rng: _retry.Random,
        rlog: RateLimitedLogger,
        stats: EngineStats | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.name = name
        self._clock = clock
        self._rlog = rlog
        #: The session's ID while this process has one.
        self.id: str | None = None
        #: The lease shared by every term of this group; replaced (never revived) once it ran out.
        self.lease = Lease(_NEVER)
        self.next_renew = _NEVER
        #: When to try creating a session again (after a failure).
        self.retry_at = _NEVER
        self._create = _retry.SESSION_CREATE.start(rng)
        self._renew = _retry.RENEW.start(rng, cap=spec.renew_interval)
        #: The last error of a create or renew call; None once one succeeded.
        self.error: BackendError | None = None
        #: When the latest successful creation or renewal was sent (the health check's measure).
        self.renewed_at = _NEVER
        self.stats = stats if stats is not None else EngineStats()

    def __repr__(self) -> str:
        return f"<SessionKeeper ttl={self.spec.ttl:g} session={self.id}>"

    # -- reading --------------------------------------------------------------------------------

    def valid(self, now: float) -> bool:
        """Whether this process can prove, now, that its session holds what it acquired."""
        return self.id is not None and now < self.lease.deadline

    @property
    def troubled(self) -> bool:
        """The latest create or renew call failed."""
        return self._create.failures > 0 or self._renew.failures > 0

    def due(self, now: float, *, wanted: bool, leading: bool) -> float:
        """When the keeper next has something to do (a creation, a renewal, the lease's end)."""
        if self.id is None:
            return self.retry_at if wanted else math.inf
        due = self.next_renew
        if leading:
            due = min(due, self.lease.deadline)
        return due

    # -- doing ----------------------------------------------------------------------------------

    def tend(self, now: float, *, wanted: bool) -> list[SessionEvent]:
        """Create the session if wanted and due, end the lease if it ran out, renew if due."""
        if self.id is None:
            if wanted and now >= self.retry_at:
                return self._create_session()
            return []
        events: list[SessionEvent] = []
        if now >= self.lease.deadline and self.lease.deadline > _NEVER:
            events.append(
                LeaseExpired(
                    f"no renewal reached Consul within the {self.spec.lease:g}s lease (ttl {self.spec.ttl:g}s "
                    f"minus margin {self.spec.margin:g}s)"
                )
            )
            self.lease = Lease(_NEVER)  # ran out: a later renewal starts a new one
        if now >= self.next_renew:
            events += self.renew()
        return events

    def renew_if_due(self) -> list[SessionEvent]:
        """Renew now if a renewal is due (between acquisition attempts against a slow agent)."""
        if self.id is not None and self._clock() >= self.next_renew:
            return self.renew()
        return []

    def _create_session(self) -> list[SessionEvent]:
        sent = self._clock()
        try:
            session_id = self.backend.create_session(
                name=self.name, ttl=self.spec.ttl, lock_delay=self.spec.lock_delay or 0.0
            )
        except BackendError as exc:
            self.stats.count_error("create_session", exc)
            self.error = exc
            self.retry_at = self._clock() + self._create.next()
            return [SessionUnavailable(exc)]
        if self._create.failures:
            _log.info(
                "%s: session created again after %d failed attempts", self.backend.description, self._create.failures
            )
            self._rlog.reset("session")
        self._create.reset()
        self.error = None
        self.id = session_id
        self.renewed_at = sent
        self.lease = Lease(sent + self.spec.lease)
        self.next_renew = sent + self.spec.renew_interval
        return [SessionReady(session_id)]

    def renew(self) -> list[SessionEvent]:
        assert self.id is not None
        sent = self._clock()
        try:
            self.backend.renew_session(self.id)
        except SessionInvalidated as exc:
            self.stats.count_error("renew", exc)
            return [self.forget(f"session invalidated: {exc}")]
        except BackendError as exc:
            self.stats.count_error("renew", exc)
            now = self._clock()
            self.error = exc
            self.next_renew = now + self._renew.next()
            remaining = self.lease.deadline - now
            self._rlog.log(
                logging.WARNING,
                "renew",
                "session renewal failed (%s); %s",
                exc,
                f"leadership ends in {remaining:.1f}s unless a renewal lands" if remaining > 0 else "retrying",
            )
            return []
        now = self._clock()
        self.stats.renewals.observe(max(0.0, now - sent))
        if self._renew.failures:
            _log.info("session %s renewed again after %d failed attempts", self.id, self._renew.failures)
            self._rlog.reset("renew")
        self._renew.reset()
        self.error = None
        self.renewed_at = sent
        self.next_renew = sent + self.spec.renew_interval
        if now >= self.lease.deadline:
            # The lease ran out before this renewal was answered: the old terms are over for good (the
            # elector ends them on LeaseExpired); a new lease starts from this renewal.
            expired = self.lease.deadline > _NEVER
            self.lease = Lease(sent + self.spec.lease)
            events: list[SessionEvent] = []
            if expired:
                events.append(LeaseExpired("the local lease ran out before a renewal was answered"))
            return [*events, SessionReady(self.id)]
        self.lease.deadline = sent + self.spec.lease
        return []

    def forget(self, reason: str) -> SessionLost:
        """The session is gone (Consul said so): drop it and create a new one at once."""
        _log.warning("%s; creating a new session", reason)
        self.id = None
        self.lease = Lease(_NEVER)
        self.next_renew = _NEVER
        self.retry_at = self._clock()
        return SessionLost(reason)

    def destroy(self) -> None:
        """Destroy the session (at shutdown, after the keys were released).

        :raises BackendError: as :meth:`Backend.destroy_session`.
        """
        session, self.id = self.id, None
        self.lease = Lease(_NEVER)
        if session is not None:
            self.backend.destroy_session(session)
