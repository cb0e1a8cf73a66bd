"""What the engine counts for its metrics (``singleton.contrib.prometheus`` reads it): no dependency, no I/O.

Per key, the campaign keeps plain counters where their events happen: terms won and ended (by cause) in
``Campaign._to``, calls run on the call path and skipped off it. Per elector, an :class:`EngineStats`
keeps Consul errors by operation and kind, and the latency of successful session renewals. Counters
only grow; a reader takes them as they are (a scrape is a snapshot, not a transaction).
"""

from __future__ import annotations

import threading
from collections import Counter

from singleton.errors import AccessDenied, BackendUnavailable, CheckNotFound, SessionInvalidated

__all__ = ["RENEWAL_BUCKETS", "EngineStats", "Histogram", "error_kind"]

#: Upper bounds (seconds) of the renewal latency buckets: a loopback agent answers in about a
#: millisecond, a remote one in tens; the HTTP timeout (5 s by default) ends the slowest.
RENEWAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def error_kind(exc: BaseException) -> str:
    """``unavailable``, ``denied``, ``session_gone``, ``check_gone`` or ``other``: a Consul error's label."""
    if isinstance(exc, SessionInvalidated):
        return "session_gone"
    if isinstance(exc, CheckNotFound):
        return "check_gone"
    if isinstance(exc, AccessDenied):
        return "denied"
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    return "other"


class Histogram:
    """Observations in fixed buckets, one writer (the election thread); read at any time."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = RENEWAL_BUCKETS) -> None:
        self.bounds = bounds
        #: Observations per bucket (not cumulative); the last one is above every bound.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                index = i
                break
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, the last bound being infinity."""
        total = 0
        rows = []
        for bound, count in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            total += count
            rows.append((bound, total))
        return rows


class EngineStats:
    """One elector's counts: Consul errors by (operation, kind), and successful renewals' latency."""

    __slots__ = ("_errors", "_lock", "renewals")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the watch threads count their errors too
        self._errors: Counter[tuple[str, str]] = Counter()
        self.renewals = Histogram()

    def count_error(self, operation: str, exc: BaseException) -> None:
        with self._lock:
            self._errors[(operation, error_kind(exc))] += 1

    def errors(self) -> dict[tuple[str, str], int]:
        """``{(operation, kind): count}`` so far."""
        with self._lock:
            return dict(self._errors)
