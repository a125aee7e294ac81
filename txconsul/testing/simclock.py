# -*- test-case-name: txconsul.test.gossip.test_simclock -*-
"""
A heap-based ``IReactorTime`` for large simulations.

``twisted.internet.task.Clock`` re-sorts every pending call on each
``callLater``; this clock keeps a heap, so ten thousand self-rescheduling
timers stay cheap, and it sets the time to each call's own deadline before
running it (STYLE-ANCHORS part B, fact 2).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


@implementer(IDelayedCall)
class SimDelayedCall:
    """One pending call; a reset pushes a new heap entry and orphans the old one."""

    def __init__(
        self,
        clock: SimClock,
        time: float,
        func: Callable[..., object],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> None:
        self._clock = clock
        self.time = time
        self.func, self.args, self.kw = func, args, kw
        self.cancelled = False
        self.called = False
        self.generation = 0

    def getTime(self) -> float:
        return self.time

    def cancel(self) -> None:
        if not self.active():
            raise RuntimeError("call already cancelled or run")
        self.cancelled = True
        self._clock._live -= 1

    def delay(self, secondsLater: float) -> None:
        if not self.active():
            raise RuntimeError("call already cancelled or run")
        self.time += secondsLater
        self._clock._push(self)

    def reset(self, secondsFromNow: float) -> None:
        if not self.active():
            raise RuntimeError("call already cancelled or run")
        self.time = self._clock.seconds() + max(secondsFromNow, 0.0)
        self._clock._push(self)

    def active(self) -> bool:
        return not (self.cancelled or self.called)


@implementer(IReactorTime)
class SimClock:
    """Virtual time; ``advance`` and ``run_until`` run due calls in deadline order."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, int, SimDelayedCall]] = []
        self._seq = 0
        self._live = 0

    def seconds(self) -> float:
        return self._now

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        call = SimDelayedCall(self, self._now + max(delay, 0.0), callable, args, kw)
        self._live += 1
        self._push(call)
        return call

    def _push(self, call: SimDelayedCall) -> None:
        self._seq += 1
        call.generation = self._seq
        heapq.heappush(self._heap, (call.time, self._seq, self._seq, call))

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return [c for _, _, gen, c in self._heap if c.active() and gen == c.generation]

    def pending(self) -> int:
        """How many calls are still to run."""
        return self._live

    def run_until(self, when: float) -> None:
        """Run every call due up to ``when``, each at its own time; end at ``when``."""
        heap = self._heap
        while heap and heap[0][0] <= when:
            time, _, gen, call = heapq.heappop(heap)
            if call.cancelled or call.called or gen != call.generation:
                continue
            self._now = time
            call.called = True
            self._live -= 1
            call.func(*call.args, **call.kw)
        self._now = max(self._now, when)

    def advance(self, amount: float) -> None:
        self.run_until(self._now + amount)
