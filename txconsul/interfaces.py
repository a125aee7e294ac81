"""
Interfaces between the parts of the agent.

``IConsensus`` is the one door every write goes through: the single-node log
of a dev agent today, Raft tomorrow, with no change to the HTTP or state code.
"""

from typing import Any

from zope.interface import Interface


class IConsensus(Interface):
    """Orders commands into a log and applies them to the FSM."""

    def apply(command: dict[str, Any]) -> Any:
        """
        Append ``command`` to the log and apply it once committed.

        :return: a Deferred that fires with the FSM's result, or fails with
            the FSM's error.
        """

    def is_leader() -> bool:
        """Whether this server may answer default-mode reads."""

    def leader_address() -> str:
        """``ip:port`` of the current leader's RPC address, or ``""``."""

    def peers() -> list[str]:
        """``ip:port`` of every voting server."""

    def last_contact() -> float:
        """Seconds since this server last heard from the leader (0 on the leader)."""
