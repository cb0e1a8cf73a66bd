"""Helpers for testing code that uses ``singleton`` against a real Consul agent.

``ConsulAgent`` and ``ConsulCluster`` start real agents on free loopback ports;
``singleton.testing.pytest_plugin`` turns them into pytest fixtures (add
``pytest_plugins = ["singleton.testing.pytest_plugin"]`` to your ``conftest.py``).
"""

from singleton.testing._agent import ConsulAgent, ConsulCluster, ConsulNotFound, find_consul, free_ports

__all__ = ["ConsulAgent", "ConsulCluster", "ConsulNotFound", "find_consul", "free_ports"]
