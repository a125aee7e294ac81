# -*- test-case-name: txconsul.test.state.test_store -*-
"""
The state store: every table, the highest index seen, and the watches.

It lives in memory; the log that feeds the FSM (and, later, Raft snapshots)
makes it durable. ``snapshot``/``restore`` serialise the whole store with
msgpack, and a restore swaps everything in at once and wakes every watcher.
"""

from __future__ import annotations

from typing import Any

import msgpack

from txconsul.state.catalog import Catalog
from txconsul.state.kv import KVTable
from txconsul.state.watch import Watches

SNAPSHOT_VERSION = 1


class StateStore:
    """All tables of one datacenter's replicated state."""

    def __init__(self) -> None:
        self.watches = Watches()
        self.kv = KVTable(self.watches.notify_kv)
        self.catalog = Catalog(self.watches.notify)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.last_index = 0

    def catalog_index(self) -> int:
        c = self.catalog
        return max(c.nodes_index, c.services_index, c.checks_index, 1)

    def snapshot(self) -> bytes:
        """The whole store as one msgpack document."""
        data = {
            "version": SNAPSHOT_VERSION,
            "last_index": self.last_index,
            "kv": self.kv.dump(),
            "catalog": self.catalog.dump(),
            "sessions": list(self.sessions.values()),
        }
        packed: bytes = msgpack.packb(data, use_bin_type=True)
        return packed

    def restore(self, blob: bytes) -> None:
        """Replace every table with those of ``blob``, then wake every watcher."""
        try:
            data = msgpack.unpackb(blob, raw=False, strict_map_key=False)
            if not isinstance(data, dict):
                raise ValueError("the top level is not a map")
            if data.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unknown snapshot version {data.get('version')!r}")
            kv = KVTable(self.watches.notify_kv)
            kv.load(data["kv"])
            catalog = Catalog(self.watches.notify)
            catalog.load(data["catalog"])
            sessions = {row["ID"]: row for row in data["sessions"]}
            last_index = int(data["last_index"])
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as e:
            raise ValueError(f"not a txconsul snapshot: {e}") from e
        self.kv, self.catalog, self.sessions = kv, catalog, sessions
        self.last_index = last_index
        self.watches.notify_all()
