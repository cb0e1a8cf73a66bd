"""A command for ``singleton run`` in the tests: logs what happens to it, one line per event.

    <wall time> <pid> start <SINGLETON_LOCK_FENCE> <SINGLETON_LOCK_SESSION>
    <wall time> <pid> beat                 every --beat seconds while it runs
    <wall time> <pid> signal <NAME>        SIGINT, SIGTERM or SIGHUP arrived
    <wall time> <pid> end                  it finished its --seconds

On a signal it exits with 100 + the signal number, unless ``--ignore-term`` (SIGTERM is then only
logged: the process must be killed). O_APPEND writes of one short line are atomic, so several children
can share one log.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--beat", type=float, default=0.05)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(event: str) -> None:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {event}\n".encode())

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log(f"signal {signal.Signals(signum).name}")
        if not (args.ignore_term and signum == signal.SIGTERM):
            os._exit(100 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    log(f"start {os.environ.get('SINGLETON_LOCK_FENCE', '-')} {os.environ.get('SINGLETON_LOCK_SESSION', '-')}")
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        log("beat")
        time.sleep(min(args.beat, max(0.0, end - time.monotonic())))
    log("end")
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())
