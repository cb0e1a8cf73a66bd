"""SIGTERM (systemd, docker stop, Kubernetes) hands the keys over, as Ctrl-C and a normal exit do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton import Election, Elector, LeaseSpec, Settings
from singleton.config import ConsulSettings
from singleton.testing import ConsulAgent

from .fleet import read_events

ROOT = Path(__file__).resolve().parent.parent
#: A handover is a release and one blocking query's answer: well under a second; generous here.
HANDOVER_BOUND = 3.0

_APP = """
import os, signal, sys, time
import singleton

log_path, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def log(kind, detail=""):
    with open(log_path, "a") as out:
        out.write(f"{time.time():.6f} {os.getpid()} {kind} {detail}\\n")

if mode == "own-handler":
    def handler(signum, frame):
        log("own-handler")
        sys.exit(3)
    signal.signal(signal.SIGTERM, handler)
singleton.configure(handle_sigterm=(mode != "off"))

@singleton.leader_only(key=key)
def job(stop_token=None):
    log("start", stop_token.fence)
    stop_token.wait(0.5)
    log("end", stop_token.reason or "")

log("ready")
while True:
    job()
    time.sleep(0.05)
"""


@pytest.fixture
def follower(consul_agent: ConsulAgent, key_prefix: str) -> Iterator[Elector]:
    elector = Elector(
        Settings(consul=ConsulSettings(port=consul_agent.http_port), key_prefix=key_prefix, lease=LeaseSpec(ttl=10))
    )
    yield elector
    elector.close(grace=0)


def start_app(
    tmp_path: Path, consul_agent: ConsulAgent, key_prefix: str, mode: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{mode}.log"
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(_APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_"))}
    env.update(
        CONSUL_HTTP_ADDR=consul_agent.address,
        SINGLETON_KEY_PREFIX=key_prefix,
        SINGLETON_TTL="10",
        PYTHONPATH=str(ROOT),
    )
    app = subprocess.Popen([sys.executable, str(script), str(log), "job", mode], env=env)
    deadline = time.monotonic() + 20
    while not read_events(log, "start"):
        assert time.monotonic() < deadline, "the app never led"
        assert app.poll() is None, "the app died"
        time.sleep(0.05)
    return app, log


def wait_leading(election: Election, timeout: float) -> float | None:
    """Seconds until ``election`` leads, or None after ``timeout``."""
    began = time.monotonic()
    return time.monotonic() - began if election.wait_for_leadership(timeout) else None


@pytest.mark.consul
def test_sigterm_with_the_default_action_hands_the_key_over(
    tmp_path: Path, consul_agent: ConsulAgent, key_prefix: str, follower: Elector
) -> None:
    app, log = start_app(tmp_path, consul_agent, key_prefix, "default")
    waiting = follower.register("job")
    assert waiting.wait_settled(5)
    assert not waiting.is_leader
    app.send_signal(signal.SIGTERM)
    took = wait_leading(waiting, HANDOVER_BOUND)
    assert took is not None, "the key was not handed over: it waits for the TTL and the lock-delay"
    assert app.wait(10) == -signal.SIGTERM, "and the process still ends by SIGTERM, as it would have"
    ends = read_events(log, "end")
    assert ends, "the running body ended"
    assert "shutting down" in ends[-1].detail, "its token fired"


@pytest.mark.consul
def test_a_handler_of_the_application_is_never_replaced(
    tmp_path: Path, consul_agent: ConsulAgent, key_prefix: str, follower: Elector
) -> None:
    app, log = start_app(tmp_path, consul_agent, key_prefix, "own-handler")
    waiting = follower.register("job")
    assert waiting.wait_settled(5)
    app.send_signal(signal.SIGTERM)
    assert app.wait(10) == 3, "the application's handler ran, and its exit code stands"
    assert read_events(log, "own-handler")
    assert wait_leading(waiting, HANDOVER_BOUND) is not None, "its sys.exit ran the exit hook, which released"


@pytest.mark.consul
def test_handle_sigterm_off_leaves_python_s_default(
    tmp_path: Path, consul_agent: ConsulAgent, key_prefix: str, follower: Elector
) -> None:
    app, _ = start_app(tmp_path, consul_agent, key_prefix, "off")
    waiting = follower.register("job")
    assert waiting.wait_settled(5)
    app.send_signal(signal.SIGTERM)
    assert app.wait(10) == -signal.SIGTERM
    assert wait_leading(waiting, HANDOVER_BOUND) is None, "nothing released: the session must expire first"
