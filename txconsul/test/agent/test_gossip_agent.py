"""
Agents in one process gossiping over 127.0.0.1: joins, member status, the
catalog reconciliation of a server, WAN pools, encryption, keyrings.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import consul
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txconsul.agent.agent import Agent
from txconsul.agent.membership import (
    LEAVE_PROPAGATE_DELAY,
    JoinFailed,
    lan_merge_check,
    parse_join_address,
    wan_merge_check,
)
from txconsul.errors import BadRequest
from txconsul.gossip.keyring import KeyringError
from txconsul.rpc.protocol import RPCClient
from txconsul.testing.agent import api_call, make_agent, start_agent
from txconsul.testing.polling import poll_until
from txconsul.testing.process import free_port

FAST = {"probe_interval": "100ms", "probe_timeout": "50ms", "gossip_interval": "20ms"}
KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def lan(agent: Agent) -> str:
    assert agent.membership.lan is not None
    return "127.0.0.1:%d" % agent.membership.lan.gossip.address()[1]


def wan(agent: Agent) -> str:
    assert agent.membership.wan is not None
    return "127.0.0.1:%d" % agent.membership.wan.gossip.address()[1]


def udp_and_tcp_free(port: int) -> bool:
    """Whether a stopped agent has let go of its gossip port."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class GossipAgentTestCase(TestCase):
    timeout = 30

    async def agent(self, name: str, server: bool = False, **flags: Any) -> Agent:
        """A server (dev mode, or bootstrap mode on disk) or client agent with fast timing."""
        flags.setdefault("gossip_lan", FAST)
        flags.setdefault("gossip_wan", FAST)
        flags["server"] = server
        if not server:
            flags["dev"] = False
        if not flags.get("dev", server):
            flags.setdefault("data_dir", self.mktemp())
        if server and not flags.get("dev", True):
            # a one-server cluster on disk, its RPC port free
            flags.setdefault("bootstrap", True)
            flags["ports"] = {"server": 0, **flags.get("ports", {})}
        return await start_agent(self, reactor, node_name=name, **flags)

    async def http(
        self, agent: Agent, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, Any]:
        return await api_call(agent, method, path, body)

    async def members(self, agent: Agent, query: str = "") -> dict[str, Any]:
        _, listing = await self.http(agent, "GET", "/v1/agent/members" + query)
        return {m["Name"]: m for m in listing}

    async def wait_for(self, condition: Callable[[], Any], limit: float = 15.0) -> None:
        """Poll ``condition`` (a coroutine function or plain callable) until it is true."""
        if not await poll_until(reactor, condition, limit):
            self.fail("condition not met in time")

    async def equals(self, got: Any, want: Any) -> bool:
        return bool(await got == want)

    async def has_statuses(self, agent: Agent, want: dict[str, int], query: str = "") -> bool:
        return await self.statuses(agent, query) == want

    async def statuses(self, agent: Agent, query: str = "") -> dict[str, int]:
        return {n: m["Status"] for n, m in (await self.members(agent, query)).items()}

    @staticmethod
    def gossip_ports(agent: Agent) -> dict[str, int]:
        ports = {"serf_lan": int(lan(agent).rsplit(":", 1)[1])}
        if agent.membership.wan is not None:
            ports["serf_wan"] = int(wan(agent).rsplit(":", 1)[1])
        return ports

    async def restarted(self, agent: Agent, ports: dict[str, int], **flags: Any) -> Agent:
        """Stop ``agent`` without leaving (if it still runs), start it again on ``ports``."""
        if agent.running:
            await agent.stopService()
        c = agent.config
        return await self.agent(
            c.node_name,
            server=c.server,
            dev=False,
            datacenter=c.datacenter,
            data_dir=c.data_dir,
            ports=ports,
            **flags,
        )

    async def serf_health(self, agent: Agent, node: str) -> dict[str, Any] | None:
        _, checks = await self.http(agent, "GET", f"/v1/health/node/{node}")
        found = [c for c in checks if c["CheckID"] == "serfHealth"]
        return found[0] if found else None


