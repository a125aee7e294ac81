"""
serf's queries, reaping, reconnecting and snapshot (txconsul.gossip.serf and
txconsul.gossip.snapshot), on pure cores wired together in memory, plus a
hypothesis property: well-formed but wrong serf messages never raise and
leave the member table consistent.
"""

from __future__ import annotations

import os
import random
import tempfile

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip import snapshot
from txconsul.gossip.keyring import Keyring, encode_key
from txconsul.gossip.memberlist import GossipConfig, Memberlist, Packet
from txconsul.gossip.messages import DEFAULT_VSN, Ack, Alive, Dead, Ping, User, ip_bytes
from txconsul.gossip.serf import (
    KEY_QUERIES,
    KeyResponse,
    MemberEvent,
    MemberStatus,
    QueryHandle,
    Serf,
    SerfConfig,
    encode_tags,
    key_response,
)
from txconsul.gossip.wire import pack, unpack_one

SHORT = SerfConfig(
    reap_interval=1.0, reconnect_interval=2.0, reconnect_timeout=10.0, tombstone_timeout=20.0
)


class Pool:
    """A few serf members on a perfect in-memory network, ticked together."""

    def __init__(self, names: list[str], config: SerfConfig = SHORT) -> None:
        self.now = 0.0
        self.serfs: dict[str, Serf] = {}
        self.cores: dict[str, Memberlist] = {}
        self.by_address: dict[tuple[str, int], str] = {}
        for i, name in enumerate(names):
            address = (f"10.0.0.{i + 1}", 8301)
            serf = Serf(
                name, {"role": "web" if i % 2 else "db"}, config=config, rng=random.Random(i)
            )
            core = Memberlist(name, address, GossipConfig.lan(), random.Random(i), 0.0, serf)
            serf.attach(core)
            self.serfs[name], self.cores[name] = serf, core
            self.by_address[address] = name
        for core in self.cores.values():
            for other in self.cores.values():
                me = other.me
                core.on_alive(0.0, Alive(1, me.name, me.addr, me.port, me.meta, DEFAULT_VSN))
            core.take_outputs()
        self.down: set[str] = set()
        #: (sender, receiver) pairs whose packets are lost
        self.cut: set[tuple[str, str]] = set()
        self.reconnects: list[tuple[str, tuple[str, int]]] = []

    def deliver(self, sender: str, outputs: list[object]) -> None:
        for out in outputs:
            if not isinstance(out, Packet):
                continue
            to = self.by_address[out.to]
            if to in self.down or sender in self.down or (sender, to) in self.cut:
                continue
            self.deliver(
                to,
                [
                    o
                    for m in out.messages
                    for o in self.cores[to].receive(self.now, self.cores[sender].me.address, m)
                ],
            )

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.05
            for name, core in self.cores.items():
                if name in self.down:
                    continue
                self.deliver(name, core.tick(self.now) + core.take_outputs())
                for address in self.serfs[name].tick(self.now):
                    self.reconnects.append((name, address))


