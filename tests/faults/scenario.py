"""The stage of a fault: three Consul servers, one client agent and one worker per simulated host,
and a fault proxy between each worker and its agent.

    host h1: worker (tests/faults/worker.py) -> FaultProxy -> client agent h1 --\\
    host h2: worker                          -> FaultProxy -> client agent h2 ---+-- servers s1 s2 s3
    host h3: worker                          -> FaultProxy -> client agent h3 --/

The driver logs what it does (``fault``, ``heal``, ``killed``, ``observed``...) as JSON lines on the same
monotonic clock as the workers, reads the workers' logs to find the holder, and hands every log to
:func:`tests.faults.checker.check` at the end. :meth:`Scenario.close` ends every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from singleton.config import LeaseSpec
from singleton.testing import ConsulAgent, ConsulCluster, FaultProxy

from .checker import Event, Run, Verdict, all_runs, build_terms, check, read_logs, settle_bound

WORKER = Path(__file__).with_name("worker.py")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Host:
    """One simulated host: its client agent, the proxy in front of it, and its worker."""

    name: str
    agent: ConsulAgent
    proxy: FaultProxy
    log: Path
    output: Path
    worker: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid


class Scenario:
    """One trial of one fault. Build it, :meth:`start`, inject the fault, :meth:`settle`, :meth:`finish`."""

    def __init__(
        self,
        root: Path,
        binary: str,
        *,
        hosts: int = 3,
        ttl: float = 10.0,
        lock_delay: float | None = None,
        margin: float | None = None,
        check_ttl: float | None = None,
        key: str = "faults/job",
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.spec = LeaseSpec(ttl=ttl, margin=margin, check_ttl=check_ttl)
        self.check_ttl = check_ttl
        self.ttl = ttl
        self.margin = self.spec.margin
        #: The smallest lock-delay the library accepts for this lease, unless the scenario is given one.
        self.lock_delay = self.spec.min_lock_delay if lock_delay is None else lock_delay
        self.key = key
        names = [f"h{i + 1}" for i in range(hosts)]
        self.cluster = ConsulCluster(binary, workdir=root / "consul", clients=names)
        self.hosts = [
            Host(
                name,
                self.cluster.client(name),
                FaultProxy(self.cluster.client(name).address, name=name),
                root / f"{name}.jsonl",
                root / f"{name}.out",
            )
            for name in names
        ]
        self.driver_log = root / "driver.jsonl"
        self._driver_fd = os.open(self.driver_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.verdict: Verdict | None = None

    # -- the driver's log ----------------------------------------------------------------------

    def mark(self, event: str, **fields: Any) -> float:
        """Log a driver event now; returns its monotonic time."""
        at = time.monotonic()
        record = {"t": at, "pid": os.getpid(), "ev": event, **fields}
        os.write(self._driver_fd, (json.dumps(record) + "\n").encode())
        return at

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, *, fault: str, trial: int = 1, leader_timeout: float = 30.0) -> Host:
        """Start the cluster, the proxies and the workers; wait until one leads for a moment. Returns it."""
        self.mark(
            "begin",
            fault=fault,
            trial=trial,
            ttl=self.ttl,
            lock_delay=self.lock_delay,
            margin=self.margin,
            check_ttl=self.check_ttl,
        )
        self.cluster.start()
        for host in self.hosts:
            host.proxy.start()
        for host in self.hosts:
            self.start_worker(host)
        self.wait_for(lambda: len(self.ongoing()) == 1, leader_timeout, "a first leader")
        time.sleep(1.0)  # a renewal or two into the term
        holder = self.holder()
        assert holder is not None, self.report("the first leader stepped down at once")
        return holder

    def start_worker(self, host: Host) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_"))}
        env["CONSUL_HTTP_ADDR"] = host.proxy.address
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(host.output, "ab") as sink:
            host.worker = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    "--name",
                    host.name,
                    "--key",
                    self.key,
                    "--log",
                    str(host.log),
                    "--ttl",
                    repr(self.ttl),
                    "--lock-delay",
                    repr(self.lock_delay),
                    "--margin",
                    repr(self.margin),
                    *(["--check-ttl", repr(self.check_ttl)] if self.check_ttl is not None else []),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def finish(self) -> Verdict:
        """End the observation, stop every worker (SIGTERM), and judge the logs."""
        self.mark("observed")
        self.stop_workers()
        self.verdict = check(self.events(), ttl=self.ttl, lock_delay=self.lock_delay)
        return self.verdict

    def stop_workers(self, timeout: float = 20.0) -> None:
        running = [h for h in self.hosts if h.worker is not None and h.worker.poll() is None]
        for host in running:
            assert host.worker is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.pid, signal.SIGCONT)
                host.worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            if host.worker is None:
                continue
            try:
                code = host.worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.pid, signal.SIGUSR1)  # its stacks, in its output, for the report
                time.sleep(0.2)
                host.worker.kill()
                code = host.worker.wait(5)
                self.mark("note", what=f"worker {host.name} did not stop within {timeout:g}s of SIGTERM")
            if host in running or code != 0:
                self.mark("exited", target=host.pid, code=code, host=host.name)

    def close(self, keep_data: bool = False) -> None:
        """Kill whatever still runs (workers, proxies, agents). Safe to call at any point, twice."""
        for host in self.hosts:
            if host.worker is not None and host.worker.poll() is None:
                host.worker.kill()
                host.worker.wait(5)
            host.proxy.close()
        self.cluster.kill()
        with contextlib.suppress(OSError):
            os.close(self._driver_fd)
        if not keep_data:  # the logs stay (agent.log, the workers'); the raft data need not
            for agent in [*self.cluster.servers, *self.cluster.clients]:
                shutil.rmtree(agent.data_dir, ignore_errors=True)

    def keep_logs(self, dest: Path) -> Path:
        """Copy every log of this trial (the workers', the driver's, every agent's) to ``dest``."""
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("data"))
        return dest

    # -- reading the workers' logs --------------------------------------------------------------

    def events(self) -> list[Event]:
        return read_logs([self.driver_log, *(h.log for h in self.hosts)])

    def runs(self) -> list[Run]:
        return all_runs(build_terms(self.events(), until=time.monotonic()))

    def ongoing(self) -> list[Run]:
        return [r for r in self.runs() if r.ongoing]

    def host_of(self, pid: int) -> Host:
        return next(h for h in self.hosts if h.worker is not None and h.worker.pid == pid)

    def holder(self) -> Host | None:
        """The host whose worker runs the body now (None if none does, or several)."""
        ongoing = self.ongoing()
        return self.host_of(ongoing[0].pid) if len(ongoing) == 1 else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(self.report(f"timed out after {timeout:g}s waiting for {what}"))

    def settle(self, *, stable: float = 3.0, at_least: float = 5.0) -> None:
        """Observe until one leader has led for ``stable`` s and ``at_least`` s have passed since the
        heal, or until the settle bound (plus ``stable``) has passed: the checker judges what was seen."""
        healed = max((e.t for e in self.events() if e.ev in ("heal", "fault")), default=time.monotonic())
        give_up = healed + settle_bound(self.ttl, self.lock_delay) + stable + 1.0
        while time.monotonic() < give_up:
            now = time.monotonic()
            ongoing = self.ongoing()
            if len(ongoing) == 1 and now - ongoing[0].start >= stable and now - healed >= at_least:
                return
            time.sleep(0.2)

    def sleep_past(self, since: float, seconds: float) -> None:
        """Sleep until ``seconds`` after ``since`` (monotonic)."""
        time.sleep(max(0.0, since + seconds - time.monotonic()))

    # -- faults ---------------------------------------------------------------------------------

    def kill_worker(self, host: Host) -> float:
        """SIGKILL a worker (a crash); its run ends now."""
        assert host.worker is not None
        at = self.mark("killed", target=host.pid, host=host.name)
        host.worker.kill()
        host.worker.wait(5)
        return at

    def signal_worker(self, host: Host, signum: signal.Signals) -> float:
        at = self.mark("note", what=f"{signum.name} to worker {host.name}")
        os.kill(host.pid, signum)
        return at

    def session_of_key(self) -> str | None:
        """The session holding the key, read from a server (as ``consul kv get -detailed`` would)."""
        server = next(s for s in self.cluster.servers if s.running)
        try:
            with urllib.request.urlopen(f"{server.url}/v1/kv/{self.key}", timeout=5) as response:
                entries = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return entries[0].get("Session") if entries else None

    def destroy_session(self, session: str) -> None:
        """``consul session destroy``, through a server: what Consul itself does when a TTL runs out."""
        server = next(s for s in self.cluster.servers if s.running)
        request = urllib.request.Request(f"{server.url}/v1/session/destroy/{session}", method="PUT")
        urllib.request.urlopen(request, timeout=5).close()

    # -- reporting ------------------------------------------------------------------------------

    def report(self, headline: str) -> str:
        """A failure's message: what the checker says (if it ran), the last lines of every log."""
        parts = [headline]
        if self.verdict is not None:
            parts += self.verdict.problems()
            parts.append(self.verdict.describe())
        parts.append(f"logs: {self.root}")
        for host in self.hosts:
            with contextlib.suppress(OSError):
                tail = host.output.read_text(errors="replace")[-1500:]
                if tail.strip():
                    parts.append(f"--- {host.name} output\n{tail}")
        return "\n".join(parts)
