"""Key watching: a few blocking queries whatever the number of keys, and never a busy loop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton import Elector, Settings
from singleton._watch import MOST_WATCHES, KeyChanged, PrefixWatch, WatchFailed, WatchThread, watch_prefixes
from singleton.backends.base import KeyInfo
from singleton.backends.memory import MemoryBackend
from singleton.config import ConsulSettings, LeaseSpec
from singleton.testing import ConsulAgent

from .helpers import Partitionable


def test_a_key_prefix_is_the_one_watch() -> None:
    assert watch_prefixes([f"app/jobs/{i}" for i in range(1000)], "app/") == ["app/"]


def test_keys_are_watched_by_group_then_by_their_common_prefix() -> None:
    assert watch_prefixes(["reports/a", "reports/b", "billing/x"]) == ["billing/x", "reports/"]
    assert watch_prefixes([f"job-{i:04d}" for i in range(1000)]) == ["job-0"]
    many = [f"team{i}/job" for i in range(MOST_WATCHES + 1)]
    assert watch_prefixes(many) == ["team"], "more groups than watches: their common prefix"
    assert watch_prefixes(["a/x", "b/y", "c/z", "d/w", "e/v"]) == [""], "the whole store, as a last resort"
    assert watch_prefixes([]) == []


class Backwards(Partitionable):
    """A server whose blocking queries answer at once, each time with a lower index."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.calls = 0
        self.index = 10**9

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        self.calls += 1
        self.index -= 1
        return self.index, []


def test_an_index_that_goes_backwards_does_not_make_the_watch_spin() -> None:
    backend = Backwards(MemoryBackend())
    stop = threading.Event()
    posted: list[KeyChanged | WatchFailed] = []
    thread = WatchThread(PrefixWatch("app/", backend, lambda: ["app/k"], 60), posted.append, stop, rng=_Exact())
    thread.start()
    time.sleep(2.0)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert backend.calls <= 12, f"{backend.calls} queries in 2 s"
    assert any(isinstance(p, KeyChanged) and p.reset for p in posted), "a backwards index is posted as a reset"


class _Exact:
    def random(self) -> float:
        return 0.5


# -- against a real agent -----------------------------------------------------------------------------


def _connections_to(port: int) -> int:
    """TCP connections this process holds open to 127.0.0.1:``port`` (from /proc, no tools needed)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


@pytest.fixture
def big_elector(consul_agent: ConsulAgent, request: pytest.FixtureRequest) -> Iterator[Elector]:
    prefix = request.param
    elector = Elector(
        Settings(consul=ConsulSettings(port=consul_agent.http_port), key_prefix=prefix, lease=LeaseSpec(ttl=30))
    )
    yield elector
    elector.close(grace=0)


@pytest.mark.consul
@pytest.mark.parametrize("big_elector", ["", "big-with-prefix/"], indirect=True, ids=["no prefix", "prefix"])
def test_a_thousand_keys_lead_with_a_few_connections(
    big_elector: Elector, consul_agent: ConsulAgent, key_prefix: str
) -> None:
    # Without a key prefix the test's own prefix makes the keys share one; with one, the keys sit under it.
    elections = [big_elector.register(f"{key_prefix}k{i:04d}") for i in range(1000)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(e.is_leader for e in elections):
        time.sleep(0.1)
    leading = sum(e.is_leader for e in elections)
    took = 60 - (deadline - time.monotonic())
    assert leading == 1000, f"{leading} of 1000 keys lead after {took:.0f}s"
    connections = _connections_to(consul_agent.http_port)
    assert connections <= 1 + MOST_WATCHES + 2, f"{connections} connections to the agent for 1000 keys"
