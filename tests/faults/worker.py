"""A worker of the fault suite: one process of a fleet that campaigns for one key and runs a long body.

It reaches Consul through ``CONSUL_HTTP_ADDR`` (the fault proxy in front of its host's agent) and
uses the public API only: ``@leader_only`` with a ``stop_token`` parameter. The body runs until its
token fires, then returns; the main loop calls the function again every ``--interval`` seconds, so a
process that leads again starts a new body with a new token.

Every event is one JSON line appended to ``--log`` (a file of this worker's own), stamped with
``time.monotonic()``; CLOCK_MONOTONIC is one clock for every process of the machine, so the lines of
different workers and of the test that drives them can be compared:

    {"t": ..., "pid": ..., "ev": "ready", "name": "h1", "ttl": 10, "lock_delay": 8.5, "margin": 2}
    {"t": ..., "ev": "start", "term": 1, "fence": 123}          a body began (term: this process's nth token)
    {"t": ..., "ev": "fired", "term": 1, "fence": 123, "cause": "lease_expired", "reason": "...",
     "lease_deadline": ...}                                     the token's callback ran (at t)
    {"t": ..., "ev": "end", "term": 1}                          the body returned
    {"t": ..., "ev": "log", "level": "WARNING", "msg": "..."}   a record of the "singleton" logger
    {"t": ..., "ev": "traceback", "where": "...", "text": "..."} any exception that reached a hook, or
                                                                an ERROR record with exc_info
    {"t": ..., "ev": "exit"}                                    after shutdown (SIGTERM)

SIGTERM shuts down cleanly (the keys are released); SIGKILL is a crash; SIGUSR1 dumps every
thread's stack to stderr (for a worker that seems stuck).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from types import FrameType, TracebackType
from typing import Any

import singleton
from singleton import StopToken, leader_only


class EventLog:
    """One JSON line per event, each written with a single ``write(2)`` on an O_APPEND descriptor."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def write(self, event: str, at: float | None = None, **fields: Any) -> None:
        record = {"t": time.monotonic() if at is None else at, "pid": self.pid, "ev": event, **fields}
        os.write(self.fd, (json.dumps(record, default=str) + "\n").encode())


class _EventHandler(logging.Handler):
    """Records of the ``singleton`` loggers as ``log`` events; any ERROR with exc_info as a ``traceback``."""

    def __init__(self, events: EventLog) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                text = "".join(traceback.format_exception(*record.exc_info))
                self.events.write("traceback", where=f"logger {record.name}: {message}", text=text)
            elif record.name.startswith("singleton"):
                self.events.write("log", level=record.levelname, logger=record.name, msg=message)
        except Exception:
            self.handleError(record)


def install_hooks(events: EventLog) -> None:
    """Every uncaught exception, in any thread, and every ERROR logged with a traceback, goes to the log."""

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        events.write("traceback", where="sys.excepthook", text="".join(traceback.format_exception(kind, value, tb)))
        sys.__excepthook__(kind, value, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        name = args.thread.name if args.thread is not None else "?"
        events.write("traceback", where=f"thread {name}", text=text)

    def unraisable_hook(unraisable: Any) -> None:
        text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        events.write("traceback", where=f"unraisable: {unraisable.err_msg}", text=text)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_EventHandler(events))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(stderr)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="the simulated host, e.g. h1")
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--lock-delay", type=float, required=True)
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--check-ttl", type=float, default=None, help="fast failover")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two calls of the job")
    parser.add_argument("--tick", type=float, default=0.5, help="the body's loop: one unit of work every TICK s")
    args = parser.parse_args(argv)

    events = EventLog(args.log)
    install_hooks(events)
    # The address comes from CONSUL_HTTP_ADDR: the proxy in front of this host's agent.
    singleton.configure(identity=f"{args.name}:{os.getpid()}")

    terms: dict[int, int] = {}
    tokens: list[StopToken] = []  # kept alive, so that id() of a token is never reused

    def term_of(token: StopToken) -> tuple[int, bool]:
        known = terms.get(id(token))
        if known is not None:
            return known, False
        tokens.append(token)
        terms[id(token)] = len(tokens)
        return len(tokens), True

    def on_fire(token: StopToken) -> None:
        at = time.monotonic()
        events.write(
            "fired",
            at=at,
            term=terms.get(id(token)),
            fence=token.fence,
            cause=token.cause.value if token.cause is not None else None,
            reason=token.reason,
            lease_deadline=token.lease_deadline,
        )

    @leader_only(key=args.key, ttl=args.ttl, lock_delay=args.lock_delay, margin=args.margin, check_ttl=args.check_ttl)
    def job(stop_token: StopToken | None = None) -> None:
        assert stop_token is not None
        term, new = term_of(stop_token)
        events.write("start", term=term, fence=stop_token.fence)
        if new:
            stop_token.add_callback(on_fire)  # runs at once if the token has fired already
        while not stop_token.wait(args.tick):
            pass  # one unit of work per tick, for as long as the token allows
        events.write("end", term=term)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    events.write(
        "ready",
        name=args.name,
        key=args.key,
        ttl=args.ttl,
        lock_delay=args.lock_delay,
        margin=args.margin,
        check_ttl=args.check_ttl,
        address=os.environ.get("CONSUL_HTTP_ADDR"),
    )
    try:
        while True:
            job()
            time.sleep(args.interval)
    finally:
        singleton.shutdown()
        events.write("exit")


if __name__ == "__main__":
    sys.exit(main())
