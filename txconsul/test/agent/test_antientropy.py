# -*- test-case-name: txconsul.test.agent.test_antientropy -*-
"""
Anti-entropy: the plan of a full sync, its period, and the full sync of a
dev agent under a simulated clock (a client agent against real servers is
in ``test_client``).
"""

from __future__ import annotations

import json
import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.agent import antientropy
from txconsul.agent.agent import Agent
from txconsul.agent.antientropy import Plan, plan
from txconsul.config import load

NODE = {
    "ID": "1",
    "Node": "n1",
    "Address": "10.0.0.1",
    "TaggedAddresses": {"lan": "10.0.0.1"},
    "NodeMeta": {"rack": "a"},
}
WEB = {
    "ID": "web",
    "Service": "web",
    "Tags": ["v1"],
    "Address": "",
    "Meta": {},
    "Port": 80,
    "Weights": {"Passing": 1, "Warning": 1},
    "EnableTagOverride": False,
}
CHECK = {
    "CheckID": "service:web",
    "Name": "web ttl",
    "Notes": "",
    "ServiceID": "web",
    "Type": "ttl",
    "Interval": "",
    "Timeout": "",
    "Definition": {},
    "Status": "passing",
    "Output": "ok",
}


def catalog_node(**changes: Any) -> dict[str, Any]:
    row = {
        "ID": "1",
        "Node": "n1",
        "Address": "10.0.0.1",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "10.0.0.1"},
        "Meta": {"rack": "a"},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }
    row.update(changes)
    return row


def catalog_service(**changes: Any) -> dict[str, Any]:
    return {**WEB, "Proxy": {}, "Connect": {}, "CreateIndex": 2, "ModifyIndex": 2, **changes}


def catalog_check(**changes: Any) -> dict[str, Any]:
    row = {**CHECK, "Node": "n1", "ServiceName": "web", "ServiceTags": ["v1"], "ExposedPort": 0}
    return {**row, "CreateIndex": 3, "ModifyIndex": 3, **changes}


