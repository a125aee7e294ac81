"""
Tests for txconsul.gossip.keyring and txconsul.gossip.adapter: the keyring in
memory, and pools converging over real loopback sockets.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable

import attrs
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.gossip.adapter import Codec, GossipPool
from txconsul.gossip.keyring import Keyring, KeyringError, decode_key
from txconsul.gossip.memberlist import GossipConfig, Packet
from txconsul.gossip.messages import Ack, Ping, PushPull
from txconsul.gossip.states import MemberState
from txconsul.gossip.wire import Incomplete, MalformedPacket
from txconsul.testing.polling import poll_until

KEY = bytes(range(32))
OTHER = bytes(range(1, 17))
FAST = GossipConfig(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.05,
    push_pull_interval=2.0,
    suspicion_mult=3,
    tcp_timeout=2.0,
)


class KeyringTests(SynchronousTestCase):
    def test_packet_round_trip_and_overhead(self) -> None:
        ring = Keyring([KEY])
        sealed = ring.encrypt_packet(b"x" * 73)
        self.assertEqual(len(sealed), 102)
        self.assertEqual(sealed[0], 1)
        self.assertEqual(ring.decrypt_packet(sealed), b"x" * 73)

    def test_any_installed_key_opens(self) -> None:
        old = Keyring([OTHER])
        ring = Keyring([KEY, OTHER])
        self.assertEqual(ring.decrypt_packet(old.encrypt_packet(b"hi")), b"hi")

    def test_wrong_key_is_malformed(self) -> None:
        sealed = Keyring([OTHER]).encrypt_packet(b"hi")
        self.assertRaises(MalformedPacket, Keyring([KEY]).decrypt_packet, sealed)
        self.assertRaises(MalformedPacket, Keyring([KEY]).decrypt_packet, b"\x01short")

    def test_stream_frame_authenticates_its_header(self) -> None:
        ring = Keyring([KEY])
        frame = ring.encrypt_stream(b"payload")
        self.assertEqual(frame[:5], b"\x0a\x00\x00\x00\x24")
        self.assertEqual(ring.decrypt_stream(frame + b"more"), (b"payload", len(frame)))
        tampered = frame[:4] + b"\x25" + frame[5:] + b"\x00"
        self.assertRaises(MalformedPacket, ring.decrypt_stream, tampered)

    def test_rotation(self) -> None:
        ring = Keyring([KEY])
        ring.install(OTHER)
        ring.use(OTHER)
        self.assertEqual(ring.keys[0], OTHER)
        self.assertRaises(KeyringError, ring.remove, OTHER)
        ring.remove(KEY)
        self.assertEqual(ring.keys, [OTHER])

    def test_key_text(self) -> None:
        self.assertEqual(decode_key(base64.b64encode(KEY).decode()), KEY)
        self.assertRaises(KeyringError, decode_key, base64.b64encode(b"short").decode())
        self.assertRaises(KeyringError, decode_key, "not base64!")


class CodecTests(SynchronousTestCase):
    def test_encrypted_compressed_packet_round_trip(self) -> None:
        codec = Codec(Keyring([KEY]), compress_packets=True)
        packet = Packet(("127.0.0.1", 1), (Ping(1, "a"), Ack(2)) * 20, crc=True)
        self.assertEqual(
            codec.decode_packet(codec.encode_packet(packet)), [Ping(1, "a"), Ack(2)] * 20
        )

    def test_packets_are_compressed_only_when_asked_and_read_either_way(self) -> None:
        packet = Packet(("127.0.0.1", 1), (Ping(1, "node-a"),) * 20)
        plain, packed = (
            Codec().encode_packet(packet),
            Codec(compress_packets=True).encode_packet(packet),
        )
        self.assertEqual(plain[0], 7)  # a compound
        self.assertEqual(packed[0], 9)  # a compress wrapper
        self.assertLess(len(packed), len(plain))
        for data in (plain, packed):
            self.assertEqual(Codec().decode_packet(data), [Ping(1, "node-a")] * 20)

    def test_plaintext_is_refused_when_encrypting(self) -> None:
        plain = Codec().encode_packet(Packet(("127.0.0.1", 1), (Ack(2),)))
        self.assertRaises(MalformedPacket, Codec(Keyring([KEY])).decode_packet, plain)

    def test_stream_round_trip(self) -> None:
        for codec in (Codec(), Codec(Keyring([KEY])), Codec(compress=False)):
            data = codec.encode_stream(PushPull(True, ()))
            self.assertEqual(codec.decode_stream(data), (PushPull(True, ()), len(data)))


class VerifyFlagTests(SynchronousTestCase):
    """
    memberlist's GossipVerifyIncoming / GossipVerifyOutgoing (Consul's
    ``encrypt_verify_incoming`` / ``_outgoing``) in the four combinations.
    """

    #: a ping (type 0), an ack (2), a compound with a CRC header (12)
    PACKETS = (
        Packet(("127.0.0.1", 1), (Ping(1, "a"),)),
        Packet(("127.0.0.1", 1), (Ack(7),)),
        Packet(("127.0.0.1", 1), (Ping(2, "a"), Ack(3)), crc=True),
    )
    STREAMS = (PushPull(True, ()), Ping(4, "a"))

    def codec(self, incoming: bool, outgoing: bool) -> Codec:
        return Codec(Keyring([KEY]), verify_incoming=incoming, verify_outgoing=outgoing)

    def test_outgoing_on_seals_packets_and_streams_whatever_incoming_is(self) -> None:
        for incoming in (True, False):
            codec = self.codec(incoming, outgoing=True)
            for packet in self.PACKETS:
                sealed = codec.encode_packet(packet)
                self.assertEqual(sealed[0], 1)  # the encryption version byte
                # to a plaintext reader a sealed packet is random bytes after
                # type 1: usually malformed, but a nonce starting with 0x80
                # (an empty map) reads as an empty indirect ping
                try:
                    read = Codec().decode_packet(sealed)
                except MalformedPacket:
                    read = []
                self.assertNotEqual(read, list(packet.messages))
                self.assertEqual(Codec(Keyring([KEY])).decode_packet(sealed), list(packet.messages))
            for message in self.STREAMS:
                sealed = codec.encode_stream(message)
                self.assertEqual(sealed[0], 10)  # an encrypted stream frame
                self.assertEqual(Codec(Keyring([KEY])).decode_stream(sealed)[0], message)

    def test_outgoing_off_sends_plaintext_packets_and_streams(self) -> None:
        for incoming in (True, False):
            codec = self.codec(incoming, outgoing=False)
            for packet in self.PACKETS:
                self.assertEqual(codec.encode_packet(packet), Codec().encode_packet(packet))
            for message in self.STREAMS:
                self.assertEqual(codec.encode_stream(message), Codec().encode_stream(message))

    def test_incoming_on_drops_plaintext(self) -> None:
        for outgoing in (True, False):
            codec = self.codec(True, outgoing)
            for packet in self.PACKETS:
                plain = Codec().encode_packet(packet)
                self.assertRaises(MalformedPacket, codec.decode_packet, plain)
            for message in self.STREAMS:
                plain = Codec().encode_stream(message)
                error = self.assertRaises(MalformedPacket, codec.decode_stream, plain)
                self.assertEqual(str(error), "stream is not encrypted")

    def test_incoming_off_reads_plaintext_and_encrypted(self) -> None:
        sealing = Codec(Keyring([KEY]))
        for outgoing in (True, False):
            codec = self.codec(False, outgoing)
            for packet in self.PACKETS:
                for data in (Codec().encode_packet(packet), sealing.encode_packet(packet)):
                    self.assertEqual(codec.decode_packet(data), list(packet.messages))
            for message in self.STREAMS:
                for data in (Codec().encode_stream(message), sealing.encode_stream(message)):
                    self.assertEqual(codec.decode_stream(data), (message, len(data)))

    def test_incoming_off_still_drops_what_is_neither(self) -> None:
        """Another key's packets and streams are garbage, not plaintext."""
        codec = self.codec(False, False)
        foreign = Codec(Keyring([OTHER]))
        packet = foreign.encode_packet(self.PACKETS[0])
        error = self.assertRaises(MalformedPacket, codec.decode_packet, packet)
        self.assertIn("no installed key could decrypt the message; nor is it plaintext", str(error))
        stream = foreign.encode_stream(PushPull(True, ()))
        self.assertRaises(MalformedPacket, codec.decode_stream, stream)
        self.assertRaises(MalformedPacket, codec.decode_packet, b"\xff\x00garbage")

    def test_a_stream_is_read_only_once_complete_either_way(self) -> None:
        codec = self.codec(False, False)
        for data in (
            Codec().encode_stream(PushPull(True, ())),
            Codec(Keyring([KEY])).encode_stream(Ping(4, "a")),
        ):
            for end in range(len(data)):
                self.assertRaises(Incomplete, codec.decode_stream, data[:end])


