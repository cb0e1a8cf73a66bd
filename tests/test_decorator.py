"""@leader_only on every kind of callable, against threaded electors sharing one memory backend."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from singleton import (
    ConfigurationError,
    Elector,
    NotLeader,
    Role,
    StopToken,
    current_token,
    leader_only,
)
from singleton.backends.memory import MemoryBackend

from .helpers import in_fork, memory_elector


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def leader(backend: MemoryBackend) -> Iterator[Elector]:
    elector = memory_elector(backend, identity="leader:1", inline=False)
    yield elector
    elector.close(grace=1)


@pytest.fixture
def follower(backend: MemoryBackend, leader: Elector) -> Iterator[Elector]:
    elector = memory_elector(backend, identity="follower:2", inline=False)
    yield elector
    elector.close(grace=1)


def test_body_runs_on_the_holder_and_not_on_the_follower(leader: Elector, follower: Elector) -> None:
    calls: list[str] = []

    @leader_only(key="jobs/a", elector=leader)
    def job_on_leader() -> str:
        calls.append("leader")
        return "ran"

    @leader_only(key="jobs/a", elector=follower, default="skipped")
    def job_on_follower() -> str:
        calls.append("follower")
        return "ran"

    assert job_on_leader() == "ran"  # the first call waits for the first attempt: it runs
    assert job_on_follower() == "skipped"
    assert calls == ["leader"]
    assert job_on_leader.election.is_leader
    status = job_on_follower.election.status()
    assert status is not None
    assert status.role is Role.FOLLOWER
    assert status.holder == "leader:1"
    assert job_on_follower.election.skipped == 1
    assert job_on_follower.election.last_skip_reason == "held by leader:1"


def test_on_follower_raise_names_the_holder(leader: Elector, follower: Elector) -> None:
    leader.register("jobs/b").wait_settled(5)

    @leader_only(key="jobs/b", elector=follower, on_follower="raise")
    def job() -> None:
        raise AssertionError("must not run")

    with pytest.raises(NotLeader, match=r"not the leader for 'jobs/b': held by leader:1") as info:
        job()
    assert info.value.holder == "leader:1"


def test_stop_token_is_passed_and_reachable(leader: Elector) -> None:
    seen: dict[str, object] = {}

    @leader_only(key="jobs/c", elector=leader)
    def job(x: int, stop_token: StopToken | None = None) -> int:
        seen["param"] = stop_token
        seen["current"] = current_token()
        return x * 2

    assert job(21) == 42
    assert isinstance(seen["param"], StopToken)
    assert seen["param"] is seen["current"]
    token = seen["param"]
    assert token.key == "jobs/c"
    assert token.fence > 0
    with pytest.raises(LookupError):
        current_token()  # reset after the call


def test_async_function_stays_a_coroutine_function(leader: Elector, follower: Elector) -> None:
    @leader_only(key="jobs/d", elector=leader)
    async def job(stop_token: StopToken | None = None) -> str:
        await asyncio.sleep(0)
        assert current_token() is stop_token
        return "async ran"

    @leader_only(key="jobs/d", elector=follower, default="async skipped")
    async def other() -> str:
        return "async ran"

    assert inspect.iscoroutinefunction(job)
    assert asyncio.run(job()) == "async ran"
    assert asyncio.run(other()) == "async skipped"


class Reports:
    def __init__(self, name: str) -> None:
        self.name = name

    @leader_only(key="jobs/method")
    def method(self, n: int) -> str:
        return f"{self.name}:{n}"

    @classmethod
    @leader_only(key="jobs/classmethod-below")
    def below(cls, n: int) -> str:
        return f"{cls.__name__}:{n}"

    @leader_only(key="jobs/classmethod-above")
    @classmethod
    def above(cls, n: int) -> str:
        return f"{cls.__name__}:{n}"

    @staticmethod
    @leader_only(key="jobs/static")
    def static(n: int) -> int:
        return n + 1


def test_methods_classmethods_and_staticmethods(monkeypatch: pytest.MonkeyPatch, backend: MemoryBackend) -> None:
    elector = memory_elector(backend, identity="methods:1", inline=False)
    monkeypatch.setattr("singleton._runtime.get_elector", lambda: elector)
    try:
        assert Reports("r").method(1) == "r:1"
        assert Reports.below(2) == "Reports:2"
        assert Reports.above(3) == "Reports:3"
        assert Reports.static(4) == 5
        assert Reports("r").static(5) == 6
    finally:
        elector.close(grace=0)


@leader_only
def module_level_job(x: int) -> int:
    return x + 1


def test_bare_decorator_keys_by_module_and_qualname() -> None:
    assert module_level_job.election.key == "tests.test_decorator.module_level_job"
    assert module_level_job.__name__ == "module_level_job"
    assert module_level_job.__wrapped__(1) == 2


def test_decorated_function_stays_picklable() -> None:
    assert pickle.loads(pickle.dumps(module_level_job)) is module_level_job
    assert pickle.loads(pickle.dumps(Reports.static)) is Reports.static


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 5}, r"ttl must be between 10 and 86400 seconds, got 5"),
        ({"ttl": 100000}, r"ttl must be between 10 and 86400"),
        ({"lock_delay": 61}, r"lock_delay must be between 0 and 60 seconds, got 61"),
        ({"lock_delay": -1}, r"lock_delay must be between 0 and 60"),
        ({"ttl": 15, "margin": 10}, r"margin must be .*0 < margin < 10 seconds"),
        ({"ttl": 15, "margin": 0}, r"margin must be"),
        ({"key": ""}, r"key must be a non-empty Consul key"),
        ({"key": "/abs"}, r"key must not start with '/'"),
        ({"on_follower": "crash"}, r"on_follower must be 'skip' or 'raise'"),
        ({"startup_timeout": -1}, r"startup_timeout must be between 0 and 600"),
    ],
)
def test_bad_options_fail_at_decoration_time(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        leader_only(**options)  # type: ignore[call-overload]


def test_one_key_one_lease_setting_checked_at_decoration_time() -> None:
    @leader_only(key="jobs/conflict", ttl=20)
    def first() -> None: ...

    with pytest.raises(ConfigurationError, match=r"'jobs/conflict' is already used by .*first"):

        @leader_only(key="jobs/conflict", ttl=30)
        def second() -> None: ...


def test_backend_down_never_raises_and_never_runs(backend: MemoryBackend) -> None:
    backend.set_down(True)
    elector = memory_elector(backend, identity="down:1", inline=False)
    try:

        @leader_only(key="jobs/down", elector=elector, default="not run")
        def job() -> str:
            raise AssertionError("must not run without proof of the lock")

        started = time.monotonic()
        assert job() == "not run"
        assert time.monotonic() - started < 5
        status = job.election.status()
        assert status is not None
        assert "memory backend is down" in (status.reason or "")
        assert "down" in (job.election.last_skip_reason or "")
    finally:
        elector.close(grace=0)


def test_body_is_not_started_after_leadership_is_lost(leader: Elector, backend: MemoryBackend) -> None:
    runs: list[int] = []

    @leader_only(key="jobs/lost", elector=leader)
    def job() -> None:
        runs.append(1)

    job()
    token = job.election.token
    assert token is not None
    backend.delete("jobs/lost")
    assert token.wait(5), "deleting the key fires the token"
    job.election.resign()
    assert job() is None
    assert runs == [1]


def test_close_waits_for_running_bodies_then_releases(backend: MemoryBackend) -> None:
    elector = memory_elector(backend, identity="closer:1", inline=False)
    finished = threading.Event()
    entered = threading.Event()

    @leader_only(key="jobs/long", elector=elector)
    def long_job(stop_token: StopToken | None = None) -> None:
        assert stop_token is not None
        entered.set()
        stop_token.wait(30)
        time.sleep(0.1)  # cleaning up after the stop
        finished.set()

    worker = threading.Thread(target=long_job)
    worker.start()
    assert entered.wait(5)
    elector.close(grace=5)
    assert finished.is_set(), "close() waited for the body before releasing"
    _, entry = backend.read("jobs/long")
    assert entry is not None
    assert entry.session is None
    worker.join(5)


def test_close_does_not_release_a_key_whose_body_outlives_the_grace(backend: MemoryBackend) -> None:
    elector = memory_elector(backend, identity="stubborn:1", inline=False)
    entered = threading.Event()
    release = threading.Event()

    @leader_only(key="jobs/stubborn", elector=elector)
    def stubborn() -> None:
        entered.set()
        release.wait(30)  # ignores its stop token

    worker = threading.Thread(target=stubborn)
    worker.start()
    assert entered.wait(5)
    _, before = backend.read("jobs/stubborn")
    assert before is not None
    session = before.session
    elector.close(grace=0.2)
    # Not released, but the session is destroyed: the key is freed *with* lock-delay protection.
    assert session not in {s.id for s in backend.sessions()}
    other = memory_elector(backend, identity="other:2")
    e = other.register("jobs/stubborn")
    other.step()
    assert not e.is_leader
    assert "lock-delay" in (e.status().reason or "")
    release.set()
    worker.join(5)


def test_a_forked_child_never_leads_through_an_inherited_elector(leader: Elector) -> None:
    @leader_only(key="jobs/fork", elector=leader, default="not here")
    def job() -> str:
        return "ran"

    assert job() == "ran"
    token = job.election.token
    assert token is not None
    # In the child, the elector it inherited belongs to the parent.
    _, result = in_fork(
        lambda: {
            "call": job(),
            "stopped": token.stopped,
            "cause": token.cause and token.cause.value,
            "closed": leader.closed,
        }
    )
    assert result == {"call": "not here", "stopped": True, "cause": "forked", "closed": True}
    assert not token.stopped, "the parent keeps its term"
    assert job() == "ran"


# -- what an operator sees ------------------------------------------------------------------------


_LOUD = """
import json, logging, singleton

