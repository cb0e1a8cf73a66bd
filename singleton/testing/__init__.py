"""Helpers for testing code that uses ``singleton`` against a real Consul agent.

``ConsulAgent`` and ``ConsulCluster`` start real agents on free loopback ports (a dev agent, or three
servers with a client agent per simulated host); ``FaultProxy`` stands between a process and its
agent and can cut or slow the link. ``singleton.testing.pytest_plugin`` turns them into pytest
fixtures (add ``pytest_plugins = ["singleton.testing.pytest_plugin"]`` to your ``conftest.py``).
"""

from singleton.testing._agent import ConsulAgent, ConsulCluster, ConsulNotFound, find_consul, free_ports
from singleton.testing._proxy import FaultProxy

__all__ = ["ConsulAgent", "ConsulCluster", "ConsulNotFound", "FaultProxy", "find_consul", "free_ports"]