class QueryTests(SynchronousTestCase):
    def test_query_gets_an_ack_and_a_response_from_every_member(self) -> None:
        pool = Pool(["a", "b", "c"])
        handle = pool.serfs["a"].query(pool.now, "ping-app", b"hi", timeout=5.0)
        pool.run(1.0)
        self.assertEqual(handle.acks, {"a", "b", "c"})
        for name in ("b", "c"):
            [query] = pool.serfs[name].drain_queries()
            self.assertEqual((query.name, query.payload, query.source), ("ping-app", b"hi", "a"))
            pool.serfs[name].respond(pool.now, query, f"pong-{name}".encode())
            self.assertRaises(ValueError, pool.serfs[name].respond, pool.now, query, b"again")
            pool.deliver(name, pool.cores[name].take_outputs())
        self.assertEqual(handle.responses, {"b": b"pong-b", "c": b"pong-c"})
        self.assertEqual(pool.serfs["b"].drain_queries(), [])  # delivered once

    def test_filters_pick_who_answers(self) -> None:
        pool = Pool(["a", "b", "c", "d"])
        by_tag = pool.serfs["a"].query(pool.now, "q1", b"", timeout=5.0, tags={"role": "^we"})
        by_name = pool.serfs["a"].query(pool.now, "q2", b"", timeout=5.0, nodes=["c", "d"])
        pool.run(1.0)
        self.assertEqual(by_tag.acks, {"b", "d"})
        self.assertEqual(by_name.acks, {"c", "d"})

    def test_late_responses_are_ignored_and_late_answers_refused(self) -> None:
        pool = Pool(["a", "b"])
        handle = pool.serfs["a"].query(pool.now, "slow", b"", timeout=0.5)
        pool.run(1.0)
        [query] = pool.serfs["b"].drain_queries()
        self.assertRaises(ValueError, pool.serfs["b"].respond, pool.now, query, b"late")
        self.assertEqual(handle.responses, {})

    def test_internal_queries_are_acked_not_delivered(self) -> None:
        pool = Pool(["a", "b"])
        handle = pool.serfs["a"].query(pool.now, "_serf_ping", b"", timeout=5.0)
        pool.run(1.0)
        self.assertEqual(handle.acks, {"a", "b"})
        self.assertEqual(pool.serfs["b"].drain_queries(), [])


class RelayTests(SynchronousTestCase):
    """RelayFactor: responders also send each answer through other members (serf's relay)."""

    def test_a_lost_direct_answer_arrives_by_relay_and_copies_count_once(self) -> None:
        pool = Pool(["a", "b", "c"])
        pool.cut.add(("b", "a"))
        handle = pool.serfs["a"].query(pool.now, "app", b"", timeout=5.0, relay_factor=2)
        pool.run(1.0)
        self.assertEqual(handle.acks, {"a", "b", "c"})
        [query] = pool.serfs["b"].drain_queries()
        self.assertEqual(query.relay_factor, 2)
        pool.serfs["b"].respond(pool.now, query, b"pong-b")
        pool.deliver("b", pool.cores["b"].take_outputs())
        [query] = pool.serfs["c"].drain_queries()
        pool.serfs["c"].respond(pool.now, query, b"pong-c")
        pool.deliver("c", pool.cores["c"].take_outputs())
        self.assertEqual(handle.responses, {"b": b"pong-b", "c": b"pong-c"})
        # copies that came again, each counted once: c's ack and response relayed
        # through a itself, a's own ack relayed through c (what b relays to a is lost)
        self.assertEqual(handle.duplicates, 3)

    def test_without_relay_factor_a_lost_direct_answer_is_lost(self) -> None:
        pool = Pool(["a", "b", "c"])
        pool.cut.add(("b", "a"))
        handle = pool.serfs["a"].query(pool.now, "app", b"", timeout=5.0)
        pool.run(1.0)
        self.assertEqual((handle.acks, handle.duplicates), ({"a", "c"}, 0))

    def test_relay_message_wraps_the_response_for_its_destination(self) -> None:
        pool = Pool(["a", "b", "c"])
        b = pool.serfs["b"]
        query_message = bytes([4]) + pack(
            {
                "Addr": ip_bytes("10.0.0.1"),
                "Filters": None,
                "Flags": 1,
                "ID": 77,
                "LTime": 9,
                "Name": "app",
                "Payload": b"",
                "Port": 8301,
                "RelayFactor": 1,
                "SourceNode": "a",
                "Timeout": 5 * 10**9,
            }
        )
        b.notify_msg(pool.now, query_message)
        packets = [o for o in pool.cores["b"].take_outputs() if isinstance(o, Packet)]
        sent = {(p.to, m.payload) for p in packets for m in p.messages if isinstance(m, User)}
        ack = bytes([5]) + pack({"Flags": 1, "From": "b", "ID": 77, "LTime": 9, "Payload": None})
        self.assertIn((("10.0.0.1", 8301), ack), sent)
        [(relay_to, relayed)] = [(to, p) for to, p in sent if p[0] == 9]
        self.assertIn(relay_to, {("10.0.0.1", 8301), ("10.0.0.3", 8301)})
        header, end = unpack_one(relayed, 1)
        self.assertEqual(
            header,
            {
                b"DestAddr": {b"IP": ip_bytes("10.0.0.1"), b"Port": 8301, b"Zone": b""},
                b"DestName": b"a",
            },
        )
        self.assertEqual(relayed[end:], ack)
        # the relay forwards the inner response, unwrapped, to its destination
        pool.serfs["c"].notify_msg(pool.now, relayed)
        [forward] = [o for o in pool.cores["c"].take_outputs() if isinstance(o, Packet)]
        self.assertEqual((forward.to, forward.messages), (("10.0.0.1", 8301), (User(ack),)))

    def test_no_relay_in_a_pool_not_larger_than_the_factor(self) -> None:
        pool = Pool(["a", "b"])
        handle = pool.serfs["a"].query(pool.now, "app", b"", timeout=5.0, relay_factor=2)
        pool.run(1.0)
        self.assertEqual((handle.acks, handle.duplicates), ({"a", "b"}, 0))

    def test_bad_relay_messages_are_dropped(self) -> None:
        pool = Pool(["a", "b"])
        b = pool.serfs["b"]
        header = pack({"DestAddr": {"IP": ip_bytes("10.0.0.1"), "Port": 8301}, "DestName": "a"})
        for junk in (
            b"\x09",
            b"\x09\xc1",
            b"\x09" + pack({"DestName": "a"}) + b"\x05\x80",
            b"\x09" + pack({"DestAddr": {"IP": b"\x01", "Port": 1}}) + b"\x05\x80",
            b"\x09" + header,  # nothing to forward
            b"\x09" + header + bytes([3]) + pack({"LTime": 1, "Name": "e"}),  # not a response
        ):
            b.notify_msg(pool.now, junk)
        self.assertEqual(pool.cores["b"].take_outputs(), [])

    def test_relay_factor_out_of_range_is_refused(self) -> None:
        pool = Pool(["a"])
        self.assertRaises(ValueError, pool.serfs["a"].query, 0.0, "q", b"", relay_factor=256)
        self.assertRaises(ValueError, pool.serfs["a"].query, 0.0, "q", b"", relay_factor=-1)


