# -*- test-case-name: txconsul.test.gossip.test_wire -*-
"""
Byte-level helpers of memberlist's wire format: the msgpack dialect, compound
packets, CRC, LZW compression and labels (spec/gossip-wire.md sections 1 and 4).

Everything that reads bytes from the network raises only ``MalformedPacket``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack


class MalformedPacket(Exception):
    """A packet or stream that cannot be decoded; dropped and counted by callers."""


class Incomplete(MalformedPacket):
    """A stream buffer that ends inside a message: read more and try again."""


# message type bytes (spec section 2)
PING = 0
INDIRECT_PING = 1
ACK = 2
SUSPECT = 3
ALIVE = 4
DEAD = 5
PUSH_PULL = 6
COMPOUND = 7
USER = 8
COMPRESS = 9
ENCRYPT = 10
NACK = 11
HAS_CRC = 12
ERR = 13
HAS_LABEL = 244

#: Cap on a decompressed body, so that a small packet cannot expand without bound.
MAX_DECOMPRESSED = 20 * 1024 * 1024
#: Cap on one TCP stream message (a push/pull), memberlist's 20 MiB.
MAX_STREAM = 20 * 1024 * 1024
MAX_COMPOUND_PARTS = 255
MAX_CONTAINER = 1 << 20


def pack(value: Any) -> bytes:
    """Encode ``value`` as go-msgpack does: strings and bytes in the raw family."""
    return msgpack.packb(value, use_bin_type=False)  # type: ignore[no-any-return]


def packed_raw_size(length: int) -> int:
    """Bytes ``pack`` gives a string or bytes value of ``length`` bytes (no str8/bin)."""
    if length <= 0x1F:
        return 1 + length
    if length <= 0xFFFF:
        return 3 + length
    return 5 + length


def packed_uint_size(value: int) -> int:
    """Bytes ``pack`` gives a non-negative integer."""
    if value <= 0x7F:
        return 1
    if value <= 0xFF:
        return 2
    if value <= 0xFFFF:
        return 3
    if value <= 0xFFFFFFFF:
        return 5
    return 9


def unpack_one(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """
    Decode one msgpack value at ``offset``.

    Container lengths are bounded so that a short packet cannot make msgpack
    allocate much; a value cut short raises ``Incomplete``.

    :return: the value (strings as ``bytes``) and the offset just past it.
    """
    if len(data) - offset <= MAX_DECOMPRESSED:
        # the common case in a third of the time: one whole value, maybe more after it
        try:
            value = msgpack.unpackb(
                data[offset:] if offset else data,
                raw=True,
                max_array_len=MAX_CONTAINER,
                max_map_len=MAX_CONTAINER,
                strict_map_key=True,
            )
            return value, len(data)
        except msgpack.ExtraData as e:
            return e.unpacked, len(data) - len(e.extra)
        except Exception:  # noqa: BLE001 - cut short or garbage: the Unpacker says which
            pass
    unpacker = msgpack.Unpacker(
        raw=True,
        max_buffer_size=MAX_DECOMPRESSED,
        max_array_len=MAX_CONTAINER,
        max_map_len=MAX_CONTAINER,
        strict_map_key=True,
    )
    unpacker.feed(data[offset:])
    try:
        value = unpacker.unpack()
    except msgpack.OutOfData as e:
        raise Incomplete("truncated msgpack value") from e
    except Exception as e:  # msgpack raises a zoo of types for garbage
        raise MalformedPacket(f"bad msgpack: {e.__class__.__name__}") from e
    return value, offset + unpacker.tell()


def compound(parts: list[bytes]) -> bytes:
    """Join whole messages into one compound message (type 7)."""
    if not 0 < len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError("a compound holds 1 to 255 parts")
    header = struct.pack(f">BB{len(parts)}H", COMPOUND, len(parts), *map(len, parts))
    return header + b"".join(parts)


def split_compound(data: bytes) -> list[bytes]:
    """Split the body of a compound message (``data`` includes the type byte)."""
    if len(data) < 2:
        raise MalformedPacket("compound without a part count")
    count = data[1]
    start = 2 + 2 * count
    if len(data) < start:
        raise MalformedPacket("compound truncated in its length table")
    lengths = struct.unpack_from(f">{count}H", data, 2)
    parts = []
    for length in lengths:
        if start + length > len(data):
            raise MalformedPacket("compound part truncated")
        parts.append(data[start : start + length])
        start += length
    return parts


def add_crc(data: bytes) -> bytes:
    return struct.pack(">BI", HAS_CRC, zlib.crc32(data)) + data


def strip_crc(data: bytes) -> bytes:
    """Verify and remove a CRC header if there is one; return the rest."""
    if not data or data[0] != HAS_CRC:
        return data
    if len(data) < 5:
        raise MalformedPacket("CRC header truncated")
    (expected,) = struct.unpack_from(">I", data, 1)
    rest = data[5:]
    if zlib.crc32(rest) != expected:
        raise MalformedPacket("CRC mismatch")
    return rest


def add_label(data: bytes, label: bytes) -> bytes:
    if not label:
        return data
    if len(label) > 255:
        raise ValueError("a label is at most 255 bytes")
    return bytes([HAS_LABEL, len(label)]) + label + data


def strip_label(data: bytes) -> tuple[bytes, bytes]:
    """:return: (label, rest); the label is empty when there is none."""
    if not data or data[0] != HAS_LABEL:
        return b"", data
    if len(data) < 2 or data[1] == 0 or len(data) < 2 + data[1]:
        raise MalformedPacket("label truncated")
    end = 2 + data[1]
    return data[2:end], data[end:]


# LZW in the GIF flavour of Go's compress/lzw: LSB-first, 8-bit literals,
# 9..12-bit codes, 256 = clear, 257 = end.
_CLEAR = 256
_EOF = 257
_MAX_WIDTH = 12


def lzw_compress(data: bytes) -> bytes:
    """Compress exactly as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` does."""
    # One loop with everything in locals: this runs for every packet sent.
    out = bytearray()
    append = out.append
    table: dict[int, int] = {}
    get = table.get
    width, hi, overflow = 9, _EOF, 512
    bits, nbits = _CLEAR, 9  # the stream starts with a clear code
    last_hi = (1 << _MAX_WIDTH) - 1
    code = -1
    for literal in data:
        if code < 0:
            code = literal
            continue
        key = code << 8 | literal
        found = get(key)
        if found is not None:
            code = found
            continue
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        code = literal
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == last_hi:  # out of codes: a clear code, and start over
            bits |= _CLEAR << nbits
            nbits += width
            while nbits >= 8:
                append(bits & 0xFF)
                bits >>= 8
                nbits -= 8
            width, hi, overflow = 9, _EOF, 512
            table.clear()
            continue
        table[key] = hi
    if code >= 0:
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == last_hi:
            bits |= _CLEAR << nbits
            nbits += width
            width = 9
    bits |= _EOF << nbits
    nbits += width
    while nbits >= 8:
        append(bits & 0xFF)
        bits >>= 8
        nbits -= 8
    if nbits > 0:
        append(bits & 0xFF)
    return bytes(out)


_LZW_BASE: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]


def lzw_decompress(data: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress Go LSB/8 LZW; raise ``MalformedPacket`` on any inconsistency."""
    table = _LZW_BASE.copy()
    width, hi, overflow = 9, _EOF, 512
    last: bytes | None = None
    out = bytearray()
    bits = 0
    nbits = 0
    pos = 0
    size = len(data)
    while True:
        while nbits < width:
            if pos >= size:
                raise MalformedPacket("LZW stream ends without an end code")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        nbits -= width
        if code == _CLEAR:
            del table[258:]
            width, hi, overflow = 9, _EOF, 512
            last = None
            continue
        if code == _EOF:
            return bytes(out)
        if code < len(table):
            entry = table[code]
        elif code == hi and last is not None:
            entry = last + last[:1]
        else:
            raise MalformedPacket("LZW code out of range")
        out += entry
        if len(out) > limit:
            raise MalformedPacket("LZW output exceeds the limit")
        if last is not None:
            table.append(last + entry[:1])
        last = entry
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                last = None
                hi -= 1
            else:
                width += 1
                overflow <<= 1
