# -*- test-case-name: txconsul.test.rpc.test_errors -*-
"""
The one mapping between txconsul's exceptions and RPC error strings.

A server answers a failed request with ``Error`` set to ``"<Prefix>"`` or
``"<Prefix>: <message>"``; the client turns the string back into the same
exception type with the same message, so ``NotFound`` raised by a handler on
the leader is ``NotFound`` in the client agent's HTTP code. Where Consul has a
well-known text (``"No cluster leader"``, ``"Permission denied"``, ``"No path
to datacenter"``) we use it. An error string no entry claims becomes
``RemoteError``.

Types that carry more than a message have their own entry: ``NotLeader``
names the leader, ``TxnFailed`` carries its list of failed operations (as
JSON), and Raft's ``LeadershipLost`` (a ``NoLeader`` whose write may or may
not have committed) stays apart from plain ``NoLeader`` so that nobody retries
it as if it had never been applied. Other packages add their own types with
``register_error``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs

from txconsul.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NoLeader,
    NotFound,
    PermissionDenied,
    TooLarge,
    TxConsulError,
)
from txconsul.raft.core import NotLeader
from txconsul.raft.messages import MalformedFrame
from txconsul.raft.node import LeadershipLost
from txconsul.state.fsm import TxnFailed


class UnknownMethod(BadRequest):
    """The server has no handler of that name."""

    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.method = method


class NoServers(NoLeader):
    """A client agent knows no server of its datacenter (none seen on gossip yet)."""


class NoPathToDatacenter(TxConsulError):
    """No server of the named datacenter is known or reachable."""

    code = 500


class RPCError(TxConsulError):
    """A call that failed on the way rather than on the server."""

    code = 500


class RPCConnectError(RPCError):
    """The server could not be reached; the request was never sent, so a retry is safe."""


class RPCConnectionLost(RPCError):
    """The connection closed with the request in flight: it may or may not have been applied."""


class RPCTimeout(RPCError):
    """No answer within the call's timeout: the request may or may not have been applied."""


class RemoteError(TxConsulError):
    """A server's error string that no registered type claims."""


@attrs.frozen
class _Entry:
    cls: type[TxConsulError]
    prefix: str
    build: Callable[[str], TxConsulError]
    message: Callable[[TxConsulError], str]
    separator: str
    default_build: bool


def _message(error: TxConsulError) -> str:
    return str(error)


_by_class: dict[type[BaseException], _Entry] = {}
_entries: list[_Entry] = []


def register_error(
    cls: type[TxConsulError],
    prefix: str,
    build: Callable[[str], TxConsulError] | None = None,
    message: Callable[[TxConsulError], str] = _message,
    separator: str = ": ",
) -> None:
    """
    Send ``cls`` (and subclasses without an entry of their own) as ``prefix``.

    :param build: makes the exception from the message part (default ``cls(message)``).
    :param message: the message part of an exception (default ``str(error)``).
    """
    entry = _Entry(cls, prefix, build or cls, message, separator, build is None)
    old = _by_class.pop(cls, None)
    if old is not None:
        _entries.remove(old)
    _by_class[cls] = entry
    _entries.append(entry)
    # longest prefix first, so "No cluster leader" never claims a longer text it begins
    _entries.sort(key=lambda e: len(e.prefix), reverse=True)


def unregister_error(cls: type[TxConsulError]) -> None:
    """Forget the entry of ``cls`` (tests)."""
    entry = _by_class.pop(cls, None)
    if entry is not None:
        _entries.remove(entry)


def _not_leader_message(error: TxConsulError) -> str:
    return error.leader if isinstance(error, NotLeader) else ""


def _txn_errors(error: TxConsulError) -> str:
    return json.dumps(error.errors if isinstance(error, TxnFailed) else [])


def _txn_failed(text: str) -> TxConsulError:
    try:
        errors = json.loads(text)
    except ValueError:
        errors = None
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        return RemoteError(f"Transaction failed: {text}")
    return TxnFailed(errors)


register_error(TxConsulError, "Internal error")
register_error(BadRequest, "Bad request")
register_error(PermissionDenied, "Permission denied")
register_error(NotFound, "Not found")
register_error(MethodNotAllowed, "Method not allowed")
register_error(Conflict, "Conflict")
register_error(TooLarge, "Too large")
register_error(NoLeader, "No cluster leader")
register_error(LeadershipLost, "Leadership lost")
register_error(TxnFailed, "Transaction failed", _txn_failed, _txn_errors)
register_error(NoServers, "No known Consul servers")
register_error(NoPathToDatacenter, "No path to datacenter")
register_error(NotLeader, "Not the leader", NotLeader, _not_leader_message)
register_error(MalformedFrame, "Malformed frame")
register_error(UnknownMethod, "rpc: can't find method", UnknownMethod, separator=" ")
register_error(RPCError, "RPC failed")
register_error(RPCConnectError, "RPC connect failed")
register_error(RPCConnectionLost, "RPC connection lost")
register_error(RPCTimeout, "RPC timed out")


def error_to_wire(error: BaseException) -> str:
    """The ``Error`` string for ``error``; anything outside the family is an internal error."""
    for cls in type(error).__mro__:
        entry = _by_class.get(cls)
        if entry is not None:
            assert isinstance(error, TxConsulError)
            break
    else:
        return f"Internal error: {type(error).__name__}: {error}"
    text = entry.message(error)
    if not text or text == entry.prefix:
        return entry.prefix
    return f"{entry.prefix}{entry.separator}{text}"


def error_from_wire(text: str) -> TxConsulError:
    """The exception a server's ``Error`` string stands for."""
    for entry in _entries:
        if text == entry.prefix:
            return entry.build(entry.prefix if entry.default_build else "")
        if text.startswith(entry.prefix + entry.separator):
            return entry.build(text[len(entry.prefix) + len(entry.separator) :])
    return RemoteError(text)