K1, K2, K3 = bytes(range(16)), bytes(range(1, 17)), bytes(range(2, 18))


class KeyQueryTests(SynchronousTestCase):
    """serf's internal key queries, answered by every member and summed up."""

    def pool(self, names: list[str], keyrings: bool = True) -> Pool:
        pool = Pool(names)
        self.saved: dict[str, list[list[bytes]]] = {}
        for name, serf in pool.serfs.items():
            if keyrings:
                serf.keyring = Keyring([K1])
                serf.save_keyring = lambda k, n=name: self.saved.setdefault(n, []).append(
                    list(k.keys)
                )
        return pool

    def ask(self, pool: Pool, op: str, key: bytes | None = None) -> KeyResponse:
        handle = pool.serfs["a"].key_query(pool.now, op, key)
        seen: list[int] = []
        handle.watcher = lambda h: seen.append(len(h.responses))
        pool.run(1.0)
        # a's own answer is in before the call returns; the others' follow
        self.assertEqual(seen, list(range(2, len(pool.serfs) + 1)))
        return key_response(handle, len(pool.serfs))

    def test_install_use_remove_change_every_keyring_and_save_it(self) -> None:
        pool = self.pool(["a", "b", "c"])
        self.assertIsNone(self.ask(pool, "install", K2).error())
        self.assertIsNone(self.ask(pool, "use", K2).error())
        self.assertIsNone(self.ask(pool, "remove", K1).error())
        for name, serf in pool.serfs.items():
            assert serf.keyring is not None
            self.assertEqual(serf.keyring.keys, [K2])
            self.assertEqual(self.saved[name], [[K1, K2], [K2, K1], [K2]])
        listing = self.ask(pool, "list")
        self.assertEqual((listing.num_nodes, listing.num_resp, listing.num_err), (3, 3, 0))
        self.assertEqual(listing.keys, {encode_key(K2): 3})
        self.assertEqual(listing.primary_keys, {encode_key(K2): 3})

    def test_refusals_carry_memberlists_words(self) -> None:
        pool = self.pool(["a", "b"])
        refused = self.ask(pool, "use", K3)
        self.assertEqual(refused.error(), "2/2 nodes reported failure")
        self.assertEqual(set(refused.messages.values()), {"Requested key is not in the keyring"})
        refused = self.ask(pool, "remove", K1)
        self.assertEqual(
            set(refused.messages.values()), {"Removing the primary key is not allowed"}
        )
        refused = self.ask(pool, "install", b"short")
        self.assertEqual(set(refused.messages.values()), {"key size must be 16, 24 or 32 bytes"})

    def test_without_encryption_every_member_says_so(self) -> None:
        pool = self.pool(["a", "b"], keyrings=False)
        listing = self.ask(pool, "list")
        self.assertEqual(listing.num_err, 2)
        self.assertEqual(
            set(listing.messages.values()), {"Keyring is empty (encryption not enabled)"}
        )
        refused = self.ask(pool, "install", K2)
        self.assertEqual(
            set(refused.messages.values()), {"No keyring to modify (encryption not enabled)"}
        )

    def test_a_keyring_that_cannot_be_saved_fails_the_change(self) -> None:
        pool = self.pool(["a", "b"])

        def full(keyring: Keyring) -> None:
            raise OSError(28, "No space left on device")

        pool.serfs["b"].save_keyring = full
        refused = self.ask(pool, "install", K2)
        self.assertEqual(
            refused.messages, {"b": "Failed to write keyring file: No space left on device"}
        )

    def test_a_long_key_list_is_cut_to_fit_a_response(self) -> None:
        pool = self.pool(["a", "b"])
        for serf in pool.serfs.values():
            assert serf.keyring is not None
            for i in range(60):
                serf.keyring.install(bytes([i]) * 32)
        listing = self.ask(pool, "list")
        self.assertEqual(listing.num_err, 0)
        self.assertLess(len(listing.keys), 61)
        self.assertIn(encode_key(K1), listing.keys)
        self.assertRegex(
            listing.messages["b"], r"truncated key list response, showing first \d+ of 61 keys"
        )

    def test_a_garbled_key_request_is_refused_not_raised(self) -> None:
        pool = self.pool(["a", "b"])
        handle = pool.serfs["a"].query(pool.now, KEY_QUERIES["install"], b"\x07\xc1", timeout=5.0)
        pool.run(1.0)
        answer = key_response(handle, 2)
        self.assertEqual(set(answer.messages.values()), {"Failed to decode key request"})
        answer = key_response(QueryHandle(1, 1, 1.0, responses={"x": b"\x08\x91"}), 1)
        self.assertEqual(answer.num_err, 1)


