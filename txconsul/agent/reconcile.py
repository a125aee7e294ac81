# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
A server's LAN members turned into catalog writes (DESIGN.md, "Health").

Each serf member event of the LAN pool becomes one command through the
agent's consensus: an alive member is registered with a passing
``serfHealth`` check, a failed one keeps its node with that check critical, a
member that left or was reaped is deregistered. Only the leader writes, and
only about members of its own datacenter; the agent's own node is left to the
agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.gossip.serf import Member, MemberEvent, MemberStatus

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent
    from txconsul.agent.membership import Event, SerfPool

ALIVE_OUTPUT = "Agent alive and reachable"
FAILED_OUTPUT = "Agent not live or unreachable"


def serf_health(status: str, output: str) -> dict[str, Any]:
    return {
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": status,
        "Output": output,
        "ServiceID": "",
        "Notes": "",
    }


def register_command(member: Member, datacenter: str, passing: bool) -> dict[str, Any]:
    """The catalog registration of a LAN member, with its serfHealth check."""
    addr = member.address[0]
    check = (
        serf_health("passing", ALIVE_OUTPUT) if passing else serf_health("critical", FAILED_OUTPUT)
    )
    request: dict[str, Any] = {
        "ID": member.tags.get("id", ""),
        "Node": member.name,
        "Address": addr,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
        "Checks": [check],
        "Service": None,
    }
    if member.tags.get("role") == "consul" and passing:
        port = member.tags.get("port", "")
        request["Service"] = {
            "ID": "consul",
            "Service": "consul",
            "Tags": [],
            "Port": int(port) if port.isdigit() else 8300,
        }
    return {"Type": "register", "Request": request}


def deregister_command(name: str, datacenter: str) -> dict[str, Any]:
    return {"Type": "deregister", "Request": {"Node": name, "Datacenter": datacenter}}


class Reconciler:
    """Subscribe it to the agent's ``Membership``; it writes through ``agent.consensus``."""

    log = Logger()

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def __call__(self, pool: SerfPool, events: list[Event]) -> None:
        if pool.wan or not self._agent.consensus.is_leader():
            return
        for event in events:
            if isinstance(event, MemberEvent):
                self.reconcile(pool, event)

    def reconcile(self, pool: SerfPool, event: MemberEvent) -> None:
        c = self._agent.config
        name = event.name
        if name == c.node_name:
            return
        member = pool.serf.members.get(name)
        if event.kind == "member-reap" or member is None:
            self._apply(deregister_command(name, c.datacenter), name)
            return
        if member.tags.get("dc", c.datacenter) != c.datacenter:
            return
        if member.tags.get("role") not in ("consul", "node"):
            return
        if member.status in (MemberStatus.ALIVE, MemberStatus.FAILED):
            command = register_command(member, c.datacenter, member.status == MemberStatus.ALIVE)
            known = self._agent.store.catalog.nodes.get(name)
            if known is not None and known["Address"] == member.address[0]:
                # the node's own agent keeps its entry (meta included) by anti-entropy
                command["Request"]["SkipNodeUpdate"] = True
            self._apply(command, name)
        elif member.status == MemberStatus.LEFT:
            self._apply(deregister_command(name, c.datacenter), name)

    def _apply(self, command: dict[str, Any], name: str) -> None:
        d: Deferred[Any] = self._agent.consensus.apply(command)

        def failed(f: Failure) -> None:
            self.log.failure("catalog update for member {name} failed", f, name=name)

        d.addErrback(failed)
