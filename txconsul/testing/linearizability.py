# -*- test-case-name: txconsul.test.test_linearizability -*-
"""
A linearizability checker for recorded histories of a replicated store.

The search is the one of Wing and Gong, with Lowe's improvements: the
invocations and returns of a history form a doubly linked list in time order;
the checker repeatedly picks an operation whose invocation comes before every
pending return, applies it to a sequential ``Model``, and backtracks when it
meets the return of an operation it has not yet placed. A set of
(linearized operations, model state) pairs already explored cuts the search
(Lowe's memoisation; the set of placed operations is a Python ``int`` used as
a bitset), and the model may split a history into independent sub-histories
that are checked one by one (P-compositionality: per key for the KV store).

An operation whose outcome is unknown (a timeout, a crashed client, no answer
by the end of the run) has no return: it may take effect at any point after
its invocation, or never, and its output constrains nothing. Placing such an
operation at the very end of a linearization is the same as it never
happening, so the search needs no special case for "never". Many such
operations make the plain search exponential, so three complete searches run
in turns and the first to decide wins (see ``_check_partition``).

Pure Python, no Twisted: the Raft simulation, the real-cluster tests and the
Jepsen fixtures all feed it plain ``Operation`` lists.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "UNKNOWN",
    "Cas",
    "CheckResult",
    "CompareAndSet",
    "Delete",
    "Get",
    "HistoryRecorder",
    "KVModel",
    "Model",
    "Operation",
    "PartitionResult",
    "Put",
    "Read",
    "RegisterModel",
    "Verdict",
    "Write",
    "check",
]


class _Unknown:
    """The output of an operation whose outcome was never observed."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


@dataclass(frozen=True, eq=False)
class Operation:
    """
    One client operation: what was asked, what came back, and when.

    ``call`` and ``ret`` are points on one real-time axis (any unit; a counter
    of recorded events is exact). ``ret is None`` means the outcome is unknown,
    and then ``output`` is ``UNKNOWN``. Equal times count as overlapping.
    ``client`` only serves the explanations.
    """

    client: Hashable
    input: object
    output: object
    call: float
    ret: float | None

    def __post_init__(self) -> None:
        if (self.ret is None) != (self.output is UNKNOWN):
            raise ValueError("an operation has an unknown output exactly when it has no return")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns ({self.ret}) before its call ({self.call})")

    @property
    def unknown(self) -> bool:
        return self.ret is None

    def __repr__(self) -> str:
        end = "?" if self.ret is None else f"{self.ret:g}"
        return f"[{self.call:g}, {end}] client {self.client!r}: {self.input!r} -> {self.output!r}"


S = TypeVar("S", bound=Hashable)


class Model(ABC, Generic[S]):
    """
    The sequential specification a history is checked against.

    States must be hashable and compare by value: the checker caches them.
    """

    @abstractmethod
    def init(self) -> S:
        """The state before any operation."""

    @abstractmethod
    def step(self, state: S, input: object, output: object) -> tuple[bool, S]:
        """
        Whether ``input`` answered with ``output`` is legal in ``state``, and
        the state afterwards. ``output`` may be ``UNKNOWN``: then any outcome
        the operation could have had is legal.
        """

    #: True when ``step(state, input, UNKNOWN)`` is legal in every state, as
    #: in the register and KV models: an unknown operation can then always
    #: take effect last (which is the same as never), so having placed fewer
    #: of them is never worse, and the checker may use that to prune.
    unknowns_always_legal: bool = False

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        """
        Independent sub-histories, each checked alone; the history is
        linearizable if and only if every part is. Also the place to drop
        operations that cannot matter (a read with an unknown outcome).
        """
        return [list(history)]


# -- A single register (the Jepsen etcd histories) ------------------------------


@dataclass(frozen=True)
class Read:
    """Read the register; the output is its value (``None`` when unset)."""


