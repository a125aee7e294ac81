"""
The leader's catalog reconciliation: the full pass compared with the catalog,
and when it runs (at once on gaining leadership, then every 60 s), on a
memory reactor whose clock the test moves.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.agent.agent import Agent
from txconsul.agent.reconcile import (
    RECONCILE_INTERVAL,
    reconcile_commands,
    register_command,
)
from txconsul.config import load
from txconsul.gossip.serf import Member, MemberStatus
from txconsul.state.catalog import Catalog

DC = "dc1"


def member(
    name: str, status: MemberStatus = MemberStatus.ALIVE, role: str = "node", **tags: str
) -> Member:
    return Member(name, (f"10.0.0.{len(name)}", 8301), {"role": role, "dc": DC, **tags}, status)


def catalog_of(*members: Member) -> Catalog:
    """A catalog as the leader leaves it once it has registered ``members``."""
    catalog = Catalog(lambda channel: None)
    for i, m in enumerate(members, start=1):
        command = register_command(m, DC, m.status == MemberStatus.ALIVE)
        catalog.register(i, command["Request"])
    return catalog


def kinds(commands: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(name, command["Type"]) for name, command in commands]


class ReconcileCommandsTests(SynchronousTestCase):
    """``reconcile_commands``: only what differs between the members and the catalog."""

    def test_a_catalog_in_step_needs_no_write(self) -> None:
        members = {m.name: m for m in [member("a"), member("b", MemberStatus.FAILED)]}
        catalog = catalog_of(*members.values())
        self.assertEqual(reconcile_commands(members, catalog, "me", DC), [])

    def test_a_member_missing_from_the_catalog_is_registered_with_serf_health(self) -> None:
        members = {"a": member("a"), "s": member("s", role="consul", port="8300")}
        commands = dict(reconcile_commands(members, catalog_of(), "me", DC))
        self.assertEqual(sorted(commands), ["a", "s"])
        a = commands["a"]["Request"]
        self.assertEqual(a["Address"], "10.0.0.1")
        self.assertEqual(
            [(c["CheckID"], c["Status"]) for c in a["Checks"]], [("serfHealth", "passing")]
        )
        self.assertEqual(commands["s"]["Request"]["Service"]["Port"], 8300)

    def test_a_failed_member_gets_its_check_critical_and_keeps_its_node(self) -> None:
        catalog = catalog_of(member("a"))
        members = {"a": member("a", MemberStatus.FAILED)}
        [(name, command)] = reconcile_commands(members, catalog, "me", DC)
        self.assertEqual((name, command["Type"]), ("a", "register"))
        self.assertEqual(command["Request"]["Checks"][0]["Status"], "critical")
        self.assertTrue(command["Request"]["SkipNodeUpdate"])

    def test_a_member_that_left_is_deregistered(self) -> None:
        catalog = catalog_of(member("a"))
        members = {"a": member("a", MemberStatus.LEFT)}
        self.assertEqual(
            kinds(reconcile_commands(members, catalog, "me", DC)), [("a", "deregister")]
        )
        # once gone, nothing more to do
        self.assertEqual(reconcile_commands(members, catalog_of(), "me", DC), [])

    def test_a_node_with_serf_health_that_is_no_member_is_reaped(self) -> None:
        catalog = catalog_of(member("gone"), member("a"))
        members = {"a": member("a")}
        self.assertEqual(
            kinds(reconcile_commands(members, catalog, "me", DC)), [("gone", "deregister")]
        )

    def test_nodes_without_serf_health_and_this_agents_own_node_are_left_alone(self) -> None:
        catalog = catalog_of(member("me"))
        catalog.register(9, {"Node": "external", "Address": "192.0.2.1"})
        self.assertEqual(reconcile_commands({}, catalog, "me", DC), [])

    def test_members_of_other_datacenters_or_roles_are_not_reconciled(self) -> None:
        members = {
            "other-dc": attrs.evolve(member("other-dc"), tags={"role": "node", "dc": "dc2"}),
            "plain-serf": attrs.evolve(member("plain-serf"), tags={}),
        }
        self.assertEqual(reconcile_commands(members, catalog_of(), "me", DC), [])

    def test_a_changed_address_or_server_port_is_written_again(self) -> None:
        catalog = catalog_of(member("a"), member("s", role="consul", port="8300"))
        moved = attrs.evolve(member("a"), address=("10.9.9.9", 8301))
        members = {"a": moved, "s": member("s", role="consul", port="8310")}
        commands = dict(reconcile_commands(members, catalog, "me", DC))
        self.assertEqual(sorted(commands), ["a", "s"])
        self.assertNotIn("SkipNodeUpdate", commands["a"]["Request"])  # the new address goes in

    def test_a_new_node_gets_no_tagged_addresses_from_the_leader(self) -> None:
        # its agent's anti-entropy writes them: the WAN address is not in the gossip
        [(_, command)] = reconcile_commands({"a": member("a")}, catalog_of(), "me", DC)
        self.assertNotIn("TaggedAddresses", command["Request"])
        catalog = catalog_of(member("a"))
        self.assertEqual(catalog.nodes["a"]["TaggedAddresses"], {})

    def test_a_moved_node_keeps_the_tagged_addresses_and_meta_its_agent_wrote(self) -> None:
        catalog = catalog_of(member("a"))
        tagged = {"lan": "10.0.0.1", "wan": "198.51.100.1"}
        catalog.register(
            9,
            {"Node": "a", "Address": "10.0.0.1", "TaggedAddresses": tagged, "NodeMeta": {"r": "1"}},
        )
        moved = attrs.evolve(member("a"), address=("10.9.9.9", 8301))
        [(_, command)] = reconcile_commands({"a": moved}, catalog, "me", DC)
        catalog.register(10, command["Request"])
        node = catalog.nodes["a"]
        self.assertEqual(
            (node["Address"], node["TaggedAddresses"], node["Meta"]),
            ("10.9.9.9", tagged, {"r": "1"}),
        )
        # an alive member at the address the catalog holds leaves the node to its agent
        catalog.register(11, {"Node": "a", "Address": "10.9.9.9", "TaggedAddresses": tagged})
        self.assertEqual(reconcile_commands({"a": moved}, catalog, "me", DC), [])
        failed = attrs.evolve(moved, status=MemberStatus.FAILED)
        [(_, command)] = reconcile_commands({"a": failed}, catalog, "me", DC)
        self.assertTrue(command["Request"]["SkipNodeUpdate"])


@attrs.define
class FakeSerf:
    members: dict[str, Member]


@attrs.define
class FakePool:
    """Just what the reconciliation reads of a LAN pool."""

    serf: FakeSerf
    wan: bool = False


class PeriodicReconcileTests(SynchronousTestCase):
    """A dev agent (a leader of one) on a memory reactor, with a LAN pool the test fills."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = load({"dev": True, "node_name": "me"}, (), ())
        self.agent = Agent(config, self.reactor, random.Random(0))
        self.agent.startService()
        self.addCleanup(self.agent.stopService)
        self.successResultOf(self.agent.when_ready())
        self.pool = FakePool(FakeSerf({"a": member("a"), "b": member("b")}))
        self.agent.membership.lan = self.pool  # type: ignore[assignment]
        self.addCleanup(setattr, self.agent.membership, "lan", None)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.agent.store.catalog.nodes)

    def test_the_leader_reconciles_at_once_then_every_interval(self) -> None:
        self.reactor.advance(0.2)  # the first server tick: leadership gained
        self.assertEqual(self.nodes, ["a", "b", "me"])
        # members change without an event reaching the reconciler
        self.pool.serf.members = {"b": member("b", MemberStatus.FAILED), "c": member("c")}
        self.reactor.advance(RECONCILE_INTERVAL - 1)
        self.assertEqual(self.nodes, ["a", "b", "me"])
        self.reactor.advance(1)
        self.assertEqual(self.nodes, ["b", "c", "me"])
        checks = self.agent.store.catalog.checks
        self.assertEqual(checks["b"]["serfHealth"]["Status"], "critical")
        self.assertEqual(checks["c"]["serfHealth"]["Status"], "passing")
        self.assertEqual(checks["me"]["serfHealth"]["Status"], "passing")

    def test_a_pass_over_a_catalog_in_step_writes_nothing(self) -> None:
        self.reactor.advance(0.2)
        servers = self.agent.servers
        assert servers is not None and servers.node is not None
        last = servers.node.core.last_index
        self.reactor.advance(RECONCILE_INTERVAL)
        self.reactor.advance(RECONCILE_INTERVAL)
        self.assertEqual(servers.node.core.last_index, last)  # not one Raft entry

    def test_a_node_registered_with_serf_health_but_no_member_is_reaped(self) -> None:
        self.reactor.advance(0.2)
        request = register_command(member("ghost"), DC, True)["Request"]
        self.successResultOf(self.agent.consensus.apply({"Type": "register", "Request": request}))
        self.assertIn("ghost", self.nodes)
        self.reactor.advance(RECONCILE_INTERVAL)
        self.assertNotIn("ghost", self.nodes)
