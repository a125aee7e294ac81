# -*- test-case-name: txconsul.test.dns.test_config -*-
"""
``dns_config`` and ``recursors``: the DNS part of the agent configuration.

``txconsul.config`` calls these while it builds an ``AgentConfig``; they only
check and convert, and raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import attrs

from txconsul.duration import parse_duration
from txconsul.errors import BadRequest, ConfigError

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@attrs.frozen
class DNSConfig:
    """The ``dns_config`` block, with Consul's defaults."""

    allow_stale: bool = True
    node_ttl: float = 0.0
    service_ttl: Mapping[str, float] = attrs.field(factory=dict)
    only_passing: bool = False
    enable_truncate: bool = False
    udp_answer_limit: int = 3
    recursor_timeout: float = 2.0

    def ttl_for_service(self, name: str) -> int:
        """The TTL of a service's records: exact name, then the longest ``prefix*``, then ``*``."""
        ttls = self.service_ttl
        if not ttls:
            return 0
        if name in ttls:
            return int(ttls[name])
        best = -1
        ttl = ttls.get("*", 0.0)
        for key, value in ttls.items():
            if key.endswith("*") and name.startswith(key[:-1]) and len(key) > best:
                best, ttl = len(key), value
        return int(ttl)


def _duration(value: object, key: str, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: dns_config.{key} must be a duration, not {value!r}")
    if isinstance(value, int):
        seconds = value / 1e9
    else:
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except BadRequest:
            raise ConfigError(
                f'{what}: dns_config.{key} must be a duration such as "10s", not {value!r}'
            ) from None
    if seconds < 0:
        raise ConfigError(f"{what}: dns_config.{key} must not be negative")
    return seconds


def _bool(raw: Mapping[str, Any], key: str, what: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{what}: dns_config.{key} must be true or false, not {value!r}")
    return value


def parse_dns_config(raw: object, what: str) -> DNSConfig:
    """Check a ``dns_config`` block; unknown keys of Consul's are accepted and ignored."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what}: dns_config must be an object")
    kw: dict[str, Any] = {}
    for key in ("allow_stale", "only_passing", "enable_truncate"):
        if key in raw:
            kw[key] = _bool(raw, key, what)
    for key in ("node_ttl", "recursor_timeout"):
        if key in raw:
            kw[key] = _duration(raw[key], key, what)
    if "service_ttl" in raw:
        given = raw["service_ttl"]
        if not isinstance(given, Mapping):
            raise ConfigError(f"{what}: dns_config.service_ttl must be an object")
        kw["service_ttl"] = {
            str(name): _duration(value, f"service_ttl[{name!r}]", what)
            for name, value in given.items()
        }
    if "udp_answer_limit" in raw:
        limit = raw["udp_answer_limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(
                f"{what}: dns_config.udp_answer_limit must be a positive number, not {limit!r}"
            )
        kw["udp_answer_limit"] = limit
    return DNSConfig(**kw)


def parse_recursor(value: object, what: str = "configuration") -> tuple[str, int]:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` as (host, port); port 53 by default."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what}: recursors entries must be addresses, not {value!r}")
    text = value.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what}: recursor {value!r} is not ip[:port]")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what}: recursor {value!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{what}: recursor {value!r} has a bad port")
    return host, int(port)


def check_domain(value: str, what: str) -> str:
    """A domain such as ``consul.``: dot-separated labels of letters, digits, - and _."""
    labels = value.strip(".").split(".")
    if not value.strip(".") or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(f"{what}: domain {value!r} is not a valid DNS domain")
    if len(value.strip(".")) > 200:
        raise ConfigError(f"{what}: domain {value!r} is too long")
    return ".".join(labels).lower() + "."
