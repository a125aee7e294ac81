"""
Tests for the serf layer (txconsul.gossip.serf): unit tests of intents and
events, and interop with the real ``serf`` agent (Debian package ``serf``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txconsul.gossip.adapter import GossipPool
from txconsul.gossip.memberlist import GossipConfig, Memberlist
from txconsul.gossip.serf import (
    JOIN,
    LEAVE,
    LamportClock,
    MemberEvent,
    MemberStatus,
    Serf,
    UserEvent,
    decode_tags,
    encode_tags,
)
from txconsul.gossip.wire import pack
from txconsul.testing.polling import poll_until
from txconsul.testing.process import free_port


def serf_pair() -> tuple[Serf, Memberlist]:
    serf = Serf("a", {"role": "node", "dc": "dc1"})
    core = Memberlist("a", ("10.0.0.1", 8301), GossipConfig(), random.Random(1), 0.0, serf)
    serf.attach(core)
    return serf, core


class SerfUnitTests(SynchronousTestCase):
    def test_tags_encoding_matches_serf(self) -> None:
        self.assertEqual(
            encode_tags({"role": "web", "dc": "dc1"}).hex(), "ff82a26463a3646331a4726f6c65a3776562"
        )
        self.assertEqual(
            decode_tags(bytes.fromhex("ff82a4726f6c65a3776562a26463a3646331")),
            {"role": "web", "dc": "dc1"},
        )
        self.assertEqual(decode_tags(b"web"), {"role": "web"})

    def test_merge_check_sees_the_names_and_tags_of_pushed_and_alive_members(self) -> None:
        """serf's MergeDelegate, as Consul uses it to keep its pools apart."""
        from txconsul.gossip.memberlist import MergeRefused
        from txconsul.gossip.messages import Alive, PushNodeState, PushPull, ip_bytes

        seen: list[list[tuple[str, dict[str, str]]]] = []

        def check(members: list[tuple[str, dict[str, str]]]) -> str | None:
            seen.append(members)
            bad = [name for name, tags in members if tags.get("dc") != "dc1"]
            return f"Member '{bad[0]}' part of wrong datacenter" if bad else None

        serf = Serf("a", {"role": "node", "dc": "dc1"}, merge=check)
        core = Memberlist("a", ("10.0.0.1", 8301), GossipConfig(), random.Random(1), 0.0, serf)
        serf.attach(core)
        ip = ip_bytes("10.0.0.2")
        here = encode_tags({"role": "node", "dc": "dc1"})
        there = encode_tags({"role": "node", "dc": "dc2"})
        vsn = core.me.vsn
        state = PushPull(
            True,
            (
                PushNodeState("b", ip, 8301, here, 1, 0, vsn),
                PushNodeState("c", ip, 7, there, 1, 0, vsn),
            ),
        )
        with self.assertRaises(MergeRefused) as refused:
            core.merge_remote_state(0.0, state)
        self.assertEqual(str(refused.exception), "Member 'c' part of wrong datacenter")
        self.assertEqual(
            seen[0], [("b", {"role": "node", "dc": "dc1"}), ("c", {"role": "node", "dc": "dc2"})]
        )
        self.assertEqual(set(core.nodes), {"a"})  # nothing merged, not even b
        core.receive(0.0, ("10.0.0.2", 7), Alive(1, "c", ip, 7, there, vsn))
        self.assertEqual((set(core.nodes), core.refused_alive), ({"a"}, 1))
        core.receive(0.0, ("10.0.0.2", 8301), Alive(1, "b", ip, 8301, here, vsn))
        self.assertEqual(set(core.nodes), {"a", "b"})
        self.assertEqual(set(serf.members), {"a", "b"})

    def test_lamport_clock(self) -> None:
        clock = LamportClock()
        clock.witness(5)
        self.assertEqual(clock.time(), 6)
        clock.witness(2)
        self.assertEqual(clock.time(), 6)

    def test_user_event_is_delivered_once(self) -> None:
        serf, _ = serf_pair()
        message = bytes([3]) + pack({"CC": False, "LTime": 4, "Name": "deploy", "Payload": b"v1"})
        serf.notify_msg(0.0, message)
        serf.notify_msg(0.0, message)
        self.assertEqual(serf.drain_events(), [UserEvent(4, "deploy", b"v1", False)])
        self.assertEqual(serf.event_clock.time(), 5)

    def test_leave_intent_then_memberlist_leave_is_left(self) -> None:
        serf, core = serf_pair()
        from txconsul.gossip.messages import Alive, Dead, ip_bytes

        core.receive(
            0.0, ("10.0.0.2", 8301), Alive(1, "b", ip_bytes("10.0.0.2"), 8301, encode_tags({}))
        )
        serf.notify_msg(0.0, bytes([LEAVE]) + pack({"LTime": 3, "Node": "b", "Prune": False}))
        self.assertEqual(serf.members["b"].status, MemberStatus.LEAVING)
        core.receive(0.0, ("10.0.0.2", 8301), Dead(1, "b", "b"))
        self.assertEqual(serf.members["b"].status, MemberStatus.LEFT)
        self.assertEqual(serf.drain_events()[-1], MemberEvent("member-leave", "b"))

    def test_failure_without_intent_is_failed(self) -> None:
        serf, core = serf_pair()
        from txconsul.gossip.messages import Alive, Dead, ip_bytes

        core.receive(
            0.0, ("10.0.0.2", 8301), Alive(1, "b", ip_bytes("10.0.0.2"), 8301, encode_tags({}))
        )
        core.receive(0.0, ("10.0.0.2", 8301), Dead(1, "b", "c"))
        self.assertEqual(serf.members["b"].status, MemberStatus.FAILED)

    def test_intent_for_unknown_member_is_kept_for_its_join(self) -> None:
        serf, core = serf_pair()
        from txconsul.gossip.messages import Alive, ip_bytes

        serf.notify_msg(0.0, bytes([JOIN]) + pack({"LTime": 7, "Node": "c"}))
        core.receive(
            0.0, ("10.0.0.3", 8301), Alive(1, "c", ip_bytes("10.0.0.3"), 8301, encode_tags({}))
        )
        self.assertEqual(serf.members["c"].status_ltime, 7)

    def test_push_pull_state_round_trip(self) -> None:
        a, _ = serf_pair()
        a.user_event("deploy", b"x")
        b = Serf("b", {})
        b.merge_remote_state(0.0, a.local_state(False), False)
        self.assertEqual(
            [e for e in b.drain_events() if isinstance(e, UserEvent)],
            [UserEvent(1, "deploy", b"x", False)],
        )

    def test_garbage_messages_are_dropped_logged_at_debug_and_counted(self) -> None:
        serf, _ = serf_pair()

        def state() -> Any:
            clocks = (serf.clock.time(), serf.event_clock.time(), serf.query_clock.time())
            return (
                dict(serf.members),
                clocks,
                list(serf.events),
                list(serf.queries),
                len(serf.broadcasts),
            )

        before = state()
        junks = (
            b"\x03",
            b"\x03\xc1",
            b"\x01\x93\x01",
            b"\x00\x81\xa5LTime\xa1x",
            b"\x02\x90",
            b"\x63",
        )
        with capturedLogs() as events:
            for junk in junks:
                serf.notify_msg(0.0, junk)
                serf.merge_remote_state(0.0, junk, False)
            serf.notify_msg(0.0, b"")  # nothing at all: not bad input
            serf.merge_remote_state(0.0, b"", False)  # a member without serf state
        self.assertEqual(serf.dropped, 2 * len(junks))
        dropped = [e for e in events if e.get("log_format", "").startswith("dropped")]
        self.assertEqual(len(dropped), 2 * len(junks))
        self.assertEqual({e["log_level"] for e in dropped}, {LogLevel.debug})
        self.assertEqual(state(), before)


