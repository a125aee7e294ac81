# -*- test-case-name: txconsul.test.agent.test_definitions -*-
"""
Service and check definitions, parsed once at the edge.

The same parser serves ``/v1/agent/service/register``, ``/v1/agent/check/register``
and the ``service``/``services``/``check``/``checks`` keys of config files. As in
Consul, keys match case-insensitively and snake_case aliases are accepted
(``deregister_critical_service_after`` = ``DeregisterCriticalServiceAfter``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs

from txconsul.duration import duration_value, format_duration
from txconsul.errors import BadRequest

CHECK_STATES = ("passing", "warning", "critical")
_MAX_DURATION = (2**63 - 1) / 1e9  # Go's time.Duration, in seconds


def fold(key: str) -> str:
    """The form in which two spellings of one key compare equal."""
    return key.replace("_", "").replace("-", "").lower()


def folded(body: object, what: str) -> dict[str, Any]:
    """A JSON object with its keys folded; anything else is a BadRequest."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"Request decode failed: {what} must be a JSON object")
    return {fold(str(k)): v for k, v in body.items()}


def _str(d: Mapping[str, Any], key: str, what: str, default: str = "") -> str:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a string")
    return value


def _int(d: Mapping[str, Any], key: str, what: str, default: int = 0) -> int:
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise BadRequest(f"Request decode failed: {what}.{key} must be an integer")
    return int(value)


def _bool(d: Mapping[str, Any], key: str, what: str) -> bool:
    value = d.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a boolean")
    return value


def _str_list(d: Mapping[str, Any], key: str, what: str) -> list[str]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a list of strings")
    return list(value)


def _str_map(d: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f"Request decode failed: {what}.{key} must be a map of strings")
    return dict(value)


def _duration(d: Mapping[str, Any], key: str, what: str) -> float | None:
    if d.get(key) in (None, ""):
        return None
    try:
        seconds = duration_value(d[key])
    except BadRequest as e:
        raise BadRequest(f"Request decode failed: {what}.{key}: {e}") from None
    if not abs(seconds) <= _MAX_DURATION:  # also NaN
        raise BadRequest(f"Request decode failed: {what}.{key}: duration out of range")
    return seconds


@attrs.frozen
class CheckDefinition:
    """One check as an agent owns it."""

    check_id: str
    name: str
    kind: str  # ttl, script, http, tcp, grpc, docker, alias
    service_id: str = ""
    notes: str = ""
    status: str = "critical"
    output: str = ""
    interval: float | None = None
    timeout: float | None = None
    ttl: float | None = None
    args: tuple[str, ...] = ()
    script: str = ""
    http: str = ""
    method: str = ""
    header: tuple[tuple[str, tuple[str, ...]], ...] = ()
    body: str = ""
    tcp: str = ""
    tls_skip_verify: bool = False
    deregister_critical_service_after: float | None = None

    def catalog_row(self) -> dict[str, Any]:
        """The check as a catalog registration's ``Check`` object."""
        definition: dict[str, Any] = {}
        if self.http:
            definition["HTTP"] = self.http
        if self.tcp:
            definition["TCP"] = self.tcp
        if self.interval is not None:
            definition["Interval"] = format_duration(self.interval)
        if self.timeout is not None:
            definition["Timeout"] = format_duration(self.timeout)
        if self.deregister_critical_service_after is not None:
            definition["DeregisterCriticalServiceAfter"] = format_duration(
                self.deregister_critical_service_after
            )
        return {
            "CheckID": self.check_id,
            "Name": self.name,
            "Notes": self.notes,
            "ServiceID": self.service_id,
            "Type": self.kind,
            "Interval": format_duration(self.interval) if self.interval is not None else "",
            "Timeout": format_duration(self.timeout) if self.timeout is not None else "",
            "Definition": definition,
        }


@attrs.frozen
class ServiceDefinition:
    """One service as an agent owns it, with its checks."""

    service_id: str
    name: str
    tags: tuple[str, ...] = ()
    address: str = ""
    port: int = 0
    meta: tuple[tuple[str, str], ...] = ()
    weights: tuple[int, int] = (1, 1)
    enable_tag_override: bool = False
    tagged_addresses: tuple[tuple[str, str, int], ...] = ()
    kind: str = ""
    checks: tuple[CheckDefinition, ...] = ()

    def catalog_row(self) -> dict[str, Any]:
        """The service as a catalog registration's ``Service`` object."""
        row: dict[str, Any] = {
            "ID": self.service_id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": {"Passing": self.weights[0], "Warning": self.weights[1]},
            "EnableTagOverride": self.enable_tag_override,
        }
        if self.kind:
            row["Kind"] = self.kind
        if self.tagged_addresses:
            row["TaggedAddresses"] = {
                n: {"Address": a, "Port": p} for n, a, p in self.tagged_addresses
            }
        return row


