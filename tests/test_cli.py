"""The ``singleton`` command line, run for real (``python -m singleton``) against a real Consul agent.

Every ``run`` here is a real process supervising a real command (tests/cli_child.py) with real
signals. The lock is contended by another ``run`` or an in-process Elector, and lost the way an
operator or an outage loses it: the key deleted, the session destroyed, the key released, the agent
paused.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from singleton import Elector, LeaseSpec, Settings
from singleton.backends.consul import ConsulBackend
from singleton.cli import KILL_SAFETY, kill_deadline
from singleton.config import ConsulSettings
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_LEADERSHIP_LOST, EXIT_UNAVAILABLE, EXIT_USAGE
from singleton.testing import ConsulAgent, free_ports
from singleton.token import StopCause

from .fleet import Event, read_events
from .helpers import acl_agent

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("cli_child.py")
SINGLETON = (sys.executable, "-m", "singleton")
TTL = 10
LOCK_DELAY = LeaseSpec(ttl=TTL).min_lock_delay


def clean_env(address: str | None = None, **extra: str) -> dict[str, str]:
    """This environment without any CONSUL_* or SINGLETON_* variable of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_"))}
    if address is not None:
        env["CONSUL_HTTP_ADDR"] = address
    env.update(extra)
    return env


def cli(*args: str, address: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SINGLETON, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(address),
        cwd=ROOT,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


class Runner:
    """One ``singleton run`` in the background, its command logging to ``<name>.log``."""

    def __init__(
        self,
        tmp: Path,
        address: str,
        key: str,
        *run_args: str,
        child: tuple[str, ...] = (),
        name: str = "a",
        lock_delay: float = LOCK_DELAY,
    ) -> None:
        self.log = tmp / f"{name}.log"
        self.err = tmp / f"{name}.err"
        lease = ("--ttl", str(TTL), "--lock-delay", str(lock_delay))
        command = (sys.executable, str(CHILD), "--log", str(self.log), "--seconds", "60", *child)
        with open(self.err, "wb") as sink:
            self.proc = subprocess.Popen(
                [*SINGLETON, "run", "--key", key, *lease, *run_args, "--", *command],
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=clean_env(address),
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, kind: str | None = None) -> list[Event]:
        return read_events(self.log, kind)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.stderr()}")

    def started(self, timeout: float = 20) -> Event:
        self.wait_for(lambda: bool(self.events("start")), timeout, "the command to start")
        return self.events("start")[0]

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for event in self.events("start"):  # the command runs in a session of its own
            try:
                os.killpg(event.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        runner.stop()


def holding_elector(settings: ConsulSettings, key: str, identity: str = "web-1:4242") -> Elector:
    elector = Elector(Settings(consul=settings, lease=LeaseSpec(ttl=TTL, lock_delay=LOCK_DELAY), identity=identity))
    assert elector.register(key).wait_for_leadership(10)
    return elector


def unused_address() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


# -- arguments and help (no agent needed) --------------------------------------------------------------


def test_help_texts_document_the_exit_codes() -> None:
    for args in ([], ["run"], ["status"]):
        result = cli(*args, "--help")
        assert result.returncode == 0, result.stderr
        for code in ("64", "69", "75", "76", "127"):
            assert f"  {code} " in result.stdout, (args, result.stdout)
    run_help = cli("run", "--help").stdout
    for option in (
        "--key",
        "--ttl",
        "--lock-delay",
        "--wait",
        "--no-wait",
        "--kill-grace",
        "--address",
        "CONSUL_HTTP_ADDR",
    ):
        assert option in run_help


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--key", "k", "--ttl", "5", "--", "true"], ["--ttl", "between 10 and 86400"]),
        (["run", "--key", "k", "--lock-delay", "61", "--", "true"], ["--lock-delay", "between 0 and 60"]),
        (["run", "--key", "k", "--wait", "-1", "--", "true"], ["--wait", "between 0"]),
        (["run", "--key", "k", "--wait", "1", "--no-wait", "--", "true"], ["--no-wait", "not allowed"]),
        (["run", "--", "true"], ["--key", "required"]),
        (["run", "--key", "k"], ["no command"]),
        (["run", "--key", "/k", "--", "true"], ["must not start with '/'"]),
        (["run", "--key", "jobs/../k", "--", "true"], ["key", "'.' or '..' segment"]),
        (["status", "a//b"], ["empty segment"]),
        (["status", "--key-prefix", "app/./", "k"], ["key_prefix", "'.' or '..' segment"]),
        (["run", "--address", "ftp://x", "--key", "k", "--", "true"], ["--address"]),
        (["status", "--timeout", "0", "k"], ["--timeout", "between 0.1 and 300"]),
        (["launch"], ["invalid choice"]),
        ([], ["required"]),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(args: list[str], words: list[str]) -> None:
    assert_one_line_error(cli(*args, address=unused_address()), EXIT_USAGE, *words)


def test_bad_settings_from_the_environment_name_the_variable() -> None:
    result = cli("run", "--key", "k", "--", "true", env=clean_env(unused_address(), SINGLETON_TTL="5"))
    assert_one_line_error(result, EXIT_USAGE, "ttl must be between 10 and 86400")
    result = cli("status", "k", env=clean_env("nohost:99999"))
    assert_one_line_error(result, EXIT_USAGE, "CONSUL_HTTP_ADDR")


def test_unreachable_agent_is_one_line_and_the_command_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    address = unused_address()
    result = cli("run", "--key", "k", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')", address=address)
    assert_one_line_error(result, EXIT_UNAVAILABLE, "cannot", address)
    assert not marker.exists()
    assert_one_line_error(cli("status", "k", address=address), EXIT_UNAVAILABLE, "cannot reach Consul", address)


def test_kill_deadline_ends_before_anyone_else_could_take_the_key() -> None:
    spec = LeaseSpec(ttl=10, lock_delay=10)  # margin 2: a lease of 8 s
    # Consul may have ended the session right after the last renewal (sent 8 s before the lease's end),
    # then the lock-delay runs: that is the earliest takeover, not the lease's end plus the margin.
    lease = kill_deadline(StopCause.LEASE_EXPIRED, spec, 100.0, 99.5, 60)
    assert lease.kill_at == pytest.approx(99.5 - 8 + 10 - KILL_SAFETY), "from the last renewal, not the detection"
    released = kill_deadline(StopCause.KEY_RELEASED, spec, 100.0, 107.0, 60)
    assert released.kill_at == pytest.approx(107 - 8 + 10 - KILL_SAFETY)
    assert released.check_session
    for cause in (StopCause.KEY_DELETED, StopCause.KEY_TAKEN, StopCause.SESSION_GONE, None):
        assert kill_deadline(cause, spec, 100.0, 107.0, 60).kill_at <= 100.0, cause
    assert kill_deadline(StopCause.LEASE_EXPIRED, spec, 100.0, None, 60).kill_at <= 100.0, "no lease: at once"
    assert kill_deadline(StopCause.LEASE_EXPIRED, spec, 100.0, 100.0, 1.5).kill_at == 101.5


# -- run against the agent ----------------------------------------------------------------------------


@pytest.mark.consul
def test_run_holds_the_key_while_the_command_runs_then_releases_it(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner], consul_backend: ConsulBackend
) -> None:
    key = key_prefix + "job"
    backend = consul_backend
    runner = Runner(tmp_path, consul_agent.address, key, "--no-wait", child=("--seconds", "1.5", "--exit", "3"))
    runners.append(runner)
    start = runner.started()
    _, entry = backend.read(key)
    assert entry is not None
    assert entry.session is not None
    assert entry.holder == f"{socket.gethostname()}:{runner.pid}", "the key names the holder as hostname:pid"
    fence, session = start.detail.split()
    assert (int(fence), session) == (entry.modify_index, entry.session), "the command is told its fence"
    info = backend.session_info(entry.session)
    assert info is not None
    assert info.name == entry.holder
    assert info.ttl == TTL
    assert runner.wait() == 3, runner.stderr()
    assert runner.events("end"), "the command ran to its end"
    _, entry = backend.read(key)
    assert entry is not None
    assert entry.session is None, "released as soon as the command exited"
    assert backend.session_info(session) is None, "and the session destroyed"


@pytest.mark.consul
def test_when_another_process_holds_the_key_cron_hosts_skip_quietly_unless_asked_to_fail(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path
) -> None:
    key = key_prefix + "job"
    elector = holding_elector(consul_agent.settings(), key)
    marker = tmp_path / "ran"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return cli("run", "--key", key, *options, *command, address=consul_agent.address)

    try:
        began = time.monotonic()
        skipped = run("--no-wait")  # the cron line of the README, on a host that does not get the lock
        assert (skipped.returncode, skipped.stdout, skipped.stderr) == (0, "", ""), "quiet success: no cron mail"
        assert time.monotonic() - began < 10
        told = run("--no-wait", "-v")
        assert told.returncode == 0, told.stderr
        assert "is held by web-1:4242; not running the command here (--no-wait)" in told.stderr
        failed = run("--no-wait", "--fail-if-held")
        assert_one_line_error(failed, EXIT_HELD_ELSEWHERE, "is held by web-1:4242")
        assert run("--no-wait", "--fail-if-held", "-q").stderr == ""
        began = time.monotonic()
        waited = run("--wait", "1")
        assert (waited.returncode, waited.stderr) == (0, "")
        assert time.monotonic() - began >= 1
        assert run("--wait", "1", "--fail-if-held").returncode == EXIT_HELD_ELSEWHERE
        assert not marker.exists()
    finally:
        elector.close(grace=0)


@pytest.mark.consul
def test_a_second_run_waits_for_the_first_and_never_overlaps(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    first = Runner(tmp_path, consul_agent.address, key, child=("--seconds", "1.5"), name="first")
    runners.append(first)
    first.started()
    second = Runner(tmp_path, consul_agent.address, key, child=("--seconds", "0.2"), name="second")
    runners.append(second)
    assert first.wait() == 0, first.stderr()
    assert second.wait() == 0, second.stderr()
    (first_end,) = first.events("end")
    (second_start,) = second.events("start")
    assert second_start.at > first_end.at, "the second command started only after the first one ended"
    assert second_start.at - first_end.at < 5, "released at once: no lock-delay, no poll"


@pytest.mark.consul
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_are_forwarded_and_the_exit_code_is_the_commands(
    signum: signal.Signals,
    consul_agent: ConsulAgent,
    key_prefix: str,
    tmp_path: Path,
    runners: list[Runner],
    consul_backend: ConsulBackend,
) -> None:
    key = key_prefix + "job"
    runner = Runner(tmp_path, consul_agent.address, key)
    runners.append(runner)
    runner.started()
    runner.proc.send_signal(signum)
    assert runner.wait() == 100 + signum, runner.stderr()
    assert [e.detail for e in runner.events("signal")] == [signum.name], "delivered once"
    _, entry = consul_backend.read(key)
    assert entry is not None
    assert entry.session is None


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.consul
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc (Linux)")
def test_ctrl_z_stops_the_command_along_with_singleton_and_sigcont_resumes_both(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    runner = Runner(tmp_path, consul_agent.address, key)
    runners.append(runner)
    child = runner.started().pid
    runner.proc.send_signal(signal.SIGTSTP)
    runner.wait_for(lambda: _stopped(runner.pid) and _stopped(child), 10, "both processes to stop")
    beats = len(runner.events("beat"))
    time.sleep(0.3)
    assert len(runner.events("beat")) == beats, "the command does not run while singleton is stopped"
    runner.proc.send_signal(signal.SIGCONT)
    runner.wait_for(lambda: len(runner.events("beat")) > beats + 2, 10, "the command to run again")
    assert not runner.events("signal"), "SIGTSTP is not passed on as such"
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.wait() == 100 + signal.SIGTERM, runner.stderr()


@pytest.mark.consul
def test_a_signal_while_waiting_ends_the_run_without_the_command(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    elector = holding_elector(consul_agent.settings(), key)
    try:
        runner = Runner(tmp_path, consul_agent.address, key, "--verbose")
        runners.append(runner)
        runner.wait_for(lambda: "waiting for" in runner.stderr(), 20, "the run to wait")
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.wait() == 128 + signal.SIGTERM
        assert not runner.events(), "the command never started"
    finally:
        elector.close(grace=0)


@pytest.mark.consul
def test_a_deleted_key_kills_the_command_at_once(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    runner = Runner(tmp_path, consul_agent.address, key, child=("--ignore-term",))
    runners.append(runner)
    runner.started()
    deleted_at = time.time()
    request = urllib.request.Request(f"{consul_agent.url}/v1/kv/{key}", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()
    assert runner.wait() == EXIT_LEADERSHIP_LOST, runner.stderr()
    assert "the key was deleted" in runner.stderr()
    assert "SIGKILL sent at once" in runner.stderr()
    last_beat = runner.events("beat")[-1].at
    assert last_beat - deleted_at < 3, "another process could have taken the deleted key at once"


@pytest.mark.consul
def test_an_invalidated_session_stops_the_command_before_anyone_else_can_start(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner], consul_backend: ConsulBackend
) -> None:
    key = key_prefix + "job"
    lock_delay = 10
    first = Runner(tmp_path, consul_agent.address, key, child=("--ignore-term",), name="first", lock_delay=lock_delay)
    runners.append(first)
    start = first.started()
    second = Runner(tmp_path, consul_agent.address, key, child=("--seconds", "0.2"), name="second")
    runners.append(second)
    time.sleep(0.5)  # the second run is waiting
    _, session = start.detail.split()
    consul_backend.destroy_session(session)  # `consul session destroy`
    assert first.wait() == EXIT_LEADERSHIP_LOST, first.stderr()
    assert second.wait() == 0, second.stderr()
    (term,) = first.events("signal")
    assert term.detail == "SIGTERM"
    last_beat = first.events("beat")[-1].at
    assert last_beat - term.at > 0.3, "SIGKILL came after a grace, not at once"
    (second_start,) = second.events("start")
    assert last_beat < second_start.at, "the first command was dead before the second could start"
    assert second_start.at - term.at >= lock_delay - 0.5, "the second waited out the lock-delay"


@pytest.mark.consul
def test_a_key_released_by_an_operator_kills_at_once_despite_the_lock_delay(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    runner = Runner(tmp_path, consul_agent.address, key, child=("--ignore-term",), lock_delay=20)
    runners.append(runner)
    _, session = runner.started().detail.split()
    released_at = time.time()
    request = urllib.request.Request(f"{consul_agent.url}/v1/kv/{key}?release={session}", method="PUT")
    urllib.request.urlopen(request, timeout=5).close()  # no lock-delay follows an explicit release
    assert runner.wait() == EXIT_LEADERSHIP_LOST, runner.stderr()
    assert "released explicitly" in runner.stderr()
    assert runner.events("beat")[-1].at - released_at < 5, "not the 19.5 s the lock-delay would have allowed"


@pytest.mark.consul
def test_an_unreachable_agent_ends_the_command_before_the_session_could_expire(
    fresh_consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    runner = Runner(tmp_path, fresh_consul_agent.address, key, "--timeout", "1", child=("--ignore-term",))
    runners.append(runner)
    runner.started()
    paused_at = time.time()
    with fresh_consul_agent.paused():
        assert runner.wait(TTL + 15) == EXIT_LEADERSHIP_LOST, runner.stderr()
    assert "lease" in runner.stderr()
    last_beat = runner.events("beat")[-1].at - paused_at
    lease = LeaseSpec(ttl=TTL).lease
    # Not before the lease could have run out, and dead before Consul could expire the session and
    # hand the key over (the last renewal landed before the pause).
    assert lease - TTL / 3 - 0.5 < last_beat < TTL + LOCK_DELAY, last_beat


@pytest.mark.consul
def test_step_down_during_a_run_stops_the_command_and_a_waiting_run_takes_over(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    first = Runner(tmp_path, consul_agent.address, key, name="first")
    runners.append(first)
    first.started()
    second = Runner(
        tmp_path, consul_agent.address, key, "--wait", "60", "-v", child=("--seconds", "0.2"), name="second"
    )
    runners.append(second)
    time.sleep(0.5)  # the second run is waiting
    asked = time.time()
    result = cli("step-down", key, "--for", "30", address=consul_agent.address)
    assert result.returncode == 0, result.stderr
    assert "stepped down" in result.stdout, result.stdout  # "the key is free", or who holds it already
    assert first.wait() == EXIT_LEADERSHIP_LOST, first.stderr()
    assert [e.detail for e in first.events("signal")] == ["SIGTERM"], "told to stop with SIGTERM, once"
    assert "asked to step down" in first.stderr()
    assert "lost the lock" not in first.stderr(), "a step-down is not a lost lock: " + first.stderr()
    assert second.wait() == 0, second.stderr()
    (second_start,) = second.events("start")
    assert first.events("signal")[0].at < second_start.at, "the first command ended before the second began"
    assert second_start.at - asked < 5, f"asked {asked:.6f}\n--- first\n{first.stderr()}\n--- second\n{second.stderr()}"


@pytest.mark.consul
def test_a_pause_during_a_run_stops_the_command_and_no_run_starts_until_resumed(
    consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path, runners: list[Runner]
) -> None:
    key = key_prefix + "job"
    first = Runner(tmp_path, consul_agent.address, key, name="first")
    runners.append(first)
    first.started()
    result = cli("pause", key, "--reason", "migration", address=consul_agent.address)
    assert result.returncode == 0, result.stderr
    assert first.wait() == EXIT_LEADERSHIP_LOST, first.stderr()
    assert [e.detail for e in first.events("signal")] == ["SIGTERM"]
    assert "paused by" in first.stderr(), first.stderr()
    assert "migration" in first.stderr(), first.stderr()
    assert "lost the lock" not in first.stderr(), first.stderr()
    second = Runner(tmp_path, consul_agent.address, key, "--wait", "60", child=("--seconds", "0.2"), name="second")
    runners.append(second)
    time.sleep(1.5)
    assert second.proc.poll() is None, "it waits while the key is paused"
    assert second.events("start") == [], "nothing runs while the key is paused"
    resumed = time.time()
    assert cli("resume", key, address=consul_agent.address).returncode == 0
    assert second.wait() == 0, second.stderr()
    (second_start,) = second.events("start")
    assert second_start.at - resumed < 5


# -- status ---------------------------------------------------------------------------------------------


@pytest.mark.consul
def test_status_shows_the_holder_and_tells_held_from_free(consul_agent: ConsulAgent, key_prefix: str) -> None:
    settings = consul_agent.settings()
    elector = holding_elector(settings, key_prefix + "held")
    try:
        status = elector.election(key_prefix + "held")
        assert status is not None
        fence = status.status().fence
        result = cli("status", key_prefix + "held", address=consul_agent.address)
        assert result.returncode == 0, result.stderr
        assert "held by web-1:4242" in result.stdout
        assert f"fence {fence}" in result.stdout
        result = cli("status", "--json", key_prefix + "held", key_prefix + "free", address=consul_agent.address)
        assert result.returncode == 1, "one of the keys is free"
        held, free = json.loads(result.stdout)
        assert held["held"] is True
        assert held["holder"] == "web-1:4242"
        assert held["session_name"] == "web-1:4242"
        assert held["fence"] == held["modify_index"] == fence
        assert held["lock_index"] >= 1
        assert abs(held["since_epoch"] - time.time()) < 60
        assert free == {**free, "held": False, "exists": False, "holder": None}
        # Relative to a key prefix, and without keys: every held key under it.
        result = cli("status", "--key-prefix", key_prefix, address=consul_agent.address)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("held: held by web-1:4242")
    finally:
        elector.close(grace=0)
    result = cli("status", key_prefix + "held", address=consul_agent.address)
    assert result.returncode == 1
    assert "free (last held by web-1:4242)" in result.stdout
    assert cli("status", "--key-prefix", key_prefix, address=consul_agent.address).returncode == 1


#: What whoever can write a key can put in it: retitle the terminal, clear it, hide what follows.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mweb-9:1\r\nfake line\u202e\x9b"


def _kv_put(agent: ConsulAgent, key: str, value: bytes) -> None:
    """``consul kv put KEY VALUE``: a plain write, no acquire, no flags."""
    url = f"{agent.url}/v1/kv/{urllib.parse.quote(key)}"
    urllib.request.urlopen(urllib.request.Request(url, data=value, method="PUT"), timeout=5).close()


def _txn_lock(agent: ConsulAgent, key: str, session: str, value: bytes) -> None:
    """Acquire ``key`` through /v1/txn: unlike /v1/kv/, it takes keys with control characters."""
    body = json.dumps(
        [{"KV": {"Verb": "lock", "Key": key, "Value": base64.b64encode(value).decode(), "Session": session}}]
    )
    request = urllib.request.Request(f"{agent.url}/v1/txn", data=body.encode(), method="PUT")
    urllib.request.urlopen(request, timeout=5).close()


def _no_control_characters(text: str) -> None:
    assert not [c for c in text if not c.isprintable() and c != "\n"], repr(text)


@pytest.mark.consul
def test_status_shows_values_from_consul_escaped_and_json_exact(
    consul_agent: ConsulAgent, key_prefix: str, consul_backend: ConsulBackend
) -> None:
    hostile_key = key_prefix + "\x1b[8mjob"
    session = consul_backend.create_session(name=HOSTILE, ttl=10, lock_delay=0)
    try:
        _txn_lock(consul_agent, hostile_key, session, HOSTILE.encode())
        assert consul_backend.acquire(key_prefix + "long", session, b"x" * 5000).acquired
        result = cli("status", "--key-prefix", key_prefix, address=consul_agent.address)
        assert result.returncode == 0, result.stderr
        _no_control_characters(result.stdout)
        lines = result.stdout.splitlines()
        assert len(lines) == 2, result.stdout
        assert lines[0].startswith("\\x1b[8mjob: held by \\x1b]0;owned\\x07\\x1b[2J"), lines[0]
        assert "\\r\\nfake line\\u202e\\x9b" in lines[0]
        assert "x" * 200 + "... (5000 characters) session " + session in lines[1], lines[1]
        assert f"session {session} named \\x1b]0;owned" in lines[1], "a session name unlike the value is shown too"
        result = cli("status", "--json", "--key-prefix", key_prefix, address=consul_agent.address)
        assert result.returncode == 0, result.stderr
        _no_control_characters(result.stdout)
        assert result.stdout.isascii()
        first, second = json.loads(result.stdout)
        assert (first["key"], first["holder"], first["session_name"]) == ("\x1b[8mjob", HOSTILE, HOSTILE)
        assert second["holder"] == "x" * 5000
    finally:
        consul_backend.destroy_session(session)


@pytest.mark.consul
def test_status_never_reports_the_modify_index_of_a_plain_kv_put_as_the_fence(
    consul_agent: ConsulAgent, key_prefix: str, consul_backend: ConsulBackend
) -> None:
    key = key_prefix + "held"
    elector = holding_elector(consul_agent.settings(), key)
    try:
        election = elector.election(key)
        assert election is not None
        token = election.token
        assert token is not None
        (item,) = json.loads(cli("status", "--json", key, address=consul_agent.address).stdout)
        assert item["fence"] == token.fence, "nothing written since the acquisition: the holder's fence"
        _kv_put(consul_agent, key, b"web-1:4242")  # the session still holds the key
        result = cli("status", "--json", key, address=consul_agent.address)
        assert result.returncode == 0, "still held"
        (item,) = json.loads(result.stdout)
        assert item["held"] is True
        assert item["modify_index"] > token.fence, "the write moved the ModifyIndex"
        assert item["lock_index"] == 0, "Consul resets the LockIndex on a plain write"
        assert item["fence"] is None, "the holder's fence cannot be known from outside any more"
        text = cli("status", key, address=consul_agent.address).stdout
        assert "fence unknown: the key was written after its acquisition" in text
        assert f"fence {item['modify_index']}" not in text
        assert not token.stopped, "the holder still holds it, with its own fence"
    finally:
        elector.close(grace=0)


@pytest.mark.consul
def test_an_acl_denial_is_one_line_naming_the_rule_needed(consul_binary: str, tmp_path: Path) -> None:
    agent = acl_agent(consul_binary, tmp_path / "acl")
    try:
        result = cli("run", "--key", "reports/nightly", "--", "true", address=agent.address)
        assert_one_line_error(result, EXIT_UNAVAILABLE, "ACL", 'session_prefix "" { policy = "write" }')
        result = cli("status", "reports/nightly", address=agent.address)
        assert_one_line_error(result, EXIT_UNAVAILABLE, 'key_prefix "reports/nightly" { policy = "read" }')
        env = clean_env(agent.address, CONSUL_HTTP_TOKEN="root-token")
        assert cli("run", "--key", "reports/nightly", "--", "true", env=env).returncode == 0
    finally:
        agent.stop()


@pytest.mark.consul
def test_an_ipv6_address_in_brackets_reaches_the_agent(consul_binary: str, tmp_path: Path) -> None:
    """``[::1]:8500`` and ``http://[::1]:8500``, as the consul CLI takes them in CONSUL_HTTP_ADDR."""
    agent = ConsulAgent(consul_binary, workdir=tmp_path / "v6", extra_args=["-client=127.0.0.1 ::1"]).start()
    try:
        bracketed, with_scheme = f"[::1]:{agent.http_port}", f"http://[::1]:{agent.http_port}"
        marker = tmp_path / "ran"
        command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
        result = cli("run", "--key", "v6/job", "--no-wait", *command, address=bracketed)
        assert result.returncode == 0, result.stderr
        assert marker.exists()
        result = cli("status", "v6/job", address=with_scheme)
        assert result.returncode == 1, result.stderr
        assert "free (last held by" in result.stdout
        settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": bracketed})
        with ConsulBackend(settings) as backend:
            _, entry = backend.read("v6/job")
        assert entry is not None
        assert backend.description == f"consul at http://[::1]:{agent.http_port}"
    finally:
        agent.stop()
