# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
The gossip pools over HTTP: ``/v1/agent/members``, ``join``, ``leave``,
``force-leave`` and ``/v1/operator/keyring``.

The keyring endpoints hand the operation to a server, which runs serf's
internal key queries on its WAN pool and on the LAN pool of every datacenter
(``txconsul.agent.keyring``), and answer with the members' answers summed up
as Consul does; ``GET ?local-only`` lists this agent's own keys without asking
anyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul.agent import keyring
from txconsul.agent.membership import JoinFailed
from txconsul.errors import BadRequest
from txconsul.gossip.keyring import KeyringError, decode_key
from txconsul.http.app import arg, flag, parse_bool, read_json, router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi


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
                why = membership.join_refusal(address, wan) or "no agent answered there"
                raise JoinFailed(f"Failed to join {address}: {why}")
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

    def local_only(request: IRequest) -> bool:
        """Consul's ``?local-only=<bool>`` (an empty value is not set)."""
        value = arg(request, b"local-only")
        if not value:
            return False
        try:
            return parse_bool(value, "local-only")
        except BadRequest:
            raise BadRequest(f"Error parsing local-only: invalid syntax {value!r}") from None

    def relay_factor(request: IRequest) -> int:
        return keyring.parse_relay_factor(arg(request, b"relay-factor"))

    def change(request: IRequest, op: str) -> Deferred[bytes]:
        factor = relay_factor(request)
        if local_only(request):
            raise BadRequest(
                "Invalid use of local-only: local-only can only be set for GET requests"
            )
        key = key_arg(request)

        def done(entries: list[keyring.Entry]) -> bytes:
            keyring.failures(entries)
            return b""

        return keyring.operate(agent, op, key, factor).addCallback(done)

    @route("/v1/operator/keyring", methods=["GET"])
    def list_keys(request: IRequest) -> bytes | Deferred[bytes]:
        factor = relay_factor(request)
        if local_only(request):
            return api.json(request, keyring.public(keyring.local_entries(agent)))

        def done(entries: list[keyring.Entry]) -> bytes:
            keyring.failures(entries)
            return api.json(request, keyring.public(entries))

        return keyring.operate(agent, "list", relay_factor=factor).addCallback(done)

    @route("/v1/operator/keyring", methods=["POST"])
    def install_key(request: IRequest) -> Deferred[bytes]:
        return change(request, "install")

    @route("/v1/operator/keyring", methods=["PUT"])
    def use_key(request: IRequest) -> Deferred[bytes]:
        return change(request, "use")

    @route("/v1/operator/keyring", methods=["DELETE"])
    def remove_key(request: IRequest) -> Deferred[bytes]:
        return change(request, "remove")
