"""Step-down: from ``singleton step-down``'s request to another process leading, beside a plain resign.

    python bench/bench_step_down.py [--trials 40]

Two processes campaign for one key. Trials alternate between the two ways of moving leadership off the
holder: a step-down request written to Consul (``<key>#step-down``, as the command line writes it: the
holder hears of it through its watch, fires its token, deletes the request, releases) and a resign
asked of the holder through a pipe (it releases at once). Each is measured from just before the request
(the write, or the pipe) to the leadership listener firing in the other process, on one wall clock.
The difference is the price of going through Consul: the record's write and the holder's wake-up.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from typing import IO

from _common import dev_agent, machine, percentiles

from singleton import Elector, LeaseSpec, Settings
from singleton._controls import request_step_down
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings

KEY = "bench/step-down"


def player(address: str, name: str) -> None:
    settings = Settings(consul=ConsulSettings.from_env(address=address), lease=LeaseSpec(ttl=15), identity=name)
    elector = Elector(settings)
    election = elector.register(KEY)
    lock = threading.Lock()

    def out(event: str) -> None:
        with lock:
            sys.stdout.write(json.dumps({"player": name, "event": event, "t": time.time()}) + "\n")
            sys.stdout.flush()

    election.add_listener(lambda e: out("acquired") if e.is_leader else None)
    out("ready")
    for line in sys.stdin:
        if line.strip() == "resign" and election.is_leader:
            election.resign()
            time.sleep(0.3)
            election.campaign()
        elif line.strip() == "quit":
            break
    elector.close(grace=0)


def _lines(stream: IO[str], into: queue.Queue[dict[str, object]]) -> None:
    for line in stream:
        if line.startswith("{"):
            into.put(json.loads(line))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--player", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.player:
        player(args.address, args.player)
        return
    with dev_agent() as agent:
        events: queue.Queue[dict[str, object]] = queue.Queue()
        procs = {
            name: subprocess.Popen(
                [sys.executable, __file__, "--player", name, "--address", agent.address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name in ("ping", "pong")
        }
        for proc in procs.values():
            assert proc.stdout is not None
            threading.Thread(target=_lines, args=(proc.stdout, events), daemon=True).start()
        backend = ConsulBackend(agent.settings())
        results: dict[str, list[float]] = {"step-down": [], "resign": []}
        try:
            seen = 0
            while seen < 2:  # both ready, and one leads
                if events.get(timeout=30)["event"] in ("ready", "acquired"):
                    seen += 1
            time.sleep(0.5)
            for trial in range(args.trials):
                _, entry = backend.read(KEY)
                assert entry is not None
                assert entry.session is not None
                assert entry.holder is not None
                holder = entry.holder
                while not events.empty():
                    events.get_nowait()
                way = "step-down" if trial % 2 == 0 else "resign"
                started = time.time()
                if way == "step-down":
                    request_step_down(backend, KEY, entry, seconds=0.3, by="bench")
                else:
                    stdin = procs[holder].stdin
                    assert stdin is not None
                    stdin.write("resign\n")
                    stdin.flush()
                while True:
                    event = events.get(timeout=30)
                    if event["event"] == "acquired" and event["player"] != holder:
                        results[way].append(float(event["t"]) - started)  # type: ignore[arg-type]
                        break
                time.sleep(0.6)  # the one that let go is back in the campaign
        finally:
            for proc in procs.values():
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
                proc.wait(30)
            backend.close()
    print(machine())
    for way, values in results.items():
        print(f"{way:9} -> the other process leads ({len(values)} trials): {percentiles(values)}")


if __name__ == "__main__":
    main()
