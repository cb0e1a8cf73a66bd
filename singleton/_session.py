"""The session keeper: one Consul session for every key with the same lease settings.

It creates the session when a campaign of its group wants one, renews it, and keeps the *lease*: how
long this process may act on the session's locks without hearing from Consul again. It makes every
call itself and tells what happened as a :class:`SessionEvent`; it knows nothing of keys or campaigns
(the elector hands its events to them).

The lease, by the arithmetic of :class:`~singleton.config.LeaseSpec`:

* each successful renewal proves the session until ``lease`` seconds after it was *sent*; renewals come
  every ``ttl / 3``, and at least twice per lease;
* in fast-failover mode (``check_ttl``) the session is linked to a TTL check of this process, which the
  keeper feeds every ``check_ttl / 4``; each successful feed proves the check until ``3/4 x check_ttl``
  after it was sent, before it can go critical. The lease ends at the earlier of the two. A feed proves
  the check, not the session: the renewal's bound stays, and ``lease`` is then the short check lease, so
  a session that Consul ended at once (a deregistered node) still cannot outlive its lock-delay here.

Events, and what the elector does with them:

* :class:`LeaseExpired`: no renewal (or feed) landed within the lease: every term of the group ends.
* :class:`SessionLost`: Consul no longer knows the session (a renewal or an attempt answered 404), or the
  agent no longer holds the check: every term ends, and a new session (and check) is made at once.
* :class:`SessionUnavailable`: the session could not be created (Consul down, ACL): campaigns that had no
  outcome yet are told why.
* :class:`SessionReady`: a session was created, or the lease that had run out was renewed again (the
  session survived an outage): campaigns waiting for one may attempt now.

Shutdown: :meth:`SessionKeeper.destroy` destroys the session, then deregisters the check (deregistering
a linked check first would invalidate the session and start its lock-delay).
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from singleton import _retry
from singleton._log import RateLimitedLogger
from singleton._stats import EngineStats
from singleton.backends.base import Backend
from singleton.config import LeaseSpec
from singleton.errors import BackendError, CheckNotFound, SessionInvalidated
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
#: The service name fast failover registers its checks under (an ACL rule names it).
CHECK_SERVICE = "singleton"


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
    """The session (and, in fast mode, the health check) of one lease group.

    Only the election thread calls it; any thread may read it.
    """

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
        #: The last error of a create, renew or feed call; None once one succeeded.
        self.error: BackendError | None = None
        #: When the latest successful creation or renewal, and feed of the check, were sent (health).
        self.renewed_at = _NEVER
        self.fed_at = _NEVER
        self.stats = stats if stats is not None else EngineStats()
        self._renewed_until = _NEVER
        # -- fast failover ----------------------------------------------------------------------
        #: Whether the session is linked to a health check of this process (``check_ttl``).
        self.fast = spec.check_ttl is not None and backend.supports_checks
        tag = re.sub(r"[^A-Za-z0-9_.:-]", "-", name)[:200]
        self.service_id = f"{CHECK_SERVICE}-{tag}-{uuid.uuid4().hex[:8]}"
        self.check_id = f"{self.service_id}:ttl"
        self._registered = False
        self._fed_until = _NEVER
        self.next_feed = _NEVER
        self._feed = _retry.RENEW.start(rng, cap=spec.check_interval or spec.renew_interval)

    def __repr__(self) -> str:
        mode = f" check_ttl={self.spec.check_ttl:g}" if self.fast and self.spec.check_ttl else ""
        return f"<SessionKeeper ttl={self.spec.ttl:g}{mode} session={self.id}>"

    # -- reading --------------------------------------------------------------------------------

    def valid(self, now: float) -> bool:
        """Whether this process can prove, now, that its session holds what it acquired."""
        return self.id is not None and now < self.lease.deadline

    @property
    def troubled(self) -> bool:
        """The latest create, renew or feed call failed."""
        return self._create.failures > 0 or self._renew.failures > 0 or self._feed.failures > 0

    def due(self, now: float, *, wanted: bool, leading: bool) -> float:
        """When the keeper next has something to do (a creation, a renewal, a feed, the lease's end)."""
        if self.id is None:
            return self.retry_at if wanted else math.inf
        due = min(self.next_renew, self.next_feed) if self.fast else self.next_renew
        if leading:
            due = min(due, self.lease.deadline)
        return due

    # -- doing ----------------------------------------------------------------------------------

    def tend(self, now: float, *, wanted: bool) -> list[SessionEvent]:
        """Create the session if wanted and due, end the lease if it ran out, feed and renew if due."""
        if self.id is None:
            if wanted and now >= self.retry_at:
                return self._create_session()
            return []
        events: list[SessionEvent] = []
        if now >= self.lease.deadline and self.lease.deadline > _NEVER:
            what = "renewal or feed of the health check" if self.fast else "renewal"
            events.append(LeaseExpired(f"no {what} reached Consul within the {self.spec.lease:g}s local lease"))
            self.lease = Lease(_NEVER)  # ran out: a later renewal starts a new one
        return events + self.renew_if_due()

    def renew_if_due(self) -> list[SessionEvent]:
        """Feed the check and renew the session where due (also between attempts against a slow agent)."""
        events: list[SessionEvent] = []
        if self.fast and self.id is not None and self._clock() >= self.next_feed:
            events += self._pass()
        if self.id is not None and self._clock() >= self.next_renew:
            events += self.renew()
        return events

    def _create_session(self) -> list[SessionEvent]:
        try:
            checks = self._ready_check()
            sent = self._clock()
            session_id = self.backend.create_session(
                name=self.name, ttl=self.spec.ttl, lock_delay=self.spec.lock_delay or 0.0, checks=checks
            )
        except BackendError as exc:
            self.stats.count_error("create_session", exc)
            if isinstance(exc, CheckNotFound):
                self._registered = False  # register it again on the next try
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
        self._renewed_until = sent + self.spec.lease
        self.lease = Lease(self._deadline())
        self.next_renew = sent + self.spec.renew_interval
        return [SessionReady(session_id)]

    def _ready_check(self) -> list[str]:
        """Fast mode: a passing check to link the new session to (registered, or fed, now)."""
        if not self.fast:
            return []
        assert self.spec.check_ttl is not None
        assert self.spec.check_interval is not None
        sent = self._clock()
        if self._registered:
            self.backend.pass_check(self.check_id)
        else:
            self.backend.register_check(
                self.check_id, service_id=self.service_id, name=CHECK_SERVICE, ttl=self.spec.check_ttl
            )
            self._registered = True  # registered passing: its TTL runs from now
        self._fed(sent)
        return [self.check_id]

    def _fed(self, sent: float) -> None:
        assert self.spec.check_lease is not None
        assert self.spec.check_interval is not None
        self._fed_until = sent + self.spec.check_lease
        self.fed_at = sent
        self.next_feed = sent + self.spec.check_interval

    def _deadline(self) -> float:
        return min(self._renewed_until, self._fed_until) if self.fast else self._renewed_until

    def _extend(self) -> list[SessionEvent]:
        """After a successful renewal or feed: move the lease on, or start a new one if it ran out."""
        assert self.id is not None
        now = self._clock()
        deadline = self._deadline()
        if now < self.lease.deadline:
            self.lease.deadline = deadline
            return []
        # The lease ran out (before this answer came, or earlier): those terms are over for good; the
        # elector ends them on LeaseExpired. A new lease starts from this proof, once both proofs hold.
        events: list[SessionEvent] = []
        if self.lease.deadline > _NEVER:
            events.append(LeaseExpired("the local lease ran out before a renewal was answered"))
            self.lease = Lease(_NEVER)
        if deadline > now:
            self.lease = Lease(deadline)
            events.append(SessionReady(self.id))
        return events

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
        self.stats.renewals.observe(max(0.0, self._clock() - sent))
        if self._renew.failures:
            _log.info("session %s renewed again after %d failed attempts", self.id, self._renew.failures)
            self._rlog.reset("renew")
        self._renew.reset()
        self.error = None
        self.renewed_at = sent
        self.next_renew = sent + self.spec.renew_interval
        self._renewed_until = sent + self.spec.lease
        return self._extend()

    def _pass(self) -> list[SessionEvent]:
        """Feed the check (fast mode)."""
        sent = self._clock()
        try:
            self.backend.pass_check(self.check_id)
        except CheckNotFound as exc:
            self.stats.count_error("feed_check", exc)
            return [self._check_lost(exc)]
        except BackendError as exc:
            self.stats.count_error("feed_check", exc)
            now = self._clock()
            self.error = exc
            self.next_feed = now + self._feed.next()
            self._rlog.log(logging.WARNING, "feed", "feeding the health check failed (%s); retrying", exc)
            return []
        if self._feed.failures:
            _log.info("health check %s fed again after %d failed attempts", self.check_id, self._feed.failures)
            self._rlog.reset("feed")
        self._feed.reset()
        self._fed(sent)
        return self._extend()

    def _check_lost(self, exc: CheckNotFound) -> SessionLost:
        """The agent no longer holds our check: its session is ending (or must): end it, start over."""
        old, self._registered = self.id, False
        if old is not None:
            try:  # best effort: frees the keys at once (with the lock-delay) rather than after the TTL
                self.backend.destroy_session(old)
            except BackendError as error:
                _log.debug("could not destroy session %s after losing its check: %s", old, error)
        return self.forget(
            f"{exc}: the agent was restarted without it, or the address reaches another agent each time "
            "(point CONSUL_HTTP_ADDR at this host's own agent); its session ends with it"
        )

    def forget(self, reason: str) -> SessionLost:
        """The session is gone (Consul said so): drop it and create a new one at once."""
        _log.warning("%s; creating a new session", reason)
        self.id = None
        self.lease = Lease(_NEVER)
        self.next_renew = _NEVER
        self.next_feed = _NEVER
        self._renewed_until = self._fed_until = _NEVER
        self.retry_at = self._clock()
        return SessionLost(reason)

    def destroy(self) -> None:
        """At shutdown, after the keys were released: destroy the session, then deregister the check.

        :raises BackendError: as :meth:`Backend.destroy_session` (then the check stays, and Consul reaps
        it a minute after it goes critical).
        """
        session, self.id = self.id, None
        self.lease = Lease(_NEVER)
        if session is not None:
            self.backend.destroy_session(session)
        if self._registered:
            self._registered = False
            try:
                self.backend.deregister_check(self.service_id)
            except BackendError as exc:
                _log.warning("could not deregister the health check %s at shutdown: %s", self.check_id, exc)
