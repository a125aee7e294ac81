# -*- test-case-name: txconsul.test.agent.test_cluster -*-
"""
A server agent's part of the cluster: port 8300, Raft, and the voter list.

``Servers`` binds the RPC listener (so that port 0 works, the agent's config
is updated with the bound port before the gossip pools publish it), plugs the
Raft transport into it, and starts the ``RaftNode`` once it knows the first
configuration:

- ``--bootstrap`` (and ``--dev``, which implies it): at once, as the only
  voter; a single voter elects itself without waiting for anyone;
- ``--bootstrap-expect N``: once N alive servers of this datacenter are in the
  LAN pool and none of them is in a cluster yet, all start with the same
  sorted voter list; as in Consul, not while one of them publishes another
  ``expect`` or is in bootstrap mode (an error is logged, once per member);
- a server that finds another already in a cluster starts with no voters and
  waits for the leader to add it; with neither flag that is all a new server
  does (as in Consul);
- a server whose Raft store holds a configuration (a restart) starts at once
  from it, whatever its flags: the voter list a new cluster starts with is
  the first thing its log store keeps (``PersistVoters``), so a server killed
  right after it bootstrapped comes back a voter, and two servers of three
  restarted with ``--bootstrap-expect 3`` elect a leader without the third.

The leader then keeps the voters in step with the pool, one change at a time:
alive servers are added, servers that left are removed. A server in
bootstrap mode is not added while another one is in the pool (two dev agents
that join stay two clusters, as Consul refuses the same). ``ServerConsensus``
is the agent's ``IConsensus``: writes on a follower are forwarded to the
leader (RPC ``Raft.Apply``); reads answer from the local store, which may be
stale on a follower.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txconsul.agent.endpoints import ServerEndpoints
from txconsul.agent.reconcile import RECONCILE_INTERVAL, Reconciler
from txconsul.errors import BadRequest, NoLeader, NotFound, TxConsulError
from txconsul.gossip.serf import MemberStatus
from txconsul.interfaces import IConsensus
from txconsul.raft.core import NotLeader, Role, Timing
from txconsul.raft.logstore import ILogStore, MemoryLogStore, SQLiteLogStore, StoreFailed
from txconsul.raft.node import RaftNode
from txconsul.raft.transport import RaftTransport
from txconsul.rpc.forward import Forwarder
from txconsul.rpc.listener import RPCListener
from txconsul.rpc.protocol import Dispatcher, RPCClient

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

#: how often the bootstrap check and the leader's voter reconciliation run
TICK = 0.2
#: the timeout of one RPC between servers
RPC_TIMEOUT = 5.0
#: how long a leaving server waits to be removed from the voters (Consul's 5 s)
LEAVE_DRAIN = 5.0
#: how often a leaving server looks at its raft state
LEAVE_POLL = 0.02


@attrs.frozen
class ServerInfo:
    """A server of this datacenter as the LAN pool knows it."""

    name: str
    id: str
    address: str
    status: MemberStatus
    bootstrap: bool = False
    #: its ``expect`` tag (``bootstrap_expect``), 0 when it has none
    expect: int = 0


class ClusterReconciler(Reconciler):
    """The LAN reconciliation of a Raft server: a write lost with leadership is no error."""

    def _apply(self, command: dict[str, Any], name: str) -> None:
        d: Deferred[Any] = self._agent.consensus.apply(command)

        def failed(f: Failure) -> None:
            if f.check(NoLeader, NotLeader, StoreFailed):  # StoreFailed: this server halted
                self.log.info(
                    "catalog update for member {name} dropped: {why}", name=name, why=f.value
                )
            else:
                self.log.failure("catalog update for member {name} failed", f, name=name)

        d.addErrback(failed)


@implementer(IConsensus)
class ServerConsensus:
    """The agent's consensus on a server: the Raft node, writes forwarded to the leader."""

    def __init__(self, servers: Servers) -> None:
        self._servers = servers

    @property
    def node(self) -> RaftNode | None:
        return self._servers.node

    def apply(self, command: dict[str, Any]) -> Deferred[Any]:
        node = self.node
        if node is not None and node.core is not None and node.core.role is Role.LEADER:
            return node.apply(command)
        return self._servers.forwarder.forward("Raft.Apply", command)

    def is_leader(self) -> bool:
        node = self.node
        return node is not None and node.is_leader()

    def leader_address(self) -> str:
        node = self.node
        return "" if node is None else node.leader_address()

    def peers(self) -> list[str]:
        node = self.node
        return [] if node is None else node.peers()

    def last_contact(self) -> float:
        node = self.node
        return 0.0 if node is None else node.last_contact()


