"""``txconsul join``, ``leave``, ``force-leave``, ``keygen`` and ``keyring`` against real agents."""

from __future__ import annotations

import base64
import time

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.task import deferLater

from txconsul.agent.agent import Agent
from txconsul.test.cli.support import AgentTestCase, run_cli
from txconsul.testing.agent import http_address, start_agent

FAST = {"probe_interval": "100ms", "probe_timeout": "50ms", "gossip_interval": "20ms"}
KEY = base64.b64encode(bytes(range(32))).decode()
NEW_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def lan_port(agent: Agent) -> int:
    assert agent.membership.lan is not None
    return agent.membership.lan.gossip.address()[1]


class JoinCommandTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start(gossip_lan=FAST)
        self.client = await start_agent(
            self,
            reactor,
            node_name="c1",
            dev=False,
            server=False,
            data_dir=self.mktemp(),
            gossip_lan=FAST,
        )

    async def on_client(self, *argv: str):  # type: ignore[no-untyped-def]
        return await run_cli(list(argv), {"CONSUL_HTTP_ADDR": http_address(self.client)})

    async def wait_for_status(self, node: str, status: str) -> str:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            got = await self.cli("members")
            rows = {line.split()[0]: line.split()[2] for line in got.out.splitlines()[1:]}
            if rows.get(node) == status:
                return got.out
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{node} never became {status}")

    async def test_join_then_members_lists_both_and_leave_makes_it_left(self) -> None:
        got = await self.on_client("join", f"127.0.0.1:{lan_port(self.agent)}")
        self.assertEqual(got.code, 0, got.err)
        self.assertEqual(got.out, "Successfully joined cluster by contacting 1 nodes.\n")
        listing = await self.wait_for_status("c1", "alive")
        self.assertIn(f"127.0.0.1:{lan_port(self.client)}", listing)
        self.assertIn("client", listing)
        got = await self.on_client("leave")
        self.assertEqual((got.code, got.out), (0, "Graceful leave complete\n"))
        await self.wait_for_status("c1", "left")

    async def test_join_that_fails_everywhere_exits_1(self) -> None:
        got = await self.on_client("join", "127.0.0.1:1", "127.0.0.1:2")
        self.assertEqual(got.code, 1)
        self.assertIn("Error joining address '127.0.0.1:1'", got.err)
        self.assertIn("Failed to join any nodes.", got.err)

    async def test_join_needs_an_address(self) -> None:
        got = await self.on_client("join")
        self.assertEqual(got.code, 1)
        self.assertIn("At least one address", got.err)

    async def test_force_leave_of_a_failed_member(self) -> None:
        await self.on_client("join", f"127.0.0.1:{lan_port(self.agent)}")
        await self.wait_for_status("c1", "alive")
        await self.client.stopService()
        await self.wait_for_status("c1", "failed")
        got = await self.cli("force-leave", "c1")
        self.assertEqual((got.code, got.err), (0, ""))
        await self.wait_for_status("c1", "left")
        got = await self.cli("force-leave", "-prune", "c1")
        self.assertEqual(got.code, 0)
        rows = (await self.cli("members")).out.splitlines()[1:]
        self.assertEqual([row.split()[0] for row in rows], ["node1"])
        got = await self.cli("force-leave", "nobody")
        self.assertEqual(got.code, 1)
        self.assertIn("Error force leaving", got.err)


class KeyCommandTests(AgentTestCase):
    async def test_keygen_prints_a_32_byte_key(self) -> None:
        got = await run_cli(["keygen"])
        self.assertEqual(got.code, 0)
        self.assertEqual(len(base64.b64decode(got.out.strip(), validate=True)), 32)
        self.assertNotEqual(got.out, (await run_cli(["keygen"])).out)

    async def test_keyring_list_install_use_remove(self) -> None:
        await self.start(encrypt=KEY)
        got = await self.cli("keyring", "-list")
        self.assertEqual(got.code, 0, got.err)
        self.assertEqual(
            got.out,
            "==> Gathering installed encryption keys...\n\n"
            f"WAN:\n  {KEY} (primary) [1/1]\n\n"
            f"dc1 (LAN):\n  {KEY} (primary) [1/1]\n",
        )
        got = await self.cli("keyring", "-install", NEW_KEY)
        self.assertEqual((got.code, got.out), (0, "==> Installing new gossip encryption key...\n"))
        got = await self.cli("keyring", "-use", NEW_KEY)
        self.assertEqual(got.code, 0)
        got = await self.cli("keyring", "-remove", KEY)
        self.assertEqual(got.code, 0)
        got = await self.cli("keyring", "-list")
        self.assertIn(f"  {NEW_KEY} (primary) [1/1]", got.out)
        self.assertNotIn(KEY, got.out)
        got = await self.cli("keyring", "-list", "-local-only")
        self.assertIn(f"  {NEW_KEY} (primary) [1/1]", got.out)
        got = await self.cli("keyring", "-remove", NEW_KEY)
        self.assertEqual(got.code, 1)
        self.assertIn("Removing the primary key is not allowed", got.err)
        got = await self.cli("keyring", "-use", NEW_KEY, "-local-only")
        self.assertEqual(got.code, 1)
        self.assertIn("-local-only can only be used with -list", got.err)

    async def test_keyring_relay_factor(self) -> None:
        await self.start(encrypt=KEY)
        got = await self.cli("keyring", "-list", "-relay-factor=2")
        self.assertEqual(got.code, 0, got.err)
        self.assertIn(f"dc1 (LAN):\n  {KEY} (primary) [1/1]\n", got.out)
        got = await self.cli("keyring", "-install", NEW_KEY, "-relay-factor", "5")
        self.assertEqual(got.code, 0, got.err)
        for value, reason in (
            ("6", "Relay factor must be in range: [0, 5]"),
            ("-1", "Error parsing relay factor"),
            ("two", "Error parsing relay factor"),
        ):
            got = await self.cli("keyring", "-list", f"-relay-factor={value}")
            self.assertEqual(got.code, 1, value)
            self.assertIn(reason, got.err)

    async def test_keyring_wants_exactly_one_action(self) -> None:
        await self.start(encrypt=KEY)
        for argv in (["keyring"], ["keyring", "-list", "-use", KEY]):
            got = await self.cli(*argv)
            self.assertEqual(got.code, 1)
            self.assertIn("Exactly one of", got.err)

    async def test_keyring_on_an_agent_without_encryption_fails(self) -> None:
        await self.start()
        got = await self.cli("keyring", "-list")
        self.assertEqual(got.code, 1)
        self.assertIn("not enabled", got.err)
