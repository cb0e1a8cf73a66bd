"""Celery beat on three "hosts", each scheduled task sent once: by the beat holding a Consul lock.

Run it against the local agent (``CONSUL_HTTP_ADDR``, default 127.0.0.1:8500; ``consul agent -dev``)::

    python examples/celery_beat.py

It starts three ``celery beat`` processes with ``LeaderOnlyScheduler`` and one worker, on kombu's
filesystem transport in a temporary folder (no broker to install). The worker prints each report it
runs, with its scheduled time and the beat that sent it: one beat sends them all. Halfway the leading
beat is stopped (SIGTERM: it releases the lock), another takes over at once, and the next report
comes on time. This file is also the Celery app (``celery -A celery_beat``) that the processes run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

try:
    from celery import Celery  # type: ignore[import-untyped, unused-ignore]
    from celery.signals import beat_init  # type: ignore[import-untyped, unused-ignore]
except ImportError:
    sys.exit("this example needs Celery: pip install 'consul-singleton[celery]'")

import singleton
from singleton.backends.consul import ConsulBackend
from singleton.election import Election

KEY = "examples/celery-beat"
QUEUE = os.environ.get("EXAMPLE_CELERY_QUEUE", tempfile.gettempdir())

app = Celery("celery_beat", broker="filesystem://")
app.conf.update(
    broker_transport_options={"data_folder_in": QUEUE, "data_folder_out": QUEUE, "control_folder": QUEUE},
    beat_schedule={"report": {"task": "celery_beat.report", "schedule": 2.0}},
    beat_enable_remote_control=False,
    worker_enable_remote_control=False,
    # The leader-only scheduler: its key, and its lease (short, for a demo).
    beat_scheduler="singleton.contrib.celery:LeaderOnlyScheduler",
    singleton_key=KEY,
    singleton_ttl=10,
    singleton_lock_delay=1,
)


def say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def report(self: Any) -> None:
    """What a periodic task can know of the send: its scheduled time and the sender's term (fence)."""
    request = self.request
    sender = str(request.get("origin") or "?").split("@")[0].removeprefix("gen")
    scheduled = str(request.get("singleton_scheduled") or "?")[11:19]
    # Straight to the terminal: the worker turns print() into log records.
    say(f"[worker] report scheduled {scheduled} sent by beat {sender} (term fence {request.get('singleton_fence')})")


def _announce(sender: Any, **_: Any) -> None:
    election: Election = sender.scheduler.election

    def on_change(changed: Election) -> None:
        token = changed.token
        role = f"leader (term fence {token.fence})" if token is not None else changed.role.value
        say(f"[beat {os.getpid()}] {role}")

    election.add_listener(on_change)
    on_change(election)


app.task(name="celery_beat.report", bind=True)(report)
beat_init.connect(_announce)


def holder_pid() -> int | None:
    """The pid holding the key, read from Consul (the key's value is ``hostname:pid``)."""
    settings = singleton.Settings.from_env()
    with ConsulBackend(settings.consul) as backend:
        _, entry = backend.read(settings.full_key(KEY))
    if entry is None or entry.session is None or not entry.holder:
        return None
    return int(entry.holder.rsplit(":", 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=14.0)
    args = parser.parse_args()
    try:
        holder_pid()
    except singleton.SingletonError as exc:
        address = os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        print(f"no Consul agent at {address}: {exc} (start one with: consul agent -dev)", file=sys.stderr)
        return 1
    here = os.path.dirname(os.path.abspath(__file__))
    folder = tempfile.mkdtemp(prefix="celery-beat-example-")
    env = {**os.environ, "EXAMPLE_CELERY_QUEUE": folder, "PYTHONPATH": here}
    celery = [sys.executable, "-m", "celery", "-A", "celery_beat", "--quiet"]
    worker = [*celery, "worker", "--pool", "solo", "-l", "ERROR", "--without-mingle", "--without-gossip"]
    processes = [subprocess.Popen([*worker, "--without-heartbeat"], cwd=here, env=env)]
    for i in range(args.beats):
        beat = [*celery, "beat", "-s", os.path.join(folder, f"beat-{i}.schedule"), "-l", "ERROR"]
        processes.append(subprocess.Popen(beat, cwd=here, env=env))
    try:
        time.sleep(args.seconds / 2)
        leader = holder_pid()
        if leader in {p.pid for p in processes}:
            print(f"--- stopping the leading beat {leader}: another takes over at once", flush=True)
            os.kill(leader, signal.SIGTERM)
        time.sleep(args.seconds / 2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(15)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
