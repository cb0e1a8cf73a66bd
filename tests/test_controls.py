"""Operators' controls against a real agent: metrics scraped over HTTP, health with the agent paused,
``singleton step-down``, ``pause`` and ``resume`` on a fleet of worker processes (tests/worker.py)."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from singleton import Elector, LeaseSpec, Settings
from singleton.cli import main
from singleton.testing import ConsulAgent, free_ports

from .fleet import Fleet, assert_no_overlap

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> tuple[int, str, str]:
    """``singleton ARGS`` in this process (these commands start no elector and touch no signal)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:  # loopback only
        return str(answer.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a scrape (labels in any order), or None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def test_a_scrape_shows_the_leaders_gauge_move_on_failover(
    consul_agent: ConsulAgent, tmp_path: Path, key_prefix: str
) -> None:
    key = key_prefix + "metrics"
    ports = free_ports(2)
    fleets = [
        Fleet(tmp_path / f"w{i}", consul_agent.address, key, size=1, extra=["--metrics-port", str(port)])
        for i, port in enumerate(ports)
    ]

    def gauges() -> list[float | None]:
        values = []
        for port in ports:
            try:
                values.append(sample(scrape(port), "singleton_leader", key=key))
            except OSError:  # not serving yet
                values.append(None)
        return values

    try:

        def settled() -> bool:
            values = gauges()
            return None not in values and sorted(v or 0 for v in values) == [0, 1]

        wait_until(settled, 30, "one leader and one follower, both serving")
        leader = gauges().index(1)
        follower = 1 - leader
        before = scrape(ports[follower])
        assert (sample(before, "singleton_calls_total", key=key, outcome="skipped") or 0) > 0
        assert sample(before, "singleton_phase", key=key, phase="watching") == 1
        assert sample(before, "singleton_healthy") == 1
        fleets[leader].procs[0].send_signal(signal.SIGTERM)  # a graceful failover: the key is released
        wait_until(lambda: gauges()[follower] == 1, 15, "the follower's gauge to move to 1")
        after = scrape(ports[follower])
        assert sample(after, "singleton_terms_won_total", key=key) == 1
        assert (sample(after, "singleton_lease_remaining_seconds", key=key) or 0) > 0
        wait_until(
            lambda: (sample(scrape(ports[follower]), "singleton_calls_total", key=key, outcome="run") or 0) > 0,
            10,
            "calls run on the new leader",
        )
        assert (sample(after, "singleton_session_renewal_seconds_count") or 0) >= 0
    finally:
        for fleet in fleets:
            fleet.stop()


def test_health_is_lost_while_the_agent_is_paused_and_comes_back_after(
    fresh_consul_agent: ConsulAgent, key_prefix: str
) -> None:
    settings = Settings(consul=fresh_consul_agent.settings(timeout=1.0), key_prefix=key_prefix, lease=LeaseSpec(ttl=10))
    elector = Elector(settings)
    try:
        assert elector.register("health").wait_for_leadership(10)
        health = elector.health()
        assert health.ok, health.reasons
        assert health.leading == (key_prefix + "health",)
        with fresh_consul_agent.paused():
            # ttl 10: renewals every 3.3 s; late, and so unhealthy, 5 s after the last one landed.
            wait_until(lambda: not elector.health().ok, 15, "health to fail with the agent paused")
            reasons = elector.health().reasons
        assert any("no renewal of session" in reason for reason in reasons), reasons
        wait_until(lambda: elector.health().ok, 30, "health to come back once the agent answers")
    finally:
        elector.close(grace=0)


def test_step_down_moves_leadership_to_another_process_without_overlap(
    consul_agent: ConsulAgent, tmp_path: Path, key_prefix: str
) -> None:
    key = key_prefix + "step"
    fleet = Fleet(tmp_path, consul_agent.address, key, size=3, extra=["--mode", "long"])
    try:
        fleet.wait_for(lambda: len(fleet.leaders()) == 1, 30, "a first leader")
        (first,) = fleet.leaders()
        asked = time.time()
        code, out, err = cli("step-down", key, "--for", "60", "--address", consul_agent.address)
        assert code == 0, err
        assert "stepped down; now held by" in out, out
        fleet.wait_for(lambda: len(fleet.leaders(since=asked)) == 1, 10, "another process to lead")
        (second,) = fleet.leaders(since=asked)
        assert second != first
        began = min(e.at for e in fleet.events("start") if e.pid == second)
        assert began - asked < 5.0, "within the graceful bound: the first's body stopped at once"
        (stopped,) = [e for e in fleet.events("stopped") if e.pid == first]
        assert "asked to step down" in stopped.detail
        assert_no_overlap(fleet.events())
        code, out, _ = cli("step-down", key, "--wait", "0", "--address", consul_agent.address)
        assert code == 0
        assert "asked" in out
    finally:
        fleet.stop()
    code, _, err = cli("step-down", key, "--address", consul_agent.address)
    assert code == 1, "nobody holds it any more"
    assert "not held by any process" in err


def test_pause_stops_every_process_within_a_round_trip_and_resume_restarts_them(
    consul_agent: ConsulAgent, tmp_path: Path, key_prefix: str
) -> None:
    key = key_prefix + "pause"
    address = ["--address", consul_agent.address]
    fleet = Fleet(tmp_path, consul_agent.address, key, size=3, extra=["--interval", "0.05"])
    try:
        fleet.wait_for(lambda: len(fleet.events("start")) >= 5, 30, "the job to run")
        (holder,) = fleet.leaders()
        code, out, err = cli("pause", key, "--reason", "migration", *address)
        paused = time.time()
        assert code == 0, err
        assert "paused by" in out
        time.sleep(1.5)
        late = [e for e in fleet.events("start") if e.at > paused + 0.5]
        assert not late, f"{len(late)} runs began after the pause: {late[:3]}\n{fleet.report()}"
        code, out, _ = cli("status", key, *address)
        assert code == 0, "the paused holder keeps the key"
        assert "paused by" in out
        assert ": migration" in out
        code, out, _ = cli("status", "--json", key, *address)
        (item,) = json.loads(out)
        assert item["held"]
        assert item["paused"]["reason"] == "migration"
        assert item["paused"]["until"] is None
        resumed = time.time()
        code, out, _ = cli("resume", key, *address)
        assert code == 0
        assert "resumed" in out
        fleet.wait_for(lambda: any(e.at > resumed for e in fleet.events("start")), 5, "the job to run again")
        assert {e.pid for e in fleet.events("start") if e.at > resumed} == {holder}, "the holder kept the key"
        assert_no_overlap(fleet.events())
    finally:
        fleet.stop()


def test_singleton_run_on_a_paused_key_runs_nothing(consul_agent: ConsulAgent, key_prefix: str) -> None:
    key = key_prefix + "cron"
    assert cli("pause", key, "--for", "60", "--address", consul_agent.address)[0] == 0

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "singleton", "run", "--key", key, "--address", consul_agent.address]
        return subprocess.run(
            [*command, *extra, "--", sys.executable, "-c", "print('ran')"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    quiet = run("--no-wait")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), "as when another host runs it: silent"
    loud = run("--no-wait", "--fail-if-held")
    assert loud.returncode == 75
    assert "paused by" in loud.stderr
    assert "ran" not in loud.stdout
