# -*- test-case-name: txconsul.test.http.test_remote -*-
"""
An HTTP request carried over RPC: the wire forms and their bad input, a
server serving one with its own API (a dev agent under a simulated clock),
the server's RPC methods refusing bad bodies, and the client side's retry
rules (a read is sent again after a timeout, a write only when it never left).
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txconsul.agent.agent import Agent
from txconsul.agent.remote import Remote
from txconsul.config import load
from txconsul.dns.authority import Answer
from txconsul.dns.config import DNSConfig
from txconsul.dns.remote import (
    RemoteAuthority,
    answer_from_wire,
    answer_to_wire,
    dns_config_from_wire,
    dns_config_to_wire,
)
from txconsul.errors import BadRequest, NoLeader
from txconsul.http.remote import WireRequest, render_response, serve
from txconsul.rpc.errors import NoServers, RPCConnectError, RPCTimeout
from txconsul.rpc.framing import Request


def wire(method: bytes = b"GET", uri: bytes = b"/v1/kv/k", body: bytes = b"", **kw: Any) -> Any:
    return {"Method": method, "URI": uri, "Headers": [], "Body": body, "Hop": False, **kw}


class WireTests(SynchronousTestCase):
    def test_bad_request_bodies_are_refused_with_a_reason(self) -> None:
        cases = [
            ([], "HTTP.Request takes a map"),
            (wire(method="GET"), "Method must be an HTTP method"),
            (wire(method=b"G T"), "Method must be an HTTP method"),
            (wire(uri=b"v1/kv"), "URI must be a path"),
            (wire(uri="/v1/kv"), "URI must be a path"),
            (wire(body="text"), "Body must be bytes"),
            (wire(Headers=[[b"a"]]), "Headers must be [name, value] byte pairs"),
            (wire(Headers=[["a", "b"]]), "Headers must be [name, value] byte pairs"),
        ]
        for body, reason in cases:
            with self.assertRaises(BadRequest) as caught:
                WireRequest.from_wire(body)
            self.assertIn(reason, str(caught.exception))

    def test_an_answer_is_written_without_its_connection_headers(self) -> None:
        request = DummyRequest([b""])
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        body = render_response(
            request,
            {
                "Code": 404,
                "Headers": [
                    [b"X-Consul-Index", b"7"],
                    [b"Content-Length", b"0"],
                    [b"Transfer-Encoding", b"chunked"],
                    [b"X-Content-Type-Options", b"nosniff"],
                    [b"Set-Cookie", b"a=1"],
                    [b"Set-Cookie", b"b=2"],
                ],
                "Body": b"",
            },
        )
        self.assertEqual((request.responseCode, body), (404, b""))
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"X-Consul-Index"), [b"7"])
        self.assertIsNone(headers.getRawHeaders(b"Content-Length"))
        self.assertIsNone(headers.getRawHeaders(b"Transfer-Encoding"))
        self.assertEqual(headers.getRawHeaders(b"X-Content-Type-Options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"Set-Cookie"), [b"a=1", b"b=2"])

    def test_an_answer_of_the_wrong_shape_is_refused(self) -> None:
        answers: list[Any] = [None, [], {"Code": "200", "Headers": [], "Body": b""}, {"Code": 200}]
        for answer in answers:
            self.assertRaises(BadRequest, render_response, DummyRequest([b""]), answer)


class ServeTests(SynchronousTestCase):
    """A dev agent serving requests that came over RPC."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.agent = Agent(load({"dev": True, "node_name": "n1"}, (), ()), self.reactor)
        self.agent.startService()
        self.addCleanup(self.agent.stopService)
        self.successResultOf(self.agent.when_ready())
        assert self.agent.servers is not None
        self.dispatcher = self.agent.servers.dispatcher

    def serve(self, **kw: Any) -> Any:
        return self.successResultOf(serve(self.agent.site, WireRequest.from_wire(wire(**kw))))

    def rpc(self, method: str, body: Any) -> Any:
        response = self.successResultOf(self.dispatcher.dispatch(Request(method, 1, body)))
        return response.error, response.body

    def test_a_request_is_answered_as_the_agents_own_port_would(self) -> None:
        answer = self.serve(uri=b"/v1/kv/missing")
        self.assertEqual((answer["Code"], answer["Body"]), (404, b""))
        names = [name.lower() for name, _ in answer["Headers"]]
        self.assertIn(b"x-consul-index", names)
        self.assertIn(b"x-consul-knownleader", names)
        answer = self.serve(method=b"PUT", uri=b"/v1/kv/k?flags=3", body=b"hello")
        self.assertEqual((answer["Code"], answer["Body"]), (200, b"true"))
        answer = self.serve(uri=b"/v1/kv/k?raw")
        self.assertEqual((answer["Code"], answer["Body"]), (200, b"hello"))
        answer = self.serve(uri=b"/v1/kv/k?index=x")
        self.assertEqual((answer["Code"], answer["Body"]), (400, b"Invalid index\n"))
        answer = self.serve(method=b"PATCH", uri=b"/v1/kv/k")
        self.assertEqual(answer["Code"], 405)

    def test_cancelling_a_blocked_query_frees_its_watch(self) -> None:
        self.serve(method=b"PUT", uri=b"/v1/kv/k", body=b"1")
        index = self.agent.store.kv.get("k").modify_index
        call = WireRequest.from_wire(wire(uri=b"/v1/kv/k?index=%d&wait=1m" % index))
        d = serve(self.agent.site, call)
        self.assertNoResult(d)
        self.assertEqual(len(self.agent.store.watches), 1)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(len(self.agent.store.watches), 0)

    def test_the_rpc_methods_refuse_bad_bodies(self) -> None:
        cases = [
            ("HTTP.Request", "nonsense", "Bad request: HTTP.Request takes a map"),
            ("Catalog.Register", [1], "Bad request: Catalog.Register takes a registration map"),
            ("Catalog.Register", {"Address": "x"}, "Bad request: Must provide node"),
            ("Catalog.Deregister", None, "Bad request: Catalog.Deregister takes a map"),
            ("Catalog.NodeState", {}, "Bad request: Catalog.NodeState takes {'Node': name}"),
            ("DNS.Lookup", {"Name": "x", "Type": 1}, "Bad request: DNS.Lookup: Name must be"),
            (
                "DNS.Lookup",
                {"Name": b"a.consul", "Type": 1, "Domain": "consul.", "Datacenter": "dc1"},
                "Bad request: DNS.Lookup: Config must be a map",
            ),
        ]
        for method, body, reason in cases:
            error, _ = self.rpc(method, body)
            self.assertTrue(error and error.startswith(reason), (method, error))

    def test_node_state_and_dns_lookup_answer_from_the_catalog(self) -> None:
        error, state = self.rpc("Catalog.NodeState", {"Node": "n1"})
        self.assertIsNone(error)
        self.assertEqual(state["Node"]["Node"], "n1")
        self.assertIn("serfHealth", state["Checks"])
        body = {
            "Name": b"n1.node.consul",
            "Type": dns.A,
            "Domain": "consul.",
            "Datacenter": "dc1",
            "Config": dns_config_to_wire(DNSConfig(node_ttl=30.0)),
        }
        error, answer = self.rpc("DNS.Lookup", body)
        self.assertIsNone(error)
        got = answer_from_wire(answer)
        self.assertEqual([(a.type, a.ttl) for a in got.answers], [(dns.A, 30)])


