"""Graceful handoff: from the holder letting go (resign, or exit) to a follower in another process holding the lock.

    python bench/bench_handoff.py [--trials 60]

Two processes play ping-pong with one key: the leader holds it for 100 ms, resigns (release first, no
lock-delay), and campaigns again; the follower's blocking query sees the release and acquires. A
handoff is measured from just before ``resign()`` in one process to the leadership listener firing
in the other (both read the same machine's wall clock). For reference, the same path with Consul
alone: a raw release, seen by a raw blocking query in another thread, followed by a raw acquire.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from _common import dev_agent, machine, percentiles

from singleton import Elector, LeaseSpec, Settings
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings

KEY = "bench/handoff"


def player(address: str, name: str, trials: int) -> None:
    settings = Settings(
        consul=ConsulSettings.from_env(address=address),
        lease=LeaseSpec(ttl=15),
        identity=name,
    )
    elector = Elector(settings)
    election = elector.register(KEY)
    lock = threading.Lock()

    def out(event: str, at: float) -> None:
        with lock:
            sys.stdout.write(json.dumps({"player": name, "event": event, "t": at}) + "\n")
            sys.stdout.flush()

    election.add_listener(lambda e: out("acquired", time.time()) if e.is_leader else None)
    held = 0
    while held < trials:
        if not election.wait_for_leadership(30):
            break
        held += 1
        time.sleep(0.1)
        out("release", time.time())
        election.resign()
        time.sleep(0.02)
        election.campaign()
    elector.close(grace=0)


def consul_alone(backend: ConsulBackend, trials: int) -> list[float]:
    """Release -> blocking query returns -> acquire, with nothing of the engine in between."""
    key = KEY + "-raw"
    holder = backend.create_session(name="raw-holder", ttl=30, lock_delay=0)
    waiter = backend.create_session(name="raw-waiter", ttl=30, lock_delay=0)
    watcher_backend = ConsulBackend(backend._settings)
    results: list[float] = []
    for _ in range(trials):
        assert backend.acquire(key, holder, b"holder").acquired
        index, _ = backend.read(key)
        done = threading.Event()

        def follow(start_index: int = index, done: threading.Event = done) -> None:
            watcher_backend.watch(key, start_index, 10)
            assert watcher_backend.acquire(key, waiter, b"waiter").acquired
            results.append(time.perf_counter())
            done.set()

        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.05)  # the blocking query is in place
        started = time.perf_counter()
        backend.release(key, holder)
        done.wait(10)
        thread.join()
        results[-1] -= started
        backend.release(key, waiter)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--player", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.player, args.trials)
        return
    with dev_agent() as agent:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--player",
                    name,
                    "--address",
                    agent.address,
                    "--trials",
                    str(args.trials // 2 + 1),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for name in ("ping", "pong")
        ]
        events: list[dict[str, object]] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            events += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        events.sort(key=lambda e: float(e["t"]))  # type: ignore[arg-type]
        handoffs: list[float] = []
        last_release: dict[str, object] | None = None
        for event in events:
            if event["event"] == "release":
                last_release = event
            elif (
                event["event"] == "acquired" and last_release is not None and event["player"] != last_release["player"]
            ):
                handoffs.append(float(event["t"]) - float(last_release["t"]))  # type: ignore[arg-type]
                last_release = None
        raw = consul_alone(ConsulBackend(agent.settings()), args.trials)
    print(machine())
    print(f"graceful handoff, resign -> other process leads ({len(handoffs)} trials): {percentiles(handoffs)}")
    print(f"Consul alone, release -> blocking query -> acquire ({len(raw)} trials): {percentiles(raw)}")


if __name__ == "__main__":
    main()
