"""maybe_acquire_leadership, the Go package's entry point, against a real Consul agent.

With py-consul (this environment) in process, and with python-consul2 in a virtual environment of its
own (the two install the same top-level module ``consul``), built under a temporary directory, where
the package is installed beside python-consul2: the Go entry, a decorated call, ``singleton run`` and
``singleton status`` all work there, since the library uses no ``consul`` module of its own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import consul
import pytest

from singleton import Elector, LeaseSpec, Settings
from singleton.cli import main as cli_main
from singleton.errors import ConfigurationError
from singleton.goapi import LeadershipOutcome, _settings_from_client, maybe_acquire_leadership
from singleton.testing import ConsulAgent

ROOT = Path(__file__).resolve().parent.parent
TTL = 10
IDENTITY = f"{socket.gethostname()}:{os.getpid()}"


def client_for(agent: ConsulAgent) -> Any:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def holding_elector(agent: ConsulAgent, key: str) -> Elector:
    elector = Elector(
        Settings(
            consul=agent.settings(),
            lease=LeaseSpec(ttl=TTL, lock_delay=LeaseSpec(ttl=TTL).min_lock_delay),
            identity="web-1:4242",
        )
    )
    assert elector.register(key).wait_for_leadership(10)
    return elector


class DoneAtOnce:
    """Reads who holds the key from inside the job, then says it is done."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key
        self.seen: dict[str, Any] = {}

    def do_job(self, stop_event: threading.Event, done_event: threading.Event) -> None:
        _, entry = self.client.kv.get(self.key)
        _, session = self.client.session.info(entry["Session"])
        self.seen = {"value": entry["Value"].decode(), "session_name": session["Name"], "stopped": stop_event.is_set()}
        done_event.set()