class JoinTests(GossipAgentTestCase):
    async def test_three_agents_joined_over_http_agree_on_members(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1")
        c2 = await self.agent("c2")
        code, body = await self.http(c1, "PUT", f"/v1/agent/join/{lan(s1)}")
        self.assertEqual((code, body), (200, ""))
        code, _ = await self.http(c2, "PUT", f"/v1/agent/join/{lan(c1)}")
        self.assertEqual(code, 200)
        everyone = {"s1": 1, "c1": 1, "c2": 1}
        for agent in (s1, c1, c2):
            await self.wait_for(functools.partial(self.has_statuses, agent, everyone))
        listing = await self.members(s1)
        self.assertEqual(listing["c1"]["Port"], int(lan(c1).rsplit(":", 1)[1]))
        self.assertEqual(listing["c1"]["Addr"], "127.0.0.1")
        self.assertEqual(listing["c1"]["Tags"]["role"], "node")
        self.assertEqual(listing["s1"]["Tags"]["role"], "consul")
        self.assertEqual(listing["s1"]["Tags"]["port"], s1.config.rpc_address.rsplit(":")[1])
        self.assertEqual(listing["s1"]["Tags"]["wan_join_port"], wan(s1).rsplit(":", 1)[1])
        self.assertEqual(listing["c2"]["Tags"]["id"], c2.node_id)
        self.assertEqual(
            {k: listing["c1"][k] for k in ("ProtocolMin", "ProtocolMax", "ProtocolCur")},
            {"ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2},
        )
        _, me = await self.http(c1, "GET", "/v1/agent/self")
        self.assertEqual(me["Member"], (await self.members(c1))["c1"])

    async def test_start_join_joins_before_the_agent_is_ready(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1", start_join=[lan(s1)])
        self.assertEqual(set(await self.members(c1)), {"s1", "c1"})
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        check = await self.serf_health(s1, "c1")
        assert check is not None
        self.assertEqual(
            (check["Status"], check["Output"]), ("passing", "Agent alive and reachable")
        )

    async def test_start_join_fails_the_start_when_nobody_answers(self) -> None:
        port = free_port()
        d = ensureDeferred(self.agent("c1", start_join=[f"127.0.0.1:{port}"]))
        failure = await self.assertFailure(d, JoinFailed)
        self.assertIn(f"127.0.0.1:{port}", str(failure))
        self.assertEqual(len(self.flushLoggedErrors(JoinFailed)), 1)

    async def test_join_that_nobody_answers_is_500_with_a_reason(self) -> None:
        c1 = await self.agent("c1")
        code, body = await self.http(c1, "PUT", f"/v1/agent/join/127.0.0.1:{free_port()}")
        self.assertEqual(code, 500)
        self.assertIn("Failed to join", body)

    async def test_retry_join_succeeds_once_the_peer_comes_up(self) -> None:
        port = free_port()
        c1 = await self.agent("c1", retry_join=[f"127.0.0.1:{port}"], retry_interval="100ms")
        self.assertEqual(set(await self.members(c1)), {"c1"})
        await deferLater(reactor, 0.3, lambda: None)  # a few attempts fail first
        await self.agent("s1", server=True, ports={"serf_lan": port})
        await self.wait_for(lambda: self.equals(self.statuses(c1), {"s1": 1, "c1": 1}))

    def test_join_addresses(self) -> None:
        self.assertEqual(parse_join_address("10.0.0.1", 8301), ("10.0.0.1", 8301))
        self.assertEqual(parse_join_address("10.0.0.1:9", 8301), ("10.0.0.1", 9))
        self.assertEqual(parse_join_address("[::1]:9", 8301), ("::1", 9))
        self.assertEqual(parse_join_address("::1", 8301), ("::1", 8301))


class StatusTests(GossipAgentTestCase):
    async def joined_pair(self) -> tuple[Agent, Agent]:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1", start_join=[lan(s1)])
        await self.wait_for(lambda: self._alive(s1, "c1"))
        return s1, c1

    async def _alive(self, agent: Agent, name: str) -> bool:
        return (await self.statuses(agent)).get(name) == 1

    async def test_stopped_agent_is_failed_and_its_serf_health_critical(self) -> None:
        s1, c1 = await self.joined_pair()
        await c1.stopService()

        async def failed() -> bool:
            return (await self.statuses(s1)).get("c1") == 4

        await self.wait_for(failed)
        check = await self.serf_health(s1, "c1")
        assert check is not None
        self.assertEqual(
            (check["Status"], check["Output"]), ("critical", "Agent not live or unreachable")
        )

    async def test_leave_is_left_and_deregisters_the_node(self) -> None:
        s1, c1 = await self.joined_pair()
        code, _ = await self.http(c1, "PUT", "/v1/agent/leave")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: not c1.running)

        async def left() -> bool:
            return (await self.statuses(s1)).get("c1") == 3

        await self.wait_for(left)
        code, _ = await self.http(s1, "GET", "/v1/catalog/node/c1")
        _, nodes = await self.http(s1, "GET", "/v1/catalog/nodes")
        self.assertEqual([n["Node"] for n in nodes], ["s1"])

    async def test_a_leaving_agent_stays_up_until_its_leave_has_spread(self) -> None:
        """
        serf's leave order with Consul's 3 s LeavePropagateDelay: the leave
        intent, then memberlist's leave, then the agent stays up while the
        leave spreads. The two others hear ``c1`` leave (a member-leave
        event, never member-failed) while it still runs, and it stops only
        the propagate delay later.
        """
        s1, c1 = await self.joined_pair()
        c2 = await self.agent("c2", start_join=[lan(s1)])
        peers = (s1, c2)
        for peer in peers:
            await self.wait_for(functools.partial(self._alive, peer, "c1"))
        seen: dict[str, list[tuple[str, bool, float]]] = {"s1": [], "c2": []}
        for peer in peers:

            def record(pool: Any, events: list[Any], name: str = peer.config.node_name) -> None:
                for event in events:
                    if getattr(event, "name", None) == "c1":
                        seen[name].append((event.kind, c1.running, time.monotonic()))

            peer.membership.subscribe(record)
        code, _ = await self.http(c1, "PUT", "/v1/agent/leave")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: not c1.running, limit=20)
        stopped = time.monotonic()
        for peer in peers:
            self.assertEqual((await self.statuses(peer)).get("c1"), 3)
        for name, events in seen.items():
            self.assertEqual([(kind, running) for kind, running, _ in events],
                             [("member-leave", True)], name)  # fmt: skip
            self.assertGreater(stopped - events[0][2], LEAVE_PROPAGATE_DELAY - 1.0, name)

    async def test_force_leave_turns_a_failed_member_left(self) -> None:
        s1, c1 = await self.joined_pair()
        await c1.stopService()

        async def status() -> int | None:
            return (await self.statuses(s1)).get("c1")

        await self.wait_for(lambda: self.equals(status(), 4))
        code, _ = await self.http(s1, "PUT", "/v1/agent/force-leave/c1")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: self.equals(status(), 3))
        self.assertIsNone(await self.serf_health(s1, "c1"))
        code, _ = await self.http(s1, "PUT", "/v1/agent/force-leave/c1?prune")
        self.assertEqual(code, 200)
        self.assertNotIn("c1", await self.members(s1))

    async def test_force_leave_prune_erases_the_member_on_the_other_agents(self) -> None:
        s1, c1 = await self.joined_pair()
        c2 = await self.agent("c2", start_join=[lan(s1)])
        everyone = {"s1": 1, "c1": 1, "c2": 1}
        for agent in (s1, c2):
            await self.wait_for(functools.partial(self.has_statuses, agent, everyone))
        await c1.stopService()
        failed = {**everyone, "c1": 4}
        for agent in (s1, c2):
            await self.wait_for(functools.partial(self.has_statuses, agent, failed))
        code, _ = await self.http(s1, "PUT", "/v1/agent/force-leave/c1?prune")
        self.assertEqual(code, 200)
        self.assertNotIn("c1", await self.members(s1))
        await self.wait_for(lambda: self.equals(self.statuses(c2), {"s1": 1, "c2": 1}))

    async def test_force_leave_of_an_unknown_node_is_an_error(self) -> None:
        s1 = await self.agent("s1", server=True)
        code, body = await self.http(s1, "PUT", "/v1/agent/force-leave/nobody")
        self.assertEqual(code, 500)
        self.assertIn("No node found", body)


