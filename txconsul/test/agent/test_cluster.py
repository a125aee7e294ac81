"""
Three server agents in one process on 127.0.0.1 forming a Raft cluster:
bootstrap on ``bootstrap_expect``, writes through a follower, leader loss,
the status and operator endpoints.
"""

from __future__ import annotations

import base64
import functools
import json
import sqlite3
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher

from txconsul.agent.agent import Agent
from txconsul.test.agent.support import ClusterTestCase, lan, server_port


class ClusterTests(ClusterTestCase):
    async def test_three_servers_elect_one_leader_and_agree_on_it(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        addresses = sorted(a.config.rpc_address for a in agents)

        async def all_name_the_leader() -> bool:
            # polled: on a loaded machine a late heartbeat may start an
            # election between one answer and the next
            leaders = self.leaders(agents)
            if len(leaders) != 1:
                return False
            answers = [await self.http(agent, "GET", "/v1/status/leader") for agent in agents]
            return answers == [(200, leaders[0].config.rpc_address)] * len(agents)

        await self.wait_for(all_name_the_leader)
        leader = self.leaders(agents)[0]
        for agent in agents:
            code, body = await self.http(agent, "GET", "/v1/status/peers")
            self.assertEqual(sorted(body), addresses)
        code, body = await self.http(agents[0], "GET", "/v1/operator/raft/configuration")
        self.assertEqual(code, 200)
        servers = {s["Node"]: s for s in body["Servers"]}
        self.assertEqual(sorted(servers), ["s1", "s2", "s3"])
        for agent in agents:
            entry = servers[agent.config.node_name]
            self.assertEqual(entry["Address"], agent.config.rpc_address)
            self.assertEqual(entry["ID"], agent.node_id)
            self.assertEqual(entry["Leader"], agent is leader)
            self.assertEqual((entry["Voter"], entry["ProtocolVersion"]), (True, "3"))
        self.assertIsInstance(body["Index"], int)

    async def test_the_advertised_server_port_is_the_bound_port(self) -> None:
        agents = await self.cluster()
        for agent in agents:
            assert agent.servers is not None
            assert agent.servers.listener is not None
            port = agent.servers.listener.address()[1]
            self.assertNotEqual(port, 0)
            self.assertEqual(agent.config.rpc_address, f"127.0.0.1:{port}")
            self.assertEqual(agent.member()["Tags"]["port"], str(port))

    async def test_a_write_through_a_follower_is_readable_on_every_server(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        follower = next(a for a in agents if a not in self.leaders(agents))
        code, body = await self.http(follower, "PUT", "/v1/kv/greeting", b"hello")
        self.assertEqual((code, body), (200, True))
        for agent in agents:
            await self.wait_for(functools.partial(self.stale_kv, agent, "greeting"))
            self.assertEqual(await self.stale_kv(agent, "greeting"), "hello")
        # every server is in the catalog with its consul service
        await self.wait_for(lambda: self._service_nodes(follower, "consul", {"s1", "s2", "s3"}))

    async def _service_nodes(self, agent: Agent, service: str, want: set[str]) -> bool:
        code, body = await self.http(agent, "GET", f"/v1/catalog/service/{service}")
        return code == 200 and {e["Node"] for e in body} == want

    async def test_a_new_leader_takes_over_when_the_leader_stops(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        old = self.leaders(agents)[0]
        code, _ = await self.http(old, "PUT", "/v1/kv/before", b"1")
        self.assertEqual(code, 200)
        await old.stopService()
        rest = [a for a in agents if a is not old]
        await self.wait_for(lambda: len(self.leaders(rest)) == 1)
        new = self.leaders(rest)[0]
        self.assertNotEqual(new.config.rpc_address, old.config.rpc_address)
        follower = next(a for a in rest if a is not new)
        await self.wait_for(lambda: follower.consensus.leader_address() == new.config.rpc_address)
        code, body = await self.http(follower, "PUT", "/v1/kv/after", b"2")
        self.assertEqual((code, body), (200, True))
        for agent in rest:
            await self.wait_for(functools.partial(self.stale_kv, agent, "after"))
            self.assertEqual(await self.stale_kv(agent, "before"), "1")

    async def test_removing_a_stopped_peer_shrinks_the_configuration(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        leader = self.leaders(agents)[0]
        gone = next(a for a in agents if a is not leader)
        address = gone.config.rpc_address
        await gone.stopService()
        rest = [a for a in agents if a is not gone]
        follower = next(a for a in rest if a is not leader)
        code, _ = await self.http(follower, "DELETE", f"/v1/operator/raft/peer?address={address}")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: address not in leader.consensus.peers())
        code, body = await self.http(follower, "DELETE", "/v1/operator/raft/peer?address=1.2.3.4:5")
        self.assertEqual(code, 404)

    async def test_a_server_joining_a_running_cluster_is_added_as_a_voter(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        leader = self.leaders(agents)[0]
        s4 = self.server("s4", start_join=[lan(agents[0])])
        await s4.when_ready()
        await self.wait_for(lambda: s4.config.rpc_address in leader.consensus.peers())
        await self.wait_for(lambda: len(s4.consensus.peers()) == 4)
        code, body = await self.http(s4, "PUT", "/v1/kv/fourth", b"4")
        self.assertEqual((code, body), (200, True))
        for agent in [*agents, s4]:
            await self.wait_for(functools.partial(self.stale_kv, agent, "fourth"))

    async def test_a_server_that_leaves_is_removed_from_the_voters(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        leader = self.leaders(agents)[0]
        gone = next(a for a in agents if a is not leader)
        address = gone.config.rpc_address
        await gone.leave()
        await self.wait_for(lambda: address not in leader.consensus.peers())
        self.assertEqual(len(leader.consensus.peers()), 2)

    async def test_a_bootstrap_server_adds_servers_that_join_it(self) -> None:
        s1 = self.server("s1", bootstrap_expect=0, bootstrap=True)
        await s1.when_ready()
        self.assertTrue(s1.consensus.is_leader())
        s2 = self.server("s2", bootstrap_expect=0, start_join=[lan(s1)])
        s3 = self.server("s3", bootstrap_expect=0, start_join=[lan(s1)])
        agents = [s1, s2, s3]
        await gatherResults([a.when_ready() for a in agents])
        addresses = sorted(a.config.rpc_address for a in agents)
        for agent in agents:
            await self.wait_for(functools.partial(self.has_voters, agent, addresses))
        code, body = await self.http(s3, "PUT", "/v1/kv/joined", b"yes")
        self.assertEqual((code, body), (200, True))
        for agent in agents:
            await self.wait_for(functools.partial(self.stale_kv, agent, "joined"))

    async def test_a_forwarded_write_fails_on_a_follower_as_on_the_leader(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        leader = self.leaders(agents)[0]
        follower = next(a for a in agents if a is not leader)
        await self.wait_for(lambda: follower.consensus.leader_address() != "")
        code, _ = await self.http(leader, "PUT", "/v1/kv/exists", b"1")
        self.assertEqual(code, 200)
        value = base64.b64encode(b"v").decode()
        txn = json.dumps(
            [
                {"KV": {"Verb": "check-not-exists", "Key": "exists"}},
                {"KV": {"Verb": "set", "Key": "other", "Value": value}},
            ]
        ).encode()
        register = json.dumps(
            {
                "Node": "n9",
                "Address": "10.0.0.9",
                "Check": {"Name": "c", "ServiceID": "nosuch", "Status": "passing"},
            }
        ).encode()
        cases = [
            ("PUT", "/v1/txn", txn, 409),
            ("PUT", "/v1/kv/exists?cas=999999", b"2", 200),
            ("PUT", "/v1/catalog/register", register, 400),
        ]
        for method, path, body, status in cases:
            on_leader = await self.http(leader, method, path, body)
            on_follower = await self.http(follower, method, path, body)
            self.assertEqual(on_leader[0], status, (path, on_leader))
            self.assertEqual(on_follower, on_leader, path)
        code, body = await self.http(follower, "PUT", "/v1/txn", txn)
        self.assertEqual(body["Results"], None)
        self.assertEqual(body["Errors"][0]["OpIndex"], 0)
        self.assertEqual(await self.stale_kv(follower, "exists"), "1")
        self.assertIsNone(await self.stale_kv(leader, "other"))

    async def test_a_server_without_a_leader_answers_no_cluster_leader(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        leader = self.leaders(agents)[0]
        rest = [a for a in agents if a is not leader]
        await rest[1].stopService()
        await leader.stopService()
        alone = rest[0]
        assert alone.servers is not None
        alone.servers.forwarder.deadline = 0.5  # Consul waits 7 s for a leader
        await self.wait_for(lambda: alone.consensus.leader_address() == "")
        code, body = await self.http(alone, "PUT", "/v1/kv/nobody", b"1")
        self.assertEqual((code, body), (500, "No cluster leader\n"))

    async def test_a_leader_that_leaves_hands_over_and_nobody_waits_for_an_election(
        self,
    ) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        old = self.leaders(agents)[0]
        rest = [a for a in agents if a is not old]
        for agent in rest:
            await self.wait_for(functools.partial(self.knows, agent, old))
        assert old.servers is not None and old.servers.node is not None
        term = old.servers.node.core.term
        roles: list[tuple[str, str]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_format", "").startswith("raft: {role}"):
                roles.append((event["server"], event["role"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        code, _ = await self.http(old, "PUT", "/v1/agent/leave")
        self.assertEqual(code, 200)
        await self.wait_for(lambda: len(self.leaders(rest)) == 1)
        new = self.leaders(rest)[0]
        assert new.servers is not None and new.servers.node is not None
        # TimeoutNow: the target stood at once, in the next term, with no pre-vote
        self.assertEqual(new.servers.node.core.term, term + 1)
        others = {a.config.rpc_address for a in rest}
        self.assertNotIn("pre-candidate", [role for server, role in roles if server in others])
        self.assertIn((new.config.rpc_address, "candidate"), roles)
        await self.wait_for(lambda: old.config.rpc_address not in new.consensus.peers())
        code, body = await self.http(new, "PUT", "/v1/kv/after-leave", b"1")
        self.assertEqual((code, body), (200, True))

    async def test_a_leader_whose_fsync_fails_acknowledges_nothing_more_and_loses_nothing(
        self,
    ) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        broken = self.leaders(agents)[0]
        rest = [a for a in agents if a is not broken]
        for agent in rest:
            await self.wait_for(functools.partial(self.knows, agent, broken))
        acked = []
        for i in range(5):
            for agent in agents:
                key = f"before/{agent.config.node_name}/{i}"
                self.assertTrue(await self.put(agent, key))
                acked.append(key)
        assert broken.servers is not None and broken.servers.node is not None
        node = broken.servers.node

        def disk_error() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        node._store._commit = disk_error  # type: ignore[attr-defined]
        for i in range(3):
            self.assertFalse(await self.put(broken, f"refused/{i}"))
        self.assertTrue(node.halted)
        self.assertFalse(broken.consensus.is_leader())
        self.assertEqual(broken.consensus.leader_address(), "")
        await self.wait_for(lambda: len(self.leaders(rest)) == 1)
        for i in range(3):
            for agent in rest:
                key = f"after/{agent.config.node_name}/{i}"
                self.assertTrue(await self.put(agent, key))
                acked.append(key)
        self.assertFalse(await self.put(broken, "refused/late"))
        for agent in rest:
            for key in acked:
                await self.wait_for(functools.partial(self.stale_kv, agent, key))
            for i in range(3):
                self.assertIsNone(await self.stale_kv(agent, f"refused/{i}"))


class RestartFromDiskTests(ClusterTestCase):
    """Servers restarted on the same data directory and RPC port (their Raft identity)."""

    async def test_servers_killed_right_after_bootstrap_restart_from_their_disk(self) -> None:
        # All three start Raft with the voter list, then stop before they can
        # have committed anything: the list is all their disks hold.
        dirs = {name: self.mktemp() for name in ("s1", "s2", "s3")}
        s1 = self.server("s1", data_dir=dirs["s1"])
        s2 = self.server("s2", data_dir=dirs["s2"], start_join=[lan(s1)])
        s3 = self.server("s3", data_dir=dirs["s3"], start_join=[lan(s1)])
        agents = [s1, s2, s3]
        await self.wait_for(lambda: all(a.servers.node is not None for a in agents))
        ports = {a.config.node_name: server_port(a) for a in agents}
        voters = sorted(a.config.rpc_address for a in agents)
        for agent in agents:
            await agent.stopService()
        # Two of the three come back; bootstrap_expect 3 would wait for the
        # third forever, but their disks say who the voters are.
        r1 = self.server("s1", data_dir=dirs["s1"], ports={"server": ports["s1"]})
        r2 = self.server(
            "s2", data_dir=dirs["s2"], ports={"server": ports["s2"]}, start_join=[lan(r1)]
        )
        back = [r1, r2]
        await gatherResults([a.when_ready() for a in back])
        for agent in back:
            assert agent.servers is not None and agent.servers.node is not None
            self.assertEqual(sorted(agent.consensus.peers()), voters)
        await self.wait_for(lambda: len(self.leaders(back)) == 1)
        self.assertTrue(await self.put(r2, "after-restart"))
        for agent in back:
            await self.wait_for(functools.partial(self.stale_kv, agent, "after-restart"))

    async def test_a_restarted_cluster_keeps_its_voters_and_its_data(self) -> None:
        agents = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(agents)) == 1)
        self.assertTrue(await self.put(agents[0], "before"))
        ports = {a.config.node_name: server_port(a) for a in agents}
        dirs = {a.config.node_name: a.config.data_dir for a in agents}
        voters = sorted(a.config.rpc_address for a in agents)
        for agent in agents:
            await agent.stopService()
        r1 = self.server("s1", data_dir=dirs["s1"], ports={"server": ports["s1"]})
        rest = [
            self.server(n, data_dir=dirs[n], ports={"server": ports[n]}, start_join=[lan(r1)])
            for n in ("s2", "s3")
        ]
        back = [r1, *rest]
        await gatherResults([a.when_ready() for a in back])
        await self.wait_for(lambda: len(self.leaders(back)) == 1)
        for agent in back:
            self.assertEqual(sorted(agent.consensus.peers()), voters)
            await self.wait_for(functools.partial(self.stale_kv, agent, "before"))
