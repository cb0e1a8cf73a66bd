"""StopToken: fires once, stays fired, bounds every wait by the lease, works for threads and coroutines."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from singleton.errors import LeadershipLost
from singleton.token import Lease, StopCause, StopToken, current_token

from .helpers import FakeClock


def test_fires_once_with_the_first_reason() -> None:
    token = StopToken("k", fence=7)
    assert not token.stopped
    assert token.reason is None
    assert token.fire("first")
    assert not token.fire("second")
    assert token.stopped
    assert token.reason == "first"
    assert (token.key, token.fence) == ("k", 7)


def test_raise_if_stopped() -> None:
    token = StopToken("reports/nightly")
    token.raise_if_stopped()
    token.fire("session invalidated")
    with pytest.raises(LeadershipLost, match=r"'reports/nightly' lost: session invalidated") as info:
        token.raise_if_stopped()
    assert info.value.key == "reports/nightly"


def test_lease_deadline_fires_it_without_anyone_calling_fire() -> None:
    clock = FakeClock()
    lease = Lease(clock.now + 10)
    token = StopToken("k", lease=lease, clock=clock)
    clock.advance(9.9)
    assert not token.stopped
    assert token.remaining() == pytest.approx(0.1)
    lease.deadline += 10  # a renewal landed
    clock.advance(5)
    assert not token.stopped
    clock.advance(5.1)
    assert token.stopped
    lease.deadline += 100  # too late: a fired token stays fired
    assert token.stopped
    assert token.remaining() == 0.0


def test_wait_is_an_interruptible_sleep() -> None:
    token = StopToken("k")
    started = time.monotonic()
    assert token.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    threading.Timer(0.05, token.fire, args=("lost",)).start()
    started = time.monotonic()
    assert token.wait(30) is True
    assert time.monotonic() - started < 5


def test_wait_wakes_at_the_lease_deadline() -> None:
    token = StopToken("k", lease=Lease(time.monotonic() + 0.1))
    started = time.monotonic()
    assert token.wait(30) is True
    assert 0.09 <= time.monotonic() - started < 5
    assert "lease" in (token.reason or "")


def test_callbacks_run_once_and_at_once_when_already_fired() -> None:
    token = StopToken("k")
    seen: list[str] = []
    token.add_callback(lambda t: seen.append(f"a:{t.reason}"))
    token.add_callback(lambda t: 1 / 0)  # a failing callback is logged, not raised
    token.fire("x")
    token.fire("y")
    token.add_callback(lambda t: seen.append("late"))
    assert seen == ["a:x", "late"]


def test_async_wait_and_await() -> None:
    async def main() -> tuple[bool, bool, float]:
        token = StopToken("k")
        early = await token.wait_async(0.01)
        asyncio.get_running_loop().call_later(0.05, token.fire, "lost")
        started = time.monotonic()
        await token
        return early, token.stopped, time.monotonic() - started

    early, stopped, waited = asyncio.run(main())
    assert early is False
    assert stopped is True
    assert waited < 5


def test_async_wait_does_not_leak_callbacks() -> None:
    async def main(token: StopToken) -> None:
        for _ in range(50):
            await token.wait_async(0)

    token = StopToken("k")
    asyncio.run(main(token))
    assert token._callbacks == []


def test_current_token_outside_a_leader_only_call() -> None:
    with pytest.raises(LookupError, match="outside a leader-only call"):
        current_token()


def test_activate_makes_the_token_current_inside_the_with() -> None:
    token = StopToken("k")
    with token.activate() as active:
        assert current_token() is token is active
    with pytest.raises(LookupError):
        current_token()


def test_cause_is_recorded_with_the_reason() -> None:
    clock = FakeClock()
    token = StopToken("k", lease=Lease(clock.now + 1), clock=clock)
    assert token.cause is None
    assert token.lease_deadline == clock.now + 1
    clock.advance(1)
    assert token.cause is StopCause.LEASE_EXPIRED
    other = StopToken("k")
    other.fire("deleted", StopCause.KEY_DELETED)
    assert other.cause is StopCause.KEY_DELETED
