"""
A client agent in front of three Raft servers, all in this process on
127.0.0.1: the client keeps no state and sends every read, write and DNS
question to a server, moving to another one when a server stops.
py-consul talks to the client, as a Consul user's code would.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import treq
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.names import client as dns_client
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError, DNSServerError

from txconsul.agent.agent import Agent
from txconsul.test.agent.support import FAST, ClusterTestCase, lan
from txconsul.testing.agent import api_call, start_agent


class ClientClusterTestCase(ClusterTestCase):
    """The shared fixtures, and what only the client tests ask."""

    @staticmethod
    def has_service(server: Agent, node: str, sid: str) -> bool:
        return sid in server.store.catalog.services.get(node, {})

    async def stale_value(self, agent: Agent, key: str, want: str) -> bool:
        return await self.stale_kv(agent, key) == want

    async def equals(self, got: Any, want: Any) -> bool:
        return bool(await got == want)


class ClientForwardingTests(ClientClusterTestCase):
    async def test_kv_put_get_and_cas_through_a_client(self) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers)
        kv = self.py_consul(c1).kv
        self.assertIs(await self.call(kv.put, "web/maxconn", "100"), True)
        index, entry = await self.call(kv.get, "web/maxconn")
        self.assertEqual(entry["Value"], b"100")
        self.assertEqual(int(index), entry["ModifyIndex"])
        self.assertIs(await self.call(kv.put, "web/maxconn", "200", cas=entry["ModifyIndex"]), True)
        self.assertIs(
            await self.call(kv.put, "web/maxconn", "300", cas=entry["ModifyIndex"]), False
        )
        _, entry = await self.call(kv.get, "web/maxconn")
        self.assertEqual(entry["Value"], b"200")
        # every server has it; the client's own store has nothing
        for server in servers:
            await self.wait_for(functools.partial(self.stale_value, server, "web/maxconn", "200"))
        self.assertIsNone(c1.store.kv.get("web/maxconn"))
        self.assertEqual(c1.store.catalog.nodes, {})
        # a bad request is refused by the server with its own words
        code, body = await api_call(c1, "GET", "/v1/kv/x?index=abc")
        self.assertEqual((code, body), (400, "Invalid index\n"))
        code, body = await api_call(c1, "PUT", "/v1/txn", b"[]")
        self.assertEqual(code, 200)
        self.assertEqual(body, {"Results": [], "Errors": None})

    async def test_a_blocking_query_on_the_client_wakes_on_a_write_through_another_server(
        self,
    ) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers)
        kv = self.py_consul(c1).kv
        await self.call(kv.put, "config/color", "red")
        index, _ = await self.call(kv.get, "config/color")
        blocked = self.call(kv.get, "config/color", index=index, wait="20s")
        # the write goes in through a server the client does not use
        other = next(s for s in servers if s.config.rpc_address != c1.remote.forwarder.preferred)
        code, _ = await api_call(other, "PUT", "/v1/kv/config/color", b"blue")
        self.assertEqual(code, 200)
        new_index, entry = await blocked
        self.assertGreater(int(new_index), int(index))
        self.assertEqual(entry["Value"], b"blue")
        # the headers of a read come from the leader
        response = await deferToThread(
            self.py_consul(c1).http.session.get,
            f"http://{c1.http.address()[0]}:{c1.http.address()[1]}/v1/kv/config/color",
        )
        self.assertEqual(response.headers["X-Consul-KnownLeader"], "true")
        self.assertEqual(response.headers["X-Consul-LastContact"], "0")
        self.assertEqual(response.headers["X-Consul-Index"], new_index)

    async def test_catalog_and_health_show_the_clients_services(self) -> None:
        servers = await self.cluster()
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        with open(os.path.join(config_dir, "db.json"), "w") as f:
            json.dump({"service": {"name": "db", "port": 5432, "check": {"ttl": "30s"}}}, f)
        c1 = await self.client("c1", servers, dirs=(config_dir,))
        client = self.py_consul(c1)
        ok = await self.call(
            client.agent.service.register, "web", port=80, check={"TTL": "30s"}, tags=["v1"]
        )
        self.assertIs(ok, True)
        await self.call(client.agent.check.ttl_pass, "service:web")
        _, nodes = await self.call(client.catalog.service, "web")
        self.assertEqual([(n["Node"], n["ServicePort"]) for n in nodes], [("c1", 80)])
        _, entries = await self.call(client.health.service, "web", passing=True)
        self.assertEqual([e["Node"]["Node"] for e in entries], ["c1"])
        _, entries = await self.call(client.health.service, "db", passing=True)
        self.assertEqual(entries, [])  # its TTL has not passed yet: critical
        _, node = await self.call(client.catalog.node, "c1")
        self.assertEqual(sorted(node["Services"]), ["db", "web"])
        # the leader keeps the client's liveness check
        _, checks = await self.call(client.health.node, "c1")
        self.assertIn("serfHealth", {c["CheckID"] for c in checks})
        # the servers have it, the client's store has nothing
        for server in servers:
            await self.wait_for(functools.partial(self.has_service, server, "c1", "web"))
        self.assertEqual(c1.store.catalog.services, {})
        # a deregistration travels too
        await self.call(client.agent.service.deregister, "web")
        _, nodes = await self.call(client.catalog.service, "web")
        self.assertEqual(nodes, [])

    async def test_dns_on_the_client_answers_from_the_servers(self) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers, ports={"dns": 0})
        client = self.py_consul(c1)
        await self.call(client.agent.service.register, "api", port=8080, address="10.0.0.9")
        assert c1.dns is not None
        host, port = c1.dns.address()
        resolver = dns_client.Resolver(servers=[(host, port)], reactor=reactor)

        async def known() -> bool:
            # DNS reads are stale by default: the server asked may apply the write a little later
            try:
                await resolver.lookupAddress("api.service.consul")
            except dns.DomainError:
                return False
            return True

        await self.wait_for(known)
        answers, _, _ = await resolver.lookupAddress("api.service.consul")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["10.0.0.9"])
        answers, _, additional = await resolver.lookupService("api.service.consul")
        self.assertEqual([a.payload.port for a in answers], [8080])
        answers, _, _ = await resolver.lookupAddress("s2.node.consul")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])
        failure = await self.assertFailure(
            resolver.lookupAddress("nothing.service.consul"), dns.DomainError
        )
        self.assertIsNotNone(failure)

    async def test_agent_self_on_a_client_names_the_leader(self) -> None:
        servers = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(servers)) == 1)
        leader = self.leader(servers)
        c1 = await self.client("c1", servers)
        me = await self.call(self.py_consul(c1).agent.self)
        stats = me["Stats"]["consul"]
        self.assertEqual(stats["leader_addr"], leader.config.rpc_address)
        self.assertEqual((stats["server"], stats["leader"]), ("false", "false"))
        self.assertEqual(stats["known_servers"], "3")
        self.assertIs(me["Config"]["Server"], False)

    async def test_dns_without_allow_stale_is_answered_by_the_leader(self) -> None:
        servers = await self.cluster()
        await self.wait_for(lambda: len(self.leaders(servers)) == 1)
        leader = self.leader(servers)
        follower = next(s for s in servers if s is not leader)
        await self.wait_for(lambda: self.knows(follower, leader))
        strict = await self.client(
            "strict", servers, ports={"dns": 0}, dns_config={"allow_stale": False}
        )
        stale = await self.client("stale", servers, ports={"dns": 0})
        for agent in (strict, stale):
            agent.remote.forwarder.preferred = follower.config.rpc_address

        # the follower sends the strict client's question on to the leader
        self.assertEqual(await self.resolve(strict, "s1.node.consul"), ["127.0.0.1"])
        forwarded = follower.remote.sent.get("DNS.Lookup", 0)
        self.assertGreaterEqual(forwarded, 1)
        # the default (allow_stale) is answered by the follower itself
        self.assertEqual(await self.resolve(stale, "s2.node.consul"), ["127.0.0.1"])
        self.assertEqual(follower.remote.sent.get("DNS.Lookup", 0), forwarded)

    async def resolve(self, agent: Agent, name: str) -> list[str]:
        """The A records of ``name`` from ``agent``'s DNS, asked until it answers."""
        assert agent.dns is not None
        resolver = dns_client.Resolver(servers=[agent.dns.address()], reactor=reactor)
        got: list[str] = []

        async def answered() -> bool:
            # SERVFAIL while a leader's lease lapses (a loaded machine) is right; ask again
            try:
                answers, _, _ = await resolver.lookupAddress(name, timeout=[2])
            except (dns.DomainError, DNSServerError, DNSQueryTimeoutError):
                return False
            got[:] = [a.payload.dottedQuad() for a in answers]
            return True

        await self.wait_for(answered)
        return got

    async def test_a_followers_own_dns_without_allow_stale_asks_the_leader(self) -> None:
        strict = {"ports": {"dns": 0}, "dns_config": {"allow_stale": False}}
        s1 = self.server("s1", **strict)
        servers = [s1] + [
            self.server(name, start_join=[lan(s1)], **strict) for name in ("s2", "s3")
        ]
        await gatherResults([s.when_ready() for s in servers])
        await self.wait_for(lambda: len(self.leaders(servers)) == 1)
        leader = self.leader(servers)
        for follower in servers:
            if follower is leader:
                continue
            await self.wait_for(functools.partial(self.knows, follower, leader))
            self.assertEqual(await self.resolve(follower, "s3.node.consul"), ["127.0.0.1"])
            self.assertGreaterEqual(follower.remote.sent.get("DNS.Lookup", 0), 1)
        self.assertEqual(await self.resolve(leader, "s1.node.consul"), ["127.0.0.1"])
        self.assertIsNone(leader.remote.sent.get("DNS.Lookup"))  # the leader answers itself

    async def test_a_stopped_server_is_retried_around(self) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers)
        kv = self.py_consul(c1).kv
        self.assertIs(await self.call(kv.put, "k", "1"), True)
        used = c1.remote.forwarder.preferred
        assert used is not None
        gone = next(s for s in servers if s.config.rpc_address == used)
        await gone.stopService()
        rest = [s for s in servers if s is not gone]
        await self.wait_for(lambda: any(s.consensus.is_leader() for s in rest))
        # reads and writes go on through another server
        self.assertIs(await self.call(kv.put, "k", "2"), True)
        _, entry = await self.call(kv.get, "k")
        self.assertEqual(entry["Value"], b"2")
        self.assertNotEqual(c1.remote.forwarder.preferred, used)

    async def test_a_client_that_knows_no_server_answers_500(self) -> None:
        c1 = await start_agent(
            self,
            reactor,
            node_name="lonely",
            dev=False,
            server=False,
            data_dir=self.mktemp(),
            gossip_lan=FAST,
        )
        for method, path in [
            ("GET", "/v1/kv/x"),
            ("PUT", "/v1/kv/x"),
            ("GET", "/v1/catalog/services"),
            ("GET", "/v1/status/leader"),
        ]:
            code, body = await api_call(c1, method, path)
            self.assertEqual((code, body), (500, "No known Consul servers\n"), path)
        # its own endpoints still answer (it knows no leader), and a registration waits
        code, me = await api_call(c1, "GET", "/v1/agent/self")
        self.assertEqual(code, 200)
        self.assertEqual(me["Stats"]["consul"]["leader_addr"], "")
        self.assertEqual(me["Stats"]["consul"]["known_servers"], "0")
        code, _ = await api_call(
            c1, "PUT", "/v1/agent/service/register", json.dumps({"Name": "web"}).encode()
        )
        self.assertEqual(code, 200)
        code, services = await api_call(c1, "GET", "/v1/agent/services")
        self.assertEqual((code, sorted(services)), (200, ["web"]))


