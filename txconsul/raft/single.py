# -*- test-case-name: txconsul.test.state.test_fsm -*-
"""
A one-server log: each command gets the next index and is applied at once.

Only client agents still use it, until they forward to servers; every server
(``--dev`` included) runs Raft. It has the same interface as Raft
(``txconsul.interfaces.IConsensus``), so the HTTP and state code never know
which one they talk to.
"""

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from txconsul.interfaces import IConsensus
from txconsul.state.fsm import FSM


@implementer(IConsensus)
class SingleNodeLog:
    """The log of a single server that is always its own leader."""

    def __init__(self, fsm: FSM, address: str) -> None:
        self._fsm = fsm
        self._address = address

    @property
    def index(self) -> int:
        return self._fsm.store.last_index

    def apply(self, command: dict[str, Any]) -> "Deferred[Any]":
        index = self._fsm.store.last_index + 1
        try:
            result = self._fsm.apply(index, command)
        except Exception as e:
            return fail(e)
        return succeed(result)

    def is_leader(self) -> bool:
        return True

    def leader_address(self) -> str:
        return self._address

    def peers(self) -> list[str]:
        return [self._address]

    def last_contact(self) -> float:
        return 0.0
