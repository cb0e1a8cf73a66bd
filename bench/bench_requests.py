"""Consul requests per process per minute in steady state, with 1, 10 and 100 keys, and in fast mode.

    python bench/bench_requests.py [--window 60]

For each case a leader process and a follower process campaign for the same keys; after they
settle, every HTTP request each makes to the agent is counted for ``--window`` seconds. Expected:
one renewal stream per process whatever the key count (every ttl / 3 = 5 s with the default ttl of
15 s: 12 a minute), plus the long polls: one recursive blocking query per group of keys (at most
four per process), each answered once per wait (60 s) when nothing changes, with or without a key
prefix. In fast mode (``check_ttl`` 3 s) the health check is fed every check_ttl / 4 (80 a minute)
and the session renewed at least twice per lease (2.25 s: every 1.125 s, 53 a minute).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

from _common import dev_agent, machine

from singleton import Elector, Settings
from singleton.backends._http import Answer
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings


class CountingConsulBackend(ConsulBackend):
    """ConsulBackend that counts each HTTP request it sends, by kind."""

    def __init__(self, settings: ConsulSettings) -> None:
        super().__init__(settings)
        self.counts: collections.Counter[str] = collections.Counter()
        self.counting = False
        self._count_lock = threading.Lock()

    def _request(self, method: str, path: str, **kwargs: Any) -> Answer:
        if self.counting:
            query = dict(kwargs.get("query") or ())
            if path.startswith("/v1/session/renew"):
                kind = "renew"
            elif path.startswith("/v1/agent/check/pass"):
                kind = "check"
            elif path.startswith("/v1/kv/") and "index" in query:
                kind = "watch"
            elif path.startswith("/v1/kv/"):
                kind = f"kv {method}"
            else:
                kind = path
            with self._count_lock:
                self.counts[kind] += 1
        return super()._request(method, path, **kwargs)


def process(address: str, keys: int, role: str, window: float, prefix: str, check_ttl: float | None) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"{role}-{keys} %(asctime)s %(name)s %(message)s")
    consul = ConsulSettings.from_env(address=address)
    backend = CountingConsulBackend(consul)
    settings = Settings.from_env(consul=consul, identity=f"{role}-{keys}", key_prefix=prefix, check_ttl=check_ttl)
    elector = Elector(settings, backend=backend)
    elections = [elector.register(f"bench/requests/{keys}/{i}") for i in range(keys)]
    for election in elections:
        election.wait_settled(30)
    if role == "leader":
        assert all(e.is_leader for e in elections)
    time.sleep(5)  # settle: first watches answered, nothing pending
    backend.counting = True
    time.sleep(window)
    backend.counting = False
    per_minute = {kind: n * 60 / window for kind, n in backend.counts.items()}
    mode = "fast" if check_ttl else "prefix" if prefix else "no prefix"
    print(json.dumps({"keys": keys, "role": role, "mode": mode, "per_minute": per_minute}), flush=True)
    sys.stdin.read()  # hold the keys until every process has measured: a release would wake the others
    elector.close(grace=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--process", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--check-ttl", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process:
        process(args.address, args.keys, args.process, args.window, args.prefix, args.check_ttl)
        return
    with dev_agent(extra_args=["-hcl", "limits { http_max_conns_per_client = 1000 }"]) as agent:
        procs = []
        cases = [("no prefix", k) for k in (1, 10, 100)] + [("prefix", k) for k in (1, 10, 100)] + [("fast", 1)]
        for mode, keys in cases:
            prefix = f"{mode.replace(' ', '-')}{keys}/" if mode != "no prefix" else ""  # an application of its own
            for role in ("leader", "follower"):
                command = [sys.executable, __file__, "--process", role, "--address", agent.address]
                command += ["--keys", str(keys), "--window", str(args.window), "--prefix", prefix]
                if mode == "fast":
                    command += ["--check-ttl", "3"]
                procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                if role == "leader":
                    time.sleep(3)  # the leader takes every key first
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
        for proc in procs:
            proc.communicate(timeout=30)
    print(machine())
    print(f"requests per process per minute, steady state, measured over {args.window:g}s (ttl 15s, watch wait 60s)")
    print(f"{'mode':10} {'keys':>5} {'role':9} {'total':>7} {'renew':>7} {'check':>7} {'watch':>7} other")
    for r in results:
        counts = r["per_minute"]
        other = {k: round(v, 1) for k, v in counts.items() if k not in ("renew", "watch", "check")}
        total = sum(counts.values())
        print(
            f"{r['mode']:10} {r['keys']:>5} {r['role']:9} {total:7.1f} {counts.get('renew', 0):7.1f} "
            f"{counts.get('check', 0):7.1f} {counts.get('watch', 0):7.1f} {other or ''}"
        )


if __name__ == "__main__":
    main()
