"""Real Consul agents for tests: a dev agent, or a cluster of three servers and its client agents, on loopback.

Each agent gets its own data directory and log file, binds only to 127.0.0.1, runs no DNS or gRPC
listener and never calls out (update checks off). An agent is a dev agent (``-dev``, everything in
memory), a server of a cluster, or a client agent joined to the servers (one per simulated host).

Failures are made for real: :meth:`ConsulAgent.kill` (SIGKILL), :meth:`ConsulAgent.stop` (graceful:
a client agent *leaves* the cluster, which deregisters its node and so ends every session of that
node; a server does not leave on SIGINT, as Consul's defaults have it), :meth:`ConsulAgent.pause`
(SIGSTOP: connections hang, as with a partition), :meth:`ConsulAgent.restart` (graceful or after a
SIGKILL; a server or client agent keeps its data, a dev agent comes back empty, on the same ports),
:meth:`ConsulAgent.reload` (``consul reload``) and :meth:`ConsulAgent.force_leave` (``consul
force-leave <node>`` run against this agent).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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

__all__ = ["MEMBER_STATUS", "ConsulAgent", "ConsulCluster", "ConsulNotFound", "find_consul", "free_ports"]

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


#: Where free_ports looks first: from here up to the kernel's ephemeral range.
_LOW_PORT = 10000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (``ip_local_port_range``)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _bind_both(port: int) -> list[socket.socket]:
    """TCP and UDP sockets bound to ``port`` on 127.0.0.1 (the caller closes them); OSError if either is taken."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))
    except OSError:
        tcp.close()
        udp.close()
        raise
    return [tcp, udp]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free for TCP and UDP on 127.0.0.1 right now.

    They are drawn at random from below the kernel's ephemeral range, which outgoing connections take
    their local ports from: a port chosen now and bound later by an agent (or bound again when it
    restarts) cannot meanwhile become the local port of some connection. Only where that range leaves
    no room are they asked of the kernel (port 0), as before.
    """
    ports: list[int] = []
    held: list[socket.socket] = []
    low, high = _LOW_PORT, _ephemeral_ports()[0] - 1
    rng = random.SystemRandom()
    try:
        attempts = 0
        while len(ports) < count and high - low > 1000 and attempts < 100 * count:
            attempts += 1
            port = rng.randint(low, high)
            if port in ports:
                continue
            try:
                held += _bind_both(port)
            except OSError:
                continue
            ports.append(port)
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            tcp.close()
            try:
                held += _bind_both(port)
            except OSError:
                continue
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


#: Serf member status codes of ``/v1/agent/members``.
MEMBER_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


class ConsulAgent:
    """One Consul agent process.

    A dev agent by default. With ``dev=False`` a server of a cluster (``join``, ``bootstrap_expect``),
    or with ``dev=False, server=False`` a client agent that joins the servers named by ``join``.
    ``ports`` gives the four ports (HTTP, Serf LAN, Serf WAN, server RPC); by default free ones are chosen.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        workdir: str | os.PathLike[str],
        node: str = "dev",
        dev: bool = True,
        server: bool = True,
        bootstrap_expect: int | None = None,
        join: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        token: str | None = None,
        ports: Sequence[int] | None = None,
    ) -> None:
        self.binary = binary or find_consul()
        #: The token the readiness checks use (for an agent started with ACLs on).
        self.token = token
        self.node = node
        self.dev = dev
        #: A server of a cluster (ignored for a dev agent, which is always a server of its own).
        self.server = server
        self.bootstrap_expect = bootstrap_expect
        self.join = list(join)
        self.extra_args = list(extra_args)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "agent.log"
        chosen = list(ports) if ports is not None else free_ports(4)
        if len(chosen) != 4:
            raise ValueError(f"ports must be four ports (http, serf lan, serf wan, server), got {ports!r}")
        self.http_port, self.serf_lan_port, self.serf_wan_port, self.server_port = chosen
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def mode(self) -> str:
        """``dev``, ``server`` or ``client``."""
        if self.dev:
            return "dev"
        return "server" if self.server else "client"

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
            if self.server:
                cmd += ["-server", "-hcl", "performance { raft_multiplier = 1 }"]
                if self.bootstrap_expect:
                    cmd.append(f"-bootstrap-expect={self.bootstrap_expect}")
            cmd.append("-disable-host-node-id")
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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gracefully (SIGINT), SIGKILL after ``timeout``.

        A client agent leaves the cluster first: Consul deregisters its node, which ends every session
        created through it at once. A server does not leave (Consul's ``skip_leave_on_interrupt``
        default): it stays a voter and comes back with its data.
        """
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

    def restart(self, timeout: float = 30.0, *, graceful: bool = True, wait: bool = True) -> ConsulAgent:
        """Stop (gracefully, or SIGKILL with ``graceful=False``) and start again on the same ports.

        A server or client agent keeps its data directory; a dev agent comes back empty.
        """
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(wait=wait, timeout=timeout)

    # -- operator commands ---------------------------------------------------------------------------

    def run_cli(self, *args: str, timeout: float = 30.0) -> str:
        """``consul <args>`` against this agent's HTTP API; returns its output, raises on a non-zero exit."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        env["CONSUL_HTTP_ADDR"] = self.address
        if self.token:
            env["CONSUL_HTTP_TOKEN"] = self.token
        done = subprocess.run(
            [self.binary, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"consul {' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")
        return done.stdout

    def reload(self) -> None:
        """``consul reload``: the agent re-reads its configuration, as an operator's config push does."""
        self.run_cli("reload")

    def force_leave(self, node: str, *, prune: bool = False) -> None:
        """``consul force-leave <node>`` against this agent (a server, usually): a failed node is made
        to have left, so Consul deregisters it and ends every session of that node."""
        self.run_cli("force-leave", *(["-prune"] if prune else []), node)

    def members(self) -> dict[str, str]:
        """Every LAN member this agent knows, by node name: ``alive``, ``leaving``, ``left`` or ``failed``."""
        raw = _http(f"{self.url}/v1/agent/members", token=self.token)
        return {str(m["Name"]): MEMBER_STATUS.get(int(m.get("Status", 0)), "none") for m in raw or []}

    def wait_member_status(self, node: str, status: str, timeout: float = 30.0) -> float:
        """Wait until this agent sees ``node`` in ``status`` (e.g. ``failed``); returns the seconds it took."""
        started = time.monotonic()
        seen = "unknown"
        while time.monotonic() - started < timeout:
            with contextlib.suppress(OSError, ValueError):
                seen = self.members().get(node, "absent")
                if seen == status:
                    return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"{self.node} still sees {node} as {seen}, not {status}, after {timeout:g}s")

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
    """Three (or ``size``) Consul servers on loopback, not in dev mode, each with its own ports and data dir.

    ``clients`` names client agents to start beside them (one per simulated host: a process talks to
    the agent of its host, whose node owns the sessions it creates). ``agents`` and ``servers`` are the
    servers; ``clients`` the client agents, in the order named. Every agent retry-joins every server,
    and the servers retry-join the clients too (see ``__init__``).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        workdir: str | os.PathLike[str],
        size: int = 3,
        clients: Sequence[str] = (),
    ) -> None:
        binary = binary or find_consul()
        root = Path(workdir)
        # All ports at once, so that no two agents of the cluster can be given the same one.
        ports = free_ports(4 * (size + len(clients)))
        self.agents: list[ConsulAgent] = []
        for i in range(size):
            self.agents.append(
                ConsulAgent(
                    binary,
                    workdir=root / f"s{i + 1}",
                    node=f"s{i + 1}",
                    dev=False,
                    bootstrap_expect=size,
                    ports=ports[4 * i : 4 * i + 4],
                )
            )
        for agent in self.agents:
            agent.join = [peer.serf_address for peer in self.agents if peer is not agent]
        self.clients: list[ConsulAgent] = []
        for j, node in enumerate(clients):
            first = 4 * (size + j)
            self.clients.append(
                ConsulAgent(
                    binary,
                    workdir=root / node,
                    node=node,
                    dev=False,
                    server=False,
                    join=[server.serf_address for server in self.agents],
                    ports=ports[first : first + 4],
                )
            )
        # Servers join the client agents too: after a restart of every server they then know the
        # clients before the first leader reconciles its catalog. Otherwise, whenever their Serf pool
        # has not re-learned a client by then, the leader reaps its node, which ends every session
        # of that node at once (a race inside Consul that a test cannot steer).
        for agent in self.agents:
            agent.join += [client.serf_address for client in self.clients]

    @property
    def servers(self) -> list[ConsulAgent]:
        return self.agents

    def client(self, node: str) -> ConsulAgent:
        """The client agent of ``node``."""
        for agent in self.clients:
            if agent.node == node:
                return agent
        raise KeyError(f"no client agent {node!r}; the cluster has {[a.node for a in self.clients]}")

    def start(self, timeout: float = 60.0) -> ConsulCluster:
        self.start_servers(timeout)
        for agent in self.clients:
            agent.start(wait=False)
        for agent in self.clients:
            agent.wait_ready(timeout)
        return self

    def start_servers(self, timeout: float = 60.0) -> None:
        """Start every server that is not running (with its data) and wait until they have a leader."""
        for agent in self.agents:
            agent.start(wait=False)
        for agent in self.agents:
            agent.wait_ready(timeout)

    def kill_servers(self) -> None:
        """SIGKILL every server: the cluster is gone at once; client agents stay up without servers."""
        for agent in self.agents:
            agent.kill()

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
        for agent in [*self.clients, *self.agents]:
            agent.stop()

    def kill(self) -> None:
        """SIGKILL every agent, clients first (a quick teardown that leaves nothing running)."""
        for agent in [*self.clients, *self.agents]:
            agent.kill()

    def __enter__(self) -> ConsulCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
