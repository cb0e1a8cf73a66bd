"""The Django integration: a real project (tests/django_project) run with manage.py against a real Consul agent.

Every command runs in a subprocess of its own, as cron or an operator would run it; several run at once
where the lock is what is tested. The commands log what they do to an event file (see
``jobs/management/commands/_events.py``). Only the pure parts (the settings mapping, the argv split)
are tested in this process, which never configures Django.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from singleton import Elector, LeaseSpec, Settings
from singleton.backends.consul import ConsulBackend
from singleton.cli import main as cli_main
from singleton.config import ConsulSettings
from singleton.contrib.django.conf import allowed_keys, settings_from
from singleton.errors import ConfigurationError
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_LEADERSHIP_LOST, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from singleton.testing import ConsulAgent, free_ports

from .fleet import read_events
from .helpers import ROOT_TOKEN, acl_agent, acl_token

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().with_name("django_project")
MANAGE = PROJECT / "manage.py"
HOST = socket.gethostname()


# -- running the project ------------------------------------------------------------------------


def project_env(singleton_setting: dict[str, Any] | None, **variables: str) -> dict[str, str]:
    """This environment without any Consul, singleton or Django variable, plus ``settings.SINGLETON``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if singleton_setting is not None:
        env["TEST_SINGLETON"] = json.dumps(singleton_setting)
    env.update(variables)
    return env


class Run:
    """One ``manage.py`` process, its output in files (so nothing blocks on a full pipe)."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str) -> None:
        self.args = args
        tag = f"{len(list(tmp.glob('*.out')))}"
        self.out_path = tmp / f"run{tag}.out"
        self.err_path = tmp / f"run{tag}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(MANAGE), *args], cwd=PROJECT, env=env, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"manage.py {' '.join(self.args)} still running after {timeout}s\n{self}") from None

    def __str__(self) -> str:
        return f"--- manage.py {' '.join(self.args)} (rc {self.proc.poll()})\n{self.stdout}\n--- stderr\n{self.stderr}"


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start ``manage.py`` processes; any still running at the end of the test is killed."""
    started: list[Run] = []

    def start(env: dict[str, str], *args: str) -> Run:
        run = Run(tmp_path, env, *args)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(5)


@pytest.fixture
def setting(consul_agent: ConsulAgent, key_prefix: str) -> dict[str, Any]:
    """``settings.SINGLETON`` for the shared agent, with this test's key prefix."""
    return {"ADDRESS": consul_agent.address, "KEY_PREFIX": key_prefix, "TTL": 10, "LOCK_DELAY": 17, "TIMEOUT": 2}


@pytest.fixture
def down_setting(key_prefix: str) -> dict[str, Any]:
    """``settings.SINGLETON`` naming a port where no Consul listens."""
    (port,) = free_ports(1)
    return {"ADDRESS": f"127.0.0.1:{port}", "KEY_PREFIX": key_prefix, "TTL": 10, "LOCK_DELAY": 17, "TIMEOUT": 2}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, *runs: Run) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n" + "\n".join(map(str, runs)))


# -- without Django, and the pure parts -----------------------------------------------------------


def test_importing_without_django_names_the_extra_to_install() -> None:
    code = "import sys; sys.modules['django'] = None; import singleton.contrib.django"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "consul-singleton[django]" in done.stderr


