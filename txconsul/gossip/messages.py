# -*- test-case-name: txconsul.test.gossip.test_messages -*-
"""
memberlist's messages as frozen records, each with ``to_wire``/``from_body``.

The dialect is go-msgpack's (spec/gossip-wire.md sections 1-3 and 5): a type
byte, then one msgpack map whose keys are Go field names in sorted order.
Decoding tolerates missing, extra and nil fields as Go does, and raises only
``MalformedPacket``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import msgpack

from txconsul.gossip import wire
from txconsul.gossip.wire import Incomplete, MalformedPacket

Body = Mapping[bytes, Any]

#: memberlist protocol 1..5, speaking 2; delegate (serf) protocol 2..5, speaking 4 as Consul does.
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 4])
MAX_NESTING = 4


def _get(body: Body, key: bytes, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        raise MalformedPacket(f"{key.decode()} is not an integer")
    if not isinstance(value, kind):
        raise MalformedPacket(f"{key.decode()} is not {kind.__name__}")
    return value


def _uint(body: Body, key: bytes, bits: int) -> int:
    value: int = _get(body, key, int, 0)
    if not 0 <= value < (1 << bits):
        raise MalformedPacket(f"{key.decode()} out of range")
    return value


def _int(body: Body, key: bytes) -> int:
    value: int = _get(body, key, int, 0)
    if not -(1 << 63) <= value < (1 << 63):
        raise MalformedPacket(f"{key.decode()} out of range")
    return value


def _bytes(body: Body, key: bytes) -> bytes:
    value: bytes = _get(body, key, bytes, b"")
    return value


def _str(body: Body, key: bytes) -> str:
    try:
        return _bytes(body, key).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacket(f"{key.decode()} is not UTF-8") from e


def _bool(body: Body, key: bytes) -> bool:
    value: bool = _get(body, key, bool, False)
    return value


def _map(value: Any, what: str) -> Body:
    if not isinstance(value, dict):
        raise MalformedPacket(f"{what} body is not a map")
    return value


def ip_bytes(host: str) -> bytes:
    """The wire form of an IP address (4 bytes for IPv4, as serf sends)."""
    return ipaddress.ip_address(host).packed


def ip_text(addr: bytes) -> str:
    """The text form of a wire IP; IPv4-mapped IPv6 comes back as IPv4."""
    if len(addr) == 4:
        return "%d.%d.%d.%d" % (addr[0], addr[1], addr[2], addr[3])
    if len(addr) == 16:
        ip6 = ipaddress.IPv6Address(addr)
        return str(ip6.ipv4_mapped or ip6)
    raise MalformedPacket(f"an IP address of {len(addr)} bytes")


def _with_source(body: dict[str, Any], addr: bytes, port: int, node: str) -> dict[str, Any]:
    # omitempty fields, inserted where the sorted order puts them
    if addr:
        body["SourceAddr"] = addr
    if node:
        body["SourceNode"] = node
    if port:
        body["SourcePort"] = port
    return body


@attrs.frozen
class Ping:
    TYPE: ClassVar[int] = wire.PING
    seq_no: int
    node: str
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def to_wire(self) -> bytes:
        body = {"Node": self.node, "SeqNo": self.seq_no}
        _with_source(body, self.source_addr, self.source_port, self.source_node)
        return bytes([self.TYPE]) + wire.pack(body)

    @classmethod
    def from_body(cls, body: Body) -> Ping:
        return cls(
            _uint(body, b"SeqNo", 32),
            _str(body, b"Node"),
            _bytes(body, b"SourceAddr"),
            _uint(body, b"SourcePort", 16),
            _str(body, b"SourceNode"),
        )


@attrs.frozen
class IndirectPing:
    TYPE: ClassVar[int] = wire.INDIRECT_PING
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {
            "Nack": self.nack,
            "Node": self.node,
            "Port": self.port,
            "SeqNo": self.seq_no,
        }
        _with_source(body, self.source_addr, self.source_port, self.source_node)
        body["Target"] = self.target
        return bytes([self.TYPE]) + wire.pack(body)

    @classmethod
    def from_body(cls, body: Body) -> IndirectPing:
        return cls(
            _uint(body, b"SeqNo", 32),
            _bytes(body, b"Target"),
            _uint(body, b"Port", 16),
            _str(body, b"Node"),
            _bool(body, b"Nack"),
            _bytes(body, b"SourceAddr"),
            _uint(body, b"SourcePort", 16),
            _str(body, b"SourceNode"),
        )


@attrs.frozen
class Ack:
    TYPE: ClassVar[int] = wire.ACK
    seq_no: int
    payload: bytes | None = None

    def to_wire(self) -> bytes:
        return bytes([self.TYPE]) + wire.pack({"Payload": self.payload, "SeqNo": self.seq_no})

    @classmethod
    def from_body(cls, body: Body) -> Ack:
        payload = body.get(b"Payload")
        if payload is not None and not isinstance(payload, bytes):
            raise MalformedPacket("Payload is not bytes")
        return cls(_uint(body, b"SeqNo", 32), payload)


@attrs.frozen
class Nack:
    TYPE: ClassVar[int] = wire.NACK
    seq_no: int

    def to_wire(self) -> bytes:
        return bytes([self.TYPE]) + wire.pack({"SeqNo": self.seq_no})

    @classmethod
    def from_body(cls, body: Body) -> Nack:
        return cls(_uint(body, b"SeqNo", 32))


@attrs.frozen
class Suspect:
    TYPE: ClassVar[int] = wire.SUSPECT
    incarnation: int
    node: str
    sender: str

    def to_wire(self) -> bytes:
        body = {"From": self.sender, "Incarnation": self.incarnation, "Node": self.node}
        return bytes([self.TYPE]) + wire.pack(body)

    @classmethod
    def from_body(cls, body: Body) -> Suspect:
        return cls(_uint(body, b"Incarnation", 32), _str(body, b"Node"), _str(body, b"From"))


@attrs.frozen
class Dead:
    """``sender == node`` is a voluntary leave."""

    TYPE: ClassVar[int] = wire.DEAD
    incarnation: int
    node: str
    sender: str

    def to_wire(self) -> bytes:
        body = {"From": self.sender, "Incarnation": self.incarnation, "Node": self.node}
        return bytes([self.TYPE]) + wire.pack(body)

    @classmethod
    def from_body(cls, body: Body) -> Dead:
        return cls(_uint(body, b"Incarnation", 32), _str(body, b"Node"), _str(body, b"From"))


@attrs.frozen
class Alive:
    TYPE: ClassVar[int] = wire.ALIVE
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: bytes = DEFAULT_VSN

    def to_wire(self) -> bytes:
        body = {
            "Addr": self.addr,
            "Incarnation": self.incarnation,
            "Meta": self.meta,
            "Node": self.node,
            "Port": self.port,
            "Vsn": self.vsn,
        }
        return bytes([self.TYPE]) + wire.pack(body)

    @classmethod
    def from_body(cls, body: Body) -> Alive:
        return cls(
            _uint(body, b"Incarnation", 32),
            _str(body, b"Node"),
            _bytes(body, b"Addr"),
            _uint(body, b"Port", 16),
            _bytes(body, b"Meta"),
            _bytes(body, b"Vsn"),
        )


@attrs.frozen
class User:
    """A delegate (serf) message carried opaquely: type 8 then the delegate's bytes."""

    TYPE: ClassVar[int] = wire.USER
    payload: bytes

    def to_wire(self) -> bytes:
        return bytes([self.TYPE]) + self.payload


