# -*- test-case-name: txconsul.test.test_linearizability -*-
"""
Tests of the linearizability checker and the Jepsen log parser (FAULTS.md,
test 1): agreement with the 102 verdicts of the Jepsen etcd histories,
hand-written histories including the planted Raft bugs of issue 4, and
property tests against real sequential executions and a brute-force checker.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Hashable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import txconsul
import txconsul.testing.hypothesis  # noqa: F401  (registers and loads the ci profile)
from txconsul.testing import linearizability
from txconsul.testing.jepsen import (
    TIMED_OUT,
    JepsenParseError,
    parse_events,
    parse_file,
    parse_history,
)
from txconsul.testing.linearizability import (
    UNKNOWN,
    Cas,
    CompareAndSet,
    Delete,
    Get,
    HistoryRecorder,
    KVModel,
    Operation,
    Put,
    Read,
    RegisterModel,
    Verdict,
    Write,
    check,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(txconsul.__file__)))
FIXTURES = os.path.join(REPO_ROOT, "..", "shared", "fixtures", "jepsen-etcd")


def op(
    client: Hashable, input: object, output: object, call: float, ret: float | None
) -> Operation:
    return Operation(client, input, output, call, ret)


def unknown(client: Hashable, input: object, call: float) -> Operation:
    return Operation(client, input, UNKNOWN, call, None)


class JepsenFixtureTests(SynchronousTestCase):
    """The checker agrees with Porcupine on every Jepsen etcd history."""

    def test_agrees_with_all_102_verdicts(self) -> None:
        verdicts_path = os.path.join(FIXTURES, "verdicts.tsv")
        if not os.path.exists(verdicts_path):
            message = f"Jepsen etcd fixtures not found at {os.path.normpath(FIXTURES)}"
            if os.environ.get("CI") == "true":
                self.fail(message + " (CI copies shared/ beside the repository)")
            raise self.skipTest(message)
        with open(verdicts_path, encoding="utf-8") as tsv:
            expected = dict(line.split() for line in tsv if line.strip())
        self.assertEqual(len(expected), 102)
        started = time.monotonic()
        disagreements = []
        slowest = (0.0, "")
        for name in sorted(expected):
            history = parse_file(os.path.join(FIXTURES, name))
            result = check(RegisterModel(), history, timeout=60)
            if result.verdict.value != expected[name]:
                disagreements.append(f"{name}: {result.verdict.value}, expected {expected[name]}")
            slowest = max(slowest, (result.elapsed, name))
        elapsed = time.monotonic() - started
        self.assertEqual(
            disagreements,
            [],
            f"{102 - len(disagreements)}/102 agree in {elapsed:.1f} s "
            f"(slowest {slowest[1]}: {slowest[0]:.2f} s)",
        )

    def test_breadth_first_search_alone_agrees(self) -> None:
        """The search that decides most fixtures is also right on its own."""
        verdicts_path = os.path.join(FIXTURES, "verdicts.tsv")
        if not os.path.exists(verdicts_path):
            raise self.skipTest(f"Jepsen etcd fixtures not found at {os.path.normpath(FIXTURES)}")
        with open(verdicts_path, encoding="utf-8") as tsv:
            expected = dict(line.split() for line in tsv if line.strip())
        disagreements = []
        for name in sorted(expected):
            [part] = RegisterModel().partition(parse_file(os.path.join(FIXTURES, name)))
            result = linearizability._check_partition(
                RegisterModel(), part, time.monotonic() + 60, time.monotonic, only="breadth-first"
            )
            if result.verdict.value != expected[name]:
                disagreements.append(name)
        self.assertEqual(disagreements, [])

    def test_explains_a_violation(self) -> None:
        path = os.path.join(FIXTURES, "etcd_000.log")
        if not os.path.exists(path):
            raise self.skipTest(f"Jepsen etcd fixtures not found at {os.path.normpath(FIXTURES)}")
        result = check(RegisterModel(), parse_file(path))
        self.assertEqual(result.verdict, Verdict.NOT_LINEARIZABLE)
        bad = result.failures[0]
        self.assertEqual(len(bad.longest_prefix), 43)
        self.assertEqual(bad.blocking.input, Read())
        self.assertEqual(bad.blocking.output, 2)
        self.assertIn("could not be placed", result.explain())


class JepsenParserTests(SynchronousTestCase):
    def test_reads_tabs_and_spaces_nil_and_vectors(self) -> None:
        history = parse_history(
            [
                "INFO  jepsen.util - 0\t:invoke\t:read\tnil\n",
                "INFO  jepsen.util - 1 :invoke :cas [nil 3]\n",
                "INFO  jepsen.util - 0\t:ok\t:read\tnil\n",
                "INFO  jepsen.util - 1 :ok :cas [nil 3]\n",
                "INFO  jepsen.util - 2\t:invoke\t:write\t4",
                "INFO  jepsen.util - 2\t:ok\t:write\t4",
            ]
        )
        self.assertEqual(
            [(o.client, o.input, o.output, o.call, o.ret) for o in history],
            [
                (0, Read(), None, 1, 3),
                (1, CompareAndSet(None, 3), True, 2, 4),
                (2, Write(4), None, 5, 6),
            ],
        )

    def test_unknown_outcomes_and_failures(self) -> None:
        history = parse_history(
            [
                "INFO  jepsen.util - 0\t:invoke\t:read\tnil",
                "INFO  jepsen.util - 1\t:invoke\t:write\t1",
                "INFO  jepsen.util - 2\t:invoke\t:cas\t[1 2]",
                "INFO  jepsen.util - 3\t:invoke\t:cas\t[0 2]",
                "INFO  jepsen.util - 4\t:invoke\t:write\t3",
                "INFO  jepsen.util - 0\t:fail\t:read\t:timed-out",
                "INFO  jepsen.util - 1\t:info\t:write\t:timed-out",
                "INFO  jepsen.util - 2\t:info\t:cas\t:timed-out",
                "INFO  jepsen.util - 3\t:fail\t:cas\t[0 2]",
                "INFO  jepsen.util - :nemesis\t:info\t:start\tnil",
            ]
        )
        self.assertEqual(
            [(o.client, o.input, o.output, o.ret) for o in history],
            [
                (1, Write(1), UNKNOWN, None),
                (2, CompareAndSet(1, 2), UNKNOWN, None),
                (3, CompareAndSet(0, 2), False, 9),
                (4, Write(3), UNKNOWN, None),  # never completed
            ],
        )

    def test_events_keep_timed_out_values(self) -> None:
        [event] = parse_events(["INFO  jepsen.util - 7 :fail :read :timed-out"])
        self.assertEqual((event.process, event.type, event.f), (7, "fail", "read"))
        self.assertIs(event.value, TIMED_OUT)

    def test_refuses_malformed_logs(self) -> None:
        for lines in [
            ["INFO  jepsen.util - 1 :ok :read 3"],
            ["INFO  jepsen.util - 1 :invoke :read nil", "INFO  jepsen.util - 1 :invoke :read nil"],
            ["INFO  jepsen.util - 1 :invoke :cas [1 2"],
            ["INFO  jepsen.util - 1 :invoke :cas 3"],
            ["INFO  jepsen.util - 1 :invoke :append 3"],
            ["INFO  jepsen.util - 1 :invoke :read nil", "INFO  jepsen.util - 1 :ok :write 3"],
            ["INFO  jepsen.util - x :invoke :read nil"],
        ]:
            self.assertRaises(JepsenParseError, parse_history, lines)


class RegisterTests(SynchronousTestCase):
    def assertVerdict(self, history: Sequence[Operation], verdict: Verdict) -> None:
        result = check(RegisterModel(), history)
        self.assertEqual(result.verdict, verdict, result.explain())

    def test_empty_history_is_linearizable(self) -> None:
        self.assertVerdict([], Verdict.LINEARIZABLE)

    def test_read_concurrent_with_write_may_see_either_value(self) -> None:
        for seen in (None, 1):
            self.assertVerdict(
                [op("w", Write(1), None, 0, 10), op("r", Read(), seen, 2, 5)],
                Verdict.LINEARIZABLE,
            )

    def test_concurrent_reads_must_agree_on_an_order(self) -> None:
        # r1 sees 2 before r2 (which began after r1 ended) sees 1: writes of
        # 1 then 2 cannot explain it.
        self.assertVerdict(
            [
                op("a", Write(1), None, 0, 2),
                op("b", Write(2), None, 3, 20),
                op("r1", Read(), 2, 4, 6),
                op("r2", Read(), 1, 7, 9),
            ],
            Verdict.NOT_LINEARIZABLE,
        )

    def test_stale_read_after_a_completed_write(self) -> None:
        self.assertVerdict(
            [
                op("a", Write(1), None, 0, 1),
                op("b", Write(2), None, 2, 3),
                op("c", Read(), 1, 4, 5),
            ],
            Verdict.NOT_LINEARIZABLE,
        )

    def test_unknown_write_may_take_effect_late(self) -> None:
        self.assertVerdict(
            [
                unknown("a", Write(1), 0),
                op("r", Read(), None, 5, 6),
                op("r", Read(), 1, 100, 101),
            ],
            Verdict.LINEARIZABLE,
        )

    def test_unknown_write_may_never_take_effect(self) -> None:
        self.assertVerdict(
            [unknown("a", Write(1), 0), op("r", Read(), None, 100, 101)],
            Verdict.LINEARIZABLE,
        )

    def test_unknown_write_cannot_take_effect_before_its_call(self) -> None:
        self.assertVerdict(
            [op("r", Read(), 1, 0, 1), unknown("a", Write(1), 5)],
            Verdict.NOT_LINEARIZABLE,
        )

    def test_unknown_write_takes_effect_once(self) -> None:
        self.assertVerdict(
            [
                unknown("a", Write(1), 0),
                op("r", Read(), 1, 1, 2),
                op("b", Write(2), None, 3, 4),
                op("r", Read(), 1, 5, 6),
            ],
            Verdict.NOT_LINEARIZABLE,
        )

    def test_failed_cas_means_the_compare_did_not_match(self) -> None:
        self.assertVerdict(
            [op("a", Write(1), None, 0, 1), op("b", CompareAndSet(1, 2), False, 2, 3)],
            Verdict.NOT_LINEARIZABLE,
        )
        self.assertVerdict(
            [op("a", Write(1), None, 0, 1), op("b", CompareAndSet(0, 2), False, 2, 3)],
            Verdict.LINEARIZABLE,
        )

    def test_unknown_cas_may_or_may_not_apply(self) -> None:
        for seen in (1, 2):
            self.assertVerdict(
                [
                    op("a", Write(1), None, 0, 1),
                    unknown("b", CompareAndSet(1, 2), 2),
                    op("r", Read(), seen, 3, 4),
                ],
                Verdict.LINEARIZABLE,
            )

    def test_time_budget_gives_unknown(self) -> None:
        ticks = iter(range(1000000))
        history = [unknown(i, Write(i), i) for i in range(14)] + [op("r", Read(), -1, 20, 21)]
        result = check(RegisterModel(), history, timeout=0.5, clock=lambda: next(ticks))
        self.assertEqual(result.verdict, Verdict.UNKNOWN)
        self.assertIn("time budget", result.explain())

    def test_operation_refuses_inconsistent_times(self) -> None:
        self.assertRaises(ValueError, Operation, "a", Read(), 1, 5, 4)
        self.assertRaises(ValueError, Operation, "a", Read(), 1, 5, None)
        self.assertRaises(ValueError, Operation, "a", Read(), UNKNOWN, 5, 6)


def kv_check(history: Sequence[Operation]) -> Verdict:
    return check(KVModel(), history).verdict


class KVTests(SynchronousTestCase):
    def test_keys_are_checked_apart(self) -> None:
        history = [
            op(1, Put("a", "x"), True, 0, 1),
            op(2, Put("b", "y"), True, 0, 1),
            op(3, Get("a"), "x", 2, 3),
            op(4, Get("b"), None, 2, 3),  # stale
            op(5, Delete("a"), True, 4, 5),
            op(6, Get("a"), None, 6, 7),
        ]
        result = check(KVModel(), history)
        self.assertEqual(result.verdict, Verdict.NOT_LINEARIZABLE)
        self.assertEqual(len(result.partitions), 2)
        self.assertEqual(
            [p.verdict for p in result.partitions], [Verdict.LINEARIZABLE, Verdict.NOT_LINEARIZABLE]
        )
        self.assertEqual(result.failures[0].blocking, history[3])
        self.assertIn("Get(key='b') -> None", result.explain())

    def test_cas_on_absent_key_and_on_value(self) -> None:
        self.assertEqual(
            kv_check(
                [
                    op(1, Cas("k", None, "v1"), True, 0, 1),
                    op(2, Cas("k", None, "v2"), False, 2, 3),
                    op(3, Cas("k", "v1", "v3"), True, 4, 5),
                    op(4, Get("k"), "v3", 6, 7),
                    op(5, Delete("k"), True, 8, 9),
                    op(6, Cas("k", None, "v4"), True, 10, 11),
                ]
            ),
            Verdict.LINEARIZABLE,
        )
        self.assertEqual(
            kv_check([op(1, Put("k", "v1"), True, 0, 1), op(2, Cas("k", None, "v2"), True, 2, 3)]),
            Verdict.NOT_LINEARIZABLE,
        )

    def test_lost_acknowledged_write(self) -> None:
        self.assertEqual(
            kv_check(
                [
                    op(1, Put("k", "v1"), True, 0, 1),
                    op(2, Put("k", "v2"), True, 2, 3),
                    op(3, Get("k"), "v2", 4, 5),
                    op(1, Get("k"), "v1", 6, 7),
                ]
            ),
            Verdict.NOT_LINEARIZABLE,
        )

    def test_unknown_gets_are_dropped(self) -> None:
        result = check(KVModel(), [unknown(1, Get("k"), 0), op(2, Put("k", 1), True, 0, 1)])
        self.assertEqual(result.verdict, Verdict.LINEARIZABLE)
        self.assertEqual(len(result.partitions[0].operations), 1)

    def test_refuses_foreign_operations(self) -> None:
        self.assertRaises(TypeError, check, KVModel(), [op(1, Read(), None, 0, 1)])
        self.assertRaises(TypeError, check, RegisterModel(), [op(1, Get("k"), None, 0, 1)])


class RecorderTests(SynchronousTestCase):
    def test_records_in_real_time_order(self) -> None:
        recorder = HistoryRecorder()
        put = recorder.invoke("c1", Put("k", 1))
        get = recorder.invoke("c2", Get("k"))
        refused = recorder.invoke("c3", Put("k", 9))
        recorder.ok(get, None)
        recorder.fail(refused)
        timed_out = recorder.invoke("c3", Put("k", 2))
        recorder.ok(put, True)
        recorder.info(timed_out)
        recorder.invoke("c2", Cas("k", 2, 3))
        history = recorder.operations()
        self.assertEqual(
            [(o.client, o.input, o.output, o.call, o.ret) for o in history],
            [
                ("c1", Put("k", 1), True, 1, 7),
                ("c2", Get("k"), None, 2, 4),
                ("c3", Put("k", 2), UNKNOWN, 6, None),
                ("c2", Cas("k", 2, 3), UNKNOWN, 9, None),
            ],
        )
        self.assertEqual(check(KVModel(), history).verdict, Verdict.LINEARIZABLE)


class PlantedBugTests(SynchronousTestCase):
    """
    The Raft bugs issue 4 names, as the KV histories they produce; every one
    must be flagged, and the same histories without the bug must pass.
    """

    def recorder_with_background(self) -> HistoryRecorder:
        """Healthy traffic on other keys, so the bad key must be found among them."""
        recorder = HistoryRecorder()
        for i in range(4):
            handle = recorder.invoke(f"bg{i}", Put(f"other{i}", i))
            recorder.ok(handle, True)
            timeout = recorder.invoke(f"bg{i}", Cas(f"other{i}", i, i + 10))
            recorder.info(timeout)
        return recorder

    def test_deposed_leader_answers_default_read_with_old_value(self) -> None:
        for buggy in (True, False):
            recorder = self.recorder_with_background()
            first = recorder.invoke("c1", Put("k", "v1"))
            recorder.ok(first, True)  # through the old leader
            # the old leader is partitioned away; a new one is elected
            second = recorder.invoke("c2", Put("k", "v2"))
            recorder.ok(second, True)  # through the new leader
            read = recorder.invoke("c3", Get("k"))  # default mode, to the old leader
            pending = recorder.invoke("c4", Put("k", "v3"))  # will time out
            recorder.ok(read, "v1" if buggy else "v2")
            recorder.info(pending)
            result = check(KVModel(), recorder.operations())
            expected = Verdict.NOT_LINEARIZABLE if buggy else Verdict.LINEARIZABLE
            self.assertEqual(result.verdict, expected, result.explain())
            if buggy:
                self.assertEqual(result.failures[0].blocking.client, "c3")

    def test_deposed_leader_read_among_many_timed_out_writes(self) -> None:
        """
        During the partition, clients of the minority side time out on every
        write (none of them took effect); the stale read must still be found,
        within the time budget, though any subset of those writes could have applied.
        """
        for buggy in (True, False):
            recorder = self.recorder_with_background()
            first = recorder.invoke("c1", Put("k", "v1"))
            recorder.ok(first, True)
            for i in range(40):
                recorder.info(recorder.invoke(f"minority{i}", Put("k", f"lost{i}")))
            second = recorder.invoke("c2", Put("k", "v2"))
            recorder.ok(second, True)
            for _ in range(20):
                read = recorder.invoke("c3", Get("k"))
                recorder.ok(read, "v1" if buggy else "v2")
            result = check(KVModel(), recorder.operations(), timeout=20)
            expected = Verdict.NOT_LINEARIZABLE if buggy else Verdict.LINEARIZABLE
            self.assertEqual(result.verdict, expected, result.explain())

    def test_acknowledgement_before_fsync_then_crash(self) -> None:
        for buggy in (True, False):
            recorder = self.recorder_with_background()
            create = recorder.invoke("c1", Cas("k", None, "v1"))
            recorder.ok(create, True)
            swap = recorder.invoke("c2", Cas("k", "v1", "v2"))
            recorder.ok(swap, True)  # acknowledged before the quorum fsynced it
            # the leader crashes and loses its unsynced tail; a new leader
            # without the entry is elected
            retry = recorder.invoke("c3", Cas("k", "v1", "v3"))
            recorder.ok(retry, buggy)  # succeeds only because v2 was lost
            read = recorder.invoke("c1", Get("k"))
            recorder.ok(read, "v3" if buggy else "v2")
            result = check(KVModel(), recorder.operations())
            expected = Verdict.NOT_LINEARIZABLE if buggy else Verdict.LINEARIZABLE
            self.assertEqual(result.verdict, expected, result.explain())

    def test_follower_answers_consistent_read_stale(self) -> None:
        for buggy in (True, False):
            recorder = self.recorder_with_background()
            create = recorder.invoke("c1", Cas("k", None, "v1"))
            recorder.ok(create, True)  # committed on the leader and one follower
            concurrent = recorder.invoke("c2", Get("k"))
            update = recorder.invoke("c1", Put("k", "v2"))
            recorder.ok(concurrent, "v1")
            recorder.ok(update, True)
            # ?consistent read served by the lagging third server without
            # confirming leadership with a quorum
            read = recorder.invoke("c3", Get("k"))
            recorder.ok(read, None if buggy else "v2")
            result = check(KVModel(), recorder.operations())
            expected = Verdict.NOT_LINEARIZABLE if buggy else Verdict.LINEARIZABLE
            self.assertEqual(result.verdict, expected, result.explain())


# -- Property tests -------------------------------------------------------------

KEYS = ["a", "b", "c"]
VALUES = st.integers(min_value=0, max_value=3)
KV_INPUTS = st.one_of(
    st.builds(Get, st.sampled_from(KEYS)),
    st.builds(Put, st.sampled_from(KEYS), VALUES),
    st.builds(Cas, st.sampled_from(KEYS), st.one_of(st.none(), VALUES), VALUES),
    st.builds(Delete, st.sampled_from(KEYS)),
)


def apply(store: dict[str, Hashable], input: object) -> object:
    """A plain sequential KV store, written apart from the model under test."""
    if isinstance(input, Get):
        return store.get(input.key)
    if isinstance(input, Put):
        store[input.key] = input.value
        return True
    if isinstance(input, Delete):
        store.pop(input.key, None)
        return True
    assert isinstance(input, Cas)
    if store.get(input.key) == input.expected:
        store[input.key] = input.new
        return True
    return False


SEQUENTIAL_STEPS = st.tuples(
    KV_INPUTS,
    st.integers(0, 40),  # how long before its instant it was called
    st.integers(0, 40),  # how long after its instant it returned
    st.sampled_from(["ok"] * 6 + ["unknown", "never"]),
)


def sequential_history(drawn: list[tuple[object, int, int, str]]) -> list[Operation]:
    """
    Run random operations one after another on a real store, each at its own
    instant, then widen every operation into a random interval around that
    instant; some outcomes become unknown, and some unknown operations never
    took effect at all.
    """
    store: dict[str, Hashable] = {}
    history = []
    for i, (input, before, after, fate) in enumerate(drawn):
        point = 10 * i
        if fate == "never":
            history.append(unknown(i % 5, input, point - before))
            continue
        output = apply(store, input)
        if fate == "unknown":
            history.append(unknown(i % 5, input, point - before))
        else:
            history.append(op(i % 5, input, output, point - before, point + after))
    return history


sequential_histories = st.lists(SEQUENTIAL_STEPS, max_size=40).map(sequential_history)


SMALL_INPUTS = st.one_of(
    st.builds(Get, st.sampled_from(KEYS[:2])),
    st.builds(Put, st.sampled_from(KEYS[:2]), st.integers(1, 2)),
    st.builds(Cas, st.sampled_from(KEYS[:2]), st.sampled_from([None, 1, 2]), st.integers(1, 2)),
    st.builds(Delete, st.sampled_from(KEYS[:2])),
)
SMALL_OPERATIONS = st.tuples(
    SMALL_INPUTS,
    st.integers(0, 10),  # call
    st.integers(0, 6),  # duration
    st.integers(0, 4),  # 0: unknown outcome
    st.sampled_from([None, 1, 2]),  # what a get returned
    st.booleans(),  # whether a cas stored
)


def small_history(drawn: list[tuple[object, int, int, int, object, bool]]) -> list[Operation]:
    """Any few operations with arbitrary outputs and overlaps, on one or two keys."""
    history = []
    for i, (input, call, duration, fate, got, stored) in enumerate(drawn):
        if fate == 0:
            history.append(unknown(i, input, call))
            continue
        if isinstance(input, Get):
            output: object = got
        elif isinstance(input, Cas):
            output = stored
        else:
            output = True
        history.append(op(i, input, output, call, call + duration))
    return history


small_histories = st.lists(SMALL_OPERATIONS, max_size=6).map(small_history)


def brute_force(history: Sequence[Operation]) -> bool:
    """
    Try every order that respects real time, any unknown operation left out,
    remembering (operations left, store) pairs already refuted.
    """

    @functools.cache
    def some_order(remaining: frozenset[int], store: tuple[tuple[str, Hashable], ...]) -> bool:
        if all(history[i].unknown for i in remaining):
            return True
        for i in remaining:
            candidate = history[i]
            if candidate.unknown and some_order(remaining - {i}, store):
                return True  # it never took effect
            if any(
                history[j].ret is not None and history[j].ret < candidate.call  # type: ignore[operator]
                for j in remaining
            ):
                continue  # another remaining operation finished before this one began
            after = dict(store)
            output = apply(after, candidate.input)
            if candidate.output is not UNKNOWN and output != candidate.output:
                continue
            if some_order(remaining - {i}, tuple(sorted(after.items()))):
                return True
        return False

    return some_order(frozenset(range(len(history))), ())


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(sequential_histories)
    def test_histories_of_a_sequential_execution_are_linearizable(
        self, history: list[Operation]
    ) -> None:
        result = check(KVModel(), history)
        self.assertEqual(result.verdict, Verdict.LINEARIZABLE, result.explain())

    @settings(max_examples=500)
    @given(small_histories)
    def test_agrees_with_brute_force(self, history: list[Operation]) -> None:
        result = check(KVModel(), history)
        expected = Verdict.LINEARIZABLE if brute_force(history) else Verdict.NOT_LINEARIZABLE
        self.assertEqual(result.verdict, expected, result.explain())
        for only in ("time-order", "known-first", "breadth-first"):
            verdicts = {
                linearizability._check_partition(
                    KVModel(), part, None, time.monotonic, only=only
                ).verdict
                for part in KVModel().partition(history)
            }
            alone = (
                Verdict.NOT_LINEARIZABLE
                if Verdict.NOT_LINEARIZABLE in verdicts
                else Verdict.LINEARIZABLE
            )
            self.assertEqual(alone, expected, only)