def parse_check(
    body: object,
    what: str = "check",
    service_id: str = "",
    default_id: str = "",
    default_name: str = "",
) -> CheckDefinition:
    """
    Parse one check definition.

    :param service_id: the service the check belongs to, when it is given
        inside a service definition.
    :param default_id: the ID to use when the definition has none (Consul's
        ``service:<id>[:N]`` for checks of a service).
    """
    d = folded(body, what)
    name = _str(d, "name", what) or default_name
    check_id = _str(d, "checkid", what) or _str(d, "id", what) or default_id or name
    if not name:
        if not default_name:
            raise BadRequest("Missing check name")
    if not check_id:
        raise BadRequest("Missing check name")
    sid = service_id or _str(d, "serviceid", what)
    status = _str(d, "status", what) or "critical"
    if status not in CHECK_STATES:
        raise BadRequest(f"Invalid check status: {status!r}")
    args = tuple(_str_list(d, "args", what) or _str_list(d, "scriptargs", what))
    script = _str(d, "script", what)
    http = _str(d, "http", what)
    tcp = _str(d, "tcp", what)
    grpc = _str(d, "grpc", what)
    docker = _str(d, "dockercontainerid", what)
    alias = _str(d, "aliasservice", what) or _str(d, "aliasnode", what)
    ttl = _duration(d, "ttl", what)
    interval = _duration(d, "interval", what)
    timeout = _duration(d, "timeout", what)
    dcsa = _duration(d, "deregistercriticalserviceafter", what)
    kinds = [
        k
        for k, present in (
            ("ttl", ttl is not None),
            ("script", bool(args or script) and not docker),
            ("http", bool(http)),
            ("tcp", bool(tcp)),
            ("grpc", bool(grpc)),
            ("docker", bool(docker)),
            ("alias", bool(alias)),
        )
        if present
    ]
    if not kinds:
        raise BadRequest(
            f"Invalid check {check_id!r}: one of TTL, Args/Script, HTTP, TCP, GRPC,"
            " DockerContainerID or AliasService must be given"
        )
    if len(kinds) > 1:
        raise BadRequest(
            f"Invalid check {check_id!r}: only one kind of check may be given, not {' and '.join(kinds)}"
        )
    kind = kinds[0]
    if kind in ("script", "http", "tcp", "grpc", "docker"):
        if interval is None:
            raise BadRequest(f"Invalid check {check_id!r}: {kind} checks need an interval")
        if interval <= 0:
            raise BadRequest(f"Invalid check {check_id!r}: interval must be positive")
        interval = max(interval, 1.0)
    if ttl is not None and ttl <= 0:
        raise BadRequest(f"Invalid check {check_id!r}: TTL must be positive")
    if timeout is not None and timeout <= 0:
        raise BadRequest(f"Invalid check {check_id!r}: timeout must be positive")
    header_raw = d.get("header") or {}
    if not isinstance(header_raw, Mapping) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in header_raw.values()
    ):
        raise BadRequest(f"Request decode failed: {what}.Header must map names to lists of strings")
    header = tuple((str(k), tuple(v)) for k, v in header_raw.items())
    if tcp and (":" not in tcp):
        raise BadRequest(f"Invalid check {check_id!r}: TCP must be host:port")
    return CheckDefinition(
        check_id=check_id,
        name=name or check_id,
        kind=kind,
        service_id=sid,
        notes=_str(d, "notes", what),
        status=status,
        output=_str(d, "output", what),
        interval=interval,
        timeout=timeout,
        ttl=ttl,
        args=args,
        script=script,
        http=http,
        method=_str(d, "method", what),
        header=header,
        body=_str(d, "body", what),
        tcp=tcp or grpc,
        tls_skip_verify=_bool(d, "tlsskipverify", what),
        deregister_critical_service_after=dcsa,
    )


def parse_service(body: object, what: str = "service") -> ServiceDefinition:
    """Parse one service definition with its ``check``/``checks``."""
    d = folded(body, what)
    name = _str(d, "name", what) or _str(d, "service", what)
    if not name:
        raise BadRequest("Missing service name")
    sid = _str(d, "id", what) or name
    address = _str(d, "address", what)
    if address:
        try:
            if ipaddress.ip_address(address).is_unspecified:
                raise BadRequest(f"Invalid service address {address!r}")
        except ValueError:
            pass  # a host name is allowed
    port = _int(d, "port", what)
    if not 0 <= port <= 65535:
        raise BadRequest(f"Invalid service port {port}")
    weights_raw = d.get("weights")
    weights = (1, 1)
    if weights_raw is not None:
        w = folded(weights_raw, f"{what}.Weights")
        weights = (_int(w, "passing", what, 1), _int(w, "warning", what, 1))
        if weights[0] < 1:
            raise BadRequest("Passing must be greater than 0")
    tagged: list[tuple[str, str, int]] = []
    ta = d.get("taggedaddresses")
    if ta is not None:
        if not isinstance(ta, Mapping):
            raise BadRequest(f"Request decode failed: {what}.TaggedAddresses must be an object")
        for tname, value in ta.items():
            v = folded(value, f"{what}.TaggedAddresses.{tname}")
            tagged.append((str(tname), _str(v, "address", what), _int(v, "port", what)))
    raw_checks: list[object] = []
    if d.get("check") is not None:
        raw_checks.append(d["check"])
    more = d.get("checks")
    if more is not None:
        if not isinstance(more, list):
            raise BadRequest(f"Request decode failed: {what}.Checks must be a list")
        raw_checks.extend(more)
    checks = []
    for i, raw in enumerate(raw_checks, start=1):
        default_id = f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{i}"
        checks.append(
            parse_check(
                raw,
                f"{what}.Checks[{i - 1}]",
                service_id=sid,
                default_id=default_id,
                default_name=f"Service '{name}' check",
            )
        )
    return ServiceDefinition(
        service_id=sid,
        name=name,
        tags=tuple(_str_list(d, "tags", what)),
        address=address,
        port=port,
        meta=tuple(sorted(_str_map(d, "meta", what).items())),
        weights=weights,
        enable_tag_override=_bool(d, "enabletagoverride", what),
        tagged_addresses=tuple(tagged),
        kind=_str(d, "kind", what),
        checks=tuple(checks),
    )
