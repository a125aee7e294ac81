"""Tests for txconsul.raft.logstore: batching, crashes, corruption, failing syncs."""

from __future__ import annotations

import os
import sqlite3

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from txconsul.raft.core import Snapshot
from txconsul.raft.logstore import MemoryLogStore, SQLiteLogStore, StoreFailed, WALScan, scan_wal
from txconsul.raft.messages import Entry

E = [Entry(1, i, b"c%d" % i) for i in range(1, 6)]


class Contract:
    """Tests every ILogStore passes."""

    def make(self):
        raise NotImplementedError

    def reopen(self, store):
        return store

    def test_empty_store_loads_nothing(self) -> None:
        restored = self.make().load()
        self.assertEqual((restored.term, restored.vote, restored.entries), (0, None, ()))

    def test_entries_and_state_survive_a_sync(self) -> None:
        store = self.make()
        store.set_state(3, "b")
        store.store_entries(1, tuple(E))
        store.sync()
        restored = self.reopen(store).load()
        self.assertEqual((restored.term, restored.vote), (3, "b"))
        self.assertEqual(restored.entries, tuple(E))

    def test_the_bootstrap_voters_survive_a_sync(self) -> None:
        store = self.make()
        store.set_voters(("a", "b", "c"))
        store.sync()
        restored = self.reopen(store).load()
        self.assertEqual(restored.voters, ("a", "b", "c"))
        self.assertTrue(restored.configured)

    def test_an_empty_store_knows_no_voters(self) -> None:
        restored = self.make().load()
        self.assertEqual(restored.voters, ())
        self.assertFalse(restored.configured)

    def test_store_entries_truncates_the_tail(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E))
        store.store_entries(3, (Entry(2, 3, b"new", ("a", "b")),))
        store.sync()
        restored = self.reopen(store).load()
        self.assertEqual(restored.entries, (*E[:2], Entry(2, 3, b"new", ("a", "b"))))

    def test_snapshot_compacts_the_log(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E))
        snap = Snapshot(4, 1, ("a", "b", "c"), b"state")
        store.store_snapshot(snap, 3, 1)
        store.sync()
        restored = self.reopen(store).load()
        self.assertEqual(restored.snapshot, snap)
        self.assertEqual((restored.base_index, restored.base_term), (3, 1))
        self.assertEqual(restored.entries, tuple(E[3:]))


class MemoryLogStoreTests(Contract, SynchronousTestCase):
    def make(self):
        return MemoryLogStore()

    def test_crash_loses_only_the_unsynced_batch(self) -> None:
        store = MemoryLogStore()
        store.store_entries(1, tuple(E[:2]))
        store.sync()
        store.store_entries(3, tuple(E[2:]))
        store.set_state(9, "x")
        store.crash()
        restored = store.load()
        self.assertEqual(restored.entries, tuple(E[:2]))
        self.assertEqual(restored.term, 0)

    def test_failed_sync_refuses_everything_after(self) -> None:
        store = MemoryLogStore()
        store.fail_syncs_after = 0
        store.store_entries(1, tuple(E))
        self.assertRaises(StoreFailed, store.sync)
        self.assertRaises(StoreFailed, store.store_entries, 6, ())
        self.assertRaises(StoreFailed, store.sync)


