"""Start several scheduler processes (tests/apscheduler_worker.py) and read what they did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("apscheduler_worker.py")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Event:
    at: float
    pid: int
    kind: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One scheduled time of one job, as reported by the scheduler that ran it."""

    at: float
    pid: int
    job: str
    scheduled: float


class SchedulerFleet:
    """``size`` copies of the worker application, sharing one event log."""

    def __init__(self, tmp: Path, addr: str, key: str, extra: Sequence[str] = (), size: int = 3) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "events.log"
        self.log.touch()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []
        for i in range(size):
            out = tmp / f"worker-{i}.out"
            self.outputs.append(out)
            with open(out, "wb") as sink:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), "--addr", addr, "--key", key, "--log", str(self.log), *extra],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def events(self, kind: str | None = None) -> list[Event]:
        found = []
        for line in self.log.read_text().splitlines():
            at, pid, event_kind, *fields = line.split(" ")
            if kind is None or event_kind == kind:
                found.append(Event(float(at), int(pid), event_kind, tuple(fields)))
        return found

    def runs(self, job: str | None = None) -> list[Run]:
        """Every ``executed`` event, in the order the runs were reported."""
        return [
            Run(e.at, e.pid, e.fields[0], float(e.fields[1]))
            for e in self.events("executed")
            if job is None or e.fields[0] == job
        ]

    def leads(self, since: float = 0.0) -> list[Event]:
        return [e for e in self.events("lead") if e.at >= since]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds it took until ``predicate()``; fails with the workers' output after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.report()}")

    def wait_for_lead(self, since: float, exclude: set[int], timeout: float) -> Event:
        """The first ``lead`` event after ``since`` by a process not in ``exclude``."""

        def found() -> bool:
            return any(e.pid not in exclude for e in self.leads(since))

        self.wait_for(found, timeout, f"a new leader (not {sorted(exclude)})")
        return next(e for e in self.leads(since) if e.pid not in exclude)

    def proc(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.procs if p.pid == pid)

    def signal(self, pid: int, signum: int) -> float:
        """Send ``signum``; returns the wall-clock time it was sent."""
        at = time.time()
        os.kill(pid, signum)
        return at

    def report(self) -> str:
        parts = [f"--- events\n{self.log.read_text()[-4000:]}"]
        for out in self.outputs:
            parts.append(f"--- {out.name}\n{out.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS
