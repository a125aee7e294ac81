# -*- test-case-name: txconsul.test.rpc.test_framing -*-
"""
The bytes of port 8300: one protocol byte, then length-prefixed msgpack frames.

A connection opens with one byte that picks what follows (``PROTOCOL_RPC`` or
``PROTOCOL_RAFT``, the values Consul gives them); every other byte value is
refused. After it, both directions carry frames: a 4-byte big-endian payload
length, then the payload. An RPC payload is one msgpack map (``Request`` one
way, ``Response`` the other; a client may also send ``Cancel``, which says
it no longer wants the answer to a request still in flight); a Raft payload
is one message of
``txconsul.raft.messages``. Every decoding defect raises ``MalformedFrame``
(the one defined beside Raft's messages, re-exported here), and nothing else.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import msgpack

from txconsul.raft.messages import MalformedFrame

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "Cancel",
    "FrameTooLarge",
    "MalformedFrame",
    "PROTOCOL_NAMES",
    "PROTOCOL_RAFT",
    "PROTOCOL_RPC",
    "RAFT_MAX_FRAME",
    "Request",
    "Response",
    "client_frame_from_wire",
    "encode_frame",
    "pack",
    "unpack",
]

#: first byte of a connection carrying RPC requests and responses
PROTOCOL_RPC = 0x00
#: first byte of a connection carrying Raft messages
PROTOCOL_RAFT = 0x01
PROTOCOL_NAMES = {PROTOCOL_RPC: "rpc", PROTOCOL_RAFT: "raft"}

#: the largest RPC frame payload (requests and responses): 4 MiB
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
#: the largest Raft frame payload, room for an InstallSnapshot chunk: 64 MiB
RAFT_MAX_FRAME = 64 * 1024 * 1024

#: the largest request id, Go's uint64
MAX_ID = (1 << 64) - 1

_LENGTH = struct.Struct(">I")
HEADER_SIZE = _LENGTH.size


class FrameTooLarge(MalformedFrame):
    """A frame longer than the connection's limit; the stream cannot be trusted after it."""


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """The length prefix and ``payload``; ``FrameTooLarge`` past ``max_size``."""
    if not payload:
        raise MalformedFrame("an empty frame carries nothing")
    if len(payload) > max_size:
        raise FrameTooLarge(f"a frame of {len(payload)} bytes is over the limit of {max_size}")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """
    Cuts a byte stream into frame payloads.

    ``feed`` keeps a partial frame until the rest arrives, so a frame split
    across reads comes out whole. A length over ``max_size`` raises
    ``FrameTooLarge`` (a length of zero, ``MalformedFrame``) before any of the
    payload is buffered; the decoder then refuses every later ``feed``, since
    a peer that sent it cannot be trusted to find the next frame boundary.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._broken: MalformedFrame | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete (a truncated frame, at the end of a stream)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        frames: list[bytes] = []
        start = 0
        buffer = self._buffer
        while len(buffer) - start >= HEADER_SIZE:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length == 0 or length > self.max_size:
                self._broken = (
                    FrameTooLarge(f"a frame of {length} bytes is over the limit of {self.max_size}")
                    if length
                    else MalformedFrame("an empty frame")
                )
                del self._buffer[:]
                raise self._broken
            end = start + HEADER_SIZE + length
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[start + HEADER_SIZE : end]))
            start = end
        if start:
            del self._buffer[:start]
        return frames


def pack(value: Any) -> bytes:
    """msgpack with bin and str kept apart, as ``unpack`` reads it."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def unpack(payload: bytes) -> Any:
    """One msgpack value filling ``payload`` exactly; any defect raises ``MalformedFrame``."""
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except (
        Exception
    ) as e:  # msgpack raises many types (ValueError, ExtraData, UnicodeDecodeError...)
        raise MalformedFrame(f"not msgpack: {e}") from e


def _map(payload: bytes, what: str) -> dict[str, Any]:
    value = unpack(payload)
    if not isinstance(value, dict):
        raise MalformedFrame(f"{what} is not a msgpack map")
    return value


def _request_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise MalformedFrame(f"ID {value!r} is not an unsigned 64-bit integer")
    return value


@attrs.frozen
class Request:
    """``{"Method": "KVS.Apply", "ID": n, "Body": ...}``: one call, named by ``ID`` on its connection."""

    method: str
    id: int
    body: Any = None

    def to_wire(self) -> bytes:
        return pack({"Method": self.method, "ID": self.id, "Body": self.body})

    @classmethod
    def from_wire(cls, payload: bytes) -> Request:
        return cls.from_map(_map(payload, "a request"))

    @classmethod
    def from_map(cls, value: dict[str, Any]) -> Request:
        if "ID" not in value:
            raise MalformedFrame("a request has no ID")
        request_id = _request_id(value["ID"])
        method = value.get("Method")
        if not isinstance(method, str) or not method:
            raise MalformedFrame(f"request {request_id} has no Method string")
        return cls(method, request_id, value.get("Body"))

    @staticmethod
    def id_of(payload: bytes) -> int | None:
        """The ID of a frame that is not a valid request, if it has one, so an error can answer it."""
        try:
            value = _map(payload, "a request")
            return _request_id(value.get("ID"))
        except MalformedFrame:
            return None


@attrs.frozen
class Cancel:
    """
    ``{"ID": n, "Cancel": true}``: the client gave up on request ``ID`` (its
    caller went away, or it timed out); the server stops the handler and
    writes no answer. A cancel that finds nothing in flight (the answer
    crossed it) is ignored.
    """

    id: int

    def to_wire(self) -> bytes:
        return pack({"ID": self.id, "Cancel": True})


def client_frame_from_wire(payload: bytes) -> Request | Cancel:
    """What a client sent: a ``Request``, or a ``Cancel`` (``MalformedFrame`` otherwise)."""
    value = _map(payload, "a request")
    if "Cancel" in value:
        if value["Cancel"] is not True or "Method" in value:
            raise MalformedFrame("a cancel is {'ID': n, 'Cancel': true} and nothing else")
        if "ID" not in value:
            raise MalformedFrame("a cancel has no ID")
        return Cancel(_request_id(value["ID"]))
    return Request.from_map(value)


@attrs.frozen
class Response:
    """``{"ID": n, "Error": str | None, "Body": ...}``: the answer to request ``ID``."""

    id: int
    error: str | None = None
    body: Any = None

    def to_wire(self) -> bytes:
        return pack({"ID": self.id, "Error": self.error, "Body": self.body})

    @classmethod
    def from_wire(cls, payload: bytes) -> Response:
        value = _map(payload, "a response")
        if "ID" not in value:
            raise MalformedFrame("a response has no ID")
        response_id = _request_id(value["ID"])
        error = value.get("Error")
        if error is not None and not isinstance(error, str):
            raise MalformedFrame(f"response {response_id} has an Error that is not a string")
        return cls(response_id, error, value.get("Body"))
