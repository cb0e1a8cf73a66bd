"""The fault suite's report: one row per fault over its trials, as Markdown and as JSON (under ``.faults/``)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Under the repository; git-ignored. Each selection (``ci``, ``all``, or ``custom``) has a folder of its own,
#: so that ``make test`` does not overwrite what ``make faults`` found.
REPORT_ROOT = Path(__file__).resolve().parents[2] / ".faults"


@dataclass
class TrialResult:
    fault: str
    trial: int
    ttl: float
    lock_delay: float
    ok: bool
    figures: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    logs: str = ""


#: Every trial run in this pytest session, in order.
RESULTS: list[TrialResult] = []


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """One row per (fault, lock_delay): what the report's table shows."""
    grouped: dict[tuple[str, float], list[TrialResult]] = {}
    for result in results:
        grouped.setdefault((result.fault, result.lock_delay), []).append(result)
    table = []
    for (fault, lock_delay), trials in grouped.items():
        margins = [t.figures["min_margin"] for t in trials if t.figures.get("min_margin") is not None]
        gaps = [t.figures["longest_gap"] for t in trials if t.figures.get("longest_gap") is not None]
        after = [t.figures["leader_after_heal"] for t in trials if t.figures.get("leader_after_heal") is not None]
        table.append(
            {
                "fault": fault,
                "ttl": trials[0].ttl,
                "lock_delay": lock_delay,
                "trials": len(trials),
                "passed": sum(1 for t in trials if t.ok),
                "overlaps": sum(t.figures.get("overlaps", 0) for t in trials),
                "late_tokens": sum(t.figures.get("late_tokens", 0) for t in trials),
                "min_margin": min(margins) if margins else None,
                "longest_gap": max(gaps) if gaps else None,
                "settled": sum(1 for t in trials if t.figures.get("settled")),
                "max_leader_after_heal": max(after) if after else None,
                "tracebacks": sum(t.figures.get("tracebacks", 0) for t in trials),
            }
        )
    return table


def markdown(results: Sequence[TrialResult]) -> str:
    lines = [
        "| fault | lock-delay (s) | trials | passed | overlaps | late tokens | smallest margin (s) "
        "| longest gap (s) | settled | leader after heal, max (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows(results):
        lines.append(
            f"| {row['fault']} | {row['lock_delay']:g} | {row['trials']} | {row['passed']} | {row['overlaps']} "
            f"| {row['late_tokens']} | {_seconds(row['min_margin'])} | {_seconds(row['longest_gap'])} "
            f"| {row['settled']}/{row['trials']} | {_seconds(row['max_leader_after_heal'])} |"
        )
    failures = [r for r in results if not r.ok]
    if failures:
        lines += ["", "Failed trials:", ""]
        for result in failures:
            lines.append(f"* {result.fault} trial {result.trial} (lock-delay {result.lock_delay:g}): {result.logs}")
            lines += [f"  * {problem.splitlines()[0]}" for problem in result.problems[:5]]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write(results: Sequence[TrialResult], folder: Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.json`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        f"Fault suite, {datetime.datetime.now().isoformat(timespec='seconds')}, commit {_commit()}, "
        f"{os.cpu_count()} cores. Margins: the next holder's first start minus the previous token's firing "
        f"(smallest over the trials); gaps: the longest time without a leader (largest over the trials).\n\n"
    )
    md = folder / "report.md"
    md.write_text(header + markdown(results))
    js = folder / "report.json"
    js.write_text(json.dumps({"rows": rows(results), "trials": [asdict(r) for r in results]}, indent=2) + "\n")
    return md, js
