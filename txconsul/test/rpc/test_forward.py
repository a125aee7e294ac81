"""Tests for txconsul.rpc.forward: where requests go, when they are retried, when it gives up."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.errors import NoLeader, NotFound
from txconsul.raft.core import NotLeader
from txconsul.raft.node import LeadershipLost
from txconsul.rpc.errors import (
    NoPathToDatacenter,
    NoServers,
    RPCConnectError,
    RPCConnectionLost,
    RPCTimeout,
)
from txconsul.rpc.forward import Backoff, Forwarder


class FakeCalls:
    """Records each call; the test answers them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, Deferred[Any]]] = []

    def __call__(self, address: str, method: str, body: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((address, method, body, d))
        return d

    @property
    def addresses(self) -> list[str]:
        return [c[0] for c in self.calls]

    def last(self) -> Deferred[Any]:
        return self.calls[-1][3]


class ForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = FakeCalls()
        self.servers: dict[str, list[str]] = {"dc1": ["s1:8300", "s2:8300", "s3:8300"]}
        self.leader = ""
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def client(self, **kw: Any) -> Forwarder:
        return Forwarder(
            self.calls,
            self.clock,
            random.Random(1),
            "dc1",
            lambda dc: self.servers.get(dc, []),
            **kw,
        )

    def server(self, **kw: Any) -> Forwarder:
        return Forwarder(
            self.calls,
            self.clock,
            random.Random(1),
            "dc1",
            lambda dc: self.servers.get(dc, []),
            leader=lambda: self.leader,
            **kw,
        )

    def test_client_sends_to_a_known_server_and_sticks_to_it(self) -> None:
        f = self.client()
        first = f.forward("KVS.Apply", {"Key": "a"})
        self.calls.last().callback(True)
        self.assertIs(self.successResultOf(first), True)
        second = f.forward("KVS.Get", {"Key": "a"})
        self.calls.last().callback(False)
        self.successResultOf(second)
        self.assertEqual(len(set(self.calls.addresses)), 1)
        self.assertIn(self.calls.addresses[0], self.servers["dc1"])
        self.assertEqual(self.calls.calls[0][1:3], ("KVS.Apply", {"Key": "a"}))

    def test_client_tries_another_server_after_a_connect_failure(self) -> None:
        f = self.client()
        d = f.forward("KVS.Apply", 1)
        first = self.calls.addresses[0]
        self.calls.last().errback(RPCConnectError("refused"))
        self.assertEqual(len(self.calls.calls), 1)
        self.clock.advance(Backoff().base)
        self.assertEqual(len(self.calls.calls), 2)
        self.assertNotEqual(self.calls.addresses[1], first)
        self.calls.last().callback("ok")
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(f.preferred, self.calls.addresses[1])

    def test_backoff_grows_with_jitter_from_the_injected_random(self) -> None:
        backoff = Backoff(base=0.1, cap=1.0)
        delays = [backoff.delay(n, random.Random(5)) for n in range(6)]
        for n, delay in enumerate(delays):
            step = min(1.0, 0.1 * 2**n)
            self.assertTrue(step / 2 <= delay <= step, (n, delay))
        self.assertEqual(delays, [backoff.delay(n, random.Random(5)) for n in range(6)])

    def test_client_with_no_servers_gives_up_at_the_deadline(self) -> None:
        self.servers = {}
        d = self.client(deadline=2.0).forward("KVS.Apply", 1)
        self.clock.pump([0.1] * 19)
        self.assertNoResult(d)
        self.clock.pump([0.1] * 2 + [1.0])
        failure = self.failureResultOf(d, NoServers)
        self.assertIsInstance(failure.value, NoLeader)
        self.assertEqual(str(failure.value), "No known Consul servers")
        self.assertEqual(self.calls.calls, [])

    def test_servers_learnt_while_waiting_are_used(self) -> None:
        self.servers = {}
        d = self.client().forward("KVS.Apply", 1)
        self.clock.advance(0.5)
        self.servers = {"dc1": ["s9:8300"]}
        self.clock.advance(2.0)
        self.assertEqual(self.calls.addresses, ["s9:8300"])
        self.calls.last().callback(1)
        self.successResultOf(d)

    def test_follower_sends_to_the_leader(self) -> None:
        self.leader = "s2:8300"
        d = self.server().forward("KVS.Apply", 1)
        self.assertEqual(self.calls.addresses, ["s2:8300"])
        self.calls.last().callback(True)
        self.successResultOf(d)

    def test_follower_without_a_leader_gives_up_with_no_leader(self) -> None:
        d = self.server(deadline=1.0).forward("KVS.Apply", 1)
        self.clock.pump([0.25] * 8)
        failure = self.failureResultOf(d, NoLeader)
        self.assertEqual(str(failure.value), "No cluster leader")

    def test_leader_elected_while_waiting_gets_the_request(self) -> None:
        d = self.server().forward("KVS.Apply", 1)
        self.clock.advance(1.0)
        self.leader = "s3:8300"
        self.clock.advance(3.0)
        self.assertEqual(self.calls.addresses, ["s3:8300"])
        self.calls.last().callback(2)
        self.assertEqual(self.successResultOf(d), 2)

    def test_not_leader_with_a_name_goes_there_at_once(self) -> None:
        self.leader = "s1:8300"
        d = self.server().forward("KVS.Apply", 1)
        self.calls.last().errback(NotLeader("s3:8300"))
        self.assertEqual(self.calls.addresses, ["s1:8300", "s3:8300"])
        self.calls.last().callback(True)
        self.successResultOf(d)

    def test_not_leader_ping_pong_backs_off(self) -> None:
        self.leader = "s1:8300"
        d = self.server(deadline=1.0).forward("KVS.Apply", 1)
        self.calls.last().errback(NotLeader("s3:8300"))
        self.calls.last().errback(NotLeader("s3:8300"))
        self.assertEqual(len(self.calls.calls), 2)
        self.clock.pump([0.25] * 8)
        for _, _, _, call in self.calls.calls[2:]:
            if not call.called:
                call.errback(NotLeader(""))
        self.clock.pump([0.25] * 8)
        self.failureResultOf(d, NoLeader)

    def test_remote_no_leader_is_retried(self) -> None:
        self.leader = "s1:8300"
        d = self.server().forward("KVS.Apply", 1)
        self.calls.last().errback(NoLeader("No cluster leader"))
        self.clock.advance(Backoff().base)
        self.calls.last().callback("applied")
        self.assertEqual(self.successResultOf(d), "applied")

    def test_application_errors_are_the_answer(self) -> None:
        self.leader = "s1:8300"
        d = self.server().forward("KVS.Get", 1)
        self.calls.last().errback(NotFound("no key"))
        self.failureResultOf(d, NotFound)
        self.assertEqual(len(self.calls.calls), 1)

    def test_write_of_unknown_outcome_is_not_retried(self) -> None:
        self.leader = "s1:8300"
        for error in (RPCTimeout("slow"), RPCConnectionLost("gone")):
            d = self.server().forward("KVS.Apply", 1)
            self.calls.last().errback(error)
            self.failureResultOf(d, type(error))

    def test_write_lost_with_leadership_is_not_retried(self) -> None:
        self.leader = "s1:8300"
        d = self.server().forward("Raft.Apply", 1)
        self.calls.last().errback(LeadershipLost("stepped down"))
        self.failureResultOf(d, LeadershipLost)
        self.assertEqual(len(self.calls.calls), 1)

    def test_idempotent_call_lost_with_leadership_is_retried(self) -> None:
        self.leader = "s1:8300"
        d = self.server().forward("Raft.Apply", 1, idempotent=True)
        self.calls.last().errback(LeadershipLost("stepped down"))
        self.clock.advance(Backoff().base)
        self.calls.last().callback("applied")
        self.assertEqual(self.successResultOf(d), "applied")

    def test_idempotent_read_of_unknown_outcome_is_retried_elsewhere(self) -> None:
        f = self.client()
        d = f.forward("KVS.Get", 1, idempotent=True)
        first = self.calls.addresses[0]
        self.calls.last().errback(RPCTimeout("slow"))
        self.clock.advance(Backoff().base)
        self.assertNotEqual(self.calls.addresses[1], first)
        self.calls.last().callback("v")
        self.successResultOf(d)

    def test_other_datacenter_goes_to_its_servers(self) -> None:
        self.servers["dc2"] = ["w1:8300"]
        d = self.server().forward("KVS.Get", 1, dc="dc2")
        self.assertEqual(self.calls.addresses, ["w1:8300"])
        self.calls.last().callback("far")
        self.assertEqual(self.successResultOf(d), "far")

    def test_unknown_datacenter_gives_up_with_no_path(self) -> None:
        d = self.server(deadline=1.0).forward("KVS.Get", 1, dc="dc9")
        self.clock.pump([0.25] * 8)
        failure = self.failureResultOf(d, NoPathToDatacenter)
        self.assertEqual(str(failure.value), "No path to datacenter")

    def test_unreachable_datacenter_gives_up_with_no_path(self) -> None:
        self.servers["dc2"] = ["w1:8300", "w2:8300"]
        d = self.client(deadline=1.0).forward("KVS.Get", 1, dc="dc2")
        for _ in range(40):
            for _, _, _, call in self.calls.calls:
                if not call.called:
                    call.errback(RPCConnectError("refused"))
            self.clock.advance(0.1)
        self.failureResultOf(d, NoPathToDatacenter)
        self.assertEqual(set(self.calls.addresses), {"w1:8300", "w2:8300"})

    def test_all_local_servers_unreachable_gives_the_last_error(self) -> None:
        d = self.client(deadline=1.0).forward("KVS.Get", 1)
        for _ in range(40):
            for _, _, _, call in self.calls.calls:
                if not call.called:
                    call.errback(RPCConnectError("refused"))
            self.clock.advance(0.1)
        self.failureResultOf(d, RPCConnectError)

    def test_cancel_stops_the_wait_and_the_call(self) -> None:
        d = self.server().forward("KVS.Apply", 1)
        self.clock.advance(0.01)
        d.cancel()
        self.failureResultOf(d)
        self.leader = "s1:8300"
        d = self.server().forward("KVS.Apply", 1)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(self.calls.last().called)