def leave(node: str, ltime: int, prune: bool = True) -> bytes:
    return bytes([LEAVE]) + pack({"LTime": ltime, "Node": node, "Prune": prune})


class PruneTests(SynchronousTestCase):
    """A leave intent with Prune set erases the member on every receiver (serf >= 0.8.5)."""

    def setUp(self) -> None:
        from txconsul.gossip.messages import Alive, ip_bytes

        self.serf, self.core = serf_pair()
        self.core.receive(
            0.0, ("10.0.0.2", 8301), Alive(1, "b", ip_bytes("10.0.0.2"), 8301, encode_tags({}))
        )
        self.serf.drain_events()

    def fail_b(self) -> None:
        from txconsul.gossip.messages import Dead

        self.core.receive(0.0, ("10.0.0.3", 8301), Dead(1, "b", "c"))
        self.assertEqual(self.serf.members["b"].status, MemberStatus.FAILED)
        self.serf.drain_events()

    def test_a_failed_member_is_left_then_erased_and_the_intent_gossiped_on(self) -> None:
        self.fail_b()
        queued = len(self.serf.broadcasts)
        self.serf.notify_msg(1.0, leave("b", 5))
        self.assertNotIn("b", self.serf.members)
        self.assertEqual(
            self.serf.drain_events(),
            [MemberEvent("member-leave", "b"), MemberEvent("member-reap", "b")],
        )
        self.assertEqual(len(self.serf.broadcasts), queued + 1)
        self.assertEqual(self.serf.clock.time(), 6)

    def test_a_left_member_is_erased_at_once(self) -> None:
        self.fail_b()
        self.serf.notify_msg(1.0, leave("b", 5, prune=False))
        self.assertEqual(self.serf.members["b"].status, MemberStatus.LEFT)
        self.serf.drain_events()
        self.serf.notify_msg(1.0, leave("b", 6))
        self.assertNotIn("b", self.serf.members)
        self.assertEqual(self.serf.drain_events(), [MemberEvent("member-reap", "b")])

    def test_an_alive_member_is_erased_once_its_leave_had_time_to_spread(self) -> None:
        cfg = self.serf.config
        delay = cfg.broadcast_timeout + cfg.leave_propagate_delay
        self.serf.notify_msg(10.0, leave("b", 5))
        self.assertEqual(self.serf.members["b"].status, MemberStatus.LEAVING)
        self.assertLessEqual(self.serf.next_deadline(), 10.0 + delay)
        self.serf.tick(10.0 + delay - 0.1)
        self.assertIn("b", self.serf.members)
        self.serf.tick(10.0 + delay)
        self.assertNotIn("b", self.serf.members)
        self.assertEqual(self.serf.drain_events(), [MemberEvent("member-reap", "b")])

    def test_a_member_alive_again_before_the_delay_is_kept(self) -> None:
        self.serf.notify_msg(10.0, leave("b", 5))
        self.serf.notify_msg(10.5, bytes([JOIN]) + pack({"LTime": 6, "Node": "b"}))
        self.assertEqual(self.serf.members["b"].status, MemberStatus.ALIVE)
        self.serf.tick(100.0)
        self.assertIn("b", self.serf.members)

    def test_an_intent_no_newer_than_the_members_status_is_ignored(self) -> None:
        self.fail_b()
        self.serf.notify_msg(1.0, bytes([JOIN]) + pack({"LTime": 7, "Node": "b"}))
        queued = len(self.serf.broadcasts)
        self.serf.notify_msg(1.0, leave("b", 7))
        self.assertEqual(self.serf.members["b"].status, MemberStatus.FAILED)
        self.assertEqual(len(self.serf.broadcasts), queued)

    def test_a_prune_of_ourselves_is_refuted(self) -> None:
        self.serf.notify_msg(1.0, leave("a", 5))
        self.assertEqual(self.serf.members["a"].status, MemberStatus.ALIVE)
        self.assertIn("a", self.serf.members)

    def test_a_prune_of_a_stranger_is_kept_as_an_intent(self) -> None:
        self.serf.notify_msg(1.0, leave("zz", 5))
        self.assertNotIn("zz", self.serf.members)
        self.assertEqual(self.serf.drain_events(), [])

    def test_force_leave_prune_erases_here_and_broadcasts_prune(self) -> None:
        from txconsul.gossip.wire import unpack_one

        self.fail_b()
        self.serf.force_leave(1.0, "b", prune=True)
        self.assertNotIn("b", self.serf.members)
        [message] = self.serf.broadcasts.get(0, 1400, 2)
        self.assertEqual(message[0], LEAVE)
        body, _ = unpack_one(message, 1)
        self.assertEqual((body[b"Node"], body[b"Prune"]), (b"b", True))


