"""What a type checker sees of ``@leader_only``: every supported form keeps its signature and ``.election``.

The ``assert_type`` lines below are checked by ``make type`` (mypy --strict over the tests); the test
at the end runs mypy on code that misuses them, to show that the checks catch what they should.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from singleton import LeaderOnlyHandle, StopToken, leader_only

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from typing_extensions import assert_type


@leader_only
def plain(x: int, stop_token: StopToken | None = None) -> str:
    return str(x)


@leader_only(key="typing/default", default=0)
def counted() -> int:
    return 1


@leader_only(key="typing/raise", on_follower="raise")
def strict() -> int:
    return 1


@leader_only(key="typing/async")
async def fetched(url: str) -> bytes:
    return url.encode()


@leader_only(key="typing/token")
def tokened(stop_token: StopToken | None = None) -> int:
    return 1


class Reports:
    @leader_only(key="typing/method")
    def method(self, day: str) -> int:
        return len(day)

    @classmethod
    @leader_only(key="typing/classmethod")
    def build(cls, day: str) -> str:
        return day

    @staticmethod
    @leader_only(key="typing/staticmethod")
    def tally(n: int) -> int:
        return n

    @leader_only(key="typing/async-method")
    async def send(self, to: str) -> bool:
        return bool(to)


def _types() -> None:  # never called: the type checker reads it
    if TYPE_CHECKING:
        assert_type(plain(1), "str | None")
        assert_type(tokened(), "int | None")
        assert_type(counted(), int)
        assert_type(strict(), int)
        assert_type(plain.election, LeaderOnlyHandle)
        reports = Reports()
        assert_type(reports.method("mon"), "int | None")
        assert_type(reports.method.election, LeaderOnlyHandle)
        assert_type(Reports.build("mon"), "str | None")
        assert_type(Reports.build.election, LeaderOnlyHandle)
        assert_type(Reports.tally(3), "int | None")
        assert_type(reports.tally(3), "int | None")
        first: Coroutine[Any, Any, bytes | None] = fetched("u")
        second: Coroutine[Any, Any, bool | None] = reports.send("x")
        _ = assert_type(first, "Coroutine[Any, Any, bytes | None]")
        _ = assert_type(second, "Coroutine[Any, Any, bool | None]")


_MISUSE = """
from singleton import leader_only

@leader_only(key="k")
def plain(x: int) -> str:
    return str(x)

@leader_only(key="k2", default=0)
def counted() -> int:
    return 1

class Reports:
    @leader_only(key="k3")
    def method(self, day: str) -> int:
        return len(day)

plain("not an int")
Reports().method(3)
text: str = counted()
plain.election.no_such_attribute
"""


def test_the_checks_catch_misuse(tmp_path: Path) -> None:
    snippet = tmp_path / "misuse.py"
    snippet.write_text(textwrap.dedent(_MISUSE))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [17, 18, 19, 20], done.stdout
