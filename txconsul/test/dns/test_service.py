# -*- test-case-name: txconsul.test.dns.test_service -*-
"""The agent's DNS child service: on by default, off with port -1."""

import random

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.agent.agent import Agent
from txconsul.config import load


class DNSServiceTests(SynchronousTestCase):
    def agent(self, **flags) -> Agent:
        self.reactor = MemoryReactorClock()
        agent = Agent(
            load({"dev": True, "node_name": "n1", **flags}), self.reactor, random.Random(0)
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        return agent

    def test_agent_serves_dns_on_the_client_address(self) -> None:
        agent = self.agent(client_addr="127.0.0.2", ports={"dns": 8653})
        assert agent.dns is not None
        self.assertEqual(agent.getServiceNamed("dns"), agent.dns)
        self.assertEqual(agent.dns.address()[1], 8653)  # a memory port says 0.0.0.0
        self.assertIn((8653, "127.0.0.2"), [(p[0], p[3]) for p in self.reactor.tcpServers])

    def test_port_minus_one_turns_dns_off(self) -> None:
        agent = self.agent(ports={"dns": -1})
        self.assertIsNone(agent.dns)
        self.assertNotIn(8600, [p[0] for p in self.reactor.tcpServers])
