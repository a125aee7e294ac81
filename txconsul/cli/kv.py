# -*- test-case-name: txconsul.test.cli.test_kv -*-
"""
``txconsul kv get|put|delete``: the KV store from the command line.

Output and messages follow ``consul kv``: ``get`` prints the raw value,
``put`` and ``delete`` print ``Success! ...`` or ``Error! ...``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, AgentError, HTTPCommand, Param
from txconsul.cli.context import Context
from txconsul.cli.flags import Command

_DETAIL_FIELDS = ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session", "Value")
_DETAIL_WIDTH = max(map(len, _DETAIL_FIELDS)) + 6


def _uint(value: str) -> int:
    n = int(value, 10)
    if not 0 <= n < 2**64:
        raise ValueError(f"{value} is not an unsigned 64-bit integer")
    return n


_uint.coerceDoc = "An unsigned integer."  # type: ignore[attr-defined]


def _key(args: tuple[str, ...], index: int = 0) -> str:
    """A key argument; clients refuse a leading ``/``, so it is dropped."""
    key = args[index] if len(args) > index else ""
    return key[1:] if key.startswith("/") else key


def _value(entry: dict[str, Any]) -> bytes:
    encoded = entry.get("Value")
    return base64.b64decode(encoded) if encoded else b""


class KVGet(HTTPCommand):
    synopsis = "txconsul kv get [options] [KEY_OR_PREFIX]"
    longdesc = (
        "Print the value stored at KEY. With -recurse, print every key under the "
        "prefix as key:value; with -keys, print the key names under the prefix."
    )
    optFlags = [
        ["recurse", None, "Print every key under the prefix, as key:value lines."],
        ["keys", None, "Print only key names under the prefix."],
        ["detailed", None, "Print every field of the entries, not only the value."],
        ["base64", None, "Print values base64-encoded."],
    ]
    optParameters = [
        [
            "separator",
            None,
            "/",
            "With -keys, roll key names up at this string (empty: no roll-up).",
        ],
    ]

    def parseArgs(self, *args: str) -> None:
        if len(args) > 1:
            raise usage.UsageError(f"Too many arguments (expected 1, got {len(args)})")
        self.key = _key(args)
        if not self.key and not (self["recurse"] or self["keys"]):
            raise usage.UsageError("Error! Missing KEY argument")

    def _show(self, data: bytes) -> str:
        if self["base64"]:
            return base64.b64encode(data).decode("ascii")
        return data.decode("utf-8", "replace")

    def _detail(self, ctx: Context, entry: dict[str, Any]) -> None:
        for field in _DETAIL_FIELDS:
            if field == "Value":
                text = self._show(_value(entry))
            elif field == "Session":
                text = entry.get("Session") or "-"
            else:
                text = str(entry.get(field, ""))
            ctx.out(field.ljust(_DETAIL_WIDTH) + text)

    async def call(self, ctx: Context, client: AgentClient) -> int:
        path = "/v1/kv/" + self.key
        if self["keys"]:
            params: list[Param] = [("keys", None)]
            if self["separator"]:
                params.append(("separator", self["separator"]))
            for key in await client.get_json(path, params, missing=[]):
                ctx.out(key)
            return 0
        if self["recurse"]:
            entries = await client.get_json(path, [("recurse", None)], missing=[])
            for i, entry in enumerate(entries):
                if self["detailed"]:
                    if i:
                        ctx.out("")
                    self._detail(ctx, entry)
                else:
                    ctx.out(f"{entry['Key']}:{self._show(_value(entry))}")
            return 0
        found = await client.get_json(path, missing=None)
        if not found:
            ctx.err(f"Error! No key exists at: {self.key}")
            return 1
        if self["detailed"]:
            self._detail(ctx, found[0])
        elif self["base64"]:
            ctx.out(self._show(_value(found[0])))
        else:
            ctx.out_bytes(_value(found[0]) + b"\n")
        return 0


class KVPut(HTTPCommand):
    synopsis = "txconsul kv put [options] KEY [DATA]"
    longdesc = (
        "Write DATA at KEY. DATA '-' reads standard input and '@FILE' reads FILE; "
        "with no DATA the key gets an empty value."
    )
    optFlags = [
        [
            "cas",
            None,
            "Check-and-set: write only if the key's ModifyIndex is -modify-index (0: only if absent).",
        ],
        ["base64", None, "DATA is base64-encoded; write the decoded bytes."],
        ["acquire", None, "Take the lock on KEY for -session while writing."],
        ["release", None, "Release the lock on KEY held by -session while writing."],
    ]
    optParameters = [
        ["modify-index", None, None, "ModifyIndex that -cas expects.", _uint],
        ["flags", None, 0, "Opaque unsigned integer stored with the key.", _uint],
        ["session", None, None, "Session ID for -acquire and -release."],
    ]
    error_prefix = "Error! Failed writing data"

    def parseArgs(self, *args: str) -> None:
        if not args:
            raise usage.UsageError("Error! Missing KEY argument")
        if len(args) > 2:
            raise usage.UsageError(f"Too many arguments (expected 1 or 2, got {len(args)})")
        self.key = _key(args)
        if not self.key:
            raise usage.UsageError("Error! Missing KEY argument")
        self.data = args[1] if len(args) == 2 else None

    def postOptions(self) -> None:
        chosen = [name for name in ("cas", "acquire", "release") if self[name]]
        if len(chosen) > 1:
            raise usage.UsageError("Conflicting flags: " + ", ".join("-" + n for n in chosen))
        if self["cas"] and self["modify-index"] is None:
            raise usage.UsageError("Must specify -modify-index with -cas!")
        if (self["acquire"] or self["release"]) and not self["session"]:
            raise usage.UsageError("Must specify -session with -acquire or -release!")

    def _read_value(self, ctx: Context) -> bytes:
        data = self.data
        if data is None:
            return b""
        if data == "-":
            raw = ctx.read_stdin()
        elif data.startswith("@"):
            try:
                with open(data[1:], "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise usage.UsageError(f"Failed to read file: {e}") from None
        else:
            raw = data.encode("utf-8")
        if self["base64"]:
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as e:
                raise usage.UsageError(f"Failed to base64 decode data: {e}") from None
        return raw

    async def call(self, ctx: Context, client: AgentClient) -> int:
        value = self._read_value(ctx)
        params: list[Param] = [("flags", str(self["flags"]))] if self["flags"] else []
        if self["cas"]:
            params.append(("cas", str(self["modify-index"])))
        elif self["acquire"]:
            params.append(("acquire", self["session"]))
        elif self["release"]:
            params.append(("release", self["session"]))
        response = await client.request("PUT", "/v1/kv/" + self.key, params, body=value)
        written = response.json() is True
        if self["cas"] and not written:
            ctx.err(f"Error! Did not write to {self.key}: CAS failed")
            return 1
        if self["acquire"]:
            if not written:
                ctx.err(f"Error! Did not acquire lock on: {self.key}")
                return 1
            ctx.out(f"Success! Lock acquired on: {self.key}")
            return 0
        if self["release"]:
            if not written:
                ctx.err(f"Error! Did not release lock on: {self.key}")
                return 1
            ctx.out(f"Success! Lock released on: {self.key}")
            return 0
        if not written:
            ctx.err(f"Error! Did not write to {self.key}")
            return 1
        ctx.out(f"Success! Data written to: {self.key}")
        return 0


class KVDelete(HTTPCommand):
    synopsis = "txconsul kv delete [options] KEY_OR_PREFIX"
    longdesc = "Delete KEY, or with -recurse every key under the prefix."
    optFlags = [
        ["recurse", None, "Delete every key under the prefix."],
        ["cas", None, "Check-and-set: delete only if the key's ModifyIndex is -modify-index."],
    ]
    optParameters = [["modify-index", None, None, "ModifyIndex that -cas expects.", _uint]]
    error_prefix = "Error! Failed deleting data"

    def parseArgs(self, *args: str) -> None:
        if len(args) > 1:
            raise usage.UsageError(f"Too many arguments (expected 1, got {len(args)})")
        self.key = _key(args)

    def postOptions(self) -> None:
        if not self.key and not self["recurse"]:
            raise usage.UsageError("Error! Missing KEY argument")
        if self["cas"] and self["recurse"]:
            raise usage.UsageError("Cannot specify both -cas and -recurse!")
        if self["cas"] and self["modify-index"] is None:
            raise usage.UsageError("Must specify -modify-index with -cas!")

    async def call(self, ctx: Context, client: AgentClient) -> int:
        params: list[Param] = []
        if self["recurse"]:
            params.append(("recurse", None))
        elif self["cas"]:
            params.append(("cas", str(self["modify-index"])))
        try:
            response = await client.request("DELETE", "/v1/kv/" + self.key, params)
        except AgentError as e:
            ctx.err(f"Error! Did not delete key {self.key}: {e}")
            return 1
        if self["cas"] and response.json() is not True:
            ctx.err(f"Error! Did not delete key {self.key}: CAS failed")
            return 1
        if self["recurse"]:
            ctx.out(f"Success! Deleted keys with prefix: {self.key}")
        else:
            ctx.out(f"Success! Deleted key: {self.key}")
        return 0


class KV(Command):
    synopsis = "txconsul kv <subcommand> [options] [args]"
    longdesc = "Read, write and delete keys in the KV store."
    subCommands = [
        ["get", None, KVGet, "Read a value, or list keys under a prefix."],
        ["put", None, KVPut, "Write a value."],
        ["delete", None, KVDelete, "Delete a key or a prefix."],
    ]
