# -*- test-case-name: txconsul.test.dns.test_query -*-
"""
Names in the ``consul`` domain, parsed into the lookups they ask for.

Pure functions on text: no catalog, no records. Labels are read right to
left up to the first keyword (``node``, ``service``, ``addr`` ...); whatever
is right of the keyword is the datacenter. Keywords compare without case;
node, service and tag names keep the case they were asked with, and the
authority matches them without case.
"""

from __future__ import annotations

import ipaddress

import attrs

_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
KEYWORDS = frozenset({"node", "service", "addr", "query", "connect", "ingress", "virtual"})


@attrs.frozen
class Apex:
    """The domain itself: SOA and NS."""


@attrs.frozen
class NodeLookup:
    node: str
    dc: str | None


@attrs.frozen
class ServiceLookup:
    service: str
    tag: str | None
    dc: str | None


@attrs.frozen
class AddrLookup:
    """``<hexip>.addr``: the address spelt in hex, the target of SRV records."""

    address: str
    dc: str | None


@attrs.frozen
class ReverseLookup:
    """An ``in-addr.arpa`` or ``ip6.arpa`` name of one whole address."""

    address: str


@attrs.frozen
class Unknown:
    """A name in the domain that names nothing we answer for: NXDOMAIN."""

    why: str


@attrs.frozen
class Outside:
    """A name outside the domain (recursors or REFUSED)."""


Lookup = Apex | NodeLookup | ServiceLookup | AddrLookup | ReverseLookup | Unknown | Outside


def parse_name(name: str, domain: str) -> Lookup:
    """
    What ``name`` asks for.

    :param name: the queried name, with or without the trailing dot.
    :param domain: our domain in lower case without dots at either end, e.g. ``consul``.
    """
    low = name.lower().rstrip(".")
    if low.endswith((".in-addr.arpa", ".ip6.arpa")):
        address = reverse_address(low)
        return ReverseLookup(address) if address is not None else Outside()
    if low == domain:
        return Apex()
    if not low.endswith("." + domain):
        return Outside()
    labels = name.rstrip(".")[: -len(domain) - 1].split(".")
    if any(not label for label in labels):
        return Unknown("empty label")
    for i in range(len(labels) - 1, -1, -1):
        keyword = labels[i].lower()
        if keyword in KEYWORDS:
            break
    else:
        return _rfc2782_without_keyword(labels)
    after = labels[i + 1 :]
    if len(after) > 1:
        return Unknown("more than one label after the keyword")
    dc = after[0].lower() if after else None
    before = labels[:i]
    if not before:
        return Unknown(f"nothing before {keyword!r}")
    if keyword == "node":
        return NodeLookup(".".join(before), dc)
    if keyword == "service":
        return _service(before, dc)
    if keyword == "addr":
        address = hex_address(before[0]) if len(before) == 1 else None
        if address is None:
            return Unknown("addr wants 8 or 32 hex digits")
        return AddrLookup(address, dc)
    return Unknown(f"{keyword} lookups are not supported")


def _service(before: list[str], dc: str | None) -> Lookup:
    if len(before) == 2 and before[0].startswith("_") and before[1].startswith("_"):
        service, tag = before[0][1:], before[1][1:]
        if not service or not tag:
            return Unknown("empty RFC 2782 label")
        return ServiceLookup(service, None if tag.lower() == "tcp" else tag, dc)
    if len(before) == 1:
        return ServiceLookup(before[0], None, dc)
    return ServiceLookup(before[-1], ".".join(before[:-1]), dc)


def _rfc2782_without_keyword(labels: list[str]) -> Lookup:
    """``_svc._tcp[.dc].consul``: RFC 2782 names may leave out ``.service``."""
    if len(labels) in (2, 3) and labels[0].startswith("_") and labels[1].startswith("_"):
        dc = labels[2].lower() if len(labels) == 3 else None
        return _service(labels[:2], dc)
    return Unknown("no keyword")


def hex_address(label: str) -> str | None:
    """``0a000001`` as ``10.0.0.1``; 32 hex digits as an IPv6 address; else None."""
    if len(label) not in (8, 32) or not all(c in _HEX for c in label):
        return None
    return str(ipaddress.ip_address(bytes.fromhex(label)))


def address_label(address: str) -> str:
    """The hex label of an IP address (the inverse of ``hex_address``)."""
    return ipaddress.ip_address(address).packed.hex()


def reverse_address(name: str) -> str | None:
    """The address of a full reverse name (lower case, no trailing dot), else None."""
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p and all(c in _DIGITS for c in p) for p in parts):
            return None
        if not all(len(p) <= 3 and int(p) <= 255 for p in parts):
            return None
        return ".".join(str(int(p)) for p in reversed(parts))
    if name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in _HEX for n in nibbles):
            return None
        return str(ipaddress.ip_address(bytes.fromhex("".join(reversed(nibbles)))))
    return None
