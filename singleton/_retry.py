"""Retry policies: how long the engine waits before trying again, each policy with its own counter.

A policy is a small object (in the manner of tenacity's ``wait_*``): :meth:`Backoff.next` counts one
more failure and says how long to wait; :meth:`Backoff.reset` forgets the failures once the thing it
guards has succeeded. Each campaign and each session keeper owns its policies, so one key's failures
never lengthen another's waits, and a counter is reset only by the event that ends its reason to exist
(not by any successful call: the lock-delay re-check, for one, is reset by an acquisition or by a new
holder, not by the refused attempt that Consul answered).

Delays get +-20 % jitter, so that a fleet restarted at once does not retry in lock-step; tests pass a
random source whose ``random()`` is 0.5, which makes every delay exact.
"""

from __future__ import annotations

import random
from typing import Protocol

__all__ = [
    "ACCESS_DENIED",
    "ACQUIRE_ERROR",
    "LOCK_DELAY_RECHECK",
    "RACE",
    "RENEW",
    "SESSION_CREATE",
    "WATCH_ERROR",
    "WATCH_QUICK",
    "Backoff",
    "BackoffSpec",
]


class Random(Protocol):
    def random(self) -> float: ...


class BackoffSpec:
    """Exponential backoff: ``base * 2**(failures - 1)`` seconds, at most ``cap``, with jitter.

    ``why`` says, in one line, when the policy applies and why these numbers.
    """

    __slots__ = ("base", "cap", "jitter", "name", "why")

    def __init__(self, name: str, base: float, cap: float, why: str, *, jitter: float = 0.2) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"{name}: need 0 < base <= cap, got base={base}, cap={cap}")
        self.name = name
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.why = why

    def __repr__(self) -> str:
        return f"<BackoffSpec {self.name} {self.base:g}s..{self.cap:g}s>"

    def start(self, rng: Random | None = None, *, cap: float | None = None) -> Backoff:
        """A fresh counter of this policy (``cap`` lowers the cap, e.g. to a renewal interval)."""
        return Backoff(self, rng if rng is not None else random.Random(), cap=cap)


class Backoff:
    """One running counter of a :class:`BackoffSpec`."""

    __slots__ = ("_cap", "_rng", "failures", "spec")

    def __init__(self, spec: BackoffSpec, rng: Random, *, cap: float | None = None) -> None:
        self.spec = spec
        self._rng = rng
        self._cap = spec.cap if cap is None else max(spec.base, min(cap, spec.cap))
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Backoff {self.spec.name} failures={self.failures}>"

    def next(self) -> float:
        """Count one more failure; the seconds to wait before the next try."""
        self.failures += 1
        delay = min(self._cap, self.spec.base * 2.0 ** min(self.failures - 1, 30))
        jitter = self.spec.jitter
        return delay * (1.0 - jitter + 2.0 * jitter * self._rng.random())

    def reset(self) -> None:
        self.failures = 0


#: Creating a session failed (Consul unreachable, no cluster leader): retry soon, and never more than 5 s
#: apart, so a process notices a returning agent within 5 s without hammering a down one.
SESSION_CREATE = BackoffSpec("session-create", 0.5, 5.0, "no session: retry within 5 s of Consul coming back")
#: A renewal failed while the lease runs: short retries, several of which fit in the margin; the cap is
#: lowered to the renewal interval by the session keeper.
RENEW = BackoffSpec("renew", 0.25, 2.0, "a renewal failed: several more attempts must fit in the lease")
#: An acquisition attempt failed with a Consul error (not a refusal): as for sessions.
ACQUIRE_ERROR = BackoffSpec("acquire-error", 0.5, 5.0, "an attempt failed: retry within 5 s of Consul coming back")
#: An ACL denied the attempt: nothing changes until an operator edits the policy; once a minute notices it.
ACCESS_DENIED = BackoffSpec("access-denied", 0.5, 60.0, "an ACL denied the call: an operator must act first")
#: A free key was refused although, by our reckoning, its lock-delay has ended (a clock or a delay we do
#: not know of): look again soon, a little later each time, never more than a second apart.
LOCK_DELAY_RECHECK = BackoffSpec("lock-delay-recheck", 0.05, 1.0, "Consul still refuses a free key")
#: A free key was refused by a backend without lock-delays: another process won a race, or a dying
#: holder's lock is not gone yet; look again very soon.
RACE = BackoffSpec("race", 0.01, 0.5, "a free key was refused without lock-delays: a race")
#: A blocking query failed: as for sessions.
WATCH_ERROR = BackoffSpec("watch-error", 0.5, 5.0, "a watch failed: retry within 5 s of Consul coming back")
#: A blocking query answered at once with nothing new (an index that went backwards, a server that does
#: not block): never more than a few queries a second.
WATCH_QUICK = BackoffSpec("watch-quick", 0.05, 1.0, "a watch answered at once with nothing new: do not spin")
