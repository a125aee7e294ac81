# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
The gossip pools over HTTP: ``/v1/agent/members``, ``join``, ``leave``,
``force-leave`` and ``/v1/operator/keyring``.

All of them act on this agent's own pools. The keyring endpoints change the
keyrings of this agent only; Consul spreads them to every member with serf's
internal key queries, which txconsul does not send yet.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul.agent.membership import JoinFailed
from txconsul.errors import BadRequest, TxConsulError
from txconsul.gossip.keyring import KeyringError, decode_key
from txconsul.http.app import flag, read_json, router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "gossip")
    agent = api.agent
    membership = agent.membership

    @route("/v1/agent/members", methods=["GET"])
    def members(request: IRequest) -> bytes:
        wan = flag(request, b"wan")
        if wan and membership.wan is None:
            return api.json(request, [])
        return api.json(request, membership.members(wan))

    @route("/v1/agent/join/<path:address>", methods=["PUT", "POST"])
    def join(request: IRequest, address: str) -> Deferred[bytes]:
        wan = flag(request, b"wan")

        def joined(n: int) -> bytes:
            if not n:
                raise JoinFailed(f"Failed to join {address}: no agent answered there")
            return b""

        return membership.join([address], wan).addCallback(joined)

    @route("/v1/agent/leave", methods=["PUT", "POST"])
    def leave(request: IRequest) -> Deferred[bytes]:
        return agent.leave().addCallback(lambda _: b"")

    @route("/v1/agent/force-leave/<path:node>", methods=["PUT", "POST"])
    def force_leave(request: IRequest, node: str) -> bytes:
        membership.force_leave(node, prune=flag(request, b"prune"), wan=flag(request, b"wan"))
        return b""

    # -- keyring ----------------------------------------------------------------------

    def key_arg(request: IRequest) -> bytes:
        body = read_json(request)
        text = body.get("Key") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise BadRequest("Request decode failed: Key is required")
        try:
            return decode_key(text)
        except KeyringError as e:
            raise BadRequest(f"Invalid key: {e}") from None

    def change(request: IRequest, verb: str) -> bytes:
        key = key_arg(request)
        pools = membership.keyrings()
        if verb == "use" and any(key not in p.keyring.keys for p in pools if p.keyring):
            raise TxConsulError("Requested key is not in the keyring")
        for pool in pools:
            assert pool.keyring is not None
            try:
                getattr(pool.keyring, verb)(key)
            except KeyringError as e:
                raise TxConsulError(str(e).capitalize()) from None
        return b""

    @route("/v1/operator/keyring", methods=["GET"])
    def list_keys(request: IRequest) -> bytes:
        c = agent.config
        out: list[dict[str, Any]] = []
        for pool in membership.keyrings():
            assert pool.keyring is not None
            keys = pool.keyring.keys
            out.append(
                {
                    "WAN": pool.wan,
                    "Datacenter": c.datacenter,
                    "Segment": "",
                    "Partition": "",
                    "Keys": {_b64(k): 1 for k in keys},
                    "PrimaryKeys": {_b64(keys[0]): 1},
                    "NumNodes": 1,
                    "Messages": {},
                }
            )
        out.sort(key=lambda entry: not entry["WAN"])
        return api.json(request, out)

    @route("/v1/operator/keyring", methods=["POST"])
    def install_key(request: IRequest) -> bytes:
        return change(request, "install")

    @route("/v1/operator/keyring", methods=["PUT"])
    def use_key(request: IRequest) -> bytes:
        return change(request, "use")

    @route("/v1/operator/keyring", methods=["DELETE"])
    def remove_key(request: IRequest) -> bytes:
        return change(request, "remove")
