# -*- test-case-name: txconsul.test.http.test_kv -*-
"""
``/v1/kv/<key>``: read, write and delete keys, with Consul's flags.

A single-key blocking query compares against the key's own ModifyIndex, and a
prefix query against the highest ModifyIndex under the prefix (tombstones
included), so watch loops wake only when what they read has changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul.errors import BadRequest, TooLarge
from txconsul.http.app import NOT_FOUND, Raw, arg, flag, read_body, router, uint_arg

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "kv")

    @route("/v1/kv/", methods=["GET"], strict_slashes=False)
    def get_root(request: IRequest) -> Any:
        return get(request, "")

    @route("/v1/kv/<path:key>", methods=["GET"])
    def get(request: IRequest, key: str) -> Any:
        opts = api.query_options(request)
        if flag(request, b"keys"):
            separator = arg(request, b"separator") or arg(request, b"seperator")

            def run_keys() -> tuple[int, Any]:
                keys = api.store.kv.keys(key, separator)
                if not keys and key:
                    return api.store.kv.prefix_index(key), NOT_FOUND
                return api.store.kv.prefix_index(key), keys

            return api.read(request, ["kvp:" + key], run_keys, opts)
        if flag(request, b"recurse"):

            def run_recurse() -> tuple[int, Any]:
                entries = api.store.kv.under(key)
                index = api.store.kv.prefix_index(key)
                if not entries:
                    return index, NOT_FOUND
                return index, [e.to_api() for e in entries]

            return api.read(request, ["kvp:" + key], run_recurse, opts)
        if not key:
            raise BadRequest("Missing key name")
        raw = flag(request, b"raw")

        def run_one() -> tuple[int, Any]:
            kv = api.store.kv
            entry = kv.get(key)
            if entry is None:
                return kv.key_index(key), NOT_FOUND
            if raw:
                return entry.modify_index, Raw(entry.value or b"")
            return entry.modify_index, [entry.to_api()]

        if raw:
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return api.read(request, ["kv:" + key], run_one, opts)

    @route("/v1/kv/", methods=["PUT", "POST"], strict_slashes=False)
    def put_root(request: IRequest) -> Any:
        raise BadRequest("Missing key name")

    @route("/v1/kv/<path:key>", methods=["PUT", "POST"])
    def put(request: IRequest, key: str) -> Deferred[bytes]:
        flags = uint_arg(request, b"flags", "flags") or 0
        given = [name for name in (b"cas", b"acquire", b"release") if flag(request, name)]
        if len(given) > 1:
            raise BadRequest("Conflicting flags: " + ", ".join(n.decode() for n in given))
        limit = api.agent.config.kv_max_value_size
        try:
            value = read_body(request, limit)
        except TooLarge:
            raise TooLarge(
                f"Request body(s) too large, max size: {limit} bytes. See kv_max_value_size."
            ) from None
        op: dict[str, Any] = {
            "Type": "kv",
            "Verb": "set",
            "Key": key,
            "Value": value or None,
            "Flags": flags,
        }
        if given == [b"cas"]:
            cas = uint_arg(request, b"cas", "cas")
            if arg(request, b"cas") == "":
                raise BadRequest("Invalid cas index")
            op["Verb"] = "cas"
            op["Index"] = cas
        elif given == [b"acquire"]:
            op["Verb"] = "lock"
            op["Session"] = arg(request, b"acquire") or ""
        elif given == [b"release"]:
            op["Verb"] = "unlock"
            op["Session"] = arg(request, b"release") or ""
        return api.apply(request, op)

    @route("/v1/kv/", methods=["DELETE"], strict_slashes=False)
    def delete_root(request: IRequest) -> Deferred[bytes]:
        if not flag(request, b"recurse"):
            raise BadRequest("Missing key name")
        return delete(request, "")

    @route("/v1/kv/<path:key>", methods=["DELETE"])
    def delete(request: IRequest, key: str) -> Deferred[bytes]:
        recurse = flag(request, b"recurse")
        has_cas = flag(request, b"cas")
        if recurse and has_cas:
            raise BadRequest("Conflicting flags: recurse, cas")
        op: dict[str, Any] = {"Type": "kv", "Verb": "delete", "Key": key}
        if recurse:
            op["Verb"] = "delete-tree"
        elif has_cas:
            cas = uint_arg(request, b"cas", "cas index")
            if not cas:
                raise BadRequest("Invalid cas index")
            op["Verb"] = "delete-cas"
            op["Index"] = cas
        return api.apply(request, op)

    # The most used endpoint of all skips Klein's routing (see APIRoot).
    api.fast_routes[b"/v1/kv/"] = {b"GET": get, b"PUT": put, b"POST": put, b"DELETE": delete}
