"""
The Raft transport: over connections the test completes on a
``MemoryReactorClock`` (deterministic), and over port-8300 connections on 127.0.0.1.
"""

from __future__ import annotations

import time

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.raft.transport import PING, PONG, RaftTransport, hello, parse_hello
from txconsul.rpc.framing import PROTOCOL_RAFT, FrameDecoder, MalformedFrame, encode_frame, pack
from txconsul.rpc.listener import RPCListener
from txconsul.rpc.protocol import Dispatcher, RaftConnection


class HelloTests(SynchronousTestCase):
    def test_hello_names_the_sender(self) -> None:
        self.assertEqual(parse_hello(hello("10.0.0.1:8300")), "10.0.0.1:8300")

    def test_a_first_frame_that_is_no_hello_is_refused(self) -> None:
        for payload in (pack([1]), pack({"Hello": 3}), pack({"Hello": ""}), b"\xc1"):
            self.assertRaises(MalformedFrame, parse_hello, payload)


ME = "10.0.0.1:8300"
PEER = "10.0.0.2:8300"


class Harness(SynchronousTestCase):
    """A transport on a ``MemoryReactorClock``; the test completes or fails each connection."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.got: list[tuple[str, bytes]] = []
        self.transport = RaftTransport(
            self.reactor,
            self.reactor,
            ME,
            lambda src, data: self.got.append((src, data)),
            max_queued=4,
        )
        self.transport.startService()
        self.addCleanup(self.transport.stopService)
        self.protocols: list[object] = []

    def complete(self, index: int = -1) -> StringTransport:
        """Let connection attempt ``index`` succeed; the transport its bytes go to."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        wire = StringTransport()
        protocol.makeConnection(wire)
        self.protocols.append(protocol)
        return wire

    def refuse(self, index: int = -1) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def frames(self, wire: StringTransport) -> list[bytes]:
        data = wire.value()
        self.assertEqual(data[:1], bytes([PROTOCOL_RAFT]))
        return FrameDecoder().feed(data[1:])


class QueueTests(Harness):
    """Messages sent while a connection is being made."""

    def test_messages_sent_while_connecting_leave_after_the_hello_in_order(self) -> None:
        self.transport.send(PEER, b"vote-1")
        self.transport.send(PEER, b"vote-2")
        self.assertEqual(len(self.reactor.tcpClients), 1, "one attempt for both")
        self.assertEqual(self.transport.queued(PEER), 2)
        wire = self.complete()
        self.transport.send(PEER, b"vote-3")
        self.assertEqual(self.frames(wire), [hello(ME), b"vote-1", b"vote-2", b"vote-3"])
        self.assertEqual(self.transport.queued(PEER), 0)
        self.assertEqual(self.transport.stats["dropped"], 0)
        self.assertEqual(self.transport.stats["sent"], 3)

    def test_a_full_queue_drops_its_oldest_and_counts_them(self) -> None:
        for i in range(7):
            self.transport.send(PEER, b"m%d" % i)
        self.assertEqual(self.transport.queued(PEER), 4)
        self.assertEqual(self.transport.stats["dropped"], 3)
        wire = self.complete()
        self.assertEqual(self.frames(wire), [hello(ME), b"m3", b"m4", b"m5", b"m6"])

    def test_the_byte_bound_keeps_the_newest_message_whatever_its_size(self) -> None:
        self.transport.max_queued_bytes = 10
        self.transport.send(PEER, b"x" * 6)
        self.transport.send(PEER, b"y" * 6)
        self.assertEqual(self.transport.queued(PEER), 1)
        self.transport.send(PEER, b"z" * 50)
        self.assertEqual(self.transport.stats["dropped"], 2)
        self.assertEqual(self.frames(self.complete()), [hello(ME), b"z" * 50])

    def test_a_failed_attempt_drops_the_queue_and_the_next_waits_for_the_retry_interval(
        self,
    ) -> None:
        self.transport.send(PEER, b"a")
        self.transport.send(PEER, b"b")
        self.refuse()
        self.assertEqual(self.transport.queued(PEER), 0)
        self.assertEqual(self.transport.stats["dropped"], 2)
        self.reactor.advance(0.1)
        self.transport.send(PEER, b"too soon")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.transport.queued(PEER), 0)
        self.assertEqual(self.transport.stats["dropped"], 3)
        self.reactor.advance(0.4)
        self.transport.send(PEER, b"c")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.frames(self.complete()), [hello(ME), b"c"])

    def test_each_peer_has_its_own_queue(self) -> None:
        other = "10.0.0.3:8300"
        self.transport.send(PEER, b"p")
        self.transport.send(other, b"o")
        self.assertEqual(
            [c[:2] for c in self.reactor.tcpClients], [("10.0.0.2", 8300), ("10.0.0.3", 8300)]
        )
        self.assertEqual(self.frames(self.complete(1)), [hello(ME), b"o"])
        self.assertEqual(self.frames(self.complete(0)), [hello(ME), b"p"])

    def test_stopping_drops_what_waits(self) -> None:
        self.transport.send(PEER, b"a")
        self.successResultOf(self.transport.stopService())
        self.assertEqual(self.transport.queued(PEER), 0)
        self.assertEqual(self.transport.stats["dropped"], 1)
        self.transport.send(PEER, b"b")
        self.assertEqual(self.transport.stats["dropped"], 2)
        self.assertEqual(len(self.reactor.tcpClients), 1)