class SnapshotRejoinTests(GossipAgentTestCase):
    """A restarted agent finds its pool again through data_dir/serf/*.snapshot."""

    async def test_restarted_client_rejoins_without_join(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1", start_join=[lan(s1)])
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        with open(os.path.join(c1.config.data_dir, "serf", "local.snapshot")) as f:
            self.assertIn(f"alive: s1 {lan(s1)}", f.read())
        ports = self.gossip_ports(c1)
        await c1.stopService()
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 4}))
        c1 = await self.restarted(c1, ports)
        self.assertEqual(c1.config.join, ())
        everyone = {"s1": 1, "c1": 1}
        for agent in (s1, c1):
            await self.wait_for(functools.partial(self.has_statuses, agent, everyone))
        check = await self.serf_health(s1, "c1")
        assert check is not None
        self.assertEqual(check["Status"], "passing")

    async def test_an_agent_that_left_does_not_rejoin(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1", start_join=[lan(s1)])
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        ports = self.gossip_ports(c1)
        code, _ = await self.http(c1, "PUT", "/v1/agent/leave")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: udp_and_tcp_free(ports["serf_lan"]))
        c1 = await self.restarted(c1, ports)
        assert c1.membership.lan is not None
        self.assertEqual(c1.membership.lan.previous, [])  # nothing to rejoin, by choice
        self.assertEqual(await self.statuses(c1), {"c1": 1})
        self.assertEqual((await self.statuses(s1))["c1"], 3)

    async def test_rejoin_after_leave_rejoins_all_the_same(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1", start_join=[lan(s1)], rejoin_after_leave=True)
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        ports = self.gossip_ports(c1)
        await c1.leave()
        await self.wait_for(lambda: udp_and_tcp_free(ports["serf_lan"]))
        c1 = await self.restarted(c1, ports, rejoin_after_leave=True)
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))

    async def test_restarted_server_rejoins_the_wan_pool_too(self) -> None:
        s1 = await self.agent("s1", server=True, dev=False)
        s2 = await self.agent("s2", server=True, dev=False, datacenter="dc2")
        code, _ = await self.http(s2, "PUT", f"/v1/agent/join/{wan(s1)}?wan=1")
        self.assertEqual(code, 200)
        both = {"s1.dc1": 1, "s2.dc2": 1}
        await self.wait_for(functools.partial(self.has_statuses, s1, both, "?wan=1"))
        self.assertTrue(os.path.exists(os.path.join(s2.config.data_dir, "serf", "remote.snapshot")))
        assert s2.servers is not None and s2.servers.listener is not None
        # the same RPC port: it is the server's identity in its Raft configuration
        ports = {**self.gossip_ports(s2), "server": s2.servers.listener.address()[1]}
        s2 = await self.restarted(s2, ports)
        await self.wait_for(functools.partial(self.has_statuses, s2, both, "?wan=1"))
        self.assertEqual(set(await self.members(s2)), {"s2"})  # its LAN pool is its own


