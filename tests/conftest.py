from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fleet import Fleet

pytest_plugins = ["singleton.testing.pytest_plugin"]


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    """Worker fleets a test starts (tests/fleet.py); each is stopped at the end of the test."""
    started: list[Fleet] = []
    yield started
    for fleet in started:
        fleet.stop()
