# -*- test-case-name: txconsul.test.gossip.test_simulation -*-
"""
Whole memberlist clusters on the in-memory network, for tests and bench/.

Each member is the real ``Memberlist`` core driven by a ``SimClock``; the
network carries message records (no encoding) and one seed decides every
random choice, so a run replays exactly from ``TXCONSUL_SEED``.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall

from txconsul.gossip import wire
from txconsul.gossip.broadcast import BroadcastQueue
from txconsul.gossip.memberlist import (
    Address,
    GossipConfig,
    Memberlist,
    Node,
    NullDelegate,
    Output,
    Packet,
    SharedPush,
    StartPushPull,
    StreamPing,
    message_size,
)
from txconsul.gossip.messages import Ack, Message, Ping, PushNodeState, PushPull
from txconsul.gossip.serf import USER_EVENT, user_event_message
from txconsul.gossip.states import MemberState
from txconsul.testing.simclock import SimClock
from txconsul.testing.simnet import SimNetwork


def seed_from_env(default: int | None = None) -> int:
    """``TXCONSUL_SEED`` when set, else ``default``, else a fresh random seed."""
    value = os.environ.get("TXCONSUL_SEED")
    if value:
        return int(value)
    if default is not None:
        return default
    return random.SystemRandom().randrange(1 << 32)


@attrs.frozen
class Declaration:
    """``observer`` saw ``subject`` become ``state`` at ``time``."""

    time: float
    observer: str
    subject: str
    state: MemberState


class _Recorder(NullDelegate):
    """
    Records member declarations and carries serf user events: the same wire
    message (``0x03`` + msgpack), the same broadcast queue and dedup by
    (LTime, Name), without serf's per-member table that 10,000 cores cannot afford.
    """

    def __init__(self, cluster: SimCluster, name: str) -> None:
        self._cluster = cluster
        self._name = name
        self.core: Memberlist | None = None
        self.queue: BroadcastQueue[bytes] = BroadcastQueue(cluster.config.retransmit_mult)
        self.seen: set[tuple[int, bytes]] = set()

    def fire(self, now: float, ltime: int, name: str, payload: bytes) -> None:
        message = user_event_message(ltime, name, payload)
        self.notify_msg(now, message)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        if not self.queue:
            return []
        nodes = len(self.core.nodes) if self.core is not None else 1
        return self.queue.get(overhead, limit, nodes)

    def has_broadcasts(self) -> bool:
        return bool(self.queue)

    def notify_msg(self, now: float, payload: bytes) -> None:
        if not payload or payload[0] != USER_EVENT:
            return
        body, _ = wire.unpack_one(payload, 1)
        key = (body[b"LTime"], body[b"Name"])
        if key in self.seen:
            return
        self.seen.add(key)
        self._cluster.deliveries.append((now, self._name, key[0]))
        self.queue.queue(payload, len(payload))

    def notify_leave(self, now: float, node: Node) -> None:
        self._cluster.declarations.append(Declaration(now, self._name, node.name, node.state))

    def notify_join(self, now: float, node: Node) -> None:
        self._cluster.joins.append(Declaration(now, self._name, node.name, node.state))


class PacketSizer:
    """
    Bytes a datagram or stream message would take on the wire (uncompressed).

    A push/pull carries every member: its records are measured once each (by
    identity, since simulated cores share them) and a whole node list once
    (cores reuse their list until a member changes), so that measuring 10,000
    members per exchange costs next to nothing.
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self._limit = limit
        self._entries: dict[int, tuple[PushNodeState, int]] = {}
        self._lists: dict[int, tuple[tuple[PushNodeState, ...], int]] = {}

    def __call__(self, payload: Any) -> int:
        if isinstance(payload, tuple):
            sizes = [message_size(m) for m in payload]
            return sizes[0] if len(sizes) == 1 else 2 + 2 * len(sizes) + sum(sizes)
        if isinstance(payload, PushPull):
            header = 40  # type byte and the msgpack header map
            return header + self._nodes(payload.nodes) + len(payload.user_state)
        to_wire = getattr(payload, "to_wire", None)
        return len(to_wire()) if to_wire is not None else 0

    def _nodes(self, nodes: tuple[PushNodeState, ...]) -> int:
        known = self._lists.get(id(nodes))
        if known is not None and known[0] is nodes:
            return known[1]
        entries = self._entries
        total = 0
        for node in nodes:
            entry = entries.get(id(node))
            if entry is None or entry[0] is not node:
                entry = entries[id(node)] = (node, len(wire.pack(node.to_dict())))
            total += entry[1]
        if len(entries) > self._limit:
            entries.clear()
        if len(self._lists) > 1024:
            self._lists.clear()
        self._lists[id(nodes)] = (nodes, total)
        return total


