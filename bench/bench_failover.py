"""Crash failover: SIGKILL of the holder until a follower in another process holds the lock.

    python bench/bench_failover.py [--trials 3] [--ttl 10] [--lock-delay 1]

Nothing releases the key of a killed process: Consul must first invalidate its session (no earlier
than TTL after the last renewal, and up to 2 x TTL later), then the key's lock-delay must pass. The
goal is a takeover within 2 x TTL + lock_delay + 0.5 s of the kill, whatever the moment of the kill.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

from _common import dev_agent, machine

import singleton
from singleton import leader_only

KEY = "bench/failover"


def player(address: str, ttl: float, lock_delay: float) -> None:
    singleton.configure(address=address, ttl=ttl, lock_delay=lock_delay)

    @leader_only(key=KEY)
    def lead() -> None:
        pass

    lead.election.start().add_listener(
        lambda e: print(json.dumps({"event": "leader" if e.is_leader else "follower", "t": time.time()}), flush=True)
    )
    while True:
        time.sleep(1)


def trial(address: str, ttl: float, lock_delay: float, kill_after: float) -> float:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--player",
                "--address",
                address,
                "--ttl",
                str(ttl),
                "--lock-delay",
                str(lock_delay),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        first = _first_leader(procs, deadline=time.time() + 30)
        time.sleep(kill_after)  # kill at a different point of the renewal cycle each trial
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        (other,) = [p for p in procs if p is not first]
        assert other.stdout is not None
        for line in other.stdout:
            event = json.loads(line)
            if event["event"] == "leader":
                return float(event["t"]) - killed_at
        raise RuntimeError("the follower never took over")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _first_leader(procs: list[subprocess.Popen[str]], deadline: float) -> subprocess.Popen[str]:
    import selectors

    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    while time.time() < deadline:
        for key, _ in selector.select(timeout=0.5):
            ready: subprocess.Popen[str] = key.data
            assert ready.stdout is not None
            if json.loads(ready.stdout.readline())["event"] == "leader":
                selector.close()
                return ready
    raise RuntimeError("no leader")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=10)
    parser.add_argument("--lock-delay", type=float, default=1)
    parser.add_argument("--player", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.ttl, args.lock_delay)
        return
    bound = 2 * args.ttl + args.lock_delay + 0.5
    results = []
    with dev_agent() as agent:
        for i in range(args.trials):
            kill_after = 1.0 + i * args.ttl / 3 / max(1, args.trials)
            took = trial(agent.address, args.ttl, args.lock_delay, kill_after)
            results.append(took)
            print(f"trial {i + 1}: killed {kill_after:.1f}s after it led; a follower led {took:.2f}s after the kill")
    print(machine())
    print(
        f"crash failover, ttl {args.ttl:g}s, lock-delay {args.lock_delay:g}s ({len(results)} trials): "
        f"min {min(results):.2f}s, max {max(results):.2f}s; goal <= 2 x TTL + lock_delay + 0.5 = {bound:.1f}s: "
        + ("met" if max(results) <= bound else "MISSED")
    )


if __name__ == "__main__":
    main()