class SerfInteropTests(TestCase):
    """A txconsul pool and a real serf 0.9.4 agent on loopback (spec section 10)."""

    timeout = 90

    def setUp(self) -> None:
        self.serf_bin = shutil.which("serf")
        if self.serf_bin is None:
            if os.environ.get("CI") == "true":
                self.fail("the serf binary is missing (apt-get install serf)")
            raise SkipTest("needs the serf binary: apt-get install serf")
        self.gossip_port = free_port()
        self.rpc = f"127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile(prefix="serf-", suffix=".log", delete=False)
        self.addCleanup(os.unlink, self.log.name)
        args = [
            self.serf_bin,
            "agent",
            "-node=serf-a",
            f"-bind=127.0.0.1:{self.gossip_port}",
            f"-rpc-addr={self.rpc}",
            "-log-level=debug",
            "-tag",
            "role=web",
        ]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop_serf)

    def _stop_serf(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()

    def serf_cli(self, command: str, *args: str) -> str:
        assert self.serf_bin is not None
        done = subprocess.run(
            [self.serf_bin, command, f"-rpc-addr={self.rpc}", *args],
            capture_output=True,
            timeout=5,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode())
        return done.stdout.decode()

    def serf_members(self) -> dict[str, dict[str, object]]:
        try:
            listing = json.loads(self.serf_cli("members", "-format=json"))
        except (RuntimeError, ValueError):
            return {}
        return {m["name"]: m for m in listing["members"]}

    async def wait_for(self, condition: Callable[[], bool], limit: float = 20.0) -> None:
        if not await poll_until(reactor, condition, limit, interval=0.1):
            with open(self.log.name) as f:
                tail = f.read()[-2000:]
            self.fail(f"condition not met in time; serf log:\n{tail}")

    async def test_pool_joins_serf_and_exchanges_user_events(self) -> None:
        await self.wait_for(lambda: "serf-a" in self.serf_members())
        serf = Serf("txconsul-1", {"role": "node", "dc": "dc1"})
        pool = GossipPool(
            reactor, time.monotonic, "txconsul-1", rng=random.Random(5), delegate=serf
        )
        pool.startService()
        self.addCleanup(pool.stopService)
        joined = await pool.join([("127.0.0.1", self.gossip_port)])
        self.assertEqual(joined, 1)
        serf.join_intent()
        pool.flush()

        def both_alive() -> bool:
            theirs = self.serf_members().get("txconsul-1")
            ours = serf.members.get("serf-a")
            return (
                theirs is not None
                and theirs["status"] == "alive"
                and theirs["tags"] == {"role": "node", "dc": "dc1"}
                and ours is not None
                and ours.status == MemberStatus.ALIVE
                and ours.tags == {"role": "web"}
            )

        await self.wait_for(both_alive)
        self.serf_cli("event", "deploy", "from-serf")
        await self.wait_for(
            lambda: any(isinstance(e, UserEvent) and e.payload == b"from-serf" for e in serf.events)
        )
        serf.user_event("hello", b"from-txconsul")
        pool.flush()

        def serf_saw_it() -> bool:
            with open(self.log.name) as f:
                return "user-event: hello" in f.read()

        await self.wait_for(serf_saw_it)

    async def joined(self, name: str, seed: int) -> tuple[Serf, GossipPool]:
        """A txconsul member ``name`` in serf-a's pool, alive on both sides."""
        await self.wait_for(lambda: "serf-a" in self.serf_members())
        serf = Serf(name, {"role": "node"})
        pool = GossipPool(reactor, time.monotonic, name, rng=random.Random(seed), delegate=serf)
        pool.startService()
        self.addCleanup(lambda: pool.stopService() if pool.running else None)
        self.assertEqual(await pool.join([("127.0.0.1", self.gossip_port)]), 1)
        serf.join_intent()
        pool.flush()
        await self.wait_for(lambda: self.serf_members().get(name, {}).get("status") == "alive")
        return serf, pool

    async def failed_victim(self) -> tuple[Serf, GossipPool]:
        """txconsul-1 and a txconsul victim in serf-a's pool; the victim stopped, failed for both."""
        ours, pool = await self.joined("txconsul-1", 5)
        _, victim = await self.joined("victim", 6)
        await self.wait_for(
            lambda: (
                ours.members.get("victim") is not None
                and ours.members["victim"].status == MemberStatus.ALIVE
            )
        )
        await victim.stopService()

        def failed_everywhere() -> bool:
            theirs = self.serf_members().get("victim", {}).get("status")
            mine = ours.members.get("victim")
            return theirs == "failed" and mine is not None and mine.status == MemberStatus.FAILED

        await self.wait_for(failed_everywhere, limit=40.0)
        return ours, pool

    async def test_serf_force_leave_prune_erases_the_member_from_txconsul(self) -> None:
        ours, _ = await self.failed_victim()
        # through the reactor: serf waits for its broadcast to go out, and we answer its probes
        assert self.serf_bin is not None
        args = ["force-leave", f"-rpc-addr={self.rpc}", "-prune", "victim"]
        out, err, code = await getProcessOutputAndValue(self.serf_bin, args, env=os.environ)
        self.assertEqual(code, 0, err)
        self.assertNotIn("victim", self.serf_members())
        await self.wait_for(lambda: "victim" not in ours.members)
        self.assertIn(MemberEvent("member-reap", "victim"), ours.events)

    async def test_txconsul_force_leave_prune_erases_the_member_from_serf(self) -> None:
        ours, pool = await self.failed_victim()
        ours.force_leave(time.monotonic(), "victim", prune=True)
        pool.flush()
        self.assertNotIn("victim", ours.members)
        await self.wait_for(lambda: "victim" not in self.serf_members())
        self.assertIn("txconsul-1", self.serf_members())

    async def test_relayed_answers_go_both_ways_between_serf_and_txconsul(self) -> None:
        ours, pool = await self.joined("txconsul-1", 5)
        other, _ = await self.joined("txconsul-2", 6)
        await self.wait_for(
            lambda: all(
                len([m for m in s.members.values() if m.status == MemberStatus.ALIVE]) == 3
                for s in (ours, other)
            )
        )
        handle = ours.query(time.monotonic(), "relay-me", b"", timeout=10.0, relay_factor=2)
        pool.flush()
        await self.wait_for(lambda: handle.acks == {"serf-a", "txconsul-1", "txconsul-2"})
        # each txconsul member relays its ack through both others (4 copies); serf-a
        # relays its own through up to two random members (1 or 2 more)
        await self.wait_for(lambda: handle.duplicates >= 5)
        self.assertLessEqual(handle.duplicates, 6)

        def serf_relayed_ours() -> bool:
            with open(self.log.name) as f:
                return f.read().count("Relaying response to addr") >= 2

        await self.wait_for(serf_relayed_ours)
