"""``txconsul reload`` and ``txconsul maint`` against a real in-process agent."""

from __future__ import annotations

import json
import os

from txconsul.agent.definitions import parse_service
from txconsul.test.cli.support import AgentTestCase


class MaintTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()

    async def test_node_maintenance_on_list_and_off(self) -> None:
        got = await self.cli("maint", "-enable", "-reason", "kernel upgrade")
        self.assertEqual((got.code, got.out), (0, "Maintenance mode enabled for node\n"))
        self.assertIn("_node_maintenance", self.agent.local.checks)
        listed = await self.cli("maint")
        self.assertEqual(listed.out, "Node:\n  Reason: kernel upgrade\n")
        got = await self.cli("maint", "-disable")
        self.assertEqual(got.code, 0)
        self.assertNotIn("_node_maintenance", self.agent.local.checks)

    async def test_service_maintenance(self) -> None:
        await self.agent.local.add_service(parse_service({"Name": "web"}))
        got = await self.cli("maint", "-enable", "-service", "web")
        self.assertEqual(got.code, 0)
        self.assertIn("_service_maintenance:web", self.agent.local.checks)
        listed = await self.cli("maint")
        self.assertIn("Service: web", listed.out)

    async def test_unknown_service_fails_plainly(self) -> None:
        got = await self.cli("maint", "-enable", "-service", "ghost")
        self.assertEqual(got.code, 1)
        self.assertIn("404", got.err)
        self.assertIn("ghost", got.err)

    async def test_enable_and_disable_together_is_a_usage_error(self) -> None:
        got = await self.cli("maint", "-enable", "-disable")
        self.assertEqual(got.code, 1)
        self.assertIn("Only one of", got.err)


class ReloadTests(AgentTestCase):
    async def test_reload_picks_up_a_new_service_definition(self) -> None:
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        await self.start()
        from txconsul.config import load
        from txconsul.testing.agent import dev_config

        self.agent.reload_config = lambda: load(dev_config(), (), (config_dir,))
        with open(os.path.join(config_dir, "web.json"), "w") as f:
            json.dump({"service": {"name": "web", "port": 80}}, f)
        got = await self.cli("reload")
        self.assertEqual((got.code, got.out), (0, "Configuration reload triggered\n"))
        self.assertIn("web", self.agent.local.services)