class WANTests(GossipAgentTestCase):
    async def test_servers_join_the_wan_pool_named_node_dot_dc(self) -> None:
        s1 = await self.agent("s1", server=True)
        s2 = await self.agent("s2", server=True)
        code, _ = await self.http(s2, "PUT", f"/v1/agent/join/{wan(s1)}?wan=1")
        self.assertEqual(code, 200)
        both = {"s1.dc1": 1, "s2.dc1": 1}
        for agent in (s1, s2):
            await self.wait_for(functools.partial(self.has_statuses, agent, both, "?wan=1"))
        listing = await self.members(s1, "?wan=1")
        self.assertEqual(listing["s2.dc1"]["Port"], int(wan(s2).rsplit(":", 1)[1]))
        self.assertEqual(listing["s2.dc1"]["Tags"]["role"], "consul")
        # the LAN pools stay apart
        self.assertEqual(set(await self.members(s1)), {"s1"})

    async def test_retry_join_wan_joins_another_datacenter_once_it_comes_up(self) -> None:
        """
        ``retry_join_wan`` on a server: the first attempts find nobody (the
        other datacenter's server is not up yet), a later one joins its WAN
        pool; the LAN pools of the two datacenters stay apart.
        """
        port = free_port()
        s2 = await self.agent(
            "s2",
            server=True,
            datacenter="dc2",
            retry_join_wan=[f"127.0.0.1:{port}"],
            retry_interval_wan="100ms",
        )
        self.assertEqual(set(await self.members(s2, "?wan=1")), {"s2.dc2"})
        await deferLater(reactor, 0.3, lambda: None)  # a few attempts fail first
        s1 = await self.agent("s1", server=True, ports={"serf_wan": port})
        both = {"s1.dc1": 1, "s2.dc2": 1}
        for agent in (s1, s2):
            await self.wait_for(functools.partial(self.has_statuses, agent, both, "?wan=1"))
        self.assertEqual(set(await self.members(s1)), {"s1"})
        self.assertEqual(set(await self.members(s2)), {"s2"})

    async def test_a_client_has_no_wan_pool(self) -> None:
        c1 = await self.agent("c1")
        self.assertEqual(await self.members(c1, "?wan=1"), {})
        code, _ = await self.http(c1, "PUT", "/v1/agent/join/127.0.0.1:1?wan=1")
        self.assertEqual(code, 400)


class MergeRuleTests(GossipAgentTestCase):
    """Consul's merge delegates: a LAN pool per datacenter, a WAN pool of servers."""

    def test_lan_rules(self) -> None:
        check = lan_merge_check("dc1", "id-1", "a")
        ok = [
            ("a", {"role": "node", "dc": "dc1", "id": "id-1"}),
            ("b", {"role": "consul", "dc": "dc1", "id": "id-2"}),
            ("plain-serf", {"role": "web"}),
            ("A", {"role": "node", "dc": "dc1", "id": "id-1"}),  # names compare without case
        ]
        self.assertIsNone(check(ok[:3]))
        self.assertIsNone(check(ok[3:]))
        for members, why in (
            ([("c", {"role": "node", "dc": "dc2"})], "Member 'c' part of wrong datacenter 'dc2'"),
            (
                [("s", {"role": "consul", "dc": "east"})],
                "Member 's' part of wrong datacenter 'east'",
            ),
            ([("c", {"role": "node"})], "Member 'c' part of wrong datacenter ''"),
            (
                [("c", {"role": "node", "dc": "dc1", "id": "id-1"})],
                "Member 'c' has conflicting node ID 'id-1' with this agent's ID",
            ),
            (
                [("b", {"id": "id-9"}), ("c", {"id": "id-9"})],
                "Member 'c' has conflicting node ID 'id-9' with member 'b'",
            ),
            (
                [("c", {"role": "node", "dc": "dc1", "segment": "alpha"})],
                "Member 'c' part of wrong segment 'alpha' (expected '')",
            ),
        ):
            self.assertEqual(check(members), why)

    def test_wan_rule(self) -> None:
        self.assertIsNone(wan_merge_check([("s1.dc1", {"role": "consul", "dc": "dc1"})]))
        for tags in ({"role": "node", "dc": "dc1"}, {"role": "web"}, {}):
            self.assertEqual(wan_merge_check([("x", tags)]), "Member 'x' is not a server")

    async def test_an_agent_of_another_datacenter_cannot_join_the_lan_pool(self) -> None:
        s1 = await self.agent("s1", server=True)
        c2 = await self.agent("c2", datacenter="dc2")
        code, reason = await self.http(c2, "PUT", f"/v1/agent/join/{lan(s1)}")
        self.assertEqual(code, 500)
        self.assertIn(
            f"Failed to join {lan(s1)}: Member 'c2' part of wrong datacenter 'dc2'", reason
        )
        self.assertEqual(set(await self.members(s1)), {"s1"})
        self.assertEqual(set(await self.members(c2)), {"c2"})

    async def test_only_servers_join_the_wan_pool(self) -> None:
        s1 = await self.agent("s1", server=True)
        c1 = await self.agent("c1")
        # a client's LAN pool knocking at a server's WAN port
        code, reason = await self.http(c1, "PUT", f"/v1/agent/join/{wan(s1)}")
        self.assertEqual(code, 500)
        self.assertIn("Member 'c1' is not a server", reason)
        self.assertEqual(set(await self.members(s1, "?wan=1")), {"s1.dc1"})


