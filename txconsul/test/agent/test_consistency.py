"""
Consistency modes on a three-server cluster in this process (DESIGN.md):
default reads are the leader's while its lease holds, ``?consistent`` reads
wait for a quorum to confirm the leader, ``?stale`` reads are answered by any
server from its own store. A follower cut off from the leader still answers
``?stale`` but neither of the others.
"""

from __future__ import annotations

import functools
from typing import Any

import treq
from twisted.internet.defer import Deferred, fail

from txconsul.agent.agent import Agent
from txconsul.rpc.errors import RPCConnectError
from txconsul.test.agent.support import ClusterTestCase
from txconsul.testing.agent import api_call, http_address


def partition(a: Agent, b: Agent) -> None:
    """Cut Raft and RPC between two servers, both ways (gossip goes on)."""
    for one, other in ((a, b), (b, a)):
        servers = one.servers
        assert servers is not None and servers.transport is not None
        transport = servers.transport
        cut = other.config.rpc_address
        send, receive, call = transport.send, transport.receive, servers.client.call
        assert receive is not None

        def send_unless_cut(to: str, data: bytes, send: Any = send, cut: str = cut) -> None:
            if to != cut:
                send(to, data)

        def receive_unless_cut(
            src: str, data: bytes, receive: Any = receive, cut: str = cut
        ) -> None:
            if src != cut:
                receive(src, data)

        def call_unless_cut(
            address: str, method: str, body: Any, timeout: float, call: Any = call, cut: str = cut
        ) -> Deferred[Any]:
            if address == cut:
                return fail(RPCConnectError(f"cannot reach {address}: partitioned"))
            result: Deferred[Any] = call(address, method, body, timeout)
            return result

        transport.send = send_unless_cut  # type: ignore[method-assign]
        transport.receive = receive_unless_cut
        servers.client.call = call_unless_cut  # type: ignore[method-assign]


