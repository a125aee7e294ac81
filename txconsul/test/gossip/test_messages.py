"""
Tests for txconsul.gossip.messages and txconsul.gossip.wire, with the bytes
observed from serf 0.9.4 (spec/gossip-wire.md section 11) as fixtures.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip import wire
from txconsul.gossip.messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    User,
    UserStream,
    decode_packet,
    decode_stream,
    encode_packet,
    encode_stream,
)
from txconsul.gossip.wire import Incomplete, MalformedPacket

try:  # registers the shared "ci" profile when present
    import txconsul.testing.hypothesis  # noqa: F401
except ImportError:
    settings.register_profile("gossip", deadline=None, max_examples=300)
    settings.load_profile("gossip")

LOCALHOST = bytes.fromhex("7f000001")
SERF_VSN = bytes.fromhex("010502020505")

SERF_PING = bytes.fromhex(
    "0085a44e6f6465a6736572662d62a55365714e6f01aa536f7572636541646472a47f000001"
    "aa536f757263654e6f6465a6736572662d61aa536f75726365506f7274cd461a"
)
PROBE_PING = bytes.fromhex(
    "0085a44e6f6465a6736572662d61a55365714e6fcd1092aa536f7572636541646472a47f000001"
    "aa536f757263654e6f6465a870792d70726f6265aa536f75726365506f7274cd461d"
)
COORDINATE = bytes.fromhex(
    "0184aa41646a7573746d656e74cb3ef488778f2bf818a54572726f72cb3ff6f4cf92d5828e"
    "a6486569676874cb3ee4f8b588e368f1a356656398cb3f000e9f6f2bbabecbbef566d96f23d4aa"
    "cbbef99c56b6426e84cb3f128ee5c9773a5bcb3f08a9503b73c9f6cb3f0496d8a6db59ab"
    "cb3ee9b892ddc77137cb3f05507582ec5691"
)
SERF_ACK = (
    bytes.fromhex("0282a75061796c6f6164da0082") + COORDINATE + bytes.fromhex("a55365714e6f02")
)
INDIRECT = bytes.fromhex(
    "0188a44e61636bc3a44e6f6465a6736572662d63a4506f7274cd461ca55365714e6fccac"
    "aa536f7572636541646472a47f000001aa536f757263654e6f6465a6736572662d61"
    "aa536f75726365506f7274cd461aa6546172676574a47f000001"
)
NACK_SUSPECT = bytes.fromhex(
    "0702000a0027"
    "0b81a55365714e6fccac"
    "0383a446726f6da6736572662d61ab496e6361726e6174696f6e01a44e6f6465a6736572662d63"
)
LZW_BUF = bytes.fromhex("0005083a05254c1e366fc29001566a4a99384ede3483302920")
LZW_PLAIN = bytes.fromhex("0282a75061796c6f6164c0a55365714e6fcd1093")
SERF_A = Alive(
    1, "serf-a", LOCALHOST, 17946, bytes.fromhex("ff82a4726f6c65a3776562a26463a3646331"), SERF_VSN
)
SERF_B = Alive(1, "serf-b", LOCALHOST, 17947, bytes.fromhex("ff80"), SERF_VSN)
USER_EVENT = bytes.fromhex("0803") + bytes.fromhex(
    "84a24343c3a54c54696d6501a44e616d65a66465706c6f79a75061796c6f6164a868656c6c6f2d7631"
)


class ObservedBytesTests(SynchronousTestCase):
    """Every fixture decodes to the expected record and encodes back byte for byte."""

    def assertRoundTrip(self, data: bytes, expected: Message) -> None:
        self.assertEqual(decode_packet(data), [expected])
        self.assertEqual(expected.to_wire(), data)

    def test_serf_ping(self) -> None:
        self.assertRoundTrip(SERF_PING, Ping(1, "serf-b", LOCALHOST, 17946, "serf-a"))

    def test_probe_ping(self) -> None:
        self.assertRoundTrip(PROBE_PING, Ping(4242, "serf-a", LOCALHOST, 17949, "py-probe"))

    def test_ack_with_coordinate_payload(self) -> None:
        self.assertEqual(len(SERF_ACK), 150)
        self.assertRoundTrip(SERF_ACK, Ack(2, COORDINATE))

    def test_indirect_ping(self) -> None:
        self.assertRoundTrip(
            INDIRECT,
            IndirectPing(172, LOCALHOST, 17948, "serf-c", True, LOCALHOST, 17946, "serf-a"),
        )

    def test_nack_and_suspect_compound(self) -> None:
        expected: list[Message] = [Nack(172), Suspect(1, "serf-c", "serf-a")]
        self.assertEqual(decode_packet(NACK_SUSPECT), expected)
        self.assertEqual(encode_packet([m.to_wire() for m in expected]), NACK_SUSPECT)

    def test_gossip_compound_with_crc(self) -> None:
        packet = encode_packet([SERF_A.to_wire(), SERF_B.to_wire()], crc=True)
        self.assertEqual(len(packet), 155)
        self.assertEqual(packet[:11].hex(), "0cdb4527f80702005000" + "40")
        self.assertEqual(decode_packet(packet), [SERF_A, SERF_B])

    def test_crc_mismatch_is_malformed(self) -> None:
        packet = bytearray(encode_packet([SERF_A.to_wire()], crc=True))
        packet[-1] ^= 1
        self.assertRaises(MalformedPacket, decode_packet, bytes(packet))

    def test_user_event_is_opaque_user_message(self) -> None:
        [message] = decode_packet(wire.add_crc(USER_EVENT))
        self.assertEqual(message, User(USER_EVENT[1:]))

    def test_lzw_vector_both_ways(self) -> None:
        self.assertEqual(wire.lzw_decompress(LZW_BUF), LZW_PLAIN)
        self.assertEqual(wire.lzw_compress(LZW_PLAIN), LZW_BUF)

    def test_compressed_tcp_ack(self) -> None:
        stream = encode_stream(Ack(4243), compress=True)
        self.assertIn(LZW_BUF, stream)
        self.assertEqual(decode_stream(stream), (Ack(4243), len(stream)))

    def test_push_pull_layout(self) -> None:
        node = PushNodeState("serf-b", LOCALHOST, 17947, b"\xff\x80", 1, 0, SERF_VSN)
        message = PushPull(True, (node,), b"\x02user")
        data = message.to_wire()
        self.assertTrue(data.startswith(bytes.fromhex("0683a44a6f696ec3a54e6f64657301ac")))
        self.assertIn(
            bytes.fromhex("87a441646472a47f000001ab496e6361726e6174696f6e01a44d657461a2ff80"), data
        )
        self.assertEqual(decode_stream(data + b"rest"), (message, len(data)))

    @given(
        st.text(max_size=300),
        st.binary(max_size=20),
        st.integers(0, 0xFFFF),
        st.binary(max_size=70_000),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 3),
        st.binary(max_size=8),
    )
    @settings(max_examples=100)
    def test_push_node_size_without_encoding_matches_the_encoding(
        self, name: str, addr: bytes, port: int, meta: bytes, inc: int, state: int, vsn: bytes
    ) -> None:
        """The push/pull budget measures states from field lengths alone."""
        node = PushNodeState(name, addr, port, meta, inc, state, vsn)
        self.assertEqual(node.wire_size(), len(wire.pack(node.to_dict())))
        message = PushPull(False, (node,) * 3, b"state")
        self.assertEqual(message.header_size() + 3 * node.wire_size() + 5, len(message.to_wire()))


class LZWTests(SynchronousTestCase):
    def test_round_trip_sizes_that_reset_the_table(self) -> None:
        rng = random.Random(3)
        for size in (0, 1, 2, 511, 5000, 60000):
            text = bytes(rng.choice(b"abcdefgh") for _ in range(size))
            noise = rng.randbytes(size)
            for data in (text, noise):
                self.assertEqual(wire.lzw_decompress(wire.lzw_compress(data)), data)

    def test_output_limit(self) -> None:
        packed = wire.lzw_compress(b"a" * 100_000)
        self.assertRaises(MalformedPacket, wire.lzw_decompress, packed, 1000)

    def test_missing_end_code(self) -> None:
        self.assertRaises(MalformedPacket, wire.lzw_decompress, LZW_BUF[:-3])


class FramingTests(SynchronousTestCase):
    def test_compression_only_when_shorter(self) -> None:
        small = Nack(1).to_wire()
        self.assertEqual(encode_packet([small], compress=True), small)
        big = Alive(1, "n" * 40, LOCALHOST, 1, b"\xff\x80" + b"x" * 300).to_wire()
        packet = encode_packet([big, big], compress=True)
        self.assertEqual(packet[0], wire.COMPRESS)
        self.assertEqual(len(decode_packet(packet)), 2)

    def test_label_round_trip(self) -> None:
        labelled = wire.add_label(b"\x0b\x81", b"dc1")
        self.assertEqual(wire.strip_label(labelled), (b"dc1", b"\x0b\x81"))
        self.assertEqual(wire.strip_label(b"\x0b"), (b"", b"\x0b"))
        self.assertRaises(MalformedPacket, wire.strip_label, b"\xf4\x05ab")

    def test_every_record_round_trips(self) -> None:
        records: list[Message] = [
            Ping(7, "a"),
            Ack(9, None),
            Nack(3),
            Suspect(2, "x", "y"),
            Dead(3, "x", "x"),
            SERF_A,
            ErrResp("nope"),
            IndirectPing(1, LOCALHOST, 2, "t"),
        ]
        for record in records:
            self.assertEqual(decode_packet(record.to_wire()), [record])

    def test_missing_fields_take_zero_values(self) -> None:
        self.assertEqual(decode_packet(b"\x00\x80"), [Ping(0, "")])

    def test_wrong_field_types_are_malformed(self) -> None:
        for body in (b"\x00\x81\xa5SeqNo\xa1x", b"\x00\x81\xa4Node\x05", b"\x0b\x81\xa5SeqNo\xff"):
            self.assertRaises(MalformedPacket, decode_packet, body)

    def test_unknown_type_is_malformed(self) -> None:
        self.assertRaises(MalformedPacket, decode_packet, b"\x63\x80")

    def test_stream_needs_more_data(self) -> None:
        data = PushPull(False, (), b"12345").to_wire()
        for cut in range(len(data)):
            self.assertRaises(Incomplete, decode_stream, data[:cut])
        message = UserStream(b"hello")
        self.assertEqual(decode_stream(message.to_wire()), (message, len(message.to_wire())))


messages_st = st.sampled_from(
    [SERF_PING, PROBE_PING, SERF_ACK, INDIRECT, NACK_SUSPECT, SERF_A.to_wire(), LZW_BUF]
)


class FuzzTests(SynchronousTestCase):
    @given(st.binary(max_size=1400))
    def test_random_bytes_raise_only_malformed_packet(self, data: bytes) -> None:
        try:
            decode_packet(data)
        except MalformedPacket:
            pass

    @given(st.binary(max_size=600))
    def test_random_streams_raise_only_malformed_packet(self, data: bytes) -> None:
        try:
            decode_stream(data)
        except MalformedPacket:
            pass

    @given(messages_st, st.integers(0, 10_000), st.integers(0, 255))
    def test_mutated_observed_packets_raise_only_malformed_packet(
        self, data: bytes, where: int, value: int
    ) -> None:
        mutated = bytearray(data)
        mutated[where % len(data)] = value
        for candidate in (bytes(mutated), bytes(mutated[: where % len(data)])):
            try:
                decode_packet(candidate)
            except MalformedPacket:
                pass

    @given(st.binary(min_size=1, max_size=300))
    def test_garbage_lzw_raises_only_malformed_packet(self, data: bytes) -> None:
        try:
            wire.lzw_decompress(data, limit=1 << 16)
        except MalformedPacket:
            pass