@attrs.frozen
class ErrResp:
    TYPE: ClassVar[int] = wire.ERR
    error: str

    def to_wire(self) -> bytes:
        return bytes([self.TYPE]) + wire.pack({"Error": self.error})

    @classmethod
    def from_body(cls, body: Body) -> ErrResp:
        return cls(_str(body, b"Error"))


@attrs.frozen
class PushNodeState:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: bytes = DEFAULT_VSN

    def to_dict(self) -> dict[str, Any]:
        return {
            "Addr": self.addr,
            "Incarnation": self.incarnation,
            "Meta": self.meta,
            "Name": self.name,
            "Port": self.port,
            "State": self.state,
            "Vsn": self.vsn,
        }

    def wire_size(self) -> int:
        """``len(wire.pack(self.to_dict()))``, from the field lengths alone."""
        raw, uint = wire.packed_raw_size, wire.packed_uint_size
        return (
            _PUSH_NODE_KEYS
            + raw(len(self.addr))
            + uint(self.incarnation)
            + raw(len(self.meta))
            + raw(len(self.name.encode()))
            + uint(self.port)
            + uint(self.state)
            + raw(len(self.vsn))
        )

    @classmethod
    def from_body(cls, body: Body) -> PushNodeState:
        state = _int(body, b"State")
        if not 0 <= state <= 3:
            raise MalformedPacket("node State out of range")
        return cls(
            _str(body, b"Name"),
            _bytes(body, b"Addr"),
            _uint(body, b"Port", 16),
            _bytes(body, b"Meta"),
            _uint(body, b"Incarnation", 32),
            state,
            _bytes(body, b"Vsn"),
        )


