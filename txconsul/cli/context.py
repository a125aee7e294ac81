# -*- test-case-name: txconsul.test.cli.test_commands -*-
"""
What a command runs with (reactor, streams, environment) and how it prints.

Tests pass ``StringIO`` streams and a dict environment; ``main`` passes the
process's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any

import attrs


@attrs.frozen
class Context:
    reactor: Any
    stdout: IO[str]
    stderr: IO[str]
    environ: Mapping[str, str]
    stdin: IO[Any] | None = None

    def out(self, text: str) -> None:
        """Print one line to stdout."""
        self.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        """Print one line to stderr."""
        self.stderr.write(text + "\n")

    def out_bytes(self, data: bytes) -> None:
        """
        Write bytes to stdout unchanged when it is a real binary-capable stream
        (a KV value may be anything); a text-only stream gets them decoded.
        """
        binary = getattr(self.stdout, "buffer", None)
        if binary is not None:
            self.stdout.flush()
            binary.write(data)
            binary.flush()
        else:
            self.stdout.write(data.decode("utf-8", "replace"))

    def read_stdin(self) -> bytes:
        """All of stdin, as bytes."""
        if self.stdin is None:
            return b""
        source = getattr(self.stdin, "buffer", self.stdin)
        data = source.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def columns(rows: Sequence[Sequence[str]], glue: str = "  ") -> list[str]:
    """Rows as left-aligned columns; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append(glue.join(cells).rstrip())
    return lines


def pairs(mapping: Mapping[str, Any], sep: str = ", ") -> str:
    """``k=v`` pairs sorted by key, as Consul shows tags and metadata."""
    return sep.join(f"{k}={mapping[k]}" for k in sorted(mapping))