def in_step(**changes: Any) -> dict[str, Any]:
    remote: dict[str, Any] = {
        "Node": catalog_node(),
        "Services": {"web": catalog_service()},
        "Checks": {
            "service:web": catalog_check(),
            "serfHealth": {"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        },
    }
    remote.update(changes)
    return remote


class PlanTests(SynchronousTestCase):
    def plan(self, remote: dict[str, Any], **kw: Any) -> Plan:
        return plan(NODE, {"web": WEB}, {"service:web": CHECK}, remote, **kw)

    def test_a_catalog_in_step_needs_no_write(self) -> None:
        self.assertEqual(self.plan(in_step()), Plan())
        self.assertEqual(self.plan(in_step()).writes(), 0)

    def test_a_missing_or_changed_service_is_registered_again_with_its_checks(self) -> None:
        self.assertEqual(self.plan(in_step(Services={}, Checks={})).services, ("web",))
        changed = in_step(Services={"web": catalog_service(Port=81)})
        self.assertEqual(self.plan(changed), Plan(services=("web",)))

    def test_a_changed_check_is_registered_again_alone(self) -> None:
        remote = in_step()
        remote["Checks"]["service:web"] = catalog_check(Status="critical")
        self.assertEqual(self.plan(remote), Plan(checks=("service:web",)))

    def test_output_waiting_for_check_update_interval_is_no_difference(self) -> None:
        remote = in_step()
        remote["Checks"]["service:web"] = catalog_check(Output="older")
        self.assertEqual(self.plan(remote), Plan(checks=("service:web",)))
        self.assertEqual(self.plan(remote, output_may_lag={"service:web"}), Plan())

    def test_entries_the_agent_does_not_own_are_removed_but_serf_health_stays(self) -> None:
        remote = in_step()
        remote["Services"]["intruder"] = catalog_service(ID="intruder", Service="x")
        remote["Checks"]["intruder-check"] = catalog_check(CheckID="c", ServiceID="intruder")
        remote["Checks"]["stray"] = catalog_check(CheckID="stray", ServiceID="")
        self.assertEqual(
            self.plan(remote),
            # the intruder's check goes with it
            Plan(deregister_services=("intruder",), deregister_checks=("stray",)),
        )

    def test_a_servers_consul_service_is_not_the_agents(self) -> None:
        remote = in_step()
        remote["Services"]["consul"] = catalog_service(ID="consul", Service="consul")
        self.assertEqual(self.plan(remote, server=True), Plan())
        self.assertEqual(self.plan(remote), Plan(deregister_services=("consul",)))

    def test_the_node_entry_is_written_only_when_nothing_else_carries_it(self) -> None:
        self.assertEqual(self.plan(in_step(Node=None)), Plan(node=True))
        moved = in_step(Node=catalog_node(Meta={}))
        self.assertEqual(self.plan(moved), Plan(node=True))
        both = in_step(Node=None, Services={})
        self.assertEqual(self.plan(both), Plan(services=("web",)))


class PeriodTests(SynchronousTestCase):
    def test_scale_factor_grows_with_log2_of_the_cluster_above_128(self) -> None:
        got = {n: antientropy.scale_factor(n) for n in (1, 128, 129, 256, 257, 512, 8192)}
        self.assertEqual(got, {1: 1, 128: 1, 129: 2, 256: 2, 257: 3, 512: 3, 8192: 7})

    def test_the_next_full_sync_is_a_minute_plus_a_scaled_stagger(self) -> None:
        rng = random.Random(3)
        small = [antientropy.next_full_sync(3, rng) for _ in range(200)]
        self.assertTrue(all(60 <= d < 120 for d in small))
        large = [antientropy.next_full_sync(1000, rng) for _ in range(200)]
        self.assertTrue(all(60 <= d < 60 + 5 * 60 for d in large))
        self.assertGreater(max(large), 120)
        retries = [antientropy.retry_after_failure(3, rng) for _ in range(200)]
        self.assertTrue(all(15 <= d < 30 for d in retries))


class FullSyncTests(SynchronousTestCase):
    """A dev agent (its own catalog) under a simulated clock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = load({"dev": True, "node_name": "n1"}, (), ())
        self.agent = Agent(config, self.reactor, random.Random(0))
        self.agent.startService()
        self.addCleanup(self.agent.stopService)
        self.successResultOf(self.agent.when_ready())
        self.http = StubTreq(self.agent.http_api.resource())
        self.put("/v1/agent/service/register", {"Name": "web", "Port": 80, "Check": {"TTL": "1h"}})
        self.put("/v1/agent/check/update/service:web", {"Status": "passing", "Output": "fine"})

    def put(self, path: str, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        response = self.successResultOf(
            self.http.request("PUT", "http://127.0.0.1" + path, data=data)
        )
        self.assertEqual(response.code, 200, self.successResultOf(response.content()))

    def next_full_sync(self) -> None:
        """Advance the clock to the next periodic full sync, which runs at once here."""
        before = self.agent.local.full_syncs
        self.reactor.advance(120.0)  # the period is in [60, 120) for a small cluster
        self.assertEqual(self.agent.local.full_syncs, before + 1)

    def services(self) -> dict[str, Any]:
        return dict(self.agent.store.catalog.services.get("n1", {}))

    def checks(self) -> dict[str, Any]:
        return dict(self.agent.store.catalog.checks.get("n1", {}))

    def test_a_quiet_agent_writes_nothing_when_it_syncs(self) -> None:
        index, writes = self.agent.store.last_index, self.agent.local.writes
        for _ in range(5):
            self.next_full_sync()
        self.assertEqual((self.agent.store.last_index, self.agent.local.writes), (index, writes))

    def test_a_service_deregistered_through_the_catalog_comes_back(self) -> None:
        self.put("/v1/catalog/deregister", {"Node": "n1", "ServiceID": "web"})
        self.assertNotIn("web", self.services())
        self.next_full_sync()
        self.assertEqual(self.services()["web"]["Port"], 80)
        self.assertEqual(self.checks()["service:web"]["Status"], "passing")
        self.assertEqual(self.checks()["service:web"]["Output"], "fine")

    def test_changed_entries_are_put_back_and_strangers_removed(self) -> None:
        self.put(
            "/v1/catalog/register",
            {
                "Node": "n1",
                "Address": "127.0.0.1",
                "Service": {"ID": "web", "Service": "web", "Port": 9999},
                "Checks": [
                    {"CheckID": "service:web", "ServiceID": "web", "Status": "critical"},
                    {"CheckID": "stranger", "Status": "passing"},
                ],
            },
        )
        self.put(
            "/v1/catalog/register",
            {"Node": "n1", "Address": "127.0.0.1", "Service": {"Service": "intruder"}},
        )
        self.next_full_sync()
        self.assertEqual(sorted(self.services()), ["consul", "web"])
        self.assertEqual(self.services()["web"]["Port"], 80)
        self.assertEqual(sorted(self.checks()), ["serfHealth", "service:web"])
        self.assertEqual(self.checks()["service:web"]["Status"], "passing")
        # and then it is quiet again
        index = self.agent.store.last_index
        self.next_full_sync()
        self.assertEqual(self.agent.store.last_index, index)

    def test_stopping_the_agent_cancels_the_sync_timer(self) -> None:
        self.agent.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ClientWithoutServersTests(SynchronousTestCase):
    """A client agent under a simulated clock, with no server to talk to."""

    def test_a_failed_full_sync_is_retried_sooner(self) -> None:
        reactor = MemoryReactorClock()
        config = load(
            {"node_name": "c1", "data_dir": self.mktemp(), "ports": {"http": 0, "dns": -1}}, (), ()
        )
        agent = Agent(config, reactor, random.Random(0))
        agent.startService()
        self.addCleanup(agent.stopService)
        self.successResultOf(agent.when_ready())
        self.assertEqual(agent.local.full_syncs, 1)
        reactor.advance(30.0)  # a retry comes within [15, 30) s
        self.assertEqual(agent.local.full_syncs, 2)
        reactor.advance(30.0)
        self.assertEqual(agent.local.full_syncs, 3)