@dataclass(frozen=True)
class Write:
    """Write ``value``; the output is ``None`` (or anything: it is not checked)."""

    value: Hashable


@dataclass(frozen=True)
class CompareAndSet:
    """Set ``new`` if the value is ``expected``; the output is whether it did."""

    expected: Hashable
    new: Hashable


class RegisterModel(Model[Hashable]):
    """One register, initially ``None``, with read, write and compare-and-set."""

    unknowns_always_legal = True

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, input: object, output: object) -> tuple[bool, Hashable]:
        if isinstance(input, Read):
            return (output is UNKNOWN or output == state), state
        if isinstance(input, Write):
            return True, input.value
        if isinstance(input, CompareAndSet):
            match = state == input.expected
            if output is UNKNOWN:
                return True, input.new if match else state
            return bool(output) == match, input.new if match else state
        raise TypeError(f"not a register operation: {input!r}")

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        return [[op for op in history if not (op.unknown and isinstance(op.input, Read))]]


# -- A KV store with Consul's operations ----------------------------------------


@dataclass(frozen=True)
class Get:
    """``GET /v1/kv/<key>`` (default or ``?consistent``): the value, ``None`` if absent."""

    key: str


@dataclass(frozen=True)
class Put:
    """``PUT /v1/kv/<key>``: the output is ``True`` (acknowledged)."""

    key: str
    value: Hashable


@dataclass(frozen=True)
class Cas:
    """
    Compare-and-set on the value: store ``new`` if the key currently holds
    ``expected`` (``expected=None``: only if the key is absent, Consul's
    ``?cas=0``). The output is ``True`` if it stored, ``False`` if not.

    Consul compares ``ModifyIndex`` rather than the value; a recorder turns
    ``?cas=<index>`` into this operation by passing the value it read
    together with that index. That is exact when every write stores a value
    never written before to that key (the simulation writes unique values):
    then the key holds that value exactly while its ModifyIndex is unchanged.
    """

    key: str
    expected: Hashable
    new: Hashable


@dataclass(frozen=True)
class Delete:
    """``DELETE /v1/kv/<key>``: the output is ``True`` (acknowledged)."""

    key: str


KVState = tuple[tuple[str, Hashable], ...]


class KVModel(Model[KVState]):
    """
    A map from keys to values; absent keys read as ``None``.

    The state is a sorted tuple of (key, value) pairs, which is hashable and
    short: ``partition`` gives every key its own sub-history, so a state
    holds at most one pair.
    """

    unknowns_always_legal = True

    def init(self) -> KVState:
        return ()

    def step(self, state: KVState, input: object, output: object) -> tuple[bool, KVState]:
        if not isinstance(input, Get | Put | Cas | Delete):
            raise TypeError(f"not a KV operation: {input!r}")
        current = dict(state).get(input.key)
        if isinstance(input, Get):
            return (output is UNKNOWN or output == current), state
        if isinstance(input, Put):
            return True, _assign(state, input.key, input.value)
        if isinstance(input, Delete):
            return True, _assign(state, input.key, None)
        match = current == input.expected
        after = _assign(state, input.key, input.new) if match else state
        if output is UNKNOWN:
            return True, after
        return bool(output) == match, after

    def partition(self, history: Sequence[Operation]) -> list[list[Operation]]:
        by_key: dict[str, list[Operation]] = {}
        for op in history:
            if not isinstance(op.input, Get | Put | Cas | Delete):
                raise TypeError(f"not a KV operation: {op.input!r}")
            if op.unknown and isinstance(op.input, Get):
                continue
            by_key.setdefault(op.input.key, []).append(op)
        return [by_key[key] for key in sorted(by_key)]


def _assign(state: KVState, key: str, value: Hashable) -> KVState:
    rest = [(k, v) for k, v in state if k != key]
    if value is not None:
        rest.append((key, value))
        rest.sort(key=lambda kv: kv[0])
    return tuple(rest)


