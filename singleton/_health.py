"""The health check: one call for an application's readiness or liveness endpoint.

As client-go's leader-election healthz adaptor does, it fails when the process can no longer keep the
leadership it has, and says why: the election thread is dead or stuck, or a session that holds keys has
not been renewed on time (Consul unreachable, its agent paused or partitioned away). A follower, a process
that has not campaigned yet, or one that holds nothing while Consul is down is healthy: restarting it
would not help. It reads what the election thread keeps, on any thread, without a network call.

The rules, in order (every one that fails adds its reason):

1. The elector is closed (shut down): unhealthy.
2. The election thread was started and has ended: unhealthy.
3. The election thread has not finished a step for longer than the wait it chose, plus three HTTP
   timeouts and a second: stuck (a call that does not return, a listener that blocks).
4. Each session that holds a key, by the latest news, had a successful renewal sent within its renewal
   interval (``ttl / 3``) plus ``tolerance`` (default: half the interval): late otherwise. With the
   defaults (ttl 15 s) that is 7.5 s, ahead of the 12 s lease, so a probe sees trouble before the
   stop tokens fire; it stays unhealthy until a renewal lands or Consul says the session is gone. In
   fast-failover mode (``check_ttl``) the feeds of the session's health check are held to the same
   rule, with the feed interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from singleton.errors import ConfigurationError

if TYPE_CHECKING:
    from singleton.election import Elector

__all__ = ["Health", "check"]


@dataclass(frozen=True)
class Health:
    """What a health check found. True when healthy; ``reasons`` say why not, one line each."""

    ok: bool
    reasons: tuple[str, ...] = ()
    #: The keys (full keys) this process leads now.
    leading: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return "ok" if self.ok else "; ".join(self.reasons)


def check(elector: Elector, tolerance: float | None = None) -> Health:
    """The rules of the module docstring, for ``elector``."""
    if tolerance is not None and (
        isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0
    ):
        raise ConfigurationError(f"tolerance must be a number of seconds >= 0 (or None), got {tolerance!r}")
    reasons: list[str] = []
    campaigns = [election._campaign for election in elector.elections]
    leading = tuple(c.full_key for c in campaigns if c.leading)
    # 1. Closed.
    if elector.closed:
        return Health(False, ("the elector is closed (singleton was shut down)",), leading)
    # 2, 3. The election thread: alive, and back from its steps on time.
    thread = elector._thread
    if thread is not None:
        if not thread.is_alive():
            reasons.append("the election thread has ended")
        elif elector._beat is not None:
            late = time.monotonic() - (elector._beat + elector._beat_wait)
            allowed = 3 * elector.settings.consul.timeout + 1.0
            if late > allowed:
                reasons.append(f"the election thread has not come back from a step for {late:.1f}s")
    # 4. Renewals of every session that holds a key.
    now = elector._clock()
    keepers = {id(c.keeper): c.keeper for c in campaigns}
    for keeper in keepers.values():
        session = keeper.id
        held = [c.key for c in campaigns if c.keeper is keeper and session is not None and c.held_by == session]
        if not held:
            continue
        shown = ", ".join(repr(k) for k in held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        proofs = [(f"renewal of session {session}", keeper.renewed_at, keeper.spec.renew_interval)]
        if keeper.fast and keeper.spec.check_interval is not None:
            proofs.append((f"feed of the health check {keeper.check_id}", keeper.fed_at, keeper.spec.check_interval))
        for what, at, interval in proofs:
            since = now - at
            if since > interval + (interval / 2 if tolerance is None else tolerance):
                reasons.append(
                    f"no {what} has succeeded for {since:.1f}s (one every {interval:.1f}s expected); it holds {shown}"
                )
    return Health(not reasons, tuple(reasons), leading)