class LivenessTests(Harness):
    """
    The liveness rule on the reactor's clock: a send on a quiet connection
    pings, an unanswered ping condemns the connection at the next send.
    """

    def connected(self) -> StringTransport:
        self.transport.send(PEER, b"first")
        wire = self.complete()
        self.assertEqual(self.frames(wire), [hello(ME), b"first"])
        return wire

    def pong(self) -> None:
        self.protocols[-1].dataReceived(encode_frame(PONG))  # type: ignore[attr-defined]

    def test_a_send_on_a_quiet_connection_also_pings_once(self) -> None:
        wire = self.connected()
        self.reactor.advance(0.4)
        self.transport.send(PEER, b"a")
        self.reactor.advance(0.1)
        self.transport.send(PEER, b"b")
        self.transport.send(PEER, b"c")
        self.assertEqual(self.frames(wire)[2:], [b"a", b"b", PING, b"c"])
        self.assertEqual(self.transport.stats["pings"], 1)

    def test_an_unanswered_ping_condemns_the_connection_at_the_next_send(self) -> None:
        wire = self.connected()
        self.reactor.advance(0.5)
        self.transport.send(PEER, b"pinged")
        self.reactor.advance(1.9)
        self.transport.send(PEER, b"still trusted")
        self.assertFalse(wire.disconnecting)
        self.reactor.advance(0.1)
        self.transport.send(PEER, b"needs a new connection")
        self.assertTrue(wire.disconnected, "aborted, unsent data dropped")
        self.assertEqual(self.transport.stats["dead_connections"], 1)
        self.assertEqual(self.frames(wire)[2:], [b"pinged", PING, b"still trusted"])
        self.assertEqual(len(self.reactor.tcpClients), 2, "dialled again at once")
        self.assertEqual(self.frames(self.complete()), [hello(ME), b"needs a new connection"])

    def test_a_pong_keeps_the_connection(self) -> None:
        wire = self.connected()
        self.reactor.advance(0.5)
        self.transport.send(PEER, b"pinged")
        self.reactor.advance(0.5)
        self.pong()
        self.reactor.advance(2.0)
        self.transport.send(PEER, b"after the pong")
        self.assertFalse(wire.disconnecting)
        self.assertEqual(self.frames(wire)[2:], [b"pinged", PING, b"after the pong", PING])
        self.assertEqual(self.transport.stats["dead_connections"], 0)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_a_connection_nobody_sends_on_is_not_condemned_for_its_quiet(self) -> None:
        wire = self.connected()
        self.reactor.advance(3600)
        self.transport.send(PEER, b"an hour later")
        self.assertFalse(wire.disconnecting)
        self.assertEqual(self.frames(wire)[2:], [b"an hour later", PING])

    def test_frames_other_than_pongs_on_an_outbound_connection_are_counted_and_ignored(
        self,
    ) -> None:
        self.connected()
        self.protocols[-1].dataReceived(encode_frame(b"nonsense"))  # type: ignore[attr-defined]
        self.assertEqual(self.transport.stats["unexpected_frames"], 1)
        self.assertEqual(self.got, [])

    def inbound(self) -> tuple[RaftConnection, StringTransport]:
        connection = RaftConnection()
        self.transport.handle_inbound(connection)
        wire = StringTransport()
        connection.makeConnection(wire)
        return connection, wire

    def test_pings_are_answered_with_pongs_and_never_reach_raft(self) -> None:
        connection, wire = self.inbound()
        connection.dataReceived(
            encode_frame(hello(PEER)) + encode_frame(PING) + encode_frame(b"append")
        )
        self.assertEqual(wire.value(), encode_frame(PONG))
        self.assertEqual(self.got, [(PEER, b"append")])

    def test_a_new_hello_from_a_sender_replaces_its_older_connection(self) -> None:
        old, old_wire = self.inbound()
        old.dataReceived(encode_frame(hello(PEER)))
        other, other_wire = self.inbound()
        other.dataReceived(encode_frame(hello("10.0.0.3:8300")))
        new, new_wire = self.inbound()
        self.assertFalse(old_wire.disconnecting, "no hello yet, no sender yet")
        new.dataReceived(encode_frame(hello(PEER)) + encode_frame(b"append"))
        self.assertTrue(old_wire.disconnected)
        self.assertFalse(other_wire.disconnecting)
        self.assertFalse(new_wire.disconnecting)
        self.assertEqual(self.transport.stats["replaced_inbound"], 1)
        self.assertEqual(self.got, [(PEER, b"append")])


