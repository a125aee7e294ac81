"""
Tests for the SWIM core in txconsul.gossip.memberlist, driven by hand: time is
a float, randomness a seeded ``random.Random``, the network a list of outputs.
"""

from __future__ import annotations

import random

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip.broadcast import BroadcastQueue, retransmit_limit
from txconsul.gossip.memberlist import (
    GossipConfig,
    Memberlist,
    Node,
    NullDelegate,
    Output,
    Packet,
    StartPushPull,
    StreamPing,
)
from txconsul.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Message,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    User,
    ip_bytes,
)
from txconsul.gossip.states import MAY_BECOME, MemberState
from txconsul.gossip.suspicion import Suspicion, suspicion_timeout
from txconsul.gossip.wire import MalformedPacket

ME = ("10.0.0.1", 8301)
CFG = GossipConfig.lan()


def addr(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i}", 8301)


def alive(i: int, incarnation: int = 1, meta: bytes = b"") -> Alive:
    return Alive(incarnation, f"n{i}", ip_bytes(addr(i)[0]), 8301, meta)


class Recorder(NullDelegate):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, MemberState]] = []
        self.user: list[bytes] = []

    def notify_join(self, now: float, node: Node) -> None:
        self.events.append(("join", node.name, node.state))

    def notify_leave(self, now: float, node: Node) -> None:
        self.events.append(("leave", node.name, node.state))

    def notify_update(self, now: float, node: Node) -> None:
        self.events.append(("update", node.name, node.state))

    def notify_msg(self, now: float, payload: bytes) -> None:
        self.user.append(payload)


def sent(outputs: list[Output]) -> list[tuple[tuple[str, int], Message]]:
    return [(o.to, m) for o in outputs if isinstance(o, Packet) for m in o.messages]


class CoreTestCase(SynchronousTestCase):
    def make(self, peers: int = 0, config: GossipConfig = CFG) -> Memberlist:
        self.delegate = Recorder()
        core = Memberlist("n1", ME, config, random.Random(4), 0.0, self.delegate)
        for i in range(2, 2 + peers):
            core.receive(0.0, addr(i), alive(i))
        core.broadcasts.clear()
        self.delegate.events.clear()
        return core

    def run_to(self, core: Memberlist, until: float, answering: bool = False) -> list[Output]:
        """Run the timers up to ``until``; with ``answering``, every peer acks its pings."""
        outputs: list[Output] = []
        while core.next_deadline() <= until:
            now = core.next_deadline()
            step = core.tick(now)
            outputs += step
            if answering:
                for to, message in sent(step):
                    if isinstance(message, Ping):
                        core.receive(now, to, Ack(message.seq_no))
        return outputs


class PingTests(CoreTestCase):
    def test_ping_is_answered_to_its_source_address(self) -> None:
        core = self.make()
        ping = Ping(7, "n1", ip_bytes("10.0.0.9"), 7000, "n9")
        self.assertEqual(sent(core.receive(0.0, addr(5), ping)), [(("10.0.0.9", 7000), Ack(7))])

    def test_ping_without_source_is_answered_to_the_sender(self) -> None:
        core = self.make()
        self.assertEqual(sent(core.receive(0.0, addr(5), Ping(3, ""))), [(addr(5), Ack(3))])

    def test_ping_for_another_node_is_dropped(self) -> None:
        core = self.make()
        self.assertEqual(core.receive(0.0, addr(5), Ping(3, "someone-else")), [])

    def test_user_message_goes_to_the_delegate(self) -> None:
        core = self.make()
        core.receive(0.0, addr(5), User(b"\x03hello"))
        self.assertEqual(self.delegate.user, [b"\x03hello"])


