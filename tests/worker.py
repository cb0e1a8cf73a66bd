"""A worker process for the multi-process tests: one of N copies of an application with a leader-only job.

It calls its decorated job every ``--interval`` seconds and appends one line per event to ``--log``
(O_APPEND writes of one short line are atomic, so several workers can share the file):

    <wall time> <pid> start <fence>      the body began
    <wall time> <pid> end <fence>        the body returned (short jobs) or stopped (long jobs)
    <wall time> <pid> stopped <reason>   a long job saw its stop token fire

``--mode long`` runs one long job that works until its stop token fires. SIGTERM exits cleanly (the
exit hook releases the key); SIGKILL is a crash. ``--metrics-port`` serves singleton's Prometheus
metrics on 127.0.0.1 (singleton.contrib.prometheus).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType

import singleton
from singleton import StopToken, leader_only
from singleton.config import LeaseSpec


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", help="the Consul agent (host:port)")
    parser.add_argument("--backend", help="another backend, e.g. file:///dir")
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ttl", type=float, default=10)
    parser.add_argument("--lock-delay", type=float, default=None, help="default: the smallest safe one")
    parser.add_argument("--check-ttl", type=float, default=None, help="fast failover")
    parser.add_argument("--mode", choices=["short", "long"], default="short")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--job-seconds", type=float, default=0.0)
    parser.add_argument("--metrics-port", type=int, help="serve the Prometheus metrics on this port")
    args = parser.parse_args()
    if args.lock_delay is None:
        args.lock_delay = LeaseSpec(ttl=args.ttl, check_ttl=args.check_ttl).min_lock_delay
    lease = {"ttl": args.ttl, "lock_delay": args.lock_delay, "check_ttl": args.check_ttl}

    if args.backend:
        singleton.configure(backend=args.backend, **lease)
    else:
        singleton.configure(address=args.addr, timeout=2, **lease)
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if args.metrics_port:
        from prometheus_client import start_http_server

        from singleton.contrib.prometheus import register

        register()
        start_http_server(args.metrics_port, addr="127.0.0.1")

    def log(event: str) -> None:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {event}\n".encode())

    @leader_only(key=args.key)
    def job(stop_token: StopToken | None = None) -> None:
        assert stop_token is not None
        log(f"start {stop_token.fence}")
        if args.mode == "long":
            stop_token.wait()
            # When the local lease ended, on the wall clock: a process frozen (SIGSTOP) past it logs
            # this only once it runs again, but its leadership ended then.
            deadline = stop_token.lease_deadline
            ended = time.time() - (time.monotonic() - deadline) if deadline is not None else time.time()
            log(f"stopped {ended:.6f} {stop_token.cause.value if stop_token.cause else '-'} {stop_token.reason}")
        elif args.job_seconds:
            stop_token.wait(args.job_seconds)
        log(f"end {stop_token.fence}")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    log("ready")
    try:
        while True:
            job()
            time.sleep(args.interval)
    finally:
        singleton.shutdown()
        log("exit")


if __name__ == "__main__":
    sys.exit(main())
