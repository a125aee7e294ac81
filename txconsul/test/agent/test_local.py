# -*- test-case-name: txconsul.test.agent.test_local -*-
"""The agent's own state: persistence, reload, maintenance, critical reaping."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.agent.agent import Agent
from txconsul.agent.definitions import parse_service
from txconsul.agent.local import NODE_MAINTENANCE
from txconsul.config import load


class LocalStateTests(SynchronousTestCase):
    def start(
        self, data_dir: str | None = None, config_dir: str | None = None, **flags: Any
    ) -> Agent:
        self.reactor = MemoryReactorClock()
        base: dict[str, Any] = {"dev": True, "node_name": "n1", **flags}
        if data_dir:
            base["data_dir"] = data_dir
        dirs = (config_dir,) if config_dir else ()
        agent = Agent(load(base, (), dirs), self.reactor, random.Random(0))
        agent.reload_config = lambda: load(base, (), dirs)
        agent.startService()
        self.addCleanup(agent.stopService)
        self.successResultOf(agent.when_ready())
        self.client = StubTreq(agent.http_api.resource())
        return agent

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        response = self.successResultOf(
            self.client.request(method, "http://127.0.0.1" + path, data=data)
        )
        return response.code, self.successResultOf(response.content())

    def catalog_checks(self, agent: Agent) -> dict[str, Any]:
        return agent.store.catalog.checks.get("n1", {})

    # -- persistence ---------------------------------------------------------------

    def test_api_registrations_survive_a_restart(self) -> None:
        data_dir = self.mktemp()
        first = self.start(data_dir)
        code, _ = self.request(
            "PUT",
            "/v1/agent/service/register",
            {"Name": "web", "Port": 80, "Check": {"TTL": "30s"}},
        )
        self.assertEqual(code, 200)
        self.request("PUT", "/v1/agent/check/register", {"Name": "disk", "TTL": "1m"})
        self.request("PUT", "/v1/agent/maintenance?enable=true&reason=patching")
        first.stopService()
        second = self.start(data_dir)
        self.assertEqual(list(second.local.services), ["web"])
        self.assertEqual(sorted(second.local.checks), [NODE_MAINTENANCE, "disk", "service:web"])
        self.assertEqual(self.catalog_checks(second)[NODE_MAINTENANCE]["Notes"], "patching")
        self.assertEqual(second.store.catalog.node_services("n1")["web"]["Port"], 80)

    def test_deregistered_service_stays_gone_after_a_restart(self) -> None:
        data_dir = self.mktemp()
        first = self.start(data_dir)
        self.request("PUT", "/v1/agent/service/register", {"Name": "web"})
        self.request("PUT", "/v1/agent/service/deregister/web")
        first.stopService()
        second = self.start(data_dir)
        self.assertEqual(second.local.services, {})

    def test_unreadable_state_file_is_skipped(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "agent-state.json"), "w") as f:
            f.write("{not json")
        agent = self.start(data_dir)
        self.assertEqual(agent.local.services, {})

    # -- maintenance ---------------------------------------------------------------

    def test_node_maintenance_hides_every_service(self) -> None:
        agent = self.start()
        self.request("PUT", "/v1/agent/service/register", {"Name": "web"})
        code, _ = self.request("PUT", "/v1/agent/maintenance?enable=true")
        self.assertEqual(code, 200)
        check = self.catalog_checks(agent)[NODE_MAINTENANCE]
        self.assertEqual((check["Status"], check["Name"]), ("critical", "Node Maintenance Mode"))
        self.assertIn("no reason was provided", check["Notes"])
        _, body = self.request("GET", "/v1/health/service/web?passing")
        self.assertEqual(json.loads(body), [])
        self.request("PUT", "/v1/agent/maintenance?enable=false")
        self.assertNotIn(NODE_MAINTENANCE, self.catalog_checks(agent))
        _, body = self.request("GET", "/v1/health/service/web?passing")
        self.assertEqual(len(json.loads(body)), 1)

    def test_service_maintenance_takes_one_service_out(self) -> None:
        agent = self.start()
        self.request("PUT", "/v1/agent/service/register", {"Name": "web"})
        self.request("PUT", "/v1/agent/service/register", {"Name": "db"})
        code, _ = self.request("PUT", "/v1/agent/service/maintenance/web?enable=True&reason=deploy")
        self.assertEqual(code, 200)
        check = self.catalog_checks(agent)["_service_maintenance:web"]
        self.assertEqual((check["ServiceID"], check["Notes"]), ("web", "deploy"))
        _, web = self.request("GET", "/v1/health/service/web?passing")
        _, db = self.request("GET", "/v1/health/service/db?passing")
        self.assertEqual((len(json.loads(web)), len(json.loads(db))), (0, 1))

    def test_maintenance_bad_input(self) -> None:
        self.start()
        self.assertEqual(self.request("PUT", "/v1/agent/maintenance")[0], 400)
        code, body = self.request("PUT", "/v1/agent/maintenance?enable=maybe")
        self.assertEqual(code, 400)
        self.assertIn(b"enable", body)
        self.assertEqual(
            self.request("PUT", "/v1/agent/service/maintenance/nope?enable=true")[0], 404
        )

    # -- reload --------------------------------------------------------------------

    def write(self, config_dir: str, name: str, data: Any) -> None:
        with open(os.path.join(config_dir, name), "w") as f:
            json.dump(data, f)

    def test_reload_adds_changes_and_removes_definitions(self) -> None:
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        self.write(config_dir, "a.json", {"service": {"name": "keep", "check": {"ttl": "1h"}}})
        self.write(config_dir, "b.json", {"service": {"name": "change", "port": 1}})
        self.write(config_dir, "c.json", {"service": {"name": "drop"}})
        agent = self.start(config_dir=config_dir)
        self.request("PUT", "/v1/agent/service/register", {"Name": "api-owned"})
        kept_state = agent.local.checks["service:keep"]
        os.remove(os.path.join(config_dir, "c.json"))
        self.write(config_dir, "b.json", {"service": {"name": "change", "port": 2}})
        self.write(config_dir, "d.json", {"service": {"name": "new"}})
        code, _ = self.request("PUT", "/v1/agent/reload")
        self.assertEqual(code, 200)
        self.assertEqual(sorted(agent.local.services), ["api-owned", "change", "keep", "new"])
        self.assertEqual(agent.store.catalog.node_services("n1")["change"]["Port"], 2)
        self.assertIs(
            agent.local.checks["service:keep"], kept_state, "an unchanged check was restarted"
        )
        self.assertIsNotNone(kept_state.timer)

    def test_reload_of_a_broken_config_keeps_the_running_one(self) -> None:
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        self.write(config_dir, "a.json", {"service": {"name": "keep"}})
        agent = self.start(config_dir=config_dir)
        with open(os.path.join(config_dir, "a.json"), "w") as f:
            f.write("{broken")
        code, body = self.request("PUT", "/v1/agent/reload")
        self.assertEqual(code, 500)
        self.assertIn(b"a.json", body)
        self.assertEqual(list(agent.local.services), ["keep"])

    # -- deregister_critical_service_after -----------------------------------------------

    def test_service_is_deregistered_after_being_critical_long_enough(self) -> None:
        agent = self.start()
        service = parse_service(
            {"name": "web", "check": {"ttl": "10s", "deregister_critical_service_after": "90s"}}
        )
        self.successResultOf(agent.local.add_service(service))
        self.successResultOf(agent.local.update_ttl("service:web", "passing", ""))
        self.reactor.advance(10)  # TTL runs out: critical from now
        self.reactor.advance(89)
        self.assertIn("web", agent.local.services)
        self.reactor.advance(2)
        self.assertNotIn("web", agent.local.services)
        self.assertEqual(
            agent.store.catalog.node_services("n1"),
            {"consul": agent.store.catalog.node_services("n1")["consul"]},
        )

    def test_recovery_before_the_deadline_keeps_the_service(self) -> None:
        agent = self.start()
        service = parse_service(
            {"name": "web", "check": {"ttl": "1h", "deregister_critical_service_after": "1m"}}
        )
        self.successResultOf(agent.local.add_service(service))
        self.reactor.advance(30)
        self.successResultOf(agent.local.update_ttl("service:web", "passing", ""))
        self.reactor.advance(60)
        self.assertIn("web", agent.local.services)
