# -*- test-case-name: txconsul.test.agent.test_client -*-
"""
What an agent asks of the servers over RPC, and the consistency of reads.

A client agent keeps no state: ``Remote`` sends its HTTP requests, DNS
lookups and its own registrations to a server of its datacenter that it
learnt of by gossip (LAN members tagged ``role=consul``), sticking to one
while it answers and moving to another when it fails (``Forwarder``). A
read is sent again after a connection failure or a timeout; a write only
when it provably never left (the connection could not be made). With no
server known at all, the answer is Consul's "No known Consul servers".

On a server, ``Remote`` carries a read that needs the leader (default and
``?consistent`` mode) from a follower to the leader; ``leads`` and
``confirm_read`` are the leader's side of the consistency modes (DESIGN.md):
default reads need a valid lease, ``?consistent`` reads a quorum's
confirmation (Raft's read index) first, ``?stale`` reads neither.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from txconsul.errors import BadRequest, NoLeader
from txconsul.gossip.serf import MemberStatus
from txconsul.http.remote import (
    CLIENT_SLACK,
    HOP_SLACK,
    blocking_time,
    is_read,
    render_response,
    request_to_wire,
)
from txconsul.interfaces import IConsensus
from txconsul.rpc.errors import NoServers, RPCError
from txconsul.rpc.forward import Forwarder
from txconsul.rpc.protocol import RPCClient

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txconsul.agent.agent import Agent
    from txconsul.agent.membership import SerfPool

#: the timeout of one RPC that does not block (a write waits for the leader on the server)
RPC_TIMEOUT = 15.0
#: how long a ``?consistent`` read waits for a quorum to confirm the leader
CONSISTENT_READ_TIMEOUT = 7.0


def lan_servers(agent: Agent) -> list[str]:
    """``ip:port`` of the alive servers of this agent's datacenter in its LAN pool."""
    dc = agent.config.datacenter
    return _alive_servers(agent.membership.lan, dc, untagged_dc=dc)


def wan_servers(agent: Agent, dc: str) -> list[str]:
    """``ip:port`` of the alive servers of datacenter ``dc`` in this server's WAN pool."""
    return _alive_servers(agent.membership.wan, dc)


def _alive_servers(pool: SerfPool | None, dc: str, untagged_dc: str | None = None) -> list[str]:
    """
    ``ip:port`` of ``pool``'s alive members tagged as servers of ``dc``; a
    member without a ``dc`` tag counts as in ``untagged_dc``.
    """
    if pool is None:
        return []
    out = []
    for member in pool.serf.members.values():
        tags = member.tags
        port = tags.get("port", "")
        if (
            member.status == MemberStatus.ALIVE
            and tags.get("role") == "consul"
            and tags.get("dc", untagged_dc) == dc
            and port.isdigit()
        ):
            out.append(f"{member.address[0]}:{port}")
    return sorted(out)


def leads(agent: Agent) -> bool:
    """Whether this server is the leader (its lease may still have run out)."""
    consensus = agent.consensus
    return consensus.is_leader() or (
        agent.config.server and consensus.leader_address() == agent.config.rpc_address
    )


def check_lease(agent: Agent) -> None:
    """A default-mode read on the leader: refused once the lease has run out."""
    if not agent.consensus.is_leader():
        raise NoLeader("No cluster leader")


def confirm_read(agent: Agent, clock: IReactorTime) -> Deferred[None]:
    """
    Fires once a quorum has confirmed this server's leadership and the state
    store holds everything committed before the call (a ``?consistent`` read).
    """
    from txconsul.agent.servers import ServerConsensus

    consensus = agent.consensus
    if not isinstance(consensus, ServerConsensus):
        return succeed(None)  # a one-server log is always current
    node = consensus.node
    if node is None:
        return fail(NoLeader("No cluster leader"))
    d: Deferred[Any] = node.consistent_read()

    def failed(f: Failure) -> Failure:
        # not the leader any more, a quorum out of reach, or the timeout
        return Failure(NoLeader("No cluster leader"))

    d.addTimeout(CONSISTENT_READ_TIMEOUT, clock)
    return d.addCallbacks(lambda _: None, failed)


