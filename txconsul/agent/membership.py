# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
The agent's gossip pools: LAN on every agent, WAN on servers (spec section 12).

``Membership`` owns a ``GossipPool`` with a serf delegate per pool, publishes
Consul's tags, joins at start (``start_join``) and retries (``retry_join``),
leaves gracefully when asked, and hands every batch of serf events to its
subscribers (the catalog reconciliation of ``txconsul.agent.reconcile``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.task import deferLater
from twisted.logger import Logger

from txconsul import CONSUL_VERSION
from txconsul.config import DEFAULT_PORTS
from txconsul.errors import BadRequest, TxConsulError
from txconsul.gossip import snapshot
from txconsul.gossip.adapter import GossipPool, Monotonic
from txconsul.gossip.keyring import Keyring, decode_key, read_keyring_file, write_keyring_file
from txconsul.gossip.memberlist import Address, GossipConfig, Node
from txconsul.gossip.messages import DEFAULT_VSN
from txconsul.gossip.serf import (
    KeyResponse,
    Member,
    MemberEvent,
    MemberStatus,
    MergeCheck,
    QueryHandle,
    Serf,
    SerfConfig,
    UserEvent,
    key_response,
)
from txconsul.gossip.states import MemberState

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

#: How long a graceful leave waits for its broadcasts to go out (serf's BroadcastTimeout).
BROADCAST_TIMEOUT = 5.0

#: How long a leaving agent stays up after memberlist's leave went out, answering
#: the probes of members that have not heard it yet (serf's LeavePropagateDelay,
#: which Consul sets to 3 s on both pools instead of serf's 1 s).
LEAVE_PROPAGATE_DELAY = 3.0

#: serf's timers as Consul sets them (agent/consul/config.go)
CONSUL_SERF = SerfConfig(
    broadcast_timeout=BROADCAST_TIMEOUT, leave_propagate_delay=LEAVE_PROPAGATE_DELAY
)

Event = MemberEvent | UserEvent
Subscriber = Callable[["SerfPool", list[Event]], None]


class JoinFailed(TxConsulError):
    """Nobody answered a join."""


class ConsulSerf(Serf):
    """
    serf as the agent uses it: it tells its owner after each call that may
    have produced events, and it can force a member out.
    """

    def __init__(
        self,
        name: str,
        tags: Mapping[str, str],
        retransmit_mult: int,
        snapshot: snapshot.SnapshotFile | None = None,
        keyring: Keyring | None = None,
        save_keyring: Callable[[Keyring], None] | None = None,
        merge: MergeCheck | None = None,
    ) -> None:
        super().__init__(
            name,
            tags,
            retransmit_mult,
            config=CONSUL_SERF,
            snapshot=snapshot,
            keyring=keyring,
            save_keyring=save_keyring,
            merge=merge,
        )
        self.changed: Callable[[], None] = lambda: None

    def notify_msg(self, now: float, payload: bytes) -> None:
        super().notify_msg(now, payload)
        self.changed()

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> None:
        super().merge_remote_state(now, data, join)
        self.changed()

    def notify_join(self, now: float, node: Node) -> None:
        super().notify_join(now, node)
        self.changed()

    def notify_leave(self, now: float, node: Node) -> None:
        super().notify_leave(now, node)
        self.changed()

    def notify_update(self, now: float, node: Node) -> None:
        super().notify_update(now, node)
        self.changed()

    def tick(self, now: float) -> list[tuple[str, int]]:
        targets = super().tick(now)
        self.changed()  # reaps and prunes
        return targets

    def force_leave(self, now: float, node: str, prune: bool = False) -> None:
        """serf's force-leave of a member we know; ``TxConsulError`` for a stranger."""
        if node not in self.members:
            raise TxConsulError(f"agent: No node found with name {node!r}")
        super().force_leave(now, node, prune)
        self.changed()


@attrs.define
class SerfPool:
    """One pool: its name, the gossip service and the serf layer on it."""

    wan: bool
    serf: ConsulSerf
    gossip: GossipPool
    keyring: Keyring | None
    #: ``data_dir/serf/local.snapshot`` or ``remote.snapshot``; none in dev mode
    snapshot: snapshot.SnapshotFile | None = None
    #: the members alive when the agent last stopped without leaving
    previous: list[Address] = attrs.field(factory=list)


#: the pools' keyrings in the data directory, as Consul names them
KEYRING_FILES = {
    False: os.path.join("serf", "local.keyring"),
    True: os.path.join("serf", "remote.keyring"),
}

#: serf's member snapshots in the data directory, as Consul names them
SNAPSHOT_FILES = {
    False: os.path.join("serf", "local.snapshot"),
    True: os.path.join("serf", "remote.snapshot"),
}


def lan_merge_check(datacenter: str, node_id: str, node_name: str) -> MergeCheck:
    """
    Consul's LAN merge rules (its ``lanMergeDelegate``): no Consul agent or
    server of another datacenter, no member of a network segment, no member
    with this agent's node ID under another name, no two members with one
    node ID. Members that are not Consul agents (a plain serf agent) pass.
    """

    def check(members: list[tuple[str, dict[str, str]]]) -> str | None:
        ids: dict[str, str] = {}
        for name, tags in members:
            node = tags.get("id", "")
            if node:
                if node == node_id and name.lower() != node_name.lower():
                    return f"Member '{name}' has conflicting node ID '{node}' with this agent's ID"
                other = ids.get(node)
                if other is not None:
                    return f"Member '{name}' has conflicting node ID '{node}' with member '{other}'"
                ids[node] = name
            if tags.get("role") in ("node", "consul") and tags.get("dc", "") != datacenter:
                return f"Member '{name}' part of wrong datacenter '{tags.get('dc', '')}'"
            segment = tags.get("segment", "")
            if segment:
                return f"Member '{name}' part of wrong segment '{segment}' (expected '')"
        return None

    return check


def wan_merge_check(members: list[tuple[str, dict[str, str]]]) -> str | None:
    """Consul's WAN rule (its ``wanMergeDelegate``): servers only."""
    for name, tags in members:
        if tags.get("role") != "consul":
            return f"Member '{name}' is not a server"
    return None


def gossip_config(base: GossipConfig, overrides: Mapping[str, float]) -> GossipConfig:
    """memberlist timing from Consul's ``gossip_lan``/``gossip_wan`` settings."""
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        default = getattr(base, name)
        changes[name] = int(value) if isinstance(default, int) else float(value)
    return attrs.evolve(base, **changes)


def member_json(member: Member, vsn: bytes = DEFAULT_VSN) -> dict[str, Any]:
    """A serf member as Consul's API shows it (``/v1/agent/members``)."""
    if len(vsn) < 6:
        vsn = DEFAULT_VSN
    return {
        "Name": member.name,
        "Addr": member.address[0],
        "Port": member.address[1],
        "Tags": dict(member.tags),
        "Status": int(member.status),
        "ProtocolMin": vsn[0],
        "ProtocolMax": vsn[1],
        "ProtocolCur": vsn[2],
        "DelegateMin": vsn[3],
        "DelegateMax": vsn[4],
        "DelegateCur": vsn[5],
    }


def parse_join_address(text: str, default_port: int) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as ``(host, port)``."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host = inner
        if rest.startswith(":"):
            port = _port(rest[1:], text)
        elif rest:
            raise BadRequest(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, text)
    if not host:
        raise BadRequest(f"bad address {text!r}")
    return host, port


def _port(number: str, text: str) -> int:
    if not number.isdigit() or not 0 < int(number) <= 65535:
        raise BadRequest(f"bad port in address {text!r}")
    return int(number)


class Membership(Service):
    """
    The agent's LAN pool, and the WAN pool of a server.

    Pools are built in ``startService``, once the node ID is known; the WAN
    pool starts first so that the LAN tags can name its port.
    """

    log = Logger()

    def __init__(self, agent: Agent, monotonic: Monotonic, rng: random.Random) -> None:
        self._agent = agent
        self._monotonic = monotonic
        self._rng = rng
        self.lan: SerfPool | None = None
        self.wan: SerfPool | None = None
        self._subscribers: list[Subscriber] = []
        self._retrying: list[Deferred[Any]] = []
        self._leaving: Deferred[None] | None = None
        #: leave propagate delays under way, cut short if the service stops
        self._propagating: list[Deferred[None]] = []

    # -- life cycle -----------------------------------------------------------------

    def startService(self) -> None:
        c = self._agent.config
        if not IReactorUDP.providedBy(self._agent.reactor):
            # a MemoryReactor in unit tests: the agent runs alone, without pools
            self.log.warn("the reactor has no UDP: gossip is off")
            super().startService()
            return
        if c.server:
            self.wan = self._pool(wan=True)
        self.lan = self._pool(wan=False)
        super().startService()
        for pool in self.pools():
            if pool.previous:
                self._background(self._rejoin(pool))

    def _pool(self, wan: bool) -> SerfPool:
        c = self._agent.config
        name = f"{c.node_name}.{c.datacenter}" if wan else c.node_name
        base = GossipConfig.wan() if wan else GossipConfig.lan()
        config = gossip_config(base, c.gossip_wan if wan else c.gossip_lan)
        snap, state = None, snapshot.SnapshotState()
        if c.data_dir:
            path = os.path.join(c.data_dir, SNAPSHOT_FILES[wan])
            state = snapshot.load(path, c.rejoin_after_leave)
            snap = snapshot.SnapshotFile(path, state, c.rejoin_after_leave)
        keyring, save = self._keyring(wan)
        merge = (
            wan_merge_check
            if wan
            else lan_merge_check(c.datacenter, self._agent.node_id, c.node_name)
        )
        serf = ConsulSerf(
            name, self.tags(wan), config.retransmit_mult, snap, keyring, save, self._logged(merge)
        )
        if state.clock or state.event_clock or state.query_clock:
            serf.restore(state.clock, state.event_clock, state.query_clock)
        port = c.ports["serf_wan" if wan else "serf_lan"]
        gossip = GossipPool(
            self._agent.reactor,
            self._monotonic,
            name,
            interface=c.bind_addr,
            port=port,
            config=config,
            rng=random.Random(self._rng.random()),
            delegate=serf,
            keyring=keyring,
            advertise=c.advertise_wan if wan else c.advertise,
            verify_incoming=c.encrypt_verify_incoming,
            verify_outgoing=c.encrypt_verify_outgoing,
        )
        pool = SerfPool(wan, serf, gossip, keyring, snap, state.rejoin())
        serf.changed = lambda: self._dispatch(pool)
        gossip.startService()
        self.log.info(
            "gossip {which} pool {name} on {addr}, advertised as {advertised}",
            which="WAN" if wan else "LAN",
            name=name,
            addr="%s:%d" % gossip.address(),
            advertised="%s:%d" % gossip.advertised(),
        )
        return pool

    def _logged(self, check: MergeCheck) -> MergeCheck:
        """``check``, logging each refusal (at debug level once it was said)."""
        said: set[str] = set()

        def logged(members: list[tuple[str, dict[str, str]]]) -> str | None:
            refusal = check(members)
            if refusal is not None:
                level = self.log.debug if refusal in said else self.log.warn
                level("refused gossip from outside the pool: {why}", why=refusal)
                if len(said) < 1024:
                    said.add(refusal)
            return refusal

        return logged

    def join_refusal(self, address: str, wan: bool = False) -> str | None:
        """Why the last join through ``address`` was refused, if it was."""
        pool = self.pool(wan)
        default = DEFAULT_PORTS["serf_wan" if wan else "serf_lan"]
        return pool.gossip.refusals.get(parse_join_address(address, default))

    def _keyring(self, wan: bool) -> tuple[Keyring | None, Callable[[Keyring], None] | None]:
        """
        The pool's keyring and how to save it, as Consul sets them up: with a
        data directory the keyring lives in ``serf/local.keyring`` (or
        ``remote.keyring``), created from ``encrypt`` the first time and
        preferred to ``encrypt`` afterwards, so that keys installed at run time
        survive a restart.
        """
        c = self._agent.config
        if not c.data_dir:
            return (Keyring([decode_key(c.encrypt)]) if c.encrypt else None), None
        path = os.path.join(c.data_dir, KEYRING_FILES[wan])
        if os.path.exists(path):
            keyring = Keyring(read_keyring_file(path))
            if c.encrypt and decode_key(c.encrypt) not in keyring.keys:
                self.log.warn(
                    "{which} keyring {path} does not include the key given with encrypt; "
                    "using the keyring",
                    which="WAN" if wan else "LAN",
                    path=path,
                )
        elif c.encrypt:
            keyring = Keyring([decode_key(c.encrypt)])
            write_keyring_file(path, keyring)
        else:
            return None, None
        return keyring, lambda k: write_keyring_file(path, k)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for d in self._retrying + self._propagating:
            d.cancel()
        self._retrying = []
        stopping = [p.gossip.stopService() for p in self.pools()]
        for pool in self.pools():
            pool.serf.close_queries()
            if pool.snapshot is not None:
                pool.snapshot.close()
        self.lan = self.wan = None
        return gatherResults(stopping)

    def pools(self) -> list[SerfPool]:
        return [p for p in (self.lan, self.wan) if p is not None]

    def pool(self, wan: bool) -> SerfPool:
        """The LAN or WAN pool; the WAN pool of a client is a ``BadRequest``."""
        pool = self.wan if wan else self.lan
        if pool is None:
            raise BadRequest("WAN pool is only available on servers" if wan else "not running")
        return pool

    # -- tags and members -----------------------------------------------------------

    def tags(self, wan: bool) -> dict[str, str]:
        """Consul's serf tags for this agent (spec section 12)."""
        agent = self._agent
        c = agent.config
        tags = {
            "role": "consul" if c.server else "node",
            "dc": c.datacenter,
            "segment": "",
            "id": agent.node_id,
            "vsn": "2",
            "vsn_min": "2",
            "vsn_max": "3",
            "build": f"{CONSUL_VERSION}:txconsul",
        }
        if c.server:
            tags["port"] = str(c.ports["server"])
            tags["raft_vsn"] = "3"
            if c.bootstrap_expect:
                tags["expect"] = str(c.bootstrap_expect)
            elif c.bootstrap:
                tags["bootstrap"] = "1"
            tags["acls"] = "0"  # ACLs disabled; no ft_* flags: no federation states, no intentions
            if not wan and self.wan is not None:
                tags["wan_join_port"] = str(self.wan.gossip.address()[1])
        return tags

    def members(self, wan: bool = False) -> list[dict[str, Any]]:
        """Every member the pool knows, in any status, sorted by name."""
        pool = self.wan if wan else self.lan
        if pool is None:
            return []
        nodes = pool.gossip.core.nodes if pool.gossip.node is not None else {}
        out = []
        for name in sorted(pool.serf.members):
            node = nodes.get(name)
            out.append(member_json(pool.serf.members[name], node.vsn if node else DEFAULT_VSN))
        return out

    def self_member(self) -> dict[str, Any]:
        """This agent as a LAN member."""
        c = self._agent.config
        pool = self.lan
        if pool is not None and c.node_name in pool.serf.members:
            return member_json(pool.serf.members[c.node_name])
        me = Member(
            c.node_name, (c.advertise, c.ports["serf_lan"]), self.tags(False), MemberStatus.ALIVE
        )
        return member_json(me)

    # -- events ---------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(pool, events)`` with each batch of serf events."""
        self._subscribers.append(subscriber)

    def _dispatch(self, pool: SerfPool) -> None:
        events = pool.serf.drain_events()
        if not events:
            return
        for subscriber in self._subscribers:
            with self.log.failuresHandled("serf event subscriber {s}", s=subscriber):
                subscriber(pool, events)

    # -- join and leave ---------------------------------------------------------------

    def join(self, addresses: list[str], wan: bool = False) -> Deferred[int]:
        """Join through each address; fires with how many answered."""
        pool = self.pool(wan)
        default = DEFAULT_PORTS["serf_wan" if wan else "serf_lan"]
        targets = [parse_join_address(a, default) for a in addresses]

        def joined(n: int) -> int:
            if n and self.pool(wan) is pool:
                pool.serf.join_intent()
                pool.gossip.flush()
            self.log.info(
                "join {which} {addresses}: {n} answered",
                which="WAN" if wan else "LAN",
                addresses=addresses,
                n=n,
            )
            return n

        return pool.gossip.join(targets).addCallback(joined)

    def start_joins(self) -> Deferred[None]:
        """
        ``start_join`` now (refusing to start when nobody answers, as Consul
        does), then ``retry_join`` in the background until it succeeds.
        """
        return ensureDeferred(self._start_joins())

    async def _start_joins(self) -> None:
        c = self._agent.config
        if c.join:
            n = await self.join(list(c.join))
            if not n:
                raise JoinFailed(f"start_join: none of {', '.join(c.join)} answered")
        if c.retry_join:
            self._background(self._retry_join(list(c.retry_join), c.retry_interval))
        if c.retry_join_wan and self.wan is not None:
            self._background(
                self._retry_join(list(c.retry_join_wan), c.retry_interval_wan, wan=True)
            )

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` until it ends or the service stops."""
        d = ensureDeferred(work)
        self._retrying.append(d)
        d.addErrback(lambda f: f.trap(CancelledError))
        d.addBoth(lambda r: self._retrying.remove(d) if d in self._retrying else None)

    async def _rejoin(self, pool: SerfPool) -> None:
        """
        Join the members recorded in the snapshot, one at a time in random
        order, until one answers (serf's rejoin after a restart).
        """
        which = "WAN" if pool.wan else "LAN"
        addresses = list(pool.previous)
        self._rng.shuffle(addresses)
        for address in addresses:
            if pool.gossip.node is None or pool.gossip.node.core.stopped:
                return
            self.log.info(
                "rejoining the {which} pool at {addr}", which=which, addr="%s:%d" % address
            )
            if await pool.gossip.join([address]):
                self.log.info(
                    "rejoined the {which} pool at {addr}", which=which, addr="%s:%d" % address
                )
                return
        self.log.warn("could not rejoin any previously known {which} member", which=which)

    async def _retry_join(self, addresses: list[str], interval: float, wan: bool = False) -> None:
        """Join ``addresses`` every ``interval`` until one answers (``retry_join``, ``_wan``)."""
        key = "retry_join_wan" if wan else "retry_join"
        attempt = 1
        while True:
            n = await self.join(addresses, wan)
            if n:
                self.log.info("{key} succeeded after {n} attempts", key=key, n=attempt)
                return
            self.log.warn(
                "{key} {addresses}: nobody answered, retrying in {interval}s",
                key=key,
                addresses=addresses,
                interval=interval,
            )
            attempt += 1
            await deferLater(self._agent.reactor, interval, lambda: None)

    def force_leave(self, node: str, prune: bool = False, wan: bool = False) -> None:
        pool = self.pool(wan)
        pool.serf.force_leave(self._monotonic(), node, prune)
        pool.gossip.flush()

    def leave(self) -> Deferred[None]:
        """
        Leave every pool gracefully: the serf leave intent, then memberlist's
        leave, each given time to spread. Fires once; later calls share it.
        """
        if self._leaving is None:
            pools = self.pools()
            if not pools:
                return succeed(None)
            d = gatherResults([ensureDeferred(self._leave(p)) for p in pools])
            self._leaving = d.addCallback(lambda _: None)
        return self._leaving

    async def _leave(self, pool: SerfPool) -> None:
        """
        serf's graceful leave: broadcast the leave intent and wait (at most a
        broadcast timeout) until it went out, so that the others hold us as
        leaving; then memberlist's leave, waited for the same way; then stay up
        for the leave propagate delay, answering probes while the leave
        spreads, so that nobody who has not heard it yet suspects us and marks
        us failed. serf sleeps that delay even alone; we skip it when no
        other member is alive, as nobody could probe us.
        """
        serf, gossip = pool.serf, pool.gossip
        which = "WAN" if pool.wan else "LAN"
        serf.leave_intent()
        gossip.flush()
        await self._until(pool, lambda: len(serf.broadcasts) == 0)
        if gossip.node is None or gossip.node.core.stopped:
            return
        gossip.leave()
        await self._until(pool, lambda: len(gossip.core.broadcasts) == 0)
        delay = serf.config.leave_propagate_delay
        if delay > 0 and self._anyone_alive(pool):
            self.log.info(
                "left the {which} pool; waiting {delay} s for the leave to propagate",
                which=which,
                delay=delay,
            )
            wait = deferLater(self._agent.reactor, delay, lambda: None)
            self._propagating.append(wait)
            try:
                await wait
            except CancelledError:
                return  # the agent stopped meanwhile
            finally:
                self._propagating.remove(wait)
        else:
            self.log.info("left the {which} pool", which=which)

    @staticmethod
    def _anyone_alive(pool: SerfPool) -> bool:
        node = pool.gossip.node
        if node is None or node.core.stopped:
            return False
        core = node.core
        return any(n.state == MemberState.ALIVE for n in core.nodes.values() if n is not core.me)

    async def _until(self, pool: SerfPool, done: Callable[[], bool]) -> None:
        """Wait (polling at the gossip interval) until ``done()``, for at most a broadcast timeout."""
        gossip = pool.gossip
        step = gossip.core.config.gossip_interval
        waited = 0.0
        while waited < BROADCAST_TIMEOUT:
            if done() or not self._anyone_alive(pool):
                return  # sent, stopped, or nobody to tell
            await deferLater(self._agent.reactor, step, lambda: None)
            waited += step

    # -- keyring ----------------------------------------------------------------------

    def keyrings(self, lan_only: bool = False) -> list[SerfPool]:
        """The pools with encryption on; ``TxConsulError`` when there is none."""
        pools = [p for p in self.pools() if p.keyring is not None and not (lan_only and p.wan)]
        if not pools:
            raise TxConsulError("Gossip encryption is not enabled on this agent")
        return pools

    def keyring_operation(
        self, op: str, key: bytes | None = None, lan_only: bool = False, relay_factor: int = 0
    ) -> Deferred[list[tuple[SerfPool, KeyResponse]]]:
        """
        ``install``, ``use`` or ``remove`` ``key`` on every member of each
        encrypted pool (the LAN pool alone with ``lan_only``), or ``list``
        their keys, through serf's internal key queries; fires with each
        pool's summed-up answers once every member answered or the query
        timed out; with ``relay_factor`` every member also sends its answer
        through that many others. ``txconsul.agent.keyring`` runs it on the servers.
        """
        pools = self.keyrings(lan_only)
        queries = [self._key_query(pool, op, key, relay_factor) for pool in pools]
        return gatherResults(queries).addCallback(
            lambda answers: list(zip(pools, answers, strict=True))
        )

    def _key_query(
        self, pool: SerfPool, op: str, key: bytes | None, relay_factor: int
    ) -> Deferred[KeyResponse]:
        done: Deferred[KeyResponse] = Deferred()
        handle = pool.serf.key_query(self._monotonic(), op, key, relay_factor)
        num_nodes = pool.gossip.core.num_members()

        def watch(h: QueryHandle) -> None:
            if not done.called and (h.closed or len(h.responses) >= num_nodes):
                h.watcher = None
                done.callback(key_response(h, num_nodes))

        handle.watcher = watch
        pool.gossip.flush()  # sends the query and arms the timer for its deadline
        watch(handle)  # our own answer is in already
        return done