class AdvertiseTests(GossipAgentTestCase):
    """advertise_addr and advertise_addr_wan reach the pools (Consul's AdvertiseAddr)."""

    async def test_members_reach_an_agent_at_its_advertised_address(self) -> None:
        s1 = await self.agent("s1", server=True)
        # c1 binds 127.0.0.1 and advertises 127.0.0.5, where nothing listens
        c1 = await self.agent("c1", advertise_addr="127.0.0.5", start_join=[lan(s1)])
        port = int(lan(c1).rsplit(":", 1)[1])
        for agent in (s1, c1):
            c1_member = (await self.members(agent))["c1"]
            self.assertEqual((c1_member["Addr"], c1_member["Port"]), ("127.0.0.5", port))
        self.assertEqual((await self.members(s1))["s1"]["Addr"], "127.0.0.1")
        # s1 really sends there: its probes go unanswered and c1 fails
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 4}))

    async def test_a_server_advertises_its_wan_address_on_the_wan_pool_only(self) -> None:
        s1 = await self.agent("s1", server=True, advertise_addr_wan="127.0.0.6")
        s2 = await self.agent("s2", server=True, datacenter="dc2")
        self.assertEqual((await self.http(s2, "PUT", f"/v1/agent/join/{wan(s1)}?wan=1"))[0], 200)
        listing = await self.members(s2, "?wan=1")
        self.assertEqual(
            (listing["s1.dc1"]["Addr"], listing["s1.dc1"]["Port"]),
            ("127.0.0.6", int(wan(s1).rsplit(":", 1)[1])),
        )
        self.assertEqual((await self.members(s1, "?wan=1"))["s1.dc1"]["Addr"], "127.0.0.6")
        self.assertEqual((await self.members(s1))["s1"]["Addr"], "127.0.0.1")

    async def test_a_client_writes_its_wan_address_into_the_leaders_catalog(self) -> None:
        # the leader registers c1 from the gossip, which holds no WAN address;
        # c1's own anti-entropy then writes its tagged addresses
        s1 = await self.agent("s1", server=True, advertise_addr_wan="192.0.2.1")
        await self.agent("c1", advertise_addr_wan="198.51.100.9", start_join=[lan(s1)])
        host, port = s1.http.address()
        client = consul.Consul(host=host, port=port)
        self.addCleanup(client.http.session.close)

        async def tagged(node: str) -> dict[str, str] | None:
            _, entry = await deferToThread(client.catalog.node, node)
            return entry["Node"]["TaggedAddresses"] if entry else None

        async def c1_tagged() -> bool:
            return await tagged("c1") == {
                "lan": "127.0.0.1",
                "lan_ipv4": "127.0.0.1",
                "wan": "198.51.100.9",
                "wan_ipv4": "198.51.100.9",
            }

        async def c1_alive() -> bool:
            check = await self.serf_health(s1, "c1")
            return check is not None and check["Status"] == "passing"

        await self.wait_for(c1_tagged)
        await self.wait_for(c1_alive)
        self.assertEqual((await tagged("s1") or {}).get("wan"), "192.0.2.1")
        # a full pass of the leader leaves what the agent wrote alone
        servers, pool = s1.servers, s1.membership.lan
        assert servers is not None and pool is not None
        self.assertEqual(servers.reconciler.reconcile_all(pool.serf.members), 0)
        self.assertTrue(await c1_tagged())