class ConsistencyTests(ClusterTestCase):
    async def get(self, agent: Agent, path: str) -> tuple[int, dict[str, str], Any]:
        response = await treq.get(f"http://{http_address(agent)}{path}", persistent=False)
        body = await response.text()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()
        }
        return response.code, headers, body

    async def ok(self, agent: Agent, path: str) -> tuple[dict[str, str], str]:
        """A read that must answer 200 (tried again through a lease lapse of a loaded machine)."""
        answers: list[tuple[dict[str, str], str]] = []

        async def done() -> bool:
            code, headers, body = await self.get(agent, path)
            answers.append((headers, body))
            return code == 200

        await self.wait_for(done)
        return answers[-1]

    async def put(self, agent: Agent, key: str, value: bytes) -> None:
        """A write that must succeed (a loaded machine may make an election happen first)."""

        async def done() -> bool:
            code, _ = await api_call(agent, "PUT", f"/v1/kv/{key}", value)
            return code == 200

        await self.wait_for(done)

    async def settled(self) -> tuple[Agent, list[Agent]]:
        servers = await self.cluster()
        await self.wait_for(lambda: len([s for s in servers if s.consensus.is_leader()]) == 1)
        leader = self.leader(servers)
        followers = [s for s in servers if s is not leader]
        address = leader.config.rpc_address
        for f in followers:
            await self.wait_for(functools.partial(self.follows, f, address))
        return leader, followers

    @staticmethod
    def follows(agent: Agent, leader: str) -> bool:
        return agent.consensus.leader_address() == leader

    def hops(self, agent: Agent) -> int:
        return agent.remote.sent.get("HTTP.Request", 0)

    def count_confirmations(self, leader: Agent) -> list[int]:
        """Count the leader's read-index rounds from now on."""
        node = leader.servers.node  # type: ignore[union-attr]
        assert node is not None
        rounds: list[int] = []
        original = node.consistent_read

        def counted() -> Deferred[int]:
            rounds.append(1)
            return original()

        node.consistent_read = counted  # type: ignore[method-assign]
        return rounds

    async def test_a_default_read_on_a_follower_is_the_leaders(self) -> None:
        leader, (follower, _) = await self.settled()
        await self.put(leader, "k", b"v")
        before = self.hops(follower)
        headers, _ = await self.ok(follower, "/v1/kv/k")
        self.assertGreater(self.hops(follower), before)
        self.assertEqual(headers["x-consul-knownleader"], "true")
        self.assertEqual(headers["x-consul-lastcontact"], "0")
        # a missing key is the leader's 404, with its index
        code, headers, body = await self.get(follower, "/v1/kv/missing")
        self.assertEqual((code, body), (404, ""))
        self.assertGreaterEqual(int(headers["x-consul-index"]), 1)
        # on the leader itself nothing travels
        before = self.hops(leader)
        await self.ok(leader, "/v1/kv/k")
        self.assertEqual(self.hops(leader), before)

    async def test_a_consistent_read_confirms_the_leader_with_a_quorum(self) -> None:
        leader, (follower, _) = await self.settled()
        await self.put(leader, "k", b"v")
        rounds = self.count_confirmations(leader)
        before = self.hops(follower)
        await self.ok(follower, "/v1/kv/k?consistent")
        self.assertGreater(self.hops(follower), before)
        self.assertGreaterEqual(len(rounds), 1)
        seen = len(rounds)
        await self.ok(leader, "/v1/catalog/nodes?consistent")
        self.assertGreater(len(rounds), seen)
        # a read-only transaction follows the same rule
        seen = len(rounds)

        async def txn() -> bool:
            response = await treq.put(
                f"http://{http_address(follower)}/v1/txn?consistent",
                data=b'[{"KV": {"Verb": "get", "Key": "k"}}]',
                persistent=False,
            )
            await response.content()
            return bool(response.code == 200)

        await self.wait_for(txn)
        self.assertGreater(len(rounds), seen)

    async def test_a_stale_read_is_answered_by_the_follower_itself(self) -> None:
        leader, (follower, _) = await self.settled()
        await self.put(leader, "k", b"v")
        await self.wait_for(lambda: follower.store.kv.get("k") is not None)
        before = self.hops(follower)
        code, headers, _ = await self.get(follower, "/v1/kv/k?stale")
        self.assertEqual((code, self.hops(follower)), (200, before))
        self.assertEqual(headers["x-consul-knownleader"], "true")
        self.assertLess(int(headers["x-consul-lastcontact"]), 1000)

    async def test_a_blocking_default_query_on_a_follower_blocks_on_the_leader(self) -> None:
        leader, (follower, other) = await self.settled()
        await self.put(leader, "b", b"1")
        headers, _ = await self.ok(follower, "/v1/kv/b")
        index = int(headers["x-consul-index"])
        before = self.hops(follower)
        blocked = self.get(follower, f"/v1/kv/b?index={index}&wait=20s")
        await self.put(other, "b", b"2")
        code, headers, body = await blocked
        self.assertEqual(code, 200)
        self.assertGreater(int(headers["x-consul-index"]), index)
        self.assertGreater(self.hops(follower), before)
        # a blocking ?stale query waits on the follower's own store
        before = self.hops(follower)
        index = int(headers["x-consul-index"])
        blocked = self.get(follower, f"/v1/kv/b?stale&index={index}&wait=20s")
        await self.put(other, "b", b"3")
        code, headers, body = await blocked
        self.assertEqual((code, self.hops(follower)), (200, before))
        self.assertGreater(int(headers["x-consul-index"]), index)

    async def test_a_partitioned_follower_answers_only_stale_reads(self) -> None:
        leader, (follower, _) = await self.settled()
        await self.put(leader, "p", b"before")
        await self.wait_for(lambda: follower.store.kv.get("p") is not None)
        follower.remote.forwarder.deadline = 1.0  # give up on the leader sooner
        partition(follower, leader)
        # the leader keeps its quorum with the third server, and writes go on there
        await self.put(leader, "p", b"after")
        await self.wait_for(lambda: follower.consensus.last_contact() > 0.5)
        code, headers, body = await self.get(follower, "/v1/kv/p?stale")
        self.assertEqual(code, 200)
        self.assertIn('"YmVmb3Jl"', body)  # "before": what this follower has
        known = follower.consensus.leader_address() != ""
        self.assertEqual(headers["x-consul-knownleader"], "true" if known else "false")
        self.assertGreaterEqual(int(headers["x-consul-lastcontact"]), 500)
        for query in ("", "?consistent"):
            code, _, body = await self.get(follower, "/v1/kv/p" + query)
            self.assertEqual((code, body), (500, "No cluster leader\n"), query)
        # the leader still answers every mode
        for query in ("", "?consistent", "?stale"):
            await self.ok(leader, "/v1/kv/p" + query)

    async def test_a_leader_cut_off_from_its_quorum_stops_answering_default_reads(self) -> None:
        leader, followers = await self.settled()
        await self.put(leader, "q", b"1")
        for follower in followers:
            partition(leader, follower)
        # once the lease has run out: no default or consistent read, stale still
        await self.wait_for(lambda: not leader.consensus.is_leader())
        for query in ("", "?consistent"):
            code, _, body = await self.get(leader, "/v1/kv/q" + query)
            self.assertEqual((code, body), (500, "No cluster leader\n"), query)
        code, _, _ = await self.get(leader, "/v1/kv/q?stale")
        self.assertEqual(code, 200)

    async def test_stale_and_consistent_together_are_refused(self) -> None:
        leader, (follower, _) = await self.settled()
        code, _, body = await self.get(follower, "/v1/kv/k?stale&consistent")
        self.assertEqual((code, body), (400, "Conflicting flags: stale and consistent\n"))
