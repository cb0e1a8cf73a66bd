"""The demo: three copies of an application, one leader, a crash and a graceful handoff, on a real Consul.

    make demo            (or: python examples/demo.py, with a consul binary on PATH or in CONSUL_BIN)

It starts a local Consul dev agent on free ports, launches three worker processes that each run

* ``tick()``: a decorated periodic job, called every half second by every worker, and
* ``long_job(stop_token)``: a long job that works until its stop token fires,

both under ``@leader_only(key=...)``, so only the holder of that key runs them. It shows live which
process leads, kills the leader with SIGKILL (a crash), later stops the next leader with SIGTERM (a
graceful stop: it releases the key, and a follower takes over at once), prints the failover times it
saw, checks from the workers' events that every job ran on the leader of the moment, and cleans up.

It plays this twice: in the default mode (a crashed holder's session must expire in Consul first,
then its lock-delay pass: Consul bounds that by 2 x TTL + lock-delay), then with fast failover
(``check_ttl=2``: the session is linked to a health check the holder feeds; Consul ends it 2 s after the
crash, then the 2 s lock-delay). About a minute in all, most of it the first crash failover.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TTL = 10
#: Fast failover's health-check TTL in the second act.
CHECK_TTL = 2.0


# -- the worker: an ordinary application with two leader-only jobs -----------------------------------


def lease(check_ttl: float | None) -> tuple[float, float]:
    """(lock-delay, crash failover bound) of a mode: the smallest safe lock-delay for it."""
    from singleton import LeaseSpec

    spec = LeaseSpec(ttl=TTL, check_ttl=check_ttl)
    lock_delay = spec.min_lock_delay
    bound = (check_ttl + lock_delay + 0.5) if check_ttl else (2 * TTL + lock_delay + 0.5)
    return lock_delay, bound


def worker(address: str, name: str, key: str, check_ttl: float | None) -> int:
    import singleton
    from singleton import StopToken, leader_only

    lock_delay, _ = lease(check_ttl)
    singleton.configure(address=address, ttl=TTL, lock_delay=lock_delay, check_ttl=check_ttl, timeout=2)

    lock = threading.Lock()

    def emit(event: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "worker": name, "pid": os.getpid(), "key": key, "event": event, **fields})
        with lock:  # two threads emit: one whole line at a time
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    @leader_only(key=key)
    def tick(n: int) -> None:
        emit("tick", n=n)

    @leader_only(key=key)
    def long_job(stop_token: StopToken | None = None) -> None:
        assert stop_token is not None
        emit("long-start", fence=stop_token.fence)
        step = 0
        while not stop_token.wait(1.0):  # an interruptible sleep: wakes the moment leadership ends
            step += 1
            emit("long-progress", step=step)
        emit("long-stopped", reason=stop_token.reason)

    def on_change(election: singleton.Election) -> None:
        token = election.token
        if token is not None:
            emit("leader", fence=token.fence)
        else:
            emit("follower", reason=election.status().reason)

    election = tick.election.start()
    election.add_listener(on_change)
    election.wait_settled(10)
    if not election.is_leader:
        emit("follower", reason=election.status().reason)

    def run_long_job() -> None:
        while True:
            long_job()  # returns at once on a follower
            time.sleep(0.2)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    threading.Thread(target=run_long_job, daemon=True, name="long-job").start()
    emit("up")
    n = 0
    try:
        while True:
            n += 1
            tick(n)
            time.sleep(0.5)
    finally:
        singleton.shutdown(grace=3)  # also done at exit; here to report it
        emit("exit")


# -- the conductor -----------------------------------------------------------------------------------


class Demo:
    def __init__(self) -> None:
        self.started = time.time()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.leader: str | None = None
        self.log: list[dict[str, Any]] = []
        self.leader_since: dict[str, float] = {}

    def say(self, text: str, at: float | None = None) -> None:
        print(f"[{(at or time.time()) - self.started:6.2f}s] {text}", flush=True)

    def spawn(self, name: str, address: str, key: str, check_ttl: float | None) -> None:
        fast = ["--check-ttl", str(check_ttl)] if check_ttl else []
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--address", address, "--key", key, *fast],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs[name] = proc
        threading.Thread(target=self._read, args=(name, proc), daemon=True).start()

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"t": time.time(), "worker": name, "event": "output", "line": line.rstrip()})

    def pump(
        self,
        seconds: float,
        until: str | None = None,
        exclude: str | None = None,
        heartbeat: Any = None,
    ) -> dict[str, Any] | None:
        """Show events for ``seconds``; stop early at the first ``until`` event from a worker other than ``exclude``."""
        end = time.time() + seconds
        beat = time.time() + 3
        while time.time() < end:
            if heartbeat is not None and time.time() >= beat:
                heartbeat()
                beat = time.time() + 3
            try:
                event = self.events.get(timeout=min(0.5, max(0.01, end - time.time())))
            except queue.Empty:
                continue
            self.show(event)
            if until and event["event"] == until and event["worker"] != exclude:
                return event
        return None

    def show(self, e: dict[str, Any]) -> None:
        self.log.append(e)
        who = f"{e['worker']} (pid {e.get('pid', '?')})"
        kind = e["event"]
        if kind == "leader":
            self.leader = e["worker"]
            self.say(f"{who} is now the LEADER (fence {e['fence']})", e["t"])
        elif kind == "follower":
            self.say(f"{who} is a follower: {e.get('reason')}", e["t"])
        elif kind == "tick":
            if e["n"] % 4 == 0:
                self.say(f"{who} tick {e['n']}  (only the leader ticks)", e["t"])
        elif kind == "long-start":
            self.say(f"{who} long job started", e["t"])
        elif kind == "long-progress":
            if e["step"] % 3 == 0:
                self.say(f"{who} long job, step {e['step']}", e["t"])
        elif kind == "long-stopped":
            self.say(f"{who} long job saw its stop token: {e['reason']}", e["t"])
        elif kind == "up":
            self.say(f"{who} up", e["t"])
        elif kind == "exit":
            self.say(f"{who} exited after releasing its key", e["t"])
        elif kind == "output":
            self.say(f"{e['worker']}: {e['line']}", e["t"])

    def verify(self) -> bool:
        """Check from the events that the jobs only ever ran on the leader of the moment."""
        leader: dict[str, int | None] = {}  # key -> pid of its leader of the moment
        fences: dict[str, list[int]] = {}
        runs = 0
        for e in sorted((e for e in self.log if "key" in e), key=lambda e: e["t"]):
            key, pid = e["key"], e["pid"]
            if e["event"] == "leader":
                leader[key] = pid
                fences.setdefault(key, []).append(e["fence"])
            elif e["event"] in ("follower", "exit") and leader.get(key) == pid:
                leader[key] = None
            elif e["event"] in ("tick", "long-start", "long-progress"):
                runs += 1
                if leader.get(key) != pid:
                    self.say(f"VIOLATION: {e['worker']} ran {e['event']} of {key} while it was not the leader")
                    return False
        grew = all(b > a for seen in fences.values() for a, b in itertools.pairwise(seen))
        self.say(f"checked {runs} job runs: every one on the leader of the moment; fences {fences}")
        if not grew:
            self.say("VIOLATION: a fence did not grow with a new leader")
        return grew

    def current_leader(self) -> str:
        """The worker the events last named leader (pump() keeps it up to date)."""
        assert self.leader is not None
        return self.leader

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def act(demo: Demo, agent: Any, key: str, check_ttl: float | None) -> tuple[float, float] | None:
    """Three workers on ``key``; SIGKILL the leader, then SIGTERM the next: (crash failover, handoff)."""
    from singleton.backends.consul import ConsulBackend

    lock_delay, bound = lease(check_ttl)
    mode = f"fast failover, check_ttl {check_ttl:g}s" if check_ttl else "default mode"
    demo.say(f"=== {mode}: TTL {TTL}s, lock-delay {lock_delay:g}s, key {key}")
    demo.procs.clear()
    demo.leader = None
    for name in ("A", "B", "C"):
        demo.spawn(name, agent.address, key, check_ttl)
    if demo.pump(20, until="leader") is None:
        demo.say("no leader within 20 s: something is wrong")
        return None
    demo.pump(3)
    backend = ConsulBackend(agent.settings())
    _, entry = backend.read(key)
    demo.say(f"consul kv get {key}  ->  {entry.holder if entry else None}   (the holder, as hostname:pid)")

    first = demo.current_leader()
    killed_at = time.time()
    if check_ttl:
        demo.say(f">>> SIGKILL to {first}, the leader: its health check stops being fed, Consul ends its session")
    else:
        demo.say(f">>> SIGKILL to {first}, the leader: a crash, its session must expire in Consul first")
    demo.procs[first].kill()

    def still_held() -> None:
        _, entry = backend.read(key)
        if entry is not None and entry.session:
            demo.say(f"    {key} is still held by {entry.holder}'s session: Consul has not ended it yet")
        else:
            demo.say(f"    {key} is free but inside its lock-delay ({lock_delay:g}s): nobody may take it yet")

    second_event = demo.pump(bound + 15, until="leader", exclude=first, heartbeat=still_held)
    if second_event is None:
        demo.say("no takeover after the crash: something is wrong")
        return None
    crash_failover = second_event["t"] - killed_at
    demo.say(f"crash failover took {crash_failover:.1f}s (bound {bound:.1f}s)")
    demo.pump(3)

    second = demo.current_leader()
    stopped_at = time.time()
    demo.say(f">>> SIGTERM to {second}, the leader: a graceful stop releases the key before it goes")
    demo.procs[second].send_signal(signal.SIGTERM)
    third_event = demo.pump(10, until="leader", exclude=second)
    if third_event is None:
        demo.say("no takeover after the graceful stop: something is wrong")
        return None
    graceful = third_event["t"] - stopped_at
    demo.pump(2)
    demo.stop_all()
    return crash_failover, graceful


def conduct() -> int:
    from singleton.testing import ConsulAgent, ConsulNotFound, find_consul

    try:
        binary = find_consul()
    except ConsulNotFound as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    demo = Demo()
    with tempfile.TemporaryDirectory(prefix="singleton-demo-") as tmp:
        agent = ConsulAgent(binary, workdir=Path(tmp) / "consul")
        try:
            agent.start()
            version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.splitlines()[0]
            demo.say(f"Consul dev agent up at {agent.address} ({version})")
            results = []
            for key, check_ttl in (("demo/default", None), ("demo/fast", CHECK_TTL)):
                outcome = act(demo, agent, key, check_ttl)
                if outcome is None:
                    return 1
                results.append((check_ttl, *outcome))
            demo.say("--- summary")
            for check_ttl, crash, graceful in results:
                mode = f"fast failover (check_ttl {check_ttl:g}s)" if check_ttl else "default mode"
                _, bound = lease(check_ttl)
                demo.say(
                    f"{mode:30} crash failover (SIGKILL) {crash:5.1f} s (bound {bound:.1f} s); "
                    f"graceful handoff (SIGTERM) {graceful * 1000:6.1f} ms"
                )
            return 0 if demo.verify() else 1
        finally:
            demo.stop_all()
            agent.stop()
            demo.say("cleaned up: workers stopped, agent stopped, temporary files removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--check-ttl", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.address, args.worker, args.key, args.check_ttl)
    return conduct()


if __name__ == "__main__":
    sys.exit(main())
