# -*- test-case-name: txconsul.test.dns.test_authority -*-
"""
The authority for the ``consul`` domain: a question in, the records out.

It reads the catalog of the state store, as the HTTP API does, on every
question, and knows nothing of packets or sockets: ``txconsul.dns.server``
parses the message, asks ``lookup`` and writes the reply. Instances with a
critical check are left out (warning ones too with ``only_passing``), answers
come in a fresh random order each time, and a name that does not exist gets
NXDOMAIN with the SOA in the authority section.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.names import dns

from txconsul.config import AgentConfig
from txconsul.dns.query import (
    AddrLookup,
    Apex,
    Lookup,
    NodeLookup,
    Outside,
    ReverseLookup,
    ServiceLookup,
    Unknown,
    address_label,
    parse_name,
)
from txconsul.errors import NotFound
from txconsul.interfaces import IConsensus
from txconsul.state.store import StateStore

Row = dict[str, Any]
RR = dns.RRHeader

#: Cached answers kept at most; the cache starts afresh when it is full.
CACHE_SIZE = 10_000
ADDRESS_TYPES = frozenset({dns.A, dns.AAAA, dns.ALL_RECORDS})


@attrs.frozen
class Answer:
    """What the authority says about one question, before it meets the wire."""

    rcode: int
    answers: list[RR] = attrs.field(factory=list)
    authority: list[RR] = attrs.field(factory=list)
    additional: list[RR] = attrs.field(factory=list)
    authoritative: bool = True
    #: A recursor may answer instead (names outside the domain, unknown reverse names).
    recurse: bool = False
    #: The same question may get this answer (reshuffled) until the catalog changes.
    cacheable: bool = False


@functools.lru_cache(maxsize=4096)
def ip_version(address: str) -> int:
    """4 or 6 for an IP address, 0 for anything else (a host name)."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


