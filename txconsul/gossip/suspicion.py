# -*- test-case-name: txconsul.test.gossip.test_lifeguard -*-
"""
Lifeguard's dynamic suspicion timeout: it starts long and shrinks with each
independent confirmation, so one slow accuser cannot kill a healthy node fast.
"""

from __future__ import annotations

import math

import attrs


def suspicion_timeout(mult: int, nodes: int, interval: float) -> float:
    """The minimum suspicion timeout for a cluster of ``nodes`` (spec 7.3)."""
    scale = max(1.0, math.log10(max(1.0, float(nodes))))
    scale = math.floor(scale * 1000) / 1000
    return mult * scale * interval


def expected_confirmations(suspicion_mult: int, nodes: int) -> int:
    k = suspicion_mult - 2
    return 0 if nodes - 2 < k else k


@attrs.define
class Suspicion:
    """One open suspicion of a node: its start, bounds and the confirmations so far."""

    start: float
    minimum: float
    maximum: float
    k: int
    confirmed_by: set[str]
    confirmations: int = 0

    def confirm(self, sender: str) -> bool:
        """Count a new independent accuser; :return: whether it was new."""
        if self.confirmations >= self.k or sender in self.confirmed_by:
            return False
        self.confirmed_by.add(sender)
        self.confirmations += 1
        return True

    def timeout(self) -> float:
        if self.k < 1:
            return self.minimum
        fraction = math.log(self.confirmations + 1) / math.log(self.k + 1)
        remaining = self.maximum - fraction * (self.maximum - self.minimum)
        return max(math.floor(remaining * 1000) / 1000, self.minimum)

    def deadline(self) -> float:
        return self.start + self.timeout()
