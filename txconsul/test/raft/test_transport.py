"""The Raft transport over port-8300 connections, on 127.0.0.1."""

from __future__ import annotations

import time

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.raft.transport import RaftTransport, hello, parse_hello
from txconsul.rpc.framing import MalformedFrame, pack
from txconsul.rpc.listener import RPCListener
from txconsul.rpc.protocol import Dispatcher


class HelloTests(SynchronousTestCase):
    def test_hello_names_the_sender(self) -> None:
        self.assertEqual(parse_hello(hello("10.0.0.1:8300")), "10.0.0.1:8300")

    def test_a_first_frame_that_is_no_hello_is_refused(self) -> None:
        for payload in (pack([1]), pack({"Hello": 3}), pack({"Hello": ""}), b"\xc1"):
            self.assertRaises(MalformedFrame, parse_hello, payload)


class TransportTests(TestCase):
    timeout = 20

    def server(self) -> tuple[RaftTransport, list[tuple[str, bytes]]]:
        got: list[tuple[str, bytes]] = []
        listener = RPCListener(reactor, Dispatcher(), portno=0, interface="127.0.0.1")
        listener.startService()
        self.addCleanup(listener.stopService)
        me = "127.0.0.1:%d" % listener.address()[1]
        transport = RaftTransport(
            reactor, reactor, me, lambda src, data: got.append((src, data)), retry_interval=0.05
        )
        listener.set_raft_handler(transport.handle_inbound)
        transport.startService()
        self.addCleanup(transport.stopService)
        return transport, got

    async def until(self, condition: object, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while not callable(condition) or not condition():
            if time.monotonic() > deadline:
                self.fail("condition not met")
            await deferLater(reactor, 0.02, lambda: None)

    async def test_messages_arrive_named_by_their_sender_once_connected(self) -> None:
        a, _ = self.server()
        b, got_b = self.server()
        a.send(b.me, b"dropped while connecting")
        self.assertEqual(a.stats["dropped"], 1)
        await self.until(lambda: b.me in a._out)
        a.send(b.me, b"one")
        a.send(b.me, b"two")
        await self.until(lambda: len(got_b) == 2)
        self.assertEqual(got_b, [(a.me, b"one"), (a.me, b"two")])

    async def test_sending_to_a_server_that_is_down_drops_and_retries_later(self) -> None:
        a, _ = self.server()
        a.send("127.0.0.1:1", b"x")
        await self.until(lambda: a.stats["connect_failures"] >= 1)
        self.assertNotIn("127.0.0.1:1", a._out)