@singleton.leader_only(key="jobs/loud", startup_timeout=2)
def job():
    return "ran"

outcomes = []
for _ in range(2):
    try:
        outcomes.append(job())
    except singleton.ConfigurationError as exc:
        outcomes.append(f"raised: {exc}")
status = job.election.status()
print(json.dumps({"outcomes": outcomes, "reason": status.reason if status else None}))
"""


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("SINGLETON_TTL", "abc", "ttl must be a number"),
        ("SINGLETON_TTL", "5", "ttl must be between 10 and 86400"),
        ("SINGLETON_MARGIN", "20", "margin must be"),
        ("CONSUL_HTTP_ADDR", "::::", "CONSUL_HTTP_ADDR"),
        ("CONSUL_HTTP_SSL_VERIFY", "maybe", "CONSUL_HTTP_SSL_VERIFY must be true or false"),
        ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token", "CONSUL_HTTP_TOKEN_FILE"),
        ("SINGLETON_BACKEND", "redis://x", "backend must be"),
    ],
)
def test_a_bad_environment_variable_is_loud_at_every_call(variable: str, value: str, words: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SINGLETON_", "CONSUL_"))}
    done = subprocess.run(
        [sys.executable, "-c", _LOUD], env={**env, variable: value}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert all(outcome.startswith("raised: ") and words in outcome for outcome in report["outcomes"]), report
    assert report["reason"] is not None
    assert words in report["reason"], "status() says it too"
    logged = [line for line in done.stderr.splitlines() if "cannot campaign for 'jobs/loud'" in line]
    assert len(logged) == 1, f"logged once, at ERROR, with no configuration of logging at all: {done.stderr}"
    assert "Traceback" not in done.stderr


def test_default_logging_shows_gains_as_well_as_losses(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    elector = memory_elector(backend, identity="gainer:1", inline=False)
    try:
        with caplog.at_level(logging.WARNING, logger="singleton"):
            election = elector.register("jobs/gain")
            assert election.wait_for_leadership(5)
            token = election.token
            assert token is not None
            backend.delete("jobs/gain")
            assert token.wait(5)
            assert election.wait_for_leadership(5)
    finally:
        elector.close(grace=0)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gainer:1 is now the leader of 'jobs/gain'" in m for m in messages), messages
    assert any("is no longer the leader of 'jobs/gain': the key was deleted" in m for m in messages), messages


def test_the_last_skip_reason_never_names_this_process_as_the_holder(backend: MemoryBackend) -> None:
    first = memory_elector(backend, identity="first:1", inline=False)
    second = memory_elector(backend, identity="second:2", inline=False)
    try:

        @leader_only(key="jobs/skip-reason", elector=second)
        def job() -> str:
            return "ran"

        first.register("jobs/skip-reason").wait_for_leadership(5)
        assert job() is None
        assert job.election.last_skip_reason == "held by first:1"
        first.close(grace=0)
        assert job.election.wait_for_leadership(5)
        reason = job.election.last_skip_reason
        assert reason is not None
        assert "second:2" not in reason, reason
        assert "not leading then" in reason
    finally:
        first.close(grace=0)
        second.close(grace=0)
