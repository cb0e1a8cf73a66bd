"""One of N copies of an application running a BackgroundScheduler whose job store is leader-only.

Every copy adds the same jobs (interval jobs with a fixed ``start_date``, or with ``--no-start-date``
none, as APScheduler's docs add them) and appends one line per event to ``--log`` (O_APPEND writes of one short line are
atomic, so the copies can share the file)::

    <wall time> <pid> boot                         (with --stagger) before it waits its turn
    <wall time> <pid> ready
    <wall time> <pid> lead <fence>                 this process became the leader
    <wall time> <pid> follow                       it stopped being the leader
    <wall time> <pid> body <job id> <fence>        a job body began, with current_token().fence
    <wall time> <pid> executed <job id> <scheduled epoch seconds>
    <wall time> <pid> missed <job id> <scheduled epoch seconds>
    <wall time> <pid> error <job id> <scheduled epoch seconds> <exception class>
    <wall time> <pid> exit

``--store memory`` wraps a MemoryJobStore (one job, ``tick``); ``--store sqlalchemy --db FILE`` wraps a
SQLAlchemyJobStore on a SQLite file shared by the copies (two jobs: ``coalesced`` with coalesce=True and
``every`` with coalesce=False and no misfire grace time, to show both catch-up policies). SIGTERM stops
the scheduler and exits cleanly (the key is released); SIGKILL is a crash.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from types import FrameType
from typing import Any

from apscheduler.events import (  # type: ignore[import-untyped, unused-ignore]
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
)
from apscheduler.jobstores.memory import MemoryJobStore  # type: ignore[import-untyped, unused-ignore]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped, unused-ignore]

import singleton
from singleton.config import LeaseSpec
from singleton.contrib.apscheduler import LeaderOnlyJobStore
from singleton.election import Election

#: Every copy schedules from the same origin, so a scheduled time means the same run in every process.
EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)

_fd = -1


def log(event: str) -> None:
    os.write(_fd, f"{time.time():.6f} {os.getpid()} {event}\n".encode())


def body(job_id: str) -> None:
    log(f"body {job_id} {singleton.current_token().fence}")


def main() -> int:
    global _fd
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--store", choices=["memory", "sqlalchemy"], default="memory")
    parser.add_argument("--db")
    parser.add_argument("--ttl", type=float, default=10)
    parser.add_argument("--lock-delay", type=float, default=None, help="default: the smallest safe one")
    parser.add_argument("--interval", type=float, default=1)
    parser.add_argument(
        "--no-start-date", action="store_true", help="add the jobs as APScheduler's docs do: no start_date"
    )
    parser.add_argument(
        "--stagger", type=float, default=0.0, help="the Nth copy to boot waits N times this long before adding its jobs"
    )
    args = parser.parse_args()
    if args.lock_delay is None:
        args.lock_delay = LeaseSpec(ttl=args.ttl).min_lock_delay

    _fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if args.stagger:
        log("boot")
        with open(args.log) as events:  # O_APPEND: the lines before our own are the copies that booted first
            lines = events.read().splitlines()
        booted = [line.split(" ")[1] for line in lines if line.split(" ")[2:3] == ["boot"]]
        time.sleep(booted.index(str(os.getpid())) * args.stagger)
    singleton.configure(address=args.addr, ttl=args.ttl, lock_delay=args.lock_delay, timeout=2, watch_wait=5)
    if args.store == "memory":
        inner: Any = MemoryJobStore()
        jobs: dict[str, dict[str, Any]] = {"tick": {}}
    else:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore  # type: ignore[import-untyped, unused-ignore]

        inner = SQLAlchemyJobStore(url=f"sqlite:///{args.db}", engine_options={"connect_args": {"timeout": 30}})
        jobs = {
            "coalesced": {"coalesce": True, "misfire_grace_time": 60},
            "every": {"coalesce": False, "misfire_grace_time": None},
        }
    store = LeaderOnlyJobStore(inner, key=args.key)
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone=timezone.utc)
    for job_id, options in jobs.items():
        scheduler.add_job(
            f"{__name__}:body",
            "interval",
            seconds=args.interval,
            start_date=None if args.no_start_date else EPOCH,
            args=[job_id],
            id=job_id,
            replace_existing=True,
            **options,
        )

    def on_event(event: Any) -> None:
        at = event.scheduled_run_time.timestamp()
        if event.code == EVENT_JOB_EXECUTED:
            log(f"executed {event.job_id} {at:.3f}")
        elif event.code == EVENT_JOB_MISSED:
            log(f"missed {event.job_id} {at:.3f}")
        else:
            log(f"error {event.job_id} {at:.3f} {type(event.exception).__name__}")

    scheduler.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_ERROR)

    def on_leadership(election: Election) -> None:
        token = election.token
        log(f"lead {token.fence}" if token is not None else "follow")

    stop = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, terminate)
    scheduler.start()
    assert store.election is not None
    store.election.add_listener(on_leadership)
    if store.election.is_leader:  # won before the listener was added
        on_leadership(store.election)
    log("ready")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown()
        singleton.shutdown()
        log("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
