# -*- test-case-name: txconsul.test.agent.test_cluster -*-
"""``/v1/operator/raft/configuration`` and ``DELETE /v1/operator/raft/peer``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred, fail
from twisted.web.iweb import IRequest

from txconsul.errors import BadRequest, TxConsulError
from txconsul.http.app import arg, router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "operator")

    @route("/v1/operator/raft/configuration", methods=["GET"])
    def configuration(request: IRequest) -> bytes:
        api.check_dc(request)
        agent = api.agent
        if agent.servers is not None:
            return api.json(request, agent.servers.configuration())
        # the dev agent's one-server log
        c = agent.config
        consensus = agent.consensus
        leader = consensus.leader_address()
        servers: list[dict[str, Any]] = [
            {
                "ID": agent.node_id if address == c.rpc_address else address,
                "Node": c.node_name if address == c.rpc_address else "(unknown)",
                "Address": address,
                "Leader": address == leader,
                "Voter": True,
                "ProtocolVersion": "3",
            }
            for address in consensus.peers()
        ]
        return api.json(request, {"Servers": servers, "Index": 1})

    @route("/v1/operator/raft/peer", methods=["DELETE"])
    def remove_peer(request: IRequest) -> Deferred[bytes]:
        api.check_dc(request)
        address = arg(request, b"address")
        if not address:
            return fail(BadRequest("Must specify ?id with server id or ?address with IP:port"))
        servers = api.agent.servers
        if servers is None:
            return fail(TxConsulError("This agent does not run Raft with peers to remove"))
        return servers.remove_peer(address).addCallback(lambda _: b"")
