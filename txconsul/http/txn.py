# -*- test-case-name: txconsul.test.http.test_txn -*-
"""
``/v1/txn``: several KV operations applied all together or not at all.

A transaction of reads only is answered from the store without going through
the log, as Consul does; one that writes is one log command, and is rolled
back whole (409 with the failed operations) if any of its operations fails.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul.agent.definitions import folded
from txconsul.errors import BadRequest, TooLarge
from txconsul.http.app import read_json, router
from txconsul.state.fsm import KV_READ_VERBS, KV_VERBS, TxnFailed

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi

MAX_OPS = 128


def parse_ops(body: object, max_value: int) -> list[dict[str, Any]]:
    """Check a transaction body and turn it into FSM KV operations."""
    if not isinstance(body, list):
        raise BadRequest("Failed to parse body: the transaction must be a JSON list")
    if len(body) > MAX_OPS:
        raise TooLarge(f"Transaction contains too many operations ({len(body)} > {MAX_OPS})")
    ops = []
    for i, item in enumerate(body):
        op = folded(item, f"operation {i}")
        if "kv" not in op:
            kinds = ", ".join(sorted(op)) or "nothing"
            raise BadRequest(
                f"Failed to parse body: operation {i} must be a KV operation, not {kinds}"
            )
        kv = folded(op["kv"], f"operation {i}.KV")
        verb = kv.get("verb")
        if not isinstance(verb, str) or verb not in KV_VERBS:
            raise BadRequest(f"Failed to parse body: operation {i}: unknown KV verb {verb!r}")
        key = kv.get("key", "")
        if not isinstance(key, str):
            raise BadRequest(f"Failed to parse body: operation {i}: Key must be a string")
        if not key and verb not in ("get-tree", "delete-tree"):
            raise BadRequest(f"Failed to parse body: operation {i}: missing key")
        value = kv.get("value")
        raw: bytes | None = None
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f"Failed to parse body: operation {i}: Value must be base64")
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(
                    f"Failed to parse body: operation {i}: Value is not valid base64"
                ) from None
            if len(raw) > max_value:
                raise TooLarge(
                    f"Value for key {key!r} is too large ({len(raw)} > {max_value} bytes)"
                )
        numbers = {}
        for name in ("flags", "index"):
            n = kv.get(name, 0) or 0
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise BadRequest(
                    f"Failed to parse body: operation {i}: {name.title()} must be an unsigned integer"
                )
            numbers[name] = n
        session = kv.get("session") or ""
        if not isinstance(session, str):
            raise BadRequest(f"Failed to parse body: operation {i}: Session must be a string")
        if verb in ("lock", "unlock", "check-session") and not session:
            raise BadRequest(f"Failed to parse body: operation {i}: {verb} needs a Session")
        ops.append(
            {
                "Verb": verb,
                "Key": key,
                "Value": raw or None,
                "Flags": numbers["flags"],
                "Index": numbers["index"],
                "Session": session,
            }
        )
    return ops


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "txn")

    @route("/v1/txn", methods=["PUT", "POST"])
    def txn(request: IRequest) -> bytes | Deferred[bytes]:
        api.check_dc(request)
        try:
            body = read_json(request)
        except BadRequest as e:
            # Consul's txn endpoint words its decode errors this way.
            raise BadRequest(
                str(e).replace("Request decode failed", "Failed to parse body")
            ) from None
        ops = parse_ops(body, api.agent.config.kv_max_value_size)
        if all(op["Verb"] in KV_READ_VERBS for op in ops):
            # a read like any other (consistency modes included), but never blocking
            opts = attrs.evolve(api.query_options(request), index=0)

            def run() -> tuple[int, Any]:
                results, errors = api.agent.fsm.txn_ops(0, ops)
                if errors:
                    raise TxnFailed(errors)
                return api.store.last_index, {"Results": results, "Errors": None}

            return api.read(request, (), run, opts)
        return api.apply(request, {"Type": "txn", "Ops": ops})
