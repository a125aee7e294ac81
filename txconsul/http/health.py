# -*- test-case-name: txconsul.test.http.test_health -*-
"""
``/v1/health/*``: checks by node, service and state, and healthy instances.

A service entry carries the node-level checks (``serfHealth``, maintenance)
beside the service's own, and ``?passing`` drops any entry with a check that
is not passing, as Consul does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.web.iweb import IRequest

from txconsul.errors import BadRequest
from txconsul.http.app import arg, args, flag, parse_bool, router
from txconsul.http.catalog import CATALOG, meta_matches, node_meta_filter

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi

STATES = ("any", "passing", "warning", "critical")


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "health")

    def index() -> int:
        return int(api.store.catalog_index())

    @route("/v1/health/node/<path:name>", methods=["GET"])
    def node(request: IRequest, name: str) -> Any:
        def run() -> tuple[int, Any]:
            return index(), api.store.catalog.node_checks(name)

        return api.read(request, ("nodes", "checks"), run)

    @route("/v1/health/checks/<path:name>", methods=["GET"])
    def checks(request: IRequest, name: str) -> Any:
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            rows = [
                row
                for row in c.service_checks(name)
                if not meta or meta_matches(c.nodes[row["Node"]], meta)
            ]
            return index(), rows

        return api.read(request, CATALOG, run)

    @route("/v1/health/state/<state>", methods=["GET"])
    def state(request: IRequest, state: str) -> Any:
        if state not in STATES:
            raise BadRequest(f"Invalid state {state!r}: want one of {', '.join(STATES)}")
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            rows = [
                row
                for row in c.checks_in_state(state)
                if not meta or meta_matches(c.nodes[row["Node"]], meta)
            ]
            return index(), rows

        return api.read(request, CATALOG, run)

    @route("/v1/health/service/<path:name>", methods=["GET"])
    def service(request: IRequest, name: str) -> Any:
        passing = False
        if flag(request, b"passing"):
            value = arg(request, b"passing") or ""
            passing = True if value == "" else parse_bool(value, "passing")
        tags = args(request, b"tag")
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            out = []
            for node_row, svc in c.instances(name, tags):
                if meta and not meta_matches(node_row, meta):
                    continue
                node_checks = c.instance_checks(node_row["Node"], svc["ID"])
                if passing and any(ch["Status"] != "passing" for ch in node_checks):
                    continue
                out.append({"Node": node_row, "Service": svc, "Checks": node_checks})
            return index(), out

        return api.read(request, CATALOG, run)
