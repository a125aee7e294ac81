"""Bounded polling for tests that wait on real sockets or processes (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater


async def poll_until(
    clock: IReactorTime,
    condition: Callable[[], Any],
    limit: float,
    interval: float = 0.05,
) -> bool:
    """
    Check ``condition`` (a plain callable or one returning an awaitable) every
    ``interval`` seconds until it is true or ``limit`` seconds have passed.

    :return: whether it became true; the caller fails with its own message.
    """
    end = time.monotonic() + limit
    while True:
        result = condition()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return True
        if time.monotonic() > end:
            return False
        await deferLater(clock, interval, lambda: None)
