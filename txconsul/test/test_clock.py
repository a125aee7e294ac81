"""Tests for txconsul.clock: the reactor's timers on the monotonic clock."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txconsul.clock import TimersArmed, use_monotonic_time
from txconsul.testing.wallclock import WallClockReactor


class MonotonicTimeTests(SynchronousTestCase):
    def fired_after(self, reactor: WallClockReactor, jump: float) -> list[float]:
        """Arm a 1 s timer, step the wall clock by ``jump``, let 2 s pass in 10 ms steps."""
        fired: list[float] = []
        start = reactor.monotonic()
        reactor.callLater(1.0, lambda: fired.append(reactor.monotonic() - start))
        reactor.jump(jump)
        for _ in range(200):
            reactor.pass_time(0.01)
        return fired

    def test_on_the_wall_clock_a_step_back_delays_a_timer(self) -> None:
        reactor = WallClockReactor()
        self.assertEqual(self.fired_after(reactor, -3600), [])
        self.assertEqual(len(reactor.getDelayedCalls()), 1)  # an hour to go

    def test_on_the_wall_clock_a_step_forward_fires_a_timer_early(self) -> None:
        fired = self.fired_after(WallClockReactor(), 3600)
        self.assertEqual(len(fired), 1)
        self.assertLess(fired[0], 0.05)

    def test_on_the_monotonic_clock_no_step_moves_a_timer(self) -> None:
        for jump in (-3600, 3600, -86400 * 365):
            reactor = WallClockReactor()
            use_monotonic_time(reactor, reactor.monotonic)
            fired = self.fired_after(reactor, jump)
            self.assertEqual(len(fired), 1, jump)
            self.assertTrue(1.0 <= fired[0] < 1.02, fired)

    def test_the_clock_is_switched_before_anything_is_scheduled(self) -> None:
        reactor = WallClockReactor()
        reactor.callLater(1.0, lambda: None)
        self.assertRaises(TimersArmed, use_monotonic_time, reactor, reactor.monotonic)
        self.assertEqual(reactor.seconds(), reactor.rightNow)  # unchanged
