# -*- test-case-name: txconsul.test.raft.test_transport -*-
"""
Raft's transport over port 8300: ``RaftConnection``s of ``txconsul.rpc``.

Each server keeps one outbound connection per peer and sends on it only;
replies come back on the peer's own outbound connection. The first frame of
an outbound connection is a hello naming the sender's server address, so the
inbound side can tell ``receive(src, payload)`` who spoke.

Messages sent while the connection to a peer is being made wait in a bounded
queue (``max_queued`` messages, ``max_queued_bytes`` bytes; when full the
oldest goes, counted as ``dropped``) and leave, in order, right after the
hello: a new leader's first heartbeats and a candidate's vote requests are
not lost to the connection they caused. When the attempt fails the queue is
dropped (Raft resends whatever still matters) and a new connection is tried
at most once per ``retry_interval``.

Liveness: an outbound connection carries Raft's messages one way only, so
TCP alone never tells the sender that the path died (a network cut leaves the
connection open, its unsent data in retransmission backoff, for minutes).
The sender therefore asks: a send on a connection that has been quiet for
``probe_interval`` also writes a ping, which the other side answers on the
same connection with a pong. A connection whose ping is unanswered after
``dead_after`` (twice the default election timeout) is aborted at the next
send, and that message waits for a new connection. Checking at each send
needs no timer: Raft sends whenever it has something to say (a leader every
heartbeat), and a connection nobody sends on may stay as it is. On the
inbound side a second hello from the same sender replaces the older
connection (the sender gave up on it), and TCP keepalive is on, so
connections whose sender vanished for good are reaped too.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txconsul.errors import BadRequest
from txconsul.raft.node import IRaftTransport
from txconsul.rpc.framing import MalformedFrame, pack, unpack
from txconsul.rpc.protocol import RaftConnection, parse_address, tune_tcp

#: ``receive(src, payload)``: one Raft message from server ``src``
Receiver = Callable[[str, bytes], None]


#: a sender's question on an outbound connection ("are you there?") and the answer;
#: maps, so they never parse as Raft messages (which are msgpack arrays)
PING = pack({"Ping": True})
PONG = pack({"Pong": True})


def hello(me: str) -> bytes:
    """The first frame of an outbound connection."""
    return pack({"Hello": me})


def parse_hello(payload: bytes) -> str:
    value = unpack(payload)
    if not isinstance(value, dict) or not isinstance(value.get("Hello"), str):
        raise MalformedFrame("the first raft frame does not name its sender")
    src: str = value["Hello"]
    if not src:
        raise MalformedFrame("the first raft frame names an empty sender")
    return src


@attrs.define
class _Outbound:
    """An open outbound connection and what the liveness rule knows of it."""

    connection: RaftConnection
    #: when the other side last answered (or the connection opened)
    heard: float
    #: when the ping still unanswered was sent
    ping_at: float | None = None


@implementer(IRaftTransport)
class RaftTransport(Service):
    """
    :param me: this server's address (``ip:port``), sent in each hello.
    :param receive: where inbound messages go (``RaftNode.receive``); may be
        set later through the ``receive`` attribute.
    :param probe_interval: a send on a connection quiet this long also pings.
    :param dead_after: a ping unanswered this long condemns its connection.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        me: str,
        receive: Receiver | None = None,
        retry_interval: float = 0.5,
        connect_timeout: float = 2.0,
        max_queued: int = 256,
        max_queued_bytes: int = 16 * 1024 * 1024,
        probe_interval: float = 0.5,
        dead_after: float = 2.0,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self.me = me
        self.receive: Receiver | None = receive
        self.retry_interval = retry_interval
        self.connect_timeout = connect_timeout
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.probe_interval = probe_interval
        self.dead_after = dead_after
        self._out: dict[str, _Outbound] = {}
        self._connecting: dict[str, Deferred[RaftConnection]] = {}
        self._next_try: dict[str, float] = {}
        #: per peer: messages waiting for its connection, and their total size
        self._queue: dict[str, deque[bytes]] = {}
        self._queued_bytes: dict[str, int] = {}
        #: inbound connections, with the sender their hello named ("" before it)
        self._inbound: dict[RaftConnection, str] = {}
        self.stats: Counter[str] = Counter()

    # -- outbound -------------------------------------------------------------------

    def send(self, to: str, data: bytes) -> None:
        out = self._out.get(to)
        if out is not None and not out.connection.closed:
            now = self._clock.seconds()
            if out.ping_at is None or now - out.ping_at < self.dead_after:
                out.connection.send(data)
                self.stats["sent"] += 1
                if out.ping_at is None and now - out.heard >= self.probe_interval:
                    out.connection.send(PING)
                    out.ping_at = now
                    self.stats["pings"] += 1
                return
            self._condemn(to, out, now)
        if not self.running:
            self.stats["dropped"] += 1
            return
        self._enqueue(to, data)
        self._connect(to)
        if to not in self._connecting:
            # no attempt under way (one failed less than retry_interval ago,
            # or the address is bad): nothing would ever carry the queue
            self._drop_queue(to)

    def _condemn(self, to: str, out: _Outbound, now: float) -> None:
        """Abort a connection whose ping went unanswered; the next send dials again."""
        assert out.ping_at is not None
        self.stats["dead_connections"] += 1
        self.log.info(
            "raft connection to {to} answered no ping in {seconds:.1f}s: closing it",
            to=to,
            seconds=now - out.ping_at,
        )
        del self._out[to]
        out.connection.abort()

    def _heard(self, to: str, connection: RaftConnection, payload: bytes) -> None:
        out = self._out.get(to)
        if payload != PONG or out is None or out.connection is not connection:
            self.stats["unexpected_frames"] += 1
            return
        out.heard = self._clock.seconds()
        out.ping_at = None

    def _enqueue(self, to: str, data: bytes) -> None:
        queue = self._queue.setdefault(to, deque())
        queue.append(data)
        self.stats["queued"] += 1
        size = self._queued_bytes.get(to, 0) + len(data)
        # the newest message always stays, however large
        while len(queue) > 1 and (len(queue) > self.max_queued or size > self.max_queued_bytes):
            size -= len(queue.popleft())
            self.stats["dropped"] += 1
        self._queued_bytes[to] = size

    def _drop_queue(self, to: str) -> None:
        queue = self._queue.pop(to, None)
        self._queued_bytes.pop(to, None)
        if queue:
            self.stats["dropped"] += len(queue)

    def queued(self, to: str) -> int:
        """How many messages wait for the connection to ``to``."""
        return len(self._queue.get(to, ()))

    def _endpoint(self, to: str) -> IStreamClientEndpoint:
        host, port = parse_address(to)
        if ":" in host:
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=self.connect_timeout)
        return TCP4ClientEndpoint(self._reactor, host, port, timeout=self.connect_timeout)

    def _connect(self, to: str) -> None:
        now = self._clock.seconds()
        if to in self._connecting or now < self._next_try.get(to, 0.0):
            return
        self._next_try[to] = now + self.retry_interval
        try:
            endpoint = self._endpoint(to)
        except BadRequest as e:
            self.log.warn("no raft connection to {to}: {error}", to=to, error=str(e))
            return
        connection = RaftConnection(outbound=True, stats=self.stats)
        attempt: Deferred[RaftConnection] = connectProtocol(endpoint, connection)
        self._connecting[to] = attempt

        def connected(connection: RaftConnection) -> None:
            self._connecting.pop(to, None)
            if not self.running:
                connection.close()
                return
            tune_tcp(connection.transport)
            connection.send(hello(self.me))
            connection.on_close = lambda reason: self._lost(to, connection)
            connection.on_frame = lambda payload: self._heard(to, connection, payload)
            self._out[to] = _Outbound(connection, self._clock.seconds())
            self.stats["connected"] += 1
            queue = self._queue.pop(to, None)
            self._queued_bytes.pop(to, None)
            for data in queue or ():
                connection.send(data)
                self.stats["sent"] += 1
            self.log.debug("raft connection to {to} open", to=to)

        def failed(failure: Failure) -> None:
            self._connecting.pop(to, None)
            self._drop_queue(to)
            self.stats["connect_failures"] += 1
            self.log.debug("raft connection to {to} failed: {why}", to=to, why=failure.value)

        attempt.addCallbacks(connected, failed)

    def _lost(self, to: str, connection: RaftConnection) -> None:
        out = self._out.get(to)
        if out is not None and out.connection is connection:
            del self._out[to]
            self.log.debug("raft connection to {to} lost", to=to)

    # -- inbound --------------------------------------------------------------------

    def handle_inbound(self, connection: RaftConnection) -> None:
        """
        The ``RPCListener``'s Raft handler: reads the hello, answers pings,
        passes the other frames on.
        """
        sender: list[str] = []
        self._inbound[connection] = ""

        def on_frame(payload: bytes) -> None:
            if not sender:
                try:
                    sender.append(parse_hello(payload))
                except MalformedFrame as e:
                    self.stats["bad_hello"] += 1
                    self.log.warn(
                        "closing raft connection from {peer}: {error}",
                        peer=connection.peer,
                        error=str(e),
                    )
                    connection.close()
                    return
                self._hello(connection, sender[0])
                return
            if payload == PING:
                connection.send(PONG)
            elif self.receive is not None:
                self.receive(sender[0], payload)

        def on_close(reason: Failure) -> None:
            self._inbound.pop(connection, None)

        connection.on_frame = on_frame
        connection.on_close = on_close

    def _hello(self, connection: RaftConnection, sender: str) -> None:
        tune_tcp(connection.transport)
        for other, name in list(self._inbound.items()):
            if name == sender and other is not connection:
                # the sender dialled again: it gave up on the older connection
                self.stats["replaced_inbound"] += 1
                self.log.info("raft connection from {sender} replaced by a new one", sender=sender)
                del self._inbound[other]
                other.abort()
        self._inbound[connection] = sender

    # -- life cycle -----------------------------------------------------------------

    def stopService(self) -> Deferred[object]:
        super().stopService()
        for attempt in list(self._connecting.values()):
            attempt.cancel()
        self._connecting.clear()
        for to in list(self._queue):
            self._drop_queue(to)
        waits: list[Deferred[object]] = []
        for connection in [*(out.connection for out in self._out.values()), *self._inbound]:
            if not connection.closed and connection.transport is not None:
                d: Deferred[object] = Deferred()
                connection.on_close = lambda reason, d=d: d.callback(None)
                waits.append(d)
                connection.close()
        self._out.clear()
        self._inbound.clear()
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)