@functools.lru_cache(maxsize=4096)
def normal_ip(address: str) -> str:
    """An IP address in its canonical spelling; anything else as it is."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def dns_name(text: str) -> bytes | None:
    """``text`` as a name we can put on the wire, or None if it cannot be one."""
    try:
        raw = text.rstrip(".").encode("ascii")
    except UnicodeEncodeError:
        return None
    if not raw or len(raw) > 253:
        return None
    if not all(0 < len(label) < 64 for label in raw.split(b".")):
        return None
    return raw


def _txt_escape(key: str) -> str:
    """RFC 1464: backquote escapes ``=``, backquote and leading or trailing blanks of a key."""
    out = key.replace("`", "``").replace("=", "`=")
    stripped = out.lstrip(" ")
    out = "` " * (len(out) - len(stripped)) + stripped
    stripped = out.rstrip(" ")
    return stripped + "` " * (len(out) - len(stripped))


def meta_strings(meta: Row) -> list[bytes]:
    """Node meta as TXT strings (``key=value``; an ``rfc1035-`` key gives the bare value)."""
    out = []
    for key in sorted(meta):
        value = str(meta[key])
        text = value if key.startswith("rfc1035-") else f"{_txt_escape(key)}={value}"
        out.append(text.encode("utf-8")[:255])
    return out


class ConsulAuthority:
    """
    Answers questions about the ``consul`` domain from the catalog.

    :param wall: the wall clock (``txconsul.clock.wall_time``), for the SOA
        serial: the agent's reactor runs on the monotonic clock, whose seconds
        count from boot and would go back at every reboot.
    """

    def __init__(
        self,
        store: StateStore,
        consensus: IConsensus,
        config: AgentConfig,
        wall: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._store = store
        self._consensus = consensus
        self._wall = wall
        self._rng = rng
        self._config = config.dns
        self._dc = config.datacenter.lower()
        self._domain = config.domain.strip(".").lower()
        self._domain_bytes = self._domain.encode("ascii")
        # Answers of service and node lookups, valid while the catalog's indexes stay.
        self._cache: dict[tuple[bytes, int], Answer] = {}
        self._cached_catalog: object = None
        self._cached_stamp = (0, 0, 0)

    @property
    def allow_stale(self) -> bool:
        """Whether any server may answer (``dns_config.allow_stale``), or only the leader."""
        return self._config.allow_stale

    # -- entry point ----------------------------------------------------------

    def lookup(self, name: bytes, qtype: int) -> Answer:
        """The answer to one question (class IN) for ``name``."""
        if not self._config.allow_stale and not self._consensus.is_leader():
            return Answer(dns.ESERVER, authoritative=False)
        catalog = self._store.catalog
        stamp = (catalog.nodes_index, catalog.services_index, catalog.checks_index)
        if catalog is not self._cached_catalog or stamp != self._cached_stamp:
            self._cache.clear()
            self._cached_catalog, self._cached_stamp = catalog, stamp
        key = (name, qtype)
        cached = self._cache.get(key)
        if cached is not None:
            return self._fresh(cached)
        answer = self._lookup(name, qtype)
        if answer.cacheable:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = answer
        return answer

    def _fresh(self, cached: Answer) -> Answer:
        """A cached answer in a new random order, with an SOA of this second."""
        answers = list(cached.answers)
        self._rng.shuffle(answers)
        authority = [self.soa()] if cached.authority else []
        return Answer(cached.rcode, answers, authority, cached.additional, cacheable=True)

    def _lookup(self, name: bytes, qtype: int) -> Answer:
        parsed = parse_name(name.decode("latin-1"), self._domain)
        if isinstance(parsed, Outside):
            return Answer(dns.EREFUSED, authoritative=False, recurse=True)
        cacheable = isinstance(parsed, ServiceLookup | NodeLookup)
        try:
            answers, additional = self._answer(parsed, name, qtype)
        except NotFound:
            return Answer(
                dns.ENAME,
                authority=[self.soa()],
                recurse=isinstance(parsed, ReverseLookup),
                cacheable=cacheable,
            )
        if not answers:
            return Answer(dns.OK, authority=[self.soa()], cacheable=cacheable)
        return Answer(dns.OK, answers, [], additional, cacheable=cacheable)

    def _answer(self, parsed: Lookup, owner: bytes, qtype: int) -> tuple[list[RR], list[RR]]:
        if isinstance(parsed, ServiceLookup):
            self._check_dc(parsed.dc)
            return self._service(parsed, owner, qtype)
        if isinstance(parsed, NodeLookup):
            self._check_dc(parsed.dc)
            return self._node(parsed.node, owner, qtype), []
        if isinstance(parsed, Apex):
            return self._apex(qtype)
        if isinstance(parsed, AddrLookup):
            self._check_dc(parsed.dc)
            return self._address(owner, parsed.address, qtype, int(self._config.node_ttl)), []
        if isinstance(parsed, ReverseLookup):
            return self._reverse(parsed.address, owner, qtype), []
        assert isinstance(parsed, Unknown)
        raise NotFound(parsed.why)

    def _check_dc(self, dc: str | None) -> None:
        if dc is not None and dc != self._dc:
            raise NotFound(f"no datacenter {dc!r}")

    # -- the domain itself ----------------------------------------------------

    def soa(self) -> RR:
        """The SOA of the domain; its serial is the current Unix time, as Consul's."""
        d = self._domain_bytes
        record = dns.Record_SOA(
            mname=b"ns." + d,
            rname=b"hostmaster." + d,
            serial=int(self._wall()) & 0xFFFFFFFF,
            refresh=3600,
            retry=600,
            expire=86400,
            minimum=0,
            ttl=0,
        )
        return RR(d, dns.SOA, dns.IN, 0, record, auth=True)

    def _apex(self, qtype: int) -> tuple[list[RR], list[RR]]:
        answers: list[RR] = []
        additional: list[RR] = []
        if qtype in (dns.SOA, dns.ALL_RECORDS):
            answers.append(self.soa())
        if qtype in (dns.NS, dns.ALL_RECORDS):
            servers = self._healthy("consul", None)
            self._rng.shuffle(servers)
            ttl = int(self._config.node_ttl)
            for node, _, _ in servers[:3]:
                target = self._node_target(node)
                if target is None:
                    continue
                answers.append(
                    RR(self._domain_bytes, dns.NS, dns.IN, ttl, dns.Record_NS(target, ttl), True)
                )
                additional.extend(self._address(target, node["Address"], dns.ALL_RECORDS, ttl))
        return answers, additional

    # -- nodes ----------------------------------------------------------------

    def _find_node(self, name: str) -> Row | None:
        nodes = self._store.catalog.nodes
        row = nodes.get(name)
        if row is None:
            low = name.lower()
            for key, candidate in nodes.items():
                if key.lower() == low:
                    return candidate
        return row

    def _node(self, name: str, owner: bytes, qtype: int) -> list[RR]:
        node = self._find_node(name)
        if node is None:
            raise NotFound(f"no node {name!r}")
        ttl = int(self._config.node_ttl)
        records = self._address(owner, node["Address"], qtype, ttl)
        if qtype in (dns.TXT, dns.ALL_RECORDS):
            records.extend(self._meta(owner, node, ttl))
        return records

    def _node_target(self, node: Row) -> bytes | None:
        return dns_name(f"{node['Node']}.node.{self._dc}.{self._domain}")

    @staticmethod
    def _meta(owner: bytes, node: Row, ttl: int) -> list[RR]:
        return [
            RR(owner, dns.TXT, dns.IN, ttl, dns.Record_TXT(text, ttl=ttl), True)
            for text in meta_strings(node.get("Meta") or {})
        ]

    @staticmethod
    def _address(owner: bytes, address: str, qtype: int, ttl: int) -> list[RR]:
        """A, AAAA or (for a host name) CNAME records of one address, as ``qtype`` asks."""
        if qtype not in ADDRESS_TYPES or not address:
            return []
        version = ip_version(address)
        if version == 4:
            if qtype == dns.AAAA:
                return []
            return [RR(owner, dns.A, dns.IN, ttl, dns.Record_A(address, ttl), True)]
        if version == 6:
            if qtype == dns.A:
                return []
            return [RR(owner, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl), True)]
        target = dns_name(address)
        if target is None:
            return []
        return [RR(owner, dns.CNAME, dns.IN, ttl, dns.Record_CNAME(target, ttl), True)]

    # -- services -------------------------------------------------------------

    def _instances(self, name: str, tag: str | None) -> list[tuple[Row, Row]]:
        catalog = self._store.catalog
        tags = (tag,) if tag is not None else ()
        if name not in catalog.by_name:
            low = name.lower()
            for key in catalog.by_name:
                if key.lower() == low:
                    name = key
                    break
        found: list[tuple[Row, Row]] = catalog.instances(name, tags)
        return found

    def _healthy(self, name: str, tag: str | None) -> list[tuple[Row, Row, str]]:
        """(node, service, status) of the instances to answer with."""
        catalog = self._store.catalog
        only_passing = self._config.only_passing
        out = []
        for node, service in self._instances(name, tag):
            status = "passing"
            for check in catalog.instance_checks(node["Node"], service["ID"]):
                if check["Status"] == "critical":
                    status = "critical"
                    break
                if check["Status"] != "passing":
                    status = "warning"
            if status == "critical" or (status == "warning" and only_passing):
                continue
            out.append((node, service, status))
        return out

    def _service(
        self, lookup: ServiceLookup, owner: bytes, qtype: int
    ) -> tuple[list[RR], list[RR]]:
        instances = self._healthy(lookup.service, lookup.tag)
        if not instances:
            raise NotFound(f"no healthy instance of {lookup.service!r}")
        self._rng.shuffle(instances)
        ttl = self._config.ttl_for_service(instances[0][1]["Service"])
        if qtype in ADDRESS_TYPES:
            return self._service_addresses(instances, owner, qtype, ttl), []
        if qtype == dns.SRV:
            return self._service_srv(instances, owner, ttl)
        if qtype == dns.TXT:
            return self._service_meta(instances, owner, ttl), []
        return [], []

    def _service_addresses(
        self, instances: Iterable[tuple[Row, Row, str]], owner: bytes, qtype: int, ttl: int
    ) -> list[RR]:
        seen = set()
        out: list[RR] = []
        for node, service, _ in instances:
            address = service["Address"] or node["Address"]
            if address in seen:
                continue
            seen.add(address)
            out.extend(self._address(owner, address, qtype, ttl))
        return out

    def _service_srv(
        self, instances: Iterable[tuple[Row, Row, str]], owner: bytes, ttl: int
    ) -> tuple[list[RR], list[RR]]:
        answers: list[RR] = []
        additional: list[RR] = []
        seen: set[tuple[bytes, int]] = set()
        targets: set[bytes] = set()
        for node, service, status in instances:
            address = service["Address"]
            extra: list[RR] = []
            target: bytes | None
            if not address:
                target = self._node_target(node)
                if target is not None:
                    extra = self._address(target, node["Address"], dns.ALL_RECORDS, ttl)
                    extra.extend(self._meta(target, node, ttl))
            elif ip_version(address):
                target = dns_name(f"{address_label(address)}.addr.{self._dc}.{self._domain}")
                if target is not None:
                    extra = self._address(target, address, dns.ALL_RECORDS, ttl)
            else:
                target = dns_name(address)
            if target is None or (target, service["Port"]) in seen:
                continue
            seen.add((target, service["Port"]))
            weights = service.get("Weights") or {}
            weight = weights.get("Warning" if status == "warning" else "Passing", 1)
            record = dns.Record_SRV(1, int(weight) & 0xFFFF, service["Port"] & 0xFFFF, target, ttl)
            answers.append(RR(owner, dns.SRV, dns.IN, ttl, record, True))
            if target not in targets:
                targets.add(target)
                additional.extend(extra)
        return answers, additional

    def _service_meta(
        self, instances: Iterable[tuple[Row, Row, str]], owner: bytes, ttl: int
    ) -> list[RR]:
        seen: set[bytes] = set()
        out = []
        for node, _, _ in instances:
            for text in meta_strings(node.get("Meta") or {}):
                if text not in seen:
                    seen.add(text)
                    out.append(RR(owner, dns.TXT, dns.IN, ttl, dns.Record_TXT(text, ttl=ttl), True))
        return out

    # -- reverse --------------------------------------------------------------

    def _reverse(self, address: str, owner: bytes, qtype: int) -> list[RR]:
        catalog = self._store.catalog
        target: bytes | None = None
        for node in catalog.nodes.values():
            if normal_ip(node["Address"]) == address:
                target = self._node_target(node)
                break
        else:
            for on_node in catalog.services.values():
                for service in on_node.values():
                    if service["Address"] and normal_ip(service["Address"]) == address:
                        target = dns_name(f"{service['Service']}.service.{self._dc}.{self._domain}")
                        break
                if target is not None:
                    break
        if target is None:
            raise NotFound(f"no node or service at {address}")
        if qtype not in (dns.PTR, dns.ALL_RECORDS):
            return []
        ttl = int(self._config.node_ttl)
        return [RR(owner, dns.PTR, dns.IN, ttl, dns.Record_PTR(target, ttl), True)]
