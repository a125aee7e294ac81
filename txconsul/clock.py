# -*- test-case-name: txconsul.test.test_clock -*-
"""
Timers on the monotonic clock for code that runs on a Twisted reactor.

The reactor's own ``callLater`` follows the wall clock (``reactor.seconds()`` is
``time.time``): when NTP steps the clock forward, pending calls run at once;
when it steps back, they wait for the wall clock to catch up, an hour for an
hour's step, and the reactor sleeps all that while unless I/O wakes it.
``MonotonicTimers`` is an ``IReactorTime`` whose ``seconds()`` is the monotonic
clock and whose calls run when that clock reaches their time, so a step of
the wall clock moves none of them.

On Linux it wakes the reactor with a ``timerfd`` on ``CLOCK_MONOTONIC``, a
file descriptor the reactor watches like a socket. Elsewhere, or with a
reactor that watches no descriptors (tests' fakes), or an injected clock other
than ``time.monotonic``, it falls back to one reactor call re-armed to the
earliest deadline: a step forward then only makes that call run early and
re-arm, but a step back delays it until the next ``callLater`` re-arms it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFDSet,
    IReactorTime,
    IReadDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

Monotonic = Callable[[], float]


@implementer(IDelayedCall)
class MonotonicDelayedCall:
    """One pending call; ``getTime()`` is on the monotonic clock."""

    def __init__(
        self,
        timers: MonotonicTimers,
        when: float,
        func: Callable[..., object],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> None:
        self._timers = timers
        self.time = when
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
        self._timers._cancelled(self)

    def delay(self, secondsLater: float) -> None:
        if not self.active():
            raise RuntimeError("call already cancelled or run")
        self.time += secondsLater
        self._timers._push(self)

    def reset(self, secondsFromNow: float) -> None:
        if not self.active():
            raise RuntimeError("call already cancelled or run")
        self.time = self._timers.seconds() + max(secondsFromNow, 0.0)
        self._timers._push(self)

    def active(self) -> bool:
        return not (self.cancelled or self.called)


@implementer(IReactorTime)
class MonotonicTimers:
    """
    Calls scheduled on ``monotonic`` (``time.monotonic`` in production).

    :param reactor: the reactor whose loop runs the calls.
    :param timerfd: ``None`` uses a timerfd when it can (see the module
        docstring); ``False`` always uses the reactor-call fallback.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, monotonic: Monotonic = time.monotonic, timerfd: bool | None = None
    ) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self._heap: list[tuple[float, int, MonotonicDelayedCall]] = []
        self._seq = 0
        self._live = 0
        self._armed: float | None = None
        self._running = False
        self._wakeup: _TimerFD | _ReactorCall
        use_fd = timerfd if timerfd is not None else True
        fd = None
        if use_fd and monotonic is time.monotonic and IReactorFDSet.providedBy(reactor):
            fd = _TimerFD.create(self._run)
        if fd is not None:
            reactor.addReader(fd)
            self._wakeup = fd
        else:
            self._wakeup = _ReactorCall(reactor, monotonic, self._run)

    @property
    def uses_timerfd(self) -> bool:
        return isinstance(self._wakeup, _TimerFD)

    def seconds(self) -> float:
        return self._monotonic()

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        call = MonotonicDelayedCall(self, self.seconds() + max(delay, 0.0), callable, args, kw)
        self._live += 1
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return [c for _, gen, c in self._heap if c.active() and gen == c.generation]

    def stop(self) -> None:
        """Cancel every pending call and let go of the timer descriptor."""
        for call in self.getDelayedCalls():
            call.cancel()
        self._heap.clear()
        self._wakeup.close(self._reactor)
        self._armed = None

    # -- internals ----------------------------------------------------------------

    def _push(self, call: MonotonicDelayedCall) -> None:
        self._seq += 1
        call.generation = self._seq
        heapq.heappush(self._heap, (call.time, self._seq, call))
        if not self._running:
            self._rearm()

    def _cancelled(self, call: MonotonicDelayedCall) -> None:
        self._live -= 1
        if not self._running:
            self._rearm()

    def _rearm(self) -> None:
        heap = self._heap
        while heap and (not heap[0][2].active() or heap[0][1] != heap[0][2].generation):
            heapq.heappop(heap)
        when = heap[0][0] if heap else None
        if when != self._armed:
            self._armed = when
            self._wakeup.arm(when)
        elif when is not None and isinstance(self._wakeup, _ReactorCall):
            # re-arming from a fresh reading of both clocks is what brings a
            # fallback timer back after a step of the wall clock
            self._wakeup.arm(when)

    def _run(self) -> None:
        """Run every call due by the monotonic clock, each in deadline order."""
        self._armed = None
        self._running = True
        try:
            heap = self._heap
            while heap:
                when, gen, call = heap[0]
                if not call.active() or gen != call.generation:
                    heapq.heappop(heap)
                    continue
                if when > self._monotonic():
                    break
                heapq.heappop(heap)
                call.called = True
                self._live -= 1
                try:
                    call.func(*call.args, **call.kw)
                except Exception:
                    self.log.failure("timer call {call!r}", Failure(), call=call.func)
        finally:
            self._running = False
        self._rearm()


class _ReactorCall:
    """The fallback wake-up: one reactor call, re-armed to the next deadline."""

    def __init__(self, reactor: Any, monotonic: Monotonic, run: Callable[[], None]) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self._run = run
        self._call: IDelayedCall | None = None

    def arm(self, when: float | None) -> None:
        if when is None:
            self.close(self._reactor)
            return
        delay = max(0.0, when - self._monotonic())
        if self._call is not None and self._call.active():
            self._call.reset(delay)
        else:
            self._call = self._reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._run()

    def close(self, reactor: Any) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


@implementer(IReadDescriptor)
class _TimerFD:
    """A Linux timerfd on CLOCK_MONOTONIC, watched by the reactor like a socket."""

    _libc: Any = None

    def __init__(self, fd: int, run: Callable[[], None]) -> None:
        self._fd = fd
        self._run = run

    @classmethod
    def create(cls, run: Callable[[], None]) -> _TimerFD | None:
        if not sys.platform.startswith("linux"):
            return None
        if time.get_clock_info("monotonic").implementation != "clock_gettime(CLOCK_MONOTONIC)":
            return None
        if cls._libc is None:
            name = ctypes.util.find_library("c")
            if name is None:
                return None
            cls._libc = ctypes.CDLL(name, use_errno=True)
        fd = cls._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return None
        return cls(fd, run)

    def arm(self, when: float | None) -> None:
        spec = _Itimerspec()
        if when is not None:
            when = max(when, 1e-6)  # an all-zero value would disarm the timer
            seconds = int(when)
            spec.it_value.tv_sec = seconds
            spec.it_value.tv_nsec = min(int((when - seconds) * 1e9), 999_999_999)
        flags = _TFD_TIMER_ABSTIME if when is not None else 0
        if self._libc.timerfd_settime(self._fd, flags, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        try:
            os.read(self._fd, 8)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            return  # re-armed since it fired: nothing is due yet
        self._run()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "MonotonicTimers"

    def close(self, reactor: Any) -> None:
        if self._fd >= 0:
            reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1
