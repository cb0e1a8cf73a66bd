"""The fault suite's selection (``FAULT_SET``, ``FAULT_TRIALS``) and its report (``.faults/``)."""

from __future__ import annotations

import pytest

from . import report
from .faults import ci_faults, selection_name, selection_summary


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: a fault-injection scenario against a real Consul cluster")


def pytest_report_header(config: pytest.Config) -> str:
    return selection_summary()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not report.RESULTS:
        return
    md, _ = report.write(report.RESULTS, report.REPORT_ROOT / selection_name())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("-", f"fault report: {md} (CI set: {', '.join(ci_faults())})")
        reporter.write_line(md.read_text())
