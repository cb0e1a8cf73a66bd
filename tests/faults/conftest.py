"""The fault suite's selection (``FAULT_SET``, ``FAULT_TRIALS``) and its report (``.faults/<selection>/``).

The selection is said in the header (when tests/faults is named on the command line) and, whenever
fault tests were collected, at the end of the run with the report's table: what was not run is
skipped with a reason, never silently.
"""

from __future__ import annotations

import pytest

from . import report
from .faults import selection_name, selection_summary

_collected: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: a fault-injection scenario against a real Consul cluster")


def pytest_report_header(config: pytest.Config) -> str:
    return selection_summary()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _collected.append(sum(1 for item in items if item.get_closest_marker("fault") is not None))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and any(_collected):
        reporter.write_sep("-", "fault suite")
        reporter.write_line(selection_summary())
    if not report.RESULTS:
        return
    md, _ = report.write(report.RESULTS, report.REPORT_ROOT / selection_name())
    if reporter is not None:
        reporter.write_line(f"report: {md}")
        reporter.write_line(md.read_text())
