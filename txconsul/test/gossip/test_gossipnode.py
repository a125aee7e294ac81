"""
The gossip adapter without sockets: ``GossipNode`` and ``GossipProtocol`` over a
fake datagram transport, a ``MemoryReactorClock`` for timers and connections,
and a separate monotonic clock for the core.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip import wire
from txconsul.gossip.adapter import Codec, GossipNode, GossipProtocol, StreamProtocol
from txconsul.gossip.keyring import Keyring
from txconsul.gossip.memberlist import GossipConfig, Memberlist, Packet
from txconsul.gossip.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    ErrResp,
    Ping,
    PushNodeState,
    PushPull,
    decode_stream,
    ip_bytes,
)
from txconsul.gossip.states import MemberState
from txconsul.gossip.wire import MalformedPacket

ME = ("10.0.0.1", 8301)
PEER = ("10.0.0.2", 8301)
KEY = bytes(range(32))


class FakeDatagramTransport:
    """Records ``write(packet, addr)``; what a ``DatagramProtocol`` needs of a port."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, packet: bytes, addr: Any = None) -> None:
        self.written.append((packet, addr))

    def stopListening(self) -> None:
        pass


class Monotonic:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class GossipNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000.0)  # the wall clock: seconds since 1970
        self.monotonic = Monotonic(5_000.0)  # the monotonic clock: since boot
        self.codec = Codec(compress=False)
        core = Memberlist("me", ME, GossipConfig.lan(), random.Random(3), self.monotonic())
        core.on_alive(
            self.monotonic(), Alive(1, "peer", ip_bytes(PEER[0]), PEER[1], b"", DEFAULT_VSN)
        )
        self.node = GossipNode(core, self.codec, self.reactor, self.monotonic, "127.0.0.1")
        self.proto = GossipProtocol()
        self.proto.node = self.node
        self.node.udp = self.proto
        self.transport = FakeDatagramTransport()
        self.proto.makeConnection(self.transport)  # type: ignore[arg-type]
        self.node.arm()
        self.addCleanup(self.assertStoppedCleanly)
        self.peer_seq = 1

    def assertStoppedCleanly(self) -> None:
        self.node.core.stop()
        self.node.disarm()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def peer_answers(self) -> None:
        """The peer acks every ping written to it since the last call."""
        written, self.transport.written = self.transport.written, []
        for data, addr in written:
            if addr != PEER:
                continue
            for message in self.codec.decode_packet(data):
                if isinstance(message, Ping):
                    ack = self.codec.encode_packet(Packet(ME, (Ack(message.seq_no),)))
                    self.proto.datagramReceived(ack, PEER)

    def pass_time(self, seconds: float, step: float = 0.05) -> None:
        """Both clocks move together; the peer answers promptly."""
        for _ in range(round(seconds / step)):
            self.monotonic.now += step
            self.reactor.advance(step)
            self.peer_answers()

    def test_pings_are_answered_and_the_peer_stays_alive(self) -> None:
        self.pass_time(30)
        self.assertEqual(self.node.core.nodes["peer"].state, MemberState.ALIVE)
        self.assertEqual(self.node.core.awareness.score, 0)

    def peer_probes_us(self) -> None:
        ping = Ping(self.peer_seq, "me", ip_bytes(PEER[0]), PEER[1], "peer")
        self.peer_seq += 1
        self.proto.datagramReceived(self.codec.encode_packet(Packet(ME, (ping,))), PEER)

    def until_a_ping_is_in_flight(self) -> None:
        """
        Move both clocks until a ping to the peer is written and not yet answered.
        The peer probes us once a second meanwhile, as any member of a pool does.
        """
        for i in range(1000):
            self.monotonic.now += 0.01
            self.reactor.advance(0.01)
            if i % 100 == 99:
                self.peer_probes_us()
            for data, addr in self.transport.written:
                if addr == PEER and isinstance(self.codec.decode_packet(data)[0], Ping):
                    return
        self.fail("no ping to the peer")

    def jump(self, wall: float, core: float) -> None:
        self.monotonic.now += core
        self.reactor.rightNow += wall
        self.reactor.advance(0)  # every call that was due by the old wall time runs
        self.reactor.advance(0)  # and what they re-armed at delay 0

    def test_wall_clock_jump_declares_nobody_dead(self) -> None:
        """
        A jump back leaves the reactor's timer far in the future until the next
        packet re-arms it from the monotonic deadline; nobody is declared dead.
        """
        self.pass_time(5)
        for wall in (3600.0, -7200.0, 86400.0, 3600.0):
            self.until_a_ping_is_in_flight()
            self.jump(wall, core=0.0)  # NTP step or a resumed VM: the wall clock only
            self.pass_time(2)
        self.assertEqual(self.node.core.nodes["peer"].state, MemberState.ALIVE)
        self.assertNotIn("peer", self.node.core._suspicions)

    def test_the_same_jumps_on_the_core_clock_would_kill_the_peer(self) -> None:
        """The previous test would notice a core that read the wall clock."""
        self.pass_time(5)
        self.until_a_ping_is_in_flight()
        self.jump(3600.0, core=3600.0)  # the probe times out before the peer can answer
        self.assertEqual(self.node.core.nodes["peer"].state, MemberState.SUSPECT)
        self.until_a_ping_is_in_flight()
        self.jump(3600.0, core=3600.0)  # the suspicion timeout passes before any refutation
        self.assertEqual(self.node.core.nodes["peer"].state, MemberState.DEAD)

    def test_garbage_is_dropped_logged_at_debug_and_counted(self) -> None:
        with capturedLogs() as events:
            self.proto.datagramReceived(b"\xff\x00garbage", ("10.0.0.9", 8301))
            self.proto.datagramReceived(b"", ("10.0.0.9", 8301))
            self.proto.datagramReceived(b"\x07\x05\x00", ("10.0.0.9", 8301))
        self.assertEqual(self.node.dropped, 3)
        dropped = [e for e in events if e.get("addr") == ("10.0.0.9", 8301)]
        self.assertEqual(len(dropped), 3)
        self.assertEqual({e["log_level"] for e in dropped}, {LogLevel.debug})
        self.assertEqual(self.transport.written, [])

    def test_timer_follows_the_core_deadline_on_the_monotonic_clock(self) -> None:
        [call] = self.reactor.getDelayedCalls()
        expected = self.node.core.next_deadline() - self.monotonic()
        self.assertAlmostEqual(call.getTime() - self.reactor.seconds(), expected, places=4)