class ProbeTests(CoreTestCase):
    def first_probe(self, core: Memberlist) -> tuple[float, int, tuple[str, int]]:
        while True:
            when = core.next_deadline()
            for to, message in sent(core.tick(when)):
                if isinstance(message, Ping):
                    return when, message.seq_no, to

    def test_acked_probe_suspects_nobody_and_lowers_awareness(self) -> None:
        core = self.make(peers=3)
        core.awareness.score = 2
        when, seq, target = self.first_probe(core)
        core.receive(when + 0.01, target, Ack(seq))
        self.run_to(core, when + 3)
        self.assertEqual(core.awareness.score, 1)
        self.assertTrue(all(n.state == MemberState.ALIVE for n in core.members()))

    def test_missed_ack_leads_to_indirect_probes_then_suspicion(self) -> None:
        core = self.make(peers=4)
        when, seq, target = self.first_probe(core)
        outputs = self.run_to(core, when + CFG.probe_timeout)
        indirect = [(to, m) for to, m in sent(outputs) if isinstance(m, IndirectPing)]
        assert all(isinstance(m, IndirectPing) for _, m in indirect)
        self.assertEqual(len(indirect), CFG.indirect_checks)
        self.assertNotIn(target, [to for to, _ in indirect])
        self.assertTrue(all(m.seq_no == seq and m.nack for _, m in indirect))
        name = indirect[0][1].node
        tcp_ping = StreamPing(target, Ping(seq, name, ip_bytes(ME[0]), ME[1], "n1"))
        self.assertIn(tcp_ping, outputs)
        core.receive(when + 0.6, indirect[0][0], Nack(seq))
        self.run_to(core, when + CFG.probe_interval)
        suspects = [n for n in core.members() if n.state == MemberState.SUSPECT]
        self.assertEqual([n.address for n in suspects], [target])
        # three nacks expected, one received: awareness grows by two
        self.assertEqual(core.awareness.score, 2)

    def test_relay_forwards_the_ack_with_the_requesters_sequence(self) -> None:
        core = self.make(peers=3)
        request = IndirectPing(
            99, ip_bytes("10.0.0.3"), 8301, "n3", True, ip_bytes("10.0.0.2"), 8301, "n2"
        )
        [(to, ping)] = [
            (t, m) for t, m in sent(core.receive(1.0, addr(2), request)) if isinstance(m, Ping)
        ]
        self.assertEqual(to, addr(3))
        assert isinstance(ping, Ping)
        relayed = sent(core.receive(1.1, addr(3), Ack(ping.seq_no)))
        self.assertEqual(relayed[0], (addr(2), Ack(99)))

    def test_relay_sends_a_nack_when_the_target_is_silent(self) -> None:
        core = self.make(peers=3)
        request = IndirectPing(99, ip_bytes("10.0.0.3"), 8301, "n3", True)
        core.receive(1.0, addr(2), request)
        later = self.run_to(core, 1.0 + CFG.probe_timeout)
        self.assertIn((addr(2), Nack(99)), sent(later))


class SuspicionTests(CoreTestCase):
    def test_timeout_arithmetic_matches_memberlist(self) -> None:
        self.assertEqual(suspicion_timeout(4, 4, 1.0), 4.0)
        self.assertEqual(suspicion_timeout(4, 1000, 1.0), 12.0)
        s = Suspicion(0.0, 4.0, 24.0, 2, {"a"})
        self.assertEqual(s.timeout(), 24.0)
        s.confirm("b")
        self.assertAlmostEqual(s.timeout(), 11.381, places=3)
        s.confirm("c")
        self.assertEqual(s.timeout(), 4.0)

    def test_repeated_accuser_is_not_a_confirmation(self) -> None:
        s = Suspicion(0.0, 4.0, 24.0, 2, {"a"})
        self.assertFalse(s.confirm("a"))
        self.assertTrue(s.confirm("b"))
        self.assertFalse(s.confirm("b"))

    def test_suspect_becomes_dead_after_the_maximum_without_confirmations(self) -> None:
        core = self.make(peers=3)
        core.receive(0.0, addr(2), Suspect(1, "n3", "n2"))
        self.assertEqual(core.nodes["n3"].state, MemberState.SUSPECT)
        self.run_to(core, 23.9, answering=True)
        self.assertEqual(core.nodes["n3"].state, MemberState.SUSPECT)
        self.run_to(core, 24.1, answering=True)
        self.assertEqual(core.nodes["n3"].state, MemberState.DEAD)
        self.assertIn(("leave", "n3", MemberState.DEAD), self.delegate.events)

    def test_confirmations_shorten_the_suspicion(self) -> None:
        core = self.make(peers=3)
        core.receive(0.0, addr(2), Suspect(1, "n3", "n2"))
        core.receive(0.1, addr(4), Suspect(1, "n3", "n4"))
        core.receive(0.2, addr(1), Suspect(1, "n3", "n1"))
        self.run_to(core, 4.1)
        self.assertEqual(core.nodes["n3"].state, MemberState.DEAD)

    def test_alive_with_higher_incarnation_clears_suspicion(self) -> None:
        core = self.make(peers=3)
        core.receive(0.0, addr(2), Suspect(1, "n3", "n2"))
        core.receive(1.0, addr(3), alive(3, incarnation=2))
        self.run_to(core, 30, answering=True)
        self.assertEqual(core.nodes["n3"].state, MemberState.ALIVE)

    def test_suspicion_of_ourselves_is_refuted(self) -> None:
        core = self.make(peers=2)
        core.receive(0.0, addr(2), Suspect(5, "n1", "n2"))
        self.assertEqual(core.me.incarnation, 6)
        self.assertEqual(core.awareness.score, 1)
        queued = core.broadcasts.get(2, 1400, 3)
        self.assertEqual(
            [(m.node, m.incarnation) for m in queued if isinstance(m, Alive)], [("n1", 6)]
        )

    def test_without_dynamic_suspicion_the_minimum_applies(self) -> None:
        core = self.make(peers=3, config=GossipConfig(dynamic_suspicion=False))
        core.receive(0.0, addr(2), Suspect(1, "n3", "n2"))
        self.run_to(core, 4.1)
        self.assertEqual(core.nodes["n3"].state, MemberState.DEAD)


class StateRuleTests(CoreTestCase):
    def test_new_member_joins(self) -> None:
        core = self.make()
        core.receive(0.0, addr(2), alive(2))
        self.assertEqual(self.delegate.events, [("join", "n2", MemberState.ALIVE)])

    def test_older_incarnation_is_ignored(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), alive(2, incarnation=3, meta=b"a"))
        core.receive(0.0, addr(2), alive(2, incarnation=2, meta=b"b"))
        self.assertEqual(core.nodes["n2"].meta, b"a")

    def test_meta_change_is_an_update(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), alive(2, incarnation=2, meta=b"x"))
        self.assertEqual(self.delegate.events, [("update", "n2", MemberState.ALIVE)])

    def test_same_name_at_another_address_is_a_conflict(self) -> None:
        core = self.make(peers=1)
        other = Alive(9, "n2", ip_bytes("10.9.9.9"), 1, b"")
        core.receive(0.0, addr(2), other)
        self.assertEqual(core.nodes["n2"].address, addr(2))

    def test_dead_member_may_come_back_at_another_address_after_the_reclaim_time(self) -> None:
        """memberlist's DeadNodeReclaimTime, 30 s as Consul sets it."""
        core = self.make(peers=1)
        self.assertEqual(core.config.dead_node_reclaim_time, 30.0)
        core.receive(10.0, addr(2), Dead(1, "n2", "n3"))
        moved = Alive(1, "n2", ip_bytes("10.9.9.9"), 7301, b"")
        core.receive(40.0, addr(3), moved)  # dead for exactly 30 s: still refused
        self.assertEqual(core.nodes["n2"].address, addr(2))
        self.assertEqual(core.nodes["n2"].state, MemberState.DEAD)
        core.receive(40.5, addr(3), moved)  # a lower incarnation than the dead one's is fine
        node = core.nodes["n2"]
        self.assertEqual((node.address, node.state), (("10.9.9.9", 7301), MemberState.ALIVE))
        self.assertEqual(self.delegate.events[-1], ("join", "n2", MemberState.ALIVE))
        # and the news spreads: the new address is gossiped on
        queued = core.broadcasts.get(2, 1400, 3)
        self.assertIn(moved, queued)

    def test_suspect_member_is_not_reclaimed_at_another_address(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(3), Suspect(1, "n2", "n3"))
        core.receive(100.0, addr(3), Alive(5, "n2", ip_bytes("10.9.9.9"), 7301, b""))
        self.assertEqual(core.nodes["n2"].address, addr(2))

    def test_without_a_reclaim_time_a_dead_member_keeps_its_address(self) -> None:
        config = attrs.evolve(CFG, dead_node_reclaim_time=0)
        core = self.make(peers=1, config=config)
        core.receive(0.0, addr(2), Dead(1, "n2", "n3"))
        core.receive(1000.0, addr(3), Alive(5, "n2", ip_bytes("10.9.9.9"), 7301, b""))
        self.assertEqual(core.nodes["n2"].address, addr(2))

    def test_left_member_may_come_back_at_another_address_at_once(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), Dead(1, "n2", "n2"))
        core.receive(0.1, addr(3), Alive(1, "n2", ip_bytes("10.9.9.9"), 7301, b""))
        self.assertEqual(core.nodes["n2"].address, ("10.9.9.9", 7301))

    def test_reclaimed_address_comes_through_push_pull_too(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), Dead(3, "n2", "n3"))
        vsn = core.me.vsn
        moved = PushNodeState("n2", ip_bytes("10.9.9.9"), 7301, b"", 1, 0, vsn)
        core.merge_remote_state(31.0, PushPull(False, (moved,)))
        self.assertEqual(core.nodes["n2"].address, ("10.9.9.9", 7301))
        self.assertEqual(core.nodes["n2"].state, MemberState.ALIVE)

    def test_dead_from_itself_is_a_leave(self) -> None:
        core = self.make(peers=2)
        core.receive(0.0, addr(2), Dead(1, "n2", "n2"))
        core.receive(0.0, addr(2), Dead(1, "n3", "n2"))
        self.assertEqual(core.nodes["n2"].state, MemberState.LEFT)
        self.assertEqual(core.nodes["n3"].state, MemberState.DEAD)

    def test_rumour_of_our_death_is_refuted_unless_leaving(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), Dead(1, "n1", "n2"))
        self.assertEqual(core.me.state, MemberState.ALIVE)
        self.assertEqual(core.me.incarnation, 2)
        core.leave(1.0)
        self.assertEqual(core.me.state, MemberState.LEFT)

    def test_dead_member_rejoins_with_a_higher_incarnation(self) -> None:
        core = self.make(peers=1)
        core.receive(0.0, addr(2), Dead(1, "n2", "n3"))
        core.receive(0.0, addr(2), alive(2, incarnation=2))
        self.assertEqual(core.nodes["n2"].state, MemberState.ALIVE)
        self.assertEqual(self.delegate.events[-1], ("join", "n2", MemberState.ALIVE))

    def test_alive_with_a_short_version_vector_is_ignored(self) -> None:
        core = self.make()
        core.receive(0.0, addr(2), Alive(1, "n2", ip_bytes("10.0.0.2"), 1, b"", b"\x01\x05"))
        self.assertNotIn("n2", core.nodes)

    def test_transition_table_has_no_way_back_from_dead_but_alive(self) -> None:
        self.assertEqual(MAY_BECOME[MemberState.DEAD], {MemberState.ALIVE})


class PushPullTests(CoreTestCase):
    def test_join_starts_a_push_pull_with_our_state(self) -> None:
        core = self.make()
        [out] = core.join(0.0, [addr(2)])
        assert isinstance(out, StartPushPull)
        self.assertTrue(out.state.join)
        self.assertEqual([n.name for n in out.state.nodes], ["n1"])

    def test_remote_dead_is_only_suspected_and_left_stays_left(self) -> None:
        core = self.make(peers=2)
        vsn = core.me.vsn
        remote = PushPull(
            False,
            (
                PushNodeState("n2", ip_bytes("10.0.0.2"), 8301, b"", 1, 2, vsn),
                PushNodeState("n3", ip_bytes("10.0.0.3"), 8301, b"", 1, 3, vsn),
                PushNodeState("n7", ip_bytes("10.0.0.7"), 8301, b"", 1, 0, vsn),
            ),
        )
        core.merge_remote_state(0.0, remote)
        self.assertEqual(core.nodes["n2"].state, MemberState.SUSPECT)
        self.assertEqual(core.nodes["n3"].state, MemberState.LEFT)
        self.assertEqual(core.nodes["n7"].state, MemberState.ALIVE)

    def test_push_pull_interval_scales_as_memberlists_push_pull_scale(self) -> None:
        # memberlist util.go pushPullScale: unchanged up to 32 members, then
        # multiplied by ceil(log2(n) - log2(32)) + 1, n counting every member
        core = self.make(config=attrs.evolve(CFG, push_pull_budget=0))
        expected = {1: 30, 32: 30, 33: 60, 64: 60, 65: 90, 100: 90, 1000: 180, 10000: 300}
        for n, seconds in expected.items():
            core.nodes = {f"n{i}": core.me for i in range(n)}
            self.assertEqual(core._push_pull_interval(), seconds, n)

    def test_budget_leaves_a_small_pools_interval_alone(self) -> None:
        core = self.make(peers=20, config=attrs.evolve(CFG, push_pull_budget=200))
        self.assertEqual(core._push_pull_interval(), 30)

    def test_budget_stretches_the_interval_of_a_big_state(self) -> None:
        """Our exchanges (state out, as much back) carry at most the budget per second."""
        config = attrs.evolve(CFG, push_pull_budget=200)
        core = self.make(config=config)
        for i in range(2, 1002):
            ip = ip_bytes(f"10.0.{i // 256}.{i % 256}")
            core.receive(0.0, addr(2), Alive(1, f"n{i}", ip, 8301, b"m" * 100))
        core.broadcasts.clear()
        size = len(core.local_state(False).to_wire())
        interval = 2 * size / 200
        self.assertGreater(interval, 180)  # past memberlist's scaled 180 s
        self.assertAlmostEqual(core._push_pull_interval(), interval)
        # the timer follows: the next push/pull starts that long after the first
        starts: list[float] = []
        while len(starts) < 2:
            now = core.next_deadline()
            step = core.tick(now)
            starts += [now for o in step if isinstance(o, StartPushPull)]
            for _, message in sent(step):
                if isinstance(message, Ping):
                    core.receive(now, addr(2), Ack(message.seq_no))
        self.assertLess(starts[0], 30)
        self.assertAlmostEqual(starts[1] - starts[0], interval)

    def test_budget_counts_the_delegates_state(self) -> None:
        config = attrs.evolve(CFG, push_pull_budget=100)
        core = self.make(config=config)
        self.delegate.local_state = lambda join: b"x" * 10_000  # type: ignore[method-assign]
        self.assertAlmostEqual(
            core._push_pull_interval(), 2 * len(core.local_state(False).to_wire()) / 100
        )

    def test_incompatible_versions_refuse_the_merge(self) -> None:
        core = self.make()
        bad = PushNodeState("n2", ip_bytes("10.0.0.2"), 8301, b"", 1, 0, bytes([1, 5, 2, 2, 3, 3]))
        self.assertRaises(MalformedPacket, core.merge_remote_state, 0.0, PushPull(False, (bad,)))
        self.assertNotIn("n2", core.nodes)


