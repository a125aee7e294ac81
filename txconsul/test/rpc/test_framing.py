"""Tests for txconsul.rpc.framing: frames, requests, responses and garbage."""

from __future__ import annotations

import struct

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import txconsul.testing.hypothesis  # noqa: F401
from txconsul.raft import messages
from txconsul.rpc.framing import (
    Cancel,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    Request,
    Response,
    client_frame_from_wire,
    encode_frame,
    pack,
)

REQUEST = Request("KVS.Apply", 7, {"Op": "set", "DirEnt": {"Key": "web", "Value": b"\x00\xff"}})
RESPONSE = Response(7, None, True)


class FrameTests(SynchronousTestCase):
    def test_malformed_frame_is_the_raft_one(self) -> None:
        """RPC and Raft share one decoding error type."""
        self.assertIs(MalformedFrame, messages.MalformedFrame)

    def test_length_prefix_is_four_bytes_big_endian(self) -> None:
        self.assertEqual(encode_frame(b"abc"), b"\x00\x00\x00\x03abc")

    def test_frames_split_anywhere_come_out_whole(self) -> None:
        stream = encode_frame(b"first") + encode_frame(b"second") + encode_frame(b"x")
        decoder = FrameDecoder()
        out: list[bytes] = []
        for i in range(len(stream)):
            out += decoder.feed(stream[i : i + 1])
        self.assertEqual(out, [b"first", b"second", b"x"])
        self.assertEqual(decoder.pending, 0)

    def test_many_frames_in_one_read(self) -> None:
        stream = b"".join(encode_frame(bytes([i]) * (i + 1)) for i in range(5))
        self.assertEqual(FrameDecoder().feed(stream), [bytes([i]) * (i + 1) for i in range(5)])

    def test_truncated_frame_waits_and_is_held(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(encode_frame(b"hello")[:-2]), [])
        self.assertEqual(decoder.pending, 7)

    def test_oversized_length_is_refused_before_buffering(self) -> None:
        decoder = FrameDecoder(max_size=10)
        self.assertRaises(FrameTooLarge, decoder.feed, struct.pack(">I", 11))
        self.assertEqual(decoder.pending, 0)

    def test_decoder_stays_broken_after_an_oversized_frame(self) -> None:
        decoder = FrameDecoder(max_size=10)
        self.assertRaises(FrameTooLarge, decoder.feed, struct.pack(">I", 1 << 31))
        self.assertRaises(FrameTooLarge, decoder.feed, encode_frame(b"ok"))

    def test_zero_length_frame_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, FrameDecoder().feed, b"\x00\x00\x00\x00")

    def test_encoding_over_the_limit_is_refused(self) -> None:
        self.assertRaises(FrameTooLarge, encode_frame, b"x" * 11, 10)
        self.assertEqual(encode_frame(b"x" * 10, 10)[:4], b"\x00\x00\x00\x0a")

    def test_raft_limit_is_larger(self) -> None:
        from txconsul.rpc.framing import DEFAULT_MAX_FRAME, RAFT_MAX_FRAME

        self.assertEqual((DEFAULT_MAX_FRAME, RAFT_MAX_FRAME), (4 << 20, 64 << 20))


class MessageTests(SynchronousTestCase):
    def test_request_round_trip(self) -> None:
        self.assertEqual(Request.from_wire(REQUEST.to_wire()), REQUEST)

    def test_response_round_trip(self) -> None:
        self.assertEqual(Response.from_wire(RESPONSE.to_wire()), RESPONSE)
        failed = Response(8, "Not found: web", None)
        self.assertEqual(Response.from_wire(failed.to_wire()), failed)

    def test_request_keys_are_consul_style(self) -> None:
        self.assertEqual(
            msgpack.unpackb(REQUEST.to_wire()),
            {"Method": "KVS.Apply", "ID": 7, "Body": REQUEST.body},
        )

    def test_request_without_id_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, Request.from_wire, pack({"Method": "Status.Ping"}))

    def test_bad_ids_are_malformed(self) -> None:
        for bad in (-1, True, "1", -(1 << 63), None, 1.5):
            self.assertRaises(MalformedFrame, Request.from_wire, pack({"Method": "A.B", "ID": bad}))

    def test_request_without_method_is_malformed_but_its_id_is_known(self) -> None:
        payload = pack({"ID": 9, "Method": 3})
        self.assertRaises(MalformedFrame, Request.from_wire, payload)
        self.assertEqual(Request.id_of(payload), 9)

    def test_response_error_must_be_a_string(self) -> None:
        self.assertRaises(MalformedFrame, Response.from_wire, pack({"ID": 1, "Error": 5}))

    def test_a_client_sends_requests_and_cancels(self) -> None:
        self.assertEqual(client_frame_from_wire(REQUEST.to_wire()), REQUEST)
        self.assertEqual(client_frame_from_wire(Cancel(7).to_wire()), Cancel(7))
        self.assertEqual(msgpack.unpackb(Cancel(7).to_wire()), {"ID": 7, "Cancel": True})

    def test_a_cancel_with_anything_else_is_malformed(self) -> None:
        for value in (
            {"ID": 7, "Cancel": 1},
            {"ID": 7, "Cancel": True, "Method": "KVS.Apply"},
            {"Cancel": True},
            {"ID": -1, "Cancel": True},
        ):
            self.assertRaises(MalformedFrame, client_frame_from_wire, pack(value))

    def test_not_a_map_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, Request.from_wire, pack([1, 2]))
        self.assertRaises(MalformedFrame, Response.from_wire, b"\xc1")


class GarbageTests(SynchronousTestCase):
    @given(st.binary(max_size=512), st.integers(1, 64))
    def test_random_stream_raises_only_malformed(self, data: bytes, chunk: int) -> None:
        decoder = FrameDecoder(max_size=256)
        try:
            for i in range(0, len(data), chunk):
                for payload in decoder.feed(data[i : i + chunk]):
                    for kind in (Request, Response):
                        try:
                            kind.from_wire(payload)
                        except MalformedFrame:
                            pass
        except MalformedFrame:
            pass

    @given(st.binary(max_size=256))
    def test_random_payload_raises_only_malformed(self, data: bytes) -> None:
        for parse in (Request.from_wire, Response.from_wire, client_frame_from_wire):
            try:
                parse(data)
            except MalformedFrame:
                pass
        Request.id_of(data)

    @given(
        st.dictionaries(
            st.sampled_from(["ID", "Method", "Body", "Error", "Cancel", "x"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                st.text(max_size=5),
                st.binary(max_size=5),
                st.lists(st.integers(0, 3), max_size=3),
            ),
        )
    )
    def test_msgpack_maps_of_any_shape_raise_only_malformed(self, value: dict) -> None:
        for parse in (Request.from_wire, Response.from_wire, client_frame_from_wire):
            try:
                parse(pack(value))
            except MalformedFrame:
                pass

    @given(st.sampled_from([REQUEST, Request("Status.Ping", 1)]), st.data())
    def test_truncated_requests_raise_only_malformed(self, request: Request, data) -> None:
        wire = request.to_wire()
        cut = data.draw(st.integers(0, len(wire) - 1))
        self.assertRaises(MalformedFrame, Request.from_wire, wire[:cut])

    @given(st.integers(min_value=1, max_value=(1 << 32) - 1))
    def test_any_length_over_the_limit_raises_too_large(self, length: int) -> None:
        decoder = FrameDecoder(max_size=1000)
        header = struct.pack(">I", length)
        if length > 1000:
            self.assertRaises(FrameTooLarge, decoder.feed, header)
        else:
            self.assertEqual(decoder.feed(header), [])