class VerifyIncomingTests(SynchronousTestCase):
    """A node with a keyring and a plaintext ping from a member not yet encrypting."""

    def node(self, incoming: bool, outgoing: bool) -> tuple[GossipNode, FakeDatagramTransport]:
        reactor = MemoryReactorClock()
        monotonic = Monotonic(5_000.0)
        codec = Codec(
            Keyring([KEY]), compress=False, verify_incoming=incoming, verify_outgoing=outgoing
        )
        core = Memberlist("me", ME, GossipConfig.lan(), random.Random(3), monotonic())
        node = GossipNode(core, codec, reactor, monotonic, "127.0.0.1")
        proto = GossipProtocol()
        proto.node = node
        node.udp = proto
        transport = FakeDatagramTransport()
        proto.makeConnection(transport)  # type: ignore[arg-type]

        def stop() -> None:
            core.stop()
            node.disarm()

        self.addCleanup(stop)
        return node, transport

    def ping(self) -> bytes:
        ping = Ping(9, "me", ip_bytes(PEER[0]), PEER[1], "peer")
        return Codec(compress=False).encode_packet(Packet(ME, (ping,)))

    def test_verify_incoming_drops_plaintext_logged_at_debug_and_counted(self) -> None:
        for outgoing in (True, False):
            node, transport = self.node(incoming=True, outgoing=outgoing)
            with capturedLogs() as events:
                assert node.udp is not None
                node.udp.datagramReceived(self.ping(), PEER)
            self.assertEqual(node.dropped, 1)
            [event] = [e for e in events if e.get("addr") == PEER]
            self.assertEqual(event["log_level"], LogLevel.debug)
            self.assertEqual(transport.written, [])

    def test_without_verify_incoming_plaintext_is_answered(self) -> None:
        """The ack goes out sealed or in plaintext as verify_outgoing says."""
        for outgoing in (True, False):
            node, transport = self.node(incoming=False, outgoing=outgoing)
            assert node.udp is not None
            node.udp.datagramReceived(self.ping(), PEER)
            self.assertEqual(node.dropped, 0)
            [(data, addr)] = transport.written
            self.assertEqual(addr, PEER)
            reader = Codec(Keyring([KEY])) if outgoing else Codec()
            self.assertEqual(reader.decode_packet(data), [Ack(9)])
            if outgoing:
                self.assertRaises(MalformedPacket, Codec().decode_packet, data)