# -- Recording ------------------------------------------------------------------


class HistoryRecorder:
    """
    Collects operations as clients issue them and see their answers.

    Times are a counter of recorded events, so real-time order is exactly the
    order in which ``invoke`` and the completions were called; no clock is
    needed and equal virtual times in a simulation cause no false overlap.
    """

    def __init__(self) -> None:
        self._now = 0
        self._open: dict[int, tuple[Hashable, object, int]] = {}
        self._done: list[tuple[int, Operation]] = []
        self._next_handle = 0

    def _tick(self) -> int:
        self._now += 1
        return self._now

    def invoke(self, client: Hashable, input: object) -> int:
        """Record a call; returns the handle for its completion."""
        handle = self._next_handle
        self._next_handle += 1
        self._open[handle] = (client, input, self._tick())
        return handle

    def ok(self, handle: int, output: object) -> None:
        """The operation completed with ``output``."""
        client, input, call = self._open.pop(handle)
        self._done.append((handle, Operation(client, input, output, call, self._tick())))

    def fail(self, handle: int) -> None:
        """The operation certainly had no effect (refused before it was applied)."""
        self._open.pop(handle)
        self._tick()

    def info(self, handle: int) -> None:
        """The outcome is unknown (timeout, lost connection): it may or may not apply."""
        client, input, call = self._open.pop(handle)
        self._tick()
        self._done.append((handle, Operation(client, input, UNKNOWN, call, None)))

    def operations(self) -> list[Operation]:
        """Every recorded operation, in call order; ones still open are unknown."""
        pending = [
            (handle, Operation(client, input, UNKNOWN, call, None))
            for handle, (client, input, call) in self._open.items()
        ]
        return [op for _, op in sorted(self._done + pending, key=lambda pair: pair[0])]


# -- The search -----------------------------------------------------------------


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PartitionResult:
    """
    The verdict on one independent sub-history.

    When it is not linearizable, ``longest_prefix`` is the longest sequence of
    its operations the search could linearize; after it, ``blocking`` is an
    operation that had to be placed before its return and could not, and
    ``unplaced`` the operations that were candidates at that point (each
    rejected by the model, or leading only to dead ends).
    """

    verdict: Verdict
    operations: tuple[Operation, ...]
    longest_prefix: tuple[Operation, ...] = ()
    blocking: Operation | None = None
    unplaced: tuple[Operation, ...] = ()
    #: roughly how many search steps were spent
    explored: int = 0


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    partitions: tuple[PartitionResult, ...]
    elapsed: float
    failures: tuple[PartitionResult, ...] = field(default=())

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    def explain(self, limit: int = 20) -> str:
        """A readable account of the verdict, with the first bad sub-history."""
        lines = [
            f"{self.verdict.value}: {len(self.partitions)} sub-histories, "
            f"{sum(len(p.operations) for p in self.partitions)} operations, "
            f"{self.elapsed:.3f} s"
        ]
        undecided = sum(p.verdict is Verdict.UNKNOWN for p in self.partitions)
        if undecided:
            lines.append(f"{undecided} sub-histories not decided within the time budget")
        for bad in self.failures[:1]:
            prefix = bad.longest_prefix
            lines.append(
                f"sub-history of {len(bad.operations)} operations: at most "
                f"{len(prefix)} could be linearized; the last {min(limit, len(prefix))} of them:"
            )
            lines.extend(f"  {op!r}" for op in prefix[-limit:])
            if bad.blocking is not None:
                lines.append("then this operation could not be placed before it returned:")
                lines.append(f"  {bad.blocking!r}")
            others = [op for op in bad.unplaced if op is not bad.blocking]
            if others:
                lines.append("candidates that were tried there:")
                lines.extend(f"  {op!r}" for op in others[:limit])
        return "\n".join(lines)


