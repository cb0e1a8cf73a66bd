"""pytest fixtures that start real Consul agents.

``consul_agent``        a dev agent shared by the whole session (started on first use, stopped at the end)
``consul_settings``     ConsulSettings pointing at it
``consul_backend``      a ConsulBackend on it (closed after the test), to look at keys as an operator would
``key_prefix``          a Consul key prefix of the test's own, so tests never see each other's keys
``fresh_consul_agent``  a dev agent of the test's own, for tests that stop, pause or restart it
``consul_cluster``      three servers (not dev mode) shared by the session, for fault tests

When no Consul binary is found the tests that need one are skipped with the reason, except when the
``CI`` environment variable is true: there a missing Consul fails them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings
from singleton.testing._agent import ConsulAgent, ConsulCluster, ConsulNotFound, find_consul


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def consul_binary() -> str:
    try:
        return find_consul()
    except ConsulNotFound as exc:
        if _under_ci():
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def consul_agent(consul_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_binary, workdir=tmp_path_factory.mktemp("consul-dev"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul_settings(consul_agent: ConsulAgent) -> ConsulSettings:
    if not consul_agent.running:  # a test stopped the shared agent: bring it back for the next one
        consul_agent.start()
    return consul_agent.settings()


@pytest.fixture
def consul_backend(consul_settings: ConsulSettings) -> Iterator[ConsulBackend]:
    with ConsulBackend(consul_settings) as backend:
        yield backend


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"test/{name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def fresh_consul_agent(consul_binary: str, tmp_path: os.PathLike[str]) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_binary, workdir=os.path.join(tmp_path, "consul"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="session")
def consul_cluster(consul_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulCluster]:
    cluster = ConsulCluster(consul_binary, workdir=tmp_path_factory.mktemp("consul-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
