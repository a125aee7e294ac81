# -*- test-case-name: txconsul.test.gossip.test_memberlist -*-
"""
SWIM failure detection and gossip with Lifeguard's refinements, as a pure state
machine that behaves as memberlist 0.2.2 does on the wire (spec section 7).

The caller passes the time (monotonic seconds) and decoded messages in, and
gets back what to send (``Packet``, ``StreamPing``, ``StartPushPull``); it arms
one timer for ``next_deadline()`` and calls ``tick``. Randomness is an injected
``random.Random``. ``txconsul.gossip.adapter`` puts this on real sockets and
``txconsul.testing.simnet`` on an in-memory network.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs

from txconsul.gossip.awareness import Awareness
from txconsul.gossip.broadcast import BroadcastQueue
from txconsul.gossip.messages import (
    DEFAULT_VSN,
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    User,
    ip_bytes,
    ip_text,
    push_pull_header_size,
)
from txconsul.gossip.states import MemberState, check_transition, dead_or_left
from txconsul.gossip.suspicion import Suspicion, expected_confirmations, suspicion_timeout
from txconsul.gossip.wire import MalformedPacket

Address = tuple[str, int]

UDP_BUFFER = 1400
COMPOUND_OVERHEAD = 2
ENCRYPT_OVERHEAD = 29
META_MAX = 512


@attrs.frozen
class GossipConfig:
    """memberlist's timing knobs (spec section 8); seconds throughout."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    push_pull_interval: float = 30.0
    #: Bytes per second that the push/pulls a member starts may carry, its
    #: state and the reply counted: past memberlist's scaled interval, the
    #: interval stretches to ``2 * state size / budget``, so that push/pull
    #: bytes per member stay flat as the pool grows (each exchange carries
    #: every member). 0 keeps memberlist's schedule alone. A local choice,
    #: invisible on the wire; see docs/gossip.rst for the trade-off.
    push_pull_budget: float = 160.0
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    #: After this long dead, a member may come back at another address
    #: (memberlist's DeadNodeReclaimTime; 0 never). Consul sets 30 s on both
    #: pools (agent/consul/config.go); a left member may come back at once.
    dead_node_reclaim_time: float = 30.0
    awareness_max_multiplier: int = 8
    tcp_timeout: float = 10.0
    disable_tcp_pings: bool = False
    encrypted: bool = False
    #: LZW on UDP packets and on push/pull and ping streams (memberlist's
    #: EnableCompression, which does both). Off: see
    #: ``txconsul.gossip.adapter.Codec``; compressed input is read either way.
    compress_packets: bool = False
    compress_streams: bool = False
    #: Lifeguard switches, on by default; off gives plain SWIM for comparisons.
    awareness: bool = True
    dynamic_suspicion: bool = True

    @classmethod
    def lan(cls) -> GossipConfig:
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        return cls(
            probe_interval=5.0,
            probe_timeout=3.0,
            suspicion_mult=6,
            push_pull_interval=60.0,
            gossip_interval=0.5,
            gossip_nodes=4,
            gossip_to_the_dead_time=60.0,
            tcp_timeout=30.0,
        )

    @classmethod
    def local(cls) -> GossipConfig:
        return cls(
            probe_timeout=0.2,
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            push_pull_interval=15.0,
            gossip_interval=0.1,
            gossip_to_the_dead_time=15.0,
            tcp_timeout=1.0,
        )


@attrs.define
class Node:
    """What this member knows about one member (itself included)."""

    name: str
    addr: bytes
    port: int
    meta: bytes
    vsn: bytes
    incarnation: int
    state: MemberState
    state_change: float
    address: Address

    @property
    def pmax(self) -> int:
        return self.vsn[1] if len(self.vsn) > 1 else 0

    #: the last ``to_push`` record, reused while nothing it holds has changed
    push_cache: PushNodeState | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def to_push(self) -> PushNodeState:
        c = self.push_cache
        if (
            c is not None
            and c.incarnation == self.incarnation
            and c.state == self.state
            and c.addr is self.addr
            and c.port == self.port
            and c.meta is self.meta
            and c.vsn is self.vsn
        ):
            return c
        c = PushNodeState(
            self.name, self.addr, self.port, self.meta, self.incarnation, int(self.state), self.vsn
        )
        self.push_cache = c
        return c


