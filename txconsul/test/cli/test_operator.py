"""``txconsul operator raft`` against a real in-process agent."""

from __future__ import annotations

from txconsul.test.cli.support import AgentTestCase


class OperatorRaftTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()

    async def test_list_peers_shows_this_server_leading(self) -> None:
        got = await self.cli("operator", "raft", "list-peers")
        self.assertEqual(got.code, 0, got.err)
        header, row = got.out.splitlines()
        self.assertEqual(
            header.split(), ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
        )
        fields = row.split()
        self.assertEqual(fields[0], "node1")
        self.assertIn("leader", fields)
        self.assertIn("true", fields)

    async def test_remove_peer_needs_an_address(self) -> None:
        got = await self.cli("operator", "raft", "remove-peer")
        self.assertEqual(got.code, 1)
        self.assertIn("-address", got.err)

    async def test_removing_an_unknown_peer_fails_plainly(self) -> None:
        got = await self.cli("operator", "raft", "remove-peer", "-address=10.9.9.9:8300")
        self.assertEqual(got.code, 1)
        self.assertIn("Error removing peer", got.err)
