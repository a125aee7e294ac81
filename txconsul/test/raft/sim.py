"""
A deterministic simulation of a Raft cluster: real cores and memory log
stores on an in-memory network under the heap clock, with one seeded
``random.Random`` choosing latency, loss, reordering, partitions, crashes,
restarts and pauses, while clients write and read a small KV map.

After every delivered input the simulation checks election safety, and at
each commit state machine safety and leader completeness; log matching is
checked across all servers periodically and at the end; at the end, after a
heal, every acknowledged write must be in the committed log. Any violation
raises ``SafetyViolation`` naming the seed (``TXCONSUL_SEED=<n>``) so the
run replays exactly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from txconsul.raft.core import (
    INFINITY,
    Apply,
    NotLeader,
    Output,
    PersistEntries,
    PersistSnapshot,
    PersistState,
    PersistVoters,
    RaftCore,
    ReadFailed,
    ReadReady,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    TakeSnapshot,
    Timing,
)
from txconsul.raft.logstore import MemoryLogStore
from txconsul.raft.messages import Entry, Message, from_wire, to_wire
from txconsul.testing.simclock import SimClock

SIM_TIMING = Timing(
    election_timeout=1.0,
    heartbeat_interval=0.1,
    lease=0.8,
    max_inflight=4,
    max_batch=64,
    snapshot_threshold=60,
    trailing_logs=10,
)


class SafetyViolation(AssertionError):
    pass


def seeds_from_env(default: list[int]) -> list[int]:
    """``TXCONSUL_SEED=n`` replays one seed; otherwise the given list."""
    seed = os.environ.get("TXCONSUL_SEED")
    return [int(seed)] if seed else default


@attrs.define
class Pending:
    """A client's proposal, waiting to be applied at ``index`` in ``term``."""

    handle: int
    index: int
    term: int
    key: str
    value: int


@attrs.define
class Server:
    name: str
    store: MemoryLogStore
    core: RaftCore
    kv: dict[str, int] = attrs.Factory(dict)
    applied: int = 0
    checked: int = 0
    up: bool = True
    paused: bool = False
    held: list[tuple[str, Message]] = attrs.Factory(list)
    timer_at: float = INFINITY
    timer: Any = None
    pending: dict[int, Pending] = attrs.Factory(dict)
    reads: dict[int, tuple[int, str]] = attrs.Factory(dict)
    waiting_reads: list[tuple[int, int, str]] = attrs.Factory(list)


@attrs.define
class Faults:
    loss: float = 0.02
    latency: float = 0.005
    jitter: float = 0.01  # reordering comes from jitter larger than the spacing of sends
    crashes: bool = True
    partitions: bool = True
    pauses: bool = True
    membership: bool = True
    drift: float = 0.0  # each server's clock runs at a rate in [1 - drift, 1 + drift]
    transfers: bool = True
    wire: bool = False  # encode every message (slower; exercises the codec)


@attrs.frozen
class Op:
    """
    One client operation for the linearizability history. ``call`` and ``ret``
    count recorded events, so their order is exact; ``ret`` is ``None`` when
    the outcome is unknown.
    """

    client: int
    kind: str  # "put", "cas", "get" (default mode), "cget" (?consistent)
    key: str
    value: int | None  # put: the value; cas: the new value
    expected: int | None  # cas: the value it must find (None: absent)
    call: int
    ret: int | None
    output: int | bool | None

    def to_operation(self) -> Any:
        """This operation in the shape of ``txconsul.testing.linearizability``."""
        from txconsul.testing import linearizability as lin

        input: object
        if self.kind == "put":
            input = lin.Put(self.key, self.value)
        elif self.kind == "cas":
            input = lin.Cas(self.key, self.expected, self.value)
        else:
            input = lin.Get(self.key)
        if self.ret is None:
            return lin.Operation(self.client, input, lin.UNKNOWN, self.call, None)
        output = True if self.kind == "put" else self.output
        return lin.Operation(self.client, input, output, self.call, self.ret)


#: planted bugs, for checking that the checks catch them
BUGS = frozenset({"no-lease", "follower-read"})