class FailingCommit(SQLiteLogStore):
    def _commit(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")


class SQLiteLogStoreTests(Contract, SynchronousTestCase):
    def make(self):
        self.dir = self.mktemp()
        store = SQLiteLogStore(self.dir)
        self.addCleanup(lambda: store._db.close())
        return store

    def reopen(self, store):
        store.close()
        again = SQLiteLogStore(self.dir)
        self.addCleanup(again.close)
        return again

    def test_many_appends_one_transaction(self) -> None:
        store = self.make()
        for e in E:
            store.store_entries(e.index, (e,))
        store.sync()
        self.assertEqual(store.syncs, 1)

    def test_unsynced_writes_are_lost_on_close(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E[:2]))
        store.sync()
        store.store_entries(3, tuple(E[2:]))
        self.assertEqual(self.reopen(store).load().entries, tuple(E[:2]))

    def test_failed_sync_refuses_everything_after(self) -> None:
        self.dir = self.mktemp()
        store = FailingCommit(self.dir)
        self.addCleanup(store._db.close)
        store.store_entries(1, tuple(E))
        self.assertRaises(StoreFailed, store.sync)
        self.assertRaises(StoreFailed, store.set_state, 1, "a")
        self.assertRaises(StoreFailed, store.store_entries, 6, ())
        self.assertRaises(StoreFailed, store.load)

    def test_corrupt_entry_truncates_the_log_there(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E))
        store.sync()
        store._db.execute("UPDATE log SET command = ? WHERE idx = 4", (b"flipped",))
        again = self.reopen(store)
        with capturedLogs() as events:
            restored = again.load()
        self.assertEqual(restored.entries, tuple(E[:3]))
        [line] = [e for e in events if "truncating there" in e["log_format"]]
        self.assertEqual(line["index"], 4)

    def test_torn_last_transaction_is_dropped(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E[:2]))
        store.sync()
        store.store_entries(3, tuple(E[2:]))
        store.sync()
        # the files as a crash mid-write would leave them: the WAL cut short
        self.assertGreater(len(self.wal_of(store)), 100)
        crashed = self.copy_with_wal(store, lambda wal: wal[:-100])
        with capturedLogs() as events:
            again = SQLiteLogStore(crashed)
        self.addCleanup(again.close)
        self.assertEqual(again.load().entries, tuple(E[:2]))
        [warning] = [e for e in events if "never finished" in e["log_format"]]
        self.assertEqual(warning["frames"], 1)
        self.assertEqual(warning["path"], again.path)

    def wal_of(self, store: SQLiteLogStore) -> bytes:
        with open(store.path + "-wal", "rb") as f:
            return f.read()

    def test_wal_scan_counts_what_sqlite_keeps_and_drops(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E[:2]))
        store.sync()
        before = scan_wal(self.wal_of(store)).committed_frames
        # one transaction of several pages: cut after its first page, no commit frame
        store.store_entries(3, tuple(Entry(1, i, os.urandom(3000)) for i in range(3, 9)))
        store.sync()
        wal = self.wal_of(store)
        whole = scan_wal(wal)
        self.assertEqual(whole.torn_frames, 0)
        self.assertGreater(whole.committed_frames, before + 1)
        frame = (len(wal) - 32) // (whole.committed_frames)
        cut = scan_wal(wal[: 32 + frame * (before + 1)])
        self.assertEqual((cut.committed_frames, cut.torn_frames), (before, 1))
        flipped = bytearray(wal)
        flipped[-1] ^= 1  # in the commit frame: the whole last transaction goes
        self.assertEqual(scan_wal(bytes(flipped)), WALScan(before, whole.committed_frames - before))
        self.assertTrue(scan_wal(wal[:20]).bad_header)
        self.assertTrue(scan_wal(b"\x00" * 64).bad_header)
        self.assertEqual(scan_wal(b""), scan_wal(b""))
        self.assertFalse(scan_wal(b"").bad_header)

    def copy_with_wal(self, store: SQLiteLogStore, damage) -> str:
        """The files of ``store`` as a crash would leave them, ``damage`` done to the WAL."""
        crashed = self.mktemp()
        os.makedirs(crashed)
        for suffix in ("", "-wal"):
            with open(store.path + suffix, "rb") as f:
                data = f.read()
            if suffix == "-wal":
                data = damage(data)
            with open(os.path.join(crashed, "raft.db" + suffix), "wb") as f:
                f.write(data)
        return crashed

    def assertRefused(self, crashed: str, where: str) -> None:
        wal = os.path.join(crashed, "raft.db-wal")
        with open(wal, "rb") as f:
            before = f.read()
        with capturedLogs() as events:
            again = SQLiteLogStore(crashed)
        self.addCleanup(again.close)
        [line] = [e for e in events if "refuses to load" in e["log_format"]]
        self.assertEqual((line["wal"], line["where"]), (wal, where))
        error = self.assertRaises(StoreFailed, again.load)
        self.assertIn("damaged", str(error))
        self.assertRaises(StoreFailed, again.set_state, 9, "x")
        again.close()
        with open(wal, "rb") as f:
            self.assertEqual(f.read(), before)  # kept as it was, for whoever repairs it

    def test_a_damaged_wal_header_refuses_to_load(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E))
        store.sync()
        crashed = self.copy_with_wal(store, lambda data: b"\xff\xff" + data[2:])
        self.assertRefused(crashed, "its header")

    def test_a_flipped_bit_before_complete_transactions_refuses_to_load(self) -> None:
        store = self.make()
        for e in E:  # one transaction each: the state and entries of earlier ones would go
            store.store_entries(e.index, (e,))
            store.set_state(e.index, "a")
            store.sync()

        def flip(data: bytes) -> bytes:
            damaged = bytearray(data)
            damaged[32 + 24 + 100] ^= 0x10  # in the first frame's page
            return bytes(damaged)

        self.assertRefused(self.copy_with_wal(store, flip), "a frame before the last transaction")

    def test_snapshot_with_a_bad_checksum_is_refused_with_a_log_line(self) -> None:
        store = self.make()
        store.store_snapshot(Snapshot(3, 1, ("a",), b"state"), 3, 1)
        store.sync()
        (packed,) = store._db.execute("SELECT value FROM stable WHERE key = 'snapshot'").fetchone()
        damaged = packed.replace(b"state", b"stbte")
        self.assertNotEqual(damaged, packed)
        store._db.execute("UPDATE stable SET value = ? WHERE key = 'snapshot'", (damaged,))
        again = self.reopen(store)
        with capturedLogs() as events:
            error = self.assertRaises(StoreFailed, again.load)
        self.assertIn("snapshot", str(error))
        self.assertIn("checksum", str(error))
        [line] = [e for e in events if e.get("what") == "snapshot"]
        self.assertIn("refusing to load it", line["log_format"])

    def test_corrupt_stable_record_refuses_to_start(self) -> None:
        store = self.make()
        store.set_state(5, "a")
        store.sync()
        store._db.execute(
            "UPDATE stable SET value = ? WHERE key = 'state'", (b"\x92\x01\xc4\x01x",)
        )
        self.assertRaises(StoreFailed, self.reopen(store).load)

    def test_database_lives_in_the_raft_directory(self) -> None:
        store = self.make()
        self.assertTrue(os.path.exists(os.path.join(self.dir, "raft.db")))
        self.assertEqual(store.path, os.path.join(self.dir, "raft.db"))
