# -*- test-case-name: txconsul.test.test_config -*-
"""
Agent configuration: Consul's JSON config files and flags, merged and checked.

Files from ``-config-file`` and every ``*.json`` of ``-config-dir`` (in name
order) are merged, later ones winning for single values and appending to
lists; flags given on the command line win over all files. Anything that
cannot be used raises ``ConfigError`` naming the file and the problem, and the
agent refuses to start.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from txconsul import gojson
from txconsul.agent.definitions import (
    CheckDefinition,
    ServiceDefinition,
    parse_check,
    parse_service,
)
from txconsul.dns.config import DNSConfig, check_domain, parse_dns_config, parse_recursor
from txconsul.duration import duration_value
from txconsul.errors import BadRequest, ConfigError

DEFAULT_PORTS = {
    "http": 8500,
    "dns": 8600,
    "serf_lan": 8301,
    "serf_wan": 8302,
    "server": 8300,
}

# Keys whose values are lists: several files add to them instead of replacing.
_LIST_KEYS = {"services", "checks", "retry_join", "start_join", "recursors", "retry_join_wan"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_NODE = re.compile(r"^[A-Za-z0-9_.-]+$")


@attrs.frozen
class AgentConfig:
    """Everything the agent needs to start, already checked."""

    dev: bool = False
    server: bool = False
    datacenter: str = "dc1"
    node_name: str = ""
    node_id: str = ""
    client_addr: str = "127.0.0.1"
    bind_addr: str = "127.0.0.1"
    advertise_addr: str = ""
    #: the address a server's WAN pool advertises (Consul's ``advertise_addr_wan``)
    advertise_addr_wan: str = ""
    ports: Mapping[str, int] = attrs.field(factory=lambda: dict(DEFAULT_PORTS))
    data_dir: str | None = None
    join: tuple[str, ...] = ()
    retry_join: tuple[str, ...] = ()
    retry_interval: float = 30.0
    #: a server's WAN joins, retried every ``retry_interval_wan`` until one answers
    retry_join_wan: tuple[str, ...] = ()
    retry_interval_wan: float = 30.0
    #: rejoin the pools from the member snapshot even after a graceful leave
    rejoin_after_leave: bool = False
    #: Consul's ``gossip_lan`` / ``gossip_wan`` overrides, as memberlist settings.
    gossip_lan: Mapping[str, float] = attrs.field(factory=dict)
    gossip_wan: Mapping[str, float] = attrs.field(factory=dict)
    #: a server that elects itself (Consul's bootstrap mode; ``--dev`` implies it)
    bootstrap: bool = False
    #: leave gracefully on SIGTERM / SIGINT (Consul's defaults: a client does, a server not)
    leave_on_terminate: bool = True
    skip_leave_on_interrupt: bool = False
    bootstrap_expect: int = 0
    encrypt: str | None = None
    #: with ``encrypt``: refuse plaintext gossip / encrypt what is sent; both off
    #: for the first of the rolling restarts that turn encryption on
    encrypt_verify_incoming: bool = True
    encrypt_verify_outgoing: bool = True
    ui: bool = False
    log_level: str = "INFO"
    domain: str = "consul."
    recursors: tuple[str, ...] = ()
    dns: DNSConfig = attrs.field(factory=DNSConfig)
    node_meta: Mapping[str, str] = attrs.field(factory=dict)
    kv_max_value_size: int = 512 * 1024
    #: Consul's ``raft_snapshot_threshold`` and ``raft_trailing_logs`` (None: Raft's defaults)
    raft_snapshot_threshold: int | None = None
    raft_trailing_logs: int | None = None
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False
    check_update_interval: float = 300.0
    services: tuple[ServiceDefinition, ...] = ()
    checks: tuple[CheckDefinition, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def advertise(self) -> str:
        """The address other agents and clients reach this one at."""
        return self.advertise_addr or self.bind_addr

    @property
    def advertise_wan(self) -> str:
        """The address a server's WAN pool members reach it at."""
        return self.advertise_addr_wan or self.advertise

    @property
    def tagged_addresses(self) -> dict[str, str]:
        """
        The node's ``TaggedAddresses`` in the catalog, as Consul's agent sets them:
        ``lan`` is the advertised address, ``wan`` the WAN one (falling back to
        ``lan``), and each also under ``_ipv4`` or ``_ipv6`` after its family.
        """
        out = {}
        for tag, address in (("lan", self.advertise), ("wan", self.advertise_wan)):
            out[tag] = address
            out[f"{tag}_ipv{ipaddress.ip_address(address).version}"] = address
        return out

    @property
    def rpc_address(self) -> str:
        return f"{self.advertise}:{self.ports['server']}"


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if key in ("service", "check"):
            plural = into.setdefault(key + "s", [])
            if isinstance(plural, list):  # else build() says that it must be a list
                plural.append(value)
        elif key in _LIST_KEYS and isinstance(value, list):
            into.setdefault(key, []).extend(value)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def read_config_file(path: str) -> dict[str, Any]:
    """One JSON config file as a dict, or ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = gojson.loads(f.read())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return data


def config_files(files: Sequence[str], dirs: Sequence[str]) -> list[str]:
    """The files to read, in the order they are merged."""
    out = list(files)
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            raise ConfigError(f"{d}: cannot read config directory: {e.strerror}") from e
        for name in names:
            path = os.path.join(d, name)
            if name.endswith(".json") and os.path.isfile(path):
                out.append(path)
            elif name.endswith(".hcl"):
                raise ConfigError(f"{path}: HCL config files are not supported; use JSON")
    return out


def _type(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = raw[key]
    if isinstance(value, bool) and kind in (int, (int,)):
        raise ConfigError(f"{what}: {key} must be a number, not {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{what}: {key} must be a {names}, not {value!r}")
    return value


def _address(value: str, key: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{what}: {key} {value!r} is not an IP address") from None
    if key.startswith("advertise") and ip.is_unspecified:
        # other agents cannot reach "any address": Consul refuses it too
        raise ConfigError(f"{what}: {key} cannot be {value}, an address nobody can reach")
    return value


def _port(value: object, key: str, what: str, allow_off: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what}: port {key} must be a number, not {value!r}")
    low = -1 if allow_off else 0
    if not low <= value <= 65535:
        raise ConfigError(f"{what}: port {key} {value} is out of range")
    return value


def _join_address(value: object, key: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what}: {key} entries must be addresses, not {value!r}")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if port and not port.isdigit():
        raise ConfigError(f"{what}: {key} {value!r} has a bad port")
    return value


_GOSSIP_DURATIONS = {"gossip_interval", "probe_interval", "probe_timeout"}
_GOSSIP_COUNTS = {"gossip_nodes", "retransmit_mult", "suspicion_mult"}


def _gossip(given: Mapping[str, Any], key: str, what: str) -> dict[str, float]:
    """``gossip_lan``/``gossip_wan``: durations in seconds, counts as numbers."""
    out: dict[str, float] = {}
    for name, value in given.items():
        if name in _GOSSIP_DURATIONS:
            try:
                out[name] = duration_value(value)
            except BadRequest as e:
                raise ConfigError(f"{what}: {key}.{name}: {e}") from None
        elif name in _GOSSIP_COUNTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what}: {key}.{name} must be a number, not {value!r}")
            out[name] = value
        else:
            raise ConfigError(f"{what}: unknown setting {key}.{name}")
        if out[name] <= 0:
            raise ConfigError(f"{what}: {key}.{name} must be positive")
    return out


def build(raw: Mapping[str, Any], what: str = "configuration") -> AgentConfig:
    """Check a merged configuration and turn it into an AgentConfig."""
    kw: dict[str, Any] = {"raw": dict(raw)}
    for key in sorted(_LIST_KEYS & raw.keys()):
        if not isinstance(raw[key], list):
            raise ConfigError(f"{what}: {key} must be a list, not {raw[key]!r:.40}")
    dev = bool(raw.get("dev"))
    kw["dev"] = dev
    if "server" in raw:
        kw["server"] = bool(_type(raw, "server", bool, what))
    if dev:
        kw["server"] = True
    if "datacenter" in raw:
        dc = _type(raw, "datacenter", str, what)
        if not _NAME.match(dc):
            raise ConfigError(f"{what}: datacenter {dc!r} may only hold letters, digits, - and _")
        kw["datacenter"] = dc.lower()
    node = raw.get("node_name") or socket.gethostname()
    if not isinstance(node, str) or not _NODE.match(node):
        raise ConfigError(f"{what}: node_name {node!r} is not a valid node name")
    kw["node_name"] = node
    if "node_id" in raw:
        kw["node_id"] = _type(raw, "node_id", str, what)
    for key in ("client_addr", "bind_addr", "advertise_addr", "advertise_addr_wan"):
        if raw.get(key):
            kw[key] = _address(_type(raw, key, str, what), key, what)
    ports = dict(DEFAULT_PORTS)
    if "ports" in raw:
        given = _type(raw, "ports", dict, what)
        for name, value in given.items():
            if name not in DEFAULT_PORTS and name not in ("https", "grpc", "grpc_tls"):
                raise ConfigError(f"{what}: unknown port {name!r}")
            ports[name] = _port(value, name, what, allow_off=name in ("dns", "https", "grpc"))
    kw["ports"] = ports
    if raw.get("data_dir"):
        kw["data_dir"] = _type(raw, "data_dir", str, what)
    elif not dev:
        raise ConfigError(f"{what}: data_dir is required unless -dev is given")
    join = [_join_address(v, "join", what) for v in raw.get("start_join", [])]
    kw["join"] = tuple(join)
    kw["retry_join"] = tuple(
        _join_address(v, "retry_join", what) for v in raw.get("retry_join", [])
    )
    kw["retry_join_wan"] = tuple(
        _join_address(v, "retry_join_wan", what) for v in raw.get("retry_join_wan", [])
    )
    if kw["retry_join_wan"] and not kw.get("server"):
        raise ConfigError(f"{what}: retry_join_wan needs server mode (only servers join the WAN)")
    for key in ("retry_interval", "retry_interval_wan"):
        if key in raw:
            try:
                kw[key] = duration_value(raw[key])
            except BadRequest as e:
                raise ConfigError(f"{what}: {key}: {e}") from None
            if kw[key] <= 0:
                raise ConfigError(f"{what}: {key} must be positive")
    for key in ("gossip_lan", "gossip_wan"):
        if key in raw:
            kw[key] = _gossip(_type(raw, key, dict, what), key, what)
    if "bootstrap_expect" in raw:
        n = _type(raw, "bootstrap_expect", int, what)
        if n < 0:
            raise ConfigError(f"{what}: bootstrap_expect must not be negative")
        if n and not kw.get("server"):
            raise ConfigError(f"{what}: bootstrap_expect needs server mode")
        kw["bootstrap_expect"] = n
    if "bootstrap" in raw:
        if _type(raw, "bootstrap", bool, what):
            if not kw.get("server"):
                raise ConfigError(f"{what}: bootstrap needs server mode")
            if kw.get("bootstrap_expect"):
                raise ConfigError(f"{what}: bootstrap and bootstrap_expect are mutually exclusive")
            kw["bootstrap"] = True
    if kw.get("bootstrap_expect") == 1:
        kw["bootstrap"], kw["bootstrap_expect"] = True, 0  # as Consul: the same thing
    if dev:
        kw["bootstrap"], kw["bootstrap_expect"] = True, 0  # a dev server is its own cluster
    # a server stopped by a signal stays a voter unless told otherwise: leaving
    # shrinks the cluster, which is rarely what a restart means
    server = bool(kw.get("server"))
    kw["leave_on_terminate"] = not server
    kw["skip_leave_on_interrupt"] = server
    for key in ("leave_on_terminate", "skip_leave_on_interrupt"):
        if key in raw:
            kw[key] = _type(raw, key, bool, what)
    if raw.get("encrypt"):
        key = _type(raw, "encrypt", str, what)
        try:
            decoded = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{what}: encrypt is not valid base64") from None
        if len(decoded) not in (16, 24, 32):
            raise ConfigError(
                f"{what}: encrypt must be a 16, 24 or 32 byte key, not {len(decoded)} bytes"
            )
        kw["encrypt"] = key
    for key in ("encrypt_verify_incoming", "encrypt_verify_outgoing"):
        if key in raw:
            kw[key] = _type(raw, key, bool, what)
    ui = raw.get("ui", False)
    if isinstance(raw.get("ui_config"), dict) and "enabled" in raw["ui_config"]:
        ui = raw["ui_config"]["enabled"]
    if not isinstance(ui, bool):
        raise ConfigError(f"{what}: ui must be true or false")
    kw["ui"] = ui or dev
    if "log_level" in raw:
        level = _type(raw, "log_level", str, what).upper()
        if level not in ("TRACE", "DEBUG", "INFO", "WARN", "ERR", "ERROR"):
            raise ConfigError(f"{what}: unknown log_level {raw['log_level']!r}")
        kw["log_level"] = level
    if "domain" in raw:
        kw["domain"] = check_domain(_type(raw, "domain", str, what), what)
    if "recursors" in raw:
        kw["recursors"] = tuple(_join_address(v, "recursors", what) for v in raw["recursors"])
        for v in kw["recursors"]:
            parse_recursor(v, what)
    if "dns_config" in raw:
        kw["dns"] = parse_dns_config(raw["dns_config"], what)
    if "node_meta" in raw:
        meta = _type(raw, "node_meta", dict, what)
        if not all(isinstance(v, str) for v in meta.values()):
            raise ConfigError(f"{what}: node_meta values must be strings")
        kw["node_meta"] = dict(meta)
    for key in ("enable_script_checks", "enable_local_script_checks", "rejoin_after_leave"):
        if key in raw:
            kw[key] = _type(raw, key, bool, what)
    if "check_update_interval" in raw:
        try:
            kw["check_update_interval"] = duration_value(raw["check_update_interval"])
        except BadRequest as e:
            raise ConfigError(f"{what}: check_update_interval: {e}") from None
        if not 0 <= kw["check_update_interval"] <= 86400:
            raise ConfigError(f"{what}: check_update_interval must be between 0 and 24h")
    if "kv_max_value_size" in raw:
        kw["kv_max_value_size"] = _type(raw, "kv_max_value_size", int, what)
        if kw["kv_max_value_size"] <= 0:
            raise ConfigError(f"{what}: kv_max_value_size must be positive")
    for key in ("raft_snapshot_threshold", "raft_trailing_logs"):
        if key in raw:
            kw[key] = _type(raw, key, int, what)
            if kw[key] <= 0:
                raise ConfigError(f"{what}: {key} must be positive")
    services = []
    for i, body in enumerate(raw.get("services", [])):
        try:
            services.append(parse_service(body, f"services[{i}]"))
        except BadRequest as e:
            raise ConfigError(f"{what}: service definition {i}: {e}") from None
    kw["services"] = tuple(services)
    checks = []
    for i, body in enumerate(raw.get("checks", [])):
        try:
            checks.append(parse_check(body, f"checks[{i}]"))
        except BadRequest as e:
            raise ConfigError(f"{what}: check definition {i}: {e}") from None
    kw["checks"] = tuple(checks)
    return AgentConfig(**kw)


def load(
    flags: Mapping[str, Any], files: Sequence[str] = (), dirs: Sequence[str] = ()
) -> AgentConfig:
    """
    Read the config files, merge them in order, let ``flags`` win, and check it all.

    Each file is checked alone as well as merged, so an error names the file
    that holds it.
    """
    merged: dict[str, Any] = {}
    if flags.get("dev"):
        merged["dev"] = True
    for path in config_files(files, dirs):
        data = read_config_file(path)
        alone: dict[str, Any] = {"dev": True}
        _merge(alone, data)
        build(alone, path)
        _merge(merged, data)
    for key, value in flags.items():
        if key in _LIST_KEYS:
            merged.setdefault(key, []).extend(value)
        elif key == "ports":
            merged.setdefault("ports", {}).update(value)
        else:
            merged[key] = value
    return build(merged)
