# -*- test-case-name: txconsul.test.dns.test_remote -*-
"""
A DNS lookup carried over RPC: a client agent's settings out, the answer back.

A client agent keeps no catalog, so ``RemoteAuthority`` asks a server
(``DNS.Lookup``) to answer a question about the ``consul`` domain with the
client's own domain and DNS settings; the records come back as one DNS
message (the wire format the records already have) beside the flags of the
``Answer``. Names outside the domain never leave the client: its own
recursors answer them.

With ``dns_config.allow_stale`` false a lookup is the leader's, as a default
HTTP read is: a follower asked by a client sends the question on to the
leader (``Hop``, so it goes no further), and a server's own DNS interface
asks the leader too (``LeaderAuthority``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from txconsul.config import AgentConfig
from txconsul.dns.authority import Answer, ConsulAuthority
from txconsul.dns.config import DNSConfig
from txconsul.dns.query import Outside, parse_name
from txconsul.errors import BadRequest

#: how long a client waits for a server's answer (resolvers retry after a few seconds)
LOOKUP_TIMEOUT = 5.0

_BOOLS = ("allow_stale", "only_passing", "enable_truncate")
_NUMBERS = ("node_ttl", "recursor_timeout")


def dns_config_to_wire(config: DNSConfig) -> dict[str, Any]:
    return {
        **{name: getattr(config, name) for name in (*_BOOLS, *_NUMBERS)},
        "udp_answer_limit": config.udp_answer_limit,
        "service_ttl": dict(config.service_ttl),
    }


def dns_config_from_wire(raw: Any) -> DNSConfig:
    """The settings a client sent; ``BadRequest`` for anything of the wrong type."""
    if not isinstance(raw, Mapping):
        raise BadRequest("DNS.Lookup: Config must be a map")
    kw: dict[str, Any] = {}
    for name in _BOOLS:
        if name in raw:
            if not isinstance(raw[name], bool):
                raise BadRequest(f"DNS.Lookup: {name} must be true or false")
            kw[name] = raw[name]
    for name in _NUMBERS:
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise BadRequest(f"DNS.Lookup: {name} must be a duration in seconds")
            kw[name] = float(value)
    limit = raw.get("udp_answer_limit", 3)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequest("DNS.Lookup: udp_answer_limit must be a positive number")
    kw["udp_answer_limit"] = limit
    ttls = raw.get("service_ttl", {})
    if not isinstance(ttls, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in ttls.items()
    ):
        raise BadRequest("DNS.Lookup: service_ttl must map names to seconds")
    kw["service_ttl"] = {k: float(v) for k, v in ttls.items()}
    return DNSConfig(**kw)


def config_key(config: DNSConfig) -> tuple[Any, ...]:
    """A hashable stand-in for ``config`` (its ``service_ttl`` is a dict)."""
    wire = dns_config_to_wire(config)
    wire["service_ttl"] = tuple(sorted(config.service_ttl.items()))
    return tuple(sorted(wire.items()))


def answer_to_wire(answer: Answer) -> dict[str, Any]:
    message = dns.Message(maxSize=0)
    message.answers = list(answer.answers)
    message.authority = list(answer.authority)
    message.additional = list(answer.additional)
    return {
        "Rcode": answer.rcode,
        "Authoritative": answer.authoritative,
        "Recurse": answer.recurse,
        "Records": message.toStr(),
    }


def answer_from_wire(value: Any) -> Answer:
    """A server's answer; ``BadRequest`` if it cannot be one."""
    if not isinstance(value, Mapping):
        raise BadRequest("DNS.Lookup answered something that is not a map")
    rcode, records = value.get("Rcode"), value.get("Records")
    if isinstance(rcode, bool) or not isinstance(rcode, int) or not isinstance(records, bytes):
        raise BadRequest("DNS.Lookup answered a map of the wrong shape")
    message = dns.Message()
    try:
        message.fromStr(records)
    except Exception as e:  # twisted.names raises many types for bad packets
        raise BadRequest(f"DNS.Lookup answered records that do not parse: {e}") from None
    return Answer(
        rcode,
        list(message.answers),
        list(message.authority),
        list(message.additional),
        authoritative=bool(value.get("Authoritative", True)),
        recurse=bool(value.get("Recurse", False)),
    )


class RemoteAuthority:
    """
    A client agent's authority for the ``consul`` domain: every question goes
    to a server through ``call(method, body, idempotent, timeout)``
    (``txconsul.agent.remote.Remote.call``); a failure is SERVFAIL.
    """

    log = Logger()

    def __init__(self, call: Any, config: AgentConfig, hop: bool = False) -> None:
        """:param hop: a server asking the leader: the question goes no further."""
        self._call = call
        self._domain = config.domain.strip(".").lower()
        self._request: dict[str, Any] = {
            "Domain": config.domain,
            "Datacenter": config.datacenter,
            "Config": dns_config_to_wire(config.dns),
        }
        if hop:
            self._request["Hop"] = True

    def lookup(self, name: bytes, qtype: int) -> Answer | Deferred[Answer]:
        if isinstance(parse_name(name.decode("latin-1"), self._domain), Outside):
            return Answer(dns.EREFUSED, authoritative=False, recurse=True)
        body = {**self._request, "Name": name, "Type": qtype}
        d: Deferred[Any] = self._call("DNS.Lookup", body, True, LOOKUP_TIMEOUT)

        def failed(f: Failure) -> Answer:
            self.log.warn(
                "no server answered the DNS lookup of {name!r}: {why}",
                name=name,
                why=f.getErrorMessage(),
            )
            return Answer(dns.ESERVER, authoritative=False)

        return d.addCallback(answer_from_wire).addErrback(failed)


class LeaderAuthority:
    """
    A server's authority when ``dns_config.allow_stale`` is false: the leader
    answers from its own store, a follower asks the leader.
    """

    def __init__(
        self, local: ConsulAuthority, remote: RemoteAuthority, leads: Callable[[], bool]
    ) -> None:
        self._local = local
        self._remote = remote
        self._leads = leads

    def lookup(self, name: bytes, qtype: int) -> Answer | Deferred[Answer]:
        if self._leads():
            return self._local.lookup(name, qtype)
        return self._remote.lookup(name, qtype)