class Servers(MultiService):
    """The RPC listener, the Raft transport and node of one server agent."""

    log = Logger()

    def __init__(
        self,
        agent: Agent,
        reactor: Any,
        monotonic: Callable[[], float],
        rng: random.Random,
    ) -> None:
        super().__init__()
        self._agent = agent
        self._reactor = reactor
        self._monotonic = monotonic
        self._rng = rng
        c = agent.config
        self.dispatcher = Dispatcher()
        self.dispatcher.register("Raft.Apply", self._rpc_apply)
        self.dispatcher.register("Status.Peers", lambda body: self.consensus.peers())
        self.dispatcher.register("Status.Leader", lambda body: self.consensus.leader_address())
        self.dispatcher.register("Operator.RaftRemovePeerByAddress", self._rpc_remove_peer)
        ServerEndpoints(agent).install(self.dispatcher)  # what clients and followers ask
        # a dev server binds its port too: client agents may join it (tests use port 0)
        self.listener: RPCListener | None = RPCListener(
            reactor, self.dispatcher, portno=c.ports["server"], interface=c.bind_addr
        )
        self.listener.setServiceParent(self)
        self.client = RPCClient(reactor, reactor)
        self.forwarder = Forwarder(
            lambda address, method, body: self.client.call(address, method, body, RPC_TIMEOUT),
            reactor,
            random.Random(rng.random()),
            c.datacenter,
            lambda dc: [s.address for s in self.servers() if s.status == MemberStatus.ALIVE],
            leader=lambda: self.consensus.leader_address(),
        )
        self.consensus = ServerConsensus(self)
        self.reconciler = ClusterReconciler(agent)
        self.transport: RaftTransport | None = None
        self.node: RaftNode | None = None
        self._idle_store: ILogStore | None = None
        self._loop: LoopingCall | None = None
        self._reconcile_loop: LoopingCall | None = None
        #: how often the leader runs the full catalog reconciliation
        self.reconcile_interval = RECONCILE_INTERVAL
        self._polls: list[LoopingCall] = []
        self._deciding = False
        self._was_leader = False
        self._refusals_logged: set[tuple[str, str]] = set()

    # -- life cycle -----------------------------------------------------------------

    @property
    def me(self) -> str:
        return self._agent.config.rpc_address

    def startService(self) -> None:
        super().startService()  # binds the listener
        agent = self._agent
        self.transport = RaftTransport(self._reactor, self._reactor, self.me)
        if self.listener is not None:
            _, port = self.listener.address()
            agent.config = attrs.evolve(agent.config, ports={**agent.config.ports, "server": port})
            self.transport.me = self.me
            self.listener.set_raft_handler(self.transport.handle_inbound)
        self.transport.startService()
        store = self._store()
        if self._configured(store):
            # a restart: the disk says who the voters are, whatever the flags say
            # (a server killed right after it bootstrapped included)
            self._start_node([], store)
        elif agent.config.bootstrap:
            self._start_node([self.me], store)
        else:
            self._idle_store = store  # until the first configuration is known
        if self.node is None and not agent.config.bootstrap_expect:
            self.log.info(
                "no bootstrap or bootstrap_expect: waiting to be added to a cluster"
                " (the agent is ready once it has a leader)"
            )
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(TICK, now=False).addErrback(
            lambda f: self.log.failure("server loop stopped", f)
        )
        self._reconcile_loop = LoopingCall(self._reconcile_periodically)
        self._reconcile_loop.clock = self._reactor
        self._reconcile_loop.start(self.reconcile_interval, now=False).addErrback(
            lambda f: self.log.failure("reconciliation loop stopped", f)
        )

    def stopService(self) -> Deferred[Any]:
        if self._idle_store is not None:
            self._idle_store.close()
            self._idle_store = None
        for loop in [self._loop, self._reconcile_loop, *self._polls]:
            if loop is not None and loop.running:
                loop.stop()  # a when_leader() still waiting never fires: the agent is stopping
        self._loop = self._reconcile_loop = None
        self._polls = []
        if self.transport is not None:
            self.transport.receive = None  # frames still arriving must not reach a stopped node
        d: Deferred[Any] = super().stopService()  # the node (if started), then the listener
        transport = self.transport
        if transport is not None:
            d.addCallback(lambda _: transport.stopService())
        d.addCallback(lambda _: self.client.close())
        return d

    def _store(self) -> ILogStore:
        c = self._agent.config
        if c.dev or c.data_dir is None:
            return MemoryLogStore()
        return SQLiteLogStore(f"{c.data_dir}/raft")

    def _configured(self, store: ILogStore) -> bool:
        """
        Whether ``store`` holds a configuration (a restart, not a new cluster).
        A store that does not load counts as one: the node then refuses to
        start and says why, instead of waiting for a bootstrap.
        """
        try:
            return store.load().configured
        except Exception:
            return True

    def _start_node(self, voters: list[str], store: ILogStore | None = None) -> None:
        assert self.transport is not None
        if store is None:
            store, self._idle_store = self._idle_store, None
        if voters:
            self.log.info("raft starting at {me} with voters {voters}", me=self.me, voters=voters)
        else:
            self.log.info("raft starting at {me} from its log on disk", me=self.me)
        node = RaftNode(
            self.me,
            voters,
            self._agent.fsm,
            store if store is not None else self._store(),
            self.transport,
            self._reactor,
            self._monotonic,
            random.Random(self._rng.random()),
            self._timing(),
        )
        self.transport.receive = node.receive
        self.node = node
        # a service added to a running parent starts at once; stopping goes in
        # reverse order, so the node stops before the listener
        self.addService(node)

    def _timing(self) -> Timing:
        """Raft's timing, with the snapshot settings of the config where it has them."""
        c = self._agent.config
        timing = Timing()
        if c.raft_snapshot_threshold is not None:
            timing = attrs.evolve(timing, snapshot_threshold=c.raft_snapshot_threshold)
        if c.raft_trailing_logs is not None:
            timing = attrs.evolve(timing, trailing_logs=c.raft_trailing_logs)
        return timing

    def when_leader(self) -> Deferred[None]:
        """
        Fires once the cluster has a leader (serving its term) that this server
        knows of; fails if the node halts first (a store it cannot load).
        """
        node = self.node
        if node is not None and node.halt_error is not None:
            return fail(node.halt_error)
        if self._has_leader():
            return succeed(None)
        d: Deferred[None] = Deferred()

        def check() -> None:
            node = self.node
            if node is not None and node.halt_error is not None:
                poll.stop()
                self._polls.remove(poll)
                d.errback(node.halt_error)  # it will never have a leader: the agent gives up
            elif self._has_leader():
                poll.stop()
                self._polls.remove(poll)
                d.callback(None)

        poll = LoopingCall(check)
        poll.clock = self._reactor
        poll.start(0.05, now=False).addErrback(d.errback)
        self._polls.append(poll)
        return d

    # -- graceful leave ---------------------------------------------------------------

    async def hand_over(self) -> None:
        """
        A leader that leaves first hands leadership to the most up-to-date voter
        (TimeoutNow), so the others elect it at once instead of waiting out an
        election timeout; waits until it no longer leads (at most the transfer's
        own deadline, one election timeout, and a margin).
        """
        node = self.node
        if node is None or node.core is None or node.core.role is not Role.LEADER:
            return
        if len(node.peers()) < 2:
            return  # a cluster of one has nobody to hand over to
        if not node.transfer_leadership():
            self.log.warn("leaving as the leader: no voter to hand leadership to")
            return
        self.log.info("leaving: handing raft leadership over")
        limit = 2 * node.core.timing.election_timeout
        if await self._until(lambda: node.core is None or node.core.role is not Role.LEADER, limit):
            self.log.info("leaving: {leader} leads now", leader=node.leader_address() or "nobody")
        else:
            self.log.warn("leaving: leadership transfer did not finish in {limit}s", limit=limit)

    async def wait_removed(self, limit: float = LEAVE_DRAIN) -> None:
        """
        After the gossip leave, wait (at most ``limit``) until the leader has
        taken this server out of the voters: stopping before that would leave
        a voter missing, and a quorum one server closer to being lost.
        """
        node = self.node
        if node is None or node.core is None or node.halted:
            return
        if self.me not in node.peers() or len(node.peers()) < 2:
            return
        if await self._until(lambda: self.me not in node.peers() or node.halted, limit):
            self.log.info("leaving: removed from the raft voters")
        else:
            self.log.warn("leaving: still a raft voter after {limit}s", limit=limit)

    async def _until(self, done: Callable[[], bool], limit: float) -> bool:
        waited = 0.0
        while not done():
            if waited >= limit or not self.running:
                return False
            await deferLater(self._reactor, LEAVE_POLL, lambda: None)
            waited += LEAVE_POLL
        return True

    def _has_leader(self) -> bool:
        node = self.node
        if node is None or node.core is None or node.halted:
            return False
        leader = node.leader_address()
        if leader == self.me:
            return node.core.leading_with_current_commit()
        return bool(leader)

    # -- the pool's servers -----------------------------------------------------------

    def servers(self) -> list[ServerInfo]:
        """The servers of this datacenter in the LAN pool, in any status."""
        pool = self._agent.membership.lan
        if pool is None:
            return []
        dc = self._agent.config.datacenter
        out = []
        for member in pool.serf.members.values():
            tags = member.tags
            port = tags.get("port", "")
            if tags.get("role") != "consul" or tags.get("dc", dc) != dc or not port.isdigit():
                continue
            address = f"{member.address[0]}:{port}"
            out.append(
                ServerInfo(
                    member.name,
                    tags.get("id", ""),
                    address,
                    member.status,
                    tags.get("bootstrap") == "1",
                    int(tags.get("expect", "")) if tags.get("expect", "").isdigit() else 0,
                )
            )
        return out

    def _bootstrap_refusal(self, servers: list[ServerInfo]) -> tuple[str, str] | None:
        """
        Why ``bootstrap_expect`` must not form a cluster with ``servers`` (as
        Consul's ``maybeBootstrap``): one of them expects another number of
        servers, or is in bootstrap mode. A ``(member, reason)`` pair, or None.
        """
        expect = self._agent.config.bootstrap_expect
        for server in sorted(servers, key=lambda s: s.name):
            if server.expect and server.expect != expect:
                return server.name, (
                    f"it expects {server.expect} servers, this one {expect}:"
                    " all servers should expect the same number"
                )
            if server.bootstrap:
                return server.name, "it is in bootstrap mode: bootstrap_expect disabled"
        return None

    def _tick(self) -> None:
        node = self.node
        if node is None:
            if not self._deciding:
                self._deciding = True
                d = ensureDeferred(self._decide())
                d.addErrback(lambda f: self.log.failure("raft bootstrap check failed", f))
                d.addBoth(lambda _: setattr(self, "_deciding", False))
            return
        leading = node.core is not None and node.core.leading_with_current_commit()
        if leading and not self._was_leader:
            self._reconcile_all()
        self._was_leader = leading
        if leading:
            self._manage_voters(node)

    async def _decide(self) -> None:
        """Start Raft once the first configuration is known (see the module docstring)."""
        servers = {s.address for s in self.servers() if s.status == MemberStatus.ALIVE}
        servers.add(self.me)
        for address in sorted(servers - {self.me}):
            try:
                peers = await self.client.call(address, "Status.Peers", None, 1.0)
            except TxConsulError:
                continue
            if peers and self.node is None and self.running:
                if isinstance(peers, list) and self.me in peers:
                    # it bootstrapped first with this server among its voters
                    self._start_node(sorted(str(p) for p in peers))
                    return
                self.log.info("{address} is in a cluster already: joining it", address=address)
                self._start_node([])
                return
        expect = self._agent.config.bootstrap_expect
        if not expect or self.node is not None or not self.running:
            return
        alive = [s for s in self.servers() if s.status == MemberStatus.ALIVE]
        refusal = self._bootstrap_refusal([s for s in alive if s.address in servers])
        if refusal is not None:
            if refusal not in self._refusals_logged:
                self._refusals_logged.add(refusal)  # once each, not every tick
                self.log.error(
                    "not bootstrapping: member {member} conflicts: {why}",
                    member=refusal[0],
                    why=refusal[1],
                )
            return
        if len(servers) >= expect:
            self._start_node(sorted(servers))

    def _manage_voters(self, node: RaftNode) -> None:
        """Add one alive server that is not a voter, or remove one that left."""
        config = set(node.peers())
        servers = self.servers()
        alive = {s.address for s in servers if s.status == MemberStatus.ALIVE}
        bootstrapping = [s for s in servers if s.bootstrap and s.status == MemberStatus.ALIVE]
        if len(bootstrapping) > 1:
            # two servers that each elect themselves: never mix their logs
            alive -= {s.address for s in bootstrapping} - config
        left = {s.address for s in servers if s.status == MemberStatus.LEFT} - alive
        change: set[str] | None = None
        for address in sorted(alive - config):
            change = config | {address}
            break
        else:
            for address in sorted((config & left) - {self.me}):
                change = config - {address}
                break
        if change is None:
            return
        try:
            node.change_config(sorted(change))
        except (ValueError, NotLeader, NoLeader):
            return  # one change at a time: the next tick retries
        self.log.info("raft voters becoming {voters}", voters=sorted(change))

    def _reconcile_all(self) -> int:
        """
        Bring the catalog in step with every LAN member (a new leader at once,
        then every ``reconcile_interval``): the writes it made.
        """
        pool = self._agent.membership.lan
        if pool is None:
            return 0
        return self.reconciler.reconcile_all(pool.serf.members)

    def _reconcile_periodically(self) -> None:
        node = self.node
        if node is not None and node.core is not None and node.core.leading_with_current_commit():
            self._reconcile_all()

    # -- RPC and operator -------------------------------------------------------------

    def _rpc_apply(self, body: Any) -> Deferred[Any]:
        node = self.node
        if not isinstance(body, dict):
            return fail(BadRequest("Raft.Apply takes a command map"))
        if node is None:
            return fail(NoLeader("No cluster leader"))
        return node.apply(body)

    def configuration(self) -> dict[str, Any]:
        """``/v1/operator/raft/configuration``."""
        node = self.node
        if node is None or node.core is None:
            return {"Servers": [], "Index": 0}
        known = {s.address: s for s in self.servers()}
        leader = node.leader_address()
        out = []
        for address in sorted(node.peers()):
            info = known.get(address)
            out.append(
                {
                    "ID": info.id if info else address,
                    "Node": info.name if info else "(unknown)",
                    "Address": address,
                    "Leader": address == leader,
                    "Voter": True,
                    "ProtocolVersion": "3",
                }
            )
        return {"Servers": out, "Index": node.core.config_index}

    def remove_peer(self, address: str) -> Deferred[Any]:
        """Remove a voter by its address, on the leader (forwarded there from a follower)."""
        node = self.node
        if node is not None and node.core is not None and node.core.role is Role.LEADER:
            return self._rpc_remove_peer({"Address": address})
        return self.forwarder.forward("Operator.RaftRemovePeerByAddress", {"Address": address})

    def _rpc_remove_peer(self, body: Any) -> Deferred[Any]:
        node = self.node
        address = body.get("Address") if isinstance(body, dict) else None
        if not isinstance(address, str) or not address:
            return fail(BadRequest("Must specify ?address with IP:port of peer to remove"))
        if node is None:
            return fail(NoLeader("No cluster leader"))
        config = node.peers()
        if address not in config:
            return fail(NotFound(f"address {address!r} was not found in the Raft configuration"))
        try:
            node.change_config([p for p in config if p != address])
        except ValueError as e:
            return fail(TxConsulError(str(e)))
        except TxConsulError as e:
            return fail(e)
        return succeed(None)
