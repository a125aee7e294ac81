# -*- test-case-name: txconsul.test.cli.test_operator -*-
"""
``txconsul operator raft list-peers|remove-peer``: the Raft configuration of
the servers, from ``/v1/operator/raft/configuration``.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, HTTPCommand
from txconsul.cli.context import Context, columns
from txconsul.cli.flags import Command


class RaftListPeers(HTTPCommand):
    synopsis = "txconsul operator raft list-peers [options]"
    longdesc = "List the servers of the Raft configuration and which one leads."
    error_prefix = "Error getting peers"

    async def call(self, ctx: Context, client: AgentClient) -> int:
        config: dict[str, Any] = await client.get_json("/v1/operator/raft/configuration")
        rows = [["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]]
        for server in config.get("Servers") or []:
            rows.append(
                [
                    str(server.get("Node", "")),
                    str(server.get("ID", "")),
                    str(server.get("Address", "")),
                    "leader" if server.get("Leader") else "follower",
                    str(bool(server.get("Voter"))).lower(),
                    str(server.get("ProtocolVersion", "")),
                ]
            )
        for line in columns(rows):
            ctx.out(line)
        return 0


class RaftRemovePeer(HTTPCommand):
    synopsis = "txconsul operator raft remove-peer -address=IP:PORT [options]"
    longdesc = "Remove a server from the Raft configuration (for a server that is gone for good)."
    optParameters = [["address", None, None, "The server's RPC address, ip:port."]]
    error_prefix = "Error removing peer"

    def postOptions(self) -> None:
        if not self["address"]:
            raise usage.UsageError("-address is required")

    async def call(self, ctx: Context, client: AgentClient) -> int:
        await client.request("DELETE", "/v1/operator/raft/peer", [("address", self["address"])])
        ctx.out(f'Removed peer with address "{self["address"]}"')
        return 0


class OperatorRaft(Command):
    synopsis = "txconsul operator raft <subcommand> [options]"
    longdesc = "Inspect and change the Raft configuration of the servers."
    subCommands = [
        ["list-peers", None, RaftListPeers, "List the Raft peers."],
        ["remove-peer", None, RaftRemovePeer, "Remove a Raft peer."],
    ]


class Operator(Command):
    synopsis = "txconsul operator <subcommand> [options]"
    longdesc = "Operator commands for the servers of the cluster."
    subCommands = [["raft", None, OperatorRaft, "Raft configuration."]]
