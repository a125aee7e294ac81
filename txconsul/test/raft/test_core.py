"""Unit tests of txconsul.raft.core: one behaviour each, messages passed by hand."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from txconsul.raft.core import (
    Apply,
    NotLeader,
    PersistEntries,
    PersistState,
    PersistVoters,
    RaftCore,
    ReadFailed,
    ReadReady,
    Restored,
    Role,
    Send,
    Timing,
)
from txconsul.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)

T = Timing(
    election_timeout=1.0, heartbeat_interval=0.1, lease=0.8, snapshot_threshold=5, trailing_logs=1
)
NAMES = ["a", "b", "c"]


class Cluster:
    """Cores that exchange messages at once, except across ``cut`` links."""

    def __init__(self, names=NAMES, now=0.0, timing=T):
        self.now = now
        self.cores = {
            n: RaftCore(n, names, now, random.Random(i), timing) for i, n in enumerate(names)
        }
        self.cut: set[tuple[str, str]] = set()
        self.applied: dict[str, list[int]] = {n: [] for n in names}
        self.outputs: dict[str, list] = {n: [] for n in names}

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for name, core in self.cores.items():
                for out in core.take_outputs():
                    self.outputs[name].append(out)
                    if isinstance(out, Send):
                        if (name, out.to) not in self.cut and out.to in self.cores:
                            self.cores[out.to].receive(self.now, name, out.message)
                            moved = True
                    elif isinstance(out, Apply):
                        self.applied[name].append(out.index)

    def advance(self, to: float) -> None:
        """Tick every core at each of its deadlines up to ``to``."""
        while True:
            when, name = min((c.next_deadline(), n) for n, c in self.cores.items())
            if when > to:
                break
            self.now = max(self.now, when)
            self.cores[name].tick(self.now)
            self.pump()
        self.now = to

    def leader(self) -> RaftCore:
        leaders = [c for c in self.cores.values() if c.role is Role.LEADER]
        assert len(leaders) == 1, leaders
        return leaders[0]


class ElectionTests(SynchronousTestCase):
    def test_one_leader_is_elected(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        self.assertEqual({c.leader for c in cluster.cores.values()}, {leader.me})

    def test_lone_server_elects_itself_at_once(self) -> None:
        core = RaftCore("a", ["a"], 0.0, random.Random(1), T)
        core.tick(0.0)
        self.assertIs(core.role, Role.LEADER)
        self.assertEqual(core.propose(0.0, b"x"), 2)
        self.assertIn(Apply(2, 1, b"x"), core.take_outputs())

    def test_pre_vote_changes_no_term(self) -> None:
        core = RaftCore("a", NAMES, 0.0, random.Random(1), T)
        core.tick(5.0)
        self.assertIs(core.role, Role.PRECANDIDATE)
        self.assertEqual(core.term, 0)
        sent = [o.message for o in core.take_outputs() if isinstance(o, Send)]
        self.assertTrue(
            all(isinstance(m, RequestVote) and m.pre_vote and m.term == 1 for m in sent)
        )

    def test_vote_persisted_before_the_reply(self) -> None:
        core = RaftCore("b", NAMES, 0.0, random.Random(1), T)
        core.receive(5.0, "a", RequestVote(1, "a", 0, 0))
        out = core.take_outputs()
        self.assertEqual(out[-2:], [PersistState(1, "a"), Send("a", RequestVoteReply(1, True))])

    def test_follower_that_hears_a_leader_refuses_votes(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        follower = next(c for c in cluster.cores.values() if c.role is Role.FOLLOWER)
        follower.receive(cluster.now, "x", RequestVote(follower.term + 1, "x", 99, 99))
        reply = follower.take_outputs()[-1]
        self.assertEqual(reply.message.granted, False)
        follower.receive(
            cluster.now, "x", RequestVote(follower.term + 1, "x", 99, 99, pre_vote=True)
        )
        self.assertEqual(follower.take_outputs()[-1].message.granted, False)

    def test_partitioned_server_does_not_disrupt_on_return(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        lonely = next(n for n in NAMES if n != leader.me)
        cluster.cut = {(lonely, n) for n in NAMES} | {(n, lonely) for n in NAMES}
        cluster.advance(10.0)
        term = leader.term
        self.assertEqual(cluster.cores[lonely].term, term)  # pre-vote kept it from counting up
        cluster.cut = set()
        cluster.advance(12.0)
        self.assertIs(cluster.leader(), leader)
        self.assertEqual(leader.term, term)


class ReplicationTests(SynchronousTestCase):
    def test_commit_on_quorum_applies_everywhere(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        index = cluster.leader().propose(cluster.now, b"x")
        cluster.pump()
        cluster.advance(3.5)
        for applied in cluster.applied.values():
            self.assertIn(index, applied)

    def test_follower_refuses_proposals(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        follower = next(c for c in cluster.cores.values() if c is not leader)
        result = follower.propose(cluster.now, b"x")
        self.assertIsInstance(result, NotLeader)
        self.assertEqual(result.leader, leader.me)

    def test_no_commit_without_quorum(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        others = [n for n in NAMES if n != leader.me]
        cluster.cut = {(leader.me, n) for n in others}
        before = leader.commit_index
        leader.propose(cluster.now, b"x")
        cluster.pump()
        self.assertEqual(leader.commit_index, before)

    def test_conflict_term_skips_a_whole_term(self) -> None:
        follower = RaftCore(
            "b",
            NAMES,
            0.0,
            random.Random(1),
            T,
            Restored(
                term=2,
                entries=tuple(Entry(1, i, b"x") for i in range(1, 3))
                + tuple(Entry(2, i, b"y") for i in range(3, 9)),
            ),
        )
        follower.receive(5.0, "a", AppendEntries(3, "a", 8, 3, (), 0, 1))
        reply = follower.take_outputs()[-1].message
        self.assertEqual(reply, AppendEntriesReply(3, False, 0, 3, 2, 1))

    def test_follower_persists_entries_before_it_replies(self) -> None:
        follower = RaftCore("b", NAMES, 0.0, random.Random(1), T)
        follower.receive(5.0, "a", AppendEntries(1, "a", 0, 0, (Entry(1, 1, b"x"),), 0, 1))
        out = follower.take_outputs()
        persist = next(i for i, o in enumerate(out) if isinstance(o, PersistEntries))
        send = next(i for i, o in enumerate(out) if isinstance(o, Send))
        self.assertLess(persist, send)

    def test_lagging_follower_gets_a_snapshot(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        lagging = next(n for n in NAMES if n != leader.me)
        cluster.cut = {(leader.me, lagging)}
        for i in range(12):
            leader.propose(cluster.now, b"v%d" % i)
            cluster.pump()
            if leader.last_applied - leader.first_index >= 4:
                leader.snapshot_taken(cluster.now, leader.last_applied, b"state")
                cluster.pump()
        self.assertGreater(leader.first_index, 2)
        cluster.cut = set()
        cluster.advance(cluster.now + 1.0)
        follower = cluster.cores[lagging]
        self.assertEqual(follower.commit_index, leader.commit_index)
        self.assertIsNotNone(follower.snapshot)


class ReadTests(SynchronousTestCase):
    def test_lease_holds_then_lapses_without_quorum(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        self.assertTrue(leader.can_serve_default_read(cluster.now))
        cluster.cut = {(leader.me, n) for n in NAMES} | {(n, leader.me) for n in NAMES}
        cut_at = cluster.now
        cluster.advance(cut_at + T.lease)
        self.assertFalse(leader.can_serve_default_read(cluster.now))

    def test_lease_expires_before_another_leader_can_exist(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        old = cluster.leader()
        others = [n for n in NAMES if n != old.me]
        cluster.cut = {(old.me, n) for n in others} | {(n, old.me) for n in others}
        t = cluster.now
        end = t + 5.0
        while t < end:
            t += 0.01
            cluster.advance(t)
            new_leaders = [cluster.cores[n] for n in others if cluster.cores[n].role is Role.LEADER]
            if new_leaders:
                self.assertFalse(old.can_serve_default_read(t))
        self.assertTrue(any(cluster.cores[n].role is Role.LEADER for n in others))

    def test_consistent_read_waits_for_a_quorum(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        read_id = leader.read_index(cluster.now)
        cluster.pump()
        self.assertIn(ReadReady(read_id, leader.commit_index), cluster.outputs[leader.me])

    def test_consistent_read_fails_when_leadership_is_lost(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        cluster.cut = {(leader.me, n) for n in NAMES} | {(n, leader.me) for n in NAMES}
        read_id = leader.read_index(cluster.now)
        cluster.advance(cluster.now + 3.0)
        self.assertNotIn(
            read_id, [o.read_id for o in cluster.outputs[leader.me] if isinstance(o, ReadReady)]
        )
        self.assertIn(ReadFailed(read_id, ""), cluster.outputs[leader.me])


class MembershipTests(SynchronousTestCase):
    def test_add_then_remove_one_server(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        cluster.cores["d"] = RaftCore("d", [], cluster.now, random.Random(9), T)
        cluster.applied["d"], cluster.outputs["d"] = [], []
        leader.change_config(cluster.now, ["a", "b", "c", "d"])
        cluster.pump()
        cluster.advance(cluster.now + 0.5)
        self.assertEqual(cluster.cores["d"].config, ("a", "b", "c", "d"))
        self.assertRaises(ValueError, leader.change_config, cluster.now, ["a"])
        victim = next(n for n in NAMES if n != leader.me)
        remaining = [n for n in ["a", "b", "c", "d"] if n != victim]
        leader.change_config(cluster.now, remaining)
        cluster.pump()
        cluster.advance(cluster.now + 0.5)
        self.assertEqual(leader.config, tuple(remaining))
        self.assertGreaterEqual(leader.commit_index, leader.config_index)

    def test_leader_removing_itself_steps_down(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        leader.change_config(cluster.now, [n for n in NAMES if n != leader.me])
        cluster.pump()
        cluster.advance(cluster.now + 0.5)
        self.assertIs(leader.role, Role.FOLLOWER)
        cluster.advance(cluster.now + 5.0)
        new = [c for c in cluster.cores.values() if c.role is Role.LEADER]
        self.assertEqual(len(new), 1)
        self.assertNotEqual(new[0].me, leader.me)


class BootstrapTests(SynchronousTestCase):
    """The configuration a new cluster starts with is kept on disk (``PersistVoters``)."""

    def test_a_new_cluster_persists_its_voters_first(self) -> None:
        core = RaftCore("a", ["c", "a", "b"], 0.0, random.Random(1), T)
        self.assertEqual(core.take_outputs(), [PersistVoters(("a", "b", "c"))])

    def test_a_restart_takes_the_voters_from_disk_and_persists_nothing(self) -> None:
        restored = Restored(term=1, voters=("a", "b", "c"))
        core = RaftCore("a", [], 0.0, random.Random(1), T, restored)
        self.assertEqual(core.config, ("a", "b", "c"))
        self.assertEqual(core.take_outputs(), [])
        # a voter of the stored configuration stands for election after a restart
        core.tick(core.next_deadline())
        self.assertIs(core.role, Role.PRECANDIDATE)

    def test_the_voters_given_yield_to_those_on_disk(self) -> None:
        restored = Restored(voters=("a", "b", "c"))
        core = RaftCore("a", ["a", "x"], 0.0, random.Random(1), T, restored)
        self.assertEqual(core.config, ("a", "b", "c"))

    def test_a_log_with_a_configuration_needs_no_voters_kept(self) -> None:
        restored = Restored(term=2, entries=(Entry(2, 1, b"", ("a", "b")),))
        core = RaftCore("a", ["a", "b", "c"], 0.0, random.Random(1), T, restored)
        self.assertEqual(core.config, ("a", "b"))
        self.assertEqual(core.take_outputs(), [])

    def test_a_server_waiting_to_be_added_persists_nothing(self) -> None:
        core = RaftCore("d", [], 0.0, random.Random(1), T)
        self.assertEqual(core.take_outputs(), [])
        self.assertEqual(core.config, ())


class TransferTests(SynchronousTestCase):
    def test_transfer_elects_the_target_without_waiting(self) -> None:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        target = next(n for n in NAMES if n != leader.me)
        self.assertTrue(leader.transfer_leadership(cluster.now, target))
        self.assertFalse(leader.can_serve_default_read(cluster.now))
        self.assertIsInstance(leader.propose(cluster.now, b"x"), NotLeader)
        cluster.pump()
        self.assertIs(cluster.cores[target].role, Role.LEADER)
        self.assertIs(leader.role, Role.FOLLOWER)
        sent = [o.message for o in cluster.outputs[leader.me] if isinstance(o, Send)]
        self.assertTrue(any(isinstance(m, TimeoutNow) for m in sent))


class LostTailTests(SynchronousTestCase):
    """A follower whose disk lost entries it had acknowledged (a corrupt tail cut off on restart)."""

    def caught_up_cluster(self, proposals: int = 6) -> tuple[Cluster, RaftCore, str]:
        cluster = Cluster()
        cluster.advance(3.0)
        leader = cluster.leader()
        for i in range(proposals):
            leader.propose(cluster.now, b"v%d" % i)
            cluster.pump()
        cluster.advance(cluster.now + 0.5)
        follower = next(n for n in NAMES if n != leader.me)
        self.assertEqual(leader._peers[follower].match_index, leader.last_index)
        return cluster, leader, follower

    def test_a_follower_that_lost_an_acknowledged_tail_is_brought_back(self) -> None:
        cluster, leader, name = self.caught_up_cluster()
        other = next(n for n in NAMES if n not in (leader.me, name))
        cluster.cut = {(leader.me, other), (other, leader.me)}
        old = cluster.cores[name]
        last, committed = leader.last_index, leader.commit_index
        kept = 3
        self.assertLess(kept, committed)
        cluster.cores[name] = follower = RaftCore(
            name,
            NAMES,
            cluster.now,
            random.Random(7),
            T,
            Restored(old.term, old.vote, entries=tuple(old.log_entries()[:kept])),
        )
        cluster.applied[name] = []
        # the leader's heartbeat checks the old match; the follower says its log ends at 3
        now = cluster.now + T.heartbeat_interval
        leader.tick(now)
        heartbeat = next(
            o.message for o in leader.take_outputs() if isinstance(o, Send) and o.to == name
        )
        self.assertEqual(heartbeat.prev_index, last)
        follower.receive(now, leader.me, heartbeat)
        reply = next(o.message for o in follower.take_outputs() if isinstance(o, Send))
        self.assertEqual((reply.success, reply.conflict_index), (False, kept + 1))
        leader.receive(now, name, reply)
        peer = leader._peers[name]
        # counted only for what it still has; what was committed stays committed
        self.assertEqual(peer.match_index, kept)
        self.assertEqual(leader.commit_index, committed)
        # and it resends at once from what the follower has
        resend = next(
            o.message for o in leader.take_outputs() if isinstance(o, Send) and o.to == name
        )
        self.assertEqual((resend.prev_index, resend.entries[0].index), (kept, kept + 1))
        follower.receive(now, leader.me, resend)
        cluster.pump()
        cluster.advance(now + 1.0)
        self.assertEqual(follower.log_entries(), leader.log_entries())
        self.assertEqual(peer.match_index, leader.last_index)
        self.assertEqual(follower.commit_index, leader.commit_index)
        commands = [e.index for e in leader.log_entries() if e.command and e.config is None]
        self.assertEqual(cluster.applied[name], commands)
        # and the pair commits without the third server
        index = leader.propose(cluster.now, b"after")
        assert isinstance(index, int)
        cluster.pump()
        self.assertGreaterEqual(leader.commit_index, index)

    def test_a_stale_reordered_rejection_does_not_lower_the_match(self) -> None:
        cluster, leader, name = self.caught_up_cluster()
        follower = cluster.cores[name]
        behind = follower.last_index
        cluster.cut = {(leader.me, name)}
        for i in range(3):
            leader.propose(cluster.now, b"w%d" % i)
            cluster.pump()
        # a pipelined batch that assumed the one before it arrived, which was lost
        early = next(
            o.message
            for o in cluster.outputs[leader.me]
            if isinstance(o, Send)
            and o.to == name
            and isinstance(o.message, AppendEntries)
            and o.message.prev_index > behind
        )
        follower.receive(cluster.now, leader.me, early)
        rejection = follower.take_outputs()[-1].message
        self.assertEqual((rejection.success, rejection.conflict_index), (False, behind + 1))
        # that rejection is delayed; meanwhile the follower catches up and says so
        cluster.cut = set()
        cluster.advance(cluster.now + 0.5)
        peer = leader._peers[name]
        self.assertEqual(peer.match_index, leader.last_index)
        self.assertGreater(peer.match_seq, rejection.seq)
        leader.take_outputs()
        leader.receive(cluster.now, name, rejection)
        self.assertEqual(peer.match_index, leader.last_index)
        self.assertEqual(peer.next_index, leader.last_index + 1)
        resent = [
            o
            for o in leader.take_outputs()
            if isinstance(o, Send) and isinstance(o.message, AppendEntries) and o.message.entries
        ]
        self.assertEqual(resent, [])
