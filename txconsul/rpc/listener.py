# -*- test-case-name: txconsul.test.rpc.test_listener -*-
"""
The port-8300 listener: the first byte of each connection picks RPC or Raft.

``RPCListener`` is a service owning the port (``address()`` tells which one
it got, for port 0 in tests). Each connection starts as a ``PortProtocol``,
which reads the protocol byte and hands the rest of the stream to an
``RPCServerProtocol`` (requests go to the ``Dispatcher``) or to a
``RaftConnection`` given to the pluggable ``raft_handler``. Any other byte,
or Raft while no handler is plugged in, closes the connection with a logged,
counted refusal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTCP
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.rpc.framing import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_RAFT,
    PROTOCOL_RPC,
    RAFT_MAX_FRAME,
)
from txconsul.rpc.protocol import (
    DEFAULT_MAX_IN_FLIGHT,
    Dispatcher,
    RaftConnection,
    RPCServerProtocol,
    tune_tcp,
)

#: called with each inbound Raft connection; it sets ``on_frame`` (and ``on_close``)
RaftHandler = Callable[[RaftConnection], None]

#: many servers and clients connect at once after an election
BACKLOG = 1024


class PortProtocol(Protocol):
    """Reads the protocol byte, then passes everything on to the protocol it names."""

    log = Logger()

    def __init__(self, factory: PortFactory) -> None:
        self._factory = factory
        self.inner: Protocol | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._factory.connections.add(self)
        tune_tcp(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if not data:
            return
        kind, rest = data[0], data[1:]
        inner = self._factory.protocol_for(kind, self)
        if inner is None:
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self.inner = inner
        inner.makeConnection(self.transport)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._factory.connections.discard(self)
        if self.inner is not None:
            self.inner.connectionLost(reason)
        self.closed.callback(None)


class PortFactory(ServerFactory):
    """Builds the protocol for each connection; counts what it refuses in ``stats``."""

    log = Logger()
    noisy = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        raft_handler: RaftHandler | None = None,
        max_rpc_frame: int = DEFAULT_MAX_FRAME,
        max_raft_frame: int = RAFT_MAX_FRAME,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.dispatcher = dispatcher
        self.raft_handler = raft_handler
        self.max_rpc_frame = max_rpc_frame
        self.max_raft_frame = max_raft_frame
        self.max_in_flight = max_in_flight
        self.stats: Counter[str] = Counter()
        self.connections: set[PortProtocol] = set()

    def in_flight(self) -> int:
        """Requests being served on all RPC connections (blocking queries included)."""
        return sum(
            p.inner.in_flight for p in self.connections if isinstance(p.inner, RPCServerProtocol)
        )

    def buildProtocol(self, addr: IAddress | None) -> PortProtocol:
        return PortProtocol(self)

    def protocol_for(self, kind: int, port: PortProtocol) -> Protocol | None:
        peer = port.transport.getPeer() if port.transport is not None else None
        if kind == PROTOCOL_RPC:
            self.stats["rpc_connections"] += 1
            return RPCServerProtocol(
                self.dispatcher, self.stats, self.max_rpc_frame, self.max_in_flight
            )
        if kind == PROTOCOL_RAFT:
            if self.raft_handler is None:
                self.stats["raft_refused"] += 1
                self.log.warn("refused a raft connection from {peer}: no raft here", peer=peer)
                return None
            self.stats["raft_connections"] += 1
            connection = RaftConnection(max_frame=self.max_raft_frame, stats=self.stats)
            with self.log.failuresHandled("raft handler for {peer}", peer=peer) as op:
                self.raft_handler(connection)
            return connection if op.succeeded else None
        self.stats["unknown_protocol"] += 1
        self.log.warn(
            "refused a connection from {peer}: unknown protocol byte {byte:#04x}",
            peer=peer,
            byte=kind,
        )
        return None


class RPCListener(Service):
    """
    Listens on the RPC port (8300) while running.

    Stopping closes the port and every open connection; the Deferred fires
    when they are all closed.
    """

    port: IListeningPort | None = None

    def __init__(
        self,
        reactor: IReactorTCP,
        dispatcher: Dispatcher,
        raft_handler: RaftHandler | None = None,
        portno: int = 8300,
        interface: str = "0.0.0.0",
        max_rpc_frame: int = DEFAULT_MAX_FRAME,
        max_raft_frame: int = RAFT_MAX_FRAME,
    ) -> None:
        self._reactor = reactor
        self.factory = PortFactory(dispatcher, raft_handler, max_rpc_frame, max_raft_frame)
        self._portno = portno
        self._interface = interface

    @property
    def stats(self) -> Counter[str]:
        return self.factory.stats

    def set_raft_handler(self, handler: RaftHandler | None) -> None:
        """Plug Raft in (or out); connections already open keep their handler."""
        self.factory.raft_handler = handler

    def startService(self) -> None:
        self.port = self._reactor.listenTCP(self._portno, self.factory, BACKLOG, self._interface)
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        stopping = port.stopListening() if port is not None else None
        waits: list[Deferred[Any]] = [stopping if stopping is not None else succeed(None)]
        for connection in list(self.factory.connections):
            waits.append(connection.closed)
            if connection.transport is not None:
                connection.transport.loseConnection()
        return DeferredList(waits)

    def address(self) -> tuple[str, int]:
        """The bound (host, port); only while running."""
        assert self.port is not None, "not listening"
        host = self.port.getHost()
        return host.host, host.port  # type: ignore[attr-defined]
