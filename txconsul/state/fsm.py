# -*- test-case-name: txconsul.test.state.test_fsm -*-
"""
The FSM: turns committed log commands into state store changes.

A command is a plain dict (so the log can carry it as msgpack) with a
``Type``; ``apply(index, command)`` runs it at that log index and returns its
result, or raises a ``txconsul.errors`` exception that the caller reports.
Every server applies the same commands in the same order and ends up with
the same store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txconsul.errors import BadRequest, TxConsulError
from txconsul.state.kv import KVEntry
from txconsul.state.store import StateStore

Command = dict[str, Any]

KV_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"})
KV_READ_VERBS = frozenset(
    {"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"}
)
KV_VERBS = KV_WRITE_VERBS | KV_READ_VERBS


class TxnFailed(TxConsulError):
    """A transaction was rolled back; ``errors`` says which operations failed."""

    code = 409

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("transaction rolled back")
        self.errors = errors


class FSM:
    """Applies commands to one StateStore."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._handlers: dict[str, Callable[[int, Command], Any]] = {
            "kv": self._kv_op,
            "txn": self._apply_txn,
            "register": self._apply_register,
            "deregister": self._apply_deregister,
        }

    def apply(self, index: int, command: Command) -> Any:
        handler = self._handlers.get(command.get("Type", ""))
        self.store.last_index = max(self.store.last_index, index)
        if handler is None:
            raise BadRequest(f"unknown command type {command.get('Type')!r}")
        return handler(index, command)

    # -- KV -----------------------------------------------------------------

    def _kv_op(self, index: int, op: Command) -> Any:
        kv = self.store.kv
        verb = op["Verb"]
        key = op.get("Key", "")
        value = op.get("Value")
        flags = int(op.get("Flags") or 0)
        if verb == "set":
            kv.set(index, key, value, flags)
            return True
        if verb == "cas":
            return kv.cas(index, key, value, flags, int(op.get("Index") or 0))
        if verb == "lock":
            session = op.get("Session") or ""
            if session not in self.store.sessions:
                raise TxConsulError(f"invalid session {session!r}")
            return kv.lock(index, key, value, flags, session)
        if verb == "unlock":
            return kv.unlock(index, key, value, flags, op.get("Session") or "")
        if verb == "delete":
            return kv.delete(index, key)
        if verb == "delete-tree":
            return kv.delete_tree(index, key)
        if verb == "delete-cas":
            return kv.delete_cas(index, key, int(op.get("Index") or 0))
        raise BadRequest(f"unknown KV verb {verb!r}")

    # -- transactions -------------------------------------------------------

    def _apply_txn(self, index: int, command: Command) -> dict[str, Any]:
        kv = self.store.kv
        kv.begin()
        try:
            results, errors = self.txn_ops(index, command["Ops"])
        except BaseException:
            kv.rollback()
            raise
        if errors:
            kv.rollback()
            raise TxnFailed(errors)
        kv.commit()
        return {"Results": results, "Errors": None}

    def txn_ops(
        self, index: int, ops: list[Command]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Run KV operations in order; return their results and errors."""
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        kv = self.store.kv
        for i, op in enumerate(ops):
            verb = op["Verb"]
            key = op.get("Key", "")
            try:
                if verb in ("get", "get-or-empty", "check-index", "check-session"):
                    entry = kv.get(key)
                    if entry is None:
                        if verb == "get-or-empty":
                            continue
                        raise TxConsulError(f"key {key!r} doesn't exist")
                    if verb == "check-index" and entry.modify_index != int(op.get("Index") or 0):
                        raise TxConsulError(
                            f"current modify index {entry.modify_index} != {op.get('Index')}"
                        )
                    if verb == "check-session" and entry.session != (op.get("Session") or None):
                        raise TxConsulError(f"key {key!r} is not locked by the session")
                    results.append(render_txn_entry(entry, verb in ("get", "get-or-empty")))
                elif verb == "get-tree":
                    for entry in kv.under(key):
                        results.append(render_txn_entry(entry, True))
                elif verb == "check-not-exists":
                    if kv.get(key) is not None:
                        raise TxConsulError(f"key {key!r} exists")
                else:
                    ok = self._kv_op(index, op)
                    if not ok:
                        raise TxConsulError(f"failed to {verb} key {key!r}")
                    if verb in ("set", "cas", "lock", "unlock"):
                        entry = kv.get(key)
                        assert entry is not None
                        results.append(render_txn_entry(entry, False))
            except TxConsulError as e:
                errors.append({"OpIndex": i, "What": str(e)})
        return results, errors

    # -- catalog ------------------------------------------------------------

    def _apply_register(self, index: int, command: Command) -> bool:
        self.store.catalog.register(index, command["Request"])
        return True

    def _apply_deregister(self, index: int, command: Command) -> bool:
        self.store.catalog.deregister(index, command["Request"])
        return True


def render_txn_entry(entry: KVEntry, with_value: bool) -> dict[str, Any]:
    return {"KV": entry.to_api(with_value)}
