"""Faults injected for real into a fleet of three workers on three simulated hosts, judged by the checker.

Each trial gets a cluster of its own (three servers, three client agents, a proxy per worker), with
ttl 10 s and the smallest lock-delay the library accepts for it. ``make test`` runs the CI set;
``make faults`` runs every fault, three trials each, and writes ``.faults/report.md`` and ``.json``.
See tests/faults/faults.py for the selection and tests/faults/checker.py for the rules.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import report
from .faults import FAULTS, Fault, lock_delay_override, selected, selection_name, trials
from .scenario import Scenario

pytestmark = [pytest.mark.consul, pytest.mark.slow, pytest.mark.fault]

TTL = 10.0


def _params() -> list[object]:
    """The selected faults only (``FAULT_SET``): the others are not collected at all, and the run ends by
    saying which were left to ``make faults`` (see conftest.py), so nothing passes for a skipped test."""
    chosen = selected()
    return [
        pytest.param(fault, trial, id=f"{fault.name}-t{trial}")
        for fault in FAULTS
        if fault.name in chosen
        for trial in range(1, trials() + 1)
    ]


_cleared: list[Path] = []


def logs_folder(request: pytest.FixtureRequest) -> Path:
    """``.faults/<selection>/logs/<test id>``; the first trial of a session clears the selection's old logs."""
    root = report.REPORT_ROOT / selection_name() / "logs"
    if root not in _cleared:
        shutil.rmtree(root, ignore_errors=True)
        _cleared.append(root)
    name: str = request.node.callspec.id if hasattr(request.node, "callspec") else request.node.name
    return root / name


@pytest.fixture
def scenario(consul_binary: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    fault: Fault = request.node.callspec.params["fault"]
    stage = Scenario(
        tmp_path / "stage", consul_binary, ttl=TTL, lock_delay=lock_delay_override(), check_ttl=fault.check_ttl
    )
    try:
        yield stage
    finally:
        stage.close()
        stage.keep_logs(logs_folder(request))


@pytest.mark.parametrize(("fault", "trial"), _params())
def test_fault(fault: Fault, trial: int, scenario: Scenario, request: pytest.FixtureRequest) -> None:
    holder = scenario.start(fault=fault.name, trial=trial)
    fault.inject(scenario, holder)
    scenario.settle(at_least=fault.at_least)
    verdict = scenario.finish()
    report.RESULTS.append(
        report.TrialResult(
            fault=fault.name,
            trial=trial,
            ttl=scenario.ttl,
            lock_delay=scenario.lock_delay,
            ok=verdict.ok,
            figures=verdict.summary(),
            problems=verdict.problems(),
            logs=str(logs_folder(request)),
        )
    )
    assert verdict.ok, scenario.report(
        f"{fault.name} (trial {trial}, lock_delay {scenario.lock_delay:g}): {fault.what}"
    )
