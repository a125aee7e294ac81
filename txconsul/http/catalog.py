# -*- test-case-name: txconsul.test.http.test_catalog -*-
"""
``/v1/catalog/*``: register and deregister entries, list nodes and services.

Registering through the catalog only writes records; nothing runs the checks
it names (that is the job of the agent that owns them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul.agent.definitions import CHECK_STATES, folded
from txconsul.errors import BadRequest
from txconsul.http.app import args, read_json, router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi

CATALOG = ("nodes", "services", "checks")

Row = dict[str, Any]


def _s(d: Mapping[str, Any], key: str, what: str) -> str:
    value = d.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a string")
    return value


def _map(d: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"Request decode failed: {what}.{key} must be an object")
    return dict(value)


def _str_map(d: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = _map(d, key, what)
    if not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"Request decode failed: {what}.{key} must map names to strings")
    return value


def _strings(d: Mapping[str, Any], key: str, what: str) -> list[str]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a list of strings")
    return value


def parse_catalog_check(body: object, node: str, what: str) -> Row:
    c = folded(body, what)
    status = _s(c, "status", what) or "critical"
    if status not in CHECK_STATES:
        raise BadRequest(f"Invalid check status: {status!r}")
    name = _s(c, "name", what)
    cid = _s(c, "checkid", what) or _s(c, "id", what) or name
    if not cid:
        raise BadRequest("Missing check name")
    definition = _map(c, "definition", what)
    return {
        "Node": node,
        "CheckID": cid,
        "Name": name or cid,
        "Notes": _s(c, "notes", what),
        "Status": status,
        "Output": _s(c, "output", what),
        "ServiceID": _s(c, "serviceid", what),
        "Type": _s(c, "type", what),
        "Definition": definition,
    }


def parse_register(body: object, datacenter: str) -> Row:
    """A catalog registration body as the FSM's register request."""
    d = folded(body, "registration")
    node = _s(d, "node", "registration")
    if not node:
        raise BadRequest("Must provide node")
    address = _s(d, "address", "registration")
    skip = False if d.get("skipnodeupdate") is None else d["skipnodeupdate"]
    if not isinstance(skip, bool):
        raise BadRequest("Request decode failed: SkipNodeUpdate must be a boolean")
    request: Row = {
        "ID": _s(d, "id", "registration"),
        "Node": node,
        "Address": address,
        "Datacenter": datacenter,
        "TaggedAddresses": _str_map(d, "taggedaddresses", "registration"),
        "NodeMeta": _str_map(d, "nodemeta", "registration"),
        "SkipNodeUpdate": skip,
        "Service": None,
        "Checks": [],
    }
    if d.get("service") is not None:
        s = folded(d["service"], "Service")
        name = _s(s, "service", "Service")
        if not name:
            raise BadRequest("Must provide service name")
        port = 0 if s.get("port") is None else s["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise BadRequest("Request decode failed: Service.Port must be a port number")
        weights = folded(s.get("weights") or {"passing": 1, "warning": 1}, "Service.Weights")
        for w in ("passing", "warning"):
            if isinstance(weights.get(w), bool) or not isinstance(weights.get(w, 1), int):
                raise BadRequest(f"Request decode failed: Service.Weights.{w} must be an integer")
        request["Service"] = {
            "ID": _s(s, "id", "Service") or name,
            "Service": name,
            "Tags": _strings(s, "tags", "Service"),
            "Address": _s(s, "address", "Service"),
            "Meta": _str_map(s, "meta", "Service"),
            "Port": port,
            "Weights": {
                "Passing": weights.get("passing", 1),
                "Warning": weights.get("warning", 1),
            },
            "EnableTagOverride": bool(s.get("enabletagoverride")),
            "TaggedAddresses": _map(s, "taggedaddresses", "Service"),
            "Kind": _s(s, "kind", "Service"),
        }
    checks = []
    if d.get("check") is not None:
        checks.append(parse_catalog_check(d["check"], node, "Check"))
    more = d.get("checks")
    if more is not None:
        if not isinstance(more, list):
            raise BadRequest("Request decode failed: Checks must be a list")
        checks.extend(parse_catalog_check(c, node, f"Checks[{i}]") for i, c in enumerate(more))
    request["Checks"] = checks
    if not address and not skip:
        raise BadRequest("Must provide address")
    return request


def service_node(node: Row, service: Row) -> Row:
    """One instance as /v1/catalog/service lists it."""
    out: Row = {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": service.get("Kind", ""),
        "ServiceID": service["ID"],
        "ServiceName": service["Service"],
        "ServiceTags": service["Tags"],
        "ServiceAddress": service["Address"],
        "ServiceWeights": service["Weights"],
        "ServiceMeta": service["Meta"],
        "ServicePort": service["Port"],
        "ServiceEnableTagOverride": service["EnableTagOverride"],
        "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": service["CreateIndex"],
        "ModifyIndex": service["ModifyIndex"],
    }
    if service.get("TaggedAddresses"):
        out["ServiceTaggedAddresses"] = service["TaggedAddresses"]
    return out


def node_meta_filter(request: IRequest) -> list[tuple[str, str]]:
    pairs = []
    for item in args(request, b"node-meta"):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise BadRequest(f"Invalid node-meta filter {item!r}: want key:value")
        pairs.append((key, value))
    return pairs


def meta_matches(node: Row, pairs: list[tuple[str, str]]) -> bool:
    meta = node["Meta"]
    return all(meta.get(k) == v for k, v in pairs)


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "catalog")

    def dc() -> str:
        return str(api.agent.config.datacenter)

    @route("/v1/catalog/register", methods=["PUT", "POST"])
    def register(request: IRequest) -> Deferred[bytes]:
        api.check_dc(request)
        body = parse_register(read_json(request), dc())
        return api.apply(request, {"Type": "register", "Request": body})

    @route("/v1/catalog/deregister", methods=["PUT", "POST"])
    def deregister(request: IRequest) -> Deferred[bytes]:
        api.check_dc(request)
        d = folded(read_json(request), "deregistration")
        node = _s(d, "node", "deregistration")
        if not node:
            raise BadRequest("Must provide node")
        body = {
            "Node": node,
            "ServiceID": _s(d, "serviceid", "deregistration"),
            "CheckID": _s(d, "checkid", "deregistration"),
        }
        return api.apply(request, {"Type": "deregister", "Request": body})

    @route("/v1/catalog/datacenters", methods=["GET"])
    def datacenters(request: IRequest) -> bytes:
        return api.json(request, [dc()])

    @route("/v1/catalog/nodes", methods=["GET"])
    def nodes(request: IRequest) -> Any:
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            rows = [n for n in c.node_list() if meta_matches(n, meta)]
            return max(c.nodes_index, 1), rows

        return api.read(request, ["nodes"], run)

    @route("/v1/catalog/services", methods=["GET"])
    def services(request: IRequest) -> Any:
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            if not meta:
                return max(c.services_index, 1), c.service_tags()
            out: dict[str, list[str]] = {}
            for node_name, on_node in c.services.items():
                if not meta_matches(c.nodes[node_name], meta):
                    continue
                for svc in on_node.values():
                    tags = out.setdefault(svc["Service"], [])
                    tags.extend(t for t in svc["Tags"] if t not in tags)
            return max(c.services_index, 1), {k: sorted(v) for k, v in sorted(out.items())}

        return api.read(request, CATALOG, run)

    @route("/v1/catalog/service/<path:name>", methods=["GET"])
    def service(request: IRequest, name: str) -> Any:
        tags = args(request, b"tag")
        meta = node_meta_filter(request)

        def run() -> tuple[int, Any]:
            c = api.store.catalog
            rows = [
                service_node(node, svc)
                for node, svc in c.instances(name, tags)
                if meta_matches(node, meta)
            ]
            return max(c.services_index, c.nodes_index, 1), rows

        return api.read(request, ("nodes", "services"), run)

    @route("/v1/catalog/node/<path:name>", methods=["GET"])
    def node(request: IRequest, name: str) -> Any:
        def run() -> tuple[int, Any]:
            c = api.store.catalog
            index = max(c.services_index, c.nodes_index, 1)
            row = c.nodes.get(name)
            if row is None:
                return index, None
            services = c.node_services(name)
            return index, {
                "Node": row,
                "Services": {sid: services[sid] for sid in sorted(services)},
            }

        return api.read(request, ("nodes", "services"), run)
