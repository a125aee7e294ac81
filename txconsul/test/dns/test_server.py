# -*- test-case-name: txconsul.test.dns.test_server -*-
"""Packets in, packets out: rcodes, EDNS, truncation, the TCP framing, and fuzzing."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

import txconsul.testing.hypothesis  # noqa: F401 (registers and loads the "ci" profile)
from txconsul.dns.server import TCP_IDLE_TIMEOUT, DNSDatagramProtocol, DNSStreamProtocol
from txconsul.test.dns.helpers import World, packet, parse

RCODES = {dns.OK, dns.EFORMAT, dns.ESERVER, dns.ENAME, dns.ENOTIMP, dns.EREFUSED}


def many(world: World, n: int, name: str = "web") -> None:
    for i in range(n):
        world.register(
            f"node-with-a-longish-name-{i}",
            f"10.0.{i // 250}.{i % 250 + 1}",
            {"Service": name, "Port": 1000 + i},
        )


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.world.register(
            "redis-node", "10.1.10.12", {"Service": "redis", "Tags": ["slave"], "Port": 8000}
        )

    def ask(self, wire: bytes, udp: bool = True) -> Any:
        reply = self.world.responder.handle(wire, udp)
        assert isinstance(reply, bytes), reply
        return parse(reply)

    def test_talk_example_srv(self) -> None:
        reply = self.ask(packet("slave.redis.service.consul", dns.SRV))
        self.assertEqual((reply.id, reply.answer, reply.auth, reply.rCode), (4021, 1, 1, dns.OK))
        self.assertEqual(reply.recDes, 1)
        self.assertEqual(reply.recAv, 0)
        [srv] = reply.answers
        self.assertEqual(
            (srv.payload.port, srv.payload.target.name), (8000, b"redis-node.node.dc1.consul")
        )
        self.assertEqual(
            [rr.payload.dottedQuad() for rr in reply.additional if rr.type == dns.A], ["10.1.10.12"]
        )

    def test_nxdomain_carries_soa(self) -> None:
        reply = self.ask(packet("nosuch.service.consul"))
        self.assertEqual(reply.rCode, dns.ENAME)
        self.assertEqual([rr.type for rr in reply.authority], [dns.SOA])

    def test_outside_without_recursors_is_refused(self) -> None:
        reply = self.ask(packet("example.com"))
        self.assertEqual((reply.rCode, reply.auth), (dns.EREFUSED, 0))

    def test_zone_transfer_is_not_implemented(self) -> None:
        self.assertEqual(self.ask(packet("consul", dns.AXFR)).rCode, dns.ENOTIMP)

    def test_other_opcode_is_not_implemented(self) -> None:
        wire = bytearray(packet("consul"))
        wire[2] |= dns.OP_NOTIFY << 3
        reply = self.ask(bytes(wire))
        self.assertEqual((reply.rCode, reply.opCode, reply.id), (dns.ENOTIMP, dns.OP_NOTIFY, 4021))

    def test_other_class_is_refused(self) -> None:
        self.assertEqual(self.ask(packet("redis.service.consul", cls=dns.CH)).rCode, dns.EREFUSED)
        self.assertEqual(self.ask(packet("redis.service.consul", cls=dns.ANY)).rCode, dns.OK)

    def test_garbage_after_header_is_formerr(self) -> None:
        wire = struct.pack("!HBBHHHH", 77, 0, 0, 1, 0, 0, 0) + b"\x05abc"
        reply = self.ask(wire)
        self.assertEqual((reply.id, reply.rCode, reply.answer), (77, dns.EFORMAT, 1))

    def test_several_questions_or_none_is_formerr(self) -> None:
        m = dns.Message(id=5)
        m.queries = [dns.Query("a.node.consul"), dns.Query("b.node.consul")]
        self.assertEqual(self.ask(m.toStr()).rCode, dns.EFORMAT)
        self.assertEqual(self.ask(struct.pack("!HBBHHHH", 5, 0, 0, 0, 0, 0, 0)).rCode, dns.EFORMAT)

    def test_compression_loop_is_formerr(self) -> None:
        # The question name is a pointer to itself.
        wire = struct.pack("!HBBHHHH", 9, 0, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
        self.assertEqual(self.ask(wire).rCode, dns.EFORMAT)

    def test_short_packets_and_responses_get_no_reply(self) -> None:
        self.assertIsNone(self.world.responder.handle(b"\x00\x01", True))
        wire = bytearray(packet("redis.service.consul"))
        wire[2] |= 0x80
        self.assertIsNone(self.world.responder.handle(bytes(wire), True))
        self.assertEqual(self.world.responder.dropped, 2)

    def test_edns_is_echoed_and_bad_version_answered(self) -> None:
        reply = self.ask(packet("redis.service.consul", edns=1232))
        [opt] = [rr for rr in reply.additional if rr.type == dns.OPT]
        self.assertEqual(opt.cls, 1232)
        reply = self.ask(packet("redis.service.consul", edns=1232, version=1))
        [opt] = [rr for rr in reply.additional if rr.type == dns.OPT]
        self.assertEqual((reply.rCode, opt.ttl >> 24), (0, 1))  # BADVERS = 16


class TruncationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        many(self.world, 40)

    def ask(self, world: World, wire: bytes, udp: bool = True) -> tuple[int, Any]:
        reply = world.responder.handle(wire, udp)
        assert isinstance(reply, bytes)
        return len(reply), parse(reply)

    def test_plain_udp_gets_udp_answer_limit_without_tc(self) -> None:
        size, reply = self.ask(self.world, packet("web.service.consul"))
        self.assertEqual((len(reply.answers), reply.trunc), (3, 0))
        self.assertLessEqual(size, 512)

    def test_enable_truncate_sets_tc(self) -> None:
        world = World(dns_config={"enable_truncate": True})
        many(world, 40)
        _, reply = self.ask(world, packet("web.service.consul"))
        self.assertEqual((len(reply.answers), reply.trunc), (3, 1))

    def test_udp_answer_limit_from_config(self) -> None:
        world = World(dns_config={"udp_answer_limit": 5})
        many(world, 40)
        _, reply = self.ask(world, packet("web.service.consul"))
        self.assertEqual(len(reply.answers), 5)

    def test_srv_cut_to_512_bytes_keeps_whole_records_and_their_additional(self) -> None:
        world = World(dns_config={"udp_answer_limit": 40, "enable_truncate": True})
        many(world, 40)
        size, reply = self.ask(world, packet("web.service.consul", dns.SRV))
        self.assertLessEqual(size, 512)
        self.assertEqual(reply.trunc, 1)
        self.assertTrue(0 < len(reply.answers) < 40)
        targets = {rr.payload.target.name for rr in reply.answers}
        self.assertEqual({rr.name.name for rr in reply.additional}, targets)

    def test_edns_size_is_honoured(self) -> None:
        size, reply = self.ask(self.world, packet("web.service.consul", dns.SRV, edns=1232))
        self.assertLessEqual(size, 1232)
        self.assertTrue(3 < len(reply.answers) < 40)
        self.assertEqual(reply.trunc, 0)
        _, reply = self.ask(self.world, packet("web.service.consul", dns.SRV, edns=65000))
        self.assertEqual(len(reply.answers), 40)

    def test_tcp_gets_everything(self) -> None:
        size, reply = self.ask(self.world, packet("web.service.consul", dns.SRV), udp=False)
        self.assertGreater(size, 512)
        self.assertEqual((len(reply.answers), len(reply.additional)), (40, 40))


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, object]] = []

    def write(self, packet: bytes, addr: object) -> None:
        self.written.append((packet, addr))


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.world.register("web1", "10.0.0.7")

    def test_udp_answers_the_sender(self) -> None:
        proto = DNSDatagramProtocol(self.world.responder)
        transport = FakeDatagramTransport()
        proto.transport = transport  # type: ignore[assignment]
        proto.datagramReceived(packet("web1.node.consul"), ("127.0.0.1", 5353))
        proto.datagramReceived(b"junk", ("127.0.0.1", 5353))
        [(wire, addr)] = transport.written
        self.assertEqual(addr, ("127.0.0.1", 5353))
        reply: Any = parse(wire)
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "10.0.0.7")

    def stream(self) -> tuple[DNSStreamProtocol, StringTransport, Clock]:
        clock = Clock()
        proto = DNSStreamProtocol(self.world.responder, clock)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_tcp_framing_and_pipelining(self) -> None:
        proto, transport, clock = self.stream()
        one = packet("web1.node.consul", qid=1)
        two = packet("nosuch.node.consul", qid=2)
        data = struct.pack("!H", len(one)) + one + struct.pack("!H", len(two)) + two
        for i in range(len(data)):  # byte by byte
            proto.dataReceived(data[i : i + 1])
        out = transport.value()
        first_len = struct.unpack("!H", out[:2])[0]
        first = parse(out[2 : 2 + first_len])
        second = parse(out[4 + first_len :])
        self.assertEqual((first.id, first.rCode), (1, dns.OK))
        self.assertEqual((second.id, second.rCode), (2, dns.ENAME))
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_tcp_length_without_the_bytes_is_closed_when_idle(self) -> None:
        proto, transport, clock = self.stream()
        proto.dataReceived(b"\xff\xff" + b"x" * 100)
        clock.advance(TCP_IDLE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])


names = st.one_of(
    st.sampled_from(
        [
            b"web1.node.consul",
            b"redis.service.consul",
            b"consul",
            b"x.addr.consul",
            b"_redis._tcp.consul",
            b"1.0.0.10.in-addr.arpa",
            b"example.com",
        ]
    ),
    st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=6).map(b".".join),
)


class FuzzTests(SynchronousTestCase):
    """FAULTS.md test 10: no input crashes the resolver or gets an undefined reply."""

    def setUp(self) -> None:
        self.world = World()
        self.world.register("web1", "10.0.0.7", {"Service": "redis", "Port": 1})

    def check(self, wire: bytes, udp: bool) -> None:
        reply = self.world.responder.handle(wire, udp)
        if reply is None:
            return
        assert isinstance(reply, bytes)
        if udp:
            self.assertLessEqual(len(reply), 65467)
        m = parse(reply)
        self.assertEqual(m.answer, 1)
        self.assertEqual(m.id, struct.unpack("!H", wire[:2])[0])
        self.assertIn(m.rCode, RCODES)

    @settings(max_examples=2000)
    @given(st.binary(max_size=600), st.booleans())
    def test_random_bytes(self, wire: bytes, udp: bool) -> None:
        self.check(wire, udp)

    @settings(max_examples=2000)
    @given(
        names,
        st.integers(0, 65535),
        st.integers(0, 65535),
        st.one_of(st.none(), st.integers(0, 65535)),
        st.integers(0, 255),
        st.binary(max_size=40),
        st.booleans(),
    )
    def test_mangled_queries(self, name, qtype, cls, edns, version, tail, udp) -> None:
        try:
            wire = packet(name, qtype, cls, edns=edns, version=version)
        except (ValueError, struct.error):
            return  # a label the encoder refuses: not a packet
        self.check(wire + tail, udp)