#: the fixmap header and the seven keys of a ``PushNodeState``
_PUSH_NODE_KEYS = 1 + sum(
    wire.packed_raw_size(len(k))
    for k in ("Addr", "Incarnation", "Meta", "Name", "Port", "State", "Vsn")
)


@attrs.frozen
class PushPull:
    """One direction of a push/pull exchange (TCP only)."""

    TYPE: ClassVar[int] = wire.PUSH_PULL
    join: bool
    nodes: tuple[PushNodeState, ...]
    user_state: bytes = b""

    def to_wire(self) -> bytes:
        header = {"Join": self.join, "Nodes": len(self.nodes), "UserStateLen": len(self.user_state)}
        parts = [bytes([self.TYPE]), wire.pack(header)]
        parts += [wire.pack(n.to_dict()) for n in self.nodes]
        parts.append(self.user_state)
        return b"".join(parts)

    def header_size(self) -> int:
        """Bytes of the type byte and the header map (the records and user state follow)."""
        return push_pull_header_size(self.join, len(self.nodes), len(self.user_state))


def push_pull_header_size(join: bool, nodes: int, user_state: int) -> int:
    """Bytes of a push/pull's type byte and header map."""
    return 1 + len(wire.pack({"Join": join, "Nodes": nodes, "UserStateLen": user_state}))


@attrs.frozen
class UserStream:
    """A reliable user message on TCP: header with the length, then the bytes."""

    TYPE: ClassVar[int] = wire.USER
    payload: bytes

    def to_wire(self) -> bytes:
        return bytes([self.TYPE]) + wire.pack({"UserMsgLen": len(self.payload)}) + self.payload


Message = Ping | IndirectPing | Ack | Nack | Suspect | Dead | Alive | User | ErrResp
StreamMessage = Ping | Ack | PushPull | UserStream | ErrResp

_SIMPLE: dict[int, Any] = {
    wire.PING: Ping,
    wire.INDIRECT_PING: IndirectPing,
    wire.ACK: Ack,
    wire.NACK: Nack,
    wire.SUSPECT: Suspect,
    wire.DEAD: Dead,
    wire.ALIVE: Alive,
    wire.ERR: ErrResp,
}


def _simple(data: bytes, offset: int = 0) -> tuple[Any, int]:
    kind = _SIMPLE[data[offset]]
    body, end = wire.unpack_one(data, offset + 1)
    return kind.from_body(_map(body, kind.__name__)), end