@attrs.frozen
class SharedPush:
    """The push/pull list of members shared by simulated cores, and where each one is in it."""

    nodes: tuple[PushNodeState, ...]
    index: dict[str, int]
    #: the encoded size of ``nodes``
    size: int

    @classmethod
    def of(cls, shared: dict[str, Node]) -> SharedPush:
        nodes = tuple(n.to_push() for n in shared.values())
        return cls(
            nodes,
            {name: i for i, name in enumerate(shared)},
            sum(n.wire_size() for n in nodes),
        )


# outputs


@attrs.frozen
class Packet:
    """Send these messages in one UDP packet (a compound when several)."""

    to: Address
    messages: tuple[Message, ...]
    crc: bool = False


@attrs.frozen
class StreamPing:
    """Ping over TCP as the fallback probe; feed the ack back through ``receive``."""

    to: Address
    ping: Ping


@attrs.frozen
class StartPushPull:
    """Open a stream, send ``state``, then give the reply to ``merge_remote_state``."""

    to: Address
    state: PushPull


Output = Packet | StreamPing | StartPushPull


class Delegate(Protocol):
    """What the layer above (serf) offers; every method is called synchronously."""

    def node_meta(self, limit: int) -> bytes: ...
    def notify_msg(self, now: float, payload: bytes) -> None: ...
    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]: ...
    def has_broadcasts(self) -> bool: ...
    def local_state(self, join: bool) -> bytes: ...
    def merge_remote_state(self, now: float, data: bytes, join: bool) -> None: ...
    def notify_join(self, now: float, node: Node) -> None: ...
    def notify_leave(self, now: float, node: Node) -> None: ...
    def notify_update(self, now: float, node: Node) -> None: ...
    def ack_payload(self) -> bytes | None: ...
    def notify_merge(self, nodes: Sequence[PushNodeState]) -> str | None: ...
    def notify_alive(self, alive: Alive) -> str | None: ...


class NullDelegate:
    """A delegate that adds nothing: plain memberlist."""

    def node_meta(self, limit: int) -> bytes:
        return b""

    def notify_msg(self, now: float, payload: bytes) -> None:
        pass

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return []

    def has_broadcasts(self) -> bool:
        return False

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> None:
        pass

    def notify_join(self, now: float, node: Node) -> None:
        pass

    def notify_leave(self, now: float, node: Node) -> None:
        pass

    def notify_update(self, now: float, node: Node) -> None:
        pass

    def ack_payload(self) -> bytes | None:
        return None

    def notify_merge(self, nodes: Sequence[PushNodeState]) -> str | None:
        """memberlist's MergeDelegate: a reason to refuse a push/pull's members, or ``None``."""
        return None

    def notify_alive(self, alive: Alive) -> str | None:
        """memberlist's AliveDelegate: a reason to ignore an alive message, or ``None``."""
        return None


class MergeRefused(Exception):
    """The delegate refused the members of a push/pull (``notify_merge``); nothing was merged."""


@attrs.define
class _Probe:
    node: str
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@attrs.define
class _Relay:
    requester: Address
    seq_no: int
    nack: bool


def _vsn_ok(vsn: bytes) -> bool:
    return len(vsn) >= 6 and vsn[0] != 0 and vsn[1] != 0 and vsn[0] <= vsn[1]


