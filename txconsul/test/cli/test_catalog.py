"""``txconsul catalog`` against a real in-process agent."""

from __future__ import annotations

import json

from txconsul.test.cli.support import AgentTestCase

NODE2_ID = "0f7d2a1c-3b4e-4f5a-8b6c-7d8e9fa0b1c2"


class CatalogTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()
        registration = {
            "ID": NODE2_ID,
            "Node": "node2",
            "Address": "10.0.0.2",
            "TaggedAddresses": {"lan": "10.0.0.2", "wan": "198.51.100.2"},
            "NodeMeta": {"rack": "r1"},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["v2", "primary"], "Port": 80},
        }
        await self.api("PUT", "/v1/catalog/register", json.dumps(registration).encode())
        self.node1_id = self.agent.node_id

    async def test_services_are_listed_by_name(self) -> None:
        got = await self.cli("catalog", "services")
        self.assertEqual((got.code, got.out, got.err), (0, "consul\nweb\n", ""))

    async def test_services_with_tags_show_a_tags_column(self) -> None:
        got = await self.cli("catalog", "services", "-tags")
        self.assertEqual(got.out, "consul\nweb     primary,v2\n")

    async def test_services_of_one_node(self) -> None:
        got = await self.cli("catalog", "services", "-node=node2")
        self.assertEqual(got.out, "web\n")

    async def test_services_of_an_unknown_node_fail(self) -> None:
        got = await self.cli("catalog", "services", "-node", "ghost")
        self.assertEqual(got.code, 1)
        self.assertIn("ghost", got.err)

    async def test_nodes_show_name_short_id_address_and_dc(self) -> None:
        got = await self.cli("catalog", "nodes")
        self.assertEqual(got.code, 0)
        self.assertEqual(
            got.out,
            "Node   ID        Address    DC\n"
            f"node1  {self.node1_id[:8]}  127.0.0.1  dc1\n"
            f"node2  {NODE2_ID[:8]}  10.0.0.2   dc1\n",
        )

    async def test_detailed_nodes_show_full_ids_addresses_and_meta(self) -> None:
        got = await self.cli("catalog", "nodes", "-detailed")
        header, _, node2 = got.out.splitlines()
        self.assertEqual(header.split(), ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"])
        self.assertTrue(node2.startswith(f"node2  {NODE2_ID}  10.0.0.2   dc1"), node2)
        self.assertIn("lan=10.0.0.2, wan=198.51.100.2", node2)
        self.assertTrue(node2.endswith("rack=r1"), node2)

    async def test_nodes_providing_a_service(self) -> None:
        got = await self.cli("catalog", "nodes", "-service=web")
        self.assertEqual(got.out.splitlines()[1:], [f"node2  {NODE2_ID[:8]}  10.0.0.2  dc1"])

    async def test_nodes_filtered_by_metadata(self) -> None:
        got = await self.cli("catalog", "nodes", "-node-meta", "rack=r1")
        self.assertEqual([line.split()[0] for line in got.out.splitlines()], ["Node", "node2"])

    async def test_no_matching_nodes_says_so(self) -> None:
        got = await self.cli("catalog", "nodes", "-service=nothing")
        self.assertEqual((got.code, got.out), (0, ""))
        self.assertIn("No nodes match", got.err)

    async def test_datacenters(self) -> None:
        got = await self.cli("catalog", "datacenters")
        self.assertEqual(got.out, "dc1\n")

    async def test_catalog_without_a_subcommand_is_a_usage_error(self) -> None:
        got = await self.cli("catalog")
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertIn("Usage: txconsul catalog <subcommand>", got.err)
