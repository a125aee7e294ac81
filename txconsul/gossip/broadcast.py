# -*- test-case-name: txconsul.test.gossip.test_broadcast -*-
"""
The transmit-limited broadcast queue that piggybacks gossip on other packets.

Each broadcast is sent ``mult * ceil(log10(n + 1))`` times, fewest-sent first,
larger first among equals, then newest; a keyed broadcast replaces the queued
one with the same key (memberlist's node-named messages).
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")


def retransmit_limit(mult: int, nodes: int) -> int:
    return mult * math.ceil(math.log10(nodes + 1))


@attrs.define
class _Item(Generic[T]):
    key: str | None
    message: T
    size: int
    order: int
    transmits: int = 0


@attrs.define
class BroadcastQueue(Generic[T]):
    retransmit_mult: int
    max_depth: int = 4096
    _items: dict[int, _Item[T]] = attrs.field(factory=dict)
    _by_key: dict[str, int] = attrs.field(factory=dict)
    _counter: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, message: T, size: int, key: str | None = None) -> None:
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                del self._items[old]
        self._counter += 1
        self._items[self._counter] = _Item(key, message, size, self._counter)
        if key is not None:
            self._by_key[key] = self._counter
        if len(self._items) > self.max_depth:
            self._prune()

    def _prune(self) -> None:
        # drop the most transmitted, oldest first
        ranked = sorted(self._items.values(), key=lambda i: (-i.transmits, i.order))
        for item in ranked[: len(self._items) - self.max_depth]:
            self._remove(item)

    def _remove(self, item: _Item[T]) -> None:
        del self._items[item.order]
        if item.key is not None and self._by_key.get(item.key) == item.order:
            del self._by_key[item.key]

    def get(self, overhead: int, limit: int, nodes: int) -> list[T]:
        """Take what fits in ``limit`` bytes, ``overhead`` more per message."""
        if not self._items or limit <= overhead:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, nodes)
        ranked = sorted(self._items.values(), key=lambda i: (i.transmits, -i.size, -i.order))
        used = 0
        out = []
        for item in ranked:
            cost = item.size + overhead
            if used + cost > limit:
                continue
            used += cost
            out.append(item.message)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                self._remove(item)
        return out

    def clear(self) -> None:
        self._items.clear()
        self._by_key.clear()
