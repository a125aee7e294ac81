# -*- test-case-name: txconsul.test.gossip.test_broadcast -*-
"""
The transmit-limited broadcast queue that piggybacks gossip on other packets.

Each broadcast is sent ``mult * ceil(log10(n + 1))`` times, fewest-sent first,
larger first among equals, then newest; a keyed broadcast replaces the queued
one with the same key (memberlist's node-named messages).
"""

from __future__ import annotations

import bisect
import math
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")


def retransmit_limit(mult: int, nodes: int) -> int:
    return mult * math.ceil(math.log10(nodes + 1))


@attrs.define(eq=False)
class _Item(Generic[T]):
    key: str | None
    message: T
    size: int
    order: int
    transmits: int = 0

    def rank(self) -> tuple[int, int, int, _Item[T]]:
        """Fewest sent first, then larger, then newer (order is unique)."""
        return (self.transmits, -self.size, -self.order, self)


@attrs.define
class BroadcastQueue(Generic[T]):
    """
    Items kept sorted by rank, so taking a packet's worth looks only at the
    front of the queue instead of sorting thousands of rumours per packet.
    """

    retransmit_mult: int
    max_depth: int = 4096
    _ranked: list[tuple[int, int, int, _Item[T]]] = attrs.field(factory=list)
    _by_key: dict[str, _Item[T]] = attrs.field(factory=dict)
    _counter: int = 0
    _min_size: int = 1 << 30

    def __len__(self) -> int:
        return len(self._ranked)

    def queue(self, message: T, size: int, key: str | None = None) -> None:
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._discard(old)
        self._counter += 1
        item = _Item(key, message, size, self._counter)
        bisect.insort(self._ranked, item.rank())
        self._min_size = min(self._min_size, size)
        if key is not None:
            self._by_key[key] = item
        if len(self._ranked) > self.max_depth:
            self._prune()

    def _discard(self, item: _Item[T]) -> None:
        rank = item.rank()
        i = bisect.bisect_left(self._ranked, rank[:3])
        if i < len(self._ranked) and self._ranked[i][3] is item:
            del self._ranked[i]

    def _prune(self) -> None:
        # drop the most transmitted, oldest first, down to 7/8 of the depth:
        # pruning one item per queued one sorted the whole queue each time,
        # quadratic when a push/pull brings thousands of new members
        ranked = sorted((r[3] for r in self._ranked), key=lambda i: (-i.transmits, i.order))
        for item in ranked[: len(self._ranked) - self.max_depth * 7 // 8]:
            self._remove(item)

    def _remove(self, item: _Item[T]) -> None:
        self._discard(item)
        if item.key is not None and self._by_key.get(item.key) is item:
            del self._by_key[item.key]

    def get(self, overhead: int, limit: int, nodes: int) -> list[T]:
        """Take what fits in ``limit`` bytes, ``overhead`` more per message."""
        return self.take(overhead, limit, nodes)[0]

    def take(self, overhead: int, limit: int, nodes: int) -> tuple[list[T], int]:
        """Like ``get``, and also say how many bytes (overheads included) were taken."""
        if not self._ranked or limit <= overhead:
            return [], 0
        transmit_limit = retransmit_limit(self.retransmit_mult, nodes)
        smallest = self._min_size + overhead
        used = 0
        taken: list[int] = []
        ranked = self._ranked
        left = 1 << 30  # the smallest item left in the queue, once all were seen
        for i, (_, _, _, item) in enumerate(ranked):
            if limit - used < smallest:
                break
            cost = item.size + overhead
            if used + cost > limit:
                left = min(left, item.size)
                continue
            used += cost
            taken.append(i)
        else:
            # every item was looked at: the lower bound that ends the scan early
            # becomes exact again (a small message long gone no longer keeps
            # every later packet scanning the whole queue)
            self._min_size = left
        items = [ranked[i][3] for i in taken]
        for i in reversed(taken):
            del ranked[i]
        out = []
        for item in items:
            out.append(item.message)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                if item.key is not None and self._by_key.get(item.key) is item:
                    del self._by_key[item.key]
            else:
                bisect.insort(ranked, item.rank())
                self._min_size = min(self._min_size, item.size)
        return out, used

    def clear(self) -> None:
        self._ranked.clear()
        self._by_key.clear()
