"""``txconsul members`` against a real in-process agent."""

from __future__ import annotations

from txconsul.test.cli.support import AgentTestCase


class MembersTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()
        member = self.agent.member()
        self.member_address = f"{member['Addr']}:{member['Port']}"

    async def test_members_table(self) -> None:
        got = await self.cli("members")
        self.assertEqual(got.code, 0)
        header, row = got.out.splitlines()
        self.assertEqual(
            header.split(), ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
        )
        self.assertEqual(
            row.split(), ["node1", self.member_address, "alive", "server", "1.17.0", "2", "dc1"]
        )
        self.assertEqual(header.index("Address"), row.index(self.member_address))

    async def test_detailed_members_show_tags(self) -> None:
        got = await self.cli("members", "-detailed")
        header, row = got.out.splitlines()
        self.assertEqual(header.split(), ["Node", "Address", "Status", "Tags"])
        self.assertEqual(row.split()[:3], ["node1", self.member_address, "alive"])
        tags = dict(pair.split("=", 1) for pair in row.split()[-1].split(","))
        self.assertEqual(tags["role"], "consul")
        self.assertEqual(tags["id"], self.agent.node_id)

    async def test_status_filter_that_matches_nobody_exits_2(self) -> None:
        got = await self.cli("members", "-status=failed")
        self.assertEqual((got.code, got.out, got.err), (2, "", ""))
        alive = await self.cli("members", "-status=al")
        self.assertEqual(len(alive.out.splitlines()), 2)

    async def test_bad_status_regexp_is_a_usage_error(self) -> None:
        got = await self.cli("members", "-status=(")
        self.assertEqual(got.code, 1)
        self.assertIn("Failed to compile status regexp", got.err)