class ReapAndReconnectTests(SynchronousTestCase):
    def test_failed_member_is_retried_then_reaped(self) -> None:
        pool = Pool(["a", "b", "c"])
        pool.down.add("c")
        pool.cores["c"].stop()
        pool.run(30.0)
        serf = pool.serfs["a"]
        events = serf.drain_events()
        self.assertIn(MemberEvent("member-failed", "c"), events)
        self.assertIn(("a", ("10.0.0.3", 8301)), pool.reconnects)
        self.assertIn(MemberEvent("member-reap", "c"), events)
        self.assertNotIn("c", serf.members)

    def test_left_member_is_kept_until_the_tombstone_timeout(self) -> None:
        pool = Pool(["a", "b"])
        serf = pool.serfs["a"]
        pool.cores["a"].on_dead(pool.now, Dead(1, "b", "b"))
        self.assertEqual(serf.members["b"].status, MemberStatus.LEFT)
        pool.down.add("b")
        pool.run(15.0)
        self.assertIn("b", serf.members)
        pool.run(10.0)
        self.assertNotIn("b", serf.members)
        self.assertNotIn(("a", ("10.0.0.2", 8301)), pool.reconnects)  # left: no retry

    def test_a_pruning_force_leave_erases_the_member_everywhere(self) -> None:
        config = attrs.evolve(SHORT, reconnect_timeout=3600.0, tombstone_timeout=3600.0)
        pool = Pool(["a", "b", "c"], config)
        pool.down.add("c")
        pool.cores["c"].stop()
        for _ in range(60):
            if all(pool.serfs[n].members["c"].status == MemberStatus.FAILED for n in "ab"):
                break
            pool.run(0.5)
        self.assertEqual(pool.serfs["b"].members["c"].status, MemberStatus.FAILED)
        pool.serfs["b"].drain_events()
        pool.serfs["a"].force_leave(pool.now, "c", prune=True)
        pool.run(1.0)
        self.assertNotIn("c", pool.serfs["b"].members)
        self.assertEqual(
            [e for e in pool.serfs["b"].drain_events() if isinstance(e, MemberEvent)],
            [MemberEvent("member-leave", "c"), MemberEvent("member-reap", "c")],
        )
        pool.run(30.0)  # push/pull and gossip bring nothing back
        self.assertEqual(set(pool.serfs["a"].members), {"a", "b"})
        self.assertEqual(set(pool.serfs["b"].members), {"a", "b"})


class SnapshotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "serf", "local.snapshot")

    def test_restart_rejoins_the_members_that_were_alive(self) -> None:
        writer = snapshot.SnapshotFile(self.path)
        self.addCleanup(writer.close)
        pool = Pool(["a", "b", "c"])
        serf = pool.serfs["a"]
        serf.snapshot = writer
        for name in ("b", "c"):
            serf.notify_join(0.0, pool.cores["a"].nodes[name])
        serf.user_event("deploy", b"v1")
        pool.cores["a"].on_dead(1.0, Dead(1, "c", "b"))
        serf.tick(2.0)
        state = snapshot.load(self.path)
        self.assertEqual(state.alive, {"b": ("10.0.0.2", 8301)})
        self.assertEqual(state.rejoin(), [("10.0.0.2", 8301)])
        self.assertEqual(state.event_clock, serf.event_clock.time())
        restarted = Serf("a", {})
        restarted.restore(state.clock, state.event_clock, state.query_clock)
        self.assertGreater(restarted.event_clock.time(), state.event_clock)
        old = bytes([3]) + pack({"CC": False, "LTime": 1, "Name": "deploy", "Payload": b"v1"})
        restarted.notify_msg(0.0, old)
        self.assertEqual(restarted.drain_events(), [])  # seen before the restart

    def test_after_a_leave_nothing_is_rejoined(self) -> None:
        writer = snapshot.SnapshotFile(self.path)
        writer.alive("b", ("10.0.0.2", 8301))
        writer.leave()
        writer.alive("c", ("10.0.0.3", 8301))  # while leaving: not recorded
        writer.close()
        self.assertEqual(snapshot.load(self.path).rejoin(), [])

    def test_rejoin_after_leave_ignores_the_leave(self) -> None:
        writer = snapshot.SnapshotFile(self.path, rejoin_after_leave=True)
        writer.alive("b", ("10.0.0.2", 8301))
        writer.leave()
        writer.close()
        self.assertEqual(snapshot.load(self.path).rejoin(), [])
        state = snapshot.load(self.path, rejoin_after_leave=True)
        self.assertEqual(state.rejoin(), [("10.0.0.2", 8301)])

    def test_a_new_run_after_a_leave_records_again(self) -> None:
        writer = snapshot.SnapshotFile(self.path)
        writer.alive("b", ("10.0.0.2", 8301))
        writer.leave()
        writer.close()
        writer = snapshot.SnapshotFile(self.path)  # started again, joined by hand
        writer.alive("c", ("10.0.0.3", 8301))
        writer.close()
        self.assertEqual(snapshot.load(self.path).rejoin(), [("10.0.0.3", 8301)])
        writer.alive("d", ("10.0.0.4", 8301))  # after close (a late timer): ignored

    def test_compaction_keeps_the_state(self) -> None:
        writer = snapshot.SnapshotFile(self.path, compact_at=2048)
        for i in range(200):
            writer.alive(f"node-{i}", ("10.0.1.1", 8301 + i))
            if i % 2:
                writer.not_alive(f"node-{i}")
            writer.clocks(i + 1, 1, 1)
        writer.close()
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertLess(len(lines), 250)  # 500 records were appended
        state = snapshot.load(self.path)
        self.assertEqual(len(state.alive), 100)
        self.assertEqual(state.clock, 200)

    def test_garbage_lines_are_skipped(self) -> None:
        state = snapshot.parse(
            "alive: x\nclock: many\n# note\ncoordinate: 1 2\nalive: b 10.0.0.2:8301\n"
        )
        self.assertEqual(state.alive, {"b": ("10.0.0.2", 8301)})
        self.assertEqual(state.clock, 0)


