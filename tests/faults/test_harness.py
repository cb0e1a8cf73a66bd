"""The fault harness itself: the proxy's partition and latency, client agents, restarts with data,
and the two ways Consul ends every session of a node (a client agent leaving, force-leave)."""

from __future__ import annotations

import http.client
import http.server
import json
import resource
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from singleton.testing import ConsulCluster, FaultProxy, free_ports
from singleton.testing._agent import _ephemeral_ports

# -- the proxy, in front of a small HTTP server of our own -------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(upstream: http.server.ThreadingHTTPServer) -> Iterator[FaultProxy]:
    with FaultProxy(f"127.0.0.1:{upstream.server_address[1]}") as started:
        yield started


def connection(proxy: FaultProxy, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/")
    return conn.getresponse().read()


def test_the_proxy_forwards(proxy: FaultProxy) -> None:
    conn = connection(proxy, 5)
    try:
        assert get(conn) == b"hello"
        assert get(conn) == b"hello"  # the same connection, kept alive
    finally:
        conn.close()
    assert proxy.accepted == 1


def test_a_partition_freezes_connections_and_a_heal_lets_them_go_on(proxy: FaultProxy) -> None:
    old = connection(proxy, 10)
    try:
        assert get(old) == b"hello"
        proxy.partition()
        assert proxy.partitioned
        new = connection(proxy, 0.5)
        try:
            with pytest.raises(TimeoutError):  # accepted, then nothing: no reset, no answer
                get(new)
        finally:
            new.close()
        threading.Timer(1.0, proxy.heal).start()
        began = time.monotonic()
        assert get(old) == b"hello"  # the request sent during the partition is answered after the heal
        assert time.monotonic() - began >= 0.8
        assert not proxy.partitioned
    finally:
        old.close()


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    conn = connection(proxy, 10)
    try:
        get(conn)
        proxy.latency = 0.4
        began = time.monotonic()
        assert get(conn) == b"hello"
        assert time.monotonic() - began >= 0.75  # there and back: twice the latency
        proxy.latency = 0
        began = time.monotonic()
        get(conn)
        assert time.monotonic() - began < 0.75
    finally:
        conn.close()
    with pytest.raises(ValueError, match="latency"):
        proxy.latency = -1


def test_reset_and_a_refusing_upstream_reset_the_client(proxy: FaultProxy) -> None:
    conn = connection(proxy, 5)
    try:
        get(conn)
        assert proxy.reset() == 1
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            get(conn)
    finally:
        conn.close()
    with FaultProxy(proxy.address) as nowhere:  # its upstream, the first proxy, is closed below
        proxy.close()
        refused = connection(nowhere, 5)
        try:
            with pytest.raises(ConnectionError):  # reset, or broken pipe if the reset came mid-request
                get(refused)
        finally:
            refused.close()


def test_an_idle_proxy_burns_no_cpu(proxy: FaultProxy) -> None:
    conn = connection(proxy, 5)
    try:
        get(conn)  # one open, idle connection
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert used < 0.2, f"{used:.3f}s of CPU in 1 s of idling"
    finally:
        conn.close()


def test_free_ports_are_not_in_the_range_outgoing_connections_take_theirs_from() -> None:
    ports = free_ports(24)
    assert len(set(ports)) == 24
    assert all(1024 < p < _ephemeral_ports()[0] for p in ports), ports


# -- a cluster with client agents ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(consul_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulCluster]:
    started = ConsulCluster(consul_binary, workdir=tmp_path_factory.mktemp("fault-cluster"), clients=["h1", "h2"])
    try:
        started.start()
        yield started
    finally:
        started.kill()


def put(url: str, body: object = None) -> object:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def session_on(agent_url: str) -> str:
    created = put(f"{agent_url}/v1/session/create", {"TTL": "30s", "LockDelay": "1s", "Checks": []})
    assert isinstance(created, dict)
    return str(created["ID"])


def session_exists(agent_url: str, session: str) -> bool:
    with urllib.request.urlopen(f"{agent_url}/v1/session/info/{session}", timeout=10) as response:
        return bool(json.loads(response.read() or b"null"))


def wait_until(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.consul
def test_client_agents_join_and_the_servers_keep_their_data(cluster: ConsulCluster, key_prefix: str) -> None:
    h1 = cluster.client("h1")
    assert h1.mode == "client"
    assert {a.mode for a in cluster.servers} == {"server"}
    assert cluster.servers[0].members()["h1"] == "alive"
    assert put(f"{h1.url}/v1/kv/{key_prefix}kept", b"yes") is True
    cluster.kill_servers()
    cluster.start_servers()  # with their data: the key is still there

    def kept() -> bool:
        try:
            with urllib.request.urlopen(f"{h1.url}/v1/kv/{key_prefix}kept?raw", timeout=10) as response:
                return bool(response.read() == b"yes")
        except urllib.error.HTTPError as exc:  # 500 while the agent reconnects to the new leader
            if exc.code != 500:
                raise
            return False

    assert wait_until(kept, 30)
    h1.reload()  # `consul reload` answers, and the agent stays up
    assert h1.running


@pytest.mark.consul
def test_a_client_agent_that_leaves_ends_the_sessions_of_its_node(cluster: ConsulCluster) -> None:
    h1, server = cluster.client("h1"), cluster.servers[0]
    session = session_on(h1.url)
    h1.stop()  # graceful: the agent leaves, Consul deregisters the node, its sessions end at once
    assert wait_until(lambda: not session_exists(server.url, session), 10)
    h1.start()  # and comes back with its data, on the same ports
    assert wait_until(lambda: server.members().get("h1") == "alive", 30)


@pytest.mark.consul
def test_force_leave_of_a_killed_agent_ends_the_sessions_of_its_node(cluster: ConsulCluster) -> None:
    h2, server = cluster.client("h2"), cluster.servers[0]
    session = session_on(h2.url)
    h2.kill()
    server.wait_member_status("h2", "failed", timeout=60)
    assert session_exists(server.url, session)  # a failed node keeps its sessions (they carry no checks)
    server.force_leave("h2")
    assert wait_until(lambda: not session_exists(server.url, session), 10)
    h2.restart(graceful=False)
    assert wait_until(lambda: server.members().get("h2") == "alive", 30)
