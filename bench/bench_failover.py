"""Crash failover: SIGKILL of the holder until a follower in another process holds the lock.

    python bench/bench_failover.py [--trials 5] [--modes fast2,fast3,default,consul-lock]

Measured in one run, on one agent, one mode after the other:

* ``fast2``, ``fast3``: fast failover, ``check_ttl`` 2 s and 3 s, ttl 10 s, each with the smallest
  lock-delay the library accepts for it (2 s and 2.75 s). Consul invalidates the session once the
  killed process's health check goes critical, ``check_ttl`` after its last feed; then the lock-delay
  runs. Goal: p50 <= check_ttl + lock_delay + 0.5 s, max <= that + 1 s.
* ``default``: ttl 10 s and its smallest lock-delay (8.5 s). Consul must first expire the session (no
  earlier than TTL after the last renewal, and up to 2 x TTL later); goal: <= 2 x TTL + lock_delay + 0.5.
* ``consul-lock``: ``consul lock`` itself, the path these compete with. Its session TTL (15 s) and
  lock-delay (15 s, Consul's default) cannot be set from its command line.

Each trial kills the holder at a different point of its renewal cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from _common import dev_agent, machine

import singleton
from singleton import LeaseSpec, leader_only
from singleton.testing import find_consul

KEY = "bench/failover"
TTL = 10.0


@dataclass(frozen=True)
class Mode:
    name: str
    check_ttl: float | None  # None: the default mode, or consul lock
    consul_lock: bool = False

    @property
    def spec(self) -> LeaseSpec:
        return LeaseSpec(ttl=TTL, check_ttl=self.check_ttl)

    @property
    def lock_delay(self) -> float:
        return 15.0 if self.consul_lock else self.spec.min_lock_delay

    def goal(self) -> tuple[float, float, str]:
        """(p50 goal, max goal, how it is worked out)."""
        if self.consul_lock:
            bound = 2 * 15 + 15 + 0.5
            return bound, bound, "2 x 15 s TTL + 15 s lock-delay + 0.5"
        if self.check_ttl is None:
            bound = 2 * TTL + self.lock_delay + 0.5
            return bound, bound, "2 x TTL + lock-delay + 0.5"
        p50 = self.check_ttl + self.lock_delay + 0.5
        return p50, p50 + 1, "check_ttl + lock-delay + 0.5 (max: + 1)"


MODES = {
    "fast2": Mode("fast, check_ttl 2 s", 2.0),
    "fast3": Mode("fast, check_ttl 3 s", 3.0),
    "default": Mode("default, ttl 10 s", None),
    "consul-lock": Mode("consul lock (ttl 15 s, lock-delay 15 s)", None, consul_lock=True),
}


def player(address: str, key: str, check_ttl: float | None) -> None:
    spec = LeaseSpec(ttl=TTL, check_ttl=check_ttl)
    singleton.configure(address=address, ttl=TTL, check_ttl=check_ttl, lock_delay=spec.min_lock_delay)

    @leader_only(key=key)
    def lead() -> None:
        pass

    lead.election.start().add_listener(
        lambda e: print(json.dumps({"event": "leader" if e.is_leader else "follower", "t": time.time()}), flush=True)
    )
    while True:
        time.sleep(1)


def _players(address: str, key: str, mode: Mode) -> list[subprocess.Popen[str]]:
    if mode.consul_lock:
        # The child says when it starts (it starts once its consul lock holds the lock), then waits.
        child = 'python3 -c "import json,time; print(json.dumps({\\"event\\": \\"leader\\", \\"t\\": time.time()}), flush=True); time.sleep(3600)"'
        command = [find_consul(), "lock", f"-http-addr={address}", key, child]
        return [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    extra = [] if mode.check_ttl is None else ["--check-ttl", str(mode.check_ttl)]
    command = [sys.executable, __file__, "--player", "--address", address, "--key", key, *extra]
    return [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]


def trial(address: str, key: str, mode: Mode, kill_after: float) -> float:
    """One trial on a key of its own (the killed holder's session lingers until Consul expires it)."""
    procs = _players(address, key, mode)
    try:
        first = _first_leader(procs, deadline=time.time() + 60)
        time.sleep(kill_after)  # kill at a different point of the renewal cycle each trial
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)  # the holder (consul lock itself, not its child)
        (other,) = [p for p in procs if p is not first]
        assert other.stdout is not None
        for line in other.stdout:
            event = json.loads(line)
            if event["event"] == "leader":
                return float(event["t"]) - killed_at
        raise RuntimeError("the follower never took over")
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and its children (consul lock's child)
            except ProcessLookupError:
                pass
            proc.wait()


def _first_leader(procs: list[subprocess.Popen[str]], deadline: float) -> subprocess.Popen[str]:
    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    try:
        while time.time() < deadline:
            for key, _ in selector.select(timeout=0.5):
                ready: subprocess.Popen[str] = key.data
                assert ready.stdout is not None
                if json.loads(ready.stdout.readline())["event"] == "leader":
                    return ready
    finally:
        selector.close()
    raise RuntimeError("no leader")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--player", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--check-ttl", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.key, args.check_ttl)
        return
    modes = [MODES[name] for name in args.modes.split(",")]
    summary = []
    with dev_agent() as agent:
        for n, (name, mode) in enumerate(zip(args.modes.split(","), modes, strict=True)):
            results = []
            cycle = mode.spec.renew_interval if not mode.consul_lock else 5.0
            for i in range(args.trials):
                kill_after = 1.0 + i * cycle / max(1, args.trials)
                took = trial(agent.address, f"{KEY}/{name}-{i}", mode, kill_after)
                results.append(took)
                print(
                    f"{mode.name}, trial {i + 1}: killed {kill_after:.2f}s after it led; taken over {took:.2f}s later"
                )
            p50_goal, max_goal, how = mode.goal()
            p50 = statistics.median(results)
            met = p50 <= p50_goal and max(results) <= max_goal
            summary.append(
                f"{mode.name}, lock-delay {mode.lock_delay:g} s: p50 {p50:.2f} s, min {min(results):.2f} s, "
                f"max {max(results):.2f} s over {len(results)} trials; goal {how} = p50 {p50_goal:.1f} / max "
                f"{max_goal:.1f} s: {'met' if met else 'MISSED'}"
            )
            if n < len(modes) - 1:
                time.sleep(1.0)
    print(machine())
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
