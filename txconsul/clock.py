# -*- test-case-name: txconsul.test.test_clock -*-
"""
The reactor's timers on the monotonic clock.

Twisted's reactor takes its time from ``reactor.seconds()``, which is
``time.time``: each ``callLater`` becomes an absolute wall-clock time and the
reactor sleeps until it. When the wall clock steps back an hour (NTP, an
operator, a restored VM), every timer armed before the step fires an hour
late: a Raft leader stops sending heartbeats, a gossip probe stops, a
blocking query does not end. Measuring durations on ``time.monotonic`` inside
the cores does not help while the timer that wakes them is on the wall clock,
and no timer of the same reactor can notice the step, since it is late too.

``use_monotonic_time(reactor)`` therefore gives the reactor itself a
monotonic ``seconds``, before anything is scheduled on it: its heap of timed
calls, the length of each sleep and ``runUntilCurrent`` then all follow the
monotonic clock, for every timer of the process (Raft, gossip, forwarding,
checks, blocking queries, and Twisted's own timeouts), and a step of the wall
clock moves none of them. ``IReactorTime.seconds`` only promises "the current
time in seconds" (``task.Clock`` starts at 0), so this stays within the
interface. Nothing in txconsul reads ``reactor.seconds()`` as a date; wall
time for people (log lines, HTTP ``Date``) comes from ``time.time`` where it is
shown. The composition root (``txconsul.tap``) calls it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wall_time() -> float:
    """
    The wall clock, for what people and other systems read as a date (a DNS
    SOA serial, ...), never for a duration. The one reading of ``time.time``;
    whoever needs it takes it as an argument, so tests pass their own.
    """
    return time.time()  # noqa: TID251 (a date shown to others, not a duration)


class TimersArmed(RuntimeError):
    """The reactor already holds timed calls on its old clock."""


def use_monotonic_time(reactor: Any, monotonic: Callable[[], float] = time.monotonic) -> None:
    """
    Make ``reactor`` schedule and run its timed calls on ``monotonic``.

    :raises TimersArmed: if calls are pending: their times belong to the old
        clock, and mixing the two in one heap would misorder them.
    """
    if reactor.getDelayedCalls():
        raise TimersArmed("switch the reactor's clock before anything is scheduled on it")
    reactor.seconds = monotonic
