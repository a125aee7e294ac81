# -*- test-case-name: txconsul.test.cli.test_catalog -*-
"""
``txconsul catalog services|nodes|datacenters``: what the catalog holds, as
tables in the shape ``consul catalog`` prints.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, HTTPCommand, Param
from txconsul.cli.context import Context, columns, pairs
from txconsul.cli.flags import Command


class _NodeMetaMixin(Command):
    def __init__(self) -> None:
        super().__init__()
        self["node-meta"] = []

    def opt_node_meta(self, pair: str) -> None:
        """Only nodes with this metadata, as key=value (repeatable)."""
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise usage.UsageError(f"-node-meta wants key=value, not {pair!r}")
        self["node-meta"].append(f"{key}:{value}")

    def meta_params(self) -> list[Param]:
        return [("node-meta", m) for m in self["node-meta"]]


class CatalogServices(_NodeMetaMixin, HTTPCommand):
    synopsis = "txconsul catalog services [options]"
    longdesc = "List the services registered in the catalog, sorted by name."
    optFlags = [["tags", None, "Show each service's tags."]]
    optParameters = [["node", None, None, "Only services on this node."]]
    error_prefix = "Error listing services"

    async def call(self, ctx: Context, client: AgentClient) -> int:
        services: dict[str, list[str]] = {}
        if self["node"]:
            found = await client.get_json("/v1/catalog/node/" + self["node"], self.meta_params())
            if not found:
                ctx.err(f"Error! No node exists with the name {self['node']}")
                return 1
            for svc in found.get("Services", {}).values():
                tags = services.setdefault(svc["Service"], [])
                tags.extend(t for t in svc.get("Tags") or [] if t not in tags)
        else:
            services = await client.get_json("/v1/catalog/services", self.meta_params())
        if not services:
            ctx.err("No services match the given query - try expanding your search.")
            return 0
        names = sorted(services)
        if self["tags"]:
            rows = [[n, ",".join(sorted(services[n] or []))] for n in names]
            for line in columns(rows):
                ctx.out(line)
        else:
            for name in names:
                ctx.out(name)
        return 0


def _node_rows(nodes: list[dict[str, Any]], detailed: bool) -> list[list[str]]:
    header = ["Node", "ID", "Address", "DC"]
    if detailed:
        header += ["TaggedAddresses", "Meta"]
    rows = [header]
    for node in nodes:
        node_id = node.get("ID") or ""
        row = [
            node["Node"],
            node_id if detailed else node_id[:8],
            node["Address"],
            node.get("Datacenter", ""),
        ]
        if detailed:
            row += [pairs(node.get("TaggedAddresses") or {}), pairs(node.get("Meta") or {})]
        rows.append(row)
    return rows


class CatalogNodes(_NodeMetaMixin, HTTPCommand):
    synopsis = "txconsul catalog nodes [options]"
    longdesc = "List the nodes in the catalog: name, short ID, address and datacenter."
    optFlags = [["detailed", None, "Show full node IDs, tagged addresses and metadata."]]
    optParameters = [
        ["service", None, None, "Only nodes that provide this service."],
        [
            "near",
            None,
            None,
            "Sort by estimated round-trip time to this node ('_agent': this agent).",
        ],
    ]
    error_prefix = "Error listing nodes"

    async def call(self, ctx: Context, client: AgentClient) -> int:
        params = self.meta_params()
        if self["near"]:
            params.append(("near", self["near"]))
        if self["service"]:
            instances = await client.get_json("/v1/catalog/service/" + self["service"], params)
            nodes: list[dict[str, Any]] = []
            seen: set[str] = set()
            for inst in instances:
                if inst["Node"] not in seen:
                    seen.add(inst["Node"])
                    nodes.append(dict(inst, Meta=inst.get("NodeMeta") or {}))
        else:
            nodes = await client.get_json("/v1/catalog/nodes", params)
        if not nodes:
            ctx.err("No nodes match the given query - try expanding your search.")
            return 0
        for line in columns(_node_rows(nodes, self["detailed"])):
            ctx.out(line)
        return 0


class CatalogDatacenters(HTTPCommand):
    synopsis = "txconsul catalog datacenters [options]"
    longdesc = "List the datacenters this agent knows of."
    error_prefix = "Error listing datacenters"

    async def call(self, ctx: Context, client: AgentClient) -> int:
        for dc in await client.get_json("/v1/catalog/datacenters"):
            ctx.out(dc)
        return 0


class Catalog(Command):
    synopsis = "txconsul catalog <subcommand> [options]"
    longdesc = "Inspect the catalog: services, nodes and datacenters."
    subCommands = [
        ["services", None, CatalogServices, "List services."],
        ["nodes", None, CatalogNodes, "List nodes."],
        ["datacenters", None, CatalogDatacenters, "List datacenters."],
    ]
