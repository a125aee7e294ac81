# -*- test-case-name: txconsul.test.gossip.test_memberlist -*-
"""
Member states of memberlist and the transitions between them, in one place.

The numbers are the wire values of push/pull ``State`` (spec section 2).
"""

from __future__ import annotations

import enum


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


#: Which state may follow which; anything else is a bug in the core.
MAY_BECOME: dict[MemberState, frozenset[MemberState]] = {
    MemberState.ALIVE: frozenset({MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT}),
    MemberState.SUSPECT: frozenset({MemberState.ALIVE, MemberState.DEAD, MemberState.LEFT}),
    MemberState.DEAD: frozenset({MemberState.ALIVE}),
    MemberState.LEFT: frozenset({MemberState.ALIVE}),
}


def check_transition(old: MemberState, new: MemberState) -> None:
    """Raise ``AssertionError`` for a transition the table does not allow."""
    if old != new and new not in MAY_BECOME[old]:
        raise AssertionError(f"member state {old.name} may not become {new.name}")


def dead_or_left(state: MemberState) -> bool:
    return state in (MemberState.DEAD, MemberState.LEFT)