names = st.sampled_from(["a", "b", "c", "zz", ""])
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=8),
    st.lists(st.binary(max_size=4), max_size=3),
    st.dictionaries(st.binary(max_size=3), st.integers(0, 2**64 - 1), max_size=2),
)
fields = st.sampled_from(
    [
        b"LTime",
        b"Node",
        b"Prune",
        b"Name",
        b"Payload",
        b"ID",
        b"Addr",
        b"Port",
        b"Flags",
        b"Filters",
        b"Timeout",
        b"From",
        b"SourceNode",
        b"CC",
        b"StatusLTimes",
        b"LeftMembers",
        b"Events",
        b"EventLTime",
        b"QueryLTime",
    ]
)


@st.composite
def serf_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 10))
    body = draw(st.dictionaries(fields, st.one_of(values, names.map(str.encode)), max_size=8))
    return bytes([kind]) + pack(body)


class WrongMessageTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(serf_messages(), max_size=12))
    def test_wrong_serf_messages_never_raise_and_keep_members_consistent(
        self, messages: list[bytes]
    ) -> None:
        pool = Pool(["a", "b"])
        core, serf = pool.cores["a"], pool.serfs["a"]
        for i, message in enumerate(messages):
            core.receive(float(i), ("10.0.0.9", 8301), User(message))
            serf.merge_remote_state(float(i), message, join=bool(i % 2))
            serf.tick(float(i))
        core.receive(
            20.0, ("10.0.0.3", 8301), Alive(1, "x", ip_bytes("10.0.0.3"), 8301, encode_tags({}))
        )
        self.assertEqual(serf.members["a"].status, MemberStatus.ALIVE)
        for name, member in serf.members.items():
            self.assertIn(name, core.nodes)
            self.assertIsInstance(member.status, MemberStatus)
        self.assertEqual(serf.members["x"].status, MemberStatus.ALIVE)


class AckPayloadTests(SynchronousTestCase):
    def test_direct_acks_carry_a_fresh_serf_coordinate(self) -> None:
        pool = Pool(["a", "b"])
        core = pool.cores["a"]
        [packet] = core.receive(
            0.0, ("10.0.0.2", 8301), Ping(7, "a", ip_bytes("10.0.0.2"), 8301, "b")
        )
        assert isinstance(packet, Packet)
        ack = packet.messages[0]
        assert isinstance(ack, Ack) and ack.payload is not None
        self.assertEqual((ack.seq_no, len(ack.payload), ack.payload[0]), (7, 130, 1))
        coordinate, _ = unpack_one(ack.payload, 1)
        self.assertEqual(coordinate[b"Vec"], [0.0] * 8)
        self.assertEqual(coordinate[b"Error"], 1.5)
