"""Start several scheduler processes (tests/apscheduler_worker.py) and read what they did."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .fleet import Event, Fleet

WORKER = Path(__file__).with_name("apscheduler_worker.py")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Run:
    """One scheduled time of one job, as reported by the scheduler that ran it."""

    at: float
    pid: int
    job: str
    scheduled: float


class SchedulerFleet(Fleet):
    """``size`` copies of the scheduler application (tests/apscheduler_worker.py), sharing one event log."""

    def __init__(self, tmp: Path, addr: str, key: str, extra: Sequence[str] = (), size: int = 3) -> None:
        super().__init__(tmp, addr, key, size=size, extra=extra, worker=WORKER)

    def runs(self, job: str | None = None) -> list[Run]:
        """Every ``executed`` event, in the order the runs were reported."""
        return [
            Run(e.at, e.pid, e.fields[0], float(e.fields[1]))
            for e in self.events("executed")
            if job is None or e.fields[0] == job
        ]

    def leads(self, since: float = 0.0) -> list[Event]:
        return [e for e in self.events("lead") if e.at >= since]

    def wait_for_lead(self, since: float, exclude: set[int], timeout: float) -> Event:
        """The first ``lead`` event after ``since`` by a process not in ``exclude``."""

        def found() -> bool:
            return any(e.pid not in exclude for e in self.leads(since))

        self.wait_for(found, timeout, f"a new leader (not {sorted(exclude)})")
        return next(e for e in self.leads(since) if e.pid not in exclude)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS
