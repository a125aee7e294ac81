"""Tests for txconsul.raft.node: the Twisted adapter over a fake transport and a Clock."""

from __future__ import annotations

import os
import random
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txconsul.clock import use_monotonic_time
from txconsul.interfaces import IConsensus
from txconsul.raft.core import NotLeader, Role, Timing
from txconsul.raft.logstore import MemoryLogStore, SQLiteLogStore, StoreFailed
from txconsul.raft.node import IRaftTransport, LeadershipLost, RaftNode
from txconsul.state.fsm import FSM
from txconsul.state.store import StateStore
from txconsul.testing.wallclock import EPOCH, WallClockReactor

TIMING = Timing(
    election_timeout=1.0, heartbeat_interval=0.1, lease=0.8, snapshot_threshold=4, trailing_logs=1
)
NAMES = ["10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300"]


def put(key: str, value: bytes) -> dict:
    return {"Type": "kv", "Verb": "set", "Key": key, "Value": value}


@implementer(IRaftTransport)
class FakeTransport:
    def __init__(self, net: Net, me: str) -> None:
        self.net, self.me = net, me

    def send(self, to: str, data: bytes) -> None:
        if (self.me, to) not in self.net.cut:
            self.net.clock.callLater(0.001, self.net.deliver, self.me, to, data)


class Net:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nodes: dict[str, RaftNode] = {}
        self.cut: set[tuple[str, str]] = set()

    def deliver(self, src: str, dst: str, data: bytes) -> None:
        node = self.nodes.get(dst)
        if node is not None and node.running and (src, dst) not in self.cut:
            node.receive(src, data)


class NodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = Net(self.clock)
        self.stores = {n: MemoryLogStore() for n in NAMES}
        for i, name in enumerate(NAMES):
            self.start(name, i)
        self.addCleanup(self.stop_all)

    def start(self, name: str, i: int, names=NAMES) -> RaftNode:
        node = RaftNode(
            name,
            names,
            FSM(StateStore()),
            self.stores[name],
            FakeTransport(self.net, name),
            self.clock,
            self.clock.seconds,
            random.Random(i),
            TIMING,
        )
        self.net.nodes[name] = node
        node.startService()
        return node

    def stop_all(self) -> None:
        for node in self.net.nodes.values():
            if node.running:
                node.stopService()
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def run_for(self, seconds: float) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(0.001)

    def leader(self) -> RaftNode:
        leaders = [
            n for n in self.net.nodes.values() if n.core.role is Role.LEADER and not n.halted
        ]
        self.assertEqual(len(leaders), 1)
        return leaders[0]

    def test_when_leader_fires_once_the_noop_commits(self) -> None:
        ds = [node.when_leader() for node in self.net.nodes.values()]
        self.run_for(3.0)
        leader = self.leader()
        fired = [node for node, d in zip(self.net.nodes.values(), ds, strict=True) if d.called]
        self.assertEqual(fired, [leader])
        self.successResultOf(leader.when_leader())
        for d in ds:
            d.addErrback(lambda f: f.trap(LeadershipLost))  # the others fail when stopped

    def test_provides_iconsensus(self) -> None:
        self.assertTrue(verifyObject(IConsensus, self.net.nodes[NAMES[0]]))

    def test_apply_fires_once_applied_everywhere(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        d = leader.apply(put("web", b"1"))
        self.assertNoResult(d)
        self.run_for(0.05)
        self.assertIs(self.successResultOf(d), True)
        self.run_for(0.3)
        for node in self.net.nodes.values():
            self.assertEqual(node._fsm.store.kv.get("web").value, b"1")

    def test_a_follower_left_behind_the_compacted_log_installs_the_snapshot_and_says_so(
        self,
    ) -> None:
        self.run_for(3.0)
        leader = self.leader()
        follower = next(n for n in self.net.nodes.values() if n is not leader)
        self.net.cut |= {(leader.me, follower.me), (follower.me, leader.me)}
        for i in range(10):  # past snapshot_threshold and trailing_logs
            leader.apply(put(f"k{i}", b"v"))
            self.run_for(0.05)
        self.assertGreater(leader.core.first_index, follower.core.last_index + 1)
        self.net.cut.clear()
        with capturedLogs() as events:
            self.run_for(2.0)  # a snapshot sent into the cut is sent again after a while
        self.assertEqual(follower._fsm.store.kv.get("k9").value, b"v")
        installed = [e for e in events if "installed the leader's snapshot" in e["log_format"]]
        self.assertEqual([e["server"] for e in installed], [follower.me])

    def test_follower_refuses_with_the_leader_address(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        follower = next(n for n in self.net.nodes.values() if n is not leader)
        failure = self.failureResultOf(follower.apply(put("a", b"1")), NotLeader)
        self.assertEqual(failure.value.leader, leader.me)
        self.assertEqual(follower.leader_address(), leader.me)
        self.assertFalse(follower.is_leader())
        self.assertTrue(leader.is_leader())
        self.assertEqual(sorted(leader.peers()), NAMES)

    def test_writes_of_one_turn_share_one_sync(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        store = self.stores[leader.me]
        before = store.syncs
        ds = [leader.apply(put(f"k{i}", b"v")) for i in range(20)]
        self.clock.advance(0)
        self.assertEqual(store.syncs, before + 1)
        self.run_for(0.05)
        self.assertEqual([self.successResultOf(d) for d in ds], [True] * 20)

    def test_failed_sync_acknowledges_nothing_and_a_new_leader_takes_over(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        self.stores[leader.me].fail_syncs_after = self.stores[leader.me].syncs
        d = leader.apply(put("x", b"1"))
        self.run_for(0.05)
        self.failureResultOf(d, StoreFailed)
        self.assertTrue(leader.halted)
        self.assertFalse(leader.is_leader())
        self.failureResultOf(leader.apply(put("y", b"1")))
        self.run_for(5.0)
        new = self.leader()
        self.assertNotEqual(new.me, leader.me)
        self.assertIsNone(new._fsm.store.kv.get("x"))

    def test_consistent_read_after_quorum(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        d = leader.consistent_read()
        self.assertNoResult(d)
        self.run_for(0.05)
        self.assertEqual(self.successResultOf(d), leader.core.commit_index)

    def test_isolated_leader_loses_lease_and_pending_writes(self) -> None:
        self.run_for(3.0)
        leader = self.leader()
        self.net.cut = {(leader.me, n) for n in NAMES} | {(n, leader.me) for n in NAMES}
        d = leader.apply(put("x", b"1"))
        self.run_for(TIMING.lease)
        self.assertFalse(leader.is_leader())
        self.run_for(1.0)
        self.failureResultOf(d, LeadershipLost)

    def test_garbage_is_dropped_and_counted(self) -> None:
        node = self.net.nodes[NAMES[0]]
        term, last = node.core.term, node.core.last_index
        with capturedLogs() as events:
            node.receive(NAMES[1], b"\xc1\x00garbage")
        self.assertEqual(node.dropped, 1)
        self.assertEqual((node.core.term, node.core.last_index), (term, last))  # nothing applied
        [line] = [e for e in events if "malformed raft message" in e["log_format"]]
        self.assertEqual(line["src"], NAMES[1])
        self.flushLoggedErrors()


class RestartTests(SynchronousTestCase):
    def test_single_server_restarts_from_disk_with_snapshot(self) -> None:
        clock = Clock()
        path = self.mktemp()
        me = "127.0.0.1:8300"

        def make() -> RaftNode:
            node = started_on_disk(me, [me], path, clock)
            clock.advance(0)
            return node

        node = make()
        self.successResultOf(node.when_leader())
        self.assertTrue(node.is_leader())
        for i in range(10):
            d = node.apply(put(f"k{i}", b"%d" % i))
            clock.advance(0)
            self.assertIs(self.successResultOf(d), True)
        self.assertIsNotNone(node.core.snapshot)
        node.stopService()
        again = make()
        self.addCleanup(again.stopService)
        self.assertTrue(again.is_leader())
        for i in range(10):
            self.assertEqual(again._fsm.store.kv.get(f"k{i}").value, b"%d" % i)


def started_on_disk(me: str, voters: list[str], path: str, clock: Clock) -> RaftNode:
    """A running node with an SQLite log in ``path`` and a network of its own."""
    node = RaftNode(
        me,
        voters,
        FSM(StateStore()),
        SQLiteLogStore(path),
        FakeTransport(Net(clock), me),
        clock,
        clock.seconds,
        random.Random(1),
        TIMING,
    )
    node.startService()
    return node


class BootstrapRestartTests(SynchronousTestCase):
    """A server killed right after it bootstrapped still knows the voters when it restarts."""

    def make(self, me: str, voters: list[str], path: str, clock: Clock) -> RaftNode:
        node = started_on_disk(me, voters, path, clock)
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node

    def test_the_voters_are_on_disk_before_anything_happens(self) -> None:
        clock = Clock()
        path = self.mktemp()
        me = NAMES[0]
        node = self.make(me, NAMES, path, clock)
        self.assertEqual(node.core.term, 0)  # no election, no message yet
        node.stopService()
        again = self.make(me, [], path, clock)
        self.assertEqual(again.peers(), NAMES)
        # a voter again: its election timer runs
        self.assertLess(again.core.next_deadline(), float("inf"))


class LoneVoterTests(SynchronousTestCase):
    """A one-server cluster (``--dev``, ``--bootstrap``) runs the same node."""

    me = "127.0.0.1:8300"

    def make(self, store) -> tuple[RaftNode, Clock]:
        clock = Clock()
        node = RaftNode(
            self.me,
            [self.me],
            FSM(StateStore()),
            store,
            FakeTransport(Net(clock), self.me),
            clock,
            clock.seconds,
            random.Random(1),
            Timing(),
        )
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        return node, clock

    def test_elects_itself_before_start_returns(self) -> None:
        node, clock = self.make(MemoryLogStore())
        self.assertTrue(node.is_leader())
        self.assertEqual(node.leader_address(), self.me)
        self.successResultOf(node.when_leader())
        self.assertEqual(node.core.term, 1)

    def test_in_memory_commits_before_apply_returns_and_arms_no_timer(self) -> None:
        node, clock = self.make(MemoryLogStore())
        indexes = []
        for i in range(3):
            self.assertIs(self.successResultOf(node.apply(put(f"k{i}", b"v"))), True)
            indexes.append(node._fsm.store.kv.get(f"k{i}").modify_index)
        self.assertEqual(indexes, sorted(indexes))
        self.assertEqual(len(set(indexes)), 3)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(node.consistent_read()), node.core.commit_index)

    def test_a_failed_command_fails_at_once_and_the_log_goes_on(self) -> None:
        node, _ = self.make(MemoryLogStore())
        self.failureResultOf(node.apply({"Type": "nonsense"}))
        self.assertIs(self.successResultOf(node.apply(put("a", b"1"))), True)

    def test_on_disk_it_still_batches_the_writes_of_a_turn(self) -> None:
        store = SQLiteLogStore(self.mktemp())
        node, clock = self.make(store)
        self.assertTrue(node.is_leader())
        before = store.syncs
        ds = [node.apply(put(f"k{i}", b"v")) for i in range(5)]
        for d in ds:
            self.assertNoResult(d)
        clock.advance(0)
        self.assertEqual([self.successResultOf(d) for d in ds], [True] * 5)
        self.assertEqual(store.syncs, before + 1)


class ClockStepTests(SynchronousTestCase):
    """
    Each server has a reactor of its own on its own wall clock (Twisted's are);
    the network is I/O, which no timer holds up. A step of one server's wall
    clock must not cost the cluster its leader.
    """

    def start_cluster(self, monotonic_timers: bool) -> None:
        self.ether = Clock()
        self.net = Net(self.ether)
        self.reactors: dict[str, WallClockReactor] = {}
        for i, name in enumerate(NAMES):
            reactor = WallClockReactor(monotonic_start=1000.0 + 7 * i, wall_start=EPOCH + 13 * i)
            if monotonic_timers:
                use_monotonic_time(reactor, reactor.monotonic)
            self.reactors[name] = reactor
            node = RaftNode(
                name,
                NAMES,
                FSM(StateStore()),
                MemoryLogStore(),
                FakeTransport(self.net, name),
                reactor,
                reactor.monotonic,
                random.Random(i),
                TIMING,
            )
            self.net.nodes[name] = node
            node.startService()
        self.addCleanup(self.stop_all)
        self.run_for(3.0)

    def stop_all(self) -> None:
        for node in self.net.nodes.values():
            node.stopService()
        self.ether.advance(1)

    def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.001)):
            self.ether.advance(0.001)
            for reactor in self.reactors.values():
                reactor.pass_time(0.001)

    def leader(self) -> RaftNode:
        leaders = [n for n in self.net.nodes.values() if n.core.role is Role.LEADER]
        self.assertEqual(len(leaders), 1)
        return leaders[0]

    def terms(self) -> set[int]:
        return {n.core.term for n in self.net.nodes.values()}

    def commits(self, leader: RaftNode, key: str) -> None:
        d = leader.apply(put(key, b"v"))
        self.run_for(0.05)
        self.assertIs(self.successResultOf(d), True)
        self.run_for(0.2)
        for node in self.net.nodes.values():
            self.assertEqual(node._fsm.store.kv.get(key).value, b"v")

    def test_steps_of_an_hour_either_way_cause_no_election(self) -> None:
        self.start_cluster(monotonic_timers=True)
        leader = self.leader()
        term = leader.core.term
        followers = [n for n in self.net.nodes.values() if n is not leader]
        for step, who in (
            (-3600, leader),
            (3600, followers[0]),
            (3600, leader),
            (-3600, followers[1]),
        ):
            self.reactors[who.me].jump(step)
            self.run_for(3.0)
            self.assertIs(self.leader(), leader)
            self.assertEqual(self.terms(), {term})
            self.commits(leader, f"after{step}{who.me}")

    def test_timers_on_the_wall_clock_would_lose_the_leader(self) -> None:
        """The hazard the monotonic reactor removes: the leader's heartbeats stop for an hour."""
        self.start_cluster(monotonic_timers=False)
        leader = self.leader()
        term = leader.core.term
        self.reactors[leader.me].jump(-3600)
        self.run_for(3.0)
        self.assertGreater(max(self.terms()), term)
        others = [n for n in self.net.nodes.values() if n is not leader]
        self.assertEqual(len([n for n in others if n.core.role is Role.LEADER]), 1)
        self.assertFalse(leader.is_leader())  # its lease ran out on the monotonic clock


class CorruptStoreTests(SynchronousTestCase):
    """A server whose snapshot fails its checksum takes no part; the others go on."""

    def test_a_server_with_a_corrupt_snapshot_refuses_and_the_quorum_goes_on(self) -> None:
        clock = Clock()
        net = Net(clock)
        dirs = {name: self.mktemp() for name in NAMES}

        def start(name: str, i: int) -> RaftNode:
            node = RaftNode(
                name,
                NAMES,
                FSM(StateStore()),
                SQLiteLogStore(dirs[name]),
                FakeTransport(net, name),
                clock,
                clock.seconds,
                random.Random(i),
                TIMING,
            )
            net.nodes[name] = node
            node.startService()
            self.addCleanup(lambda: node.stopService() if node.running else None)
            return node

        def run_for(seconds: float) -> None:
            for _ in range(round(seconds / 0.001)):
                clock.advance(0.001)

        for i, name in enumerate(NAMES):
            start(name, i)
        run_for(3.0)
        leader = next(n for n in net.nodes.values() if n.core.role is Role.LEADER)
        victim = next(n for n in net.nodes.values() if n is not leader)
        for i in range(8):  # past snapshot_threshold: every server takes a snapshot
            d = leader.apply(put(f"k{i}", b"v"))
            run_for(0.05)
            self.successResultOf(d)
        run_for(0.5)
        self.assertIsNotNone(victim.core.snapshot)
        victim.stopService()
        db = sqlite3.connect(os.path.join(dirs[victim.me], "raft.db"), isolation_level=None)
        (packed,) = db.execute("SELECT value FROM stable WHERE key = 'snapshot'").fetchone()
        flipped = bytearray(packed)
        flipped[-3] ^= 0x01
        db.execute("UPDATE stable SET value = ? WHERE key = 'snapshot'", (bytes(flipped),))
        db.close()
        with capturedLogs() as events:
            again = start(victim.me, 9)
        self.assertTrue(again.halted)
        self.assertIsInstance(again.halt_error, StoreFailed)
        self.failureResultOf(again.when_leader(), StoreFailed)
        self.failureResultOf(again.apply(put("x", b"1")))
        self.assertEqual(
            [e["what"] for e in events if "refusing to load" in e.get("log_format", "")],
            ["snapshot"],
        )
        self.assertEqual(
            len([e for e in events if "raft cannot start" in e.get("log_format", "")]), 1
        )
        run_for(1.0)
        d = leader.apply(put("after", b"1"))
        run_for(0.1)
        self.assertIs(self.successResultOf(d), True)
        self.assertTrue(leader.is_leader())