class Simulation:
    def __init__(
        self,
        seed: int,
        size: int = 3,
        faults: Faults | None = None,
        timing: Timing = SIM_TIMING,
        keys: int = 3,
        check_every: int = 200,
        bug: str = "",
    ) -> None:
        if bug and bug not in BUGS:
            raise ValueError(f"unknown planted bug {bug!r}")
        self.bug = bug
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = SimClock()
        self.faults = faults or Faults()
        self.timing = timing
        self.names = [f"s{i}" for i in range(size)]
        drift = self.faults.drift
        self.rates = {
            n: 1.0 + (self.rng.uniform(-drift, drift) if drift else 0.0) for n in self.names
        }
        self.servers: dict[str, Server] = {}
        self.cut: set[tuple[str, str]] = set()
        self.loss = self.faults.loss
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.acked: dict[int, tuple[int, bytes]] = {}
        self.ops: list[Op] = []
        self._open: dict[int, tuple[int, str, str, int | None, int | None, int]] = {}
        self._handles = 0
        self._events = 0
        self.keys = [f"k{i}" for i in range(keys)]
        self._values = 0
        self.events = 0
        self.check_every = check_every
        self.trace: list[str] = []
        self.lease_reads = 0
        for name in self.names:
            self._boot(name, MemoryLogStore(), self.names)

    def fail(self, what: str) -> SafetyViolation:
        return SafetyViolation(f"{what} (replay with TXCONSUL_SEED={self.seed})")

    # -- servers --------------------------------------------------------------------

    def now(self, name: str) -> float:
        """Server ``name``'s monotonic clock, which may run fast or slow (clock drift)."""
        return self.clock.seconds() * self.rates[name]

    def _boot(self, name: str, store: MemoryLogStore, voters: list[str]) -> None:
        """
        Start server ``name`` from ``store``: a new cluster's servers are given
        the voters, a restarted one none (its store must say who they are).
        """
        now = self.now(name)
        restored = store.load()
        core = RaftCore(name, voters, now, random.Random(self.rng.random()), self.timing, restored)
        server = Server(name, store, core)
        server.checked = core.commit_index
        if restored.snapshot is not None:
            server.kv = dict(msgpack.unpackb(restored.snapshot.data))
            server.applied = restored.snapshot.index
        self.servers[name] = server
        self._drain(server)  # the new cluster's voters, durable before any input
        self._arm(server)

    def crash(self, name: str) -> None:
        server = self.servers[name]
        if not server.up:
            return
        self.trace.append(f"{self.clock.seconds():.3f} crash {name}")
        server.up = False
        server.store.crash()
        if server.timer is not None and server.timer.active():
            server.timer.cancel()
        for p in server.pending.values():
            self._info(p.handle)
        for handle, _ in server.reads.values():
            self._info(handle)
        for handle, _, _ in server.waiting_reads:
            self._info(handle)

    def restart(self, name: str) -> None:
        if self.servers[name].up:
            return
        self.trace.append(f"{self.clock.seconds():.3f} restart {name}")
        self._boot(name, self.servers[name].store, [])

    def pause(self, name: str) -> None:
        self.servers[name].paused = True

    def resume(self, name: str) -> None:
        server = self.servers[name]
        if not server.paused:
            return
        server.paused = False
        held, server.held = server.held, []
        if server.up:
            for src, msg in held:
                server.core.receive(self.now(name), src, msg)
                self._after_input(server)
            self._input(server, lambda: server.core.tick(self.now(name)))

    def _arm(self, server: Server) -> None:
        deadline = server.core.next_deadline()
        if deadline == server.timer_at and server.timer is not None and server.timer.active():
            return
        if server.timer is not None and server.timer.active():
            server.timer.cancel()
        server.timer_at = deadline
        if deadline < INFINITY:
            delay = max((deadline - self.now(server.name)) / self.rates[server.name], 0.0)
            server.timer = self.clock.callLater(delay, self._fire, server)
        else:
            server.timer = None

    def _fire(self, server: Server) -> None:
        server.timer = None
        server.timer_at = INFINITY
        if server.paused:
            # a paused process runs its timers late, when it resumes
            return
        self._input(server, lambda: server.core.tick(self.now(server.name)))

    def _input(self, server: Server, step: Callable[[], object]) -> None:
        if not server.up:
            return
        step()
        self._after_input(server)

    def _after_input(self, server: Server) -> None:
        self.events += 1
        self._check_server(server)  # before a snapshot compacts what was just committed
        self._drain(server)
        self._check_server(server)
        if self.events % self.check_every == 0:
            self.check_log_matching()
        self._arm(server)

    def _drain(self, server: Server) -> None:
        core, store = server.core, server.store
        dirty = False
        while core.outbox:
            for out in core.take_outputs():
                if isinstance(out, PersistState):
                    store.set_state(out.term, out.vote)
                    dirty = True
                elif isinstance(out, PersistVoters):
                    store.set_voters(out.voters)
                    dirty = True
                elif isinstance(out, PersistEntries):
                    store.store_entries(out.first_index, out.entries)
                    dirty = True
                elif isinstance(out, PersistSnapshot):
                    store.store_snapshot(out.snapshot, out.base_index, out.base_term)
                    dirty = True
                else:
                    if dirty:
                        store.sync()
                        dirty = False
                    self._effect(server, out)
        if dirty:
            store.sync()

    def _effect(self, server: Server, out: Output) -> None:
        now = self.now(server.name)
        if isinstance(out, Send):
            self._send(server.name, out.to, out.message)
        elif isinstance(out, Apply):
            self._apply(server, out)
        elif isinstance(out, TakeSnapshot):
            data = msgpack.packb(server.kv)
            server.core.snapshot_taken(now, out.index, data)
        elif isinstance(out, RestoreSnapshot):
            server.kv = dict(msgpack.unpackb(out.snapshot.data))
            server.applied = out.snapshot.index
            self._serve_reads(server)
        elif isinstance(out, ReadReady):
            handle, key = server.reads.pop(out.read_id, (0, ""))
            if not handle:
                return
            server.waiting_reads.append((handle, out.index, key))
            self._serve_reads(server)
        elif isinstance(out, ReadFailed):
            handle, _ = server.reads.pop(out.read_id, (0, ""))
            if handle:
                self._info(handle)
        elif isinstance(out, RoleChanged):
            if out.role is Role.LEADER:
                other = self.leaders.setdefault(out.term, server.name)
                if other != server.name:
                    raise self.fail(f"two leaders in term {out.term}: {other} and {server.name}")
                self._check_leader_completeness(server)
            else:
                # the outcome of what it proposed is unknown now
                for p in server.pending.values():
                    self._info(p.handle)
                server.pending.clear()

    def _apply(self, server: Server, out: Apply) -> None:
        if out.index <= server.applied:
            raise self.fail(f"{server.name} applied {out.index} twice")
        command = msgpack.unpackb(out.command)
        result = True
        if "c" in command:  # compare-and-set
            result = server.kv.get(command["k"]) == command["c"]
        if result:
            server.kv[command["k"]] = command["v"]
        server.applied = out.index
        p = server.pending.pop(out.index, None)
        if p is not None:
            if p.term == out.term:
                self.acked[out.index] = (out.term, out.command)
                self._ok(p.handle, result)
            else:
                self._info(p.handle)
        self._serve_reads(server)

    def _serve_reads(self, server: Server) -> None:
        if not server.waiting_reads:
            return
        still = []
        for handle, index, key in server.waiting_reads:
            if server.applied >= index or server.core.last_applied >= index:
                self._ok(handle, server.kv.get(key))
            else:
                still.append((handle, index, key))
        server.waiting_reads = still

    # -- network --------------------------------------------------------------------

    def _send(self, src: str, dst: str, msg: Message) -> None:
        if (src, dst) in self.cut or self.rng.random() < self.loss:
            return
        payload: Any = to_wire(msg) if self.faults.wire else msg
        delay = self.faults.latency + self.rng.random() * self.faults.jitter
        self.clock.callLater(delay, self._deliver, src, dst, payload)

    def _deliver(self, src: str, dst: str, payload: Any) -> None:
        server = self.servers[dst]
        if not server.up or (src, dst) in self.cut:
            return
        msg = from_wire(payload) if self.faults.wire else payload
        if server.paused:
            server.held.append((src, msg))
            return
        self._input(server, lambda: server.core.receive(self.now(dst), src, msg))

    def partition(self, side: list[str]) -> None:
        other = [n for n in self.names if n not in side]
        self.trace.append(f"{self.clock.seconds():.3f} partition {side} | {other}")
        for a in side:
            for b in other:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def cut_one_way(self, src: str, dst: str) -> None:
        self.trace.append(f"{self.clock.seconds():.3f} cut {src}->{dst}")
        self.cut.add((src, dst))

    def heal(self) -> None:
        self.trace.append(f"{self.clock.seconds():.3f} heal")
        self.cut.clear()
        self.loss = self.faults.loss

    # -- clients and history --------------------------------------------------------

    def _invoke(
        self, client: int, kind: str, key: str, value: int | None, expected: int | None = None
    ) -> int:
        self._handles += 1
        self._events += 1
        self._open[self._handles] = (client, kind, key, value, expected, self._events)
        return self._handles

    def _ok(self, handle: int, output: int | bool | None) -> None:
        client, kind, key, value, expected, call = self._open.pop(handle)
        self._events += 1
        self.ops.append(Op(client, kind, key, value, expected, call, self._events, output))

    def _info(self, handle: int) -> None:
        if handle in self._open:
            client, kind, key, value, expected, call = self._open.pop(handle)
            self.ops.append(Op(client, kind, key, value, expected, call, None, None))

    def _fail(self, handle: int) -> None:
        self._open.pop(handle, None)  # definitely did not happen

    def _leader(self) -> Server | None:
        live = [
            s for s in self.servers.values() if s.up and not s.paused and s.core.role is Role.LEADER
        ]
        if not live:
            return None
        return max(live, key=lambda s: s.core.term)

    def client_step(self, client: int) -> None:
        """One operation by one client, sent to the leader it knows of or to any server."""
        leader = self._leader()
        if leader is not None and self.rng.random() < 0.7:
            server = leader
        else:
            server = self.servers[self.rng.choice(self.names)]
        if not server.up or server.paused:
            return
        now = self.now(server.name)
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        core = server.core
        if roll < 0.55:
            self._values += 1
            value = self._values
            if roll < 0.4:
                handle = self._invoke(client, "put", key, value)
                command = msgpack.packb({"k": key, "v": value})
            else:
                expected = server.kv.get(key) if self.rng.random() < 0.8 else None
                handle = self._invoke(client, "cas", key, value, expected)
                command = msgpack.packb({"k": key, "v": value, "c": expected})
            index = core.propose(now, command)
            if isinstance(index, NotLeader):
                self._fail(handle)
            else:
                server.pending[index] = Pending(handle, index, core.term, key, value)
            self._after_input(server)
        elif roll < 0.8:
            handle = self._invoke(client, "get", key, None)
            if self.bug == "follower-read":
                ok = True
            elif self.bug == "no-lease":
                ok = core.role is Role.LEADER
            else:
                ok = core.can_serve_default_read(now)
            if ok:
                self.lease_reads += 1
                self._ok(handle, server.kv.get(key))
            else:
                self._fail(handle)
        else:
            handle = self._invoke(client, "cget", key, None)
            rid = core.read_index(now)
            if isinstance(rid, NotLeader):
                self._fail(handle)
            else:
                server.reads[rid] = (handle, key)
            self._after_input(server)

    # -- invariants -------------------------------------------------------------------

    def _check_server(self, server: Server) -> None:
        core = server.core
        if core.commit_index <= server.checked:
            return
        for index in range(max(core.first_index, server.checked + 1), core.commit_index + 1):
            if index > core.last_index:
                raise self.fail(f"{server.name} commits {index} beyond its log")
            e = core.entry(index)
            seen = self.committed.get(index)
            mine = (e.term, _entry_key(e))
            if seen is None:
                self.committed[index] = mine
            elif seen != mine:
                raise self.fail(
                    f"state machine safety: {server.name} committed {mine} at {index}, "
                    f"others {seen}"
                )
        server.checked = core.commit_index

    def _check_leader_completeness(self, server: Server) -> None:
        core = server.core
        for index, (term, key) in self.committed.items():
            if index < core.first_index:
                if index > core.last_index:
                    raise self.fail(f"leader {server.name} lacks committed {index}")
                continue
            if index > core.last_index or (
                core.entry(index).term,
                _entry_key(core.entry(index)),
            ) != (term, key):
                raise self.fail(
                    f"leader completeness: {server.name} (term {core.term}) lacks committed {index}"
                )

    def check_log_matching(self) -> None:
        cores = [s.core for s in self.servers.values() if s.up]
        for i, a in enumerate(cores):
            for b in cores[i + 1 :]:
                lo = max(a.first_index, b.first_index)
                hi = min(a.last_index, b.last_index)
                agreed = False
                for index in range(hi, lo - 1, -1):
                    ea, eb = a.entry(index), b.entry(index)
                    if agreed or ea.term == eb.term:
                        agreed = True
                        if ea != eb:
                            raise self.fail(
                                f"log matching: {a.me} and {b.me} differ at {index} below a "
                                f"shared term"
                            )

    # -- schedules --------------------------------------------------------------------

    def run(self, seconds: float = 20.0, clients: int = 5, rate: float = 25.0) -> None:
        """Clients at ``rate`` ops/s in total, faults every second or so, then heal and settle."""
        rng = self.rng
        t = 0.5
        while t < seconds:
            t += rng.expovariate(rate)
            self.clock.callLater(t - self.clock.seconds(), self.client_step, rng.randrange(clients))
        t = 2.0
        while t < seconds - 2:
            self.clock.callLater(t, self._fault)
            t += rng.uniform(0.3, 2.0)
        self.clock.run_until(seconds)
        self.settle()

    def _fault(self) -> None:
        rng, f = self.rng, self.faults
        roll = rng.random()
        names = self.names
        if roll < 0.25 and f.partitions:
            self.heal()
            k = rng.randrange(1, len(names))
            self.partition(rng.sample(names, k))
        elif roll < 0.35 and f.partitions:
            leader = self._leader()
            if leader is not None:
                self.heal()
                self.partition([leader.name])
        elif roll < 0.42 and f.partitions:
            a, b = rng.sample(names, 2)
            self.cut_one_way(a, b)
        elif roll < 0.5:
            self.trace.append(f"{self.clock.seconds():.3f} loss 0.5")
            self.loss = 0.5
            self.clock.callLater(1.0, self._restore_loss)
        elif roll < 0.7 and f.crashes:
            victim = rng.choice(names)
            self.crash(victim)
            self.clock.callLater(rng.uniform(0.05, 3.0), self.restart, victim)
        elif roll < 0.78 and f.crashes:
            leader = self._leader()
            if leader is not None:
                self.crash(leader.name)
                self.clock.callLater(rng.uniform(0.05, 3.0), self.restart, leader.name)
        elif roll < 0.86 and f.pauses:
            victim = rng.choice(names)
            self.trace.append(f"{self.clock.seconds():.3f} pause {victim}")
            self.pause(victim)
            self.clock.callLater(rng.uniform(0.5, 2.5), self.resume, victim)
        elif roll < 0.91 and f.membership:
            self.change_membership()
        elif roll < 0.95 and f.transfers:
            leader = self._leader()
            if leader is not None:
                self.trace.append(f"{self.clock.seconds():.3f} transfer from {leader.name}")
                leader.core.transfer_leadership(self.now(leader.name))
                self._after_input(leader)
        else:
            self.heal()

    def change_membership(self) -> bool:
        """Remove a voter (perhaps the leader) from a full cluster, or add one back."""
        leader = self._leader()
        if leader is None:
            return False
        config = set(leader.core.config)
        if len(config) == len(self.names):
            victim = self.rng.choice(sorted(config))
            new = config - {victim}
        else:
            new = config | {self.rng.choice(sorted(set(self.names) - config))}
        try:
            result = leader.core.change_config(self.now(leader.name), new)
        except ValueError:
            return False
        self.trace.append(f"{self.clock.seconds():.3f} config {sorted(new)}: {result}")
        self._after_input(leader)
        return True

    def _restore_loss(self) -> None:
        self.loss = self.faults.loss

    def settle(self, limit: float = 30.0) -> None:
        """Heal everything, let the cluster converge, then check what must hold."""
        self.heal()
        self.loss = 0.0
        for name in self.names:
            self.resume(name)
            self.restart(name)
        end = self.clock.seconds() + limit
        while self.clock.seconds() < end:
            self.clock.advance(0.5)
            leader = self._leader()
            if leader is None:
                continue
            if len(leader.core.config) < len(self.names):
                self.change_membership()
                continue
            # let a fresh write commit, so everything before it is committed everywhere
            if (
                all(
                    s.core.commit_index == leader.core.last_index
                    and s.core.role is not Role.CANDIDATE
                    for s in self.servers.values()
                )
                and leader.core.commit_index >= leader.core._term_start
            ):
                break
        else:
            raise self.fail("the cluster did not converge after healing")
        self.check_log_matching()
        for index, (term, command) in self.acked.items():
            seen = self.committed.get(index)
            if seen != (term, command):
                raise self.fail(f"acknowledged write at {index} lost: committed {seen}")
        kvs = {s.name: s.kv for s in self.servers.values()}
        first = kvs[self.names[0]]
        for name, kv in kvs.items():
            if kv != first:
                raise self.fail(f"state machines differ after settling: {name}")
        for handle in list(self._open):
            self._info(handle)

    def check_linearizable(self, timeout: float = 10.0) -> Any:
        """
        Run the history through txconsul.testing.linearizability: a violation
        raises ``SafetyViolation``; the verdict is returned (``UNKNOWN`` when
        the search ran out of time: the caller decides what that proves).
        """
        from txconsul.testing import linearizability as lin

        result = lin.check(lin.KVModel(), [op.to_operation() for op in self.ops], timeout=timeout)
        if result.verdict is lin.Verdict.NOT_LINEARIZABLE:
            raise self.fail("history not linearizable:\n" + result.explain())
        return result.verdict


def _entry_key(e: Entry) -> bytes:
    return e.command if e.config is None else repr(e.config).encode()