class ClientStateTests(ClientClusterTestCase):
    async def passing(self, agent: Agent, service: str) -> list[str]:
        code, entries = await api_call(agent, "GET", f"/v1/health/service/{service}?passing")
        self.assertEqual(code, 200, entries)
        return [e["Node"]["Node"] for e in entries]

    async def test_a_service_deleted_through_a_server_comes_back_with_the_next_full_sync(
        self,
    ) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers)
        client = self.py_consul(c1)
        await self.call(client.agent.service.register, "web", port=80, check={"TTL": "1h"})
        await self.call(client.agent.check.ttl_pass, "service:web", "fine")
        body = json.dumps({"Node": "c1", "ServiceID": "web"}).encode()
        code, _ = await api_call(servers[1], "PUT", "/v1/catalog/deregister", body)
        self.assertEqual(code, 200)
        _, nodes = await self.call(client.catalog.service, "web")
        self.assertEqual(nodes, [])
        # the next periodic full sync, brought forward, puts it back
        timer = c1.local.sync_timer
        assert timer is not None and timer.active()
        writes = c1.local.writes
        timer.reset(0)
        await self.wait_for(lambda: self.passing(c1, "web"))
        self.assertEqual(await self.passing(c1, "web"), ["c1"])
        _, checks = await self.call(client.health.checks, "web")
        self.assertEqual([(c["Status"], c["Output"]) for c in checks], [("passing", "fine")])
        self.assertEqual(c1.local.writes, writes + 1)  # the service with its check, at once
        # a full sync that finds nothing to correct writes nothing
        timer = c1.local.sync_timer
        assert timer is not None
        syncs = c1.local.full_syncs
        timer.reset(0)
        await self.wait_for(lambda: c1.local.full_syncs > syncs)
        self.assertEqual(c1.local.writes, writes + 1)

    async def test_a_failed_clients_services_drop_out_of_the_passing_list(self) -> None:
        servers = await self.cluster()
        c1 = await self.client("c1", servers)
        client = self.py_consul(c1)
        await self.call(client.agent.service.register, "web", port=80)
        await self.wait_for(lambda: self.equals(self.passing(servers[0], "web"), ["c1"]))
        start = time.monotonic()
        await c1.stopService()  # abrupt: no leave, its gossip just stops
        await self.wait_for(lambda: self.equals(self.passing(servers[0], "web"), []))
        detected = time.monotonic() - start
        # the node stays in the catalog, its serfHealth critical
        code, checks = await api_call(servers[0], "GET", "/v1/health/node/c1")
        self.assertEqual(code, 200)
        health = {c["CheckID"]: c["Status"] for c in checks}
        self.assertEqual(health["serfHealth"], "critical")
        code, entries = await api_call(servers[0], "GET", "/v1/health/service/web")
        self.assertEqual([e["Node"]["Node"] for e in entries], ["c1"])
        # within the failure detection of these gossip timings (100 ms probes)
        self.assertLess(detected, 5.0)


