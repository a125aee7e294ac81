# -*- test-case-name: txconsul.test.gossip.test_lifeguard -*-
"""
Lifeguard's local health awareness: a node that misses acks or has to refute
rumours about itself slows its own probing down, instead of accusing others.
"""

from __future__ import annotations

import attrs


@attrs.define
class Awareness:
    """A score in ``[0, max_multiplier - 1]``; timeouts are scaled by ``score + 1``."""

    max_multiplier: int = 8
    score: int = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
