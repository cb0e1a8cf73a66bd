"""Call overhead of @leader_only: ns added per call on the holder and on a follower.

    python bench/bench_call_overhead.py          (any Python >= 3.10; `import singleton` needs no Consul)

The call path only reads state the election thread keeps, so the backend does not matter: this uses
the in-memory backend. Each figure is the best of several repeats of a timed loop, minus the same loop
calling the undecorated function.
"""

from __future__ import annotations

import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from singleton import Elector, LeaseSpec, Settings, StopToken, leader_only
from singleton.backends.memory import MemoryBackend

NUMBER = 200_000
REPEAT = 7


def best_ns(fn: object) -> float:
    timer = timeit.Timer("fn()", globals={"fn": fn})
    return min(timer.repeat(repeat=REPEAT, number=NUMBER)) / NUMBER * 1e9


def main() -> None:
    backend = MemoryBackend()
    settings = Settings(backend="memory://", lease=LeaseSpec(ttl=60))
    holder = Elector(settings.replace(identity="holder:1"), backend=backend)
    follower = Elector(settings.replace(identity="follower:2"), backend=backend)

    def plain() -> int:
        return 1

    def plain_with_token(stop_token: StopToken | None = None) -> int:
        return 1

    on_holder = leader_only(key="bench", elector=holder)(plain)
    on_holder_token = leader_only(key="bench", elector=holder)(plain_with_token)
    on_follower = leader_only(key="bench", elector=follower)(plain)
    assert on_holder() == 1
    assert on_holder_token() == 1
    assert on_follower() is None
    assert on_holder.election.is_leader
    assert not on_follower.election.is_leader

    base = best_ns(plain)
    rows = [
        ("undecorated function", base, 0.0),
        ("@leader_only, holder", best_ns(on_holder), 0.0),
        ("@leader_only, holder, stop_token passed", best_ns(on_holder_token), 0.0),
        ("@leader_only, follower (body skipped)", best_ns(on_follower), 0.0),
    ]
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), {platform.machine()}")
    print(f"{'call':42} {'ns/call':>9} {'added':>9}")
    for name, ns, _ in rows:
        added = "" if name == "undecorated function" else f"{ns - base:9.0f}"
        print(f"{name:42} {ns:9.0f} {added:>9}")
    holder.close(grace=0)
    follower.close(grace=0)


if __name__ == "__main__":
    main()
