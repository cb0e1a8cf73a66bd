"""A BackgroundScheduler whose jobs run in one process of many: the holder of a Consul lock.

Run it against the local agent (``CONSUL_HTTP_ADDR``, default 127.0.0.1:8500; ``consul agent -dev``)::

    python examples/apscheduler_background.py

It starts three copies of the application (``--processes``): only one prints "report sent". Halfway it
stops that one (SIGTERM: it releases the lock) and another copy takes over at once. ``--worker`` runs
one copy, as your application would.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton.contrib.apscheduler import leader_only_scheduler

KEY = "examples/apscheduler-background"
#: A fixed start_date: every process agrees on the scheduled times.
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def send_report() -> None:
    """A job that works in small steps and stops as soon as this process stops being the leader."""
    token = singleton.current_token()
    for step in range(3):
        if token.wait(0.2):  # sleeps 0.2 s, or returns True at once when leadership is lost
            print(f"[{os.getpid()}] report stopped at step {step}: {token.reason}", flush=True)
            return
    print(f"[{os.getpid()}] report sent (term fence {token.fence})", flush=True)


def make_scheduler() -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(send_report, "interval", seconds=2, start_date=START, id="report")
    # The one line: every job store of the scheduler becomes leader-only.
    leader_only_scheduler(scheduler, key=KEY)
    return scheduler


def worker() -> int:
    singleton.configure(ttl=10)  # Consul address and token from CONSUL_HTTP_* variables
    scheduler = make_scheduler()
    stop = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    scheduler.start()
    print(f"[{os.getpid()}] scheduler started", flush=True)
    while not stop.wait(1.0):
        pass
    scheduler.shutdown()  # resigns the key: another process takes over without waiting for a TTL
    print(f"[{os.getpid()}] stopped", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="run one copy of the application")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    if args.worker:
        return worker()
    from apscheduler_demo import run_copies  # the launcher next to this file

    return run_copies(__file__, KEY, args.processes, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
