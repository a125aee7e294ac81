# -*- test-case-name: txconsul.test.gossip.test_adapter -*-
"""
memberlist's AES-GCM packet and stream encryption with a rotating keyring
(spec sections 4.5 and 5.5): the primary key seals, every key may open.

A keyring is kept on disk as serf and Consul keep it (``data_dir/serf/local.keyring``):
a JSON array of base64 keys, the primary first. The errors of ``install``,
``use`` and ``remove`` carry memberlist's words, since they travel to serf
agents in key query responses.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from txconsul.gossip import wire
from txconsul.gossip.wire import ENCRYPT, Incomplete, MalformedPacket

VERSION = 1
NONCE = 12
TAG = 16
OVERHEAD = 1 + NONCE + TAG
#: memberlist refuses encrypted streams longer than this.
MAX_STREAM = wire.MAX_STREAM
_STREAM_HEADER = struct.Struct(">BI")


class KeyringError(ValueError):
    """A key of the wrong size or encoding, or a keyring operation that is not allowed."""


def decode_key(text: str) -> bytes:
    """Decode a base64 ``encrypt`` key and check its size (16, 24 or 32 bytes)."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyringError("the key is not valid base64") from e
    if len(key) not in (16, 24, 32):
        raise KeyringError("a key is 16, 24 or 32 bytes")
    return key


class Keyring:
    """Keys in order of preference; ``keys[0]`` is the primary."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyringError("a keyring needs a key")
        for key in keys:
            if len(key) not in (16, 24, 32):
                raise KeyringError("a key is 16, 24 or 32 bytes")
        self.keys = list(keys)

    def install(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise KeyringError("key size must be 16, 24 or 32 bytes")
        if key not in self.keys:
            self.keys.append(key)

    def use(self, key: bytes) -> None:
        if key not in self.keys:
            raise KeyringError("Requested key is not in the keyring")
        self.keys.remove(key)
        self.keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        if key == self.keys[0]:
            raise KeyringError("Removing the primary key is not allowed")
        if key in self.keys:
            self.keys.remove(key)

    def _seal(self, plain: bytes, aad: bytes | None) -> bytes:
        nonce = os.urandom(NONCE)
        return bytes([VERSION]) + nonce + AESGCM(self.keys[0]).encrypt(nonce, plain, aad)

    def _open(self, data: bytes, aad: bytes | None) -> bytes:
        if len(data) < OVERHEAD:
            raise MalformedPacket("encrypted payload too short")
        if data[0] != VERSION:
            raise MalformedPacket(f"unsupported encryption version {data[0]}")
        nonce, sealed = data[1 : 1 + NONCE], data[1 + NONCE :]
        for key in self.keys:
            try:
                return AESGCM(key).decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
        raise MalformedPacket("no installed key could decrypt the message")

    def encrypt_packet(self, plain: bytes) -> bytes:
        return self._seal(plain, None)

    def decrypt_packet(self, data: bytes) -> bytes:
        return self._open(data, None)

    def encrypt_stream(self, plain: bytes) -> bytes:
        header = _STREAM_HEADER.pack(ENCRYPT, OVERHEAD + len(plain))
        return header + self._seal(plain, header)

    def decrypt_stream(self, buffer: bytes) -> tuple[bytes, int]:
        """:return: the plaintext of the frame at the start of ``buffer``, and its length."""
        end = stream_frame_end(buffer)
        if end is None:
            raise Incomplete("encrypted stream header")
        if len(buffer) < end:
            raise Incomplete("encrypted stream body")
        return self._open(buffer[_STREAM_HEADER.size : end], buffer[: _STREAM_HEADER.size]), end


def stream_frame_end(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """
    Where the encrypted stream frame at ``start`` ends, from its header alone.

    :return: ``None`` while the header is incomplete.
    :raise MalformedPacket: not an encrypted frame, or one over ``MAX_STREAM``.
    """
    if len(buffer) < start + _STREAM_HEADER.size:
        return None
    kind, length = _STREAM_HEADER.unpack_from(buffer, start)
    if kind != ENCRYPT:
        raise MalformedPacket("stream is not encrypted")
    if length > MAX_STREAM:
        raise MalformedPacket("encrypted stream too long")
    end: int = start + _STREAM_HEADER.size + length
    return end


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def read_keyring_file(path: str) -> list[bytes]:
    """The keys of a keyring file, primary first; ``KeyringError`` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise KeyringError(f"Failed to read keyring file {path}: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise KeyringError(f"Failed to decode keyring file {path}: not a JSON list") from e
    if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
        raise KeyringError(f"Failed to decode keyring file {path}: not a list of keys")
    if not data:
        raise KeyringError(f"Keyring file {path} contains no keys")
    try:
        return [decode_key(k) for k in data]
    except KeyringError as e:
        raise KeyringError(f"Failed to decode key from keyring file {path}: {e}") from e


def write_keyring_file(path: str, keyring: Keyring) -> None:
    """Save ``keyring`` to ``path`` atomically, readable by its owner only."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump([encode_key(k) for k in keyring.keys], f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
