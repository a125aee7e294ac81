# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
A server's LAN members turned into catalog writes (DESIGN.md, "Health").

Each serf member event of the LAN pool becomes one command through the
agent's consensus: an alive member is registered with a passing
``serfHealth`` check, a failed one keeps its node with that check critical, a
member that left or was reaped is deregistered. Only the leader writes, and
only about members of its own datacenter; the agent's own node is left to the
agent.

Events can be missed (a leader elected after them, a write lost with a
leadership change), so the leader also runs a full pass, as Consul does: when
it gains leadership and every ``RECONCILE_INTERVAL`` seconds after
(``txconsul.agent.servers``). ``reconcile_commands`` compares every member
with the catalog and returns only the writes that change something, plus a
deregistration for each node of the catalog that has a ``serfHealth`` check
but is no longer a member (reaped while no leader was listening).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.gossip.serf import Member, MemberEvent, MemberStatus

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent
    from txconsul.agent.membership import Event, SerfPool
    from txconsul.state.catalog import Catalog

#: seconds between two full passes of the leader (Consul's ``reconcile_interval``)
RECONCILE_INTERVAL = 60.0
SERF_HEALTH = "serfHealth"

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


def register_command(
    member: Member, datacenter: str, passing: bool, known: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """
    The catalog registration of a LAN member, with its serfHealth check.

    ``known`` is the member's node as the catalog holds it. The node's tagged
    addresses and meta are its own agent's (anti-entropy writes them; a WAN
    address is nowhere in the gossip), so, as Consul's leader does, this keeps
    the node untouched while its address is the member's, carries them over
    when the address changed, and writes none for a node the catalog lacks.
    """
    addr = member.address[0]
    check = (
        serf_health("passing", ALIVE_OUTPUT) if passing else serf_health("critical", FAILED_OUTPUT)
    )
    request: dict[str, Any] = {
        "ID": member.tags.get("id", ""),
        "Node": member.name,
        "Address": addr,
        "Datacenter": datacenter,
        "Checks": [check],
        "Service": None,
    }
    if known is not None and known.get("Address") == addr:
        request["SkipNodeUpdate"] = True
    elif known is not None:
        request["TaggedAddresses"] = dict(known.get("TaggedAddresses") or {})
        request["NodeMeta"] = dict(known.get("Meta") or {})
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


def reconciled(member: Member, datacenter: str) -> bool:
    """Whether the leader keeps ``member`` in the catalog (an agent of this datacenter)."""
    return member.tags.get("dc", datacenter) == datacenter and member.tags.get("role") in (
        "consul",
        "node",
    )


def _in_step(member: Member, request: dict[str, Any], catalog: Catalog) -> bool:
    """Whether the catalog already holds what registering ``request`` would write."""
    name = member.name
    node = catalog.nodes.get(name)
    if node is None or node.get("Address") != request["Address"]:
        return False
    if request["ID"] and node.get("ID") != request["ID"]:
        return False
    check = request["Checks"][0]
    known = catalog.checks.get(name, {}).get(SERF_HEALTH)
    if known is None or (known.get("Status"), known.get("Output")) != (
        check["Status"],
        check["Output"],
    ):
        return False
    service = request["Service"]
    if service is not None:
        row = catalog.services.get(name, {}).get(service["ID"])
        if row is None or row.get("Port") != service["Port"]:
            return False
    return True


def reconcile_commands(
    members: Mapping[str, Member], catalog: Catalog, me: str, datacenter: str
) -> list[tuple[str, dict[str, Any]]]:
    """
    A full pass: ``(node name, command)`` for every difference between the
    LAN members and the catalog. An alive member gets its node with a passing
    ``serfHealth`` (a server its ``consul`` service too), a failed one its
    check critical, one that left is deregistered; a node of the catalog with
    a ``serfHealth`` check that no member matches any more is deregistered.
    ``me`` (this agent's node) is left to the agent.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(members):
        member = members[name]
        if name == me or not reconciled(member, datacenter):
            continue
        if member.status in (MemberStatus.ALIVE, MemberStatus.FAILED):
            command = register_command(
                member, datacenter, member.status == MemberStatus.ALIVE, catalog.nodes.get(name)
            )
            if not _in_step(member, command["Request"], catalog):
                out.append((name, command))
        elif member.status == MemberStatus.LEFT and name in catalog.nodes:
            out.append((name, deregister_command(name, datacenter)))
    for name in sorted(catalog.nodes):
        if name == me or name in members:
            continue
        if SERF_HEALTH in catalog.checks.get(name, {}):
            out.append((name, deregister_command(name, datacenter)))
    return out


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
        if not reconciled(member, c.datacenter):
            return
        if member.status in (MemberStatus.ALIVE, MemberStatus.FAILED):
            alive = member.status == MemberStatus.ALIVE
            known = self._agent.store.catalog.nodes.get(name)
            self._apply(register_command(member, c.datacenter, alive, known), name)
        elif member.status == MemberStatus.LEFT:
            self._apply(deregister_command(name, c.datacenter), name)

    def reconcile_all(self, members: Mapping[str, Member]) -> int:
        """The full pass (leader only): applies what differs; how many writes it made."""
        if not self._agent.consensus.is_leader():
            return 0
        c = self._agent.config
        commands = reconcile_commands(members, self._agent.store.catalog, c.node_name, c.datacenter)
        for name, command in commands:
            if command["Type"] == "deregister" and name not in members:
                self.log.info("reaping node {name}: no longer a LAN member", name=name)
            self._apply(command, name)
        return len(commands)

    def _apply(self, command: dict[str, Any], name: str) -> None:
        d: Deferred[Any] = self._agent.consensus.apply(command)

        def failed(f: Failure) -> None:
            self.log.failure("catalog update for member {name} failed", f, name=name)

        d.addErrback(failed)