class EncryptionTests(GossipAgentTestCase):
    async def agent(self, name: str, server: bool = False, **flags: Any) -> Agent:
        """
        Keyring operations are serf queries, whose timeout is 16 gossip
        intervals: 0.32 s with FAST's, which a loaded machine can miss (a
        member's answer counted as missing). 100 ms gives them 1.6 s.
        """
        for pool in ("gossip_lan", "gossip_wan"):
            flags.setdefault(pool, {**FAST, "gossip_interval": "100ms"})
        return await super().agent(name, server, **flags)

    async def test_agents_with_the_same_key_join(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        c1 = await self.agent("c1", encrypt=KEY, start_join=[lan(s1)])
        self.assertEqual(set(await self.members(c1)), {"s1", "c1"})

    async def test_agents_join_with_16_24_and_32_byte_keys(self) -> None:
        for size in (16, 24, 32):
            key = base64.b64encode(bytes(range(50, 50 + size))).decode()
            s1 = await self.agent(f"s{size}", server=True, encrypt=key)
            c1 = await self.agent(f"c{size}", encrypt=key, start_join=[lan(s1)])
            want = {f"s{size}": 1, f"c{size}": 1}
            await self.wait_for(functools.partial(self.has_statuses, s1, want))
            await self.wait_for(functools.partial(self.has_statuses, c1, want))

    async def test_agents_with_other_keys_or_none_cannot_join(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        other = await self.agent("c1", encrypt=OTHER_KEY)
        plain = await self.agent("c2")
        for agent in (other, plain):
            code, _ = await self.http(agent, "PUT", f"/v1/agent/join/{lan(s1)}")
            self.assertEqual(code, 500)
        self.assertEqual(set(await self.members(s1)), {"s1"})

    async def test_keyring_install_use_remove(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        code, pools = await self.http(s1, "GET", "/v1/operator/keyring")
        self.assertEqual(code, 200)
        self.assertEqual([p["WAN"] for p in pools], [True, False])
        self.assertEqual(pools[1]["Keys"], {KEY: 1})
        self.assertEqual(pools[1]["PrimaryKeys"], {KEY: 1})
        body = json.dumps({"Key": OTHER_KEY}).encode()
        self.assertEqual((await self.http(s1, "PUT", "/v1/operator/keyring", body))[0], 500)
        self.assertEqual((await self.http(s1, "POST", "/v1/operator/keyring", body))[0], 200)
        self.assertEqual((await self.http(s1, "PUT", "/v1/operator/keyring", body))[0], 200)
        _, pools = await self.http(s1, "GET", "/v1/operator/keyring")
        self.assertEqual(pools[1]["Keys"], {KEY: 1, OTHER_KEY: 1})
        self.assertEqual(pools[0]["PrimaryKeys"], {OTHER_KEY: 1})
        code, reason = await self.http(s1, "DELETE", "/v1/operator/keyring", body)
        self.assertEqual(code, 500)
        self.assertIn("primary", reason)
        old = json.dumps({"Key": KEY}).encode()
        self.assertEqual((await self.http(s1, "DELETE", "/v1/operator/keyring", old))[0], 200)
        _, pools = await self.http(s1, "GET", "/v1/operator/keyring")
        self.assertEqual(pools[1]["Keys"], {OTHER_KEY: 1})
        # the new primary key is the one a newcomer needs
        c1 = await self.agent("c1", encrypt=OTHER_KEY, start_join=[lan(s1)])
        self.assertEqual(set(await self.members(c1)), {"s1", "c1"})

    async def keyed_pool(self) -> tuple[Agent, Agent, Agent]:
        """A server and two clients sharing KEY, once each lists all three alive."""
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        c1 = await self.agent("c1", encrypt=KEY, start_join=[lan(s1)])
        c2 = await self.agent("c2", encrypt=KEY, start_join=[lan(s1)])
        everyone = {"s1": 1, "c1": 1, "c2": 1}
        for agent in (s1, c1, c2):
            await self.wait_for(functools.partial(self.has_statuses, agent, everyone))
        return s1, c1, c2

    async def lan_keys(self, agent: Agent, query: str = "") -> dict[str, Any]:
        code, pools = await self.http(agent, "GET", "/v1/operator/keyring" + query)
        self.assertEqual(code, 200, pools)
        return next(p for p in pools if not p["WAN"])

    async def test_keyring_changes_reach_every_member_and_survive_a_restart(self) -> None:
        s1, c1, c2 = await self.keyed_pool()
        everyone = {"s1": 1, "c1": 1, "c2": 1}
        other = json.dumps({"Key": OTHER_KEY}).encode()
        self.assertEqual(await self.http(c1, "POST", "/v1/operator/keyring", other), (200, ""))
        listing = await self.lan_keys(c2)
        self.assertEqual(
            {k: listing[k] for k in ("Keys", "PrimaryKeys", "NumNodes", "NumResp", "NumErr")},
            {
                "Keys": {KEY: 3, OTHER_KEY: 3},
                "PrimaryKeys": {KEY: 3},
                "NumNodes": 3,
                "NumResp": 3,
                "NumErr": 0,
            },
        )
        self.assertEqual((listing["Datacenter"], listing["Messages"]), ("dc1", {}))
        self.assertEqual((await self.http(c1, "PUT", "/v1/operator/keyring", other))[0], 200)
        # a client hands the operation to a server, which runs it on the WAN
        # pool as well, as Consul does
        assert s1.membership.wan is not None and s1.membership.wan.keyring is not None
        self.assertEqual(s1.membership.wan.keyring.keys[0], base64.b64decode(OTHER_KEY))
        old = json.dumps({"Key": KEY}).encode()
        self.assertEqual((await self.http(c2, "DELETE", "/v1/operator/keyring", old))[0], 200)
        code, pools = await self.http(c1, "GET", "/v1/operator/keyring")
        self.assertEqual(code, 200, pools)
        self.assertEqual(
            [(p["WAN"], p["Datacenter"], p["Keys"], p["PrimaryKeys"]) for p in pools],
            [
                (True, "dc1", {OTHER_KEY: 1}, {OTHER_KEY: 1}),
                (False, "dc1", {OTHER_KEY: 3}, {OTHER_KEY: 3}),
            ],
        )
        # every member saved its keyring; a restart (still configured with the
        # old key) uses the saved one and finds the pool again
        path = os.path.join(c2.config.data_dir, "serf", "local.keyring")
        with open(path) as f:
            self.assertEqual(json.load(f), [OTHER_KEY])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        ports = self.gossip_ports(c2)
        await c2.stopService()
        c2 = await self.agent("c2", encrypt=KEY, data_dir=c2.config.data_dir, ports=ports)
        self.assertEqual((await self.lan_keys(c2, "?local-only=true"))["Keys"], {OTHER_KEY: 1})
        await self.wait_for(functools.partial(self.has_statuses, s1, everyone))
        await self.wait_for(functools.partial(self.has_statuses, c2, everyone))

    async def test_relay_factor_sends_every_answer_through_other_members(self) -> None:
        s1, c1, c2 = await self.keyed_pool()
        agents = (s1, c1, c2)

        def serfs() -> list[Any]:
            return [a.membership.lan.serf for a in agents if a.membership.lan is not None]

        other = json.dumps({"Key": OTHER_KEY}).encode()
        code, body = await self.http(c1, "POST", "/v1/operator/keyring?relay-factor=2", other)
        self.assertEqual((code, body), (200, ""))
        # each of the three LAN members sent its answer through both others too
        self.assertEqual([s.relays_sent for s in serfs()], [2, 2, 2])
        listing = await self.lan_keys(c2, "?relay-factor=2")
        self.assertEqual(
            {k: listing[k] for k in ("Keys", "NumNodes", "NumResp", "NumErr")},
            {"Keys": {KEY: 3, OTHER_KEY: 3}, "NumNodes": 3, "NumResp": 3, "NumErr": 0},
        )
        self.assertEqual([s.relays_sent for s in serfs()], [4, 4, 4])
        # every copy is passed on to s1, which ran the queries
        await self.wait_for(lambda: sum(s.relays_forwarded for s in serfs()) == 12)

    async def test_a_bad_relay_factor_is_400_with_a_reason(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        key = json.dumps({"Key": OTHER_KEY}).encode()
        for method in ("GET", "POST", "PUT", "DELETE"):
            body = None if method == "GET" else key
            for value, reason in (
                ("999", "Invalid relay factor: Relay factor must be in range: [0, 5]"),
                ("6", "Invalid relay factor: Relay factor must be in range: [0, 5]"),
                ("-1", "Invalid relay factor: Relay factor must be in range: [0, 5]"),
                ("asdf", 'Error parsing relay factor: strconv.Atoi: parsing "asdf": invalid'),
                ("2.5", "Error parsing relay factor"),
            ):
                code, text = await self.http(
                    s1, method, f"/v1/operator/keyring?relay-factor={value}", body
                )
                self.assertEqual(code, 400, (method, value, text))
                self.assertIn(reason, text)
        # nothing changed, and the agent still answers
        self.assertEqual((await self.lan_keys(s1, "?relay-factor=0"))["Keys"], {KEY: 1})
        self.assertEqual((await self.lan_keys(s1, "?relay-factor="))["Keys"], {KEY: 1})

    async def test_a_change_through_a_client_reaches_every_pool_of_every_datacenter(self) -> None:
        """Consul's Internal.KeyringOperation: WAN, this LAN, other LANs via their servers."""
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        c1 = await self.agent("c1", encrypt=KEY, start_join=[lan(s1)])
        s2 = await self.agent("s2", server=True, encrypt=KEY, datacenter="dc2")
        c2 = await self.agent("c2", encrypt=KEY, datacenter="dc2", start_join=[lan(s2)])
        self.assertEqual((await self.http(s2, "PUT", f"/v1/agent/join/{wan(s1)}?wan=1"))[0], 200)
        both = {"s1.dc1": 1, "s2.dc2": 1}
        await self.wait_for(functools.partial(self.has_statuses, s1, both, "?wan=1"))
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        await self.wait_for(lambda: self.equals(self.statuses(s2), {"s2": 1, "c2": 1}))
        await self.wait_for(lambda: self.equals(self.statuses(c1), {"s1": 1, "c1": 1}))
        other = json.dumps({"Key": OTHER_KEY}).encode()
        self.assertEqual(await self.http(c1, "POST", "/v1/operator/keyring", other), (200, ""))
        code, pools = await self.http(c1, "GET", "/v1/operator/keyring")
        self.assertEqual(code, 200, pools)
        self.assertEqual(
            [(p["WAN"], p["Datacenter"], p["Keys"], p["NumNodes"], p["NumResp"]) for p in pools],
            [
                (True, "dc1", {KEY: 2, OTHER_KEY: 2}, 2, 2),
                (False, "dc1", {KEY: 2, OTHER_KEY: 2}, 2, 2),
                (False, "dc2", {KEY: 2, OTHER_KEY: 2}, 2, 2),
            ],
        )
        self.assertNotIn("Error", pools[0])
        # a client of the other datacenter saw the change in its own keyring
        self.assertEqual(
            (await self.lan_keys(c2, "?local-only=true"))["Keys"], {KEY: 1, OTHER_KEY: 1}
        )
        # a refusal anywhere names the pool and the member
        primary = json.dumps({"Key": KEY}).encode()
        code, reason = await self.http(c2, "DELETE", "/v1/operator/keyring", primary)
        self.assertEqual(code, 500)
        self.assertIn("WAN error: 2/2 nodes reported failure", reason)
        self.assertIn("dc1 (LAN) error: 2/2 nodes reported failure", reason)
        self.assertIn("dc2 (LAN) error: 2/2 nodes reported failure", reason)
        self.assertIn("c1: Removing the primary key is not allowed", reason)
        self.assertIn("s2.dc2: Removing the primary key is not allowed", reason)

    async def test_keyring_rpc_refuses_bad_requests(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        client = RPCClient(reactor, reactor)
        self.addCleanup(client.close)
        bad: list[Any] = [
            "list",
            {"Operation": "burn", "Key": "", "Forwarded": False},
            {"Operation": "install", "Key": "short", "Forwarded": False},
            {"Operation": "list", "Key": 5, "Forwarded": False},
            {"Operation": "list", "Key": "", "Forwarded": "yes"},
            {"Operation": "list", "Key": "", "Forwarded": False, "RelayFactor": 6},
            {"Operation": "list", "Key": "", "Forwarded": False, "RelayFactor": "2"},
        ]
        for body in bad:
            with self.assertRaises(BadRequest):
                await client.call(s1.config.rpc_address, "Internal.KeyringOperation", body, 5.0)
        answer = await client.call(
            s1.config.rpc_address,
            "Internal.KeyringOperation",
            {"Operation": "list", "Key": "", "Forwarded": True},
            5.0,
        )
        self.assertEqual([(e["WAN"], e["Keys"]) for e in answer], [(False, {KEY: 1})])

    async def test_a_refused_change_names_each_member_and_its_reason(self) -> None:
        s1 = await self.agent("s1", server=True, encrypt=KEY)
        c1 = await self.agent("c1", encrypt=KEY, start_join=[lan(s1)])
        await self.wait_for(lambda: self.equals(self.statuses(s1), {"s1": 1, "c1": 1}))
        primary = json.dumps({"Key": KEY}).encode()
        code, reason = await self.http(c1, "DELETE", "/v1/operator/keyring", primary)
        self.assertEqual(code, 500)
        self.assertIn("dc1 (LAN) error: 2/2 nodes reported failure", reason)
        self.assertIn("c1: Removing the primary key is not allowed", reason)
        self.assertIn("s1: Removing the primary key is not allowed", reason)
        code, reason = await self.http(c1, "DELETE", "/v1/operator/keyring?local-only=1", primary)
        self.assertEqual(code, 400)
        code, reason = await self.http(c1, "GET", "/v1/operator/keyring?local-only=maybe")
        self.assertEqual(code, 400)
        self.assertIn("local-only", reason)

    async def test_an_unreadable_keyring_file_stops_the_start_with_its_name(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(os.path.join(data_dir, "serf"))
        path = os.path.join(data_dir, "serf", "local.keyring")
        for garbage in ("not json", "[]", '["short"]', '{"a": 1}'):
            with open(path, "w") as f:
                f.write(garbage)
            with self.assertRaises(KeyringError) as caught:
                make_agent(self, reactor, node_name="c1", dev=False, data_dir=data_dir)
            self.assertIn(path, str(caught.exception))

    async def test_keyring_without_encryption_or_with_a_bad_key_is_refused(self) -> None:
        s1 = await self.agent("s1", server=True)
        code, reason = await self.http(s1, "GET", "/v1/operator/keyring")
        self.assertEqual(code, 500)
        self.assertIn("not enabled", reason)
        s2 = await self.agent("s2", server=True, encrypt=KEY)
        code, _ = await self.http(s2, "POST", "/v1/operator/keyring", b'{"Key": "short"}')
        self.assertEqual(code, 400)


class RollingEncryptionTests(GossipAgentTestCase):
    """
    Consul's way to turn gossip encryption on in a running pool: restart every
    agent with ``encrypt`` and both verify flags off, then with
    ``encrypt_verify_outgoing``, then with ``encrypt_verify_incoming``.
    """

    timeout = 120

    def dropped(self, agent: Agent) -> int:
        assert agent.membership.lan is not None and agent.membership.lan.gossip.node is not None
        return agent.membership.lan.gossip.node.dropped

    async def roll(self, agent: Agent, other: Agent, **flags: Any) -> Agent:
        """
        Restart ``agent`` with ``flags`` once ``other`` has seen it fail; both
        must see each other alive again, having dropped nothing of each other's.
        """
        ports = self.gossip_ports(agent)
        me, them = agent.config.node_name, other.config.node_name
        await agent.stopService()
        await self.wait_for(lambda: self.equals(self.statuses(other), {me: 4, them: 1}))
        agent = await self.restarted(agent, ports, **flags)
        both = {me: 1, them: 1}
        for a in (agent, other):
            await self.wait_for(functools.partial(self.has_statuses, a, both))
        self.assertEqual((self.dropped(agent), self.dropped(other)), (0, 0))
        return agent

    async def test_encryption_is_turned_on_by_rolling_restarts_and_then_required(self) -> None:
        c1 = await self.agent("c1")
        c2 = await self.agent("c2", start_join=[lan(c1)])
        for agent in (c1, c2):
            await self.wait_for(functools.partial(self.has_statuses, agent, {"c1": 1, "c2": 1}))
        # 1: the key, accepting plaintext and sending it; the first from a config file
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(
                {
                    "encrypt": KEY,
                    "encrypt_verify_incoming": False,
                    "encrypt_verify_outgoing": False,
                },
                f,
            )
        c1 = await self.roll(c1, c2, files=(path,))
        self.assertEqual(
            (
                c1.config.encrypt,
                c1.config.encrypt_verify_incoming,
                c1.config.encrypt_verify_outgoing,
            ),
            (KEY, False, False),
        )
        off = {"encrypt_verify_incoming": False, "encrypt_verify_outgoing": False}
        c2 = await self.roll(c2, c1, encrypt=KEY, **off)
        # 2: sending encrypted, still accepting plaintext
        c1 = await self.roll(c1, c2, encrypt=KEY, encrypt_verify_incoming=False)
        c2 = await self.roll(c2, c1, encrypt=KEY, encrypt_verify_incoming=False)
        # 3: plaintext refused: the defaults
        c1 = await self.roll(c1, c2, encrypt=KEY)
        c2 = await self.roll(c2, c1, encrypt=KEY)
        plain = await self.agent("c3")
        code, _ = await self.http(plain, "PUT", f"/v1/agent/join/{lan(c1)}")
        self.assertEqual(code, 500)
        self.assertEqual(await self.statuses(c1), {"c1": 1, "c2": 1})
        self.assertEqual(await self.statuses(plain), {"c3": 1})
        self.assertGreater(self.dropped(c1), 0)  # its push/pull, refused

    async def test_the_wan_pool_follows_the_same_flags(self) -> None:
        """A plaintext server of another datacenter joins the WAN pool only while it may."""
        off = {"encrypt_verify_incoming": False, "encrypt_verify_outgoing": False}
        lenient = await self.agent("s1", server=True, encrypt=KEY, **off)
        strict = await self.agent("s2", server=True, encrypt=KEY)
        plain = await self.agent("s3", server=True, datacenter="dc2")
        code, _ = await self.http(plain, "PUT", f"/v1/agent/join/{wan(lenient)}?wan=1")
        self.assertEqual(code, 200)
        both = {"s1.dc1": 1, "s3.dc2": 1}
        for agent in (lenient, plain):
            await self.wait_for(functools.partial(self.has_statuses, agent, both, "?wan=1"))
        code, _ = await self.http(plain, "PUT", f"/v1/agent/join/{wan(strict)}?wan=1")
        self.assertEqual(code, 500)
        self.assertEqual(await self.statuses(strict, "?wan=1"), {"s2.dc1": 1})
