# -*- test-case-name: txconsul.test.agent.test_agent -*-
"""
The agent: one MultiService holding the state, the log and the listeners.

Construction only wires objects together; ports are bound and the data
directory is read in ``startService``. ``when_ready()`` fires once the agent
has registered its own node (and, on a server, the ``consul`` service) and the
definitions of its config files.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.web.server import Site

from txconsul import __version__
from txconsul.agent.endpoints import read_node_state
from txconsul.agent.listeners import TCPListener
from txconsul.agent.local import LocalState
from txconsul.agent.membership import Membership
from txconsul.agent.remote import Remote, RemoteConsensus, leads
from txconsul.agent.servers import ServerConsensus, Servers
from txconsul.clock import wall_time
from txconsul.config import AgentConfig
from txconsul.dns.authority import ConsulAuthority
from txconsul.dns.remote import LeaderAuthority, RemoteAuthority
from txconsul.dns.server import DNSService
from txconsul.errors import ConfigError, TxConsulError
from txconsul.gossip.serf import MemberEvent
from txconsul.http.app import HTTPApi
from txconsul.rpc.protocol import RPCClient
from txconsul.state.fsm import FSM
from txconsul.state.store import StateStore

SERF_HEALTH = {
    "CheckID": "serfHealth",
    "Name": "Serf Health Status",
    "Status": "passing",
    "Output": "Agent alive and reachable",
    "ServiceID": "",
    "Notes": "",
}


class APISite(Site):
    """
    A Site without the per-request access log line, that can close its
    connections.

    Twisted's Site forgets its connections; an agent that stops must not leave
    keep-alive clients and blocked queries hanging, so this one keeps them.
    """

    displayTracebacks = False

    def __init__(self, resource: Any) -> None:
        super().__init__(resource)
        self._live: dict[Any, tuple[Deferred[None], list[Any]]] = {}

    def log(self, request: Any) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        gone: Deferred[None] = Deferred()
        transports: list[Any] = []
        self._live[proto] = (gone, transports)
        made, lost = proto.makeConnection, proto.connectionLost

        def make_connection(transport: Any) -> None:
            transports.append(transport)
            made(transport)

        def connection_lost(reason: Any) -> None:
            self._live.pop(proto, None)
            lost(reason)
            gone.callback(None)

        proto.makeConnection, proto.connectionLost = make_connection, connection_lost
        return proto

    def close_connections(self) -> Deferred[Any]:
        """Drop every open connection; fires once all of them are gone."""
        live = list(self._live.values())
        for _, transports in live:
            for transport in transports:
                transport.abortConnection()
        return DeferredList([gone for gone, _ in live])


class Agent(MultiService):
    """One txconsul agent."""

    log = Logger()

    def __init__(
        self,
        config: AgentConfig,
        reactor: Any,
        rng: random.Random | None = None,
        shutdown: Callable[[], object] | None = None,
        wall: Callable[[], float] = wall_time,
    ) -> None:
        """
        :param shutdown: ends the agent after ``/v1/agent/leave`` or a failed
            ``start_join``; the default only stops this service, ``tap.py``
            stops the reactor.
        :param wall: the wall clock, for dates others read (the DNS SOA
            serial); every duration is on ``reactor``'s monotonic clock.
        """
        super().__init__()
        self.shutdown = shutdown if shutdown is not None else self.stopService
        self.config = config
        self.reactor = reactor
        self.wall = wall
        clock: IReactorTime = reactor
        tcp: IReactorTCP = reactor
        self.rng = rng if rng is not None else random.Random()
        self.node_id = config.node_id
        self.store = StateStore()
        self.fsm = FSM(self.store)
        self.consensus: ServerConsensus | RemoteConsensus
        self.local = LocalState(self, reactor, self.rng)
        # every server runs Raft (``--dev`` as a cluster of one) and binds port
        # 8300 before the pools tag it
        self.servers: Servers | None = None
        if config.server:
            self.servers = Servers(self, reactor, time.monotonic, self.rng)
            self.servers.setName("servers")
            self.servers.setServiceParent(self)
            self.consensus = self.servers.consensus
        # a client agent keeps no state: it asks the servers (txconsul.agent.remote);
        # a server asks the leader for the reads that need it
        if self.servers is not None:
            self.remote = Remote(
                self, self.servers.client, reactor, self.rng, leader=self.consensus.leader_address
            )
        else:
            self.remote = Remote(
                self, RPCClient(reactor, reactor), reactor, self.rng, own_client=True
            )
            self.consensus = RemoteConsensus(self.remote)
        self.remote.setName("remote")
        self.remote.setServiceParent(self)
        self.membership = Membership(self, time.monotonic, self.rng)
        self.membership.setName("gossip")
        self.membership.setServiceParent(self)
        if self.servers is not None:
            self.membership.subscribe(self.servers.reconciler)
        self.membership.subscribe(self._server_joined)
        self.http_api = HTTPApi(self, clock, self.rng)
        self.site = APISite(self.http_api.resource())
        self.http = TCPListener(tcp, self.site, config.ports["http"], config.client_addr)
        self.http.setName("http")
        self.http.setServiceParent(self)
        self.dns: DNSService | None = None
        if config.ports["dns"] >= 0:
            authority: RemoteAuthority | LeaderAuthority | None = None
            if not config.server:
                authority = RemoteAuthority(self.remote.call, config)
            elif not config.dns.allow_stale and not config.dev:
                # only the leader answers: a follower asks it (a dev agent always leads)
                authority = LeaderAuthority(
                    ConsulAuthority(self.store, self.consensus, config, wall, self.rng),
                    RemoteAuthority(self.remote.call, config, hop=True),
                    lambda: leads(self),
                )
            self.dns = DNSService(
                reactor, self.store, self.consensus, config, self.rng, authority, wall
            )
            self.dns.setName("dns")
            self.dns.setServiceParent(self)
        self._ready = False
        self._waiting: list[Deferred[None]] = []

    def when_ready(self) -> Deferred[None]:
        """Fires once the agent's own registrations are in the catalog."""
        d: Deferred[None] = Deferred()
        if self._ready:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def _became_ready(self) -> None:
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    # Set by the composition root: reads the config files and flags again.
    reload_config: Callable[[], AgentConfig] | None = None

    def reload(self) -> Deferred[Any]:
        """
        Read the config files again and apply their service and check
        definitions (SIGHUP, ``/v1/agent/reload``, ``txconsul reload``).

        A config that does not load leaves everything as it was. Settings
        other than definitions (ports, addresses, ...) need a restart.
        """
        if self.reload_config is None:
            return succeed(None)
        try:
            new = self.reload_config()
        except ConfigError as e:
            self.log.error("reload failed, keeping the running config: {why}", why=str(e))
            return fail(TxConsulError(f"Failed to reload configs: {e}"))
        self.config = attrs.evolve(
            self.config,
            services=new.services,
            checks=new.checks,
            check_update_interval=new.check_update_interval,
            enable_script_checks=new.enable_script_checks,
            enable_local_script_checks=new.enable_local_script_checks,
        )
        self.log.info("reloaded the config files")
        return self.local.reload(new.services, new.checks)

    def startService(self) -> None:
        self.node_id = self.node_id or self._load_node_id()
        super().startService()
        servers = self.servers
        if servers is not None:  # joins first: the leader is found through them
            d = self.membership.start_joins()
            d.addCallback(lambda _: servers.when_leader())
            d.addCallback(lambda _: self._register_self())
            d.addCallback(lambda _: self.local.load(self.config.services, self.config.checks))
        else:  # a client: its servers are found through the joins too
            d = self.membership.start_joins()
            d.addCallback(lambda _: self.local.load(self.config.services, self.config.checks))
        d.addCallback(lambda _: self.local.start_sync())
        d.addCallback(lambda _: self._became_ready())

        def failed(f: Any) -> None:
            self.log.failure("the agent could not start", f)
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.errback(f)
            self.reactor.callLater(0, self.shutdown)

        d.addErrback(failed)
        self.log.info(
            "txconsul {version} agent {node} in {dc} ({mode}) serving HTTP on {addr}",
            version=__version__,
            node=self.config.node_name,
            dc=self.config.datacenter,
            mode="server" if self.config.server else "client",
            addr="%s:%d" % self.http.address(),
        )

    def stopService(self) -> Deferred[Any]:
        self.local.stop()
        d: Deferred[Any] = super().stopService()
        d.addCallback(lambda _: self.site.close_connections())
        return d

    def _load_node_id(self) -> str:
        """The node's UUID, kept in ``data_dir/node-id`` so it survives restarts."""
        data_dir = self.config.data_dir
        if data_dir is None:
            return str(uuid.uuid4())
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(data_dir, "node-id")
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
            return str(uuid.UUID(text))
        except (OSError, ValueError):
            node_id = str(uuid.uuid4())
            with open(path, "w", encoding="ascii") as f:
                f.write(node_id)
            return node_id

    # -- this node in the catalog -----------------------------------------------------

    def node_state(self) -> Deferred[dict[str, Any]]:
        """The catalog's view of this node (``Node``, ``Services``, ``Checks``), the leader's."""
        return read_node_state(self, self.config.node_name)

    def _server_joined(self, pool: Any, events: list[Any]) -> None:
        """A server that joins the LAN pool gets this agent's state soon (anti-entropy)."""
        if pool.wan:
            return
        for event in events:
            if isinstance(event, MemberEvent) and event.kind == "member-join":
                member = pool.serf.members.get(event.name)
                if member is not None and member.tags.get("role") == "consul":
                    self.local.trigger_sync()
                    return

    def node_registration(self) -> dict[str, Any]:
        """
        The node part of a catalog registration of this agent. Its tagged
        addresses come from here only (the leader's reconciliation keeps what
        the catalog holds), so the ``wan`` one is ``advertise_addr_wan``.
        """
        return {
            "ID": self.node_id,
            "Node": self.config.node_name,
            "Address": self.config.advertise,
            "Datacenter": self.config.datacenter,
            "TaggedAddresses": self.config.tagged_addresses,
            "NodeMeta": {"consul-network-segment": "", **self.config.node_meta},
        }

    def _register_self(self) -> Deferred[Any]:
        request = self.node_registration()
        request["Checks"] = [SERF_HEALTH]
        request["Service"] = None
        if self.config.server:
            request["Service"] = {
                "ID": "consul",
                "Service": "consul",
                "Tags": [],
                "Port": self.config.ports["server"],
            }
        # a leader lost meanwhile is no reason to stop: the new leader registers
        # every member (this one included) and anti-entropy follows (LocalState.catalog_write)
        return self.local.catalog_write({"Type": "register", "Request": request})

    async def _leave(self) -> None:
        servers = self.servers
        if servers is not None:
            await servers.hand_over()
        await self.membership.leave()
        if servers is not None:
            await servers.wait_removed()

    # -- membership -----------------------------------------------------------------------

    def member(self) -> dict[str, Any]:
        """This agent as a LAN gossip member, as ``/v1/agent/members`` lists it."""
        return self.membership.self_member()

    def leave(self) -> Deferred[None]:
        """
        Leave gracefully, then shut the agent down: a server that leads hands
        its leadership over first, every agent leaves the gossip pools, and a
        server then waits to be taken out of the Raft voters (as Consul does).
        """
        d = ensureDeferred(self._leave())

        def done(result: object) -> object:
            self.reactor.callLater(0, self.shutdown)
            return result

        return d.addBoth(done)
