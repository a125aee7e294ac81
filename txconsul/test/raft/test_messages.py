"""Tests for txconsul.raft.messages: round trips and garbage."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import txconsul.testing.hypothesis  # noqa: F401
from txconsul.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    MalformedFrame,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
    from_wire,
    to_wire,
)

EXAMPLES: list[Message] = [
    RequestVote(3, "a", 10, 2, pre_vote=True),
    RequestVote(4, "b", 0, 0, transfer=True),
    RequestVoteReply(3, True, pre_vote=True),
    AppendEntries(
        5,
        "a",
        9,
        4,
        (Entry(5, 10, b"\x81\xa4Type\xa2kv"), Entry(5, 11, b"", ("a", "b", "c"))),
        9,
        77,
    ),
    AppendEntries(5, "a", 9, 4, (), 9, 78),
    AppendEntriesReply(5, False, 0, 7, 3, 77),
    InstallSnapshot(6, "c", 100, 5, ("a", "c"), b"snapshot", 1),
    InstallSnapshotReply(6, 100, 1),
    TimeoutNow(6, "c"),
]


class RoundTripTests(SynchronousTestCase):
    def test_every_message_survives_the_wire(self) -> None:
        for message in EXAMPLES:
            self.assertEqual(from_wire(to_wire(message)), message)

    def test_unknown_type_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, from_wire, msgpack.packb([99, 1]))

    def test_wrong_field_count_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, from_wire, msgpack.packb([7, 1]))

    def test_negative_term_is_malformed(self) -> None:
        self.assertRaises(MalformedFrame, from_wire, msgpack.packb([7, -1, "a"]))

    def test_boolean_is_not_an_index(self) -> None:
        self.assertRaises(MalformedFrame, from_wire, msgpack.packb([6, True, 1, 1]))

    def test_bad_entry_is_malformed(self) -> None:
        frame = msgpack.packb([3, 1, "a", 0, 0, [[1, 1, "not bytes", None]], 0, 0])
        self.assertRaises(MalformedFrame, from_wire, frame)


class GarbageTests(SynchronousTestCase):
    @given(st.binary(max_size=512))
    def test_garbage_raises_only_malformed(self, data: bytes) -> None:
        try:
            from_wire(data)
        except MalformedFrame:
            pass

    @given(
        st.integers(0, 7),
        st.lists(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**63), 2**64 - 1),
                st.text(max_size=4),
                st.binary(max_size=4),
                st.lists(st.integers(-(2**63), 2**64 - 1), max_size=4),
                st.lists(
                    st.lists(st.one_of(st.integers(0, 5), st.binary(max_size=2), st.none())),
                    max_size=3,
                ),
            ),
            max_size=9,
        ),
    )
    def test_well_formed_msgpack_of_wrong_shape_raises_only_malformed(self, code, fields) -> None:
        try:
            from_wire(msgpack.packb([code, *fields], use_bin_type=True))
        except MalformedFrame:
            pass

    @given(st.sampled_from(EXAMPLES), st.data())
    def test_truncated_frames_raise_only_malformed(self, message, data) -> None:
        wire = to_wire(message)
        cut = data.draw(st.integers(0, len(wire) - 1))
        self.assertRaises(MalformedFrame, from_wire, wire[:cut])
