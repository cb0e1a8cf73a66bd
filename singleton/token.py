"""StopToken: tells a running job that its process no longer holds the key, or soon may not.

A token belongs to one *term*: one uninterrupted tenure of one key by this process. It fires once and
stays fired. It fires when

* the session is invalidated (a renewal answered 404, an operator destroyed it),
* the key is lost (its Session is no longer ours, or the key was deleted),
* the local lease ends: no renewal succeeded within ``ttl - margin`` seconds of when the last
  successful one was *sent* (Consul cannot invalidate the session before ``ttl`` after it received
  that renewal, so the token fires at least ``margin`` seconds before another node could take the
  lock, and a further ``lock_delay`` seconds before when the key was held at invalidation),
* the process shuts down or resigns the key,
* an operator paused the key or asked this process to step down (``singleton pause``, ``step-down``).

The lease is checked on every read of :attr:`StopToken.stopped` and bounds every wait, so the token is
right on time even if the election thread is busy or blocked on the network.

Inside a leader-only call the token is passed as ``stop_token=`` (when the function declares that
parameter) and is always reachable as :func:`current_token`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from singleton.errors import LeadershipLost

__all__ = ["Lease", "StopCause", "StopToken", "current_token"]

_log = logging.getLogger("singleton.token")

_CURRENT: contextvars.ContextVar[StopToken] = contextvars.ContextVar("singleton_stop_token")


def current_token() -> StopToken:
    """The stop token of the leader-only call running in this thread or task.

    :raises LookupError: outside a leader-only call (as ``ContextVar.get()`` does).
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError("current_token() was called outside a leader-only call") from None


class StopCause(str, enum.Enum):
    """Why a token fired, for code that must act on it (the command line's kill deadline, for one).

    What each tells about when another process could take the key:
    """

    #: No renewal reached Consul within the local lease: Consul cannot expire the session before
    #: ``margin`` seconds later, and the key then stays locked for ``lock_delay`` more.
    LEASE_EXPIRED = "lease_expired"
    #: The key's Session was cleared by Consul (the session was invalidated, or an operator released
    #: the key): after an invalidation nobody may take it for ``lock_delay`` from about now.
    KEY_RELEASED = "key_released"
    #: A renewal or an acquisition found the session gone; when it went is unknown.
    SESSION_GONE = "session_gone"
    #: The key was deleted: anyone may hold it already.
    KEY_DELETED = "key_deleted"
    #: Another session holds the key already.
    KEY_TAKEN = "key_taken"
    #: This process resigned the key.
    RESIGNED = "resigned"
    #: This process is shutting down (the key is released after running bodies end).
    SHUTDOWN = "shutdown"
    #: An operator paused the key (``singleton pause``): this process keeps the key while running
    #: bodies end, and nobody else can take it meanwhile.
    PAUSED = "paused"
    #: An operator asked this process to step down (``singleton step-down``): the key is released once
    #: running bodies end (they get ``shutdown_grace``; the key stays held for as long as one runs).
    STEPPED_DOWN = "stepped_down"
    #: A forked child's copy of its parent's token.
    FORKED = "forked"

    @property
    def by_operator(self) -> bool:
        """A pause or a step-down: not a lost lock; this process holds the key while its bodies end."""
        return self is StopCause.PAUSED or self is StopCause.STEPPED_DOWN


class Lease:
    """When this process's proof of holding a session's keys runs out, on the elector's monotonic clock.

    The election thread moves ``deadline`` forward after each successful renewal. A lease that ran out is
    never extended again: a new one replaces it.
    """

    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Lease(deadline={self.deadline:.3f})"


