# -*- test-case-name: txconsul.test.state.test_catalog -*-
"""
The catalog: nodes, the services on them, and the checks of both.

Rows are kept as dicts in Consul's output shape (``Node``, ``ServiceID``, ...),
so reads hand them out with no conversion; callers must not mutate them. A
write that changes nothing keeps the row's ``ModifyIndex``, so that blocking
queries and anti-entropy do not spin on no-op registrations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from txconsul.errors import BadRequest

Row = dict[str, Any]

HEALTH_STATES = ("passing", "warning", "critical")


def _same(old: Row, new: Row, ignore: Iterable[str] = ("CreateIndex", "ModifyIndex")) -> bool:
    skip = set(ignore)
    keys = (set(old) | set(new)) - skip
    return all(old.get(k) == new.get(k) for k in keys)


class Catalog:
    """Nodes, services and checks, with a highest index per table."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.nodes: dict[str, Row] = {}
        self.services: dict[str, dict[str, Row]] = {}
        self.checks: dict[str, dict[str, Row]] = {}
        # service name -> {(node, service id)}
        self.by_name: dict[str, set[tuple[str, str]]] = {}
        self.nodes_index = 0
        self.services_index = 0
        self.checks_index = 0
        self._notify = notify

    # -- writes -------------------------------------------------------------

    def register(self, index: int, request: Row) -> None:
        """
        Apply one catalog registration (node, optional service, checks).

        All of it is checked before anything changes, so a bad request leaves
        the catalog as it was.
        """
        name = request.get("Node") or ""
        address = request.get("Address") or ""
        if not name:
            raise BadRequest("Must provide node")
        known = name in self.nodes
        if not address and not known and not request.get("SkipNodeUpdate"):
            raise BadRequest("Must provide address")
        service = request.get("Service")
        checks: list[Row] = list(request.get("Checks") or [])
        service_ids = set(self.services.get(name, {}))
        if service is not None:
            if not service.get("Service"):
                raise BadRequest("Must provide service name")
            service_ids.add(service.get("ID") or service["Service"])
        for check in checks:
            if not check.get("CheckID") and not check.get("Name"):
                raise BadRequest("Must provide check name")
            sid = check.get("ServiceID") or ""
            if sid and sid not in service_ids:
                raise BadRequest(f"Missing service registration for check {sid!r}")
            status = check.get("Status") or "critical"
            if status not in HEALTH_STATES:
                raise BadRequest(f"Invalid check status: {status!r}")

        if not (request.get("SkipNodeUpdate") and known):
            self._ensure_node(index, request, name, address)
        if service is not None:
            self._ensure_service(index, name, service)
        for check in checks:
            self._ensure_check(index, name, check)

    def _ensure_node(self, index: int, request: Row, name: str, address: str) -> None:
        old = self.nodes.get(name)
        row: Row = {
            "ID": request.get("ID") or (old["ID"] if old else ""),
            "Node": name,
            "Address": address or (old["Address"] if old else ""),
            "Datacenter": request.get("Datacenter") or "",
            "TaggedAddresses": dict(request.get("TaggedAddresses") or {}),
            "Meta": dict(request.get("NodeMeta") or {}),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        if old is not None and _same(old, row):
            return
        self.nodes[name] = row
        self.nodes_index = index
        self._notify("nodes")

    def _ensure_service(self, index: int, node: str, service: Row) -> None:
        sid = service.get("ID") or service["Service"]
        on_node = self.services.setdefault(node, {})
        old = on_node.get(sid)
        row: Row = {
            "ID": sid,
            "Service": service["Service"],
            "Tags": list(service.get("Tags") or []),
            "Address": service.get("Address") or "",
            "Meta": dict(service.get("Meta") or {}),
            "Port": int(service.get("Port") or 0),
            "Weights": dict(service.get("Weights") or {"Passing": 1, "Warning": 1}),
            "EnableTagOverride": bool(service.get("EnableTagOverride")),
            "Proxy": {},
            "Connect": {},
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        if service.get("Kind"):
            row["Kind"] = service["Kind"]
        if service.get("TaggedAddresses"):
            row["TaggedAddresses"] = dict(service["TaggedAddresses"])
        if old is not None and _same(old, row):
            return
        if old is not None and old["Service"] != row["Service"]:
            self._unindex(old["Service"], node, sid)
        on_node[sid] = row
        self.by_name.setdefault(row["Service"], set()).add((node, sid))
        self.services_index = index
        self._notify("services")
        # A service's checks carry its name and tags.
        for cid, check in list(self.checks.get(node, {}).items()):
            if check["ServiceID"] == sid and (
                check["ServiceName"] != row["Service"] or check["ServiceTags"] != row["Tags"]
            ):
                updated = dict(check, ServiceName=row["Service"], ServiceTags=list(row["Tags"]))
                updated["ModifyIndex"] = index
                self.checks[node][cid] = updated
                self.checks_index = index
                self._notify("checks")

    def _ensure_check(self, index: int, node: str, check: Row) -> None:
        cid = check.get("CheckID") or check["Name"]
        on_node = self.checks.setdefault(node, {})
        old = on_node.get(cid)
        sid = check.get("ServiceID") or ""
        service = self.services.get(node, {}).get(sid) if sid else None
        row: Row = {
            "Node": node,
            "CheckID": cid,
            "Name": check.get("Name") or cid,
            "Status": check.get("Status") or "critical",
            "Notes": check.get("Notes") or "",
            "Output": check.get("Output") or "",
            "ServiceID": sid,
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": list(service["Tags"]) if service else [],
            "Type": check.get("Type") or "",
            "Interval": check.get("Interval") or "",
            "Timeout": check.get("Timeout") or "",
            "ExposedPort": 0,
            "Definition": dict(check.get("Definition") or {}),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        if old is not None and _same(old, row):
            return
        on_node[cid] = row
        self.checks_index = index
        self._notify("checks")

    def deregister(self, index: int, request: Row) -> None:
        name = request.get("Node") or ""
        if not name:
            raise BadRequest("Must provide node")
        if request.get("ServiceID"):
            self.delete_service(index, name, request["ServiceID"])
        elif request.get("CheckID"):
            self.delete_check(index, name, request["CheckID"])
        else:
            self.delete_node(index, name)

    def delete_node(self, index: int, name: str) -> None:
        for sid in list(self.services.get(name, {})):
            self.delete_service(index, name, sid)
        for cid in list(self.checks.get(name, {})):
            self.delete_check(index, name, cid)
        self.services.pop(name, None)
        self.checks.pop(name, None)
        if self.nodes.pop(name, None) is not None:
            self.nodes_index = index
            self._notify("nodes")

    def delete_service(self, index: int, node: str, sid: str) -> None:
        on_node = self.services.get(node, {})
        row = on_node.pop(sid, None)
        if row is None:
            return
        self._unindex(row["Service"], node, sid)
        self.services_index = index
        self._notify("services")
        for cid, check in list(self.checks.get(node, {}).items()):
            if check["ServiceID"] == sid:
                self.delete_check(index, node, cid)

    def delete_check(self, index: int, node: str, cid: str) -> None:
        if self.checks.get(node, {}).pop(cid, None) is not None:
            self.checks_index = index
            self._notify("checks")

    def _unindex(self, name: str, node: str, sid: str) -> None:
        members = self.by_name.get(name)
        if members is not None:
            members.discard((node, sid))
            if not members:
                del self.by_name[name]

    # -- reads --------------------------------------------------------------

    def node_list(self) -> list[Row]:
        return [self.nodes[n] for n in sorted(self.nodes)]

    def service_tags(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in sorted(self.by_name):
            tags: list[str] = []
            for node, sid in self.by_name[name]:
                for tag in self.services[node][sid]["Tags"]:
                    if tag not in tags:
                        tags.append(tag)
            out[name] = sorted(tags)
        return out

    def instances(self, name: str, tags: Iterable[str] = ()) -> list[tuple[Row, Row]]:
        """(node, service) pairs of a service, sorted by node then service ID."""
        wanted = [t.lower() for t in tags]
        out = []
        for node, sid in sorted(self.by_name.get(name, ())):
            svc = self.services[node][sid]
            if wanted:
                have = {t.lower() for t in svc["Tags"]}
                if not all(t in have for t in wanted):
                    continue
            out.append((self.nodes[node], svc))
        return out

    def node_services(self, node: str) -> dict[str, Row]:
        return self.services.get(node, {})

    def node_checks(self, node: str) -> list[Row]:
        on_node = self.checks.get(node, {})
        return [on_node[c] for c in sorted(on_node)]

    def instance_checks(self, node: str, sid: str) -> list[Row]:
        """The node-level checks and those of one service on it, sorted by CheckID."""
        on_node = self.checks.get(node, {})
        return [on_node[c] for c in sorted(on_node) if on_node[c]["ServiceID"] in ("", sid)]

    def service_checks(self, name: str) -> list[Row]:
        out = []
        for node in sorted(self.checks):
            for cid in sorted(self.checks[node]):
                check = self.checks[node][cid]
                if check["ServiceName"] == name:
                    out.append(check)
        return out

    def checks_in_state(self, state: str) -> list[Row]:
        out = []
        for node in sorted(self.checks):
            for cid in sorted(self.checks[node]):
                check = self.checks[node][cid]
                if state == "any" or check["Status"] == state:
                    out.append(check)
        return out

    # -- snapshot -----------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes.values()),
            "services": [[n, list(s.values())] for n, s in self.services.items()],
            "checks": [[n, list(c.values())] for n, c in self.checks.items()],
            "indexes": [self.nodes_index, self.services_index, self.checks_index],
        }

    def load(self, data: dict[str, Any]) -> None:
        self.nodes = {row["Node"]: row for row in data["nodes"]}
        self.services = {n: {row["ID"]: row for row in rows} for n, rows in data["services"]}
        self.checks = {n: {row["CheckID"]: row for row in rows} for n, rows in data["checks"]}
        self.by_name = {}
        for node, rows in self.services.items():
            for sid, row in rows.items():
                self.by_name.setdefault(row["Service"], set()).add((node, sid))
        self.nodes_index, self.services_index, self.checks_index = data["indexes"]
