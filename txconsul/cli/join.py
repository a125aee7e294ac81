# -*- test-case-name: txconsul.test.cli.test_join -*-
"""
``txconsul join``, ``leave`` and ``force-leave``: the agent's gossip pools,
through ``/v1/agent/join``, ``/v1/agent/leave`` and ``/v1/agent/force-leave``.
"""

from __future__ import annotations

from twisted.python import usage

from txconsul.cli.client import AgentClient, AgentError, HTTPCommand, Param
from txconsul.cli.context import Context


class Join(HTTPCommand):
    synopsis = "txconsul join [options] ADDRESS..."
    longdesc = "Tell the agent to join a pool through one or more agents already in it."
    optFlags = [["wan", None, "Join the WAN pool (servers only)."]]
    error_prefix = "Error joining the cluster"

    def parseArgs(self, *addresses: str) -> None:
        if not addresses:
            raise usage.UsageError("At least one address to join must be specified.")
        self.addresses = list(addresses)

    async def call(self, ctx: Context, client: AgentClient) -> int:
        params: list[Param] = [("wan", None)] if self["wan"] else []
        joined = 0
        for address in self.addresses:
            try:
                await client.request("PUT", "/v1/agent/join/" + address, params)
            except AgentError as e:
                ctx.err(f"Error joining address '{address}': {e.reason}")
                continue
            joined += 1
        if not joined:
            ctx.err("Failed to join any nodes.")
            return 1
        ctx.out(f"Successfully joined cluster by contacting {joined} nodes.")
        return 0


class Leave(HTTPCommand):
    synopsis = "txconsul leave [options]"
    longdesc = "Make the agent leave its pools gracefully and shut down."
    error_prefix = "Error leaving"

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("leave takes no arguments")

    async def call(self, ctx: Context, client: AgentClient) -> int:
        await client.request("PUT", "/v1/agent/leave")
        ctx.out("Graceful leave complete")
        return 0


class ForceLeave(HTTPCommand):
    synopsis = "txconsul force-leave [options] NODE"
    longdesc = (
        "Mark a failed member as left, so the pool stops trying to reach it and the "
        "catalog drops its node; -prune also erases it from every member's list at once."
    )
    optFlags = [
        ["prune", None, "Erase the member from every member list instead of keeping it as left."],
        ["wan", None, "Act on the WAN pool (the node name is then NODE.DC)."],
    ]
    error_prefix = "Error force leaving"

    def parseArgs(self, *args: str) -> None:
        if len(args) != 1:
            raise usage.UsageError("A single node name must be specified to force leave.")
        self.node = args[0]

    async def call(self, ctx: Context, client: AgentClient) -> int:
        params: list[Param] = []
        if self["prune"]:
            params.append(("prune", None))
        if self["wan"]:
            params.append(("wan", None))
        await client.request("PUT", "/v1/agent/force-leave/" + self.node, params)
        return 0