class DNSWireTests(SynchronousTestCase):
    def test_settings_travel_and_bad_ones_are_refused(self) -> None:
        config = DNSConfig(only_passing=True, service_ttl={"web": 5.0}, udp_answer_limit=2)
        self.assertEqual(dns_config_from_wire(dns_config_to_wire(config)), config)
        bad: list[Any] = [
            [],
            {"only_passing": "yes"},
            {"node_ttl": -1},
            {"udp_answer_limit": 0},
            {"service_ttl": {"web": "5s"}},
        ]
        for raw in bad:
            self.assertRaises(BadRequest, dns_config_from_wire, raw)

    def test_an_answer_travels_and_garbage_is_refused(self) -> None:
        record = dns.RRHeader(b"a.consul", dns.A, dns.IN, 0, dns.Record_A("10.0.0.1"), True)
        answer = answer_from_wire(answer_to_wire(Answer(dns.OK, [record])))
        self.assertEqual([a.payload.dottedQuad() for a in answer.answers], ["10.0.0.1"])
        for value in (
            None,
            {"Rcode": 0},
            {"Rcode": True, "Records": b""},
            {"Rcode": 0, "Records": b"\xff"},
        ):
            self.assertRaises(BadRequest, answer_from_wire, value)

    def test_a_client_recurses_locally_and_servfails_without_a_server(self) -> None:
        calls: list[Any] = []

        def call(method: str, body: Any, idempotent: bool, timeout: float) -> Deferred[Any]:
            calls.append(body)
            d: Deferred[Any] = Deferred()
            d.errback(NoServers("No known Consul servers"))
            return d

        config = load({"dev": True}, (), ())
        authority = RemoteAuthority(call, config)
        outside = authority.lookup(b"www.example.com", dns.A)
        self.assertIsInstance(outside, Answer)
        self.assertTrue(outside.recurse)  # type: ignore[union-attr]
        self.assertEqual(calls, [])
        inside = authority.lookup(b"web.service.consul", dns.A)
        assert isinstance(inside, Deferred)
        self.assertEqual(self.successResultOf(inside).rcode, dns.ESERVER)
        self.assertEqual(calls[0]["Name"], b"web.service.consul")
        self.flushLoggedErrors()


