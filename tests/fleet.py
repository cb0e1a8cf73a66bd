"""Start several worker processes (tests/worker.py) and read what they did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class Event:
    at: float
    pid: int
    kind: str
    detail: str

    @property
    def fields(self) -> list[str]:
        return self.detail.split(" ")


def read_events(path: Path, kind: str | None = None) -> list[Event]:
    """The events of a log of ``<wall time> <pid> <kind> <detail...>`` lines (none if it does not exist)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        at, pid, rest = line.split(" ", 2)
        event_kind, _, detail = rest.partition(" ")
        if kind is None or event_kind == kind:
            found.append(Event(float(at), int(pid), event_kind, detail))
    return found


class Fleet:
    """N copies of a worker application (``worker``, tests/worker.py by default), sharing one event log.

    Each line of the log is ``<wall time> <pid> <kind> <detail...>``.
    """

    def __init__(
        self,
        tmp: Path,
        addr: str | None,
        key: str,
        size: int = 3,
        extra: Sequence[str] = (),
        worker: Path = WORKER,
    ) -> None:
        """``addr`` is the Consul agent's host:port; None when ``extra`` names another ``--backend``."""
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
                        [
                            sys.executable,
                            str(worker),
                            *(["--addr", addr] if addr else []),
                            "--key",
                            key,
                            "--log",
                            str(self.log),
                            *extra,
                        ],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )

    def events(self, kind: str | None = None) -> list[Event]:
        return read_events(self.log, kind)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds it took until ``predicate()``; fails with the workers' output after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.report()}")

    def leaders(self, since: float = 0.0) -> set[int]:
        return {e.pid for e in self.events("start") if e.at >= since}

    def proc(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.procs if p.pid == pid)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def signal(self, pid: int, signum: int) -> float:
        """Send ``signum``; returns the wall-clock time it was sent."""
        at = time.time()
        os.kill(pid, signum)
        return at

    def report(self) -> str:
        parts = [f"--- events\n{self.log.read_text()[-3000:]}"]
        for out in self.outputs:
            parts.append(f"--- {out.name}\n{out.read_text(errors='replace')[-2000:]}")
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


def assert_no_overlap(events: list[Event]) -> None:
    """No two processes ever ran the body at the same time: every start follows the previous end."""
    running: dict[int, float] = {}
    for event in sorted(events, key=lambda e: e.at):
        if event.kind == "start":
            others = {pid: at for pid, at in running.items() if pid != event.pid}
            assert not others, f"{event.pid} started at {event.at:.3f} while {others} was running"
            running[event.pid] = event.at
        elif event.kind == "end":
            running.pop(event.pid, None)