def decode_packet(data: bytes) -> list[Message]:
    """
    Decode one UDP packet (label and encryption already removed) into messages.

    The CRC is only looked for at the outermost level, as memberlist does;
    compound and compressed messages are flattened, nested at most ``MAX_NESTING`` deep.
    """
    out: list[Message] = []
    _decode_into(wire.strip_crc(data), out, 0)
    return out


def _decode_into(data: bytes, out: list[Message], depth: int) -> None:
    if not data:
        raise MalformedPacket("empty message")
    if depth > MAX_NESTING:
        raise MalformedPacket("messages nested too deep")
    kind = data[0]
    if kind in _SIMPLE:
        out.append(_simple(data)[0])
    elif kind == wire.USER:
        out.append(User(data[1:]))
    elif kind == wire.COMPOUND:
        for part in wire.split_compound(data):
            _decode_into(part, out, depth + 1)
    elif kind == wire.COMPRESS:
        _decode_into(_decompress(data, 1)[0], out, depth + 1)
    else:
        raise MalformedPacket(f"unexpected message type {kind}")


def _decompress(data: bytes, offset: int) -> tuple[bytes, int]:
    body, end = wire.unpack_one(data, offset)
    body = _map(body, "compress")
    if _uint(body, b"Algo", 8) != 0:
        raise MalformedPacket("unknown compression algorithm")
    return wire.lzw_decompress(_bytes(body, b"Buf")), end


def compress_message(data: bytes) -> bytes:
    """Wrap ``data`` (one whole message) as a compress message (type 9)."""
    return bytes([wire.COMPRESS]) + wire.pack({"Algo": 0, "Buf": wire.lzw_compress(data)})


def encode_packet(messages: list[bytes], *, compress: bool = False, crc: bool = False) -> bytes:
    """
    Frame encoded messages into one UDP packet: compound when there are several,
    compressed only when that is shorter, CRC last (spec 4.1).
    """
    data = messages[0] if len(messages) == 1 else wire.compound(messages)
    if compress:
        packed = compress_message(data)
        if len(packed) < len(data):
            data = packed
    return wire.add_crc(data) if crc else data


def decode_stream(data: bytes) -> tuple[StreamMessage, int]:
    """
    Decode one message from the start of a plaintext TCP stream buffer.

    :return: the message and the number of bytes it took.
    :raise Incomplete: the buffer ends inside the message.
    :raise MalformedPacket: anything else that is wrong.
    """
    if not data:
        raise Incomplete("empty stream")
    kind = data[0]
    if kind == wire.COMPRESS:
        inner, end = _decompress(data, 1)
        message, used = decode_stream(inner)
        if used != len(inner):
            raise MalformedPacket("trailing bytes inside a compressed stream message")
        return message, end
    if kind in (wire.PING, wire.ACK, wire.ERR):
        message, end = _simple(data)
        return message, end
    if kind == wire.PUSH_PULL:
        return _push_pull(data)
    if kind == wire.USER:
        header, end = wire.unpack_one(data, 1)
        length = _int(_map(header, "user message header"), b"UserMsgLen")
        if length < 0:
            raise MalformedPacket("negative UserMsgLen")
        if len(data) < end + length:
            raise Incomplete("user message truncated")
        return UserStream(data[end : end + length]), end + length
    raise MalformedPacket(f"unexpected stream message type {kind}")


#: A push/pull larger than this is refused (memberlist's limit is 20 MiB).
MAX_PUSH_PULL_NODES = 1 << 20