class Remote(Service):
    """
    RPC calls to this datacenter's servers, each retried by a ``Forwarder``.

    :param leader: on a server, the current leader's address; ``None`` on a
        client agent, which may ask any server.
    :param own_client: close ``client``'s connections when this stops (a
        client agent's pool is its own; a server shares its pool).
    :param servers: the servers to ask (``ip:port``); by default the alive
        servers of the agent's LAN pool. Another datacenter's are the alive
        servers of this server's WAN pool (``wan_servers``).
    """

    def __init__(
        self,
        agent: Agent,
        client: RPCClient,
        clock: IReactorTime,
        rng: random.Random,
        leader: Callable[[], str] | None = None,
        own_client: bool = False,
        servers: Callable[[], list[str]] | None = None,
    ) -> None:
        self._client = client
        self._own_client = own_client
        self._leader = leader
        self._servers = servers or (lambda: lan_servers(agent))
        ours = agent.config.datacenter
        self.forwarder = Forwarder(
            self._call,
            clock,
            rng,
            ours,
            lambda dc: self._servers() if dc == ours else wan_servers(agent, dc),
            leader=leader,
        )
        self._pending: set[Deferred[Any]] = set()
        #: calls sent, by method (tests and bench/checks.py count writes)
        self.sent: dict[str, int] = {}

    def _call(self, address: str, method: str, packed: tuple[Any, float]) -> Deferred[Any]:
        body, timeout = packed
        self.sent[method] = self.sent.get(method, 0) + 1
        return self._client.call(address, method, body, timeout)

    def call(
        self,
        method: str,
        body: Any,
        idempotent: bool = False,
        timeout: float = RPC_TIMEOUT,
        dc: str | None = None,
    ) -> Deferred[Any]:
        """
        Call ``method`` on a server (the leader, on a server), or on a server
        of datacenter ``dc``; retried as the module says.
        """
        if not self.running:
            return fail(NoServers("No known Consul servers"))
        if dc is None and self._leader is None and not self._servers():
            return fail(NoServers("No known Consul servers"))
        d = self.forwarder.forward(method, (body, timeout), dc=dc, idempotent=idempotent)
        self._pending.add(d)

        def done(result: object) -> object:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def http(self, request: IRequest, body: bytes, hop: bool) -> Deferred[bytes]:
        """
        Have a server answer ``request`` (with ``body``, already read); its
        status and headers are set on ``request`` and the body returned.
        """
        timeout = blocking_time(request) + (HOP_SLACK if hop else CLIENT_SLACK)
        wire = request_to_wire(request, body, hop, timeout)
        d = self.call("HTTP.Request", wire, idempotent=is_read(request.method), timeout=timeout)
        if hop:
            # a follower that cannot reach the leader has no leader to offer
            d.addErrback(lambda f: f.trap(RPCError) and fail(NoLeader("No cluster leader")))
        return d.addCallback(lambda answer: render_response(request, answer))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()
        for d in pending:
            d.addErrback(lambda _: None)
        if self._own_client:
            return self._client.close()
        return succeed(None)


@implementer(IConsensus)
class RemoteConsensus:
    """A client agent's ``IConsensus``: its own registrations go to a server."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote

    def apply(self, command: dict[str, Any]) -> Deferred[Any]:
        kind = command.get("Type")
        if kind == "register":
            return self._remote.call("Catalog.Register", command.get("Request"), idempotent=True)
        if kind == "deregister":
            return self._remote.call("Catalog.Deregister", command.get("Request"), idempotent=True)
        return fail(BadRequest(f"a client agent does not apply {kind!r} commands"))

    def is_leader(self) -> bool:
        return False

    def leader_address(self) -> str:
        return ""

    def peers(self) -> list[str]:
        return []

    def last_contact(self) -> float:
        return 0.0
