"""
Consul's serf tags as another agent sees them (``/v1/agent/members`` through
py-consul), and the ``expect`` tag read back when servers bootstrap.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from txconsul.agent.agent import Agent
from txconsul.agent.servers import ServerInfo, Servers
from txconsul.gossip.serf import MemberStatus
from txconsul.test.agent.support import ClusterTestCase, lan, server_port
from txconsul.testing.agent import api_call

BUILD = re.compile(r"^\d+\.\d+\.\d+:[0-9a-z]{8}$")  # <version>:<8 chars of revision>


def wan(agent: Agent) -> str:
    assert agent.membership.wan is not None
    return "127.0.0.1:%d" % agent.membership.wan.gossip.address()[1]


class TagTests(ClusterTestCase):
    async def members(self, agent: Agent, wan: bool = False) -> dict[str, dict[str, str]]:
        """Each member's tags, by name, as py-consul reads them from ``agent``."""
        listing = await self.call(self.py_consul(agent).agent.members, wan=wan)
        return {m["Name"]: m["Tags"] for m in listing if m["Status"] == 1}

    def expected(self, agent: Agent, **more: str) -> dict[str, str]:
        tags = {
            "role": "consul" if agent.config.server else "node",
            "dc": "dc1",
            "segment": "",
            "id": agent.node_id,
            "vsn": "2",
            "vsn_min": "2",
            "vsn_max": "3",
        }
        if agent.config.server:
            tags.update(raft_vsn="3", port=str(server_port(agent)), acls="0")
        return {**tags, **more}

    def assertTags(self, got: dict[str, str], want: dict[str, str]) -> None:
        got = dict(got)
        self.assertRegex(got.pop("build"), BUILD)
        self.assertEqual(got, want)

    async def test_clients_and_servers_publish_consuls_tags_on_lan_and_wan(self) -> None:
        s1 = self.server("s1", bootstrap_expect=0, bootstrap=True)
        await s1.when_ready()
        s2 = self.server("s2", start_join=[lan(s1)])  # bootstrap_expect 3
        code, _ = await api_call(s2, "PUT", f"/v1/agent/join/{wan(s1)}?wan=1")
        self.assertEqual(code, 200)
        c1 = await self.client("c1", [s1])

        async def everyone_alive() -> bool:
            return set(await self.members(s1)) == {"s1", "s2", "c1"} and set(
                await self.members(s1, wan=True)
            ) == {"s1.dc1", "s2.dc1"}

        await self.wait_for(everyone_alive, 30.0)
        lan_tags = await self.members(s1)
        wan_tags = await self.members(s1, wan=True)
        self.assertTags(lan_tags["c1"], self.expected(c1))
        self.assertTags(
            lan_tags["s2"], self.expected(s2, expect="3", wan_join_port=wan(s2).split(":")[1])
        )
        self.assertTags(wan_tags["s2.dc1"], self.expected(s2, expect="3"))  # no wan_join_port
        # and the bootstrap server, seen from the other server
        self.assertTags(
            (await self.members(s2))["s1"],
            self.expected(s1, bootstrap="1", wan_join_port=wan(s1).split(":")[1]),
        )
        self.assertTags(
            (await self.members(s2, wan=True))["s1.dc1"], self.expected(s1, bootstrap="1")
        )


class ExpectTagTests(ClusterTestCase):
    async def test_servers_that_expect_different_numbers_refuse_to_bootstrap(self) -> None:
        errors: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_format", "").startswith("not bootstrapping"):
                errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        s1 = self.server("s1")
        s2 = self.server("s2", start_join=[lan(s1)])
        s3 = self.server("s3", bootstrap_expect=2, start_join=[lan(s1)])
        servers = [s1, s2, s3]

        def refused_by(agent: Agent) -> list[dict[str, Any]]:
            return [e for e in errors if e.get("log_source") is agent.servers]

        await self.wait_for(lambda: all(refused_by(a) for a in servers), 30.0)
        self.assertEqual([a.servers.node for a in servers if a.servers], [None, None, None])
        self.assertEqual([a.consensus.leader_address() for a in servers], ["", "", ""])
        for event in errors:
            self.assertEqual(event["log_level"], LogLevel.error)
            self.assertNotIn("log_failure", event)
        self.assertEqual(refused_by(s1)[0]["member"], "s3")
        self.assertIn("expects 2 servers, this one 3", refused_by(s1)[0]["why"])
        self.assertIn(refused_by(s3)[0]["member"], {"s1", "s2"})
        self.assertIn("expects 3 servers, this one 2", refused_by(s3)[0]["why"])
        # logged once per conflicting member, not at every check
        self.assertEqual(len(refused_by(s1)), 1)


class BootstrapRefusalRuleTests(SynchronousTestCase):
    """The rule alone: which member stops a ``bootstrap_expect`` server from bootstrapping."""

    def refusal(self, expect: int, *servers: ServerInfo) -> tuple[str, str] | None:
        holder = SimpleNamespace(
            _agent=SimpleNamespace(config=SimpleNamespace(bootstrap_expect=expect))
        )
        return Servers._bootstrap_refusal(holder, list(servers))  # type: ignore[arg-type]

    def server(self, name: str, expect: int = 0, bootstrap: bool = False) -> ServerInfo:
        return ServerInfo(
            name, name, f"127.0.0.1:{len(name)}", MemberStatus.ALIVE, bootstrap, expect
        )

    def test_the_same_expect_or_none_at_all_is_no_conflict(self) -> None:
        self.assertIsNone(self.refusal(3, self.server("s1", 3), self.server("s2", 0)))

    def test_another_expect_is_refused_naming_the_member(self) -> None:
        got = self.refusal(3, self.server("s1", 3), self.server("s2", 5))
        self.assertEqual(
            got,
            ("s2", "it expects 5 servers, this one 3: all servers should expect the same number"),
        )

    def test_a_member_in_bootstrap_mode_is_refused(self) -> None:
        got = self.refusal(3, self.server("s1", 3), self.server("s0", bootstrap=True))
        self.assertEqual(got, ("s0", "it is in bootstrap mode: bootstrap_expect disabled"))
