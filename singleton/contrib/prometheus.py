"""Prometheus metrics of the election engine: ``pip install 'consul-singleton[prometheus]'``.

Nothing is registered on import. :func:`register` adds one collector that reads the engine's state at each
scrape: no work between scrapes, and nothing more on the call path than the count of calls run::

    from prometheus_client import start_http_server
    from singleton.contrib.prometheus import register

    register()              # on prometheus_client's default registry; register(registry) for another
    start_http_server(9100)

The collector covers every elector of the process (the process-wide one and any of your own), or those
``SingletonCollector(electors=...)`` returns. Per key (label ``key``: the full key, as Consul has it):

================================================  =======  ==========================================
``singleton_leader``                              gauge    1 while this process leads the key
``singleton_paused``                              gauge    1 while an operator's pause is in force
``singleton_phase{phase}``                        gauge    1 for the campaign's phase (``watching``, ...)
``singleton_lease_remaining_seconds``             gauge    local lease left if no renewal lands (0: not
                                                           leading)
``singleton_terms_won_total``                     counter  terms this process began
``singleton_terms_ended_total{cause}``            counter  terms ended, by the stop token's cause
``singleton_calls_total{outcome}``                counter  ``@leader_only`` calls that ran their body
                                                           (``run``, with integrations' bodies) or not
                                                           (``skipped``)
================================================  =======  ==========================================

Per process: ``singleton_session_renewal_seconds`` (histogram: successful renewals' round trip),
``singleton_consul_errors_total{operation,kind}`` (``operation``: create_session, renew, feed_check,
acquire, release, watch, control; ``kind``: unavailable, denied, session_gone, check_gone, other) and ``singleton_healthy``
(1 while :func:`singleton.health` would say ok). With several electors of one process on one key their
counts add up.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:
    raise ImportError(
        "singleton.contrib.prometheus needs prometheus_client: pip install 'consul-singleton[prometheus]'"
    ) from exc

from singleton import election as _election
from singleton._phase import Phase
from singleton._stats import RENEWAL_BUCKETS
from singleton.election import Elector

__all__ = ["SingletonCollector", "register"]

_registered: weakref.WeakKeyDictionary[CollectorRegistry, SingletonCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _live_electors() -> list[Elector]:
    """Every elector of this process that is not closed (a forked child's inherited ones excluded)."""
    return [e for e in list(_election._live) if not e.closed and e.pid == os.getpid()]


def _label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


class SingletonCollector:
    """A prometheus_client collector of the metrics in the module docstring.

    ``electors`` returns the electors to read at each scrape (default: every live one of the process).
    """

    def __init__(self, electors: Callable[[], Iterable[Elector]] | None = None) -> None:
        self._electors = electors if electors is not None else _live_electors

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples: what the registry checks names against."""
        yield from _Families()

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        per_key: dict[str, dict[str, float]] = {}
        phases: Counter[tuple[str, str]] = Counter()
        ended: Counter[tuple[str, str]] = Counter()
        errors: Counter[tuple[str, str]] = Counter()
        buckets = [0] * (len(RENEWAL_BUCKETS) + 1)
        renewal_sum = 0.0
        healthy = True
        for elector in self._electors():
            healthy = healthy and elector.health().ok
            errors.update(elector.stats.errors())
            histogram = elector.stats.renewals
            for i, (_, count) in enumerate(histogram.cumulative()):
                buckets[i] += count
            renewal_sum += histogram.sum
            now = elector._clock()
            for election in elector.elections:
                c = election._campaign
                row = per_key.setdefault(
                    c.full_key, {"leader": 0, "paused": 0, "lease": 0.0, "won": 0, "run": 0, "skipped": 0}
                )
                token = c.token
                leading = token is not None and not token.stopped
                row["leader"] = max(row["leader"], 1 if leading else 0)
                row["paused"] = max(row["paused"], 1 if c.controls.paused(now) else 0)
                if leading and token is not None:
                    row["lease"] = max(row["lease"], token.remaining() or 0.0)
                row["won"] += c.terms_won
                row["run"] += c.runs
                row["skipped"] += c.skipped
                phases[(c.full_key, c.phase.value)] += 1
                for cause, count in list(c.terms_ended.items()):
                    ended[(c.full_key, cause)] += count
        for key, row in sorted(per_key.items()):
            families.leader.add_metric([key], row["leader"])
            families.paused.add_metric([key], row["paused"])
            families.lease.add_metric([key], row["lease"])
            families.won.add_metric([key], row["won"])
            families.calls.add_metric([key, "run"], row["run"])
            families.calls.add_metric([key, "skipped"], row["skipped"])
            for phase in Phase:
                families.phase.add_metric([key, phase.value], phases[(key, phase.value)])
        for (key, cause), count in sorted(ended.items()):
            families.ended.add_metric([key, cause], count)
        for (operation, kind), count in sorted(errors.items()):
            families.errors.add_metric([operation, kind], count)
        families.renewals.add_metric(
            [],
            [(_label(bound), count) for bound, count in zip((*RENEWAL_BUCKETS, float("inf")), buckets, strict=True)],
            renewal_sum,
        )
        families.healthy.add_metric([], 1 if healthy else 0)
        yield from families


class _Families:
    """One scrape's metric families (names, help, labels: the Grafana-facing contract)."""

    def __init__(self) -> None:
        self.leader = GaugeMetricFamily("singleton_leader", "1 while this process leads the key", labels=["key"])
        self.paused = GaugeMetricFamily(
            "singleton_paused", "1 while an operator's pause of the key is in force", labels=["key"]
        )
        self.phase = GaugeMetricFamily(
            "singleton_phase", "1 for the phase the key's campaign is in", labels=["key", "phase"]
        )
        self.lease = GaugeMetricFamily(
            "singleton_lease_remaining_seconds",
            "seconds left on the local lease if no renewal lands (0 when not leading)",
            labels=["key"],
        )
        self.won = CounterMetricFamily("singleton_terms_won", "terms of leadership this process began", labels=["key"])
        self.ended = CounterMetricFamily(
            "singleton_terms_ended", "terms of leadership that ended, by cause", labels=["key", "cause"]
        )
        self.calls = CounterMetricFamily(
            "singleton_calls", "leader-only calls that ran their body or skipped it", labels=["key", "outcome"]
        )
        self.renewals = HistogramMetricFamily(
            "singleton_session_renewal_seconds", "round trip of successful session renewals", labels=[]
        )
        self.errors = CounterMetricFamily(
            "singleton_consul_errors", "failed calls to Consul, by operation and kind", labels=["operation", "kind"]
        )
        self.healthy = GaugeMetricFamily("singleton_healthy", "1 while singleton.health() is ok", labels=[])

    def __iter__(self) -> Iterator[Metric]:
        return iter(
            [
                self.leader,
                self.paused,
                self.phase,
                self.lease,
                self.won,
                self.ended,
                self.calls,
                self.renewals,
                self.errors,
                self.healthy,
            ]
        )


def register(registry: CollectorRegistry | None = None) -> SingletonCollector:
    """Register the collector on ``registry`` (prometheus_client's default one if None); once per registry."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = _registered[registry] = SingletonCollector()
            registry.register(collector)
        return collector
