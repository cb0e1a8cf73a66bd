"""Graceful handoff: from the holder letting go (resign, or exit) to a follower in another process holding the lock.

    python bench/bench_handoff.py [--trials 60]

Two processes play ping-pong with one key: the leader holds it for 100 ms, resigns (release first, no
lock-delay), and campaigns again; the follower's blocking query sees the release and acquires. A
handoff is measured from just before ``resign()`` in one process to the leadership listener firing
in the other (both read the same machine's wall clock). Then the same with the leader shutting its
elector down (``close()``: what a process does at exit or on SIGTERM; it then starts a new one). For reference, the same path with Consul
alone: a raw release, seen by a raw blocking query in another thread, followed by a raw acquire; the
same with the holder watching the key too (its blocking query returns on its own release and it sends
the next one at once, as the engine's watch must for a holder that campaigns again); and
``consul lock``'s handoff: from telling the holder's child to exit (``consul lock`` then releases) to
the waiting ``consul lock``'s child saying it started (each child is ``sh``, a millisecond or two of
fork and exec that the others do not pay).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import dev_agent, machine, percentiles

from singleton import Election, Elector, LeaseSpec, Settings
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings
from singleton.testing import find_consul

KEY = "bench/handoff"


def player(address: str, name: str, trials: int, *, shutdown: bool = False) -> None:
    """Lead, hold 100 ms, let go, ``trials`` times: by ``resign()`` (then campaign again), or with
    ``shutdown`` by closing the elector, as a process that exits does (then start a new one)."""
    settings = Settings(
        consul=ConsulSettings.from_env(address=address),
        lease=LeaseSpec(ttl=15),
        identity=name,
    )
    lock = threading.Lock()

    def out(event: str, at: float) -> None:
        with lock:
            sys.stdout.write(json.dumps({"player": name, "event": event, "t": at}) + "\n")
            sys.stdout.flush()

    def start() -> tuple[Elector, Election]:
        elector = Elector(settings)
        election = elector.register(KEY)
        election.add_listener(lambda e: out("acquired", time.time()) if e.is_leader else None)
        return elector, election

    elector, election = start()
    held = 0
    while held < trials:
        if not election.wait_for_leadership(30):
            break
        held += 1
        time.sleep(0.1)
        out("release", time.time())
        if shutdown:
            elector.close(grace=0)
            time.sleep(0.02)
            elector, election = start()
        else:
            election.resign()
            time.sleep(0.02)
            election.campaign()
    elector.close(grace=0)


def handoffs(address: str, trials: int, *, shutdown: bool = False) -> list[float]:
    """Two player processes; each handoff from one's "release" to the other's "acquired"."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--player", name, "--address", address, "--trials", str(trials // 2 + 1)]
            + (["--shutdown"] if shutdown else []),
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
    found: list[float] = []
    last_release: dict[str, object] | None = None
    for event in events:
        if event["event"] == "release":
            last_release = event
        elif event["event"] == "acquired" and last_release is not None and event["player"] != last_release["player"]:
            found.append(float(event["t"]) - float(last_release["t"]))  # type: ignore[arg-type]
            last_release = None
    return found


def consul_alone(backend: ConsulBackend, trials: int, *, holder_watches: bool = False) -> list[float]:
    """Release -> blocking query returns -> acquire, with nothing of the engine in between.

    With ``holder_watches``, the holder watches the key too and, when its blocking query returns, sends
    the next one at once, as a holder that will campaign again must (and as the engine's watch does).
    """
    key = KEY + "-raw"
    holder = backend.create_session(name="raw-holder", ttl=30, lock_delay=0)
    waiter = backend.create_session(name="raw-waiter", ttl=30, lock_delay=0)
    watcher_backend = ConsulBackend(backend._settings)
    holder_backend = ConsulBackend(backend._settings)
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

        def watch_as_holder(start_index: int = index, done: threading.Event = done) -> None:
            new_index, _ = holder_backend.watch(key, start_index, 10)
            holder_backend.watch(key, new_index, 0.2)  # the next query, at once; it returns on the acquire

        threads = [threading.Thread(target=follow)]
        if holder_watches:
            threads.append(threading.Thread(target=watch_as_holder))
        for thread in threads:
            thread.start()
        time.sleep(0.05)  # the blocking queries are in place
        started = time.perf_counter()
        backend.release(key, holder)
        done.wait(10)
        for thread in threads:
            thread.join()
        results[-1] -= started
        backend.release(key, waiter)
    return results


def consul_lock(address: str, trials: int) -> list[float]:
    """``consul lock``: the holder's child exits, the next ``consul lock``'s child starts."""
    results: list[float] = []
    with tempfile.TemporaryDirectory(prefix="singleton-bench-lock-") as tmp:

        def start(n: int) -> tuple[subprocess.Popen[str], Path]:
            fifo = Path(tmp) / f"exit-{n}"
            os.mkfifo(fifo)
            child = f"sh -c 'echo up; read x < {fifo}'"
            command = [find_consul(), "lock", f"-http-addr={address}", KEY + "-consul-lock", child]
            return subprocess.Popen(command, stdout=subprocess.PIPE, text=True), fifo

        def started(proc: subprocess.Popen[str], timeout: float) -> float:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if selector.select(timeout=0.5) and proc.stdout.readline().strip() == "up":
                        return time.perf_counter()
            raise RuntimeError("consul lock's child never started")

        holder, fifo = start(0)
        started(holder, 30)
        for n in range(1, trials + 1):
            waiter, next_fifo = start(n)
            time.sleep(1.0)  # its session, its first try and its blocking query are in place
            begun = time.perf_counter()
            with open(fifo, "w") as tell:  # the holder's child reads it and exits
                tell.write("exit\n")
            results.append(started(waiter, 30) - begun)
            holder.wait(30)
            holder, fifo = waiter, next_fifo
        with open(fifo, "w") as tell:
            tell.write("exit\n")
        holder.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--player", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--shutdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.player, args.trials, shutdown=args.shutdown)
        return
    with dev_agent() as agent:
        resigned = handoffs(agent.address, args.trials)
        closed = handoffs(agent.address, args.trials, shutdown=True)
        raw = consul_alone(ConsulBackend(agent.settings()), args.trials)
        raw_watched = consul_alone(ConsulBackend(agent.settings()), args.trials, holder_watches=True)
        lock_cli = consul_lock(agent.address, min(args.trials, 30))
    print(machine())
    print(f"graceful handoff, resign -> other process leads ({len(resigned)} trials): {percentiles(resigned)}")
    print(f"graceful handoff, shutdown (close) -> other process leads ({len(closed)} trials): {percentiles(closed)}")
    print(f"Consul alone, release -> blocking query -> acquire ({len(raw)} trials): {percentiles(raw)}")
    print(f"Consul alone, the holder watching too ({len(raw_watched)} trials): {percentiles(raw_watched)}")
    print(f"consul lock, child exits -> next child starts ({len(lock_cli)} trials): {percentiles(lock_cli)}")


if __name__ == "__main__":
    main()