class BroadcastTests(SynchronousTestCase):
    def test_each_broadcast_is_sent_the_retransmit_limit_times(self) -> None:
        queue: BroadcastQueue[str] = BroadcastQueue(4)
        queue.queue("a", 10)
        self.assertEqual(retransmit_limit(4, 3), 4)
        sends = sum(len(queue.get(2, 1400, 3)) for _ in range(10))
        self.assertEqual(sends, 4)

    def test_a_small_broadcast_long_gone_stops_no_scan_early(self) -> None:
        """The bound that ends a scan early follows the queue's smallest item."""
        queue: BroadcastQueue[str] = BroadcastQueue(1)
        queue.queue("small", 10)
        self.assertEqual(queue.get(2, 100, 3), ["small"])  # sent its one time: gone
        for i in range(50):
            queue.queue(f"big-{i}", 300)
        self.assertEqual(queue.get(2, 400, 3), ["big-49"])  # newest first among equals
        # the scan saw every item: no item of 10 bytes is left to wait for
        self.assertEqual(queue._min_size, 300)
        self.assertEqual(len(queue.get(2, 1000, 3)), 3)

    def test_keyed_broadcast_replaces_the_older_one(self) -> None:
        queue: BroadcastQueue[str] = BroadcastQueue(4)
        queue.queue("old", 10, key="n2")
        queue.queue("new", 10, key="n2")
        self.assertEqual(queue.get(2, 1400, 3), ["new"])

    def test_fewest_sent_first_and_within_the_budget(self) -> None:
        queue: BroadcastQueue[str] = BroadcastQueue(4)
        queue.queue("small", 10)
        queue.queue("big", 100)
        self.assertEqual(queue.get(2, 1400, 3), ["big", "small"])
        queue.queue("fresh", 10)
        self.assertEqual(queue.get(2, 13, 3), ["fresh"])

    def test_piggyback_fills_acks(self) -> None:
        core = Memberlist("n1", ME, CFG, random.Random(1), 0.0)
        core.receive(0.0, addr(2), alive(2))
        [packet] = core.receive(0.0, addr(2), Ping(1, "n1"))
        assert isinstance(packet, Packet)
        self.assertEqual(packet.messages[0], Ack(1))
        self.assertIn(alive(2), packet.messages)


names = st.sampled_from(["n1", "n2", "n3", "n4", "zz"])
incarnations = st.integers(0, 6)
hosts = st.sampled_from([ip_bytes("10.0.0.2"), ip_bytes("10.0.0.3"), b"\x01\x02", b""])
wrong_messages = st.one_of(
    st.builds(
        Alive,
        incarnations,
        names,
        hosts,
        st.integers(0, 65535),
        st.binary(max_size=8),
        st.sampled_from([bytes([1, 5, 2, 2, 5, 4]), b"", b"\x00\x00\x00\x00\x00\x00"]),
    ),
    st.builds(Suspect, incarnations, names, names),
    st.builds(Dead, incarnations, names, names),
    st.builds(Ping, st.integers(0, 5), names, hosts, st.integers(0, 65535), names),
    st.builds(Ack, st.integers(0, 5)),
    st.builds(Nack, st.integers(0, 5)),
    st.builds(
        IndirectPing,
        st.integers(0, 5),
        hosts,
        st.integers(0, 65535),
        names,
        st.booleans(),
        hosts,
        st.integers(0, 65535),
        names,
    ),
)


class RobustnessTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 2), wrong_messages), max_size=40))
    def test_wrong_messages_keep_the_member_list_consistent(
        self, script: list[tuple[float, Message]]
    ) -> None:
        core = Memberlist("n1", ME, CFG, random.Random(2), 0.0)
        now = 0.0
        for step, message in script:
            now += step
            core.tick(now)
            core.receive(now, addr(9), message)
            self.assertEqual(set(core._order), set(core.nodes))
            self.assertEqual(len(core._order), len(core.nodes))
            self.assertEqual(core.nodes["n1"].state in (MemberState.ALIVE,), True)
            # the push/pull list kept between changes is what a fresh one would be
            fresh = tuple(
                PushNodeState(n.name, n.addr, n.port, n.meta, n.incarnation, int(n.state), n.vsn)
                for n in core.nodes.values()
            )
            self.assertEqual(core.local_state(False).nodes, fresh)
        core.tick(now + 100)
