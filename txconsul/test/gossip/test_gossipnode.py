"""
The gossip adapter without sockets: ``GossipNode`` and ``GossipProtocol`` over a
fake datagram transport, a ``MemoryReactorClock`` for timers and connections,
and a separate monotonic clock for the core.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip.adapter import Codec, GossipNode, GossipProtocol
from txconsul.gossip.keyring import Keyring
from txconsul.gossip.memberlist import GossipConfig, Memberlist, Packet
from txconsul.gossip.messages import DEFAULT_VSN, Ack, Alive, Ping, ip_bytes
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