def test_settings_singleton_maps_onto_the_engine_settings_and_wins_over_the_environment() -> None:
    env = {"CONSUL_HTTP_ADDR": "10.9.9.9:8500", "CONSUL_HTTP_TOKEN": "from-env", "SINGLETON_LOCK_DELAY": "17"}
    settings = settings_from(
        {"ADDRESS": "https://consul.internal:8501", "TOKEN": "from-settings", "TTL": 20, "KEY_PREFIX": "myapp"}, env
    )
    assert (settings.consul.scheme, settings.consul.host, settings.consul.port) == ("https", "consul.internal", 8501)
    assert settings.consul.token == "from-settings"
    assert settings.lease.ttl == 20
    assert settings.lease.lock_delay == 17, "what SINGLETON leaves out comes from the environment"
    assert settings.key_prefix == "myapp/"
    assert settings_from({}, env).consul.host == "10.9.9.9"
    mutual = settings_from({"CLIENT_CERT": "/etc/c.pem", "CLIENT_KEY": "/etc/c.key", "VERIFY": False}, {})
    assert (mutual.consul.client_cert, mutual.consul.client_key, mutual.consul.verify) == (
        "/etc/c.pem",
        "/etc/c.key",
        False,
    )
    assert {"ADDRESS", "TOKEN", "TTL", "LOCK_DELAY", "KEY_PREFIX"} <= set(allowed_keys())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"TTLL": 10}, "settings.SINGLETON has an unknown key 'TTLL'; allowed keys: ADDRESS"),
        ({"ttl": 10}, "keys are upper case: 'TTL'"),
        ({"TTL": 5}, "settings.SINGLETON['TTL']: ttl must be between 10 and 86400 seconds, got 5"),
        ({"LOCK_DELAY": 90}, "settings.SINGLETON['LOCK_DELAY']: lock_delay must be between 0 and 60 seconds"),
        ({"ADDRESS": "unix:///consul.sock"}, "settings.SINGLETON['ADDRESS']: address must use http:// or https://"),
        ({"KEY_PREFIX": "/abs"}, "settings.SINGLETON['KEY_PREFIX']: key_prefix must not start with '/'"),
        ({"VERIFY": "false"}, "settings.SINGLETON['VERIFY'] must be True or False"),
        ({"TOKEN": 42}, "settings.SINGLETON['TOKEN'] must be a string, got a value of type int (not shown"),
        ({"TTL": 10, "MARGIN": 9}, "settings.SINGLETON: margin must be greater than 0 and less than 2/3 of ttl"),
        ({"CLIENT_CERT": "/etc/c.pem"}, "settings.SINGLETON: client_cert and client_key"),
        (["ADDRESS", "x"], "settings.SINGLETON must be a dict"),
    ],
)
def test_bad_settings_singleton_names_the_key_and_the_range(value: object, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings_from(value, {})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [{"TOKEN": 31337424242}, {"TOKEN": b"s3cr3t-t0ken"}, {"TOKEN": ["s3cr3t-t0ken"]}, [("TOKEN", "s3cr3t-t0ken")]],
)
def test_a_token_of_the_wrong_type_is_never_quoted(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings_from(value, {})
    assert "31337424242" not in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_the_wrapper_passes_everything_after_the_command_verbatim() -> None:
    from singleton.contrib.django.management.commands.leader_only import Command, split_argv

    parser = Command().create_parser("manage.py", "leader_only")

    def split(line: str) -> tuple[list[str], list[str]]:
        return split_argv(parser, line.split())

    assert split("--key k --ttl 30 -v 2 --fail-if-held cmd -v 3 --key x -- y") == (
        ["--key", "k", "--ttl", "30", "-v", "2", "--fail-if-held", "cmd"],
        ["-v", "3", "--key", "x", "--", "y"],
    )
    assert split("--wait=5 --wait -1 cmd") == (["--wait=5", "--wait", "-1", "cmd"], [])
    assert split("-- cmd --help") == (["--", "cmd"], ["--help"])
    assert split("--no-leader") == (["--no-leader"], [])


# -- a real project, real processes, a real agent -------------------------------------------------


@pytest.mark.consul
def test_two_concurrent_runs_one_executes_the_other_names_the_holder(
    consul_agent: ConsulAgent,
    setting: dict[str, Any],
    key_prefix: str,
    tmp_path: Path,
    runs: Callable[..., Run],
    consul_backend: ConsulBackend,
) -> None:
    log, release = tmp_path / "events.log", tmp_path / "release"
    env = project_env(setting)
    first = runs(env, "hold", "--events", str(log), "--release", str(release))
    second = runs(env, "hold", "--events", str(log), "--release", str(release))
    # The holder waits for `release`, so whichever process comes second finds the lock taken.
    wait_until(lambda: first.proc.poll() is not None or second.proc.poll() is not None, 30, "one run", first, second)
    loser, winner = (first, second) if first.proc.poll() is not None else (second, first)
    assert loser.wait() == EXIT_OK, str(loser)
    wait_until(lambda: bool(read_events(log, "start")), 30, "the holder's start", winner)
    assert [e.pid for e in read_events(log, "start")] == [winner.pid]
    assert (loser.stdout, loser.stderr) == ("", ""), "the holder runs it: quiet success, no cron mail"
    told = runs(env, "hold", "--events", str(log), "-v", "2")
    assert told.wait() == EXIT_OK, str(told)
    assert f"is held by {HOST}:{winner.pid}" in told.stderr, str(told)
    assert told.stderr.count("\n") == 1, "one line"

    # Settings honoured: the key is under KEY_PREFIX, its value is hostname:pid, the session has TTL and LOCK_DELAY.
    backend = consul_backend
    _, entry = backend.read(key_prefix + "hold")
    assert entry is not None
    assert entry.session is not None
    assert entry.holder == f"{HOST}:{winner.pid}"
    info = backend.session_info(entry.session)
    assert info is not None
    assert (info.ttl, info.lock_delay) == (10, 17)

    # While it holds: --leader-fail-if-held, the wrapper's --fail-if-held and call_command all say 75.
    strict = runs(env, "hold", "--events", str(log), "--leader-fail-if-held")
    wrapped = runs(env, "leader_only", "--key", "hold", "--fail-if-held", "exit_with", "0", "--events", str(log))
    delegated = runs(env, "leader_only", "--fail-if-held", "hold", "--events", str(log))  # not wrapped twice
    code = (
        "import django, io, json; django.setup()\n"
        "from django.core.management import call_command, CommandError\n"
        "results = []\n"
        "for name, args, options in [\n"
        f"    ('hold', [], {{'events': {str(log)!r}, 'leader_fail_if_held': True}}),\n"
        "    ('leader_only', ['--key', 'called', 'exit_with', '4', '--message', 'hi'], {'stdout': io.StringIO()}),\n"
        "]:\n"
        "    try:\n"
        "        call_command(name, *args, **options)\n"
        "    except CommandError as exc:\n"
        "        results.append([exc.returncode, str(exc), options.get('stdout', io.StringIO()).getvalue()])\n"
        "print(json.dumps(results))\n"
    )
    called = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env={**env, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = called.communicate(timeout=30)
    assert strict.wait() == EXIT_HELD_ELSEWHERE, str(strict)
    assert wrapped.wait() == EXIT_HELD_ELSEWHERE, str(wrapped)
    assert delegated.wait() == EXIT_HELD_ELSEWHERE, str(delegated)
    for run in (strict, wrapped, delegated):
        assert f"held by {HOST}:{winner.pid}" in run.stderr
    results = json.loads(out) if out else []
    assert len(results) == 2, out + err
    (held_code, held_message, _), (wrapped_code, wrapped_message, wrapped_output) = results
    assert held_code == EXIT_HELD_ELSEWHERE
    assert f"held by {HOST}:{winner.pid}" in held_message
    # call_command("leader_only", ...) raises the wrapped command's own error, after its own output.
    assert (wrapped_code, wrapped_message, wrapped_output) == (4, "exiting with 4", "hi\n")
    assert [e.pid for e in read_events(log) if e.kind in ("start", "ran")] == [winner.pid], "nobody else ran"

    release.touch()
    assert winner.wait() == EXIT_OK, str(winner)
    assert "running with fence" in winner.stdout
    # Released at once when the command finished: no TTL or lock-delay to wait out.
    _, entry = backend.read(key_prefix + "hold")
    assert entry is not None
    assert entry.session is None


@pytest.mark.consul
def test_the_wrapper_keeps_the_wrapped_commands_parsing_output_and_exit_code(
    consul_agent: ConsulAgent,
    setting: dict[str, Any],
    key_prefix: str,
    tmp_path: Path,
    runs: Callable[..., Run],
    consul_backend: ConsulBackend,
) -> None:
    env = project_env(setting)
    failing = runs(env, "leader_only", "--key", "a", "exit_with", "3", "--message", "hello", "--show-token")
    fine = runs(env, "leader_only", "--ttl", "20", "exit_with", "0", "--message", "fine")
    misused = runs(env, "leader_only", "--key", "c", "exit_with", "notanumber")
    assert failing.wait() == 3, str(failing)
    assert "hello" in failing.stdout
    assert "token fence " in failing.stdout, "the wrapped command's handle() sees current_token()"
    assert "CommandError: exiting with 3" in failing.stderr
    assert fine.wait() == EXIT_OK, str(fine)
    assert fine.stdout.strip() == "fine"
    assert misused.wait() == 2, str(misused)
    assert "exit_with: error: argument code: invalid int value: 'notanumber'" in misused.stderr
    # The key defaults to the wrapped command's name, and each run released its key when done.
    backend = consul_backend
    for key, run in (("a", failing), ("exit_with", fine)):
        _, entry = backend.read(key_prefix + key)
        assert entry is not None, key
        assert entry.holder == f"{HOST}:{run.pid}"
        assert entry.session is None
    _, entry = backend.read(key_prefix + "c")
    assert entry is None, "a usage error never asks for the lock"


@pytest.mark.consul
def test_without_settings_singleton_the_environment_configures_the_commands(
    consul_agent: ConsulAgent, key_prefix: str, runs: Callable[..., Run], consul_backend: ConsulBackend
) -> None:
    env = project_env(None, CONSUL_HTTP_ADDR=consul_agent.address, SINGLETON_KEY_PREFIX=key_prefix + "env/")
    run = runs(env, "leader_only", "exit_with", "0", "--show-token")
    assert run.wait() == EXIT_OK, str(run)
    _, entry = consul_backend.read(key_prefix + "env/exit_with")
    assert entry is not None
    assert entry.holder == f"{HOST}:{run.pid}"


@pytest.mark.consul
def test_leader_wait_takes_the_lock_once_the_holder_finishes(
    consul_agent: ConsulAgent,
    setting: dict[str, Any],
    key_prefix: str,
    tmp_path: Path,
    runs: Callable[..., Run],
    consul_backend: ConsulBackend,
) -> None:
    log, release, done = tmp_path / "events.log", tmp_path / "release", tmp_path / "done"
    done.touch()
    env = project_env(setting)
    holder = runs(env, "hold", "--events", str(log), "--release", str(release), "--leader-ttl", "20")
    wait_until(lambda: bool(read_events(log, "start")), 30, "the holder", holder)
    backend = consul_backend
    _, entry = backend.read(key_prefix + "hold")
    assert entry is not None
    assert entry.session is not None
    info = backend.session_info(entry.session)
    assert info is not None
    assert info.ttl == 20, "--leader-ttl wins over settings.SINGLETON['TTL']"
    waiter = runs(env, "hold", "--events", str(log), "--release", str(done), "--leader-wait", "30", "-v", "2")
    wait_until(lambda: "waiting up to" in waiter.stderr, 30, "the waiter to wait", waiter)
    assert f"held by {HOST}:{holder.pid}" in waiter.stderr
    release.touch()
    assert holder.wait() == EXIT_OK, str(holder)
    assert waiter.wait() == EXIT_OK, str(waiter)
    order = [(e.pid, e.kind) for e in read_events(log)]
    assert order == [(holder.pid, "start"), (holder.pid, "end"), (waiter.pid, "start"), (waiter.pid, "end")]


@pytest.mark.consul
def test_a_key_inside_the_lock_delay_of_a_dead_holder_is_waited_for_not_skipped(
    consul_agent: ConsulAgent,
    setting: dict[str, Any],
    key_prefix: str,
    tmp_path: Path,
    runs: Callable[..., Run],
    consul_backend: ConsulBackend,
) -> None:
    log = tmp_path / "events.log"
    backend = consul_backend
    # A holder whose session is invalidated (as when it crashed): the key is free, but not for 4 s.
    session = backend.create_session(name="crashed:1", ttl=10, lock_delay=4)
    assert backend.acquire(key_prefix + "hold", session, b"crashed:1").acquired
    backend.destroy_session(session)
    destroyed_at = time.time()
    run = runs(project_env(setting), "hold", "--events", str(log))
    assert run.wait() == EXIT_OK, str(run)
    starts = read_events(log, "start")
    assert [e.pid for e in starts] == [run.pid], str(run)
    assert starts[0].at >= destroyed_at + 4 - 0.5, "not before the lock-delay ended"


@pytest.mark.consul
def test_lost_leadership_fires_the_token_and_exits_leadership_lost(
    consul_agent: ConsulAgent,
    setting: dict[str, Any],
    key_prefix: str,
    tmp_path: Path,
    runs: Callable[..., Run],
    consul_backend: ConsulBackend,
) -> None:
    log = tmp_path / "events.log"
    env = project_env(setting)
    raising = runs(env, "watch_token", "--events", str(log), "--then", "raise")
    returning = runs(env, "watch_token", "--events", str(log), "--then", "return", "--leader-key", "other")
    wait_until(lambda: len(read_events(log, "start")) == 2, 30, "both commands", raising, returning)
    backend = consul_backend
    for key in ("watch_token", "other"):
        _, entry = backend.read(key_prefix + key)
        assert entry is not None
        assert entry.session is not None
        backend.destroy_session(entry.session)  # what `consul session destroy` does
    assert raising.wait() == EXIT_LEADERSHIP_LOST, str(raising)
    assert returning.wait() == EXIT_LEADERSHIP_LOST, str(returning)
    for run in (raising, returning):
        assert "lost the lock" in run.stderr
        assert "Traceback" not in run.stderr
    reasons = [e.detail for e in read_events(log, "stopped")]
    assert len(reasons) == 2
    assert all("released by Consul" in r or "invalidated" in r for r in reasons), reasons


def test_consul_down_never_runs_the_command_and_exits_unavailable(
    down_setting: dict[str, Any], tmp_path: Path, runs: Callable[..., Run]
) -> None:
    log = tmp_path / "events.log"
    env = project_env(down_setting)
    command = runs(env, "hold", "--events", str(log))
    wrapper = runs(env, "leader_only", "exit_with", "0", "--events", str(log))
    forced = runs(env, "hold", "--events", str(log), "--no-leader")
    misused = runs(env, "leader_only", "exit_with", "nope")
    helped = runs(env, "leader_only", "exit_with", "--help")
    for run in (command, wrapper):
        assert run.wait() == EXIT_UNAVAILABLE, str(run)
        assert "Traceback" not in run.stderr
        assert run.stderr.count("\n") == 1, f"one line:\n{run.stderr}"
        assert "not run: cannot prove this process holds the lock" in run.stderr
        assert "did not answer" in run.stderr
    assert forced.wait() == EXIT_OK, str(forced)
    assert [e.pid for e in read_events(log) if e.kind in ("start", "ran")] == [forced.pid], "only --no-leader ran"
    # The wrapped command parses its arguments before the lock is asked for: no Consul needed for that.
    assert misused.wait() == 2, str(misused)
    assert "invalid int value: 'nope'" in misused.stderr
    assert helped.wait() == EXIT_OK, str(helped)
    assert "--show-token" in helped.stdout


@pytest.mark.consul
def test_a_hanging_agent_is_unavailable_too_and_the_command_does_not_run(
    fresh_consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runs: Callable[..., Run]
) -> None:
    log = tmp_path / "events.log"
    setting = {"ADDRESS": fresh_consul_agent.address, "KEY_PREFIX": key_prefix, "TTL": 10, "TIMEOUT": 1}
    with fresh_consul_agent.paused():  # SIGSTOP: connections are accepted and never answered
        run = runs(project_env(setting), "hold", "--events", str(log))
        assert run.wait(30) == EXIT_UNAVAILABLE, str(run)
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1, f"one line:\n{run.stderr}"
    assert "timed out" in run.stderr or "did not answer" in run.stderr, run.stderr
    assert read_events(log) == []


def test_bad_options_and_settings_fail_before_anything_runs(
    down_setting: dict[str, Any], tmp_path: Path, runs: Callable[..., Run]
) -> None:
    log = tmp_path / "events.log"
    env = project_env(down_setting)
    cases = [
        (
            runs(env, "hold", "--events", str(log), "--leader-ttl", "5"),
            EXIT_USAGE,
            "--leader-ttl must be between 10 and 86400 seconds, got '5'",
        ),
        (
            runs(env, "leader_only", "--wait", "-1", "exit_with", "0"),
            EXIT_USAGE,
            "--wait must be between 0 and 86400 seconds",
        ),
        (
            runs(env, "hold", "--events", str(log), "--leader-key", "/abs"),
            EXIT_USAGE,
            "--leader-key must not start with '/'",
        ),
        (runs(env, "leader_only", "no_such_command"), EXIT_USAGE, "Unknown command: 'no_such_command'"),
        (
            runs(project_env({**down_setting, "TTLL": 10}), "hold", "--events", str(log)),
            EXIT_USAGE,
            "CommandError: settings.SINGLETON has an unknown key 'TTLL'",
        ),
        (
            runs(project_env({**down_setting, "TTL": 5}), "hold", "--events", str(log)),
            EXIT_USAGE,
            "CommandError: settings.SINGLETON['TTL']: ttl must be between 10 and 86400",
        ),
    ]
    without_app = project_env({**down_setting, "TTL": 5}, TEST_WITHOUT_SINGLETON_APP="1")
    cases.append(
        (runs(without_app, "hold", "--events", str(log)), EXIT_USAGE, "CommandError: settings.SINGLETON['TTL']: ttl")
    )
    for run, code, message in cases:
        assert run.wait() == code, str(run)
        assert message in run.stderr, str(run)
        assert "Traceback" not in run.stderr, str(run)
    assert read_events(log) == []
    helped = runs(env, "hold", "--events", str(log), "--help")
    assert helped.wait() == EXIT_OK
    for option in (
        "--leader-key",
        "--leader-ttl",
        "--leader-wait",
        "--leader-fail-if-held",
        "--no-leader",
        "--release",
    ):
        assert option in helped.stdout


@pytest.mark.consul
def test_a_bad_settings_singleton_is_a_check_warning_and_exit_64_and_breaks_nothing_else(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runs: Callable[..., Run]
) -> None:
    log = tmp_path / "events.log"
    # The environment names a working agent: a process that fell back on it would lead and run.
    bad = project_env({"KEY_PREFIX": key_prefix, "TTL": 5}, CONSUL_HTTP_ADDR=consul_agent.address)
    expected = "settings.SINGLETON['TTL']: ttl must be between 10 and 86400 seconds, got 5"
    helped = runs(bad, "help")
    checked = runs(bad, "check")
    strict = runs(bad, "check", "--fail-level", "WARNING")
    plain = runs(bad, "exit_with", "0", "--message", "fine")  # a command that takes no lock
    leader = runs(bad, "hold", "--events", str(log))
    wrapped = runs(bad, "leader_only", "exit_with", "0", "--events", str(log))
    for run in (helped, checked, strict, plain, leader, wrapped):
        run.wait()
        assert "Traceback" not in run.stderr, str(run)
    assert helped.proc.returncode == EXIT_OK, str(helped)
    assert checked.proc.returncode == EXIT_OK, str(checked)
    assert f"(singleton.W001) {expected}" in checked.stderr, str(checked)
    assert strict.proc.returncode == 1, "--fail-level WARNING fails on it, as Django's checks do"
    assert plain.proc.returncode == EXIT_OK, str(plain)
    assert plain.stdout.strip() == "fine"
    for run in (leader, wrapped):
        assert run.proc.returncode == EXIT_USAGE, str(run)
        assert run.stderr.startswith(f"CommandError: {expected}"), str(run)
        assert run.stderr.count("\n") == 1, "one line"
    assert read_events(log) == [], "nothing ran"
    # A @leader_only function of the same process does not campaign with the environment's settings.
    code = (
        "import django, json; django.setup()\n"
        "import singleton\n"
        "@singleton.leader_only(key='fallback', default='skipped', startup_timeout=5)\n"
        "def job(): return 'ran'\n"
        "try:\n"
        "    result = job()\n"
        "    refused = None\n"
        "except singleton.ConfigurationError as exc:  # loud: raised from the call, never a silent skip\n"
        "    result, refused = 'refused', str(exc)\n"
        "print(json.dumps([result, refused]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env={**bad, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result, refused = json.loads(done.stdout.splitlines()[-1])
    assert result == "refused", "the body did not run, and the call said why"
    assert refused is not None
    assert refused.startswith(expected)


def test_on_one_host_the_file_backend_gives_the_same_command_behaviour(
    tmp_path: Path, runs: Callable[..., Run]
) -> None:
    locks = tmp_path / "locks"
    log, release = tmp_path / "events.log", tmp_path / "release"
    env = project_env({"BACKEND": f"file://{locks}", "TTL": 10})
    first = runs(env, "hold", "--events", str(log), "--release", str(release))
    second = runs(env, "hold", "--events", str(log), "--release", str(release))
    wait_until(lambda: first.proc.poll() is not None or second.proc.poll() is not None, 30, "one run", first, second)
    loser, winner = (first, second) if first.proc.poll() is not None else (second, first)
    assert loser.wait() == EXIT_OK, str(loser)
    assert loser.stderr == "", str(loser)
    wait_until(lambda: bool(read_events(log, "start")), 30, "the holder's start", winner)
    release.touch()
    assert winner.wait() == EXIT_OK, str(winner)
    assert [e.pid for e in read_events(log, "start")] == [winner.pid]
    assert list(locks.glob("*.lock")), "the lock lives in the configured directory"


@pytest.mark.consul
def test_a_token_that_may_only_read_the_key_is_told_the_rule_every_time(
    consul_binary: str, tmp_path: Path, runs: Callable[..., Run]
) -> None:
    agent = acl_agent(consul_binary, tmp_path / "acl")
    try:
        key = "acl-tests/job"
        with ConsulBackend(agent.settings(token=ROOT_TOKEN)) as root:  # someone held it before
            session = root.create_session(name="earlier:1", ttl=10, lock_delay=0)
            assert root.acquire(key, session, b"earlier:1").acquired
            root.release(key, session, b"earlier:1")
            root.destroy_session(session)
        readonly = acl_token(
            agent, 'session_prefix "" { policy = "write" }\nkey_prefix "acl-tests/" { policy = "read" }'
        )
        setting = {"ADDRESS": agent.address, "TOKEN": readonly, "TTL": 10, "TIMEOUT": 2}
        for _ in range(3):
            run = runs(project_env(setting), "leader_only", "--key", key, "exit_with", "0")
            assert run.wait() == EXIT_UNAVAILABLE, str(run)
            assert f'key_prefix "{key}" {{ policy = "write" }}' in run.stderr, str(run)
            assert "free (last held by" not in run.stderr, str(run)
            assert readonly not in run.stderr + run.stdout
    finally:
        agent.stop()


@pytest.mark.consul
def test_sigterm_hands_a_leader_only_command_s_lock_over(
    setting: dict[str, Any], tmp_path: Path, runs: Callable[..., Run], consul_settings: ConsulSettings, key_prefix: str
) -> None:
    log = tmp_path / "events.log"
    holder = runs(project_env(setting), "hold", "--events", str(log), "--release", str(tmp_path / "never"))
    wait_until(lambda: bool(read_events(log, "start")), 30, "the holder", holder)
    follower = Elector(Settings(consul=consul_settings, key_prefix=key_prefix, lease=LeaseSpec(ttl=10, lock_delay=17)))
    try:
        waiting = follower.register("hold")
        assert waiting.wait_settled(5)
        assert not waiting.is_leader
        holder.proc.send_signal(signal.SIGTERM)
        assert waiting.wait_for_leadership(5), f"handed over at once, not after the TTL\n{holder}"
        assert read_events(log, "end"), "handle() saw its token fire and ended"
        assert holder.wait() == -signal.SIGTERM
    finally:
        follower.close(grace=0)


@pytest.mark.consul
def test_a_paused_key_tells_the_running_command_to_stop_and_runs_nothing_until_resumed(
    consul_agent: ConsulAgent, setting: dict[str, Any], key_prefix: str, tmp_path: Path, runs: Callable[..., Run]
) -> None:
    log = tmp_path / "events.log"
    env = project_env(setting)
    key = key_prefix + "watch_token"

    def operator(*args: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert cli_main([*args, "--address", consul_agent.address], stdout=out, stderr=err) == 0, err.getvalue()

    running = runs(env, "watch_token", "--events", str(log), "--then", "return")
    wait_until(lambda: bool(read_events(log, "start")), 30, "the command", running)
    operator("pause", key, "--reason", "migration")
    try:
        assert running.wait() == EXIT_LEADERSHIP_LOST, str(running)
        (stopped,) = read_events(log, "stopped")
        assert "paused by" in stopped.detail, stopped.detail
        assert "paused by" in running.stderr, str(running)
        assert "migration" in running.stderr, str(running)
        assert "lost the lock" not in running.stderr, "a pause is not a lost lock: " + running.stderr
        assert "Traceback" not in running.stderr
        # While paused: another run does nothing, quietly as when another host holds the lock, or says
        # why with --leader-fail-if-held.
        quiet = runs(env, "watch_token", "--events", str(log), "--max", "0.1")
        strict = runs(env, "watch_token", "--events", str(log), "--max", "0.1", "--leader-fail-if-held")
        assert quiet.wait() == EXIT_OK, str(quiet)
        assert (quiet.stdout, quiet.stderr) == ("", ""), str(quiet)
        assert strict.wait() == EXIT_HELD_ELSEWHERE, str(strict)
        assert "paused by" in strict.stderr, str(strict)
        assert "migration" in strict.stderr, str(strict)
        assert len(read_events(log, "start")) == 1, "nothing else ran while the key was paused"
    finally:
        operator("resume", key)
    after = runs(env, "watch_token", "--events", str(log), "--max", "0.1")
    assert after.wait() == EXIT_OK, str(after)
    assert len(read_events(log, "start")) == 2, "resumed: the command runs again"
