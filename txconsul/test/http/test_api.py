# -*- test-case-name: txconsul.test.http.test_api -*-
"""
The HTTP API as a Consul user meets it: ``py-consul`` against a real agent.

The agent listens on 127.0.0.1 with port 0 in this process; py-consul is a
blocking client, so each call runs in a thread while the reactor serves it.
"""

from __future__ import annotations

import time
from typing import Any

import consul
from twisted.internet import defer, reactor  # noqa: TID251 (real-socket test)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txconsul.testing.agent import start_agent


class PyConsulTestCase(TestCase):
    """A dev agent and a py-consul client pointed at it."""

    timeout = 30
    #: configuration of the agent, beside the dev defaults
    flags: dict[str, Any] = {}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.agent = yield start_agent(self, reactor, **self.flags)
        host, port = self.agent.http.address()
        self.client = consul.Consul(host=host, port=port)
        self.addCleanup(self.client.http.session.close)

    def call(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one blocking py-consul call in a thread."""
        return deferToThread(f, *args, **kwargs)


class KVTests(PyConsulTestCase):
    @defer.inlineCallbacks
    def test_put_then_get_returns_value_and_index(self) -> Any:
        ok = yield self.call(self.client.kv.put, "web/maxconn", "100")
        self.assertIs(ok, True)
        index, entry = yield self.call(self.client.kv.get, "web/maxconn")
        self.assertEqual(entry["Value"], b"100")
        self.assertEqual(entry["Key"], "web/maxconn")
        self.assertEqual(entry["Flags"], 0)
        self.assertEqual(int(index), entry["ModifyIndex"])
        self.assertEqual(entry["CreateIndex"], entry["ModifyIndex"])

    @defer.inlineCallbacks
    def test_missing_key_is_none_with_an_index(self) -> Any:
        index, entry = yield self.call(self.client.kv.get, "nothing/here")
        self.assertIsNone(entry)
        self.assertGreaterEqual(int(index), 1)

    @defer.inlineCallbacks
    def test_empty_value_reads_back_as_none(self) -> Any:
        yield self.call(self.client.kv.put, "empty", "")
        _, entry = yield self.call(self.client.kv.get, "empty")
        self.assertIsNone(entry["Value"])

    @defer.inlineCallbacks
    def test_flags_are_stored_and_reset_by_a_plain_put(self) -> Any:
        yield self.call(self.client.kv.put, "f", "x", flags=42)
        _, entry = yield self.call(self.client.kv.get, "f")
        self.assertEqual(entry["Flags"], 42)
        yield self.call(self.client.kv.put, "f", "y")
        _, entry = yield self.call(self.client.kv.get, "f")
        self.assertEqual(entry["Flags"], 0)

    @defer.inlineCallbacks
    def test_recurse_lists_entries_under_prefix_sorted(self) -> Any:
        for key in ("app/b", "app/a", "app/c/d", "other"):
            yield self.call(self.client.kv.put, key, key.upper())
        _, entries = yield self.call(self.client.kv.get, "app/", recurse=True)
        self.assertEqual([e["Key"] for e in entries], ["app/a", "app/b", "app/c/d"])
        self.assertEqual(entries[0]["Value"], b"APP/A")

    @defer.inlineCallbacks
    def test_keys_with_separator_rolls_up_folders(self) -> Any:
        for key in ("base/foo", "base/base/a", "base/base/b", "base/zed/x"):
            yield self.call(self.client.kv.put, key, "1")
        _, keys = yield self.call(self.client.kv.get, "base/", keys=True, separator="/")
        self.assertEqual(keys, ["base/base/", "base/foo", "base/zed/"])
        _, everything = yield self.call(self.client.kv.get, "base/", keys=True)
        self.assertEqual(len(everything), 4)

    @defer.inlineCallbacks
    def test_cas_zero_creates_only_when_absent(self) -> Any:
        first = yield self.call(self.client.kv.put, "lock", "a", cas=0)
        second = yield self.call(self.client.kv.put, "lock", "b", cas=0)
        self.assertEqual((first, second), (True, False))
        _, entry = yield self.call(self.client.kv.get, "lock")
        self.assertEqual(entry["Value"], b"a")

    @defer.inlineCallbacks
    def test_cas_with_stale_index_fails_and_current_index_succeeds(self) -> Any:
        yield self.call(self.client.kv.put, "counter", "1")
        _, entry = yield self.call(self.client.kv.get, "counter")
        index = entry["ModifyIndex"]
        yield self.call(self.client.kv.put, "counter", "2")
        stale = yield self.call(self.client.kv.put, "counter", "3", cas=index)
        self.assertIs(stale, False)
        _, entry = yield self.call(self.client.kv.get, "counter")
        fresh = yield self.call(self.client.kv.put, "counter", "3", cas=entry["ModifyIndex"])
        self.assertIs(fresh, True)

    @defer.inlineCallbacks
    def test_delete_single_recurse_and_cas(self) -> Any:
        for key in ("d/1", "d/2", "d/3/x", "keep"):
            yield self.call(self.client.kv.put, key, "v")
        ok = yield self.call(self.client.kv.delete, "d/1")
        self.assertIs(ok, True)
        _, entry = yield self.call(self.client.kv.get, "d/2")
        bad = yield self.call(self.client.kv.delete, "d/2", cas=entry["ModifyIndex"] + 100)
        good = yield self.call(self.client.kv.delete, "d/2", cas=entry["ModifyIndex"])
        self.assertEqual((bad, good), (False, True))
        yield self.call(self.client.kv.delete, "d/", recurse=True)
        _, keys = yield self.call(self.client.kv.get, "", keys=True)
        self.assertEqual(keys, ["keep"])

    @defer.inlineCallbacks
    def test_blocking_get_returns_when_the_key_changes(self) -> Any:
        yield self.call(self.client.kv.put, "watched", "1")
        index, _ = yield self.call(self.client.kv.get, "watched")
        blocked = self.call(self.client.kv.get, "watched", index=index, wait="20s")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(blocked.called)
        yield self.call(self.client.kv.put, "unrelated", "x")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(blocked.called, "a write to another key woke a single-key watch")
        yield self.call(self.client.kv.put, "watched", "2")
        new_index, entry = yield blocked
        self.assertGreater(int(new_index), int(index))
        self.assertEqual(entry["Value"], b"2")

    @defer.inlineCallbacks
    def test_blocking_get_returns_unchanged_at_its_wait(self) -> Any:
        yield self.call(self.client.kv.put, "still", "1")
        index, _ = yield self.call(self.client.kv.get, "still")
        started = time.monotonic()
        new_index, entry = yield self.call(self.client.kv.get, "still", index=index, wait="1s")
        elapsed = time.monotonic() - started
        self.assertEqual(new_index, index)
        self.assertEqual(entry["Value"], b"1")
        # wait plus at most 1/16 of it as jitter, with slack for a busy machine
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5)

    @defer.inlineCallbacks
    def test_blocking_recurse_wakes_on_delete_under_prefix(self) -> Any:
        yield self.call(self.client.kv.put, "svc/a", "1")
        yield self.call(self.client.kv.put, "svc/b", "1")
        index, _ = yield self.call(self.client.kv.get, "svc/", recurse=True)
        blocked = self.call(self.client.kv.get, "svc/", recurse=True, index=index, wait="20s")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(blocked.called)
        yield self.call(self.client.kv.delete, "svc/a")
        new_index, entries = yield blocked
        self.assertGreater(int(new_index), int(index))
        self.assertEqual([e["Key"] for e in entries], ["svc/b"])


class TxnTests(PyConsulTestCase):
    @defer.inlineCallbacks
    def test_txn_applies_all_operations(self) -> Any:
        import base64

        def b64(s: str) -> str:
            return base64.b64encode(s.encode()).decode()

        result = yield self.call(
            self.client.txn.put,
            [
                {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("1")}},
                {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("2")}},
                {"KV": {"Verb": "get", "Key": "t/a"}},
            ],
        )
        self.assertIsNone(result["Errors"])
        self.assertEqual([r["KV"]["Key"] for r in result["Results"]], ["t/a", "t/b", "t/a"])
        self.assertIsNone(result["Results"][0]["KV"]["Value"])
        self.assertEqual(result["Results"][2]["KV"]["Value"], b64("1"))

    @defer.inlineCallbacks
    def test_failed_txn_applies_nothing(self) -> Any:
        yield self.call(self.client.kv.put, "t/existing", "v")
        before = self.agent.store.last_index
        with self.assertRaises(consul.ConsulException) as caught:
            yield self.call(
                self.client.txn.put,
                [
                    {"KV": {"Verb": "set", "Key": "t/new", "Value": "eA=="}},
                    {"KV": {"Verb": "check-not-exists", "Key": "t/existing"}},
                ],
            )
        self.assertIn("409", str(caught.exception))
        _, entry = yield self.call(self.client.kv.get, "t/new")
        self.assertIsNone(entry)
        self.assertIsNone(self.agent.store.kv.get("t/new"))
        self.assertEqual(self.agent.store.kv.index, before)


class CatalogTests(PyConsulTestCase):
    @defer.inlineCallbacks
    def test_self_node_and_consul_service_are_registered(self) -> Any:
        _, nodes = yield self.call(self.client.catalog.nodes)
        self.assertEqual([n["Node"] for n in nodes], ["node1"])
        _, services = yield self.call(self.client.catalog.services)
        self.assertEqual(services, {"consul": []})
        _, checks = yield self.call(self.client.health.state, "any")
        self.assertEqual([c["CheckID"] for c in checks], ["serfHealth"])
        self.assertEqual(checks[0]["Status"], "passing")

    @defer.inlineCallbacks
    def test_register_and_query_a_service(self) -> Any:
        ok = yield self.call(
            self.client.catalog.register,
            "web1",
            "10.1.0.5",
            service={"Service": "web", "ID": "web-a", "Port": 80, "Tags": ["v1", "blue"]},
        )
        self.assertIs(ok, True)
        yield self.call(
            self.client.catalog.register,
            "web2",
            "10.1.0.6",
            service={"Service": "web", "ID": "web-b", "Port": 81, "Tags": ["v2"]},
        )
        _, services = yield self.call(self.client.catalog.services)
        self.assertEqual(services["web"], ["blue", "v1", "v2"])
        _, instances = yield self.call(self.client.catalog.service, "web")
        self.assertEqual([i["ServiceID"] for i in instances], ["web-a", "web-b"])
        self.assertEqual(instances[0]["Address"], "10.1.0.5")
        self.assertEqual(instances[0]["ServicePort"], 80)
        _, tagged = yield self.call(self.client.catalog.service, "web", tag="v2")
        self.assertEqual([i["Node"] for i in tagged], ["web2"])
        _, node = yield self.call(self.client.catalog.node, "web1")
        self.assertEqual(list(node["Services"]), ["web-a"])
        _, missing = yield self.call(self.client.catalog.node, "nope")
        self.assertIsNone(missing)

    @defer.inlineCallbacks
    def test_deregister_service_then_node(self) -> Any:
        yield self.call(
            self.client.catalog.register,
            "db1",
            "10.1.0.9",
            service={"Service": "db", "Port": 5432},
            check={"Name": "db alive", "ServiceID": "db", "Status": "passing"},
        )
        yield self.call(self.client.catalog.deregister, "db1", service_id="db")
        _, services = yield self.call(self.client.catalog.services)
        self.assertNotIn("db", services)
        _, checks = yield self.call(self.client.health.node, "db1")
        self.assertEqual(checks, [])
        yield self.call(self.client.catalog.deregister, "db1")
        _, nodes = yield self.call(self.client.catalog.nodes)
        self.assertNotIn("db1", [n["Node"] for n in nodes])


class HealthTests(PyConsulTestCase):
    @defer.inlineCallbacks
    def register(self, node: str, status: str, tags: list[str]) -> Any:
        yield self.call(
            self.client.catalog.register,
            node,
            "10.2.0.1",
            service={"Service": "api", "ID": "api", "Port": 9000, "Tags": tags},
            check={"CheckID": "api-check", "Name": "api", "ServiceID": "api", "Status": status},
        )

    @defer.inlineCallbacks
    def test_passing_filter_drops_instances_with_any_failing_check(self) -> Any:
        yield self.register("n1", "passing", ["primary"])
        yield self.register("n2", "warning", ["primary"])
        yield self.register("n3", "critical", ["secondary"])
        _, everyone = yield self.call(self.client.health.service, "api")
        self.assertEqual([e["Node"]["Node"] for e in everyone], ["n1", "n2", "n3"])
        _, healthy = yield self.call(self.client.health.service, "api", passing=True)
        self.assertEqual([e["Node"]["Node"] for e in healthy], ["n1"])
        _, primary = yield self.call(self.client.health.service, "api", tag="primary")
        self.assertEqual([e["Node"]["Node"] for e in primary], ["n1", "n2"])

    @defer.inlineCallbacks
    def test_checks_by_service_node_and_state(self) -> Any:
        yield self.register("n1", "passing", [])
        yield self.register("n2", "critical", [])
        _, checks = yield self.call(self.client.health.checks, "api")
        self.assertEqual(
            [(c["Node"], c["Status"]) for c in checks], [("n1", "passing"), ("n2", "critical")]
        )
        _, critical = yield self.call(self.client.health.state, "critical")
        self.assertEqual([c["Node"] for c in critical], ["n2"])
        _, node_checks = yield self.call(self.client.health.node, "n1")
        self.assertEqual([c["CheckID"] for c in node_checks], ["api-check"])

    @defer.inlineCallbacks
    def test_blocking_health_query_wakes_on_status_change(self) -> Any:
        yield self.register("n1", "passing", [])
        index, _ = yield self.call(self.client.health.service, "api", passing=True)
        blocked = self.call(
            self.client.health.service, "api", passing=True, index=index, wait="20s"
        )
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(blocked.called)
        yield self.register("n1", "critical", [])
        new_index, healthy = yield blocked
        self.assertGreater(int(new_index), int(index))
        self.assertEqual(healthy, [])


class WANAddressTests(PyConsulTestCase):
    """``advertise_addr_wan`` is the node's ``wan`` tagged address, as in Consul."""

    flags = {"node_name": "edge1", "advertise_addr_wan": "198.51.100.7"}

    @defer.inlineCallbacks
    def test_the_catalog_node_has_the_wan_address_as_its_wan_tagged_address(self) -> Any:
        _, entry = yield self.call(self.client.catalog.node, "edge1")
        self.assertEqual(entry["Node"]["Address"], "127.0.0.1")
        self.assertEqual(
            entry["Node"]["TaggedAddresses"],
            {
                "lan": "127.0.0.1",
                "lan_ipv4": "127.0.0.1",
                "wan": "198.51.100.7",
                "wan_ipv4": "198.51.100.7",
            },
        )
        _, nodes = yield self.call(self.client.catalog.nodes)
        self.assertEqual([n["TaggedAddresses"]["wan"] for n in nodes], ["198.51.100.7"])

    @defer.inlineCallbacks
    def test_agent_self_reports_both_advertised_addresses(self) -> Any:
        me = yield self.call(self.client.agent.self)
        debug = me["DebugConfig"]
        self.assertEqual(
            (debug["AdvertiseAddrLAN"], debug["AdvertiseAddrWAN"], debug["BindAddr"]),
            ("127.0.0.1", "198.51.100.7", "127.0.0.1"),
        )
        self.assertEqual(debug["TaggedAddresses"]["wan_ipv4"], "198.51.100.7")


class EncryptVerifyTests(PyConsulTestCase):
    """The gossip verify flags show in ``DebugConfig`` under Consul's names."""

    flags = {"encrypt": "pUDWwCKA0AR5ksQe6JQfDg==", "encrypt_verify_incoming": False}

    @defer.inlineCallbacks
    def test_agent_self_reports_the_verify_flags(self) -> Any:
        me = yield self.call(self.client.agent.self)
        debug = me["DebugConfig"]
        self.assertEqual(
            (debug["EncryptVerifyIncoming"], debug["EncryptVerifyOutgoing"]), (False, True)
        )


class AgentTests(PyConsulTestCase):
    @defer.inlineCallbacks
    def test_self_has_the_keys_clients_rely_on(self) -> Any:
        me = yield self.call(self.client.agent.self)
        self.assertEqual(
            set(me), {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
        )
        leader = yield self.call(self.client.status.leader)
        peers = yield self.call(self.client.status.peers)
        self.assertEqual(me["Stats"]["consul"]["leader_addr"], leader)
        self.assertIn(leader, peers)
        members = yield self.call(self.client.agent.members)
        self.assertEqual(members, [me["Member"]])

    @defer.inlineCallbacks
    def test_self_reports_the_raft_state_of_a_server(self) -> Any:
        yield self.call(self.client.kv.put, "counted", "1")
        me = yield self.call(self.client.agent.self)
        raft = me["Stats"]["raft"]
        self.assertEqual(raft["state"], "Leader")
        self.assertEqual(raft["num_peers"], "0")
        self.assertEqual(raft["last_contact"], "0")
        self.assertGreaterEqual(int(raft["term"]), 1)
        self.assertGreaterEqual(int(raft["commit_index"]), 2)  # the barrier entry and the put
        self.assertEqual(raft["applied_index"], raft["commit_index"])
        self.assertEqual(raft["last_log_index"], raft["commit_index"])
        self.assertEqual(raft["last_log_term"], raft["term"])
        leader = yield self.call(self.client.status.leader)
        self.assertIn(f"Address:{leader}", raft["latest_configuration"])

    @defer.inlineCallbacks
    def test_service_with_ttl_check_passes_and_fails(self) -> Any:
        check = consul.Check.ttl("10s")
        ok = yield self.call(
            self.client.agent.service.register, "cache", service_id="cache1", port=6379, check=check
        )
        self.assertIs(ok, True)
        services = yield self.call(self.client.agent.services)
        self.assertEqual(services["cache1"]["Service"], "cache")
        checks = yield self.call(self.client.agent.checks)
        self.assertEqual(checks["service:cache1"]["Status"], "critical")
        _, healthy = yield self.call(self.client.health.service, "cache", passing=True)
        self.assertEqual(healthy, [])

        yield self.call(self.client.agent.check.ttl_pass, "service:cache1", "all good")
        _, healthy = yield self.call(self.client.health.service, "cache", passing=True)
        self.assertEqual([e["Service"]["ID"] for e in healthy], ["cache1"])
        checks = yield self.call(self.client.agent.checks)
        self.assertEqual(checks["service:cache1"]["Output"], "all good")

        yield self.call(self.client.agent.check.ttl_fail, "service:cache1", "broken")
        _, healthy = yield self.call(self.client.health.service, "cache", passing=True)
        self.assertEqual(healthy, [])
        _, entries = yield self.call(self.client.health.service, "cache")
        statuses = {c["CheckID"]: c["Status"] for c in entries[0]["Checks"]}
        self.assertEqual(statuses, {"serfHealth": "passing", "service:cache1": "critical"})

    @defer.inlineCallbacks
    def test_deregistering_a_service_removes_it_and_its_checks(self) -> Any:
        yield self.call(
            self.client.agent.service.register, "q", service_id="q1", check=consul.Check.ttl("10s")
        )
        yield self.call(self.client.agent.service.deregister, "q1")
        services = yield self.call(self.client.agent.services)
        self.assertEqual(services, {})
        _, entries = yield self.call(self.client.catalog.service, "q")
        self.assertEqual(entries, [])
        checks = yield self.call(self.client.agent.checks)
        self.assertEqual(checks, {})

    @defer.inlineCallbacks
    def test_node_check_register_update_and_deregister(self) -> Any:
        ok = yield self.call(
            self.client.agent.check.register, "disk", check=consul.Check.ttl("30s")
        )
        self.assertIs(ok, True)
        checks = yield self.call(self.client.agent.checks)
        self.assertEqual(checks["disk"]["Status"], "critical")
        yield self.call(self.client.agent.check.ttl_warn, "disk", "80% full")
        _, node_checks = yield self.call(self.client.health.node, "node1")
        statuses = {c["CheckID"]: (c["Status"], c["Output"]) for c in node_checks}
        self.assertEqual(statuses["disk"], ("warning", "80% full"))
        yield self.call(self.client.agent.check.deregister, "disk")
        checks = yield self.call(self.client.agent.checks)
        self.assertNotIn("disk", checks)
