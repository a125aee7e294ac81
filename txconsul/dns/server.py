# -*- test-case-name: txconsul.test.dns.test_server -*-
"""
The DNS listeners: packets in, ``ConsulAuthority`` asked, packets out.

Records and the wire format are ``twisted.names.dns``'s, recursion is
``twisted.names.client``'s. The request handling is ours rather than
``twisted.names.server.DNSServerFactory``'s because that one drops malformed
packets without an answer, cuts long UDP replies in the middle of a record,
and cannot put the SOA beside an NXDOMAIN. ``DNSResponder.handle`` is the
whole policy: bad packets get FORMERR, other opcodes and zone transfers
NOTIMP, other classes REFUSED, names outside the domain go to the recursors
or are REFUSED, and UDP replies are cut to whole records that fit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.protocols.basic import Int16StringReceiver

from txconsul.clock import wall_time
from txconsul.config import AgentConfig
from txconsul.dns.authority import Answer, ConsulAuthority
from txconsul.dns.config import DNSConfig, parse_recursor
from txconsul.dns.remote import LeaderAuthority, RemoteAuthority
from txconsul.interfaces import IConsensus
from txconsul.state.store import StateStore

RR = dns.RRHeader

HEADER = struct.Struct("!HBBHHHH")
UDP_MIN = 512
UDP_MAX = 65467
TCP_MAX = 65535
BADVERS = 16
#: Query types we never answer: zone transfers and the obsolete mail types.
NOT_IMPLEMENTED = frozenset({dns.AXFR, dns.IXFR, dns.MAILA, dns.MAILB})
#: A TCP connection with no query for this long is closed.
TCP_IDLE_TIMEOUT = 10.0


@attrs.frozen
class EDNS:
    """What the client's OPT record offered."""

    size: int
    version: int
    dnssec_ok: bool


def _header_reply(data: bytes, rcode: int) -> bytes:
    """A reply with no sections to a request whose header alone could be read."""
    qid, byte3, _, _, _, _, _ = HEADER.unpack_from(data)
    opcode_rd = byte3 & 0x79  # opcode and RD, as asked
    return HEADER.pack(qid, 0x80 | opcode_rd, rcode & 0xF, 0, 0, 0, 0)


def _opt(edns: EDNS, rcode: int) -> RR:
    ttl = ((rcode >> 4) << 24) | (int(edns.dnssec_ok) << 15)
    return RR(b"", dns.OPT, min(edns.size, 4096), ttl, dns.UnknownRecord(b""))


def _referenced(answers: Sequence[RR]) -> set[bytes]:
    """Names the answers point at (SRV targets, NS and CNAME names)."""
    names = set()
    for rr in answers:
        payload: Any = rr.payload
        target = getattr(payload, "target", None) or getattr(payload, "name", None)
        if target is not None:
            names.add(target.name)
    return names


def encode(
    message: dns.Message,
    size: int,
    answer_limit: int | None = None,
    set_tc: bool = False,
    opt: RR | None = None,
) -> bytes:
    """
    ``message`` on the wire in at most ``size`` bytes, cut to whole records.

    Answers beyond ``answer_limit`` go first; then, while it does not fit, the
    authority section, then answers from the end, with the additional records
    that served them. TC is set on a cut reply only when ``set_tc`` is.
    """
    answers = list(message.answers)
    authority = list(message.authority)
    additional = list(message.additional)
    trimmed = False

    def build(n: int, with_authority: bool, with_additional: bool) -> bytes:
        kept = answers[:n]
        extra = additional if n == len(answers) else []
        if n != len(answers) and with_additional:
            wanted = _referenced(kept)
            extra = [rr for rr in additional if rr.name.name in wanted]
        message.answers = kept
        message.authority = authority if with_authority else []
        message.additional = (extra if with_additional else []) + ([opt] if opt else [])
        message.trunc = int(set_tc and (trimmed or n != len(answers)))
        wire: bytes = message.toStr()
        return wire

    message.maxSize = 0
    if answer_limit is not None and len(answers) > answer_limit:
        del answers[answer_limit:]
        wanted = _referenced(answers)
        additional = [rr for rr in additional if rr.name.name in wanted]
        trimmed = True
    wire = build(len(answers), True, True)
    if len(wire) <= size:
        return wire
    trimmed = True
    wire = build(len(answers), False, True)
    if len(wire) <= size:
        return wire
    # The most answers that fit, with their additional records.
    low, high = 0, len(answers) - 1
    best = build(0, False, False)
    while low <= high:
        middle = (low + high) // 2
        attempt = build(middle, False, True)
        if len(attempt) <= size:
            best, low = attempt, middle + 1
        else:
            high = middle - 1
    return best


