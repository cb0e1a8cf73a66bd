"""The launcher of the APScheduler examples: N copies of an example, and the leader stopped halfway.

Not part of an application: it only shows, with one command, what happens on a fleet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import singleton
from singleton.backends.consul import ConsulBackend
from singleton.errors import AccessDenied, BackendError, ConfigurationError

#: What the examples exit with when no agent answers (EX_UNAVAILABLE, as the command line does).
EXIT_NO_AGENT = 69


def agent_problem() -> str | None:
    """None when the agent of ``CONSUL_HTTP_ADDR`` answers; otherwise one line that says what to do."""
    try:
        settings = singleton.Settings.from_env()
    except ConfigurationError as exc:
        return f"bad setting: {exc}"
    try:
        with ConsulBackend(settings.consul) as backend:
            backend.read("examples/ping")
    except AccessDenied as exc:
        return f"Consul refused the examples ({exc}); set CONSUL_HTTP_TOKEN to a token with that rule"
    except BackendError:
        return (
            f"no Consul agent answers at {settings.consul.address} (CONSUL_HTTP_ADDR): start one with "
            "`consul agent -dev` (or run `make demo`, which starts its own) and run this again"
        )
    return None


def require_agent(script: str) -> bool:
    """Print the one line of :func:`agent_problem` on stderr, if any; True when the agent answers."""
    problem = agent_problem()
    if problem is not None:
        print(f"{os.path.basename(script)}: {problem}", file=sys.stderr)
    return problem is None


def run_copies(script: str, key: str, processes: int = 3, seconds: float = 12.0) -> int:
    """Start ``processes`` copies of ``script --worker``; halfway, SIGTERM the one holding ``key``.

    Without an agent to talk to, one line says how to start one, and nothing is started.
    """
    if not require_agent(script):
        return EXIT_NO_AGENT
    copies = [subprocess.Popen([sys.executable, os.path.abspath(script), "--worker"]) for _ in range(processes)]
    try:
        time.sleep(seconds / 2)
        leader = holder_pid(key)
        if leader in {copy.pid for copy in copies}:
            print(f"--- stopping the leader {leader}: another copy takes over at once", flush=True)
            os.kill(leader, signal.SIGTERM)
        time.sleep(seconds / 2)
    finally:
        for copy in copies:
            if copy.poll() is None:
                copy.send_signal(signal.SIGTERM)
        for copy in copies:
            copy.wait(15)
    return 0


def holder_pid(key: str) -> int | None:
    """The pid holding ``key``, read from Consul (the key's value is ``hostname:pid``)."""
    settings = singleton.Settings.from_env()
    try:
        with ConsulBackend(settings.consul) as backend:
            _, entry = backend.read(settings.full_key(key))
    except BackendError as exc:
        print(f"--- cannot read {key!r}: {exc}", file=sys.stderr, flush=True)
        return None
    if entry is None or entry.session is None or not entry.holder:
        return None
    return int(entry.holder.rsplit(":", 1)[1])
