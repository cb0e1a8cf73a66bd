"""The judge of a fault scenario: plain functions over the events the workers and the driver logged.

Input: the JSON lines of every worker's log (tests/faults/worker.py) and of the driver (the test that
injects the faults), all stamped with ``time.monotonic()``, one clock for every process of a Linux
machine. Output: a :class:`Verdict`, which fails on

1. **overlapping effective runs** of the key: two processes whose runs intersect. A run lasts from a
   body's start to the earliest of its end, the moment its token fired, the death of its process
   (a SIGKILL the driver logged), and the end of the observation;
2. **a late token**: a term's token firing after the first start of the next term of another process.
   The margin of a handover is that start minus the firing (negative: late); the smallest margin of
   a scenario is a published figure. A term whose process was killed has no token to judge: its
   handover is counted apart (``died``) and has no margin;
3. **fences that do not increase** from one term to the next (terms in order of their first start).
   Equal fences are allowed only between consecutive terms of one process: a holder whose session
   survived may take its own lock back;
4. **a fleet that does not settle**: at the end of the observation exactly one run is going on, and it
   began no later than ``settle_bound`` after the fault healed (``2 x ttl + lock_delay + slack``);
5. **any traceback** in any worker's log (also: a worker that exited with an error it was not killed by).

When a token fired: a token is stopped from the moment its local lease ran out, whoever notices it
later. The callback of a token whose lease ran out runs only when a thread next reads the token (a
process frozen by SIGSTOP runs it after SIGCONT), so the moment a token fired is taken as the earlier
of its callback's time and its lease deadline read in that callback. This is exact for lease expiry;
for the other causes it changes nothing unless the lease had run out before the callback (a frozen
process that hears of a taken key after it resumes), in which case the token was already stopped at
the lease deadline. The deadline only ever moves forward, so this never makes a token look earlier
than the moment it became stopped.

Also measured: the longest gap without a leader (no run going on) between the first start and the
end of the observation, and how long after the heal the final leader began.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Worker events (tests/faults/worker.py).
WORKER_EVENTS = {"ready", "start", "fired", "end", "log", "traceback", "exit"}
#: Driver events: ``fault`` (what was done), ``heal``, ``killed`` (``target``: the pid SIGKILLed),
#: ``exited`` (``target``, ``code``: how a worker ended at teardown), ``observed`` (the end of the observation).
DRIVER_EVENTS = {"begin", "fault", "heal", "killed", "exited", "observed", "note"}

#: Seconds added to 2 x ttl + lock_delay: time to notice, agents and servers to start, a round trip.
SETTLE_SLACK = 5.0


@dataclass(frozen=True)
class Event:
    t: float
    pid: int
    ev: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)


def parse_lines(lines: Iterable[str], source: str = "log") -> list[Event]:
    """Events from JSON lines (blank lines skipped; a torn last line of a killed process is ignored)."""
    found: list[Event] = []
    pending: list[str] = [line for line in lines if line.strip()]
    for number, line in enumerate(pending, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(pending):
                continue  # a process killed in the middle of a write
            raise ValueError(f"{source}:{number}: not a JSON line: {line[:200]!r}") from None
        data = {k: v for k, v in record.items() if k not in ("t", "pid", "ev")}
        found.append(Event(float(record["t"]), int(record["pid"]), str(record["ev"]), data))
    return found


def read_logs(paths: Iterable[Path]) -> list[Event]:
    """Every event of every log, in time order."""
    events: list[Event] = []
    for path in paths:
        if path.exists():
            events += parse_lines(path.read_text().splitlines(), str(path))
    return sorted(events, key=lambda e: e.t)


# -- runs and terms ---------------------------------------------------------------------------------


@dataclass
class Term:
    """One token of one process: its body runs, its firing, its fence."""

    pid: int
    term: int
    fence: int
    start: float
    #: When the token fired (see the module docstring), or None if it did not within the observation.
    fired: float | None = None
    cause: str | None = None
    reason: str | None = None
    #: When the driver SIGKILLed the process during this term, if it did.
    died: float | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"pid {self.pid} term {self.term} (fence {self.fence})"


@dataclass
class Run:
    pid: int
    term: int
    start: float
    #: The body's own end, if it was logged within the observation.
    body_end: float | None
    #: The effective end: the earliest of body end, token fired, death, end of observation.
    end: float
    #: Still going on at the end of the observation.
    ongoing: bool


def fired_at(event: Event) -> float:
    """The moment a token fired, from its ``fired`` event: the earlier of the callback and the lease deadline."""
    deadline = event.get("lease_deadline")
    if deadline is None:
        return event.t
    return min(event.t, float(deadline))


def observation_end(events: Sequence[Event]) -> float:
    """The driver's ``observed`` time, or the last event's."""
    for event in reversed(events):
        if event.ev == "observed":
            return event.t
    return max((e.t for e in events), default=0.0)


def build_terms(events: Sequence[Event], until: float | None = None) -> list[Term]:
    """The terms and runs in ``events`` (up to ``until``, default: the end of the observation), by start."""
    until = observation_end(events) if until is None else until
    deaths: dict[int, float] = {}
    for event in events:
        if event.ev == "killed" and event.t <= until:
            deaths.setdefault(int(event.get("target")), event.t)
    terms: dict[tuple[int, int], Term] = {}
    open_runs: dict[tuple[int, int], float] = {}
    ended: list[tuple[tuple[int, int], float, float | None]] = []
    for event in sorted(events, key=lambda e: e.t):
        if event.t > until or event.ev not in ("start", "fired", "end"):
            continue
        ident = (event.pid, int(event.get("term")))
        if event.ev == "start":
            term = terms.get(ident)
            if term is None:
                term = terms[ident] = Term(event.pid, ident[1], int(event.get("fence")), event.t)
            open_runs[ident] = event.t
        elif event.ev == "fired":
            term = terms.get(ident)
            if term is not None and term.fired is None:
                term.fired = fired_at(event)
                term.cause = event.get("cause")
                term.reason = event.get("reason")
        elif event.ev == "end" and ident in open_runs:
            ended.append((ident, open_runs.pop(ident), event.t))
    ended += [(ident, start, None) for ident, start in open_runs.items()]
    spans: dict[tuple[int, int], list[tuple[float, float | None]]] = {}
    for ident, start, body_end in sorted(ended, key=lambda item: item[1]):
        spans.setdefault(ident, []).append((start, body_end))
    for ident, term_spans in spans.items():
        term = terms[ident]
        died = deaths.get(term.pid)
        last_end = term_spans[-1][1]
        if (
            died is not None
            and died >= term.start
            and (term.fired is None or term.fired > died)
            and (last_end is None or last_end > died)
        ):
            term.died = died  # killed while this term was going on
        for start, body_end in term_spans:
            candidates = [c for c in (body_end, term.fired, term.died) if c is not None]
            end = min(candidates) if candidates else until
            term.runs.append(Run(term.pid, term.term, start, body_end, max(start, min(end, until)), not candidates))
    for term in terms.values():
        term.runs.sort(key=lambda r: r.start)
    return sorted(terms.values(), key=lambda t: t.start)


def all_runs(terms: Sequence[Term]) -> list[Run]:
    return sorted((run for term in terms for run in term.runs), key=lambda r: r.start)


# -- the rules --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    first: Run
    second: Run

    @property
    def seconds(self) -> float:
        return min(self.first.end, self.second.end) - max(self.first.start, self.second.start)

    def __str__(self) -> str:
        return (
            f"overlap of {self.seconds:.3f}s: pid {self.first.pid} ran {self.first.start:.3f}..{self.first.end:.3f}, "
            f"pid {self.second.pid} ran {self.second.start:.3f}..{self.second.end:.3f}"
        )


def overlaps(runs: Sequence[Run]) -> list[Overlap]:
    """Every pair of runs of different processes whose effective intervals intersect."""
    found = []
    ordered = sorted(runs, key=lambda r: r.start)
    for i, first in enumerate(ordered):
        for second in ordered[i + 1 :]:
            if second.start >= first.end:
                break
            if second.pid != first.pid:
                found.append(Overlap(first, second))
    return found


@dataclass(frozen=True)
class Handover:
    previous: Term
    next: Term
    #: next start - previous token fired; None when the previous process died (no token) .
    margin: float | None

    @property
    def late(self) -> bool:
        return self.margin is not None and self.margin < 0

    @property
    def died(self) -> bool:
        return self.margin is None

    def __str__(self) -> str:
        if self.margin is None:
            return f"{self.previous.name} died; {self.next.name} started {self.next.start - (self.previous.died or 0):.3f}s later"
        word = "LATE" if self.late else "before"
        fired = "never (within the observation)" if self.previous.fired is None else f"at {self.previous.fired:.3f}"
        return (
            f"token of {self.previous.name} fired {fired} ({self.previous.cause}: {self.previous.reason}); "
            f"{self.next.name} started at {self.next.start:.3f}: margin {self.margin:+.3f}s ({word})"
        )


def handovers(terms: Sequence[Term], until: float) -> list[Handover]:
    """For each term, the first later term of another process, and the margin between them."""
    ordered = sorted(terms, key=lambda t: t.start)
    found = []
    for i, previous in enumerate(ordered):
        following = next((t for t in ordered[i + 1 :] if t.pid != previous.pid and t.start > previous.start), None)
        if following is None:
            continue
        if previous.fired is not None and (previous.died is None or previous.fired <= previous.died):
            margin: float | None = following.start - previous.fired
        elif previous.died is not None:
            margin = None
        else:  # never fired, never died: it was still leading when the other started
            margin = following.start - until
        found.append(Handover(previous, following, margin))
    return found


def fence_problems(terms: Sequence[Term]) -> list[str]:
    """Consecutive terms whose fence does not increase (equal only within one process)."""
    problems = []
    ordered = sorted(terms, key=lambda t: t.start)
    for previous, current in itertools.pairwise(ordered):
        if current.pid == previous.pid:
            if current.fence < previous.fence:
                problems.append(f"fence went down within one process: {previous.name} then {current.name}")
        elif current.fence <= previous.fence:
            problems.append(f"fence did not increase from {previous.name} to {current.name}")
    return problems


def settle_bound(ttl: float, lock_delay: float, slack: float = SETTLE_SLACK) -> float:
    """Seconds after the heal by which the fleet must have its final leader."""
    return 2 * ttl + lock_delay + slack


@dataclass(frozen=True)
class Settlement:
    settled: bool
    #: Seconds from the heal to the start of the final leader's run (0 if it led through the fault).
    leader_after: float | None
    why: str


def settlement(runs: Sequence[Run], healed: float, until: float, bound: float) -> Settlement:
    """One run going on at the end of the observation, begun no later than ``healed + bound``."""
    ongoing = [r for r in runs if r.ongoing]
    if not ongoing:
        last = max((r.end for r in runs), default=None)
        since = "" if last is None else f" (the last run ended {until - last:.1f}s before the end)"
        return Settlement(
            False, None, f"no leader at the end of the observation, {until - healed:.1f}s after the heal{since}"
        )
    if len(ongoing) > 1:
        return Settlement(False, None, f"{len(ongoing)} leaders at the end: pids {[r.pid for r in ongoing]}")
    leader = ongoing[0]
    after = max(0.0, leader.start - healed)
    if leader.start > healed + bound:
        return Settlement(False, after, f"the final leader began {after:.1f}s after the heal, beyond {bound:g}s")
    return Settlement(True, after, f"pid {leader.pid} leads since {after:.1f}s after the heal")


def longest_gap(runs: Sequence[Run], until: float) -> tuple[float, float | None]:
    """The longest time without any run going on, from the first start to ``until``: (seconds, gap start)."""
    ordered = sorted(runs, key=lambda r: r.start)
    if not ordered:
        return math.inf, None
    best, best_at = 0.0, None
    covered = ordered[0].end
    for run in ordered[1:]:
        if run.start > covered and run.start - covered > best:
            best, best_at = run.start - covered, covered
        covered = max(covered, run.end)
    if until > covered and until - covered > best:
        best, best_at = until - covered, covered
    return best, best_at


def tracebacks(events: Sequence[Event]) -> list[str]:
    return [f"pid {e.pid} ({e.get('where')}):\n{e.get('text')}" for e in events if e.ev == "traceback"]


def bad_exits(events: Sequence[Event]) -> list[str]:
    """Workers that ended with a code other than 0 without the driver having killed them."""
    killed = {int(e.get("target")) for e in events if e.ev == "killed"}
    return [
        f"pid {e.get('target')} exited with {e.get('code')}"
        for e in events
        if e.ev == "exited" and e.get("code") != 0 and int(e.get("target")) not in killed
    ]


# -- the verdict ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    terms: list[Term]
    overlaps: list[Overlap]
    handovers: list[Handover]
    fence_problems: list[str]
    settlement: Settlement
    longest_gap: float
    tracebacks: list[str]
    bad_exits: list[str]
    healed: float
    until: float

    @property
    def late_tokens(self) -> list[Handover]:
        return [h for h in self.handovers if h.late]

    @property
    def min_margin(self) -> float | None:
        """The smallest token-before-takeover margin (None without a handover that had a token)."""
        margins = [h.margin for h in self.handovers if h.margin is not None]
        return min(margins) if margins else None

    def problems(self) -> list[str]:
        found = [str(o) for o in self.overlaps]
        found += [f"late token: {h}" for h in self.late_tokens]
        found += self.fence_problems
        if not self.settlement.settled:
            found.append(f"did not settle: {self.settlement.why}")
        found += [f"traceback in {t}" for t in self.tracebacks]
        found += self.bad_exits
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary(self) -> dict[str, Any]:
        """The figures of the report, as JSON-ready values."""
        return {
            "terms": len(self.terms),
            "overlaps": len(self.overlaps),
            "late_tokens": len(self.late_tokens),
            "min_margin": self.min_margin,
            "handovers": len(self.handovers),
            "handovers_after_death": sum(1 for h in self.handovers if h.died),
            "longest_gap": None if math.isinf(self.longest_gap) else self.longest_gap,
            "settled": self.settlement.settled,
            "leader_after_heal": self.settlement.leader_after,
            "fence_problems": len(self.fence_problems),
            "tracebacks": len(self.tracebacks),
            "bad_exits": len(self.bad_exits),
        }

    def describe(self) -> str:
        """Every term and handover in words, for a failing test's message."""
        lines = [f"healed at {self.healed:.3f}, observed until {self.until:.3f}; {self.settlement.why}"]
        lines += [
            f"  {t.name}: {t.start:.3f} -> fired {t.fired if t.fired is None else round(t.fired, 3)} "
            f"({t.cause}: {t.reason}){'' if t.died is None else f', killed at {t.died:.3f}'}"
            for t in self.terms
        ]
        lines += [f"  handover: {h}" for h in self.handovers]
        gap = "none" if math.isinf(self.longest_gap) else f"{self.longest_gap:.2f}s"
        lines.append(f"  longest gap without a leader: {gap}")
        return "\n".join(lines)


def check(events: Sequence[Event], *, ttl: float, lock_delay: float, slack: float = SETTLE_SLACK) -> Verdict:
    """Judge one scenario. The heal is the driver's last ``heal`` event (else its last ``fault``, else the start)."""
    events = sorted(events, key=lambda e: e.t)
    until = observation_end(events)
    heals = [e.t for e in events if e.ev == "heal" and e.t <= until]
    faults = [e.t for e in events if e.ev == "fault" and e.t <= until]
    healed = heals[-1] if heals else faults[-1] if faults else min((e.t for e in events), default=0.0)
    terms = build_terms(events, until)
    runs = all_runs(terms)
    gap, _ = longest_gap(runs, until)
    return Verdict(
        terms=terms,
        overlaps=overlaps(runs),
        handovers=handovers(terms, until),
        fence_problems=fence_problems(terms),
        settlement=settlement(runs, healed, until, settle_bound(ttl, lock_delay, slack)),
        longest_gap=gap,
        tracebacks=tracebacks(events),
        bad_exits=bad_exits(events),
        healed=healed,
        until=until,
    )