class TransportTests(TestCase):
    timeout = 20

    def server(self) -> tuple[RaftTransport, list[tuple[str, bytes]]]:
        got: list[tuple[str, bytes]] = []
        listener = RPCListener(reactor, Dispatcher(), portno=0, interface="127.0.0.1")
        listener.startService()
        self.addCleanup(listener.stopService)
        me = "127.0.0.1:%d" % listener.address()[1]
        transport = RaftTransport(
            reactor, reactor, me, lambda src, data: got.append((src, data)), retry_interval=0.05
        )
        listener.set_raft_handler(transport.handle_inbound)
        transport.startService()
        self.addCleanup(transport.stopService)
        return transport, got

    async def until(self, condition: object, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while not callable(condition) or not condition():
            if time.monotonic() > deadline:
                self.fail("condition not met")
            await deferLater(reactor, 0.02, lambda: None)

    async def test_messages_arrive_named_by_their_sender_in_order(self) -> None:
        a, _ = self.server()
        b, got_b = self.server()
        a.send(b.me, b"queued while connecting")
        self.assertEqual(a.queued(b.me), 1)
        await self.until(lambda: b.me in a._out)
        a.send(b.me, b"one")
        a.send(b.me, b"two")
        await self.until(lambda: len(got_b) == 3)
        self.assertEqual(
            got_b, [(a.me, b"queued while connecting"), (a.me, b"one"), (a.me, b"two")]
        )
        self.assertEqual(a.stats["dropped"], 0)

    async def test_sending_to_a_server_that_is_down_drops_and_retries_later(self) -> None:
        a, _ = self.server()
        a.send("127.0.0.1:1", b"x")
        await self.until(lambda: a.stats["connect_failures"] >= 1)
        self.assertNotIn("127.0.0.1:1", a._out)
