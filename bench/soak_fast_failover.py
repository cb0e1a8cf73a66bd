"""False failovers in fast mode: leadership changes while nothing fails but the machine is busy.

    python bench/soak_fast_failover.py [--seconds 600] [--check-ttl 3]

Two processes campaign for one key in fast-failover mode. The leader's body is CPU-bound pure Python
(it holds the GIL but for Python's switch interval), called back to back from the main thread, and one
CPU hog per core spins outside them, so both cores stay busy for the whole run. Nothing fails, so any
change of leadership is a false failover: the leader's election thread fed its health check too late
(its local lease, 3/4 of check_ttl, ran out) or Consul saw the check go critical. Goal: none.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import subprocess
import sys
import time

from _common import dev_agent, machine

import singleton
from singleton import LeaseSpec, leader_only

KEY = "bench/soak"
TTL = 10.0


def player(address: str, check_ttl: float) -> None:
    spec = LeaseSpec(ttl=TTL, check_ttl=check_ttl)
    singleton.configure(address=address, ttl=TTL, check_ttl=check_ttl, lock_delay=spec.min_lock_delay)

    def out(**fields: object) -> None:
        print(json.dumps({"t": time.time(), "pid": os.getpid(), **fields}), flush=True)

    @leader_only(key=KEY)
    def busy() -> int:
        total, end = 0, time.monotonic() + 0.5
        while time.monotonic() < end:  # pure Python: the GIL is held but for the switch interval
            for i in range(10_000):
                total += i * i
        return total

    election = busy.election.start()
    election.add_listener(
        lambda e: out(event="leader") if e.is_leader else out(event="follower", reason=e.status().reason)
    )
    while True:
        if busy() is None:
            time.sleep(0.05)


def hog() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--check-ttl", type=float, default=3.0)
    parser.add_argument("--player", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.check_ttl)
        return
    events: list[dict[str, object]] = []
    with dev_agent() as agent:
        players = [
            subprocess.Popen(
                [sys.executable, __file__, "--player", "--address", agent.address, "--check-ttl", str(args.check_ttl)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(os.cpu_count() or 2)]
        for process in hogs:
            process.start()
        selector = selectors.DefaultSelector()
        for proc in players:
            assert proc.stdout is not None
            selector.register(proc.stdout, selectors.EVENT_READ)
        end = time.time() + args.seconds
        try:
            while time.time() < end:
                for key, _ in selector.select(timeout=1.0):
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if line:
                        events.append(json.loads(line))
        finally:
            for process in hogs:
                process.terminate()
            for proc in players:
                proc.kill()
                proc.wait()
    gains = [e for e in events if e["event"] == "leader"]
    losses = [e for e in events if e["event"] == "follower" and e.get("reason")]
    print(machine())
    print(
        f"fast mode, check_ttl {args.check_ttl:g} s, {args.seconds:g} s with both cores busy (a CPU-bound body in "
        f"the leader, {len(hogs)} CPU hogs outside): {max(0, len(gains) - 1)} leadership changes "
        f"(goal 0); losses: {[e['reason'] for e in losses] or 'none'}"
    )


if __name__ == "__main__":
    main()
