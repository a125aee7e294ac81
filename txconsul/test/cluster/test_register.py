"""The register workload's own parts: the lost-write check, the JSON form, one short real run."""

from __future__ import annotations

import random

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.testing.agent import start_agent
from txconsul.testing.linearizability import UNKNOWN, Cas, Get, KVModel, Operation, Put, check
from txconsul.testing.register import (
    Client,
    RegisterWorkload,
    history_from_json,
    history_to_json,
    lost_writes,
)


def put(value: str, call: float, ret: float | None, key: str = "k") -> Operation:
    return Operation("c", Put(key, value), UNKNOWN if ret is None else True, call, ret)


class LostWritesTests(SynchronousTestCase):
    def test_the_last_acknowledged_write_must_be_the_final_value(self) -> None:
        a, b = put("a", 1, 2), put("b", 3, 4)
        self.assertEqual(lost_writes([a, b], {"k": "b"}), [])
        self.assertEqual(lost_writes([a, b], {"k": "a"}), [b])
        self.assertEqual(lost_writes([a, b], {"k": None}), [b])

    def test_a_concurrent_or_unknown_write_may_have_come_later(self) -> None:
        a, b = put("a", 1, 5), put("b", 2, 3)
        self.assertEqual(lost_writes([a, b], {"k": "a"}), [])
        self.assertEqual(lost_writes([a, b], {"k": "b"}), [])
        c, d = put("c", 1, 2), put("d", 0, None)
        self.assertEqual(lost_writes([c, d], {"k": "d"}), [])
        self.assertEqual(lost_writes([c, d], {"k": None}), [])

    def test_a_cas_that_did_not_apply_overwrites_nothing(self) -> None:
        a = put("a", 1, 2)
        failed = Operation("c", Cas("k", "x", "b"), False, 3, 4)
        applied = Operation("c", Cas("k", "a", "c"), True, 5, 6)
        self.assertEqual(lost_writes([a, failed], {"k": "b"}), [a])
        self.assertEqual(lost_writes([a, failed, applied], {"k": "a"}), [applied])

    def test_keys_without_a_final_read_are_not_judged(self) -> None:
        self.assertEqual(lost_writes([put("a", 1, 2, key="other")], {"k": None}), [])


class HistoryJsonTests(SynchronousTestCase):
    def test_a_history_survives_json(self) -> None:
        history = [
            Operation("p1", Get("k"), None, 1, 2),
            Operation("p2", Put("k", "v"), UNKNOWN, 3, None),
            Operation("p3", Cas("k", None, "w"), False, 4, 5),
        ]
        again = history_from_json(history_to_json(history))
        self.assertEqual([repr(op) for op in again], [repr(op) for op in history])


class WorkloadTests(TestCase):
    timeout = 30

    async def test_a_short_run_on_one_agent_is_linearizable(self) -> None:
        agent = await start_agent(self, reactor)
        url = "http://127.0.0.1:%d" % agent.http.address()[1]
        clients = [Client(f"p{i}", [url]) for i in range(4)]
        workload = RegisterWorkload(reactor, random.Random(4), clients, keys=3)
        self.addCleanup(workload.close)
        stop: list[bool] = []
        reactor.callLater(1.0, stop.append, True)
        await workload.run(lambda: bool(stop))
        counts = workload.counts
        for kind in ("read-default-ok", "read-consistent-ok", "write-ok", "cas-ok"):
            self.assertGreater(counts[kind], 0, dict(counts))
        history = workload.operations()
        self.assertEqual(sum(op.unknown for op in history), 0)
        result = check(KVModel(), history, timeout=10)
        self.assertTrue(result.linearizable, result.explain())
        await deferLater(reactor, 0, lambda: None)
