# -*- test-case-name: txconsul.test.cli.test_members -*-
"""
``txconsul members``: the gossip members this agent sees, from
``/v1/agent/members``, in the columns ``consul members`` prints.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, HTTPCommand, Param
from txconsul.cli.context import Context, columns, pairs

STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}
ROLE = {"consul": "server", "node": "client"}


def member_address(member: dict[str, Any]) -> str:
    addr = str(member.get("Addr", ""))
    if ":" in addr:
        addr = f"[{addr}]"
    return f"{addr}:{member.get('Port', 0)}"


def member_status(member: dict[str, Any]) -> str:
    return STATUS.get(member.get("Status", -1), "unknown")


class Members(HTTPCommand):
    synopsis = "txconsul members [options]"
    longdesc = "List the members of the gossip pool this agent belongs to."
    optFlags = [
        ["detailed", None, "Show every member's tags instead of the summary columns."],
        ["wan", None, "List the WAN pool (servers of all datacenters)."],
    ]
    optParameters = [
        ["status", None, ".*", "Only members whose status matches this regular expression."]
    ]
    error_prefix = "Error retrieving members"

    def postOptions(self) -> None:
        try:
            self.status_re = re.compile(self["status"])
        except re.error as e:
            raise usage.UsageError(f"Failed to compile status regexp: {e}") from None

    async def call(self, ctx: Context, client: AgentClient) -> int:
        params: list[Param] = [("wan", None)] if self["wan"] else []
        members = await client.get_json("/v1/agent/members", params)
        members = [m for m in members if self.status_re.search(member_status(m))]
        if not members:
            # Consul prints nothing and fails when the filter leaves nobody.
            return 2
        members.sort(key=lambda m: str(m.get("Name", "")))
        if self["detailed"]:
            rows = [["Node", "Address", "Status", "Tags"]]
            for m in members:
                rows.append(
                    [
                        m["Name"],
                        member_address(m),
                        member_status(m),
                        pairs(m.get("Tags") or {}, ","),
                    ]
                )
        else:
            rows = [["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]]
            for m in members:
                tags = m.get("Tags") or {}
                rows.append(
                    [
                        m["Name"],
                        member_address(m),
                        member_status(m),
                        ROLE.get(tags.get("role", ""), "unknown"),
                        tags.get("build", "").split(":", 1)[0],
                        tags.get("vsn", ""),
                        tags.get("dc", ""),
                    ]
                )
        for line in columns(rows):
            ctx.out(line)
        return 0