def _push_pull(data: bytes) -> tuple[PushPull, int]:
    # One Unpacker over the whole buffer: each byte is read once, however many
    # records (slicing the buffer per record would copy it once per record).
    unpacker = _unpacker()
    unpacker.feed(memoryview(data)[1:])
    try:
        header = _map(unpacker.unpack(), "push/pull header")
        count, user_len = _push_pull_lengths(header)
        nodes = [
            PushNodeState.from_body(_map(unpacker.unpack(), "push/pull node")) for _ in range(count)
        ]
    except msgpack.OutOfData as e:
        raise Incomplete("push/pull truncated") from e
    except MalformedPacket:
        raise
    except Exception as e:  # msgpack raises a zoo of types for garbage
        raise MalformedPacket(f"bad msgpack: {e.__class__.__name__}") from e
    offset = 1 + unpacker.tell()
    if len(data) < offset + user_len:
        raise Incomplete("push/pull user state truncated")
    user = data[offset : offset + user_len]
    return PushPull(_bool(header, b"Join"), tuple(nodes), user), offset + user_len


def _push_pull_lengths(header: Body) -> tuple[int, int]:
    """:return: the node count and user state length a push/pull header declares."""
    count = _int(header, b"Nodes")
    user_len = _int(header, b"UserStateLen")
    if not 0 <= count <= MAX_PUSH_PULL_NODES or not 0 <= user_len <= wire.MAX_DECOMPRESSED:
        raise MalformedPacket("push/pull header out of range")
    return count, user_len


def _unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=True,
        max_buffer_size=wire.MAX_STREAM,
        max_array_len=wire.MAX_CONTAINER,
        max_map_len=wire.MAX_CONTAINER,
        strict_map_key=True,
    )


class StreamFramer:
    """
    Finds where the plaintext stream message at the start of a TCP stream ends,
    reading each byte once however the stream is cut into chunks.

    ``decode_stream`` on a buffer that ends inside a message starts over on
    every chunk, which is quadratic in the stream's length; the framer reads
    only the new bytes (msgpack's ``Unpacker`` resumes where it stopped) so
    that the message is decoded once, when it is whole.
    """

    def __init__(self) -> None:
        self._kind: int | None = None
        self._unpacker = _unpacker()
        self._header_read = False
        self._records = 0  # push/pull records still to skip
        self._tail = 0  # raw bytes after the last msgpack value
        self._fed = 0  # bytes seen, the type byte included
        self._end: int | None = None  # the message's length, once known

    def feed(self, data: bytes) -> int | None:
        """
        :return: the length of the message from the first byte fed, once the
            bytes fed so far hold all of it; ``None`` until then.
        :raise MalformedPacket: the bytes cannot start a stream message.
        """
        if self._end is not None:
            self._fed += len(data)
            return self._end if self._fed >= self._end else None
        if self._kind is None:
            if not data:
                return None
            kind = data[0]
            if kind not in _STREAM_KINDS:
                raise MalformedPacket(f"unexpected stream message type {kind}")
            self._kind = kind
            self._fed = 1
            data = data[1:]
        self._fed += len(data)
        self._unpacker.feed(data)
        try:
            if not self._header_read:
                header = self._unpacker.unpack()
                self._header_read = True
                if self._kind == wire.PUSH_PULL:
                    self._records, self._tail = _push_pull_lengths(_map(header, "push/pull header"))
                elif self._kind == wire.USER:
                    self._tail = _int(_map(header, "user message header"), b"UserMsgLen")
                    if self._tail < 0:
                        raise MalformedPacket("negative UserMsgLen")
            while self._records:
                self._unpacker.skip()
                self._records -= 1
        except msgpack.OutOfData:
            return None
        except MalformedPacket:
            raise
        except Exception as e:  # msgpack raises a zoo of types for garbage
            raise MalformedPacket(f"bad msgpack: {e.__class__.__name__}") from e
        self._end = 1 + self._unpacker.tell() + self._tail
        if self._end > wire.MAX_STREAM:
            raise MalformedPacket("stream message over 20 MiB")
        return self._end if self._fed >= self._end else None


_STREAM_KINDS = frozenset((wire.PING, wire.ACK, wire.ERR, wire.COMPRESS, wire.PUSH_PULL, wire.USER))


def encode_stream(message: StreamMessage, *, compress: bool = False) -> bytes:
    data = message.to_wire()
    return compress_message(data) if compress else data
