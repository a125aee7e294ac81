"""
Tests for txconsul.rpc.listener over real sockets on 127.0.0.1, port 0.

The few tests here check what the in-memory ones cannot: the listener binds,
tells its address, serves RPC to an ``RPCClient`` and hands Raft connections
to the plugged-in handler, through the kernel.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.errors import NotFound
from txconsul.rpc.listener import RPCListener
from txconsul.rpc.protocol import Dispatcher, RaftConnection, RPCClient


def not_found(body: Any) -> Any:
    raise NotFound(f"no key {body}")


class RealSocketTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.raft: list[RaftConnection] = []
        self.frames: Deferred[bytes] = Deferred()
        self.listener = RPCListener(
            reactor,
            Dispatcher({"KVS.Apply": lambda body: {"Applied": body}, "KVS.Get": not_found}),
            raft_handler=self.raft_handler,
            portno=0,
            interface="127.0.0.1",
        )
        self.listener.startService()
        self.addCleanup(self.listener.stopService)
        host, port = self.listener.address()
        self.addr = f"{host}:{port}"
        self.client = RPCClient(reactor, reactor)
        self.addCleanup(self.client.close)

    def raft_handler(self, connection: RaftConnection) -> None:
        self.raft.append(connection)
        connection.on_frame = self.frames.callback

    @inlineCallbacks
    def test_rpc_round_trip_and_errors(self) -> Any:
        self.assertEqual(self.listener.address()[0], "127.0.0.1")
        self.assertNotEqual(self.listener.address()[1], 0)
        answer = yield self.client.call(self.addr, "KVS.Apply", {"Key": "web"}, 5)
        self.assertEqual(answer, {"Applied": {"Key": "web"}})
        self.assertIs((yield self.client.call(self.addr, "Status.Ping", None, 5)), True)
        with self.assertRaises(NotFound):
            yield self.client.call(self.addr, "KVS.Get", "web", 5)
        self.assertEqual(self.listener.stats["rpc_connections"], 1)

    @inlineCallbacks
    def test_client_reconnects_after_the_server_drops_it(self) -> Any:
        yield self.client.call(self.addr, "Status.Ping", None, 5)
        [connection] = list(self.listener.factory.connections)
        client_side = self.client._connections[self.addr]
        connection.transport.loseConnection()
        yield client_side.whenClosed
        yield self.client.call(self.addr, "Status.Ping", None, 5)
        self.assertEqual(self.listener.stats["rpc_connections"], 2)

    @inlineCallbacks
    def test_raft_connection_reaches_the_handler(self) -> Any:
        host, port = self.listener.address()
        outbound = RaftConnection(outbound=True)
        yield connectProtocol(TCP4ClientEndpoint(reactor, host, port), outbound)
        self.addCleanup(lambda: outbound.close())
        outbound.send(b"\x93\x01\x02\x03")
        self.assertEqual((yield self.frames), b"\x93\x01\x02\x03")
        self.assertEqual(self.listener.stats["raft_connections"], 1)


class ListenerServiceTests(SynchronousTestCase):
    def test_listens_where_configured(self) -> None:
        memory = MemoryReactor()
        listener = RPCListener(memory, Dispatcher(), portno=8300, interface="10.0.0.1")
        listener.startService()
        port, factory, backlog, interface = memory.tcpServers[0]
        self.assertEqual((port, interface), (8300, "10.0.0.1"))
        self.assertIs(factory, listener.factory)
        self.successResultOf(listener.stopService())

    def test_raft_handler_can_be_plugged_in_later(self) -> None:
        listener = RPCListener(MemoryReactor(), Dispatcher())
        self.assertIsNone(listener.factory.raft_handler)
        seen: list[RaftConnection] = []
        listener.set_raft_handler(seen.append)
        self.assertEqual(listener.factory.raft_handler, seen.append)