class LoopbackTests(TestCase):
    """Pools on real sockets, 127.0.0.1 and port 0, in this process."""

    timeout = 30

    def start_pool(self, name: str, keyring: Keyring | None = None) -> GossipPool:
        pool = GossipPool(
            reactor,
            time.monotonic,
            name,
            config=FAST,
            rng=random.Random(name),
            keyring=keyring,
        )
        pool.startService()
        self.addCleanup(pool.stopService)
        return pool

    async def wait_for(self, condition: Callable[[], bool], limit: float = 10.0) -> None:
        if not await poll_until(reactor, condition, limit):
            self.fail("condition not met in time")

    def alive_everywhere(self, pools: list[GossipPool]) -> bool:
        names = {p.node_name for p in pools}
        return all(
            {m.name for m in p.members() if m.state == MemberState.ALIVE} == names for p in pools
        )

    async def test_three_pools_converge(self) -> None:
        pools = [self.start_pool(f"pool-{i}") for i in range(3)]
        joined = await pools[1].join([pools[0].address()])
        self.assertEqual(joined, 1)
        await pools[2].join([pools[1].address()])
        await self.wait_for(lambda: self.alive_everywhere(pools))

    async def test_encrypted_pools_converge_and_a_stopped_one_is_declared_dead(self) -> None:
        pools = [self.start_pool(f"enc-{i}", Keyring([KEY])) for i in range(3)]
        for pool in pools[1:]:
            await pool.join([pools[0].address()])
        await self.wait_for(lambda: self.alive_everywhere(pools))
        await pools[2].stopService()

        def declared_dead() -> bool:
            return all(p.core.nodes["enc-2"].state == MemberState.DEAD for p in pools[:2])

        await self.wait_for(declared_dead, limit=15)

    async def test_a_dead_members_name_is_reclaimed_at_a_new_address_after_the_reclaim_time(
        self,
    ) -> None:
        """
        memberlist's DeadNodeReclaimTime over real sockets: a member killed
        without leaving comes back under its name at another port. Until it
        has been dead ``reclaim`` seconds the others keep the old address (a
        name conflict: the newcomer's alive claims are ignored); after that
        its next claim moves them. The time is shortened from Consul's 30 s
        through the pools' ``GossipConfig``, no agent option.
        """
        reclaim = 4.0
        config = attrs.evolve(FAST, dead_node_reclaim_time=reclaim)

        def pool(name: str) -> GossipPool:
            p = GossipPool(reactor, time.monotonic, name, config=config, rng=random.Random(name))
            p.startService()
            self.addCleanup(lambda: p.stopService() if p.running else None)
            return p

        a, b, old = pool("a"), pool("b"), pool("c")
        new = pool("c")  # bound while the old one runs: certainly another port
        old_address = old.address()
        self.assertNotEqual(new.address(), old_address)
        for p in (b, old):
            await p.join([a.address()])
        await self.wait_for(lambda: self.alive_everywhere([a, b, old]))
        await old.stopService()  # killed: its sockets close, no leave is sent

        def dead_everywhere() -> bool:
            return all(p.core.nodes["c"].state == MemberState.DEAD for p in (a, b))

        await self.wait_for(dead_everywhere, limit=15)
        died = {p.node_name: p.core.nodes["c"].state_change for p in (a, b)}
        self.assertEqual(await new.join([a.address()]), 1)
        # the newcomer heard it is dead and refuted: its claim reached a and was refused
        await self.wait_for(lambda: new.core.nodes["c"].incarnation > 0)
        for p in (a, b):
            known = p.core.nodes["c"]
            self.assertLess(
                time.monotonic() - died[p.node_name], reclaim, "too slow to see the refusal"
            )
            self.assertEqual((known.state, known.address), (MemberState.DEAD, old_address))
        self.assertIn("a", new.core.nodes)

        def reclaimed() -> bool:
            return all(
                p.core.nodes["c"].state == MemberState.ALIVE
                and p.core.nodes["c"].address == new.address()
                for p in (a, b)
            )

        await self.wait_for(reclaimed, limit=20)
        for p in (a, b):
            self.assertGreater(p.core.nodes["c"].state_change - died[p.node_name], reclaim)

    async def test_compressing_and_plain_pools_read_each_other(self) -> None:
        plain = self.start_pool("plain")
        self.assertFalse(plain.codec.compress or plain.codec.compress_packets)
        squeezed = GossipPool(
            reactor,
            time.monotonic,
            "squeezed",
            config=attrs.evolve(FAST, compress_streams=True, compress_packets=True),
            rng=random.Random(2),
        )
        squeezed.startService()
        self.addCleanup(squeezed.stopService)
        self.assertTrue(squeezed.codec.compress and squeezed.codec.compress_packets)
        self.assertEqual(await squeezed.join([plain.address()]), 1)
        self.assertEqual(await plain.join([squeezed.address()]), 1)
        await self.wait_for(lambda: self.alive_everywhere([plain, squeezed]))

    async def test_join_with_the_wrong_key_fails(self) -> None:
        a = self.start_pool("a", Keyring([KEY]))
        b = self.start_pool("b", Keyring([OTHER]))
        joined = await b.join([a.address()])
        self.assertEqual(joined, 0)
        self.assertNotIn("a", b.core.nodes)

    async def test_stopping_ends_the_streams_in_flight(self) -> None:
        """A push/pull to a peer that never answers ends when the pool stops, not at its timeout."""
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Factory, Protocol

        gone: Deferred[None] = Deferred()
        accepted: Deferred[None] = Deferred()

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.callback(None)

            def connectionLost(self, reason: object = None) -> None:
                gone.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = attrs.evolve(FAST, tcp_timeout=10.0)
        pool = GossipPool(reactor, time.monotonic, "a", config=config, rng=random.Random(1))
        started = time.monotonic()
        pool.startService()
        self.addCleanup(lambda: pool.stopService() if pool.running else None)
        joined = pool.join([("127.0.0.1", port.getHost().port)])
        await accepted
        node = pool.node
        assert node is not None
        await self.wait_for(lambda: len(node.streams) == 1)
        await pool.stopService()
        self.assertEqual(await joined, 0)
        await gone
        self.assertLess(time.monotonic() - started, config.tcp_timeout / 2)
