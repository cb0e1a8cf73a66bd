"""Shared by the benchmarks: a private Consul dev agent, percentiles, and the machine's description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from singleton.testing import ConsulAgent, find_consul


@contextmanager
def dev_agent(extra_args: list[str] | None = None) -> Iterator[ConsulAgent]:
    """A Consul dev agent of the benchmark's own, on free loopback ports, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp:
        agent = ConsulAgent(find_consul(), workdir=Path(tmp) / "consul", extra_args=extra_args or [])
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


def machine() -> str:
    version = subprocess.run([find_consul(), "version"], capture_output=True, text=True).stdout.split("\n")[0]
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {version}, agent in -dev mode on loopback"
    )


def percentiles(values: list[float]) -> str:
    """p50 / p95 / max in milliseconds."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:6.2f} ms   p95 {cuts[94] * 1000:6.2f} ms   max {max(values) * 1000:6.2f} ms"
