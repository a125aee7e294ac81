"""
A reactor clock that keeps wall-clock time, for tests of clock steps.

``WallClockReactor`` is a ``task.Clock`` whose ``seconds()`` is a wall clock,
as Twisted's real reactor's is: ``pass_time`` lets real time go by (the wall
clock and ``monotonic()`` both move, and due calls run), ``jump`` steps the
wall clock alone, as NTP or an operator would, and runs nothing. A call armed
before a backward jump is then late by the jump, exactly as on a real reactor;
after ``txconsul.clock.use_monotonic_time(reactor, reactor.monotonic)`` it is
not. Several of them (one per simulated machine) can share one real time.
"""

from __future__ import annotations

from twisted.internet.task import Clock

#: somewhere in 2023: a wall clock is never near zero
EPOCH = 1_700_000_000.0


class WallClockReactor(Clock):
    def __init__(self, monotonic_start: float = 1000.0, wall_start: float = EPOCH) -> None:
        super().__init__()
        self.rightNow = wall_start
        self._monotonic = monotonic_start

    def monotonic(self) -> float:
        """This machine's monotonic clock: only real time moves it."""
        return self._monotonic

    def pass_time(self, seconds: float) -> None:
        """Real time goes by: both clocks move, and the calls due run."""
        self._monotonic += seconds
        self.advance(seconds)

    def jump(self, seconds: float) -> None:
        """Step the wall clock (forward or back) without any time passing."""
        self.rightNow += seconds
