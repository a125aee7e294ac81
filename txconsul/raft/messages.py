# -*- test-case-name: txconsul.test.raft.test_messages -*-
"""
Raft's messages as frozen records, each with ``to_wire``/``from_wire``.

A message travels as one msgpack array: a type code, then the fields in
declaration order. Decoding checks every field's type and raises only
``MalformedFrame``, whatever the bytes, so a garbled frame from the network
is dropped and counted, never applied.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import msgpack

from txconsul.errors import TxConsulError


class MalformedFrame(TxConsulError):
    """A Raft or RPC frame that does not decode into a known message."""

    code = 400


#: the largest index or term we accept (Go's uint64 in hashicorp/raft)
MAX_U64 = (1 << 64) - 1


@attrs.frozen
class Entry:
    """
    One log entry. ``config`` is ``None`` for a command (``command`` holds its
    msgpack bytes; empty bytes make the no-op a new leader appends) and the
    full list of voters for a configuration change.
    """

    term: int
    index: int
    command: bytes = b""
    config: tuple[str, ...] | None = None

    def to_list(self) -> list[Any]:
        return [
            self.term,
            self.index,
            self.command,
            None if self.config is None else list(self.config),
        ]

    @classmethod
    def from_list(cls, value: Any) -> Entry:
        if not isinstance(value, list) or len(value) != 4:
            raise MalformedFrame("an entry is not a 4-element array")
        term, index, command, config = value
        _check_uint(term, "entry term")
        _check_uint(index, "entry index")
        if not isinstance(command, bytes):
            raise MalformedFrame("entry command is not bytes")
        return cls(term, index, command, None if config is None else _str_tuple(config, "config"))


@attrs.frozen
class RequestVote:
    """
    Ask for a vote. ``pre_vote`` asks whether the voter *would* vote, changing
    no state on either side; ``transfer`` marks the election a leader asked
    for with TimeoutNow, which voters grant even while they hear a leader.
    """

    CODE: ClassVar[int] = 1
    term: int
    candidate: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@attrs.frozen
class RequestVoteReply:
    CODE: ClassVar[int] = 2
    term: int
    granted: bool
    pre_vote: bool = False


@attrs.frozen
class AppendEntries:
    """``seq`` numbers the leader's sends, so a reply tells which round it answers."""

    CODE: ClassVar[int] = 3
    term: int
    leader: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    seq: int


@attrs.frozen
class AppendEntriesReply:
    """
    ``match_index`` is the last index known to match the leader's log on
    success; on failure ``conflict_term``/``conflict_index`` let the leader
    skip a whole term of mismatching entries at once.
    """

    CODE: ClassVar[int] = 4
    term: int
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int
    seq: int


@attrs.frozen
class InstallSnapshot:
    """The whole snapshot in one message; state stores are small enough for it."""

    CODE: ClassVar[int] = 5
    term: int
    leader: str
    last_index: int
    last_term: int
    config: tuple[str, ...]
    data: bytes
    seq: int


@attrs.frozen
class InstallSnapshotReply:
    CODE: ClassVar[int] = 6
    term: int
    last_index: int
    seq: int


@attrs.frozen
class TimeoutNow:
    """The leader hands over: the receiver starts an election at once."""

    CODE: ClassVar[int] = 7
    term: int
    leader: str


Message = (
    RequestVote
    | RequestVoteReply
    | AppendEntries
    | AppendEntriesReply
    | InstallSnapshot
    | InstallSnapshotReply
    | TimeoutNow
)

_TYPES: dict[int, type[Any]] = {
    cls.CODE: cls
    for cls in (
        RequestVote,
        RequestVoteReply,
        AppendEntries,
        AppendEntriesReply,
        InstallSnapshot,
        InstallSnapshotReply,
        TimeoutNow,
    )
}

# the type each field must have on the wire, by its annotation's text
_UINT, _STR, _BOOL, _BYTES, _ENTRIES, _CONFIG = "int", "str", "bool", "bytes", "entries", "config"
_KINDS = {
    "int": _UINT,
    "str": _STR,
    "bool": _BOOL,
    "bytes": _BYTES,
    "tuple[Entry, ...]": _ENTRIES,
    "tuple[str, ...]": _CONFIG,
}
_SCHEMA: dict[int, list[tuple[str, str]]] = {
    code: [(f.name, _KINDS[str(f.type)]) for f in attrs.fields(cls)] for code, cls in _TYPES.items()
}


def _check_uint(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U64:
        raise MalformedFrame(f"{what} is not an unsigned 64-bit integer")


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise MalformedFrame(f"{what} is not a list of strings")
    return tuple(value)


def to_wire(message: Message) -> bytes:
    """Encode one message."""
    fields: list[Any] = [message.CODE]
    for name, kind in _SCHEMA[message.CODE]:
        value = getattr(message, name)
        if kind == _ENTRIES:
            value = [e.to_list() for e in value]
        elif kind == _CONFIG:
            value = list(value)
        fields.append(value)
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def from_wire(data: bytes) -> Message:
    """Decode one message; any defect raises ``MalformedFrame``."""
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises a dozen types for bad input
        raise MalformedFrame(f"not msgpack: {e}") from e
    if not isinstance(value, list) or not value:
        raise MalformedFrame("a message is not a non-empty array")
    code = value[0]
    if isinstance(code, bool) or not isinstance(code, int) or code not in _TYPES:
        raise MalformedFrame(f"unknown message type {code!r}")
    schema = _SCHEMA[code]
    if len(value) != len(schema) + 1:
        raise MalformedFrame(f"message type {code} has {len(value) - 1} fields, not {len(schema)}")
    kwargs: dict[str, Any] = {}
    for (name, kind), field in zip(schema, value[1:], strict=True):
        if kind == _UINT:
            _check_uint(field, name)
        elif kind == _STR:
            if not isinstance(field, str):
                raise MalformedFrame(f"{name} is not a string")
        elif kind == _BOOL:
            if not isinstance(field, bool):
                raise MalformedFrame(f"{name} is not a boolean")
        elif kind == _BYTES:
            if not isinstance(field, bytes):
                raise MalformedFrame(f"{name} is not bytes")
        elif kind == _ENTRIES:
            if not isinstance(field, list):
                raise MalformedFrame(f"{name} is not an array")
            field = tuple(Entry.from_list(e) for e in field)
        elif kind == _CONFIG:
            field = _str_tuple(field, name)
        kwargs[name] = field
    message: Message = _TYPES[code](**kwargs)
    return message
