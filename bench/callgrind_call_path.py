"""Instructions per decorated call, counted by valgrind's callgrind: repeatable where timings are not.

    python bench/callgrind_call_path.py [--against /path/to/another/checkout] [--calls 20000]

Runs a holder's decorated call ``--calls`` times and zero times under callgrind, with no election
thread running (watch="inline"), and prints the difference per call: the work of one call, whatever
else the machine is doing. ``--against`` counts another checkout (an older commit) the same way, in
the same run, so that a change of the call path shows as a number of instructions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import sys
from singleton import Elector, LeaseSpec, Settings, StopToken, leader_only
from singleton.backends.memory import MemoryBackend

elector = Elector(Settings(backend="memory://", lease=LeaseSpec(ttl=60), identity="h:1"), backend=MemoryBackend(),
                  watch="inline")
elector.register("bench")
elector.step()

def plain() -> int:
    return 1

def with_token(stop_token: StopToken | None = None) -> int:
    return 1

follower = Elector(Settings(backend="memory://", lease=LeaseSpec(ttl=60), identity="f:2"), backend=elector.backend,
                   watch="inline")
follower.register("bench")
follower.step()
kind, calls = sys.argv[1], int(sys.argv[2])
target = {"holder": (plain, elector), "token": (with_token, elector), "follower": (plain, follower)}[kind]
fn = leader_only(key="bench", elector=target[1])(target[0])
fn()
for _ in range(calls):
    fn()
"""


def instructions(tree: Path, kind: str, calls: int, workdir: Path) -> int:
    script = workdir / "call_path.py"
    script.write_text(PROGRAM)
    out = workdir / "callgrind.out"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script), kind, str(calls)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr
    return int(match.group(1))


def per_call(tree: Path, kind: str, calls: int, workdir: Path) -> float:
    return (instructions(tree, kind, calls, workdir) - instructions(tree, kind, 0, workdir)) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--against", type=Path, help="another checkout to count the same way")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("callgrind_call_path: valgrind is not installed (apt-get install valgrind)")
    trees = [("this checkout", ROOT)] + ([("--against", args.against.resolve())] if args.against else [])
    with tempfile.TemporaryDirectory() as tmp:
        print(f"instructions per call (callgrind, {args.calls} calls, Python {sys.version.split()[0]})")
        for kind in ("holder", "token", "follower"):
            figures = ", ".join(f"{name}: {per_call(tree, kind, args.calls, Path(tmp)):,.0f}" for name, tree in trees)
            print(f"{kind:9} {figures}")


if __name__ == "__main__":
    main()