class FakeClient:
    """An ``RPCClient`` whose calls the test answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[Any]]] = []

    def call(self, address: str, method: str, body: Any, timeout: float) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((address, d))
        return d

    def close(self) -> Deferred[None]:
        return succeed(None)


class RemoteRetryTests(SynchronousTestCase):
    def remote(self, servers: list[str]) -> tuple[Remote, FakeClient, Clock]:
        client, clock = FakeClient(), Clock()
        agent: Any = SimpleNamespace(config=SimpleNamespace(datacenter="dc1"))
        remote = Remote(
            agent,
            client,
            clock,
            random.Random(0),
            servers=lambda: servers,  # type: ignore[arg-type]
        )
        remote.startService()
        return remote, client, clock

    def request(self, method: bytes) -> DummyRequest:
        request = DummyRequest([b"v1", b"kv", b"k"])
        request.method = method
        request.uri = b"/v1/kv/k"
        return request

    ANSWER = {"Code": 200, "Headers": [[b"X-Consul-Index", b"3"]], "Body": b"true"}

    def test_a_read_that_timed_out_is_asked_of_another_server(self) -> None:
        remote, client, clock = self.remote(["a:1", "b:1"])
        d = remote.http(self.request(b"GET"), b"", hop=False)
        first, call = client.calls[0]
        call.errback(RPCTimeout("no answer"))
        clock.advance(1)
        second, call = client.calls[1]
        self.assertNotEqual(first, second)
        call.callback(self.ANSWER)
        self.assertEqual(self.successResultOf(d), b"true")

    def test_a_write_that_may_have_arrived_is_not_sent_again(self) -> None:
        remote, client, clock = self.remote(["a:1", "b:1"])
        d = remote.http(self.request(b"PUT"), b"x", hop=False)
        client.calls[0][1].errback(RPCTimeout("no answer"))
        clock.advance(10)
        self.assertEqual(len(client.calls), 1)
        self.failureResultOf(d, RPCTimeout)

    def test_a_write_that_never_left_is_sent_to_another_server(self) -> None:
        remote, client, clock = self.remote(["a:1", "b:1"])
        d = remote.http(self.request(b"PUT"), b"x", hop=False)
        client.calls[0][1].errback(RPCConnectError("refused"))
        clock.advance(1)
        self.assertEqual(len(client.calls), 2)
        client.calls[1][1].callback(self.ANSWER)
        self.assertEqual(self.successResultOf(d), b"true")

    def test_a_hop_to_an_unreachable_leader_is_no_cluster_leader(self) -> None:
        remote, client, clock = self.remote(["a:1"])
        d = remote.http(self.request(b"GET"), b"", hop=True)
        client.calls[0][1].errback(RPCTimeout("no answer"))
        for _ in range(100):
            clock.advance(1)
            for _, call in client.calls:
                if not call.called:
                    call.errback(RPCConnectError("refused"))
        self.failureResultOf(d, NoLeader)

    def test_no_known_server_is_an_answer_at_once(self) -> None:
        remote, client, _ = self.remote([])
        failure = self.failureResultOf(remote.http(self.request(b"GET"), b"", hop=False))
        self.assertEqual(str(failure.value), "No known Consul servers")
        self.assertEqual(client.calls, [])

    def test_stopping_cancels_calls_in_flight(self) -> None:
        remote, client, clock = self.remote(["a:1"])
        d = remote.call("Catalog.Register", {"Node": "n"})
        self.successResultOf(remote.stopService())
        self.assertTrue(client.calls[0][1].called)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(d.called)
        self.assertEqual(json.dumps(remote.sent), '{"Catalog.Register": 1}')