class Memberlist:
    """
    One member of a SWIM pool.

    :param address: the advertised ``(ip, port)`` of this member.
    :param now: the monotonic time at creation; periodic work is staggered from it.
    """

    def __init__(
        self,
        name: str,
        address: Address,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        delegate: Delegate | None = None,
        vsn: bytes = DEFAULT_VSN,
    ) -> None:
        self.name = name
        self.config = config
        self.rng = rng
        self.delegate: Delegate = delegate if delegate is not None else NullDelegate()
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.broadcasts: BroadcastQueue[Message] = BroadcastQueue(config.retransmit_mult)
        self.nodes: dict[str, Node] = {}
        self._order: list[str] = []
        self._probe_index = 0
        self._seq = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._timer_seq = 0
        self._out: list[Output] = []
        #: the distinct Vsn vectors of alive members, for the push/pull check
        self._alive_vsns: set[bytes] | None = None
        #: members borrowed from a table shared with other simulated cores
        self._shared: dict[str, Node] | None = None
        #: our push/pull node list, kept until a member changes (``_changed``)
        self._push_nodes: tuple[PushNodeState, ...] | None = None
        #: the encoded size of ``_push_nodes``
        self._push_size = 0
        #: the shared members' push/pull list, while we have changed none of them
        self._shared_push: SharedPush | None = None
        self.leaving = False
        self.stopped = False
        #: alive messages the delegate refused (``notify_alive``)
        self.refused_alive = 0
        me = Node(
            name,
            ip_bytes(address[0]),
            address[1],
            self.delegate.node_meta(META_MAX),
            vsn,
            1,
            MemberState.ALIVE,
            now,
            address,
        )
        self.me = me
        self.nodes[name] = me
        self._order.append(name)
        self._at(now + rng.random() * config.probe_interval, self._probe_tick)
        self._at(now + rng.random() * config.gossip_interval, self._gossip_tick)
        if config.push_pull_interval > 0:
            self._at(now + rng.random() * config.push_pull_interval, self._push_pull_tick)

    # --- the driving interface --------------------------------------------------

    def receive(self, now: float, source: Address, message: Message) -> list[Output]:
        """Handle one decoded message that arrived from ``source``."""
        if self.stopped:
            return []
        kind = type(message)
        if kind is Alive:
            self.on_alive(now, message)  # type: ignore[arg-type]
        elif isinstance(message, Ping):
            self._on_ping(source, message)
        elif isinstance(message, IndirectPing):
            self._on_indirect_ping(now, source, message)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Nack):
            probe = self._probes.get(message.seq_no)
            if probe is not None:
                probe.nacks += 1
        elif isinstance(message, Alive):
            self.on_alive(now, message)
        elif isinstance(message, Suspect):
            self.on_suspect(now, message)
        elif isinstance(message, Dead):
            self.on_dead(now, message)
        elif isinstance(message, User):
            self.delegate.notify_msg(now, message.payload)
        elif isinstance(message, ErrResp):
            pass
        return self._drain()

    def tick(self, now: float) -> list[Output]:
        """Run every timer due at ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now and not self.stopped:
            _, _, fn, args = heapq.heappop(timers)
            fn(now, *args)
        return self._drain()

    def next_deadline(self) -> float:
        """When ``tick`` should next be called (``inf`` when stopped)."""
        if self.stopped or not self._timers:
            return math.inf
        return self._timers[0][0]

    def join(self, now: float, addresses: Iterable[Address]) -> list[Output]:
        """Push/pull with each address, as memberlist's ``Join`` does."""
        state = self.local_state(join=True)
        self._out += [StartPushPull(a, state) for a in addresses]
        return self._drain()

    def leave(self, now: float) -> list[Output]:
        """Announce a voluntary leave; keep answering probes afterwards."""
        self.leaving = True
        self.on_dead(now, Dead(self.me.incarnation, self.name, self.name))
        return self._drain()

    def update_meta(self, now: float) -> list[Output]:
        """Re-read the delegate's meta and announce it with a new incarnation."""
        self.me.meta = self.delegate.node_meta(META_MAX)
        self.me.incarnation += 1
        self._changed()
        self._broadcast_alive()
        return self._drain()

    def stop(self) -> None:
        """Forget every timer: the member is shut down (or crashed, in a simulation)."""
        self.stopped = True
        self._timers.clear()

    def queue_user(self, to: Address, payload: bytes) -> None:
        """Send a delegate message straight to ``to`` with the next outputs."""
        self._out.append(Packet(to, (User(payload),)))

    def take_outputs(self) -> list[Output]:
        """Outputs queued outside ``receive``/``tick`` (a delegate's direct sends)."""
        return self._drain()

    def send_user(self, now: float, to: Address, payload: bytes) -> list[Output]:
        """Send one delegate message straight to an address (serf's direct sends)."""
        self._out.append(Packet(to, (User(payload),)))
        return self._drain()

    # --- push/pull ---------------------------------------------------------------

    def local_state(self, join: bool) -> PushPull:
        return PushPull(join, self._push_list(), self.delegate.local_state(join))

    def _push_list(self) -> tuple[PushNodeState, ...]:
        nodes = self._push_nodes
        if nodes is None:
            base = self._shared_push
            if base is not None:
                listed = list(base.nodes)
                i = base.index[self.name]
                mine = self.me.to_push()
                size = base.size - listed[i].wire_size() + mine.wire_size()
                listed[i] = mine
                nodes = tuple(listed)
            else:
                nodes = tuple(n.to_push() for n in self.nodes.values())
                size = sum(n.wire_size() for n in nodes)
            self._push_nodes = nodes
            self._push_size = size
        return nodes

    def _state_size(self, state: PushPull) -> int:
        """Encoded bytes of ``state``, one of our own ``local_state`` results."""
        nodes = self._push_size
        if state.nodes is not self._push_nodes:
            nodes = sum(n.wire_size() for n in state.nodes)
        return state.header_size() + nodes + len(state.user_state)

    def _local_state_size(self) -> int:
        """Encoded bytes of ``local_state(False)``, without building our list if shared."""
        base = self._shared_push
        if self._push_nodes is not None or base is None:
            return self._state_size(self.local_state(join=False))
        i = base.index[self.name]
        nodes = base.size - base.nodes[i].wire_size() + self.me.to_push().wire_size()
        user = len(self.delegate.local_state(False))
        return push_pull_header_size(False, len(base.nodes), user) + nodes + user

    def _changed(self) -> None:
        """A member was added, removed or changed: the push/pull list is stale."""
        self._push_nodes = None

    def merge_remote_state(self, now: float, remote: PushPull) -> list[Output]:
        """Merge a peer's push/pull state (either side of the exchange)."""
        if self.stopped:
            return []
        entries: Sequence[PushNodeState] = remote.nodes
        if self._shared is not None and len(entries) > 64:
            # Simulated cores share member records (``bootstrap``): an entry
            # that *is* one of our own push records says what we know already
            # (shared records stay alive and unchanged), so only the others
            # are merged and version-checked, ours being in ``_alive_vsns``.
            mine = set(map(id, self._push_list()))
            entries = [n for n in entries if id(n) not in mine]
        if not self._versions_compatible(entries):
            raise MalformedPacket("incompatible protocol versions in push/pull")
        refusal = self.delegate.notify_merge(remote.nodes)
        if refusal is not None:
            raise MergeRefused(refusal)
        nodes = self.nodes
        alive = int(MemberState.ALIVE)
        for n in entries:
            state = n.state
            if state == alive:
                known = nodes.get(n.name)
                if (
                    known is not None
                    and n.incarnation <= known.incarnation
                    and known.addr == n.addr
                    and known.port == n.port
                    and n.name != self.name
                ):
                    continue  # what on_alive would ignore, without building an Alive
                self.on_alive(now, Alive(n.incarnation, n.name, n.addr, n.port, n.meta, n.vsn))
            elif state == MemberState.LEFT:
                self.on_dead(now, Dead(n.incarnation, n.name, n.name))
            else:
                self.on_suspect(now, Suspect(n.incarnation, n.name, self.name))
        if remote.user_state:
            self.delegate.merge_remote_state(now, remote.user_state, remote.join)
        return self._drain()

    def _versions_compatible(self, remote: Iterable[PushNodeState]) -> bool:
        if self._alive_vsns is None:
            self._alive_vsns = {n.vsn for n in self.nodes.values() if n.state == MemberState.ALIVE}
        alive = int(MemberState.ALIVE)
        vsns = {n.vsn for n in remote if n.state == alive} | self._alive_vsns
        vsns = {v for v in vsns if len(v) >= 6}
        if not vsns:
            return True
        lo_p = max(v[0] for v in vsns)
        hi_p = min(v[1] for v in vsns)
        lo_d = max(v[3] for v in vsns)
        hi_d = min(v[4] for v in vsns)
        return all(lo_p <= v[2] <= hi_p and lo_d <= v[5] <= hi_d for v in vsns)

    def bootstrap(
        self,
        now: float,
        shared: dict[str, Node],
        order: list[str],
        shared_push: SharedPush | None = None,
    ) -> None:
        """
        Start as a member of a converged pool: know every node in ``shared``.

        For simulations of thousands of members: the ``Node`` records are
        shared between cores and copied before the first change, so 10,000
        cores do not hold 10,000 copies each; ``shared_push`` is their push/pull
        list, which a core uses (with its own record put in) for as long as
        it has changed no other member. The first push/pull is staggered
        over the scaled interval, as for a member that has been running a while.
        """
        nodes = dict(shared)
        nodes[self.name] = self.me
        self.nodes = nodes
        self._changed()
        self._shared = shared
        self._shared_push = shared_push if shared_push and self.name in shared_push.index else None
        self._order = list(order)
        self._probe_index = int(self.rng.random() * len(order))
        self._alive_vsns = None
        self._timers = [t for t in self._timers if t[2] != self._push_pull_tick]
        heapq.heapify(self._timers)
        if self.config.push_pull_interval > 0:
            interval = self._push_pull_interval()
            self._at(now + self.rng.random() * interval, self._push_pull_tick)

    def _writable(self, node: Node) -> Node:
        """``node`` itself, or a private copy of it if it is borrowed."""
        shared = self._shared
        if shared is not None and shared.get(node.name) is node:
            node = attrs.evolve(node)
            self.nodes[node.name] = node
            self._shared_push = None
        self._changed()  # every change of a member goes through here first
        return node

    # --- members -----------------------------------------------------------------

    def members(self) -> list[Node]:
        return list(self.nodes.values())

    def num_members(self) -> int:
        """Members not dead or left, ourselves included (memberlist's NumMembers)."""
        return sum(1 for n in self.nodes.values() if not dead_or_left(n.state))

    def alive_count(self) -> int:
        return sum(1 for n in self.nodes.values() if n.state == MemberState.ALIVE)

    # --- timers ------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, fn, args))

    def _drain(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    # --- probing -----------------------------------------------------------------

    def _probe_interval(self) -> float:
        if self.config.awareness:
            return self.awareness.scale(self.config.probe_interval)
        return self.config.probe_interval

    def _probe_tick(self, now: float) -> None:
        interval = self._probe_interval()
        node = self._next_probe_target(now)
        if node is not None:
            self._probe(now, node, interval)
        self._at(now + interval, self._probe_tick)

    def _next_probe_target(self, now: float) -> Node | None:
        checked = 0
        while checked < len(self._order):
            if self._probe_index >= len(self._order):
                self._reset_nodes(now)
                self._probe_index = 0
                checked += 1
                continue
            node = self.nodes[self._order[self._probe_index]]
            self._probe_index += 1
            if node.name == self.name or dead_or_left(node.state):
                checked += 1
                continue
            return node
        return None

    def _reset_nodes(self, now: float) -> None:
        """Forget members dead or left for longer than GossipToTheDeadTime; reshuffle."""
        limit = self.config.gossip_to_the_dead_time
        gone = [
            n.name
            for n in self.nodes.values()
            if dead_or_left(n.state) and now - n.state_change > limit and n.name != self.name
        ]
        for name in gone:
            del self.nodes[name]
        if gone:
            self._shared_push = None
            self._changed()
            self._order = [name for name in self._order if name in self.nodes]
        self.rng.shuffle(self._order)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _ping(self, seq: int, target: str) -> Ping:
        return Ping(seq, target, self.me.addr, self.me.port, self.name)

    def _probe(self, now: float, node: Node, interval: float) -> None:
        seq = self._next_seq()
        messages: list[Message] = [self._ping(seq, node.name)]
        if node.state != MemberState.ALIVE:
            messages.append(Suspect(node.incarnation, node.name, self.name))
        self._send(node.address, messages, node)
        self._probes[seq] = _Probe(node.name)
        self._at(now + self.config.probe_timeout, self._probe_timeout, seq)
        self._at(now + interval, self._probe_end, seq)

    def _probe_timeout(self, now: float, seq: int) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        target = self.nodes.get(probe.node)
        if target is None:
            return
        relays = self._random_nodes(
            self.config.indirect_checks,
            lambda n: n.state == MemberState.ALIVE and n.name != target.name,
        )
        for relay in relays:
            nack = relay.pmax >= 4
            if nack:
                probe.expected_nacks += 1
            request = IndirectPing(
                seq,
                target.addr,
                target.port,
                target.name,
                nack,
                self.me.addr,
                self.me.port,
                self.name,
            )
            self._send(relay.address, [request], relay)
        if not self.config.disable_tcp_pings and target.pmax >= 3:
            self._out.append(StreamPing(target.address, self._ping(seq, target.name)))

    def _probe_end(self, now: float, seq: int) -> None:
        probe = self._probes.pop(seq, None)
        if probe is None or probe.acked:
            return
        if probe.expected_nacks > 0:
            delta = probe.expected_nacks - probe.nacks
        else:
            delta = 1
        if self.config.awareness:
            self.awareness.apply(delta)
        node = self.nodes.get(probe.node)
        if node is not None:
            self.on_suspect(now, Suspect(node.incarnation, node.name, self.name))

    def _on_ack(self, ack: Ack) -> None:
        probe = self._probes.get(ack.seq_no)
        if probe is not None:
            if not probe.acked:
                probe.acked = True
                self.awareness.apply(-1)
            return
        relay = self._relays.pop(ack.seq_no, None)
        if relay is not None:
            self._send(relay.requester, [Ack(relay.seq_no)], None)

    def _on_ping(self, source: Address, ping: Ping) -> None:
        if ping.node and ping.node != self.name:
            return
        to = source
        if ping.source_addr and ping.source_port:
            try:
                to = (ip_text(ping.source_addr), ping.source_port)
            except MalformedPacket:
                return
        ack = Ack(ping.seq_no, self.delegate.ack_payload())
        self._send(to, [ack], self.nodes.get(ping.source_node))

    def _on_indirect_ping(self, now: float, source: Address, request: IndirectPing) -> None:
        requester = source
        try:
            target = (ip_text(request.target), request.port)
            if request.source_addr and request.source_port:
                requester = (ip_text(request.source_addr), request.source_port)
        except MalformedPacket:
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(requester, request.seq_no, request.nack)
        self._send(target, [self._ping(seq, request.node)], self.nodes.get(request.node))
        self._at(now + self.config.probe_timeout, self._relay_timeout, seq)

    def _relay_timeout(self, now: float, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._send(relay.requester, [Nack(relay.seq_no)], None)

    # --- gossip and push/pull ------------------------------------------------------

    def _random_nodes(self, k: int, accept: Callable[[Node], bool]) -> list[Node]:
        """Up to ``k`` distinct random members other than us that ``accept`` takes."""
        order = self._order
        n = len(order)
        picked: list[Node] = []
        seen: set[str] = set()
        for _ in range(3 * n):
            if len(picked) >= k:
                break
            name = order[int(self.rng.random() * n)]
            if name in seen or name == self.name:
                continue
            seen.add(name)
            node = self.nodes[name]
            if accept(node):
                picked.append(node)
        return picked

    def _has_broadcasts(self) -> bool:
        return bool(self.broadcasts) or self.delegate.has_broadcasts()

    def _gossip_tick(self, now: float) -> None:
        self._at(now + self.config.gossip_interval, self._gossip_tick)
        if not self._has_broadcasts():
            return  # nothing to say (memberlist would pick peers, then send nothing)
        dead_time = self.config.gossip_to_the_dead_time

        def gossip_target(node: Node) -> bool:
            if node.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return True
            return node.state == MemberState.DEAD and now - node.state_change < dead_time

        for node in self._random_nodes(self.config.gossip_nodes, gossip_target):
            extra = self._broadcasts(UDP_BUFFER - self._encrypt_overhead())
            if not extra:
                return
            self._out.append(Packet(node.address, tuple(extra), node.pmax >= 5))

    def _push_pull_interval(self, state: PushPull | None = None) -> float:
        """
        memberlist's interval scaled by ``pushPullScale`` (util.go), stretched
        so that our exchanges (``state`` out, a reply of its size back) stay
        within ``push_pull_budget`` bytes per second.
        """
        n = len(self.nodes)
        config = self.config
        interval = config.push_pull_interval
        if n > 32:
            interval *= math.ceil(math.log2(n) - math.log2(32)) + 1
        if config.push_pull_budget > 0:
            size = self._local_state_size() if state is None else self._state_size(state)
            interval = max(interval, 2 * size / config.push_pull_budget)
        return interval

    def _push_pull_tick(self, now: float) -> None:
        state = self.local_state(join=False)
        self._at(now + self._push_pull_interval(state), self._push_pull_tick)
        peers = self._random_nodes(1, lambda node: node.state == MemberState.ALIVE)
        if peers:
            self._out.append(StartPushPull(peers[0].address, state))

    def _encrypt_overhead(self) -> int:
        return ENCRYPT_OVERHEAD if self.config.encrypted else 0

    def _broadcasts(self, room: int) -> list[Message]:
        nodes = len(self.nodes)
        out, used = self.broadcasts.take(COMPOUND_OVERHEAD, room, nodes)
        for payload in self.delegate.get_broadcasts(COMPOUND_OVERHEAD + 1, room - used):
            out.append(User(payload))
        return out

    def _send(self, to: Address, messages: list[Message], node: Node | None) -> None:
        if self._has_broadcasts():
            size = sum(_size(m) for m in messages)
            room = UDP_BUFFER - size - COMPOUND_OVERHEAD - self._encrypt_overhead()
            messages += self._broadcasts(room)
        crc = node is not None and node.pmax >= 5
        self._out.append(Packet(to, tuple(messages), crc))

    def _queue(self, message: Alive | Suspect | Dead) -> None:
        self.broadcasts.queue(message, _size(message), key=message.node)

    # --- state updates (spec 7.7) ------------------------------------------------

    def _set_state(self, node: Node, state: MemberState, now: float) -> None:
        check_transition(node.state, state)
        self._changed()
        if node.state != state:
            node.state = state
            node.state_change = now
            self._alive_vsns = None

    def on_alive(self, now: float, alive: Alive) -> None:
        node = self.nodes.get(alive.node)
        if (
            node is not None
            and alive.incarnation <= node.incarnation
            and node.addr == alive.addr
            and node.port == alive.port
            and alive.node != self.name
        ):
            return  # old news: the common case in a gossip storm
        if not _vsn_ok(alive.vsn):
            return
        if alive.node != self.name and self.delegate.notify_alive(alive) is not None:
            self.refused_alive += 1
            return
        if node is not None and node.addr == alive.addr and node.port == alive.port:
            address = node.address
        else:
            try:
                address = (ip_text(alive.addr), alive.port)
            except MalformedPacket:
                return
        local = alive.node == self.name
        updates_address = False
        if node is None:
            node = Node(
                alive.node,
                alive.addr,
                alive.port,
                alive.meta,
                alive.vsn,
                0,
                MemberState.DEAD,
                now,
                address,
            )
            self.nodes[alive.node] = node
            self._shared_push = None
            self._changed()
            self._order.insert(int(self.rng.random() * (len(self._order) + 1)), alive.node)
        elif node.addr != alive.addr or node.port != alive.port:
            if local or not self._may_reclaim(node, now):
                return  # a name conflict: keep the member we know
            updates_address = True
        if alive.incarnation <= node.incarnation and not local and not updates_address:
            return
        if local and alive.incarnation < node.incarnation:
            return
        self._cancel_suspicion(alive.node)
        if local:
            if alive.incarnation == node.incarnation and (
                alive.meta == node.meta and alive.vsn == node.vsn
            ):
                return
            self._refute(alive.incarnation)
            return
        self._queue(alive)
        node = self._writable(node)
        was = node.state
        meta_changed = node.meta != alive.meta
        node.incarnation = alive.incarnation
        node.meta = alive.meta
        node.addr = alive.addr
        node.port = alive.port
        if node.vsn != alive.vsn:
            node.vsn = alive.vsn
            self._alive_vsns = None
        node.address = address
        self._set_state(node, MemberState.ALIVE, now)
        if dead_or_left(was):
            self.delegate.notify_join(now, node)
        elif meta_changed:
            self.delegate.notify_update(now, node)

    def _may_reclaim(self, node: Node, now: float) -> bool:
        """May another member take ``node``'s name at a new address (memberlist's rule)?"""
        if node.state == MemberState.LEFT:
            return True
        reclaim = self.config.dead_node_reclaim_time
        return node.state == MemberState.DEAD and reclaim > 0 and now - node.state_change > reclaim

    def on_suspect(self, now: float, suspect: Suspect) -> None:
        node = self.nodes.get(suspect.node)
        if node is None or suspect.incarnation < node.incarnation:
            return
        suspicion = self._suspicions.get(suspect.node)
        if suspicion is not None:
            if suspicion.confirm(suspect.sender):
                self._queue(suspect)
                self._at(suspicion.deadline(), self._suspicion_timeout, suspect.node, suspicion)
            return
        if node.state != MemberState.ALIVE:
            return
        if suspect.node == self.name:
            self._refute(suspect.incarnation)
            return
        self._queue(suspect)
        node = self._writable(node)
        node.incarnation = suspect.incarnation
        self._set_state(node, MemberState.SUSPECT, now)
        n = len(self.nodes)
        cfg = self.config
        minimum = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        if cfg.dynamic_suspicion:
            k = expected_confirmations(cfg.suspicion_mult, n)
            maximum = cfg.suspicion_max_timeout_mult * minimum
        else:
            k, maximum = 0, minimum
        suspicion = Suspicion(now, minimum, maximum, k, {suspect.sender})
        self._suspicions[suspect.node] = suspicion
        self._at(suspicion.deadline(), self._suspicion_timeout, suspect.node, suspicion)

    def _suspicion_timeout(self, now: float, name: str, suspicion: Suspicion) -> None:
        if self._suspicions.get(name) is not suspicion or now < suspicion.deadline():
            return  # cancelled, or a confirmation moved the deadline and re-armed it
        node = self.nodes.get(name)
        if node is None or node.state != MemberState.SUSPECT:
            return
        if node.state_change != suspicion.start:
            return
        self.on_dead(now, Dead(node.incarnation, name, self.name))

    def _cancel_suspicion(self, name: str) -> None:
        self._suspicions.pop(name, None)

    def on_dead(self, now: float, dead: Dead) -> None:
        node = self.nodes.get(dead.node)
        if node is None or dead.incarnation < node.incarnation:
            return
        self._cancel_suspicion(dead.node)
        if dead_or_left(node.state):
            return
        if dead.node == self.name and not self.leaving:
            self._refute(dead.incarnation)
            return
        self._queue(dead)
        node = self._writable(node)
        node.incarnation = dead.incarnation
        left = dead.sender == dead.node
        self._set_state(node, MemberState.LEFT if left else MemberState.DEAD, now)
        self.delegate.notify_leave(now, node)

    def _refute(self, accused: int) -> None:
        self.me.incarnation = max(self.me.incarnation + 1, accused + 1) & 0xFFFFFFFF
        self._changed()
        if self.config.awareness:
            self.awareness.apply(1)
        self._broadcast_alive()

    def _broadcast_alive(self) -> None:
        me = self.me
        self._queue(Alive(me.incarnation, me.name, me.addr, me.port, me.meta, me.vsn))


@functools.lru_cache(maxsize=1 << 16)
def message_size(message: Message) -> int:
    """Encoded size of a message (what the 1400-byte budget counts)."""
    return len(message.to_wire())


_size = message_size
