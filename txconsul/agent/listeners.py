# -*- test-case-name: txconsul.test.agent.test_agent -*-
"""
Listener services that own one port each and tell which one they got.

Twisted's ``TCPServer`` keeps its port private; ours exposes ``address()`` so
that tests can listen on port 0 and then connect.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import ServerFactory

# Many clients (1,000 blocking queries, say) may connect at once.
BACKLOG = 1024


class TCPListener(Service):
    """Listens on one TCP port while running."""

    port: IListeningPort | None = None

    def __init__(
        self, reactor: IReactorTCP, factory: ServerFactory[Any], portno: int, interface: str
    ) -> None:
        self._reactor = reactor
        self._factory = factory
        self._portno = portno
        self._interface = interface

    def startService(self) -> None:
        self.port = self._reactor.listenTCP(self._portno, self._factory, BACKLOG, self._interface)
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        stopping = port.stopListening() if port is not None else None
        return stopping if stopping is not None else succeed(None)

    def address(self) -> tuple[str, int]:
        """The bound (host, port); only while running."""
        assert self.port is not None, "not listening"
        host = self.port.getHost()
        return host.host, host.port  # type: ignore[attr-defined]
