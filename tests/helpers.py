"""Shared test helpers: a fake clock and a per-process view of a shared backend that can be partitioned."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.backends.memory import MemoryBackend
from singleton.config import LeaseSpec, Settings
from singleton.election import Elector
from singleton.errors import BackendUnavailable
from singleton.testing import ConsulAgent


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Partitionable(Backend):
    """One process's link to a shared backend: ``partitioned = True`` cuts only this process off."""

    name = "partitionable"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.partitioned = False

    def _check(self) -> None:
        if self.partitioned:
            raise BackendUnavailable("partitioned from the backend")

    @property
    def supports_checks(self) -> bool:  # type: ignore[override]
        return self.inner.supports_checks

    def create_session(self, *, name: str, ttl: float, lock_delay: float, checks: Sequence[str] = ()) -> str:
        self._check()
        return self.inner.create_session(name=name, ttl=ttl, lock_delay=lock_delay, checks=checks)

    def register_check(self, check_id: str, *, service_id: str, name: str, ttl: float) -> None:
        self._check()
        self.inner.register_check(check_id, service_id=service_id, name=name, ttl=ttl)

    def pass_check(self, check_id: str) -> None:
        self._check()
        self.inner.pass_check(check_id)

    def deregister_check(self, service_id: str) -> None:
        self._check()
        self.inner.deregister_check(service_id)

    def renew_session(self, session_id: str) -> None:
        self._check()
        self.inner.renew_session(session_id)

    def destroy_session(self, session_id: str) -> None:
        self._check()
        self.inner.destroy_session(session_id)

    def session_info(self, session_id: str) -> SessionInfo | None:
        self._check()
        return self.inner.session_info(session_id)

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        self._check()
        return self.inner.acquire(key, session_id, value, flags)

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        self._check()
        return self.inner.release(key, session_id, value)

    def put(self, key: str, value: bytes) -> None:
        self._check()
        self.inner.put(key, value)

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        self._check()
        return self.inner.delete(key, cas=cas)

    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        self._check()
        return self.inner.read(key)

    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        self._check()
        return self.inner.watch(key, index, wait)

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        self._check()
        return self.inner.watch_prefix(prefix, index, wait)

    def list_keys(self, prefix: str) -> list[KeyInfo]:
        self._check()
        return self.inner.list_keys(prefix)


def memory_elector(
    backend: Backend,
    clock: Callable[[], float] = time.monotonic,
    *,
    identity: str = "host-a:1",
    ttl: float = 15,
    lock_delay: float | None = None,
    margin: float | None = None,
    check_ttl: float | None = None,
    inline: bool = True,
    wall_clock: Callable[[], float] = time.time,
    **settings: object,
) -> Elector:
    """An elector on ``backend``: inline (driven by step(), for fake clocks) or threaded."""
    config = Settings(
        backend="memory://",
        lease=LeaseSpec(ttl=ttl, lock_delay=lock_delay, margin=margin, check_ttl=check_ttl),
        identity=identity,
        **settings,  # type: ignore[arg-type]
    )
    return Elector(
        config,
        backend=backend,
        clock=clock,
        wall_clock=wall_clock,
        watch="inline" if inline else "thread",
        rng=random.Random(7),
    )


def shared_memory(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


def in_fork(report: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Fork; the child calls ``report()`` and sends back what it returns. Returns (child pid, report)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, json.dumps(report()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    return pid, result


#: The master token of the agents :func:`acl_agent` starts.
ROOT_TOKEN = "root-token"


def acl_agent(binary: str, workdir: Path) -> ConsulAgent:
    """A dev agent with ACLs on and a default-deny policy; :data:`ROOT_TOKEN` may do anything."""
    acl = f'acl {{ enabled = true, default_policy = "deny", tokens {{ master = "{ROOT_TOKEN}", agent = "{ROOT_TOKEN}" }} }}'
    return ConsulAgent(binary, workdir=workdir, extra_args=["-hcl", acl], token=ROOT_TOKEN).start()


def acl_token(agent: ConsulAgent, rules: str) -> str:
    """A new token of ``agent`` allowed ``rules`` (HCL) and nothing more; returns its secret."""
    name = f"policy-{uuid.uuid4().hex[:8]}"

    def put(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{agent.url}{path}",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"X-Consul-Token": ROOT_TOKEN},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # loopback only
            return json.loads(answer.read())

    put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return str(put("/v1/acl/token", {"Policies": [{"Name": name}]})["SecretID"])
