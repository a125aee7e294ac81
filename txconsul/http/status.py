# -*- test-case-name: txconsul.test.http.test_status -*-
"""``/v1/status/leader`` and ``/v1/status/peers``: who leads, and who votes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from klein import Klein
from twisted.web.iweb import IRequest

from txconsul.http.app import router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "status")

    @route("/v1/status/leader", methods=["GET"])
    def leader(request: IRequest) -> bytes:
        api.check_dc(request)
        return api.json(request, api.agent.consensus.leader_address())

    @route("/v1/status/peers", methods=["GET"])
    def peers(request: IRequest) -> bytes:
        api.check_dc(request)
        return api.json(request, api.agent.consensus.peers())
