# -*- test-case-name: txconsul.test.agent.test_antientropy -*-
"""
Anti-entropy: what a full sync must write to bring the catalog back to the agent's truth.

An agent owns its node's entry, its services and its checks; the catalog's
copy on the servers can drift (a write lost while no server answered, an
operator's ``/v1/catalog/deregister``, a restored snapshot). ``plan``
compares the two and lists the writes that correct the catalog, nothing
when they agree, so a quiet agent writes nothing. ``interval`` and
``stagger`` spread the periodic full syncs of a large cluster as Consul
does: one minute, doubled each time the LAN size doubles past 128 nodes,
plus a random share of that.

Pure functions on plain rows; ``txconsul.agent.local`` reads the catalog,
runs the plan and arms the timer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from typing import Any

import attrs

Row = Mapping[str, Any]

#: the time between two full syncs of a cluster of up to SCALE_THRESHOLD nodes
FULL_SYNC_INTERVAL = 60.0
#: a failed full sync is tried again after this (plus its stagger)
RETRY_INTERVAL = 15.0
#: a server that joins is synced with within a stagger of this
SERVER_UP_INTERVAL = 3.0
SCALE_THRESHOLD = 128

#: catalog entries a full sync never removes: the leader owns the node's
#: liveness check, and a server agent registers its own ``consul`` service
SERF_HEALTH = "serfHealth"
CONSUL_SERVICE = "consul"

_NODE_FIELDS = (("ID", "ID"), ("Address", "Address"), ("TaggedAddresses", "TaggedAddresses"))
_CHECK_FIELDS = (
    "CheckID",
    "Name",
    "Notes",
    "ServiceID",
    "Type",
    "Interval",
    "Timeout",
    "Definition",
    "Status",
)


def scale_factor(nodes: int) -> int:
    """1 up to 128 nodes, then one more for each doubling (2 at 129-256, 8 at 8,192)."""
    if nodes <= SCALE_THRESHOLD:
        return 1
    return int(math.ceil(math.log2(nodes) - math.log2(SCALE_THRESHOLD))) + 1


def stagger(delay: float, nodes: int, rng: random.Random) -> float:
    """A random share of ``delay`` scaled by the cluster size: in ``[0, scale * delay)``."""
    return rng.random() * scale_factor(nodes) * delay


def next_full_sync(nodes: int, rng: random.Random) -> float:
    """Seconds until the next periodic full sync."""
    return FULL_SYNC_INTERVAL + stagger(FULL_SYNC_INTERVAL, nodes, rng)


def retry_after_failure(nodes: int, rng: random.Random) -> float:
    """Seconds until a failed full sync is tried again."""
    return RETRY_INTERVAL + stagger(RETRY_INTERVAL, nodes, rng)


@attrs.frozen
class Plan:
    """The writes of one full sync, in the order they are made."""

    #: register the node's own entry (only when no other registration carries it)
    node: bool = False
    #: services to register again, each with all of its checks
    services: tuple[str, ...] = ()
    #: checks to register again on their own (their service is in step)
    checks: tuple[str, ...] = ()
    deregister_services: tuple[str, ...] = ()
    deregister_checks: tuple[str, ...] = ()

    def writes(self) -> int:
        return (
            int(self.node)
            + len(self.services)
            + len(self.checks)
            + len(self.deregister_services)
            + len(self.deregister_checks)
        )


def node_in_step(mine: Row, theirs: Row | None) -> bool:
    if theirs is None:
        return False
    if any(mine.get(a) != theirs.get(b) for a, b in _NODE_FIELDS):
        return False
    return dict(mine.get("NodeMeta") or {}) == dict(theirs.get("Meta") or {})


def service_in_step(mine: Row, theirs: Row | None) -> bool:
    """Every field the agent registers is as the agent has it."""
    if theirs is None:
        return False
    for key in set(mine) | ({"Kind", "TaggedAddresses"} & set(theirs)):
        if mine.get(key) != theirs.get(key):
            return False
    return True


def check_in_step(mine: Row, theirs: Row | None, output_may_lag: bool) -> bool:
    """
    Every field as the agent has it; the output may differ while a deferred
    write of it is waiting (``check_update_interval``).
    """
    if theirs is None:
        return False
    if any((mine.get(key) or "") != (theirs.get(key) or "") for key in _CHECK_FIELDS):
        return False
    return output_may_lag or (mine.get("Output") or "") == (theirs.get("Output") or "")


def plan(
    node: Row,
    services: Mapping[str, Row],
    checks: Mapping[str, Row],
    remote: Mapping[str, Any],
    output_may_lag: Collection[str] = (),
    server: bool = False,
) -> Plan:
    """
    The writes that bring the catalog's view of this node (``remote``, as
    ``Catalog.NodeState`` returns it) to the agent's own.

    :param node: the agent's node registration (``Agent.node_registration``).
    :param services: the agent's services as catalog registration rows, by ID.
    :param checks: the agent's checks as catalog rows (with Status and
        Output), by ID.
    :param output_may_lag: IDs of checks whose new output waits for
        ``check_update_interval``.
    :param server: a server agent, whose ``consul`` service is not the agent's.
    """
    their_services: Mapping[str, Row] = remote.get("Services") or {}
    their_checks: Mapping[str, Row] = remote.get("Checks") or {}
    stale_services = sorted(
        sid for sid, row in services.items() if not service_in_step(row, their_services.get(sid))
    )
    resent = set(stale_services)
    stale_checks = sorted(
        cid
        for cid, row in checks.items()
        if row.get("ServiceID") not in resent
        and not check_in_step(row, their_checks.get(cid), cid in output_may_lag)
    )
    gone_services = sorted(
        sid
        for sid in their_services
        if sid not in services and not (server and sid == CONSUL_SERVICE)
    )
    dropped = set(gone_services)
    gone_checks = sorted(
        cid
        for cid, row in their_checks.items()
        if cid not in checks and cid != SERF_HEALTH and (row.get("ServiceID") or "") not in dropped
    )
    registers = bool(stale_services or stale_checks)
    return Plan(
        node=not registers and not node_in_step(node, remote.get("Node")),
        services=tuple(stale_services),
        checks=tuple(stale_checks),
        deregister_services=tuple(gone_services),
        deregister_checks=tuple(gone_checks),
    )
