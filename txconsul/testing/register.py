# -*- test-case-name: txconsul.test.cluster.test_kill -*-
"""
A Jepsen ``register``-shaped KV workload over real HTTP, recorded for the checker.

Concurrent clients run one operation at a time each on a few keys: ``GET``
(default and ``?consistent``), ``PUT`` of a value never written before, and a
compare-and-set (a ``GET`` for the ModifyIndex, then ``PUT ?cas=<index>``).
Each client is pinned to one server or picks any server per operation. Every
request has a short timeout; an operation that times out or loses its
connection after it was sent has an unknown outcome (Jepsen's ``info``), one
refused before it reached a server certainly had no effect.

Values are unique per write, so the model's compare on values is the same as
Consul's compare on ModifyIndex (see ``linearizability.Cas``).
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txconsul.testing.linearizability import (
    UNKNOWN,
    Cas,
    Get,
    HistoryRecorder,
    Operation,
    Put,
)

__all__ = [
    "Client",
    "WriteRecord",
    "RegisterWorkload",
    "lost_writes",
    "history_to_json",
    "history_from_json",
]


@implementer(IBodyProducer)
class _Body:
    """
    A request body written whole as soon as the request goes out, so that it
    leaves with the headers (treq's producer writes it a reactor turn later).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Refused(Exception):
    """The request never reached a server: it certainly had no effect."""


class _Unknown(Exception):
    """The request may or may not have been applied."""


@attrs.frozen
class WriteRecord:
    """A PUT or CAS as one server saw it, on the monotonic clock (for per-server checks)."""

    target: str
    called: float
    returned: float
    #: True or False (answered), None (unknown outcome), "refused"
    outcome: object


@attrs.frozen
class ReadRecord:
    """A GET as one server answered it, on the monotonic clock (for per-server checks)."""

    target: str
    mode: str
    called: float
    returned: float
    #: whether the server answered with the key (200) or its absence (404)
    answered: bool


@attrs.define
class Client:
    """One Jepsen process: pinned to ``targets[0]``, or any of ``targets`` per operation."""

    name: str
    targets: list[str]


class RegisterWorkload:
    """
    :param targets: base URLs of the servers (``http://127.0.0.1:8500``).
    :param clients: the client processes, each with the URLs it may use.
    :param read_modes: which reads to issue: ``"default"`` and/or ``"consistent"``.
    :param record_reads: whether those reads go into the history (the reads
        that serve a CAS never do: the CAS itself is what they decide).
    """

    def __init__(
        self,
        reactor: Any,
        rng: random.Random,
        clients: Sequence[Client],
        keys: int = 10,
        timeout: float = 1.0,
        read_modes: Sequence[str] = ("default", "consistent"),
        record_reads: bool = True,
        prefix: str = "reg/",
    ) -> None:
        self.reactor = reactor
        self.rng = rng
        self.clients = list(clients)
        self.keys = [f"{prefix}{i}" for i in range(keys)]
        self.timeout = timeout
        self.read_modes = list(read_modes)
        self.record_reads = record_reads
        self.recorder = HistoryRecorder()
        self.counts: Counter[str] = Counter()
        self.completed = 0
        self.writes: list[WriteRecord] = []
        self.reads: list[ReadRecord] = []
        self._running = False
        self._serial = 0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._pool.retryAutomatically = False  # a retried write could apply twice
        # twisted.web's Agent rather than treq: this process drives every
        # client, and treq's per-request URL handling (hyperlink, IDNA) and
        # cookie jar took 40 % of its CPU, which under load slowed the
        # workload more than the servers did
        self._agent = Agent(reactor, pool=self._pool)

    # -- running ------------------------------------------------------------------

    async def run(self, stop: Callable[[], bool]) -> None:
        """Run every client until ``stop()`` is true (checked between operations)."""
        self._running = True
        try:
            await gatherResults([ensureDeferred(self._client(c, stop)) for c in self.clients])
        finally:
            self._running = False

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def _client(self, client: Client, stop: Callable[[], bool]) -> None:
        while not stop():
            key = self.rng.choice(self.keys)
            target = client.targets[0]
            if len(client.targets) > 1:
                target = self.rng.choice(client.targets)
            choice = self.rng.random()
            try:
                if choice < 0.5 and self.read_modes:
                    mode = self.read_modes[int(choice * 2 * len(self.read_modes))]
                    await self.read(client.name, target, key, mode, self.record_reads)
                elif choice < 0.75:
                    await self.write(client.name, target, key)
                else:
                    await self.cas(client.name, target, key)
            except (_Refused, _Unknown):
                # nothing listens there (a killed server), or it answers errors
                # at once (no leader): do not spin
                await deferLater(self.reactor, 0.05, lambda: None)

    def _value(self, client: str) -> str:
        self._serial += 1
        return f"{client}-{self._serial}"

    async def _exchange(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        response = await self._agent.request(
            method.encode(), url.encode(), None, None if body is None else _Body(body)
        )
        content: bytes = await readBody(response)
        return response.code, content

    async def _request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on the shared pool, answered and read within ``timeout``."""
        exchange = ensureDeferred(self._exchange(method, url, body))
        exchange.addTimeout(self.timeout, self.reactor)
        try:
            code, content = await exchange
        except (ConnectionRefusedError, ConnectError) as e:
            raise _Refused(str(e)) from e
        except Exception as e:  # noqa: BLE001 - timeout, reset, lost response: unknown
            raise _Unknown(repr(e)) from e
        return code, content

    # -- operations ---------------------------------------------------------------

    async def read(
        self, client: str, target: str, key: str, mode: str, record: bool = True
    ) -> tuple[object, int] | None:
        """One GET; the value (``None`` if absent) and its ModifyIndex, or None on failure."""
        url = f"{target}/v1/kv/{key}" + ("?consistent" if mode == "consistent" else "")
        handle = self.recorder.invoke(client, Get(key)) if record else None
        called = time.monotonic()
        try:
            code, body = await self._request("GET", url)
        except (_Refused, _Unknown) as e:
            self.reads.append(ReadRecord(target, mode, called, time.monotonic(), False))
            if handle is not None:
                self.recorder.fail(handle)  # a read has no effect
            self.counts[f"read-{mode}-error"] += 1
            if isinstance(e, _Refused):
                raise
            return None
        self.reads.append(ReadRecord(target, mode, called, time.monotonic(), code in (200, 404)))
        if code == 404:
            value: object = None
            index = 0
        elif code == 200:
            entry = json.loads(body)[0]
            value = base64.b64decode(entry["Value"] or b"").decode()
            index = entry["ModifyIndex"]
        else:
            if handle is not None:
                self.recorder.fail(handle)
            self.counts[f"read-{mode}-{code}"] += 1
            return None
        if handle is not None:
            self.recorder.ok(handle, value)
        self.completed += 1
        self.counts[f"read-{mode}-ok"] += 1
        return value, index

    async def write(self, client: str, target: str, key: str) -> None:
        value = self._value(client)
        handle = self.recorder.invoke(client, Put(key, value))
        called = time.monotonic()
        outcome = await self._apply(f"{target}/v1/kv/{key}", value)
        self._finish(handle, "write", target, called, outcome)

    async def cas(self, client: str, target: str, key: str) -> None:
        read = await self.read(client, target, key, "default", record=False)
        if read is None:
            return
        expected, index = read
        value = self._value(client)
        handle = self.recorder.invoke(client, Cas(key, expected, value))
        called = time.monotonic()
        outcome = await self._apply(f"{target}/v1/kv/{key}?cas={index}", value)
        self._finish(handle, "cas", target, called, outcome)

    async def _apply(self, url: str, value: str) -> object:
        """True/False for an answer, ``_Refused`` or ``UNKNOWN`` otherwise."""
        try:
            code, body = await self._request("PUT", url, value.encode())
        except _Refused as e:
            return e
        except _Unknown:
            return UNKNOWN
        if code != 200:
            return UNKNOWN  # e.g. the leader was lost after the entry was appended
        answer: object = json.loads(body)
        return answer

    def _finish(self, handle: int, op: str, target: str, called: float, outcome: object) -> None:
        seen = (
            "refused" if isinstance(outcome, _Refused) else None if outcome is UNKNOWN else outcome
        )
        self.writes.append(WriteRecord(target, called, time.monotonic(), seen))
        if isinstance(outcome, _Refused):
            self.recorder.fail(handle)
            self.counts[f"{op}-refused"] += 1
            raise outcome
        if outcome is UNKNOWN:
            self.recorder.info(handle)
            self.counts[f"{op}-unknown"] += 1
            raise _Unknown(op)
        self.recorder.ok(handle, bool(outcome))
        self.completed += 1
        self.counts[f"{op}-{'ok' if outcome else 'false'}"] += 1

    def operations(self) -> list[Operation]:
        return self.recorder.operations()


def lost_writes(history: Sequence[Operation], final: dict[str, object]) -> list[Operation]:
    """
    Acknowledged writes that the final state lost: ``final[key]`` is not the
    write's value although no other write that could have taken effect after
    it (one that had not returned when it was called) exists on that key.
    """
    writes: dict[str, list[Operation]] = {}
    for op in history:
        if isinstance(op.input, Put | Cas) and op.output is not False:
            writes.setdefault(op.input.key, []).append(op)
    lost = []
    for key, ops in writes.items():
        if key not in final:
            continue
        # the two latest returns (unknown: never) find "another write returning later"
        ends = sorted(((float("inf") if op.ret is None else op.ret), i) for i, op in enumerate(ops))
        for i, op in enumerate(ops):
            if op.unknown or final[key] == _written(op):
                continue
            latest = [end for end, j in ends[-2:] if j != i]
            if not latest or latest[-1] < op.call:
                lost.append(op)
    return sorted(lost, key=lambda op: op.call)


def _written(op: Operation) -> object:
    return op.input.value if isinstance(op.input, Put) else op.input.new  # type: ignore[attr-defined]


# -- a history as JSON (for a scenario run in another process) -------------------


def _input_to_json(input: object) -> list[Any]:
    if isinstance(input, Get):
        return ["get", input.key]
    if isinstance(input, Put):
        return ["put", input.key, input.value]
    if isinstance(input, Cas):
        return ["cas", input.key, input.expected, input.new]
    raise TypeError(f"not a register operation: {input!r}")


def history_to_json(history: Sequence[Operation]) -> list[dict[str, Any]]:
    return [
        {
            "client": str(op.client),
            "input": _input_to_json(op.input),
            "output": None if op.unknown else op.output,
            "unknown": op.unknown,
            "call": op.call,
            "ret": op.ret,
        }
        for op in history
    ]


def history_from_json(data: list[dict[str, Any]]) -> list[Operation]:
    ops = []
    for item in data:
        kind, key, *args = item["input"]
        input: object = {"get": Get, "put": Put, "cas": Cas}[kind](key, *args)
        output = UNKNOWN if item["unknown"] else item["output"]
        ops.append(Operation(item["client"], input, output, item["call"], item["ret"]))
    return ops
