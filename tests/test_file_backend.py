"""@leader_only on one host without Consul: the file backend, with real processes and real signals."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import singleton
from singleton import leader_only
from singleton.backends.file import FileBackend

from .fleet import Event, Fleet, assert_no_overlap
from .helpers import in_fork


def file_fleet(tmp_path: Path, fleets: list[Fleet], *extra: str) -> Fleet:
    backend = f"file://{tmp_path / 'locks'}"
    fleet = Fleet(tmp_path, None, "jobs/file", extra=["--backend", backend, "--interval", "0.05", *extra])
    fleets.append(fleet)
    return fleet


def test_exactly_one_process_of_the_host_runs_the_body(tmp_path: Path, fleets: list[Fleet]) -> None:
    fleet = file_fleet(tmp_path, fleets)
    fleet.wait_for(lambda: len(fleet.events("ready")) == 3, 30, "three workers")
    fleet.wait_for(lambda: len(fleet.events("end")) >= 30, 30, "30 runs")
    assert len(fleet.leaders()) == 1, fleet.report()
    assert_no_overlap(fleet.events())
    (state,) = (tmp_path / "locks").glob("*.json")
    holder = json.loads(state.read_text())["value"]
    assert holder.endswith(f":{fleet.events('start')[0].pid}"), "operators read hostname:pid in the lock's file"


def test_crash_of_the_holder_is_taken_over_without_waiting_for_a_ttl(tmp_path: Path, fleets: list[Fleet]) -> None:
    fleet = file_fleet(tmp_path, fleets)
    fleet.wait_for(lambda: len(fleet.events("end")) >= 5, 30, "a leader")
    (leader,) = fleet.leaders()
    killed_at = time.time()
    fleet.signal(leader, signal.SIGKILL)
    took = fleet.wait_for(lambda: bool(fleet.leaders(killed_at) - {leader}), 10, "a new leader")
    assert took < 5, f"a dead process's flock is gone at once; takeover took {took:.2f}s"
    events = [e for e in fleet.events() if not (e.pid == leader and e.at > killed_at)]
    events.append(Event(killed_at, leader, "end", "killed"))
    assert_no_overlap(events)


def test_graceful_stop_hands_over(tmp_path: Path, fleets: list[Fleet]) -> None:
    fleet = file_fleet(tmp_path, fleets)
    fleet.wait_for(lambda: len(fleet.events("end")) >= 5, 30, "a leader")
    (leader,) = fleet.leaders()
    stopped_at = time.time()
    fleet.signal(leader, signal.SIGTERM)
    took = fleet.wait_for(lambda: bool(fleet.leaders(stopped_at) - {leader}), 10, "a new leader")
    assert took < 5
    assert fleet.proc(leader).wait(10) == 0
    assert_no_overlap(fleet.events())


def test_forked_child_neither_leads_nor_keeps_the_lock(tmp_path: Path) -> None:
    singleton.configure(backend=f"file://{tmp_path / 'locks'}", ttl=10)
    try:

        @leader_only(key="jobs/forked", default="skipped")
        def job() -> str:
            return "ran"

        assert job() == "ran"
        pid, result = in_fork(
            lambda: {"call": job(), "holder": job.election.holder, "me": singleton.get_elector().identity}
        )
        assert result["call"] == "skipped"
        assert result["holder"].endswith(f":{os.getpid()}")
        assert result["me"].endswith(f":{pid}"), "configured before the fork, the child still names itself"
        assert job() == "ran"
    finally:
        singleton.shutdown()
    # Released at shutdown: anyone may take it now.
    other = FileBackend(tmp_path / "locks")
    session = other.create_session(name="after", ttl=10, lock_delay=0)
    assert other.acquire("jobs/forked", session, b"after:1").acquired
    other.close()


@leader_only(key="jobs/pooled", default="skipped")
def pooled_job(x: int) -> str:
    return f"ran {x} in {os.getpid()}"


def test_a_decorated_function_goes_to_a_process_pool_and_runs_only_where_the_key_is_held(tmp_path: Path) -> None:
    singleton.configure(backend=f"file://{tmp_path / 'locks'}", ttl=10)
    try:
        assert pooled_job(1) == f"ran 1 in {os.getpid()}"  # this process holds the key
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            results = list(pool.map(pooled_job, range(4)))
        assert results == ["skipped"] * 4, "the pool's processes campaign for themselves and find the key held"
    finally:
        singleton.shutdown()
    # With nobody holding the key, the first process to ask becomes its holder.
    singleton.configure(backend=f"file://{tmp_path / 'locks'}", ttl=10)
    try:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            (result,) = list(pool.map(pooled_job, [7]))
        assert result is not None
        assert result.startswith("ran 7 in ")
        assert result != f"ran 7 in {os.getpid()}"
    finally:
        singleton.shutdown()
