"""An AsyncIOScheduler whose coroutine jobs run in one process of many: the holder of a Consul lock.

Run it against the local agent (``CONSUL_HTTP_ADDR``, default 127.0.0.1:8500; ``consul agent -dev``)::

    python examples/apscheduler_asyncio.py

It starts three copies of the application (``--processes``): only one prints "synced". Halfway it stops
that one (SIGTERM: it releases the lock) and another copy takes over at once. ``--worker`` runs one
copy, as your application would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import datetime, timezone

from apscheduler.jobstores.memory import MemoryJobStore  # type: ignore[import-untyped, unused-ignore]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton.contrib.apscheduler import LeaderOnlyJobStore

KEY = "examples/apscheduler-asyncio"
#: A fixed start_date: every process agrees on the scheduled times.
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


async def sync_inventory() -> None:
    """A coroutine job: it runs on the event loop, and awaits its stop token instead of sleeping."""
    token = singleton.current_token()
    for page in range(3):
        if await token.wait_async(0.2):  # True at once when leadership is lost
            print(f"[{os.getpid()}] sync stopped at page {page}: {token.reason}", flush=True)
            return
    print(f"[{os.getpid()}] synced (term fence {token.fence})", flush=True)


async def worker() -> int:
    singleton.configure(ttl=10)  # Consul address and token from CONSUL_HTTP_* variables
    scheduler = AsyncIOScheduler(timezone=timezone.utc)
    # The one line: this store's due jobs run only in the process that holds KEY.
    scheduler.add_jobstore(LeaderOnlyJobStore(MemoryJobStore(), key=KEY), "default")
    scheduler.add_job(sync_inventory, "interval", seconds=2, start_date=START, id="sync")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scheduler.start()
    print(f"[{os.getpid()}] scheduler started", flush=True)
    await stop.wait()
    scheduler.shutdown()  # resigns the key: another process takes over without waiting for a TTL
    await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop
    print(f"[{os.getpid()}] stopped", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="run one copy of the application")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    if args.worker:
        return asyncio.run(worker())
    from apscheduler_demo import run_copies  # the launcher next to this file

    return run_copies(__file__, KEY, args.processes, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