class SimMember:
    """One core on the network, with one timer re-armed to its next deadline."""

    def __init__(
        self, cluster: SimCluster, name: str, address: Address, config: GossipConfig
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.address = address
        clock = cluster.clock
        self.delegate = _Recorder(cluster, name)
        self.core = Memberlist(
            name,
            address,
            config,
            random.Random(cluster.rng.getrandbits(64)),
            clock.seconds(),
            self.delegate,
        )
        self.delegate.core = self.core
        self._timer: IDelayedCall | None = None
        self._armed = math.inf
        self.crashed = False
        cluster.net.listen(address, self._on_datagram, self._on_stream)
        self._arm()

    def now(self) -> float:
        return self.cluster.clock.seconds()

    def _on_datagram(self, source: Address, messages: tuple[Message, ...]) -> None:
        if self.crashed:
            return
        now = self.now()
        receive = self.core.receive
        outputs: list[Output] = []
        for message in messages:
            outputs += receive(now, source, message)
        self.emit(outputs)

    def _on_stream(self, source: Address, request: Any) -> Any:
        if self.crashed:
            raise ConnectionError("crashed")
        now = self.now()
        if isinstance(request, PushPull):
            reply = self.core.local_state(request.join)
            self.emit(self.core.merge_remote_state(now, request))
            return reply
        if isinstance(request, Ping) and (not request.node or request.node == self.name):
            return Ack(request.seq_no)
        return None

    def emit(self, outputs: list[Output]) -> None:
        net = self.cluster.net
        for out in outputs:
            if isinstance(out, Packet):
                net.send(self.address, out.to, out.messages)
            elif isinstance(out, StreamPing):
                net.request(self.address, out.to, out.ping, self._stream_reply(out.to), _ignore)
            elif isinstance(out, StartPushPull):
                net.request(self.address, out.to, out.state, self._merge, _ignore)
        self._arm()

    def _stream_reply(self, source: Address) -> Any:
        def reply(message: Message) -> None:
            if not self.crashed:
                self.emit(self.core.receive(self.now(), source, message))

        return reply

    def _merge(self, state: PushPull) -> None:
        if not self.crashed:
            self.emit(self.core.merge_remote_state(self.now(), state))

    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline >= self._armed or math.isinf(deadline):
            return
        delay = max(0.0, deadline - self.now())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.cluster.clock.callLater(delay, self._fire)
        self._armed = deadline

    def _fire(self) -> None:
        self._armed = math.inf
        self._timer = None
        if self.crashed:
            return
        self.emit(self.core.tick(self.now()))

    def slow(self, inbox_delay: float, send_late: bool = False) -> None:
        """Handle incoming messages ``inbox_delay`` seconds late (0: normal again).

        The member's own timers keep firing on time, as on a starved CPU whose
        receive loop falls behind: it probes on schedule, but reads acks late.
        With ``send_late`` what it sends also leaves ``inbox_delay`` late (its
        send loop is starved too), while its deadlines are still judged on the
        clock: a timeout expires on time, but the work it triggers waits.
        """
        net = self.cluster.net
        if inbox_delay > 0:
            net.inbox_delay[self.address] = inbox_delay
            if send_late:
                net.outbox_delay[self.address] = inbox_delay
        else:
            net.inbox_delay.pop(self.address, None)
            net.outbox_delay.pop(self.address, None)

    def crash(self) -> None:
        self.crashed = True
        self.core.stop()
        self.cluster.net.down.add(self.address)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


def _ignore(error: Exception) -> None:
    pass


class SimCluster:
    """
    ``n`` members on one ``SimNetwork``; member ``i`` is ``node-i`` at 10.x.y.z:8301.

    :param join_spread: members join over this many seconds, each to a random earlier one.
    """

    def __init__(
        self,
        seed: int,
        n: int,
        config: GossipConfig | None = None,
        loss: float = 0.0,
        latency: float = 0.002,
        measure_bytes: bool = False,
        join_spread: float = 1.0,
        bootstrap: bool = False,
    ) -> None:
        """
        :param bootstrap: start every member at once as part of a converged
            pool (``Memberlist.bootstrap``) instead of joining one by one; the
            only way to afford thousands of members.
        """
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.net = SimNetwork(
            self.rng.getrandbits(64),
            self.clock,
            latency=latency,
            loss=loss,
            sizer=PacketSizer() if measure_bytes else None,
        )
        self.config = config if config is not None else GossipConfig.lan()
        self.declarations: list[Declaration] = []
        self.joins: list[Declaration] = []
        self.members: dict[str, SimMember] = {}
        self.crashed: set[str] = set()
        #: (time, member, event LTime) of each first receipt of a user event
        self.deliveries: list[tuple[float, str, int]] = []
        self._episode_ends: dict[str, float] = {}
        self.n = n
        if bootstrap:
            self._bootstrap(n)
            return
        for i in range(n):
            delay = 0.0 if i == 0 else self.rng.random() * join_spread
            self.clock.callLater(delay, self._start, i)
        self.clock.advance(0)

    @staticmethod
    def address_of(i: int) -> Address:
        return (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8301)

    def _start(self, i: int) -> None:
        name = f"node-{i}"
        member = SimMember(self, name, self.address_of(i), self.config)
        self.members[name] = member
        if i > 0:
            seed = self.rng.randrange(len(self.members) - 1) if len(self.members) > 1 else 0
            seed_address = list(self.members.values())[seed].address
            member.emit(member.core.join(self.clock.seconds(), [seed_address]))

    def _bootstrap(self, n: int) -> None:
        now = self.clock.seconds()
        for i in range(n):
            name = f"node-{i}"
            self.members[name] = SimMember(self, name, self.address_of(i), self.config)
        shared = {name: attrs.evolve(m.core.me) for name, m in self.members.items()}
        order = list(shared)
        self.rng.shuffle(order)
        shared_push = SharedPush.of(shared)
        for member in self.members.values():
            member.core.bootstrap(now, shared, order, shared_push)
            member.emit([])

    def fire_event(self, origin: str, ltime: int, name: str, payload: bytes = b"") -> None:
        """``origin`` fires a serf user event (LTime chosen by the caller)."""
        member = self.members[origin]
        member.delegate.fire(self.clock.seconds(), ltime, name, payload)
        member.emit([])

    def run_with_slow_members(
        self,
        seconds: float,
        slow: list[str],
        episodes: random.Random,
        delays: tuple[float, float] = (0.5, 10.0),
        lengths: tuple[float, float] = (5.0, 20.0),
        start_probability: float = 0.1,
        step: float = 0.5,
        send_late: bool = False,
    ) -> None:
        """
        Run while the ``slow`` members have episodes of a starved CPU: every
        ``step`` an idle one starts an episode with ``start_probability``, lasting
        a uniform draw from ``lengths``, during which its inbox is handled a
        uniform draw from ``delays`` late. ``episodes`` decides them alone, so
        the same seed gives the same episodes whatever the cores do.
        """
        ends = self._episode_ends
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            now = self.clock.seconds()
            for name in slow:
                if ends.get(name) and now >= ends[name]:
                    self.members[name].slow(0)
                    ends[name] = 0.0
                if not ends.get(name) and episodes.random() < start_probability:
                    self.members[name].slow(episodes.uniform(*delays), send_late)
                    ends[name] = now + episodes.uniform(*lengths)
            self.clock.advance(min(step, end - now))

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def live(self) -> list[SimMember]:
        return [m for m in self.members.values() if not m.crashed]

    def converged(self) -> bool:
        """Every live member sees every live member alive, and no crashed one alive."""
        if len(self.members) < self.n:
            return False
        live = self.live()
        names = {m.name for m in live}
        for member in live:
            nodes = member.core.nodes
            for name in names:
                node = nodes.get(name)
                if node is None or node.state != MemberState.ALIVE:
                    return False
            for name in self.crashed:
                node = nodes.get(name)
                if node is not None and node.state in (MemberState.ALIVE, MemberState.SUSPECT):
                    return False
        return True

    def run_until_converged(self, limit: float, step: float = 0.25) -> float | None:
        """:return: the virtual time of convergence, or ``None`` if ``limit`` passed."""
        end = self.clock.seconds() + limit
        while self.clock.seconds() < end:
            if self.converged():
                return self.clock.seconds()
            self.clock.advance(step)
        return self.clock.seconds() if self.converged() else None

    def kill(self, name: str) -> None:
        self.crashed.add(name)
        self.members[name].crash()

    def restart(self, name: str, address: Address, via: str) -> SimMember:
        """
        Start a crashed member again, as a fresh core at ``address`` (another
        machine, or another port), joining the pool through member ``via``.
        """
        self.members[name].crash()
        member = SimMember(self, name, address, self.config)
        self.members[name] = member
        self.crashed.discard(name)
        member.emit(member.core.join(self.clock.seconds(), [self.members[via].address]))
        return member

    def false_positives(self) -> list[Declaration]:
        """Declarations that a member which never crashed is dead."""
        return [
            d
            for d in self.declarations
            if d.state == MemberState.DEAD and d.subject not in self.crashed
        ]

    def detections(self, name: str) -> dict[str, float]:
        """When each observer first declared ``name`` dead."""
        seen: dict[str, float] = {}
        for d in self.declarations:
            if d.subject == name and d.state == MemberState.DEAD:
                seen.setdefault(d.observer, d.time)
        return seen

    def trace(self) -> list[tuple[float, str, str, int]]:
        return [(d.time, d.observer, d.subject, int(d.state)) for d in self.declarations]
