"""What one process knows of one key's holders, for its campaign's judgements.

Who holds the key now (``holder``, ``holder_session``), the newest index seen, and, for the lock-delay
arithmetic, when the last holder let go and what lock-delay its session had (read from the session
while it held the key). Only the election thread writes it; any thread may read it.
"""

from __future__ import annotations

import logging

from singleton import _retry
from singleton.backends.base import Backend, KeyInfo
from singleton.errors import BackendError

__all__ = ["LOCK_DELAY_SLACK", "KeyView"]

_log = logging.getLogger("singleton.election")

#: After a lock-delay has surely ended by our clock, Consul's own clock may still need a moment.
LOCK_DELAY_SLACK = 0.05


class KeyView:
    """The holders of one key as this process saw them."""

    __slots__ = (
        "_backend",
        "_holder_lock_delay",
        "_lock_delay",
        "_race",
        "_recheck",
        "_released_at",
        "_released_lock_delay",
        "holder",
        "holder_session",
        "seen_index",
    )

    def __init__(self, backend: Backend, lock_delay: float, rng: _retry.Random) -> None:
        self._backend = backend
        #: Our own lock-delay: the guess when the last holder's is unknown.
        self._lock_delay = lock_delay
        self.seen_index = 0
        #: ``hostname:pid`` of the holder last seen (this process when leading), or None if free.
        self.holder: str | None = None
        self.holder_session: str | None = None
        self._holder_lock_delay: float | None = None
        self._released_at: float | None = None
        self._released_lock_delay: float | None = None
        # Counters that only a new holder (or our acquisition) resets: see singleton._retry.
        self._recheck = _retry.LOCK_DELAY_RECHECK.start(rng)
        self._race = _retry.RACE.start(rng)

    def observe(self, entry: KeyInfo | None, now: float, ours: str | None) -> None:
        """Record who holds the key, and when a holder let go (for the lock-delay arithmetic)."""
        session = entry.session if entry is not None else None
        if session != self.holder_session:
            if self.holder_session is not None and session is None:
                self._released_at = now
                self._released_lock_delay = self._holder_lock_delay
            self._holder_lock_delay = None
            if session is not None:
                self._recheck.reset()
                self._race.reset()
                if session != ours:
                    try:
                        info = self._backend.session_info(session)
                        self._holder_lock_delay = info.lock_delay if info is not None else None
                    except BackendError as exc:
                        _log.debug("could not read the holder's session %s: %s", session, exc)
            self.holder_session = session
        self.holder = entry.holder if entry is not None and session is not None else None

    def ours(self, entry: KeyInfo, identity: str, session: str) -> None:
        """Our acquisition: we hold it now."""
        self._recheck.reset()
        self._race.reset()
        self.seen_index = max(self.seen_index, entry.modify_index)
        self.holder, self.holder_session = identity, session

    def lock_delay_end(self, now: float) -> float:
        """When the lock-delay of the key's last holder has surely ended, by our clock."""
        delay = self._released_lock_delay
        if delay is None:
            delay = self._lock_delay
        seen = self._released_at
        end = (now if seen is None else seen) + delay + LOCK_DELAY_SLACK
        if end <= now:
            # By our reckoning it is over, yet Consul still refuses: a clock or a delay we do not know
            # (a replayed one). Look again soon, a little later each time, until a holder changes.
            end = now + self._recheck.next()
        return end

    def race_end(self, now: float) -> float:
        """A backend without lock-delays refused a free key (a race): when to look again."""
        return now + self._race.next()
