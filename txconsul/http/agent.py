# -*- test-case-name: txconsul.test.http.test_agent -*-
"""
``/v1/agent/*``: this agent's own view, services and checks.

These endpoints are local to the agent: no ``dc``, no index headers. A
registration is written to the catalog before the call returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from txconsul import CONSUL_VERSION
from txconsul.agent.definitions import (
    CHECK_STATES,
    ServiceDefinition,
    folded,
    parse_check,
    parse_service,
)
from txconsul.agent.remote import lan_servers
from txconsul.errors import BadRequest, MethodNotAllowed, NotFound
from txconsul.http.app import arg, flag, parse_bool, read_json, router

if TYPE_CHECKING:
    from txconsul.http.app import HTTPApi

#: how long ``/v1/agent/self`` on a client agent waits for a server to name the leader
LEADER_TIMEOUT = 2.0


def agent_service(service: ServiceDefinition, datacenter: str) -> dict[str, Any]:
    """A service as /v1/agent/services shows it."""
    out: dict[str, Any] = {}
    if service.kind:
        out["Kind"] = service.kind
    out.update(
        {
            "ID": service.service_id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
        }
    )
    if service.tagged_addresses:
        out["TaggedAddresses"] = {
            n: {"Address": a, "Port": p} for n, a, p in service.tagged_addresses
        }
    out["Weights"] = {"Passing": service.weights[0], "Warning": service.weights[1]}
    out["EnableTagOverride"] = service.enable_tag_override
    out["Datacenter"] = datacenter
    return out


def install(app: Klein, api: HTTPApi) -> None:
    route = router(app, "agent")
    agent = api.agent
    local = agent.local

    def check_rows() -> dict[str, Any]:
        """The agent's checks as it knows them now (output included, even
        where the catalog is still to be told), with the catalog's indexes."""
        node = agent.config.node_name
        in_catalog = api.store.catalog.checks.get(node, {})
        out = {}
        for cid in sorted(local.checks):
            state = local.checks[cid]
            service = local.services.get(state.definition.service_id)
            row = dict(
                state.catalog_row(),
                Node=node,
                ServiceName=service.name if service else "",
                ServiceTags=list(service.tags) if service else [],
                ExposedPort=0,
            )
            known = in_catalog.get(cid)
            row["CreateIndex"] = known["CreateIndex"] if known else 0
            row["ModifyIndex"] = known["ModifyIndex"] if known else 0
            out[cid] = row
        return out

    def raft_stats() -> dict[str, str]:
        servers = agent.servers
        node = None if servers is None else servers.node
        return {} if node is None else node.stats()

    def client_leader() -> Deferred[str]:
        """A client agent knows no leader itself: it asks a server (``""`` if none answers)."""
        d: Deferred[Any] = agent.remote.call(
            "Status.Leader", None, idempotent=True, timeout=LEADER_TIMEOUT
        )
        d.addTimeout(LEADER_TIMEOUT, api.clock)

        def answer(leader: Any) -> str:
            return leader if isinstance(leader, str) else ""

        return d.addCallbacks(answer, lambda _: "")

    @route("/v1/agent/self", methods=["GET"])
    def self_(request: IRequest) -> bytes | Deferred[bytes]:
        if agent.config.server:
            return self_body(request, agent.consensus.leader_address())
        return client_leader().addCallback(lambda leader: self_body(request, leader))

    def self_body(request: IRequest, leader: str) -> bytes:
        c = agent.config
        consensus = agent.consensus
        stats_consul = {
            "server": str(c.server).lower(),
            "leader": str(consensus.is_leader() and c.server).lower(),
            "leader_addr": leader,
            "bootstrap": "false",
            "known_datacenters": "1",
            "acl": "disabled",
        }
        if not c.server:
            stats_consul["known_servers"] = str(len(lan_servers(agent)))
        body = {
            "Config": {
                "Datacenter": c.datacenter,
                "PrimaryDatacenter": c.datacenter,
                "NodeName": c.node_name,
                "NodeID": agent.node_id,
                "Revision": "txconsul",
                "Server": c.server,
                "Version": CONSUL_VERSION,
            },
            # a few of Consul's runtime configuration fields, as it names them
            "DebugConfig": {
                "AdvertiseAddrLAN": c.advertise,
                "AdvertiseAddrWAN": c.advertise_wan,
                "BindAddr": c.bind_addr,
                "Datacenter": c.datacenter,
                "EncryptVerifyIncoming": c.encrypt_verify_incoming,
                "EncryptVerifyOutgoing": c.encrypt_verify_outgoing,
                "NodeName": c.node_name,
                "ServerMode": c.server,
                "TaggedAddresses": c.tagged_addresses,
            },
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": agent.member(),
            "Stats": {
                "consul": stats_consul,
                "agent": {"checks": str(len(local.checks)), "services": str(len(local.services))},
                "raft": raft_stats(),
                "serf_lan": {},
                "runtime": {},
                "build": {"version": CONSUL_VERSION, "revision": "txconsul"},
            },
            "Meta": {"consul-network-segment": ""},
            "xDS": {"SupportedProxies": {}, "Port": -1, "Ports": {"Plaintext": -1, "TLS": -1}},
        }
        return api.json(request, body)

    @route("/v1/agent/services", methods=["GET"])
    def services(request: IRequest) -> bytes:
        dc = agent.config.datacenter
        return api.json(
            request,
            {sid: agent_service(local.services[sid], dc) for sid in sorted(local.services)},
        )

    @route("/v1/agent/service/<path:sid>", methods=["GET"])
    def service(request: IRequest, sid: str) -> bytes:
        svc = local.services.get(sid)
        if svc is None and (sid == "register" or sid.startswith(("deregister/", "maintenance/"))):
            raise MethodNotAllowed(f"method {request.method.decode()} not allowed")
        if svc is None:
            raise NotFound(f"unknown service ID: {sid}")
        body = agent_service(svc, agent.config.datacenter)
        body["ContentHash"] = "%016x" % (hash(svc) & 0xFFFFFFFFFFFFFFFF)
        return api.json(request, body)

    @route("/v1/agent/checks", methods=["GET"])
    def checks(request: IRequest) -> bytes:
        return api.json(request, check_rows())

    @route("/v1/agent/service/register", methods=["PUT", "POST"])
    def register_service(request: IRequest) -> Deferred[bytes]:
        body = read_json(request)
        svc = parse_service(body)
        replace = flag(request, b"replace-existing-checks")
        return api.agent_write(
            request, local.add_service(svc, replace_existing_checks=replace, body=body)
        )

    @route("/v1/agent/service/deregister/<path:sid>", methods=["PUT", "POST"])
    def deregister_service(request: IRequest, sid: str) -> Deferred[bytes]:
        return api.agent_write(request, local.remove_service(sid))

    @route("/v1/agent/check/register", methods=["PUT", "POST"])
    def register_check(request: IRequest) -> Deferred[bytes]:
        body = read_json(request)
        check = parse_check(body)
        return api.agent_write(request, local.add_check(check, body=body))

    @route("/v1/agent/check/deregister/<path:cid>", methods=["PUT", "POST"])
    def deregister_check(request: IRequest, cid: str) -> Deferred[bytes]:
        return api.agent_write(request, local.remove_check(cid))

    def ttl_route(verb: str, status: str) -> None:
        @route(
            f"/v1/agent/check/{verb}/<path:cid>",
            methods=["PUT", "POST"],
            endpoint=f"check_{status}",
        )
        def update(request: IRequest, cid: str) -> Deferred[bytes]:
            note = arg(request, b"note") or ""
            return api.agent_write(request, local.update_ttl(cid, status, note))

    ttl_route("pass", "passing")
    ttl_route("warn", "warning")
    ttl_route("fail", "critical")

    @route("/v1/agent/check/update/<path:cid>", methods=["PUT", "POST"])
    def update_check(request: IRequest, cid: str) -> Deferred[bytes]:
        body = folded(read_json(request), "update")
        status = body.get("status")
        if status not in CHECK_STATES:
            raise BadRequest(f"Invalid check status: {status!r}")
        output = body.get("output") or ""
        if not isinstance(output, str):
            raise BadRequest("Request decode failed: Output must be a string")
        return api.agent_write(request, local.update_ttl(cid, status, output))

    def enable_arg(request: IRequest) -> tuple[bool, str]:
        value = arg(request, b"enable")
        if value is None or value == "":
            raise BadRequest("Missing value for enable")
        try:
            enable = parse_bool(value, "enable")
        except BadRequest:
            raise BadRequest(f"Invalid value for enable: {value!r}") from None
        return enable, arg(request, b"reason") or ""

    @route("/v1/agent/maintenance", methods=["PUT", "POST"])
    def node_maintenance(request: IRequest) -> Deferred[bytes]:
        enable, reason = enable_arg(request)
        return api.agent_write(request, local.node_maintenance(enable, reason))

    @route("/v1/agent/service/maintenance/<path:sid>", methods=["PUT", "POST"])
    def service_maintenance(request: IRequest, sid: str) -> Deferred[bytes]:
        enable, reason = enable_arg(request)
        return api.agent_write(request, local.service_maintenance(sid, enable, reason))

    @route("/v1/agent/reload", methods=["PUT", "POST"])
    def reload(request: IRequest) -> Deferred[bytes]:
        return api.agent_write(request, agent.reload())
