# -*- test-case-name: txconsul.test.cli.test_agentops -*-
"""
``txconsul reload`` and ``txconsul maint``: act on the local agent.

``reload`` makes the agent read its config files again (as SIGHUP does);
``maint`` puts the node, or one service, in maintenance mode and out again.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, HTTPCommand, Param
from txconsul.cli.context import Context


class Reload(HTTPCommand):
    synopsis = "txconsul reload [options]"
    longdesc = "Make the agent read its config files again (as SIGHUP does)."
    error_prefix = "Error reloading"

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("reload takes no arguments")

    async def call(self, ctx: Context, client: AgentClient) -> int:
        await client.request("PUT", "/v1/agent/reload")
        ctx.out("Configuration reload triggered")
        return 0


class Maint(HTTPCommand):
    synopsis = "txconsul maint [-enable|-disable] [-service ID] [-reason TEXT]"
    longdesc = (
        "Put the node (or one service with -service) in maintenance mode, which takes it out "
        "of DNS and of ?passing health queries; with neither flag, list what is in maintenance."
    )
    optFlags = [
        ["enable", None, "Enable maintenance mode."],
        ["disable", None, "Disable maintenance mode."],
    ]
    optParameters = [
        ["service", None, None, "The ID of a service to act on instead of the node."],
        ["reason", None, "", "Why (shown as the maintenance check's notes)."],
    ]
    error_prefix = "Error toggling maintenance mode"

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("maint takes no arguments")

    def postOptions(self) -> None:
        if self["enable"] and self["disable"]:
            raise usage.UsageError("Only one of -enable or -disable may be provided")
        if not (self["enable"] or self["disable"]) and (self["service"] or self["reason"]):
            raise usage.UsageError("-service and -reason need -enable or -disable")

    async def call(self, ctx: Context, client: AgentClient) -> int:
        if not (self["enable"] or self["disable"]):
            return await self._list(ctx, client)
        enable = "true" if self["enable"] else "false"
        params: list[Param] = [("enable", enable)]
        if self["reason"]:
            params.append(("reason", self["reason"]))
        if self["service"]:
            path = "/v1/agent/service/maintenance/" + self["service"]
            what = f"service {self['service']!r}"
        else:
            path, what = "/v1/agent/maintenance", "node"
        await client.request("PUT", path, params)
        ctx.out(
            f"{'Maintenance mode enabled' if self['enable'] else 'Maintenance mode disabled'} for {what}"
        )
        return 0

    async def _list(self, ctx: Context, client: AgentClient) -> int:
        checks: dict[str, Any] = await client.get_json("/v1/agent/checks")
        for cid in sorted(checks):
            check = checks[cid]
            if cid == "_node_maintenance":
                ctx.out("Node:")
            elif cid.startswith("_service_maintenance:"):
                ctx.out(f"Service: {check.get('ServiceID', '')}")
            else:
                continue
            ctx.out(f"  Reason: {check.get('Notes', '')}")
        return 0
