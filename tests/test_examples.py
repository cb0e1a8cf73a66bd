"""The examples without an agent to talk to: one line saying how to start one, never a traceback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from singleton.testing import free_ports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["apscheduler_background.py", "apscheduler_asyncio.py", "apscheduler_gunicorn.py"])
def test_an_example_without_an_agent_says_how_to_start_one(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_"))}
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{free_ports(1)[0]}"  # nobody listens there
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    if script == "apscheduler_gunicorn.py" and importlib.util.find_spec("flask") is None:
        assert done.returncode == 1
        assert "pip install 'consul-singleton[examples]'" in lines[0]
        return
    assert done.returncode == 69, done.stderr
    assert lines[0].startswith(f"{script}: no Consul agent answers at http://{env['CONSUL_HTTP_ADDR']}"), lines[0]
    assert "consul agent -dev" in lines[0]