class DNSResponder:
    """
    One request packet in, one reply packet out (or a Deferred of it, when a
    recursor answers; or None, for packets we do not answer at all).
    """

    log = Logger()

    def __init__(
        self,
        authority: ConsulAuthority | RemoteAuthority | LeaderAuthority,
        config: DNSConfig,
        recursors: Sequence[tuple[str, int]] = (),
        reactor: Any = None,
    ) -> None:
        self._authority = authority
        self._config = config
        self._recursors = [client.Resolver(servers=[r], reactor=reactor) for r in recursors]
        self.dropped = 0

    def handle(self, data: bytes, udp: bool) -> bytes | Deferred[bytes] | None:
        if len(data) < HEADER.size:
            self.dropped += 1
            return None
        qid, byte3, _, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
        if byte3 & 0x80:
            # A response sent to a server: answering could start a loop.
            self.dropped += 1
            return None
        if (byte3 >> 3) & 0xF != dns.OP_QUERY:
            return _header_reply(data, dns.ENOTIMP)
        if qdcount != 1:
            return _header_reply(data, dns.EFORMAT)
        request = dns.Message()
        try:
            request.fromStr(data)
        except Exception:
            return _header_reply(data, dns.EFORMAT)
        counts = (len(request.answers), len(request.authority), len(request.additional))
        if len(request.queries) != 1 or counts != (ancount, nscount, arcount):
            return _header_reply(data, dns.EFORMAT)
        options = [rr for rr in request.additional if rr.type == dns.OPT]
        edns = None
        if options:
            opt = options[0]
            if len(options) > 1 or opt.name.name != b"":
                return _header_reply(data, dns.EFORMAT)
            edns = EDNS(
                size=min(max(opt.cls, UDP_MIN), UDP_MAX),
                version=(opt.ttl >> 16) & 0xFF,
                dnssec_ok=bool((opt.ttl >> 15) & 1),
            )
        query = request.queries[0]
        reply = dns.Message(id=qid, answer=1, opCode=dns.OP_QUERY, recDes=request.recDes, maxSize=0)
        reply.queries = [query]
        reply.recAv = bool(self._recursors)
        if edns is not None and edns.version != 0:
            return self._finish(reply, Answer(BADVERS, authoritative=False), udp, edns)
        if query.type == dns.OPT:
            return self._finish(reply, Answer(dns.EFORMAT, authoritative=False), udp, edns)
        if query.cls not in (dns.IN, dns.ANY):
            return self._finish(reply, Answer(dns.EREFUSED, authoritative=False), udp, edns)
        if query.type in NOT_IMPLEMENTED:
            return self._finish(reply, Answer(dns.ENOTIMP, authoritative=False), udp, edns)
        try:
            answer = self._authority.lookup(query.name.name, query.type)
        except Exception:
            self.log.failure("DNS lookup of {name!r} failed", name=query.name.name)
            answer = Answer(dns.ESERVER, authoritative=False)
        if isinstance(answer, Deferred):  # a client agent's server answers
            return answer.addCallback(self._answered, reply, query, udp, edns)
        return self._answered(answer, reply, query, udp, edns)

    def _answered(
        self, answer: Answer, reply: dns.Message, query: dns.Query, udp: bool, edns: EDNS | None
    ) -> bytes | Deferred[bytes]:
        if answer.recurse and self._recursors:
            return ensureDeferred(self._recurse(reply, query, udp, edns))
        return self._finish(reply, answer, udp, edns)

    def _finish(self, reply: dns.Message, answer: Answer, udp: bool, edns: EDNS | None) -> bytes:
        reply.rCode = answer.rcode & 0xF
        reply.auth = answer.authoritative
        reply.answers = answer.answers
        reply.authority = answer.authority
        reply.additional = answer.additional
        opt = _opt(edns, answer.rcode) if edns is not None else None
        if not udp:
            return encode(reply, TCP_MAX, opt=opt)
        if edns is not None:
            return encode(reply, edns.size, set_tc=self._config.enable_truncate, opt=opt)
        return encode(
            reply, UDP_MIN, self._config.udp_answer_limit, self._config.enable_truncate, opt
        )

    async def _recurse(
        self, reply: dns.Message, query: dns.Query, udp: bool, edns: EDNS | None
    ) -> bytes:
        """Ask each recursor in turn; the first NOERROR or NXDOMAIN wins."""
        for resolver in self._recursors:
            try:
                response = await resolver.queryUDP(
                    [dns.Query(query.name.name, query.type, query.cls)],
                    timeout=(self._config.recursor_timeout,),
                )
            except Exception as e:
                self.log.debug("recursor failed: {error}", error=repr(e))
                continue
            if response.rCode in (dns.OK, dns.ENAME):
                answer = Answer(
                    response.rCode,
                    list(response.answers),
                    list(response.authority),
                    [rr for rr in response.additional if rr.type != dns.OPT],
                    authoritative=False,
                )
                return self._finish(reply, answer, udp, edns)
        return self._finish(reply, Answer(dns.ESERVER, authoritative=False), udp, edns)


