"""Real Consul agents for tests: a dev agent, or a cluster of three servers, on free loopback ports.

Each agent gets its own data directory and log file, binds only to 127.0.0.1, runs no DNS or gRPC
listener and never calls out (update checks off). Failures are made for real: :meth:`ConsulAgent.kill`
(SIGKILL), :meth:`ConsulAgent.stop` (graceful), :meth:`ConsulAgent.pause` (SIGSTOP: connections hang,
as with a partition) and :meth:`ConsulAgent.restart` (a dev agent comes back empty, on the same ports).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from singleton.config import ConsulSettings

__all__ = ["ConsulAgent", "ConsulCluster", "ConsulNotFound", "find_consul", "free_ports"]

_NO_CALLS_OUT = "disable_update_check = true"


class ConsulNotFound(RuntimeError):
    """No Consul binary was found; the message says where it looked and how to get one."""


def find_consul(explicit: str | os.PathLike[str] | None = None) -> str:
    """The path of a ``consul`` binary: ``explicit``, ``$CONSUL_BIN``, ``consul`` on PATH, or the project cache.

    The project cache is ``.cache/consul/usr/bin/consul`` in the current directory or a parent of it,
    which ``scripts/get-consul`` fills.
    """
    candidates: list[str] = []
    if explicit:
        candidates.append(os.fspath(explicit))
    elif os.environ.get("CONSUL_BIN"):
        candidates.append(os.environ["CONSUL_BIN"])
    else:
        on_path = shutil.which("consul")
        if on_path:
            candidates.append(on_path)
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            candidates.append(str(folder / ".cache" / "consul" / "usr" / "bin" / "consul"))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    where = candidates[0] if explicit or os.environ.get("CONSUL_BIN") else "CONSUL_BIN, PATH and .cache/consul"
    raise ConsulNotFound(
        f"no Consul binary found (looked in {where}); run scripts/get-consul, or set CONSUL_BIN to a consul binary"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free for TCP and UDP on 127.0.0.1 right now."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                tcp.close()
                udp.close()
                continue
            held += [tcp, udp]
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _http(url: str, timeout: float = 2.0, token: str | None = None) -> Any:
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
        return json.loads(response.read() or b"null")


class ConsulAgent:
    """One Consul agent process. A dev agent by default; a server of a cluster with ``join``/``bootstrap_expect``."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        workdir: str | os.PathLike[str],
        node: str = "dev",
        dev: bool = True,
        bootstrap_expect: int | None = None,
        join: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        token: str | None = None,
    ) -> None:
        self.binary = binary or find_consul()
        #: The token the readiness checks use (for an agent started with ACLs on).
        self.token = token
        self.node = node
        self.dev = dev
        self.bootstrap_expect = bootstrap_expect
        self.join = list(join)
        self.extra_args = list(extra_args)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "agent.log"
        self.http_port, self.serf_lan_port, self.serf_wan_port, self.server_port = free_ports(4)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of the HTTP API, as CONSUL_HTTP_ADDR takes it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def serf_address(self) -> str:
        return f"127.0.0.1:{self.serf_lan_port}"

    def settings(self, **overrides: Any) -> ConsulSettings:
        return ConsulSettings(host="127.0.0.1", port=self.http_port, **overrides)

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            "agent",
            f"-node={self.node}",
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            "-advertise=127.0.0.1",
            f"-http-port={self.http_port}",
            "-dns-port=-1",
            "-grpc-port=-1",
            f"-serf-lan-port={self.serf_lan_port}",
            f"-serf-wan-port={self.serf_wan_port}",
            f"-server-port={self.server_port}",
            f"-data-dir={self.data_dir}",
            "-log-level=info",
            "-hcl",
            _NO_CALLS_OUT,
        ]
        if self.dev:
            cmd.append("-dev")
        else:
            cmd += ["-server", "-disable-host-node-id", "-hcl", "performance { raft_multiplier = 1 }"]
            if self.bootstrap_expect:
                cmd.append(f"-bootstrap-expect={self.bootstrap_expect}")
            cmd += [f"-retry-join={peer}" for peer in self.join]
            cmd += ["-retry-interval=1s"]
        return cmd + self.extra_args

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True, timeout: float = 30.0) -> ConsulAgent:
        if self.running:
            return self
        if self.dev and self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a dev agent always comes back empty
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        log.write(f"\n=== start {self.starts + 1}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the agent knows a cluster leader and has registered its own node (sessions need it)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"consul agent {self.node} exited during start-up:\n{self.log_tail()}")
            try:
                leader = _http(f"{self.url}/v1/status/leader", token=self.token)
                if leader and _http(f"{self.url}/v1/catalog/node/{self.node}", token=self.token):
                    return
                last = "no leader or node registration yet"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"consul agent {self.node} not ready after {timeout:g}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gracefully (SIGINT: the agent leaves the cluster), SIGKILL after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the agent is gone at once, without leaving the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the agent keeps its sockets but answers nothing, like a network partition."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def restart(self, timeout: float = 30.0) -> ConsulAgent:
        """Stop and start again on the same ports (a dev agent loses all its data)."""
        self.stop()
        return self.start(timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ConsulAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ConsulCluster:
    """Three (or ``size``) Consul servers on loopback, not in dev mode, each with its own ports and data dir."""

    def __init__(self, binary: str | None = None, *, workdir: str | os.PathLike[str], size: int = 3) -> None:
        binary = binary or find_consul()
        root = Path(workdir)
        self.agents: list[ConsulAgent] = []
        for i in range(size):
            self.agents.append(
                ConsulAgent(binary, workdir=root / f"s{i + 1}", node=f"s{i + 1}", dev=False, bootstrap_expect=size)
            )
        for agent in self.agents:
            agent.join = [peer.serf_address for peer in self.agents if peer is not agent]

    def start(self, timeout: float = 60.0) -> ConsulCluster:
        for agent in self.agents:
            agent.start(wait=False)
        for agent in self.agents:
            agent.wait_ready(timeout)
        return self

    def leader(self) -> ConsulAgent:
        """The server that is the Raft leader now."""
        for agent in self.agents:
            if not agent.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                leader = _http(f"{agent.url}/v1/status/leader")
                for candidate in self.agents:
                    if leader == f"127.0.0.1:{candidate.server_port}":
                        return candidate
        raise RuntimeError("the cluster has no leader")

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def __enter__(self) -> ConsulCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