class StopToken:
    """Fires once when this term of leadership ends or is about to; see the module docstring.

    ``key`` is the key as the user named it; ``fence`` the key's ModifyIndex read right after the
    acquisition: it grows with every new holder, so a downstream store can refuse writes that carry a
    fence lower than one it has already seen.
    """

    __slots__ = (
        "_callbacks",
        "_cause",
        "_clock",
        "_event",
        "_fired_deadline",
        "_lease",
        "_lock",
        "_reason",
        "_stopped",
        "fence",
        "key",
        "since",
    )

    def __init__(
        self,
        key: str,
        fence: int = 0,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.monotonic,
        since: float | None = None,
    ) -> None:
        self.key = key
        self.fence = fence
        #: Wall-clock time (epoch seconds) when this term began.
        self.since = time.time() if since is None else since
        self._lease = lease
        self._clock = clock
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._reason: str | None = None
        self._cause: StopCause | None = None
        self._fired_deadline: float | None = None
        self._callbacks: list[Callable[[StopToken], object]] = []

    def __repr__(self) -> str:
        state = f"stopped: {self._reason}" if self.stopped else "running"
        return f"<StopToken key={self.key!r} fence={self.fence} {state}>"

    # -- reading --------------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once leadership is lost or about to be. Never goes back to False."""
        if self._stopped:
            return True
        lease = self._lease
        if lease is not None and self._clock() >= lease.deadline:
            self.fire("the local lease ran out: no renewal reached Consul in time", StopCause.LEASE_EXPIRED)
            return True
        return False

    @property
    def reason(self) -> str | None:
        """Why the token fired, or None while it has not."""
        self.stopped  # noqa: B018 - a read applies the lease
        return self._reason

    @property
    def cause(self) -> StopCause | None:
        """Why the token fired, as a :class:`StopCause`, or None while it has not."""
        self.stopped  # noqa: B018 - a read applies the lease
        return self._cause

    @property
    def lease_deadline(self) -> float | None:
        """When the local lease ends if no renewal lands, on the elector's monotonic clock (None without one).

        Once the token has fired, the deadline as it stood then: the last successful renewal was sent
        ``lease`` seconds before it, which bounds when Consul can have ended the session.
        """
        if self._stopped:
            return self._fired_deadline
        lease = self._lease
        return None if lease is None else lease.deadline

    def remaining(self) -> float | None:
        """Seconds until the local lease ends if no renewal lands (0 once stopped; None without a lease)."""
        if self.stopped:
            return 0.0
        lease = self._lease
        return None if lease is None else max(0.0, lease.deadline - self._clock())

    def raise_if_stopped(self) -> None:
        """:raises LeadershipLost: when the token has fired."""
        if self.stopped:
            raise LeadershipLost(self.key, self._reason or "stopped")

    # -- waiting --------------------------------------------------------------------------------

    def _slice(self, end: float | None) -> float | None:
        """How long the next wait may block: up to ``end`` (monotonic) and never past the lease."""
        limit = None if end is None else end - time.monotonic()
        remaining = self.remaining()
        if remaining is not None:
            limit = remaining if limit is None else min(limit, remaining)
        return limit

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking as soon as the token fires. Returns :attr:`stopped`.

        ``while not token.wait(5): do_a_bit()`` is an interruptible periodic loop.
        """
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self.stopped:
            limit = self._slice(end)
            if limit is not None and limit <= 0:
                break
            # Wake at the lease deadline too: it may have moved on (renewed) or run out.
            self._event.wait(None if limit is None else max(limit, 0.001))
        return self.stopped

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` for coroutines: never blocks the event loop."""
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()

        def wake(_token: StopToken) -> None:
            loop.call_soon_threadsafe(fired.set)

        self.add_callback(wake)
        try:
            end = None if timeout is None else time.monotonic() + max(0.0, timeout)
            while not self.stopped:
                limit = self._slice(end)
                if limit is not None and limit <= 0:
                    break
                try:
                    await asyncio.wait_for(fired.wait(), None if limit is None else max(limit, 0.001))
                except asyncio.TimeoutError:
                    pass
        finally:
            self.remove_callback(wake)
        return self.stopped

    def __await__(self) -> Generator[Any, None, bool]:
        """``await token`` returns once the token has fired."""
        return self.wait_async().__await__()

    # -- firing ---------------------------------------------------------------------------------

    def add_callback(self, callback: Callable[[StopToken], object]) -> None:
        """Call ``callback(token)`` once when the token fires (at once if it already has).

        Callbacks run in the thread that fires the token (usually the election thread): keep them short.
        """
        with self._lock:
            if not self._stopped:
                self._callbacks.append(callback)
                return
        self._run(callback)

    def remove_callback(self, callback: Callable[[StopToken], object]) -> None:
        """Forget a callback added with :meth:`add_callback` (no error if it is not there)."""
        with self._lock:
            try:
                self._callbacks.remove(callback)
            except ValueError:
                pass

    def fire(self, reason: str, cause: StopCause | None = None) -> bool:
        """Fire the token (the election engine does this). Returns False if it had already fired."""
        with self._lock:
            if self._stopped:
                return False
            self._reason = reason
            self._cause = cause
            lease = self._lease
            self._fired_deadline = None if lease is None else lease.deadline
            self._stopped = True
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for callback in callbacks:
            self._run(callback)
        return True

    def _fire_in_forked_child(self, reason: str) -> None:
        """Fire without locks or callbacks: in a forked child, other threads' locks may be held forever."""
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._event.set()
        self._reason = reason
        self._cause = StopCause.FORKED
        self._stopped = True
        self._callbacks = []

    def _run(self, callback: Callable[[StopToken], object]) -> None:
        try:
            callback(self)
        except Exception:
            _log.exception("stop-token callback %r failed", callback)

    @contextlib.contextmanager
    def activate(self) -> Iterator[StopToken]:
        """Make this the :func:`current_token` of the code inside the ``with`` (integrations use it)."""
        previous = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(previous)