def check(
    model: Model[S],
    history: Iterable[Operation],
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CheckResult:
    """
    Decide whether ``history`` is linearizable with respect to ``model``.

    With ``timeout`` (seconds on ``clock``), a search that runs out of time
    leaves its sub-history ``UNKNOWN``; the verdict is then ``UNKNOWN``
    unless another sub-history is already known not to be linearizable.
    """
    start = clock()
    deadline = None if timeout is None else start + timeout
    results = []
    for part in model.partition(list(history)):
        results.append(_check_partition(model, part, deadline, clock))
    failures = tuple(r for r in results if r.verdict is Verdict.NOT_LINEARIZABLE)
    if failures:
        verdict = Verdict.NOT_LINEARIZABLE
    elif any(r.verdict is Verdict.UNKNOWN for r in results):
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return CheckResult(verdict, tuple(results), clock() - start, failures)


_SLICE = 4096

# A search yields after about _SLICE steps, or returns its verdict.
_Steps = Generator[None, None, "PartitionResult"]


def _check_partition(
    model: Model[S],
    ops: Sequence[Operation],
    deadline: float | None,
    clock: Callable[[], float],
    only: str | None = None,
) -> PartitionResult:
    """
    Complete searches that differ in the order they explore, run in turns
    until one decides; whichever order suits the history wins, at a cost of
    a constant factor. Depth first in time order (the true order is usually
    close to it); depth first with the operations of known outcome tried
    first (fast when many unknown ones never took effect, which time order
    places and takes back in every combination); and, when the model allows
    it, breadth first over the operations of known outcome, which keeps only
    the smallest sets of unknown operations placed and so proves a violation
    among many unknown operations without trying every subset of them.
    """
    if not ops:
        return PartitionResult(Verdict.LINEARIZABLE, ())
    search = _Search(model, ops)
    searches: list[_Steps] = [search.depth_first(known_first=False)]
    if search.unknown_mask:
        searches.append(search.depth_first(known_first=True))
        if model.unknowns_always_legal:
            searches.append(search.breadth_first())
    if only is not None:  # one search alone, for the tests
        searches = {
            "time-order": [search.depth_first(known_first=False)],
            "known-first": [search.depth_first(known_first=True)],
            "breadth-first": [search.breadth_first()],
        }[only]
    slices = 0
    while True:
        for running in searches:
            try:
                next(running)
            except StopIteration as done:
                result: PartitionResult = done.value
                return PartitionResult(
                    result.verdict,
                    result.operations,
                    result.longest_prefix,
                    result.blocking,
                    result.unplaced,
                    slices * _SLICE,
                )
            slices += 1
            if deadline is not None and clock() > deadline:
                return PartitionResult(Verdict.UNKNOWN, tuple(ops), explored=slices * _SLICE)


class _Search(Generic[S]):
    """Wing and Gong's search with Lowe's cache over one sub-history."""

    def __init__(self, model: Model[S], ops: Sequence[Operation]) -> None:
        self.model = model
        self.ops = ops
        n = len(ops)
        # Entries 1..2n are calls and returns in time order; 0 is the head and
        # 2n + 1 the tail of a doubly linked list through them. A call sorts
        # before a return at the same time (overlapping); unknown returns go last.
        infinity = float("inf")
        events = []
        for i, op in enumerate(ops):
            events.append((op.call, 0, i))
            events.append((infinity if op.ret is None else op.ret, 1, i))
        events.sort()
        size = 2 * n + 2
        self.tail = size - 1
        self.op_of = [0] * size
        self.is_call = [False] * size
        self.match = [0] * size
        call_entry = [0] * n
        for index, (_, kind, i) in enumerate(events, start=1):
            self.op_of[index] = i
            if kind == 0:
                self.is_call[index] = True
                call_entry[i] = index
            else:
                self.match[call_entry[i]] = index
        self.unknown = [op.ret is None for op in ops]
        self.unknown_mask = sum(1 << i for i in range(n) if self.unknown[i])

    def depth_first(self, known_first: bool) -> _Steps:
        """Wing and Gong's search with Lowe's cache of configurations."""
        ops = self.ops
        tail = self.tail
        op_of, is_call, match, unknown = self.op_of, self.is_call, self.match, self.unknown
        nxt = list(range(1, tail + 1)) + [tail]
        prv = [0, *range(0, tail)]
        inputs = [op.input for op in ops]
        outputs = [op.output for op in ops]
        step = self.model.step

        state = self.model.init()
        linearized = 0
        stack: list[tuple[int, S]] = []
        # Lowe's cache: configurations (placed operations, state) already
        # reached; reaching one again on another path cannot do better.
        seen: set[tuple[int, S]] = set()
        best_depth = -1
        best: tuple[tuple[int, ...], int, tuple[int, ...]] = ((), -1, ())
        budget = _SLICE
        # with known_first, candidates are tried in two passes, operations
        # with a known outcome first
        unknown_pass = False

        entry = nxt[0]
        while entry != tail:
            budget -= 1
            if budget == 0:
                budget = _SLICE
                yield None
            if is_call[entry]:
                i = op_of[entry]
                if known_first and unknown[i] is not unknown_pass:
                    entry = nxt[entry]
                    continue
                legal, after = step(state, inputs[i], outputs[i])
                if legal:
                    placed = linearized | (1 << i)
                    key = (placed, after)
                    if key not in seen:
                        seen.add(key)
                        stack.append((entry, state))
                        state = after
                        linearized = placed
                        # lift the call and its return out of the list
                        ret = match[entry]
                        nxt[prv[entry]] = nxt[entry]
                        prv[nxt[entry]] = prv[entry]
                        nxt[prv[ret]] = nxt[ret]
                        prv[nxt[ret]] = prv[ret]
                        entry = nxt[0]
                        unknown_pass = False
                        continue
                entry = nxt[entry]
            elif known_first and not unknown_pass:
                unknown_pass = True
                entry = nxt[0]
            else:
                if len(stack) > best_depth:
                    best_depth = len(stack)
                    candidates = []
                    walk = nxt[0]
                    while walk != entry:
                        if is_call[walk] and op_of[walk] != op_of[entry]:
                            candidates.append(op_of[walk])
                        walk = nxt[walk]
                    best = (tuple(op_of[e] for e, _ in stack), op_of[entry], tuple(candidates))
                if not stack:
                    break
                entry, state = stack.pop()
                i = op_of[entry]
                linearized &= ~(1 << i)
                unknown_pass = unknown[i]
                ret = match[entry]
                nxt[prv[ret]] = ret
                prv[nxt[ret]] = ret
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
                entry = nxt[entry]
        if entry == tail:
            return PartitionResult(Verdict.LINEARIZABLE, tuple(ops))
        prefix, blocking, tried = best
        return PartitionResult(
            Verdict.NOT_LINEARIZABLE,
            tuple(ops),
            longest_prefix=tuple(ops[i] for i in prefix),
            blocking=ops[blocking],
            unplaced=tuple(ops[i] for i in (blocking, *tried)),
        )

    def breadth_first(self) -> _Steps:
        """
        Layer by layer in the number of operations of known outcome placed.

        A configuration is (known placed, state, unknown placed). Which
        operations may come next depends on the known ones alone (unknown
        operations never return), and an unknown operation can always take
        effect last; so of two configurations differing only in their
        unknown operations, the one with a subset is at least as good, and
        each layer keeps, per (known placed, state), only the minimal sets.
        """
        ops = self.ops
        n = len(ops)
        step = self.model.step
        known = [i for i in range(n) if not self.unknown[i]]
        by_ret = sorted(known, key=lambda i: (ops[i].ret, i))
        by_call = sorted(range(n), key=lambda i: (ops[i].call, i))
        known_mask = sum(1 << i for i in known)
        Path = tuple[int, object] | None
        # layer: known placed -> state -> [(unknown placed, path)], an antichain
        layer: dict[int, dict[S, list[tuple[int, Path]]]] = {0: {self.model.init(): [(0, None)]}}
        budget = _SLICE
        depth = 0
        while known_mask not in layer:
            following: dict[int, dict[S, list[tuple[int, Path]]]] = {}
            for placed_known, states in layer.items():
                # operations that may come next: called no later than the
                # first return of a known operation not yet placed
                horizon = next(ops[i].ret for i in by_ret if not placed_known >> i & 1)
                candidates = []
                for i in by_call:
                    if ops[i].call > horizon:  # type: ignore[operator]
                        break
                    if not placed_known >> i & 1:
                        candidates.append(i)
                # closure under unknown operations, keeping minimal sets
                closure: dict[S, list[tuple[int, Path]]] = {
                    state: list(entries) for state, entries in states.items()
                }
                todo = [
                    (state, u, path) for state, entries in states.items() for u, path in entries
                ]
                while todo:
                    state, placed_unknown, path = todo.pop()
                    for i in candidates:
                        if not self.unknown[i] or placed_unknown >> i & 1:
                            continue
                        budget -= 1
                        if budget == 0:
                            budget = _SLICE
                            yield None
                        legal, after = step(state, ops[i].input, UNKNOWN)
                        if legal and _keep_minimal(
                            closure, after, placed_unknown | 1 << i, (i, path)
                        ):
                            todo.append((after, placed_unknown | 1 << i, (i, path)))
                for state, entries in closure.items():
                    for placed_unknown, path in entries:
                        for i in candidates:
                            if self.unknown[i]:
                                continue
                            budget -= 1
                            if budget == 0:
                                budget = _SLICE
                                yield None
                            legal, after = step(state, ops[i].input, ops[i].output)
                            if legal:
                                _keep_minimal(
                                    following.setdefault(placed_known | 1 << i, {}),
                                    after,
                                    placed_unknown,
                                    (i, path),
                                )
            if not following:
                return self._stuck(layer, depth, by_ret, by_call)
            layer = following
            depth += 1
        return PartitionResult(Verdict.LINEARIZABLE, tuple(ops))

    def _stuck(
        self,
        layer: dict[int, dict[S, list[tuple[int, tuple[int, object] | None]]]],
        depth: int,
        by_ret: list[int],
        by_call: list[int],
    ) -> PartitionResult:
        """The explanation of a violation found breadth first."""
        ops = self.ops
        placed_known, states = next(iter(layer.items()))
        _, path = next(iter(states.values()))[0]
        order: list[int] = []
        while path is not None:
            index, parent = path
            order.append(index)
            path = parent  # type: ignore[assignment]
        order.reverse()
        blocking = next(i for i in by_ret if not placed_known >> i & 1)
        horizon = ops[blocking].ret
        tried = [
            i
            for i in by_call
            if ops[i].call <= horizon  # type: ignore[operator]
            and not placed_known >> i & 1
            and not self.unknown[i]
            and i != blocking
        ]
        return PartitionResult(
            Verdict.NOT_LINEARIZABLE,
            tuple(ops),
            longest_prefix=tuple(ops[i] for i in order),
            blocking=ops[blocking],
            unplaced=tuple(ops[i] for i in (blocking, *tried)),
        )


def _keep_minimal(
    table: dict[S, list[tuple[int, tuple[int, object] | None]]],
    state: S,
    placed_unknown: int,
    path: tuple[int, object] | None,
) -> bool:
    """Add a set of unknown operations for ``state`` unless a subset is there."""
    entries = table.get(state)
    if entries is None:
        table[state] = [(placed_unknown, path)]
        return True
    for other, _ in entries:
        if other & placed_unknown == other:
            return False
    entries[:] = [entry for entry in entries if entry[0] & placed_unknown != placed_unknown]
    entries.append((placed_unknown, path))
    return True
