# -*- test-case-name: txconsul.test.dns.test_integration -*-
"""
A real agent's DNS port over real sockets: ``twisted.names.client`` over UDP
and TCP, a recursor behind it, and ``dig`` where it is installed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import reactor as _reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import succeed
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names import client, common, dns, error, server
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.agent.agent import Agent
from txconsul.testing.agent import start_agent

reactor: Any = _reactor


class StaticResolver(common.ResolverBase):
    """One A record for ``www.example.com``: the upstream of the recursor tests."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        if name.lower() == b"www.example.com" and type in (dns.A, dns.ALL_RECORDS):
            rr = dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A("192.0.2.7", 60), True)
            return succeed(([rr], [], []))
        from twisted.internet.defer import fail

        return fail(dns.AuthoritativeDomainError(name))


def dig_or_skip() -> str:
    path = shutil.which("dig")
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("dig is missing: .ci/run installs the Debian package dnsutils")
        raise SkipTest("dig is not installed (Debian package dnsutils)")
    return path


class AgentDNSTests(TestCase):
    timeout = 30

    async def start(self, **flags: Any) -> Agent:
        agent = await start_agent(self, reactor, **flags)
        await agent.consensus.apply(
            {
                "Type": "register",
                "Request": {
                    "Node": "node1",
                    "Address": "127.0.0.1",
                    "Service": {"ID": "redis", "Service": "redis", "Tags": ["slave"], "Port": 8000},
                },
            }
        )
        for i in range(30):
            await agent.consensus.apply(
                {
                    "Type": "register",
                    "Request": {
                        "Node": f"web-node-{i}",
                        "Address": f"10.0.0.{i + 1}",
                        "Service": {"Service": "web", "Port": 80},
                    },
                }
            )
        assert agent.dns is not None
        self.address = agent.dns.address()
        self.resolver = client.Resolver(servers=[self.address], reactor=reactor)
        return agent

    async def test_talk_example_over_udp(self) -> None:
        await self.start()
        answers, _, additional = await self.resolver.lookupService("slave.redis.service.consul")
        [srv] = answers
        self.assertEqual(
            (srv.payload.port, srv.payload.target.name), (8000, b"node1.node.dc1.consul")
        )
        self.assertEqual(
            [rr.payload.dottedQuad() for rr in additional if rr.type == dns.A], ["127.0.0.1"]
        )

    async def test_node_lookup_over_udp(self) -> None:
        await self.start()
        answers, _, _ = await self.resolver.lookupAddress("node1.node.consul")
        self.assertEqual([rr.payload.dottedQuad() for rr in answers], ["127.0.0.1"])

    async def test_nxdomain_over_udp(self) -> None:
        await self.start()
        with self.assertRaises(error.DomainError):
            await self.resolver.lookupAddress("nosuch.service.consul")
        reply = await self.resolver.queryUDP([dns.Query("nosuch.service.consul")])
        self.assertEqual(reply.rCode, dns.ENAME)
        self.assertEqual([rr.type for rr in reply.authority], [dns.SOA])

    async def test_udp_is_limited_and_tcp_gets_everything(self) -> None:
        await self.start()
        udp = await self.resolver.queryUDP([dns.Query("web.service.consul", dns.SRV)])
        self.assertEqual(len(udp.answers), 3)
        tcp = await self.resolver.queryTCP([dns.Query("web.service.consul", dns.SRV)])
        self.assertEqual((len(tcp.answers), len(tcp.additional)), (30, 30))

    async def test_names_outside_are_refused_without_recursors(self) -> None:
        await self.start()
        reply = await self.resolver.queryUDP([dns.Query("www.example.com")])
        self.assertEqual(reply.rCode, dns.EREFUSED)

    async def test_names_outside_go_to_the_recursors(self) -> None:
        upstream = server.DNSServerFactory(authorities=[StaticResolver()])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(upstream), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # The first recursor answers nothing at all; the second one is asked next.
        dead = reactor.listenUDP(0, dns.DNSDatagramProtocol(None), interface="127.0.0.1")
        dead_port = dead.getHost().port
        await dead.stopListening()
        await self.start(
            recursors=[f"127.0.0.1:{dead_port}", f"127.0.0.1:{port.getHost().port}"],
            dns_config={"recursor_timeout": "200ms"},
        )
        reply = await self.resolver.queryUDP([dns.Query("www.example.com")])
        self.assertEqual((reply.rCode, reply.recAv, reply.auth), (dns.OK, 1, 0))
        self.assertEqual([rr.payload.dottedQuad() for rr in reply.answers], ["192.0.2.7"])
        reply = await self.resolver.queryUDP([dns.Query("nosuch.example.com")])
        self.assertEqual(reply.rCode, dns.ENAME)

    async def dig(self, *args: str) -> str:
        path = dig_or_skip()
        host, port = self.address
        out, err, code = await getProcessOutputAndValue(
            path, ["@" + host, "-p", str(port), "+time=2", "+tries=1", *args], reactor=reactor
        )
        self.assertEqual(code, 0, err)
        return out.decode()

    async def test_dig_talk_example(self) -> None:
        await self.start()
        out = await self.dig("slave.redis.service.consul", "SRV")
        self.assertIn("status: NOERROR", out)
        self.assertIn("flags: qr aa rd;", out)
        self.assertRegex(
            out,
            r"slave\.redis\.service\.consul\.\s+0\s+IN\s+SRV\s+1 1 8000 node1\.node\.dc1\.consul\.",
        )
        self.assertRegex(out, r"node1\.node\.dc1\.consul\.\s+0\s+IN\s+A\s+127\.0\.0\.1")

    async def test_dig_nxdomain_soa_and_tcp(self) -> None:
        await self.start()
        out = await self.dig("nosuch.service.consul", "A")
        self.assertIn("status: NXDOMAIN", out)
        self.assertRegex(out, r"consul\.\s+0\s+IN\s+SOA\s+ns\.consul\. hostmaster\.consul\.")
        out = await self.dig("+tcp", "+noedns", "web.service.consul", "SRV")
        self.assertIn("ANSWER: 30,", out)
        out = await self.dig("+noedns", "web.service.consul", "A")
        self.assertIn("ANSWER: 3,", out)
        out = await self.dig("-x", "127.0.0.1")
        self.assertIn("node1.node.dc1.consul.", out)
