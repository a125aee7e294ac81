# -*- test-case-name: txconsul.test.gossip.test_simulation -*-
"""
An in-memory network of datagrams and request/reply streams for simulations.

One seeded ``random.Random`` decides latency and loss, so a seed replays a
run exactly; partitions (both ways or one way) and downed hosts are sets the
test edits at any time. Payloads are whatever objects the nodes exchange.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

Address = tuple[str, int]
DatagramHandler = Callable[[Address, Any], None]
StreamHandler = Callable[[Address, Any], Any]


class Unreachable(Exception):
    """A stream could not reach its peer (down host or partition)."""


class SimNetwork:
    """
    :param latency: the base one-way delay; each packet takes ``latency * (1 + jitter * u)``
        with ``u`` uniform in [0, 1).
    :param loss: the probability that a datagram is dropped (streams are reliable).
    :param sizer: measures a payload for the byte counters (``None``: count packets only).
    """

    def __init__(
        self,
        seed: int,
        clock: IReactorTime,
        latency: float = 0.002,
        jitter: float = 1.0,
        loss: float = 0.0,
        sizer: Callable[[Any], int] | None = None,
        stream_timeout: float = 10.0,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.sizer = sizer
        self.stream_timeout = stream_timeout
        self.cut: set[frozenset[Address]] = set()
        self.one_way: set[tuple[Address, Address]] = set()
        self.down: set[Address] = set()
        self._datagram: dict[Address, DatagramHandler] = {}
        self._stream: dict[Address, StreamHandler] = {}
        #: Extra seconds before a host gets to its incoming messages (a starved CPU):
        #: its timers keep firing on time, its inbox is processed late, in order.
        self.inbox_delay: dict[Address, float] = {}
        self._inbox_free: dict[Address, float] = {}
        #: Extra seconds before what a host sends leaves it (the same starved CPU
        #: gets to its sends late), in order.
        self.outbox_delay: dict[Address, float] = {}
        self._outbox_free: dict[Address, float] = {}
        self.packets_sent: dict[Address, int] = {}
        self.bytes_sent: dict[Address, int] = {}
        self.datagram_bytes = 0
        self.stream_bytes = 0
        self.dropped = 0

    def listen(self, address: Address, datagram: DatagramHandler, stream: StreamHandler) -> None:
        self._datagram[address] = datagram
        self._stream[address] = stream
        self.down.discard(address)

    def unlisten(self, address: Address) -> None:
        self._datagram.pop(address, None)
        self._stream.pop(address, None)

    def partition(self, side_a: list[Address], side_b: list[Address]) -> None:
        self.cut.update(frozenset((a, b)) for a in side_a for b in side_b)

    def heal(self) -> None:
        self.cut.clear()
        self.one_way.clear()

    def blocked(self, src: Address, dst: Address) -> bool:
        return (
            dst in self.down
            or src in self.down
            or (src, dst) in self.one_way
            or frozenset((src, dst)) in self.cut
        )

    def _delay(self) -> float:
        return self.latency * (1 + self.jitter * self.rng.random())

    def _until_processed(self, dst: Address, delay: float, src: Address | None = None) -> float:
        """
        Seconds from now until ``dst`` handles a message arriving in ``delay``
        (after ``src``'s outbox delay, if any, when ``src`` is given).
        """
        if src is not None and (src in self.outbox_delay or src in self._outbox_free):
            delay += self._backlog(self.outbox_delay, self._outbox_free, src, 0.0)
        return self._backlog(self.inbox_delay, self._inbox_free, dst, delay)

    def _backlog(
        self, extras: dict[Address, float], frees: dict[Address, float], host: Address, delay: float
    ) -> float:
        extra = extras.get(host, 0.0)
        free = frees.get(host)
        if not extra and free is None:
            return delay
        now = self.clock.seconds()
        when = now + delay + extra
        if free is not None and free > when:
            when = free  # the backlog is handled first, in arrival order
        if extra or when > now + delay:
            frees[host] = when
        else:
            del frees[host]
        return when - now

    def _count(self, src: Address, payload: Any, stream: bool = False) -> None:
        self.packets_sent[src] = self.packets_sent.get(src, 0) + 1
        if self.sizer is not None:
            size = self.sizer(payload)
            self.bytes_sent[src] = self.bytes_sent.get(src, 0) + size
            if stream:
                self.stream_bytes += size
            else:
                self.datagram_bytes += size

    def send(self, src: Address, dst: Address, payload: Any) -> None:
        """Send one datagram: maybe lost, otherwise delivered after the latency."""
        self._count(src, payload)
        if self.rng.random() < self.loss or self.blocked(src, dst):
            self.dropped += 1
            return
        delay = self._until_processed(dst, self._delay(), src)
        self.clock.callLater(delay, self._deliver, src, dst, payload)

    def _deliver(self, src: Address, dst: Address, payload: Any) -> None:
        handler = self._datagram.get(dst)
        if handler is not None and not self.blocked(src, dst):
            handler(src, payload)

    def request(
        self,
        src: Address,
        dst: Address,
        payload: Any,
        on_reply: Callable[[Any], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        """
        One stream exchange: ``payload`` reaches ``dst``'s stream handler, whose
        return value comes back to ``on_reply``; a failure calls ``on_error``
        (at once for a closed port, after ``stream_timeout`` for a partition).
        """
        self._count(src, payload, stream=True)
        if self.blocked(src, dst):
            self.clock.callLater(self.stream_timeout, on_error, Unreachable(dst))
            return
        if dst not in self._stream:
            self.clock.callLater(self._delay(), on_error, Unreachable(dst))
            return
        delay = self._until_processed(dst, self._delay(), src)
        self.clock.callLater(delay, self._serve, src, dst, payload, on_reply, on_error)

    def _serve(
        self,
        src: Address,
        dst: Address,
        payload: Any,
        on_reply: Callable[[Any], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        handler = self._stream.get(dst)
        if handler is None or self.blocked(src, dst):
            on_error(Unreachable(dst))
            return
        try:
            reply = handler(src, payload)
        except Exception as e:
            self.clock.callLater(self._delay(), on_error, e)
            return
        if reply is None:
            return
        self._count(dst, reply, stream=True)
        delay = self._until_processed(src, self._delay(), dst)
        self.clock.callLater(delay, self._reply, src, dst, reply, on_reply, on_error)

    def _reply(
        self,
        src: Address,
        dst: Address,
        reply: Any,
        on_reply: Callable[[Any], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        if self.blocked(dst, src) or src not in self._stream:
            on_error(Unreachable(src))
        else:
            on_reply(reply)