class DNSDatagramProtocol(DatagramProtocol):
    """UDP: each datagram is one request; Twisted calls ``datagramReceived``."""

    log = Logger()

    def __init__(self, responder: DNSResponder) -> None:
        self._responder = responder

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        reply = self._responder.handle(data, udp=True)
        if isinstance(reply, bytes):
            self._send(reply, addr)
        elif reply is not None:
            reply.addCallback(self._send, addr)
            reply.addErrback(lambda f: self.log.failure("DNS reply to {addr}", f, addr=addr))

    def _send(self, reply: bytes, addr: Any) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(reply, addr)
        except Exception as e:
            self.log.warn("could not answer {addr}: {error}", addr=addr, error=repr(e))


class DNSStreamProtocol(Int16StringReceiver):
    """
    TCP: two-byte length, then the request; replies are framed alike. An
    idle connection is closed after ``TCP_IDLE_TIMEOUT``, so a client that
    announces a length and never sends the bytes does not hold it forever.
    """

    log = Logger()
    MAX_LENGTH = TCP_MAX

    def __init__(self, responder: DNSResponder, clock: IReactorTime) -> None:
        self._responder = responder
        self._clock = clock
        self._idle: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._idle = self._clock.callLater(TCP_IDLE_TIMEOUT, self._timed_out)
        self.lost: Deferred[None] = Deferred()
        if isinstance(self.factory, DNSStreamFactory):
            self.factory.connections.add(self)

    def _timed_out(self) -> None:
        self._idle = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if isinstance(self.factory, DNSStreamFactory):
            self.factory.connections.discard(self)
        self.lost.callback(None)

    def stringReceived(self, data: bytes) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(TCP_IDLE_TIMEOUT)
        reply = self._responder.handle(data, udp=False)
        if isinstance(reply, bytes):
            self.sendString(reply)
        elif reply is not None:
            reply.addCallback(self.sendString)
            reply.addErrback(lambda f: self.log.failure("DNS reply over TCP", f))


class DNSStreamFactory(ServerFactory):
    def __init__(self, responder: DNSResponder, clock: IReactorTime) -> None:
        self._responder = responder
        self._clock = clock
        self.connections: set[DNSStreamProtocol] = set()

    def close_all(self) -> Deferred[None]:
        """Drop every open connection; fires once all are gone."""
        waiting = []
        for protocol in list(self.connections):
            waiting.append(protocol.lost)
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return gatherResults(waiting).addCallback(lambda _: None)

    def buildProtocol(self, addr: Any) -> DNSStreamProtocol:
        protocol = DNSStreamProtocol(self._responder, self._clock)
        protocol.factory = self
        return protocol


class DNSService(Service):
    """
    The agent's DNS interface: UDP and TCP on one port of ``client_addr``.

    With port 0 the UDP port is picked first and TCP takes the same number;
    ``address()`` tells which.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: StateStore,
        consensus: IConsensus,
        config: AgentConfig,
        rng: Any,
        authority: RemoteAuthority | LeaderAuthority | None = None,
        wall: Callable[[], float] = wall_time,
    ) -> None:
        """
        :param authority: a client agent's (its servers answer); by default the store's.
        :param wall: the wall clock, for the SOA serial.
        """
        self._reactor = reactor
        self.authority: ConsulAuthority | RemoteAuthority | LeaderAuthority = (
            authority or ConsulAuthority(store, consensus, config, wall, rng)
        )
        recursors = [parse_recursor(r) for r in config.recursors]
        self.responder = DNSResponder(self.authority, config.dns, recursors, reactor)
        self._portno = config.ports["dns"]
        self._interface = config.client_addr
        self._factory = DNSStreamFactory(self.responder, reactor)
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None

    def startService(self) -> None:
        if not IReactorUDP.providedBy(self._reactor):
            # A memory reactor in tests has no UDP; TCP alone still answers.
            self.log.warn("this reactor has no UDP; serving DNS over TCP only")
            self._tcp = self._listen_tcp(self._portno)
        else:
            self._listen_both()
        super().startService()
        self.log.info("serving DNS on {addr}", addr="%s:%d" % self.address())

    def _listen_tcp(self, portno: int) -> IListeningPort:
        port: IListeningPort = self._reactor.listenTCP(portno, self._factory, 50, self._interface)
        return port

    def _listen_both(self) -> None:
        attempts = 10 if self._portno == 0 else 1
        for attempt in range(attempts):
            udp = self._reactor.listenUDP(
                self._portno,
                DNSDatagramProtocol(self.responder),
                self._interface,
                maxPacketSize=UDP_MAX,
            )
            try:
                self._tcp = self._listen_tcp(udp.getHost().port)
            except CannotListenError:
                udp.stopListening()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp = udp
            return

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports = [p for p in (self._udp, self._tcp) if p is not None]
        self._udp = self._tcp = None
        stopping: list[Deferred[Any]] = [maybeDeferred(p.stopListening) for p in ports]
        stopping.append(self._factory.close_all())
        return gatherResults(stopping).addCallback(lambda _: None)

    def address(self) -> tuple[str, int]:
        """The bound (host, port), the same for UDP and TCP; only while running."""
        port = self._udp or self._tcp
        assert port is not None, "not listening"
        host = port.getHost()
        return host.host, host.port  # type: ignore[attr-defined]
