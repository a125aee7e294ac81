# -*- test-case-name: txconsul.test.agent.test_client -*-
"""
The RPC methods a server offers to client agents and to other servers.

- ``HTTP.Request``: an HTTP request served by this server's own API (see
  ``txconsul.http.remote``). One that another server sent on (``Hop``) is
  refused with ``NotLeader`` unless this server leads, so a request never
  travels further than client -> server -> leader.
- ``Catalog.Register`` / ``Catalog.Deregister``: a client agent's own node,
  services and checks, applied through this server's consensus (a follower
  forwards them to the leader).
- ``Catalog.NodeState``: what the catalog holds about one node, for the
  anti-entropy of its agent (the leader's view, so that an agent never
  corrects its entries after a lagging copy of them).
- ``DNS.Lookup``: a question in the client's domain, answered from this
  server's catalog with the client's DNS settings; with ``allow_stale``
  false, the leader's (a follower sends it on, as a hop).
- ``Internal.KeyringOperation``: a keyring operation on every pool
  (``txconsul.agent.keyring``), from an agent or, ``Forwarded``, from a
  server of another datacenter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from txconsul.agent import keyring
from txconsul.agent.remote import check_lease, leads
from txconsul.dns.authority import Answer, ConsulAuthority
from txconsul.dns.remote import (
    LOOKUP_TIMEOUT,
    answer_to_wire,
    config_key,
    dns_config_from_wire,
)
from txconsul.errors import BadRequest, NoLeader
from txconsul.http.remote import WireRequest, serve
from txconsul.raft.core import NotLeader
from txconsul.rpc.protocol import Dispatcher

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

#: DNS settings kept at once (one per distinct client configuration)
MAX_AUTHORITIES = 64


def node_state(agent: Agent, name: str) -> dict[str, Any]:
    """The catalog's rows for node ``name``: the node, its services and its checks."""
    catalog = agent.store.catalog
    return {
        "Node": catalog.nodes.get(name),
        "Services": dict(catalog.services.get(name, {})),
        "Checks": dict(catalog.checks.get(name, {})),
    }


def read_node_state(agent: Agent, name: str, hop: bool = False) -> Deferred[dict[str, Any]]:
    """
    The catalog's view of node ``name`` as the leader has it: read here on
    the leader (while its lease holds), asked of the leader elsewhere (a
    request sent on by a server already goes no further).
    """
    if agent.config.server and leads(agent):
        try:
            check_lease(agent)
        except NoLeader as e:
            return fail(e)
        return succeed(node_state(agent, name))
    if hop and agent.config.server:
        return fail(NotLeader(agent.consensus.leader_address()))
    body = {"Node": name, "Hop": agent.config.server}
    d: Deferred[Any] = agent.remote.call("Catalog.NodeState", body, idempotent=True)

    def checked(state: Any) -> dict[str, Any]:
        if not isinstance(state, dict) or not all(
            isinstance(state.get(k), dict) for k in ("Services", "Checks")
        ):
            raise BadRequest("Catalog.NodeState answered a map of the wrong shape")
        return state

    return d.addCallback(checked)


class ServerEndpoints:
    """The handlers, bound to one server agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._authorities: dict[tuple[str, str, Any], ConsulAuthority] = {}

    def install(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("HTTP.Request", self.http)
        dispatcher.register("Catalog.Register", self.register)
        dispatcher.register("Catalog.Deregister", self.deregister)
        dispatcher.register("Catalog.NodeState", self.node_state)
        dispatcher.register("DNS.Lookup", self.dns_lookup)
        dispatcher.register(
            "Internal.KeyringOperation", lambda body: keyring.handle_rpc(self._agent, body)
        )

    def http(self, body: Any) -> Deferred[dict[str, Any]]:
        call = WireRequest.from_wire(body)
        agent = self._agent
        if call.hop and not leads(agent):
            return fail(NotLeader(agent.consensus.leader_address()))
        return serve(agent.site, call)

    def register(self, body: Any) -> Deferred[Any]:
        if not isinstance(body, dict):
            return fail(BadRequest("Catalog.Register takes a registration map"))
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "register", "Request": body})
        return d

    def deregister(self, body: Any) -> Deferred[Any]:
        if not isinstance(body, dict):
            return fail(BadRequest("Catalog.Deregister takes a map"))
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "deregister", "Request": body})
        return d

    def node_state(self, body: Any) -> Deferred[dict[str, Any]]:
        """A default-mode read: the leader's view (a follower asks the leader)."""
        name = body.get("Node") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return fail(BadRequest("Catalog.NodeState takes {'Node': name}"))
        return read_node_state(self._agent, name, hop=bool(body.get("Hop")))

    def dns_lookup(self, body: Any) -> dict[str, Any] | Deferred[Any]:
        """
        A question from an agent's DNS interface. With ``allow_stale`` false it
        is the leader's (the answer is then as fresh as a default-mode read): a
        follower sends it on to the leader, marked as a hop.
        """
        if not isinstance(body, dict):
            raise BadRequest("DNS.Lookup takes a map")
        name, qtype = body.get("Name"), body.get("Type")
        domain, dc = body.get("Domain"), body.get("Datacenter")
        if not isinstance(name, bytes) or not isinstance(qtype, int):
            raise BadRequest("DNS.Lookup: Name must be bytes and Type a number")
        if not isinstance(domain, str) or not isinstance(dc, str):
            raise BadRequest("DNS.Lookup: Domain and Datacenter must be strings")
        authority = self._authority(domain, dc, body.get("Config"))
        agent = self._agent
        if not authority.allow_stale and not leads(agent):
            if body.get("Hop"):
                raise NotLeader(agent.consensus.leader_address())
            sent: Deferred[Any] = agent.remote.call(
                "DNS.Lookup", {**body, "Hop": True}, idempotent=True, timeout=LOOKUP_TIMEOUT
            )
            return sent
        answer: Answer = authority.lookup(name, qtype)
        return answer_to_wire(answer)

    def _authority(self, domain: str, dc: str, raw: Any) -> ConsulAuthority:
        """An authority with the asking agent's domain and DNS settings."""
        config = dns_config_from_wire(raw)
        key = (domain, dc, config_key(config))
        authority = self._authorities.get(key)
        if authority is None:
            if len(self._authorities) >= MAX_AUTHORITIES:
                self._authorities.clear()
            agent = self._agent
            settings = attrs.evolve(agent.config, domain=domain, datacenter=dc, dns=config)
            authority = ConsulAuthority(
                agent.store, agent.consensus, settings, agent.wall, agent.rng
            )
            self._authorities[key] = authority
        return authority
