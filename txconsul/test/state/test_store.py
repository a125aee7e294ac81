# -*- test-case-name: txconsul.test.state.test_store -*-
"""The state store, the FSM and the watches, without any I/O."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from txconsul.errors import BadRequest, TxConsulError
from txconsul.state.fsm import FSM, TxnFailed
from txconsul.state.store import StateStore


def kv(verb: str, key: str, value: bytes | None = None, **extra: Any) -> dict[str, Any]:
    return {"Type": "kv", "Verb": verb, "Key": key, "Value": value, **extra}


def register(node: str, service: dict[str, Any] | None = None, checks: Any = ()) -> dict[str, Any]:
    return {
        "Type": "register",
        "Request": {
            "Node": node,
            "Address": "10.0.0.1",
            "Service": service,
            "Checks": list(checks),
        },
    }


class NextIndex:
    """Applies each command at the next log index, as a lone Raft leader commits it."""

    def __init__(self, fsm: FSM) -> None:
        self.fsm = fsm

    def apply(self, command: dict[str, Any]) -> Deferred[Any]:
        try:
            return succeed(self.fsm.apply(self.fsm.store.last_index + 1, command))
        except Exception as e:
            return fail(e)


class Fixture(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = StateStore()
        self.fsm = FSM(self.store)
        self.log = NextIndex(self.fsm)

    def apply(self, command: dict[str, Any]) -> Any:
        return self.successResultOf(self.log.apply(command))


class KVTests(Fixture):
    def test_indexes_grow_with_each_write(self) -> None:
        self.apply(kv("set", "a", b"1"))
        self.apply(kv("set", "b", b"2"))
        self.apply(kv("set", "a", b"3"))
        a = self.store.kv.get("a")
        assert a is not None
        self.assertEqual((a.create_index, a.modify_index), (1, 3))
        self.assertEqual(self.store.kv.index, 3)
        self.assertEqual(self.store.last_index, 3)

    def test_delete_leaves_a_tombstone_that_raises_the_prefix_index(self) -> None:
        self.apply(kv("set", "p/a", b"1"))
        self.apply(kv("set", "p/b", b"1"))
        self.assertEqual(self.store.kv.prefix_index("p/"), 2)
        self.apply(kv("delete", "p/a"))
        self.assertEqual(self.store.kv.prefix_index("p/"), 3)
        self.assertEqual(dict(self.store.kv.tombstones), {"p/a": 3})
        self.apply(kv("set", "p/a", b"again"))
        self.assertEqual(dict(self.store.kv.tombstones), {})

    def test_missing_key_index_is_the_table_index_at_least_one(self) -> None:
        self.assertEqual(self.store.kv.key_index("x"), 1)
        self.apply(kv("set", "y", b"1"))
        self.assertEqual(self.store.kv.key_index("x"), 1)

    def test_lock_needs_a_known_session(self) -> None:
        failure = self.failureResultOf(self.log.apply(kv("lock", "l", b"", Session="nope")))
        failure.trap(TxConsulError)
        self.assertIsNone(self.store.kv.get("l"))

    def test_lock_and_unlock_track_session_and_lock_index(self) -> None:
        self.store.sessions["s1"] = {"ID": "s1"}
        self.store.sessions["s2"] = {"ID": "s2"}
        self.assertTrue(self.apply(kv("lock", "l", b"a", Session="s1")))
        self.assertFalse(self.apply(kv("lock", "l", b"b", Session="s2")))
        self.assertTrue(self.apply(kv("lock", "l", b"c", Session="s1")))
        entry = self.store.kv.get("l")
        assert entry is not None
        self.assertEqual((entry.session, entry.lock_index, entry.value), ("s1", 1, b"c"))
        self.assertFalse(self.apply(kv("unlock", "l", None, Session="s2")))
        self.assertTrue(self.apply(kv("unlock", "l", None, Session="s1")))
        self.assertTrue(self.apply(kv("lock", "l", b"d", Session="s2")))
        entry = self.store.kv.get("l")
        assert entry is not None
        self.assertEqual((entry.session, entry.lock_index), ("s2", 2))

    def test_plain_set_keeps_the_lock(self) -> None:
        self.store.sessions["s1"] = {"ID": "s1"}
        self.apply(kv("lock", "l", b"a", Session="s1"))
        self.apply(kv("set", "l", b"b"))
        entry = self.store.kv.get("l")
        assert entry is not None
        self.assertEqual((entry.session, entry.lock_index, entry.value), ("s1", 1, b"b"))

    def test_delete_tree_removes_only_the_prefix(self) -> None:
        for key in ("a/1", "a/2", "ab", "b"):
            self.apply(kv("set", key, b"x"))
        self.apply(kv("delete-tree", "a/"))
        self.assertEqual(list(self.store.kv.entries), ["ab", "b"])

    def test_unknown_command_type_is_refused(self) -> None:
        self.failureResultOf(self.log.apply({"Type": "bogus"})).trap(BadRequest)


class TxnTests(Fixture):
    def test_failed_operation_rolls_back_the_whole_transaction(self) -> None:
        self.apply(kv("set", "keep", b"old"))
        before = self.store.snapshot()
        ops = [
            {"Verb": "set", "Key": "keep", "Value": b"new"},
            {"Verb": "delete", "Key": "keep"},
            {"Verb": "set", "Key": "fresh", "Value": b"1"},
            {"Verb": "cas", "Key": "fresh", "Value": b"2", "Index": 999},
        ]
        failure = self.failureResultOf(self.log.apply({"Type": "txn", "Ops": ops}))
        failure.trap(TxnFailed)
        self.assertEqual([e["OpIndex"] for e in failure.value.errors], [3])
        entry = self.store.kv.get("keep")
        assert entry is not None
        self.assertEqual(entry.value, b"old")
        self.assertIsNone(self.store.kv.get("fresh"))
        # Everything but the log position is as it was.
        restored = StateStore()
        restored.restore(before)
        self.assertEqual(restored.kv.dump(), self.store.kv.dump())

    def test_rolled_back_transaction_wakes_no_watcher(self) -> None:
        waiting = self.store.watches.wait(["kv:k"])
        ops = [
            {"Verb": "set", "Key": "k", "Value": b"1"},
            {"Verb": "check-not-exists", "Key": "k"},
        ]
        self.failureResultOf(self.log.apply({"Type": "txn", "Ops": ops})).trap(TxnFailed)
        self.assertNoResult(waiting)
        waiting.cancel()
        self.failureResultOf(waiting)

    def test_committed_transaction_wakes_watchers_of_each_key(self) -> None:
        a = self.store.watches.wait(["kv:a"])
        b = self.store.watches.wait(["kvp:"])
        ops = [{"Verb": "set", "Key": "a", "Value": b"1"}]
        result = self.apply({"Type": "txn", "Ops": ops})
        self.assertIsNone(result["Errors"])
        self.successResultOf(a)
        self.successResultOf(b)


class WatchTests(Fixture):
    def test_key_watch_ignores_other_keys(self) -> None:
        waiting = self.store.watches.wait(["kv:a"])
        self.apply(kv("set", "b", b"1"))
        self.assertNoResult(waiting)
        self.apply(kv("set", "a", b"1"))
        self.successResultOf(waiting)
        self.assertEqual(len(self.store.watches), 0)

    def test_prefix_watch_fires_for_keys_under_it(self) -> None:
        waiting = self.store.watches.wait(["kvp:app/"])
        self.apply(kv("set", "apple", b"1"))
        self.assertNoResult(waiting)
        self.apply(kv("set", "app/x/y", b"1"))
        self.successResultOf(waiting)

    def test_cancelled_watch_is_forgotten(self) -> None:
        waiting = self.store.watches.wait(["kv:a", "kvp:"])
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertEqual(len(self.store.watches), 0)
        self.assertEqual(self.store.watches.kv_prefix_waiters, 0)
        self.apply(kv("set", "a", b"1"))

    def test_catalog_writes_notify_their_tables(self) -> None:
        nodes = self.store.watches.wait(["nodes"])
        checks = self.store.watches.wait(["checks"])
        self.apply(register("n1"))
        self.successResultOf(nodes)
        self.assertNoResult(checks)
        self.apply(register("n1", checks=[{"CheckID": "c", "Name": "c", "Status": "passing"}]))
        self.successResultOf(checks)


class CatalogTests(Fixture):
    def test_unchanged_registration_keeps_modify_index(self) -> None:
        svc = {"Service": "web", "Port": 80}
        self.apply(register("n1", svc))
        self.apply(register("n1", svc))
        node = self.store.catalog.nodes["n1"]
        row = self.store.catalog.services["n1"]["web"]
        self.assertEqual((node["ModifyIndex"], row["ModifyIndex"]), (1, 1))
        self.apply(register("n1", {"Service": "web", "Port": 81}))
        row = self.store.catalog.services["n1"]["web"]
        self.assertEqual((row["CreateIndex"], row["ModifyIndex"]), (1, 3))

    def test_check_of_unknown_service_refuses_the_whole_registration(self) -> None:
        failure = self.failureResultOf(
            self.log.apply(register("n1", None, [{"Name": "c", "ServiceID": "ghost"}]))
        )
        failure.trap(BadRequest)
        self.assertEqual(self.store.catalog.nodes, {})

    def test_service_checks_carry_service_name_and_tags(self) -> None:
        self.apply(
            register(
                "n1",
                {"Service": "web", "Tags": ["a"]},
                [{"CheckID": "web-c", "Name": "w", "ServiceID": "web"}],
            )
        )
        self.apply(register("n1", {"Service": "web", "Tags": ["b"]}))
        check = self.store.catalog.checks["n1"]["web-c"]
        self.assertEqual((check["ServiceName"], check["ServiceTags"]), ("web", ["b"]))
        self.assertEqual(check["Status"], "critical")

    def test_deregistering_a_node_removes_its_services_and_checks(self) -> None:
        self.apply(register("n1", {"Service": "web"}, [{"Name": "c", "ServiceID": "web"}]))
        self.apply({"Type": "deregister", "Request": {"Node": "n1"}})
        c = self.store.catalog
        self.assertEqual((c.nodes, c.by_name, c.node_checks("n1")), ({}, {}, []))

    def test_instances_filter_by_every_tag_case_insensitively(self) -> None:
        self.apply(register("n1", {"Service": "web", "ID": "w1", "Tags": ["Blue", "v1"]}))
        self.apply(register("n2", {"Service": "web", "ID": "w2", "Tags": ["blue"]}))
        both = self.store.catalog.instances("web", ["blue"])
        one = self.store.catalog.instances("web", ["blue", "V1"])
        self.assertEqual([s["ID"] for _, s in both], ["w1", "w2"])
        self.assertEqual([s["ID"] for _, s in one], ["w1"])


class SnapshotTests(Fixture):
    def test_snapshot_round_trip_restores_every_table(self) -> None:
        self.store.sessions["s1"] = {"ID": "s1"}
        self.apply(kv("set", "a", b"\x00binary\xff", Flags=7))
        self.apply(kv("lock", "b", b"", Session="s1"))
        self.apply(kv("set", "c", None))
        self.apply(kv("delete", "c"))
        self.apply(
            register(
                "n1",
                {"Service": "web", "Tags": ["x"], "Meta": {"k": "v"}},
                [{"CheckID": "c1", "Name": "c", "ServiceID": "web", "Status": "warning"}],
            )
        )
        blob = self.store.snapshot()
        other = StateStore()
        other.restore(blob)
        self.assertEqual(other.snapshot(), blob)
        self.assertEqual(other.kv.dump(), self.store.kv.dump())
        self.assertEqual(other.catalog.dump(), self.store.catalog.dump())
        self.assertEqual(other.last_index, self.store.last_index)
        self.assertEqual(other.catalog.by_name, self.store.catalog.by_name)
        # The log continues from the restored index.
        log = NextIndex(FSM(other))
        self.successResultOf(log.apply(kv("set", "d", b"1")))
        entry = other.kv.get("d")
        assert entry is not None
        self.assertEqual(entry.modify_index, self.store.last_index + 1)

    def test_restore_wakes_every_watcher(self) -> None:
        waiting = self.store.watches.wait(["kv:a"])
        self.store.restore(StateStore().snapshot())
        self.successResultOf(waiting)

    def test_garbage_snapshot_is_refused_and_the_store_kept(self) -> None:
        self.apply(kv("set", "a", b"1"))
        for blob in (b"", b"\x93\x01\x02", b"\x92\x01\x02", b"\x81\xa7version\x01", b"x\xc1"):
            self.assertRaises(ValueError, self.store.restore, blob)
        self.assertIsNotNone(self.store.kv.get("a"))
