"""Tests for txconsul.raft.logstore: batching, crashes, corruption, failing syncs."""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from txconsul.raft.core import Snapshot
from txconsul.raft.logstore import MemoryLogStore, SQLiteLogStore, StoreFailed
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
        restored = self.reopen(store).load()
        self.assertEqual(restored.entries, tuple(E[:3]))

    def test_torn_last_transaction_is_dropped(self) -> None:
        store = self.make()
        store.store_entries(1, tuple(E[:2]))
        store.sync()
        store.store_entries(3, tuple(E[2:]))
        store.sync()
        # copy the files as a crash mid-write would leave them: the WAL cut short
        crashed = self.mktemp()
        os.makedirs(crashed)
        for suffix in ("", "-wal"):
            with open(store.path + suffix, "rb") as f:
                data = f.read()
            if suffix == "-wal":
                self.assertGreater(len(data), 100)
                data = data[:-100]
            with open(os.path.join(crashed, "raft.db" + suffix), "wb") as f:
                f.write(data)
        again = SQLiteLogStore(crashed)
        self.addCleanup(again.close)
        self.assertEqual(again.load().entries, tuple(E[:2]))

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
