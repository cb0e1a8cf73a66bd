"""The Consul fixtures themselves: ports, restart, and the three-server cluster used by fault tests."""

from __future__ import annotations

import pytest

from singleton.backends.consul import ConsulBackend
from singleton.errors import BackendUnavailable
from singleton.testing import ConsulAgent, ConsulCluster, ConsulNotFound, find_consul, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(1024 < p < 65536 for p in ports)


def test_find_consul_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: str) -> None:
    monkeypatch.setenv("CONSUL_BIN", f"{tmp_path}/missing-consul")
    with pytest.raises(ConsulNotFound, match="missing-consul"):
        find_consul()


def test_restarted_dev_agent_comes_back_empty(fresh_consul_agent: ConsulAgent) -> None:
    with ConsulBackend(fresh_consul_agent.settings(timeout=2)) as backend:
        session = backend.create_session(name="harness", ttl=10, lock_delay=0)
        fresh_consul_agent.stop()
        with pytest.raises(BackendUnavailable, match="did not answer"):
            backend.read("anything")
        fresh_consul_agent.start()
        assert backend.session_info(session) is None  # dev mode keeps nothing across a restart


def test_cluster_of_three_servers_elects_a_leader(consul_cluster: ConsulCluster, key_prefix: str) -> None:
    assert len(consul_cluster.agents) == 3
    leader = consul_cluster.leader()
    assert leader in consul_cluster.agents
    # A write through one server is read back through another: they form one cluster.
    first, second = consul_cluster.agents[0], consul_cluster.agents[1]
    with ConsulBackend(first.settings()) as writer, ConsulBackend(second.settings()) as reader:
        session = writer.create_session(name="cluster", ttl=10, lock_delay=0)
        assert writer.acquire(key_prefix + "k", session, b"cluster").acquired
        _, entry = reader.read(key_prefix + "k")
        assert entry is not None
        assert entry.session == session
        writer.destroy_session(session)
