"""
``txconsul.clock.MonotonicTimers``: calls on the monotonic clock, whatever the
wall clock does; the fallback on a fake reactor, the timerfd on the real one.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txconsul.clock import MonotonicTimers


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FallbackTests(SynchronousTestCase):
    """A fake reactor (wall clock) and a fake monotonic clock moved apart."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000.0)
        self.mono = FakeMonotonic()
        self.timers = MonotonicTimers(self.reactor, self.mono)
        self.fired: list[tuple[str, float]] = []

    def call(self, delay: float, name: str) -> Any:
        return self.timers.callLater(delay, lambda: self.fired.append((name, self.mono.now)))

    def both(self, seconds: float) -> None:
        self.mono.now += seconds
        self.reactor.advance(seconds)

    def test_calls_run_in_order_at_their_monotonic_time(self) -> None:
        self.assertFalse(self.timers.uses_timerfd)
        self.call(2.0, "b")
        self.call(1.0, "a")
        self.both(1.0)
        self.assertEqual(self.fired, [("a", 101.0)])
        self.both(1.0)
        self.assertEqual(self.fired, [("a", 101.0), ("b", 102.0)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_step_forward_of_the_wall_clock_runs_nothing_early(self) -> None:
        self.call(5.0, "a")
        self.reactor.advance(3600.0)  # NTP steps the wall clock an hour ahead
        self.assertEqual(self.fired, [])
        [wakeup] = self.reactor.getDelayedCalls()  # re-armed for the rest
        self.assertAlmostEqual(wakeup.getTime() - self.reactor.seconds(), 5.0)
        self.both(5.0)
        self.assertEqual(self.fired, [("a", 105.0)])

    def test_a_step_back_is_caught_up_by_the_next_call(self) -> None:
        self.call(1.0, "a")
        self.reactor.rightNow -= 3600.0  # the wall clock steps an hour back
        self.both(2.0)
        self.assertEqual(self.fired, [])  # the reactor's call waits for the old wall time
        self.call(0.5, "b")  # the next call re-arms from both clocks' present
        self.reactor.advance(0)
        self.assertEqual(self.fired, [("a", 102.0)])
        self.both(0.5)
        self.assertEqual([name for name, _ in self.fired], ["a", "b"])

    def test_cancel_reset_and_delay(self) -> None:
        a = self.call(1.0, "a")
        b = self.call(1.0, "b")
        c = self.call(1.0, "c")
        a.cancel()
        b.reset(3.0)
        c.delay(1.0)
        self.assertEqual(sorted(x.getTime() for x in self.timers.getDelayedCalls()), [102, 103])
        self.both(5.0)
        self.assertEqual([name for name, _ in self.fired], ["c", "b"])
        self.assertRaises(RuntimeError, a.cancel)
        self.assertFalse(b.active())

    def test_a_failing_call_is_logged_and_the_others_still_run(self) -> None:
        self.timers.callLater(1.0, lambda: 1 / 0)
        self.call(1.0, "after")
        self.both(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([name for name, _ in self.fired], ["after"])

    def test_stop_cancels_everything(self) -> None:
        self.call(1.0, "a")
        self.timers.stop()
        self.both(2.0)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class TimerFDTests(TestCase):
    """The real reactor, its wall clock stepped back under it."""

    timeout = 20

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SkipTest("timerfd is Linux's")
        self.timers = MonotonicTimers(reactor)
        self.addCleanup(self.timers.stop)

    async def test_a_call_runs_on_time_while_the_wall_clock_is_a_minute_behind(self) -> None:
        self.assertTrue(self.timers.uses_timerfd)
        # first let trial schedule its own timeout on the true wall clock
        await deferLater(reactor, 0, lambda: None)
        fired: Deferred[float] = Deferred()
        start = time.monotonic()
        # the reactor's clock steps back by a minute: its own calls would now
        # wait a minute longer; ours must not
        wall = reactor.seconds
        reactor.seconds = lambda: wall() - 60.0  # type: ignore[method-assign]
        self.addCleanup(setattr, reactor, "seconds", wall)
        self.timers.callLater(0.3, lambda: fired.callback(time.monotonic()))
        late: list[str] = []
        reactor.callLater(0.3, late.append, "reactor")
        ran = await fired
        self.assertGreaterEqual(ran - start, 0.3)
        self.assertLess(ran - start, 2.0)
        self.assertEqual(late, [])  # the wall-clock call is still a minute away
        reactor.seconds = wall  # type: ignore[method-assign]
        await deferLater(reactor, 0.4, lambda: None)
        self.assertEqual(late, ["reactor"])

    async def test_many_calls_in_order_and_the_descriptor_is_closed(self) -> None:
        order: list[int] = []
        done: Deferred[None] = Deferred()
        for i in (5, 1, 3, 2, 4):
            self.timers.callLater(i * 0.02, order.append, i)
        self.timers.callLater(0.15, done.callback, None)
        cancelled = self.timers.callLater(0.05, order.append, 99)
        cancelled.cancel()
        await done
        self.assertEqual(order, [1, 2, 3, 4, 5])
        fd = self.timers._wakeup.fileno()  # type: ignore[union-attr]
        self.timers.stop()
        self.assertRaises(OSError, os.fstat, fd)
