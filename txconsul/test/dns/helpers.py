"""A catalog, an authority and packets for the DNS tests."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.names import dns

from txconsul.config import load
from txconsul.dns.authority import ConsulAuthority
from txconsul.dns.server import DNSResponder
from txconsul.state.store import StateStore

NOW = 1_732_500_000


class FakeConsensus:
    def __init__(self, leader: bool = True) -> None:
        self.leader = leader

    def is_leader(self) -> bool:
        return self.leader


class World:
    """A state store with a few nodes and services, and the DNS code over it."""

    def __init__(self, seed: int = 1, leader: bool = True, **flags: Any) -> None:
        self.config = load({"dev": True, "node_name": "n1", **flags})
        self.store = StateStore()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.consensus = FakeConsensus(leader)
        self.authority = ConsulAuthority(
            self.store,
            self.consensus,  # type: ignore[arg-type]
            self.config,
            self.clock.seconds,  # this clock stands for the wall clock: NOW is a date
            random.Random(seed),
        )
        self.responder = DNSResponder(self.authority, self.config.dns)
        self.index = 0

    def register(self, node: str, address: str, service: dict | None = None, **kw: Any) -> None:
        self.index += 1
        request: dict[str, Any] = {"Node": node, "Address": address, **kw}
        if service is not None:
            request["Service"] = service
        self.store.catalog.register(self.index, request)

    def check(self, node: str, check_id: str, status: str, service_id: str = "") -> None:
        self.register(
            node,
            "",
            SkipNodeUpdate=True,
            Checks=[{"CheckID": check_id, "Status": status, "ServiceID": service_id}],
        )

    def lookup(self, name: str, qtype: int = dns.A):
        return self.authority.lookup(name.encode("ascii"), qtype)


def packet(
    name: str | bytes,
    qtype: int = dns.A,
    cls: int = dns.IN,
    qid: int = 4021,
    edns: int | None = None,
    version: int = 0,
) -> bytes:
    m = dns.Message(id=qid, recDes=1)
    m.queries = [dns.Query(name, qtype, cls)]
    if edns is not None:
        m.additional = [dns.RRHeader(b"", dns.OPT, edns, version << 16, dns.UnknownRecord(b""))]
    wire: bytes = m.toStr()
    return wire


def parse(wire: bytes) -> dns.Message:
    m = dns.Message()
    m.fromStr(wire)
    return m
