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


def run_copies(script: str, key: str, processes: int = 3, seconds: float = 12.0) -> int:
    """Start ``processes`` copies of ``script --worker``; halfway, SIGTERM the one holding ``key``."""
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
    _, entry = ConsulBackend(settings.consul).read(settings.full_key(key))
    if entry is None or entry.session is None or not entry.holder:
        return None
    return int(entry.holder.rsplit(":", 1)[1])
