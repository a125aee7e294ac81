"""
Fault test 10 for the gossip parsers, through the adapter as the network
reaches it: ``Codec`` with no keyring, with a keyring refusing plaintext and
with one accepting it (``verify_incoming`` off), labels, compound, compressed
and encrypted packets, and TCP streams fed to ``StreamProtocol`` in random
chunkings.

Oracles: nothing raises out of the adapter and nothing is logged as a failure;
a packet or stream is either read or dropped and counted (exactly one of the
two); a well-formed stream is read whatever its chunking; and no example
takes more than a second of CPU (the hang oracle: thread CPU time, so that a
loaded machine does not make it flaky).

``CI=true`` runs 600 examples per surface (about 15 s of CPU for the module;
``shared/FAULTS.md`` asks for 2,000, which would take about 50 s); a local run 150.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import txconsul.testing.hypothesis  # noqa: F401 (the shared profiles)
from txconsul.gossip import wire
from txconsul.gossip.adapter import Codec, GossipNode, StreamProtocol
from txconsul.gossip.keyring import Keyring
from txconsul.gossip.memberlist import GossipConfig, Memberlist, Packet
from txconsul.gossip.messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    User,
    UserStream,
    ip_bytes,
)
from txconsul.gossip.wire import MalformedPacket

EXAMPLES = 2000 if os.environ.get("CI") else 150
HANG = 1.0  # CPU seconds one example may take
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 17))
ME = ("10.0.0.1", 8301)
PEER = ("10.0.0.2", 8301)
LOCAL = ip_bytes("10.0.0.2")

CODECS = {
    "plain": lambda: Codec(compress=False),
    "verify": lambda: Codec(Keyring([KEY]), compress=False),
    "lenient": lambda: Codec(Keyring([KEY]), compress=False, verify_incoming=False),
}

packet_messages = st.sampled_from(
    [
        Ping(1, "me", LOCAL, 8301, "peer"),
        IndirectPing(2, LOCAL, 8301, "x", True, LOCAL, 8301, "peer"),
        Ack(3, b"payload"),
        Nack(4),
        Suspect(1, "x", "peer"),
        Dead(2, "x", "peer"),
        Alive(1, "x", ip_bytes("10.0.0.3"), 8301, b"\xff\x80"),
        User(b"\x03anything"),
    ]
)
stream_messages = st.sampled_from(
    [
        Ping(1, "me"),
        Ack(2),
        ErrResp("no"),
        UserStream(b"\x03\x80"),
        PushPull(False, (), b""),
        PushPull(
            True,
            tuple(
                PushNodeState(f"n{i}", ip_bytes("10.0.1.1"), 8301, b"\xff\x80", 1, i % 4)
                for i in range(5)
            ),
            b"\x02\x80",
        ),
    ]
)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A well-formed packet: compound, compressed, CRC, sealed, labelled as drawn."""
    messages = draw(st.lists(packet_messages, min_size=1, max_size=4))
    codec = Codec(
        draw(st.sampled_from([None, Keyring([KEY]), Keyring([OTHER_KEY])])),
        compress=False,
        compress_packets=draw(st.booleans()),
    )
    data = codec.encode_packet(Packet(PEER, tuple(messages), crc=draw(st.booleans())))
    if draw(st.booleans()):
        data = wire.add_label(data, draw(st.binary(min_size=1, max_size=8)))
    return data


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    message = draw(stream_messages)
    codec = Codec(draw(st.sampled_from([None, Keyring([KEY])])), compress=draw(st.booleans()))
    data = codec.encode_stream(message)
    if draw(st.booleans()):
        data = wire.add_label(data, draw(st.binary(min_size=1, max_size=8)))
    return data


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid input, then some bytes changed and maybe cut short."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


class CodecFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.nodes: dict[str, GossipNode] = {}
        for name, make in CODECS.items():
            core = Memberlist("me", ME, GossipConfig.lan(), random.Random(1), 0.0)
            self.nodes[name] = GossipNode(core, make(), self.reactor, lambda: 0.0, "127.0.0.1")
        self.addCleanup(self.stop)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.core.stop()
            node.disarm()

    @contextmanager
    def oracle(self) -> Iterator[Sequence[Any]]:
        """No failure logged, no example over a second of CPU."""
        start = time.thread_time()
        with capturedLogs() as events:
            yield events
        spent = time.thread_time() - start
        self.assertLess(spent, HANG, f"hang oracle: {spent:.2f} s of CPU")
        failures = [e for e in events if "log_failure" in e or e["log_level"] >= LogLevel.error]
        self.assertEqual(failures, [])

    def check_packet(self, data: bytes) -> None:
        for name, node in self.nodes.items():
            try:
                node.codec.decode_packet(data)
                readable = True
            except MalformedPacket:
                readable = False
            before = node.dropped
            with self.oracle():
                node.datagram(data, PEER)
            self.assertEqual(node.dropped - before, 0 if readable else 1, name)
            self.assertEqual(node.core.nodes["me"].addr, ip_bytes(ME[0]))

    @settings(max_examples=EXAMPLES)
    @given(st.binary(max_size=1400) | st.binary(max_size=80).map(lambda b: b"\xf4" + b))
    def test_random_packets_are_read_or_dropped_and_counted(self, data: bytes) -> None:
        self.check_packet(data)

    @settings(max_examples=EXAMPLES)
    @given(mutated(packets()))
    def test_mutated_packets_are_read_or_dropped_and_counted(self, data: bytes) -> None:
        self.check_packet(data)

    def check_stream(self, data: bytes, cuts: list[int], server: bool) -> list[Any]:
        """Feed ``data`` in pieces to a fresh stream of every node; :return: what each read."""
        read = []
        for name, node in self.nodes.items():
            proto = StreamProtocol(node, None if server else Ping(1, "peer"))
            transport = StringTransport(peerAddress=IPv4Address("TCP", *PEER))
            replies: list[Any] = []
            proto.done.addCallback(replies.append)
            before = node.dropped
            with self.oracle():
                proto.makeConnection(transport)
                for piece in chunked(data, cuts):
                    proto.dataReceived(piece)
                if not transport.disconnecting:
                    self.reactor.advance(node.core.config.tcp_timeout)  # a stall times out
                proto.connectionLost(Failure(ConnectionDone()))
            dropped = node.dropped - before
            self.assertIn(dropped, (0, 1), name)
            self.assertTrue(proto.done.called)
            if not server:
                # a client reads the reply or drops the stream: one or the other
                self.assertEqual(replies[0] is None, dropped == 1, (name, replies))
            read.append(replies[0] if not server else dropped == 0)
        timers = [c for c in self.reactor.getDelayedCalls() if c.func.__name__ == "_timed_out"]
        self.assertEqual(timers, [])
        return read

    @settings(max_examples=EXAMPLES)
    @given(
        st.binary(max_size=2000) | st.binary(max_size=100).map(lambda b: b"\x06" + b),
        st.lists(st.integers(0, 2000), max_size=8),
        st.booleans(),
    )
    def test_random_streams_in_pieces_are_read_or_dropped_and_counted(
        self, data: bytes, cuts: list[int], server: bool
    ) -> None:
        self.check_stream(data, cuts, server)

    @settings(max_examples=EXAMPLES)
    @given(
        st.one_of(streams(), mutated(streams())),
        st.lists(st.integers(0, 2000), max_size=8),
        st.booleans(),
    )
    def test_mutated_streams_in_pieces_are_read_or_dropped_and_counted(
        self, data: bytes, cuts: list[int], server: bool
    ) -> None:
        self.check_stream(data, cuts, server)

    @settings(max_examples=EXAMPLES // 4)
    @given(stream_messages, st.booleans(), st.lists(st.integers(0, 2000), max_size=12))
    def test_a_valid_stream_is_read_whatever_its_chunking(
        self, message: Any, encrypted: bool, cuts: list[int]
    ) -> None:
        codec = self.nodes["verify" if encrypted else "plain"].codec
        data = codec.encode_stream(message)
        plain, verify, lenient = self.check_stream(data, cuts, server=False)
        self.assertEqual((lenient, verify if encrypted else plain), (message, message))
        self.assertIsNone(plain if encrypted else verify)  # refused: wrong mode