def big_push_pull(nodes: int, user_state: bytes = b"") -> PushPull:
    return PushPull(
        False,
        tuple(
            PushNodeState(f"n{i:06d}", ip_bytes("10.1.0.1"), 8301, b"\x80" * 100, 1, 0)
            for i in range(nodes)
        ),
        user_state,
    )


class StreamTests(SynchronousTestCase):
    """
    ``StreamProtocol`` over a ``StringTransport``: however a stream is cut up,
    its message is decoded once and each byte is looked at a bounded number
    of times; bad, oversized, truncated and stalled streams are dropped,
    logged at debug level and counted.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monotonic = Monotonic(5_000.0)
        self.config = GossipConfig.lan()
        self.codec = Codec(compress=False)
        self.node = self.make_node(self.codec)

    def make_node(self, codec: Codec) -> GossipNode:
        core = Memberlist("me", ME, self.config, random.Random(3), self.monotonic())
        node = GossipNode(core, codec, self.reactor, self.monotonic, "127.0.0.1")

        def stop() -> None:
            core.stop()
            node.disarm()

        self.addCleanup(stop)
        return node

    def connect(self, node: GossipNode | None = None, request: Any = None) -> StreamProtocol:
        proto = StreamProtocol(node or self.node, request)
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", *PEER)))
        return proto

    def feed(self, proto: StreamProtocol, data: bytes, chunk: int = 1400) -> None:
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])

    def test_a_large_push_pull_in_small_pieces_is_read_in_linear_time(self) -> None:
        """
        The reader used to decode the whole buffer again on every chunk: a
        345 KB push/pull in 1,400-byte pieces cost 5 s of CPU, 3.4 MB in
        64 KiB pieces over 2 minutes. Now the message is decoded once, and
        the framer sees each byte once.
        """
        pushed = big_push_pull(20_000, b"u" * 1000)
        data = self.codec.encode_stream(pushed)
        self.assertGreater(len(data), 2_500_000)
        proto = self.connect(request=Ping(1, "peer"))  # a client: the reply is not merged
        replies: list[Any] = []
        proto.done.addCallback(replies.append)
        self.feed(proto, data)
        self.assertEqual(replies, [pushed])
        self.assertEqual(proto.reader.decodes, 1)
        self.assertLessEqual(proto.reader.scanned, len(data))
        self.assertEqual(self.node.dropped, 0)

    def test_a_push_pull_in_pieces_is_merged_once_whole(self) -> None:
        pushed = big_push_pull(2_000)
        proto = self.connect()
        data = self.codec.encode_stream(pushed)
        self.feed(proto, data[:-1], chunk=1000)
        self.assertEqual(len(self.node.core.members()), 1)
        proto.dataReceived(data[-1:])
        self.assertEqual(len(self.node.core.members()), 2_001)
        self.assertEqual(proto.reader.decodes, 1)
        reply = proto.transport.value()  # type: ignore[union-attr]
        self.assertIsInstance(decode_stream(reply)[0], PushPull)
        self.assertTrue(proto.transport.disconnecting)  # type: ignore[union-attr]

    def test_an_encrypted_or_labelled_push_pull_in_pieces_is_decoded_once(self) -> None:
        pushed = big_push_pull(3_000, b"state")
        codec = Codec(Keyring([KEY]), compress=True)
        for data in (
            codec.encode_stream(pushed),
            wire.add_label(codec.encode_stream(pushed), b"l"),
        ):
            node = self.make_node(codec)
            proto = self.connect(node, request=Ping(1, "peer"))
            replies: list[Any] = []
            proto.done.addCallback(replies.append)
            self.feed(proto, data, chunk=999)
            self.assertEqual((replies, proto.reader.decodes, node.dropped), ([pushed], 1, 0))
        plain = wire.add_label(self.codec.encode_stream(pushed), b"label")
        proto = self.connect(request=Ping(1, "peer"))
        replies = []
        proto.done.addCallback(replies.append)
        self.feed(proto, plain, chunk=1)  # the label's bytes one by one as well
        self.assertEqual((replies, proto.reader.decodes), ([pushed], 1))
        self.assertLessEqual(proto.reader.scanned, len(plain))

    def assertDropped(self, proto: StreamProtocol, events: list[Any], node: GossipNode) -> None:
        self.assertEqual(node.dropped, 1)
        [event] = [e for e in events if "dropped stream" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertTrue(proto.transport.disconnecting)  # type: ignore[union-attr]
        self.assertEqual(len(node.core.members()), 1)

    def test_oversized_streams_are_refused_as_soon_as_they_say_so(self) -> None:
        """Each declares more than 20 MiB in its first 1,400 bytes."""
        header = wire.pack({"Join": False, "Nodes": 1, "UserStateLen": 20 * 1024 * 1024})
        oversized = [
            bytes([wire.PUSH_PULL]) + header + wire.pack(big_push_pull(1).nodes[0].to_dict()),
            bytes([wire.USER]) + wire.pack({"UserMsgLen": 21 * 1024 * 1024}),
            b"\x0a\x01\x50\x00\x00",  # an encrypted frame of 21 MiB
        ]
        for data in oversized:
            codec = Codec(Keyring([KEY])) if data[0] == wire.ENCRYPT else self.codec
            node = self.make_node(codec)
            proto = self.connect(node)
            with capturedLogs() as events:
                proto.dataReceived(data + b"\x00" * 100)
            self.assertDropped(proto, events, node)
            self.assertEqual(proto.reader.decodes, 0)

    def test_a_stream_over_20_mib_is_refused_when_it_gets_there(self) -> None:
        """A string too long for its declared length: no message ends, the cap does."""
        for start in (
            bytes([wire.PING, 0x81, 0xDB, 0x7F, 0xFF, 0xFF, 0xFF]),
            bytes([wire.COMPRESS, 0x82, 0xA4]) + b"Algo\x00\xa3Buf\xc6\x01\x50\x00\x00",
        ):
            node = self.make_node(self.codec)
            proto = self.connect(node)
            with capturedLogs() as events:
                proto.dataReceived(start)
                for _ in range(21 * 16):
                    proto.dataReceived(b"\x00" * 65536)
            self.assertDropped(proto, events, node)
            self.assertEqual(proto.reader.decodes, 0)
            self.assertLessEqual(proto.reader.scanned, 20 * 1024 * 1024 + 1024)

    def test_garbage_gets_an_error_and_is_counted(self) -> None:
        for junk in (b"\x63junk", b"\x06\xc1", b"\x06\x93\x01\x02\x03", b"\xf4\x00x"):
            node = self.make_node(self.codec)
            proto = self.connect(node)
            with capturedLogs() as events:
                proto.dataReceived(junk)
                proto.dataReceived(b"more bytes after the drop are not read")
            self.assertDropped(proto, events, node)
            reply, _ = decode_stream(proto.transport.value())  # type: ignore[union-attr]
            self.assertIsInstance(reply, ErrResp)

    def test_a_stalled_stream_is_dropped_at_the_timeout_and_counted(self) -> None:
        data = self.codec.encode_stream(big_push_pull(10))
        for part in (b"", data[:1], data[:-1]):
            node = self.make_node(self.codec)
            proto = self.connect(node)
            with capturedLogs() as events:
                if part:
                    proto.dataReceived(part)
                self.reactor.advance(self.config.tcp_timeout - 0.01)
                self.assertEqual(node.dropped, 0)
                self.reactor.advance(0.02)
            self.assertDropped(proto, events, node)
            proto.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(node.dropped, 1)  # once

    def test_a_truncated_stream_is_dropped_when_the_peer_hangs_up(self) -> None:
        data = self.codec.encode_stream(big_push_pull(10))
        proto = self.connect(request=Ping(1, "peer"))
        replies: list[Any] = []
        proto.done.addCallback(replies.append)
        with capturedLogs() as events:
            proto.dataReceived(data[:-5])
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(replies, [None])
        self.assertEqual(self.node.dropped, 1)
        [event] = [e for e in events if "dropped stream" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_closing_or_an_empty_stream_is_not_bad_input(self) -> None:
        data = self.codec.encode_stream(big_push_pull(10))
        proto = self.connect()
        proto.connectionLost(Failure(ConnectionDone()))  # a port check: connect, hang up
        proto = self.connect()
        self.node.streams.add(proto)
        proto.dataReceived(data[:-5])
        self.node.close_streams()  # the agent stopping
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.node.dropped, 0)
