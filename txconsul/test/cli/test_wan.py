"""
``txconsul members -wan``, ``join -wan`` and ``force-leave -wan`` (and
``PUT /v1/agent/force-leave/<node>?wan``) against two real server agents of
different datacenters.
"""

from __future__ import annotations

from twisted.internet import reactor  # noqa: TID251 (real-socket test)

from txconsul.agent.agent import Agent
from txconsul.test.cli.support import AgentTestCase, Result, run_cli
from txconsul.testing.agent import api_call, http_address, start_agent
from txconsul.testing.polling import poll_until

FAST = {"probe_interval": "100ms", "probe_timeout": "50ms", "gossip_interval": "20ms"}


def wan_port(agent: Agent) -> int:
    assert agent.membership.wan is not None
    return agent.membership.wan.gossip.address()[1]


def rows(listing: str) -> dict[str, list[str]]:
    """The rows of a ``members`` table by node name (the header left out)."""
    return {line.split()[0]: line.split() for line in listing.splitlines()[1:]}


class WANCommandTests(AgentTestCase):
    timeout = 60

    async def setUp(self) -> None:
        await self.start(node_name="s1", gossip_lan=FAST, gossip_wan=FAST)
        self.s2 = await start_agent(
            self, reactor, node_name="s2", datacenter="dc2", gossip_lan=FAST, gossip_wan=FAST
        )

    async def on_s2(self, *argv: str) -> Result:
        return await run_cli(list(argv), {"CONSUL_HTTP_ADDR": http_address(self.s2)})

    async def wan_status(self, node: str) -> str | None:
        """``node``'s status in s1's ``members -wan`` (None when not listed)."""
        row = rows((await self.cli("members", "-wan")).out).get(node)
        return row[2] if row else None

    async def wait_for_wan_status(self, node: str, status: str | None) -> None:
        async def reached() -> bool:
            return await self.wan_status(node) == status

        if not await poll_until(reactor, reached, 20.0):
            self.fail(f"{node} never became {status} in the WAN pool")

    async def joined(self) -> None:
        """s2 joins s1's WAN pool with ``join -wan``; both list both."""
        got = await self.on_s2("join", "-wan", f"127.0.0.1:{wan_port(self.agent)}")
        self.assertEqual((got.code, got.err), (0, ""))
        self.assertEqual(got.out, "Successfully joined cluster by contacting 1 nodes.\n")
        await self.wait_for_wan_status("s2.dc2", "alive")

    async def test_join_wan_joins_servers_of_two_datacenters(self) -> None:
        await self.joined()
        for run in (self.cli, self.on_s2):
            listing = rows((await run("members", "-wan")).out)
            self.assertEqual(set(listing), {"s1.dc1", "s2.dc2"})
            self.assertEqual(
                listing["s1.dc1"][1:],
                [f"127.0.0.1:{wan_port(self.agent)}", "alive", "server", "1.17.0", "2", "dc1"],
            )
            self.assertEqual(
                listing["s2.dc2"][1:],
                [f"127.0.0.1:{wan_port(self.s2)}", "alive", "server", "1.17.0", "2", "dc2"],
            )
        # the LAN pools stay per datacenter
        self.assertEqual(set(rows((await self.cli("members")).out)), {"s1"})
        self.assertEqual(set(rows((await self.on_s2("members")).out)), {"s2"})

    async def test_members_wan_detailed_shows_wan_tags(self) -> None:
        await self.joined()
        got = await self.cli("members", "-wan", "-detailed")
        tags = dict(pair.split("=", 1) for pair in rows(got.out)["s2.dc2"][-1].split(","))
        self.assertEqual((tags["role"], tags["dc"]), ("consul", "dc2"))
        self.assertNotIn("wan_join_port", tags)  # a LAN-only tag

    async def test_join_wan_to_a_lan_port_is_refused(self) -> None:
        assert self.agent.membership.lan is not None
        lan_port = self.agent.membership.lan.gossip.address()[1]
        got = await self.on_s2("join", "-wan", f"127.0.0.1:{lan_port}")
        self.assertEqual(got.code, 1)
        self.assertIn("Failed to join any nodes.", got.err)
        self.assertEqual(set(rows((await self.on_s2("members", "-wan")).out)), {"s2.dc2"})

    async def test_force_leave_wan_makes_a_killed_server_left_then_prune_erases_it(self) -> None:
        await self.joined()
        await self.s2.stopService()  # no leave: it fails
        await self.wait_for_wan_status("s2.dc2", "failed")
        # the WAN name is not in the LAN pool
        got = await self.cli("force-leave", "s2.dc2")
        self.assertEqual(got.code, 1)
        self.assertIn("Error force leaving", got.err)
        got = await self.cli("force-leave", "-wan", "s2.dc2")
        self.assertEqual((got.code, got.out, got.err), (0, "", ""))
        await self.wait_for_wan_status("s2.dc2", "left")
        got = await self.cli("force-leave", "-wan", "-prune", "s2.dc2")
        self.assertEqual((got.code, got.err), (0, ""))
        await self.wait_for_wan_status("s2.dc2", None)
        self.assertEqual(set(rows((await self.cli("members", "-wan")).out)), {"s1.dc1"})

    async def test_force_leave_over_http_with_wan_then_prune(self) -> None:
        await self.joined()
        await self.s2.stopService()
        await self.wait_for_wan_status("s2.dc2", "failed")
        code, _ = await api_call(self.agent, "PUT", "/v1/agent/force-leave/s2.dc2")
        self.assertEqual(code, 500)  # not a LAN member
        code, _ = await api_call(self.agent, "PUT", "/v1/agent/force-leave/s2.dc2?wan")
        self.assertEqual(code, 200)
        await self.wait_for_wan_status("s2.dc2", "left")
        self.assertEqual(await self.wan_status("s1.dc1"), "alive")
        code, _ = await api_call(self.agent, "PUT", "/v1/agent/force-leave/s2.dc2?wan&prune")
        self.assertEqual(code, 200)
        await self.wait_for_wan_status("s2.dc2", None)

    async def test_a_client_has_no_wan_members_and_cannot_join_the_wan(self) -> None:
        client = await start_agent(
            self, reactor, node_name="c1", dev=False, server=False, data_dir=self.mktemp()
        )
        on_client = {"CONSUL_HTTP_ADDR": http_address(client)}
        got = await run_cli(["members", "-wan"], on_client)
        self.assertEqual((got.code, got.out), (2, ""))
        got = await run_cli(["join", "-wan", f"127.0.0.1:{wan_port(self.agent)}"], on_client)
        self.assertEqual(got.code, 1)
        self.assertIn("WAN pool is only available on servers", got.err)