class _HTTPRequest(Protocol):
    """One raw HTTP request on its own connection, which the test drops at will."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class AbandonedQueryTests(ClientClusterTestCase):
    """A blocking query whose HTTP client goes away is dropped on the server too."""

    async def test_abandoned_blocking_queries_do_not_pile_up_on_the_server(self) -> None:
        s1 = self.server("s1", bootstrap_expect=0, bootstrap=True)
        await s1.when_ready()
        c1 = await self.client("c1", [s1])
        assert s1.servers is not None and s1.servers.listener is not None
        rpc = s1.servers.listener.factory
        code, _ = await api_call(c1, "PUT", "/v1/kv/watched", b"1")
        self.assertEqual(code, 200)
        index = s1.store.kv.get("watched").modify_index
        host, port = c1.http.address()
        endpoint = TCP4ClientEndpoint(reactor, host, port)
        n = 40
        for _round in range(3):
            queries = [_HTTPRequest(f"/v1/kv/watched?index={index}&wait=5m") for _ in range(n)]
            for query in queries:
                await connectProtocol(endpoint, query)
            # every query waits on the server, in one RPC each
            await self.wait_for(lambda: len(s1.store.watches) == n and rpc.in_flight() == n)
            for query in queries:
                assert query.transport is not None
                query.transport.abortConnection()
            await gatherResults([q.closed for q in queries])
            # gone from the server at once, not when their 5 minutes are up
            await self.wait_for(lambda: len(s1.store.watches) == 0 and rpc.in_flight() == 0, 5)
            self.assertEqual([q.received for q in queries], [b""] * n)
        self.assertEqual(rpc.stats["cancelled"], 3 * n)
        # the connection to the server serves on: a write wakes a new query
        waiting = treq.get(
            f"http://{host}:{port}/v1/kv/watched?index={index}&wait=5m", persistent=False
        )
        await self.wait_for(lambda: len(s1.store.watches) == 1)
        code, _ = await api_call(c1, "PUT", "/v1/kv/watched", b"2")
        self.assertEqual(code, 200)
        response = await waiting
        self.assertEqual(response.code, 200)
        self.assertGreater(int(response.headers.getRawHeaders(b"x-consul-index")[0]), index)
