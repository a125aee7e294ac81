# -*- test-case-name: txconsul.test.raft.test_logstore -*-
"""
Where Raft keeps its log, its term and vote, and its latest snapshot.

Writes are buffered until ``sync()``, which makes all of them durable at once
(many appends, one fsync) and atomically (a crash keeps all of a batch or
none of it). ``MemoryLogStore`` is for tests and simulations and can
``crash()``, losing what was not synced. ``SQLiteLogStore`` keeps everything
in ``data_dir/raft/raft.db``: WAL mode with ``synchronous=FULL``, one
transaction per batch; SQLite's WAL checksums drop a torn last transaction
when the file is next opened. A failed sync poisons the store: every later
call raises ``StoreFailed``, and the node stops acknowledging anything.
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from txconsul.errors import TxConsulError
from txconsul.raft.core import Restored, Snapshot
from txconsul.raft.messages import Entry, MalformedFrame


class StoreFailed(TxConsulError):
    """The disk refused a write or a sync: nothing more may be acknowledged."""


class ILogStore(Interface):
    volatile = Attribute(
        "True when ``sync()`` costs nothing because nothing reaches a disk (a dev"
        " server's store): batching writes to share an fsync gains nothing then."
    )

    def load() -> Restored:
        """Everything durable, to start a core from."""

    def set_state(term: int, vote: str | None) -> None:
        """Remember the current term and vote."""

    def store_entries(first_index: int, entries: tuple[Entry, ...]) -> None:
        """Drop every entry at or after ``first_index``, then add ``entries``."""

    def store_snapshot(snapshot: Snapshot, base_index: int, base_term: int) -> None:
        """Keep ``snapshot``; drop every entry at or before ``base_index``."""

    def sync() -> None:
        """Make every write so far durable, or raise ``StoreFailed``."""

    def close() -> None:
        """Release the files."""


@attrs.define
class _Image:
    term: int = 0
    vote: str | None = None
    snapshot: Snapshot | None = None
    base_index: int = 0
    base_term: int = 0
    entries: list[Entry] = attrs.Factory(list)

    def truncate_and_add(self, first: int, entries: tuple[Entry, ...]) -> None:
        del self.entries[max(first - self.base_index - 1, 0) :]
        self.entries.extend(entries)

    def compact(self, snapshot: Snapshot, base_index: int, base_term: int) -> None:
        self.snapshot = snapshot
        drop = base_index - self.base_index
        self.entries = self.entries[drop:] if drop > 0 else self.entries
        self.base_index, self.base_term = base_index, base_term

    def restored(self) -> Restored:
        return Restored(
            self.term,
            self.vote,
            self.snapshot,
            self.base_index,
            self.base_term,
            tuple(self.entries),
        )


@implementer(ILogStore)
class MemoryLogStore:
    """
    A log store in memory that survives a simulated crash: what ``sync()``
    made durable stays, the batch after it is lost.
    """

    volatile = True

    def __init__(self) -> None:
        self._durable = _Image()
        self._pending: list[Callable[[_Image], None]] = []
        self.syncs = 0
        self.fail_syncs_after: int | None = None
        self.failed = False

    def _check(self) -> None:
        if self.failed:
            raise StoreFailed("an earlier sync failed")

    def load(self) -> Restored:
        self._check()
        self.sync()
        return self._durable.restored()

    def set_state(self, term: int, vote: str | None) -> None:
        self._check()

        def op(image: _Image) -> None:
            image.term, image.vote = term, vote

        self._pending.append(op)

    def store_entries(self, first_index: int, entries: tuple[Entry, ...]) -> None:
        self._check()
        self._pending.append(lambda image: image.truncate_and_add(first_index, entries))

    def store_snapshot(self, snapshot: Snapshot, base_index: int, base_term: int) -> None:
        self._check()
        self._pending.append(lambda image: image.compact(snapshot, base_index, base_term))

    def sync(self) -> None:
        self._check()
        if not self._pending:
            return
        if self.fail_syncs_after is not None and self.syncs >= self.fail_syncs_after:
            self.failed = True
            raise StoreFailed("injected fsync failure")
        for op in self._pending:
            op(self._durable)
        self._pending.clear()
        self.syncs += 1

    def crash(self) -> None:
        """Lose every write since the last sync (a kill -9 with unsynced data)."""
        self._pending.clear()

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                                command BLOB NOT NULL, config BLOB, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stable (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def _crc(*parts: bytes) -> int:
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def _entry_row(e: Entry) -> tuple[int, int, bytes, bytes | None, int]:
    config = None if e.config is None else msgpack.packb(list(e.config))
    head = f"{e.index}:{e.term}:".encode()
    return (e.index, e.term, e.command, config, _crc(head, e.command, config or b""))


@implementer(ILogStore)
class SQLiteLogStore:
    """
    The durable store in ``directory/raft.db``. Every row carries a CRC32 so a
    flipped bit is found on load: a bad entry truncates the log there (it can be
    fetched again from the leader); a bad snapshot or stable record refuses to
    start, since those cannot.
    """

    log = Logger()
    volatile = False

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "raft.db")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._in_txn = False
        self.failed = False
        self.syncs = 0

    # -- helpers -----------------------------------------------------------------

    def _check(self) -> None:
        if self.failed:
            raise StoreFailed("an earlier sync failed")

    def _begin(self) -> None:
        self._check()
        if not self._in_txn:
            self._db.execute("BEGIN")
            self._in_txn = True

    def _put(self, key: str, value: Any) -> None:
        blob: bytes = msgpack.packb(value, use_bin_type=True)
        packed: bytes = msgpack.packb([_crc(blob), blob], use_bin_type=True)
        self._db.execute("INSERT OR REPLACE INTO stable VALUES (?, ?)", (key, packed))

    def _get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM stable WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            crc, blob = msgpack.unpackb(row[0], raw=False)
            if crc != _crc(blob):
                raise ValueError("checksum mismatch")
            return msgpack.unpackb(blob, raw=False)
        except Exception as e:
            raise StoreFailed(f"stable record {key!r} in {self.path} is corrupt: {e}") from e

    def _commit(self) -> None:
        """One durable transaction (a test overrides this to inject an fsync error)."""
        self._db.execute("COMMIT")

    # -- ILogStore ----------------------------------------------------------------

    def load(self) -> Restored:
        self._check()
        state = self._get("state") or [0, None]
        base = self._get("base") or [0, 0]
        snap = self._get("snapshot")
        snapshot = None
        if snap is not None:
            index, term, config, data = snap
            snapshot = Snapshot(index, term, tuple(config), data)
        entries: list[Entry] = []
        expect = base[0] + 1
        rows = self._db.execute(
            "SELECT idx, term, command, config, crc FROM log WHERE idx > ? ORDER BY idx", (base[0],)
        )
        for idx, term, command, config, crc in rows:
            head = f"{idx}:{term}:".encode()
            if idx != expect or crc != _crc(head, command, config or b""):
                self.log.warn(
                    "raft log {path}: bad or missing entry at {index}; truncating there",
                    path=self.path,
                    index=expect,
                )
                self._db.execute("DELETE FROM log WHERE idx >= ?", (expect,))
                break
            try:
                cfg = None if config is None else tuple(msgpack.unpackb(config, raw=False))
                entries.append(Entry(term, idx, command, cfg))
            except Exception as e:
                raise MalformedFrame(f"entry {idx}: {e}") from e
            expect += 1
        return Restored(state[0], state[1], snapshot, base[0], base[1], tuple(entries))

    def set_state(self, term: int, vote: str | None) -> None:
        self._begin()
        self._put("state", [term, vote])

    def store_entries(self, first_index: int, entries: tuple[Entry, ...]) -> None:
        self._begin()
        self._db.execute("DELETE FROM log WHERE idx >= ?", (first_index,))
        self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", map(_entry_row, entries))

    def store_snapshot(self, snapshot: Snapshot, base_index: int, base_term: int) -> None:
        self._begin()
        s = snapshot
        self._put("snapshot", [s.index, s.term, list(s.config), s.data])
        self._put("base", [base_index, base_term])
        self._db.execute("DELETE FROM log WHERE idx <= ?", (base_index,))

    def sync(self) -> None:
        self._check()
        if not self._in_txn:
            return
        try:
            self._commit()
        except (sqlite3.Error, OSError) as e:
            self.failed = True
            self.log.error(
                "raft log {path}: sync failed ({error}); refusing writes", path=self.path, error=e
            )
            raise StoreFailed(f"sync of {self.path} failed: {e}") from e
        self._in_txn = False
        self.syncs += 1

    def close(self) -> None:
        if self._in_txn and not self.failed:
            self._db.execute("ROLLBACK")
            self._in_txn = False
        self._db.close()
