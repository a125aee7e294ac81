# -*- test-case-name: txconsul.test.cli.test_join -*-
"""
``txconsul keygen`` and ``txconsul keyring``: gossip encryption keys.

``keygen`` needs no agent; ``keyring`` goes through ``/v1/operator/keyring``,
which asks every member of the agent's pools through serf's key queries.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

from twisted.python import usage

from txconsul.cli.client import AgentClient, HTTPCommand
from txconsul.cli.context import Context
from txconsul.cli.flags import Command


class Keygen(Command):
    synopsis = "txconsul keygen"
    longdesc = "Print a new random 32-byte gossip encryption key, base64-encoded."

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("keygen takes no arguments")

    async def execute(self, ctx: Context) -> int:
        ctx.out(base64.b64encode(os.urandom(32)).decode("ascii"))
        return 0


#: Consul's bound on ``-relay-factor`` (the agent checks it again)
MAX_RELAY_FACTOR = 5


class Keyring(HTTPCommand):
    synopsis = "txconsul keyring [options] -list | -install KEY | -use KEY | -remove KEY"
    longdesc = (
        "List, install, make primary or remove the gossip encryption keys of every "
        "member of the pools."
    )
    optFlags = [
        ["list", None, "List the installed keys."],
        ["local-only", None, "With -list: only this agent's keys, asking nobody."],
    ]
    optParameters = [
        ["install", None, None, "Install a new key (base64)."],
        ["use", None, None, "Make an installed key the primary one."],
        ["remove", None, None, "Remove a key that is not the primary one."],
        [
            "relay-factor",
            None,
            "0",
            "Each member also sends its answer through this many (0 to 5) random other members.",
        ],
    ]
    error_prefix = "Error"

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError("keyring takes no arguments")

    def postOptions(self) -> None:
        chosen = [n for n in ("install", "use", "remove") if self[n] is not None]
        if self["list"]:
            chosen.append("list")
        if len(chosen) != 1:
            raise usage.UsageError("Exactly one of -list, -install, -use or -remove is required")
        self.action = chosen[0]
        if self["local-only"] and self.action != "list":
            raise usage.UsageError("-local-only can only be used with -list")
        text = self["relay-factor"]
        if not re.fullmatch(r"[0-9]{1,3}", text):
            raise usage.UsageError(f"Error parsing relay factor: {text!r} is not a number")
        self.relay_factor = int(text)
        if self.relay_factor > MAX_RELAY_FACTOR:
            raise usage.UsageError(
                f"Error parsing relay factor: Relay factor must be in range: [0, {MAX_RELAY_FACTOR}]"
            )
        self.params = [("relay-factor", str(self.relay_factor))] if self.relay_factor else []

    async def call(self, ctx: Context, client: AgentClient) -> int:
        if self.action == "list":
            ctx.out("==> Gathering installed encryption keys...")
            params = [("local-only", "true")] if self["local-only"] else []
            params += self.params
            pools: list[dict[str, Any]] = await client.get_json("/v1/operator/keyring", params)
            for pool in pools:
                ctx.out("")
                ctx.out("WAN:" if pool.get("WAN") else f"{pool.get('Datacenter', '')} (LAN):")
                total = pool.get("NumNodes", 0)
                primary = pool.get("PrimaryKeys") or {}
                for key, count in sorted((pool.get("Keys") or {}).items()):
                    mark = " (primary)" if key in primary else ""
                    ctx.out(f"  {key}{mark} [{count}/{total}]")
            return 0
        verbs = {
            "install": ("POST", "Installing new gossip encryption key..."),
            "use": ("PUT", "Changing primary gossip encryption key..."),
            "remove": ("DELETE", "Removing gossip encryption key..."),
        }
        method, what = verbs[self.action]
        ctx.out(f"==> {what}")
        body = json.dumps({"Key": self[self.action]}).encode()
        await client.request(method, "/v1/operator/keyring", self.params, body=body)
        return 0
