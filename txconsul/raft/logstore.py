# -*- test-case-name: txconsul.test.raft.test_logstore -*-
"""
Where Raft keeps its log, its term and vote, and its latest snapshot.

Writes are buffered until ``sync()``, which makes all of them durable at once
(many appends, one fsync) and atomically (a crash keeps all of a batch or
none of it). ``MemoryLogStore`` is for tests and simulations and can
``crash()``, losing what was not synced. ``SQLiteLogStore`` keeps everything
in ``data_dir/raft/raft.db``: WAL mode with ``synchronous=FULL``, one
transaction per batch; SQLite's WAL checksums drop a torn last transaction
when the file is next opened, and ``scan_wal`` finds it first so that the
drop is logged. A failed sync poisons the store: every later
call raises ``StoreFailed``, and the node stops acknowledging anything.
"""

from __future__ import annotations

import os
import sqlite3
import struct
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

    def set_voters(voters: tuple[str, ...]) -> None:
        """Remember the configuration a new cluster started with."""

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
    voters: tuple[str, ...] = ()

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
            self.voters,
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

    def set_voters(self, voters: tuple[str, ...]) -> None:
        self._check()

        def op(image: _Image) -> None:
            image.voters = voters

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


#: the WAL header's magic number says in which byte order its checksums run
_WAL_MAGIC = {0x377F0682: "<", 0x377F0683: ">"}
_WAL_HEADER = 32
_FRAME_HEADER = 24


@attrs.frozen
class WALScan:
    """What a SQLite write-ahead log holds, as SQLite will read it when opened."""

    committed_frames: int = 0
    #: frames written after the last complete transaction (a crash mid-write)
    torn_frames: int = 0
    #: the header is damaged: SQLite ignores the whole file
    bad_header: bool = False
    #: frames of this generation follow a damaged one: SQLite would drop
    #: complete transactions with it (a flipped bit, not a torn write)
    damaged: bool = False


def _wal_checksum(data: bytes, order: str, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def scan_wal(data: bytes) -> WALScan:
    """
    Walk a WAL as SQLite's recovery does (file format, section 4): frames are
    valid while their salts match the header's and their running checksum
    holds; what follows the last valid commit frame is dropped. Frames with
    other salts are an older generation of the file, not a torn write.
    """
    if len(data) < _WAL_HEADER:
        return WALScan(bad_header=bool(data))
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    order = _WAL_MAGIC.get(magic)
    if order is None or page_size < 512 or page_size & (page_size - 1):
        return WALScan(bad_header=True)
    s0, s1 = _wal_checksum(data[:24], order, 0, 0)
    if (s0, s1) != (c1, c2):
        return WALScan(bad_header=True)
    frame = _FRAME_HEADER + page_size
    committed = valid = 0
    offset = _WAL_HEADER
    torn = 0
    while offset < len(data):
        chunk = data[offset : offset + frame]
        if len(chunk) < 16:
            torn = 1  # the file ends inside a frame header: a write cut short
            break
        _page, commit, f_salt1, f_salt2 = struct.unpack(">4I", chunk[:16])
        if (f_salt1, f_salt2) != (salt1, salt2):
            break  # an older generation of the file
        if len(chunk) < frame:
            torn = 1
            break
        f_c1, f_c2 = struct.unpack(">2I", chunk[16:24])
        s0, s1 = _wal_checksum(chunk[:8] + chunk[24:], order, s0, s1)
        if (s0, s1) != (f_c1, f_c2):
            torn = 1
            break
        valid += 1
        if commit:
            committed = valid
        offset += frame
    damaged = False
    for later in range(offset + frame, len(data) - 16 + 1, frame):
        if struct.unpack(">2I", data[later + 8 : later + 16]) == (salt1, salt2):
            damaged = True
            break
    return WALScan(committed, valid - committed + torn, damaged=damaged)


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
        self._refusal = self._check_wal()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._in_txn = False
        self.failed = False
        if self._refusal is not None:
            self.failed = True  # write nothing: a write would reset the damaged file
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.syncs = 0

    def _check_wal(self) -> str | None:
        """
        Say what SQLite is about to drop from the write-ahead log, before it
        opens it. A torn last transaction was never synced, hence never
        acknowledged: dropping it is the repair. Damage before complete
        transactions would lose synced state (a term, a vote, entries) that
        SQLite would drop without a word: the reason to refuse to load.
        """
        wal = self.path + "-wal"
        try:
            with open(wal, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        scan = scan_wal(data)
        if scan.bad_header or scan.damaged:
            where = "its header" if scan.bad_header else "a frame before the last transaction"
            self.log.error(
                "raft log {path}: the write-ahead log {wal} is damaged in {where}; SQLite"
                " would drop synced transactions with it, so this server refuses to load"
                " its log. Remove {wal} (losing what it held) or the raft directory"
                " (rejoining empty)",
                path=self.path,
                wal=wal,
                where=where,
            )
            return f"the write-ahead log {wal} is damaged in {where}"
        if scan.torn_frames:
            self.log.warn(
                "raft log {path}: the write-ahead log ends in {frames} frame(s) of a"
                " transaction that never finished (a crash mid-write); dropping them,"
                " the log ends at the last complete transaction",
                path=self.path,
                frames=scan.torn_frames,
            )
        return None

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
            what = "snapshot" if key == "snapshot" else f"stable record {key!r}"
            self.log.error(
                "raft log {path}: the {what} is corrupt ({error}); refusing to load it."
                " Remove {path} to rejoin the cluster empty, or restore a copy",
                path=self.path,
                what=what,
                error=e,
            )
            raise StoreFailed(f"{what} in {self.path} is corrupt: {e}") from e

    def _commit(self) -> None:
        """One durable transaction (a test overrides this to inject an fsync error)."""
        self._db.execute("COMMIT")

    # -- ILogStore ----------------------------------------------------------------

    def load(self) -> Restored:
        if self._refusal is not None:
            raise StoreFailed(self._refusal)
        self._check()
        state = self._get("state") or [0, None]
        base = self._get("base") or [0, 0]
        snap = self._get("snapshot")
        voters = self._get("voters") or []
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
        return Restored(
            state[0], state[1], snapshot, base[0], base[1], tuple(entries), tuple(voters)
        )

    def set_state(self, term: int, vote: str | None) -> None:
        self._begin()
        self._put("state", [term, vote])

    def set_voters(self, voters: tuple[str, ...]) -> None:
        self._begin()
        self._put("voters", list(voters))

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