def _bad(**change: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "client": consul.Consul(host="127.0.0.1", port=1),
        "leader_key": "service/leader",
        "leadership_check_interval": 5,
        "session_ttl": 15,
        "session_name": "svc",
        "exit_on_lock_found": False,
        "job": lambda stop, done: None,
    }
    return {**arguments, **change}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"session_ttl": 5}, "session_ttl must be between 10 and 86400"),
        ({"session_ttl": 86401}, "session_ttl must be between 10 and 86400"),
        ({"session_ttl": "soon"}, "session_ttl must be a number"),
        ({"leadership_check_interval": 0}, "leadership_check_interval must be between 1 and 600"),
        ({"leader_key": ""}, "leader_key must be a non-empty"),
        ({"leader_key": "a key"}, "leader_key must not contain whitespace"),
        ({"leader_key": 7}, "leader_key must be a string"),
        ({"session_name": 3}, "session_name must be a string"),
        ({"exit_on_lock_found": "yes"}, "exit_on_lock_found must be True or False"),
        ({"job": object()}, "job must have a do_job(stop_event, done_event) method"),
        ({"client": object()}, "client must be a consul.Consul client"),
        ({"lock_delay": 61}, "lock_delay must be between 0 and 60"),
        ({"grace": -1}, "grace must be between 0 and 3600"),
    ],
)
def test_every_argument_is_validated_before_any_io(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        maybe_acquire_leadership(**_bad(**change))
    assert words in str(info.value)


def test_the_clients_connection_settings_are_used_not_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    client = consul.Consul(
        host="::1", port=8501, scheme="https", token="t0k", verify="/etc/ca.pem", cert=("/c.pem", "/k.pem"), dc="dc2"
    )
    settings = _settings_from_client(client)
    assert (settings.address, settings.token, settings.datacenter) == ("https://[::1]:8501", "t0k", "dc2")
    assert (settings.ca_cert, settings.client_cert, settings.client_key, settings.verify) == (
        "/etc/ca.pem",
        "/c.pem",
        "/k.pem",
        True,
    )
    unverified = _settings_from_client(consul.Consul(host="10.0.0.1", port=8500, verify=False, cert="/both.pem"))
    assert (unverified.address, unverified.verify, unverified.ca_cert) == ("http://10.0.0.1:8500", False, None)
    assert (unverified.client_cert, unverified.client_key) == ("/both.pem", "/both.pem")


@pytest.mark.consul
def test_the_job_runs_while_holding_the_key_and_done_releases_it(consul_agent: ConsulAgent, key_prefix: str) -> None:
    client = client_for(consul_agent)
    key = key_prefix + "leader"
    job = DoneAtOnce(client, key)
    outcome = maybe_acquire_leadership(client, "/" + key, 5, TTL, "report-job", False, job)  # Go drops the '/'
    assert outcome is LeadershipOutcome.DONE
    assert job.seen == {"value": IDENTITY, "session_name": "report-job", "stopped": False}
    _, entry = client.kv.get(key)
    assert entry.get("Session") is None, "released when done"
    _, sessions = client.session.list()
    assert not [s for s in sessions if s["Name"] == "report-job"], "and the session destroyed"


@pytest.mark.consul
def test_exit_on_lock_found_returns_at_once_without_running_the_job(consul_agent: ConsulAgent, key_prefix: str) -> None:
    key = key_prefix + "leader"
    elector = holding_elector(consul_agent, key)
    ran: list[bool] = []
    try:
        began = time.monotonic()
        outcome = maybe_acquire_leadership(
            client_for(consul_agent), key, 5, TTL, "svc", True, lambda stop, done: ran.append(True)
        )
        assert outcome is LeadershipOutcome.LOCK_FOUND
        assert time.monotonic() - began < 10
        assert not ran
        assert elector.elections[0].is_leader, "the holder keeps the key"
    finally:
        elector.close(grace=0)


@pytest.mark.consul
def test_without_exit_on_lock_found_it_waits_for_the_holder(consul_agent: ConsulAgent, key_prefix: str) -> None:
    client = client_for(consul_agent)
    key = key_prefix + "leader"
    elector = holding_elector(consul_agent, key)
    release = threading.Timer(1.0, elector.close, kwargs={"grace": 0})
    release.start()
    try:
        began = time.monotonic()
        job = DoneAtOnce(client, key)
        assert maybe_acquire_leadership(client, key, 5, TTL, "svc", False, job) is LeadershipOutcome.DONE
        assert time.monotonic() - began >= 0.9, "not before the holder let go"
        assert job.seen["value"] == IDENTITY
    finally:
        release.join()


def operator(*args: str) -> None:
    """``singleton pause`` / ``resume`` as an operator would run them (in this process)."""
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(list(args), stdout=out, stderr=err) == 0, err.getvalue()


@pytest.mark.consul
def test_a_paused_key_is_found_locked_waited_out_and_stops_a_running_job(
    consul_agent: ConsulAgent, key_prefix: str
) -> None:
    client = client_for(consul_agent)
    key = key_prefix + "leader"
    address = ("--address", consul_agent.address)
    operator("pause", key, "--reason", "migration", *address)
    try:
        ran: list[bool] = []
        outcome = maybe_acquire_leadership(client, key, 5, TTL, "svc", True, lambda stop, done: ran.append(True))
        assert outcome is LeadershipOutcome.LOCK_FOUND, "nobody holds it, but it is paused: the job does not run"
        assert not ran
        resume = threading.Timer(1.0, operator, args=("resume", key, *address))
        resume.start()
        began = time.monotonic()
        job = DoneAtOnce(client, key)
        assert maybe_acquire_leadership(client, key, 5, TTL, "svc", False, job) is LeadershipOutcome.DONE
        resume.join()
        assert time.monotonic() - began >= 0.9, "the wait lasted until the pause ended"
        assert job.seen["value"] == IDENTITY

        started = threading.Event()
        outcomes: list[LeadershipOutcome] = []

        def long_job(stop_event: threading.Event, done_event: threading.Event) -> None:
            started.set()
            stop_event.wait(30)

        def go() -> None:
            outcomes.append(maybe_acquire_leadership(client, key, 5, TTL, "svc", False, long_job))

        runner = threading.Thread(target=go)
        runner.start()
        assert started.wait(15)
        operator("pause", key, *address)
        runner.join(15)
        assert outcomes == [LeadershipOutcome.LOST], "stop_event set when the key was paused"
    finally:
        operator("resume", key, *address)


@pytest.mark.consul
def test_lost_leadership_sets_stop_event_and_returns_lost(consul_agent: ConsulAgent, key_prefix: str) -> None:
    client = client_for(consul_agent)
    key = key_prefix + "leader"
    seen: dict[str, Any] = {}

    def job(stop_event: threading.Event, done_event: threading.Event) -> None:
        request = urllib.request.Request(f"{consul_agent.url}/v1/kv/{key}", method="DELETE")
        urllib.request.urlopen(request, timeout=5).close()  # an operator deletes the key
        seen["stopped"] = stop_event.wait(10)

    began = time.monotonic()
    assert maybe_acquire_leadership(client, key, 5, TTL, "svc", False, job) is LeadershipOutcome.LOST
    assert seen == {"stopped": True}
    assert time.monotonic() - began < 10


@pytest.mark.consul
def test_a_job_that_returns_without_done_keeps_the_lock_as_in_go(
    consul_agent: ConsulAgent, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_prefix + "leader"
    held: list[bool] = []

    def operator() -> None:  # a second after the job returned, look at the key, then delete it
        time.sleep(1.0)
        _, entry = client_for(consul_agent).kv.get(key)
        held.append(entry.get("Session") is not None)
        request = urllib.request.Request(f"{consul_agent.url}/v1/kv/{key}", method="DELETE")
        urllib.request.urlopen(request, timeout=5).close()

    def job(stop_event: threading.Event, done_event: threading.Event) -> None:
        threading.Thread(target=operator).start()

    outcome = maybe_acquire_leadership(client_for(consul_agent), key, 5, TTL, "svc", False, job)
    assert outcome is LeadershipOutcome.LOST
    assert held == [True], "work handed to another thread stays protected by the lock"
    assert "without setting done_event" in caplog.text


@pytest.mark.consul
def test_an_exception_in_the_job_propagates_after_the_release(consul_agent: ConsulAgent, key_prefix: str) -> None:
    client = client_for(consul_agent)
    key = key_prefix + "leader"

    def job(stop_event: threading.Event, done_event: threading.Event) -> None:
        raise RuntimeError("the job failed")

    with pytest.raises(RuntimeError, match="the job failed"):
        maybe_acquire_leadership(client, key, 5, TTL, "svc", False, job)
    _, entry = client.kv.get(key)
    assert entry.get("Session") is None


# -- python-consul2 -----------------------------------------------------------------------------------

_SCRIPT = r"""
import importlib.metadata, json, sys, threading
import consul
from singleton.goapi import maybe_acquire_leadership

address, key = sys.argv[1], sys.argv[2]
host, port = address.rsplit(":", 1)
client = consul.Consul(host=host, port=int(port))
result = {"client": "python-consul2 " + importlib.metadata.version("python-consul2")}

class Job:
    def do_job(self, stop_event, done_event):
        _, entry = client.kv.get(key)
        result["value"] = entry["Value"].decode()
        result["session_name"] = client.session.info(entry["Session"])[1]["Name"]
        # Outlive a renewal (every ttl/3): renewals go through this client too.
        result["stopped_early"] = stop_event.wait(4)
        done_event.set()

result["done"] = maybe_acquire_leadership(client, key, 5, 10, "pc2-job", False, Job()).value
_, entry = client.kv.get(key)
result["released"] = entry.get("Session") is None

other = client.session.create(name="other", ttl=10, lock_delay=0)
client.kv.put(key, "other:1", acquire=other)
result["lock_found"] = maybe_acquire_leadership(client, key, 5, 10, "pc2-job", True, Job()).value
client.session.destroy(other)

def loser(stop_event, done_event):
    client.kv.delete(key)
    result["stop_seen"] = stop_event.wait(10)

result["lost"] = maybe_acquire_leadership(client, key, 5, 10, "pc2-job", False, loser).value
print(json.dumps(result))
"""

# In the same environment as python-consul2, imported first as an application would: a decorated
# call runs, and `singleton status` (another process) sees it holding the key.
_DECORATED = r"""
import json, subprocess, sys
import consul
import singleton

key = sys.argv[1]


@singleton.leader_only(key=key, ttl=10)
def job() -> int:
    return 42


result = {"consul": consul.__file__, "ran": job()}
status = subprocess.run([sys.executable, "-m", "singleton", "status", key], capture_output=True, text=True, timeout=60)
result["status"] = [status.returncode, status.stdout.strip(), status.stderr.strip()]
singleton.shutdown()
print(json.dumps(result))
"""

_OFFLINE = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectionError",
)


def _pip(python: Path, *args: str) -> None:
    """pip (this environment's) installing into ``python``'s environment; fails saying why when it cannot."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "install"]
    try:
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        output, failed = "pip did not finish within 240 s", True
    else:
        output, failed = result.stdout + result.stderr, result.returncode != 0
    if not failed:
        return
    if any(sign in output for sign in _OFFLINE) or "did not finish" in output:
        # `make test` installs from the same index, so a machine that runs the suite reaches it.
        pytest.fail(
            f"pip cannot reach a package index to install python-consul2: {output.strip()[-500:]}", pytrace=False
        )
    pytest.fail(f"pip install {' '.join(args)} failed:\n{output[-3000:]}", pytrace=False)


def _copy_project(target: Path) -> Path:
    """The files a build needs, copied: building in the working tree would write into it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "singleton", target / "singleton", ignore=ignore)
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    return target


