"""Start several real ``celery beat`` processes (the app in tests/celery_app.py) and read what they sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from .fleet import Event, Fleet

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER = "singleton.contrib.celery:LeaderOnlyScheduler"


@dataclass(frozen=True)
class Message:
    """One task message on the transport, as a beat process sent it."""

    #: When the file was written (wall clock).
    at: float
    #: The pid of the beat that sent it (from the message's ``origin``, ``gen<pid>@host``).
    pid: int
    task: str
    fence: int
    #: The scheduled time the sender gave it (epoch seconds).
    scheduled: float


def _message(payload: bytes | str, at: float) -> Message:
    headers = json.loads(payload)["headers"]
    return Message(
        at=at,
        pid=int(headers["origin"].split("@", 1)[0].removeprefix("gen")),
        task=headers["task"],
        fence=int(headers["singleton_fence"]),
        scheduled=datetime.fromisoformat(headers["singleton_scheduled"]).timestamp(),
    )


def read_messages(queue: Path) -> list[Message]:
    """Every message file of kombu's filesystem transport in ``queue``, in the order they were written."""
    found = [_message(path.read_bytes(), path.stat().st_mtime) for path in queue.glob("*.msg")]
    return sorted(found, key=lambda m: m.at)


def read_redis_messages(url: str, sent_at: dict[str, float]) -> list[Message]:
    """Every message in the Redis list of the ``celery`` queue, stamped with when beat sent it (by id)."""
    client = redis.Redis.from_url(url)
    try:
        payloads = client.lrange("celery", 0, -1)
    finally:
        client.close()
    found = []
    for payload in payloads:
        message_id = json.loads(payload)["headers"]["id"]
        found.append(_message(payload, sent_at.get(message_id, float("nan"))))
    return sorted(found, key=lambda m: m.at)


class BeatFleet(Fleet):
    """``size`` ``celery beat`` processes with LeaderOnlyScheduler, sharing one transport folder and event log."""

    def __init__(
        self,
        tmp: Path,
        addr: str,
        prefix: str,
        *,
        mode: str,
        db: Path | None = None,
        broker: str | None = None,
        size: int = 3,
    ) -> None:
        """``broker`` is a Redis URL, or None for kombu's filesystem transport in ``tmp/queue``."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.queue = tmp / "queue"
        self.queue.mkdir(exist_ok=True)
        self.log = tmp / "events.log"
        self.log.touch()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "CONSUL_HTTP_ADDR": addr,
            "SINGLETON_KEY_PREFIX": prefix,
            "SINGLETON_TTL": "10",
            "SINGLETON_LOCK_DELAY": "8.5",  # the smallest one for ttl 10
            "CELERY_TEST_MODE": mode,
            "CELERY_TEST_BROKER": broker or "",
            "CELERY_TEST_QUEUE": str(self.queue),
            "CELERY_TEST_EVENTS": str(self.log),
            "CELERY_TEST_DB": str(db or ""),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []
        for i in range(size):
            out = tmp / f"beat-{i}.out"
            self.outputs.append(out)
            command = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "beat", "-S", SCHEDULER]
            command += ["-s", str(tmp / f"beat-{i}.schedule"), "-l", "INFO"]
            with open(out, "wb") as sink:
                self.procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT))

    def messages(self, task: str | None = None) -> list[Message]:
        if self.broker is None:
            found = read_messages(self.queue)
        else:
            found = read_redis_messages(self.broker, {e.fields[2]: e.at for e in self.events("publish")})
        return [m for m in found if task is None or m.task == task]

    def leads(self, since: float = 0.0) -> list[Event]:
        return [e for e in self.events("lead") if e.at >= since]

    def wait_for_lead(self, since: float, exclude: set[int], timeout: float) -> Event:
        """The first ``lead`` event after ``since`` by a process not in ``exclude``."""

        def found() -> bool:
            return any(e.pid not in exclude for e in self.leads(since))

        self.wait_for(found, timeout, f"a new leader (not {sorted(exclude)})")
        return next(e for e in self.leads(since) if e.pid not in exclude)