@pytest.mark.consul
@pytest.mark.slow
def test_a_python_consul2_client_works_too(consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    _pip(python, "python-consul2", "requests", "setuptools>=61", "wheel")
    _pip(python, "--no-deps", "--no-build-isolation", str(_copy_project(tmp_path / "src")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_", "PYTHON"))}
    result = subprocess.run(
        [str(python), "-c", _SCRIPT, consul_agent.address, key_prefix + "leader"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["client"].startswith("python-consul2 ")
    _and_the_rest_works_beside_python_consul2(python, consul_agent, key_prefix, env, tmp_path)
    hostname = socket.gethostname()
    assert report["value"].startswith(f"{hostname}:"), report
    assert report == {
        **report,
        "session_name": "pc2-job",
        "stopped_early": False,
        "done": "done",
        "released": True,
        "lock_found": "lock_found",
        "lost": "lost",
        "stop_seen": True,
    }


def _and_the_rest_works_beside_python_consul2(
    python: Path, agent: ConsulAgent, key_prefix: str, env: dict[str, str], cwd: Path
) -> None:
    env = {**env, "CONSUL_HTTP_ADDR": agent.address}
    key = key_prefix + "decorated"
    decorated = subprocess.run(
        [str(python), "-c", _DECORATED, key], capture_output=True, text=True, timeout=90, env=env, cwd=cwd
    )
    assert decorated.returncode == 0, decorated.stderr
    report = json.loads(decorated.stdout.strip().splitlines()[-1])
    assert str(cwd) in report["consul"], "the consul module there is python-consul2's"
    assert report["ran"] == 42
    code, out, err = report["status"]
    assert (code, err) == (0, ""), report
    assert out.startswith(f"{key}: held by {socket.gethostname()}:"), report
    ran = subprocess.run(
        [
            str(python),
            "-m",
            "singleton",
            "run",
            "--key",
            key_prefix + "run",
            "--no-wait",
            "--",
            str(python),
            "-c",
            "print('the command ran')",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=cwd,
    )
    assert (ran.returncode, ran.stdout.strip()) == (0, "the command ran"), ran.stderr
    status = subprocess.run(
        [str(python), "-m", "singleton", "status", key_prefix + "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )
    assert status.returncode == 1, status
    assert status.stdout.strip().startswith(f"{key_prefix}run: free (last held by {socket.gethostname()}:"), status
