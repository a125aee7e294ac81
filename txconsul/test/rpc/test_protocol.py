"""
Tests for txconsul.rpc.protocol and the port's first-byte switch, without sockets.

Client and server are joined in memory with ``twisted.test.iosim``; single
server connections are driven over a ``StringTransport``.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

import txconsul.testing.hypothesis  # noqa: F401
from txconsul.errors import BadRequest, NoLeader, NotFound, TooLarge, TxConsulError
from txconsul.raft.core import NotLeader
from txconsul.rpc.errors import (
    RPCConnectError,
    RPCConnectionLost,
    RPCError,
    RPCTimeout,
    UnknownMethod,
    error_from_wire,
)
from txconsul.rpc.framing import (
    Cancel,
    FrameDecoder,
    Request,
    Response,
    encode_frame,
    pack,
)
from txconsul.rpc.listener import PortFactory
from txconsul.rpc.protocol import Dispatcher, RaftConnection, RPCClient, RPCClientProtocol


def responses(transport: StringTransport) -> list[Response]:
    return [Response.from_wire(f) for f in FrameDecoder().feed(transport.value())]


def request_frame(method: str, request_id: int, body: Any = None) -> bytes:
    return encode_frame(Request(method, request_id, body).to_wire())


class Handlers:
    """A handler table whose answers the test gives, in any order."""

    def __init__(self) -> None:
        self.waiting: dict[Any, Deferred[Any]] = {}
        self.cancelled: list[Any] = []

    def slow(self, body: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(body))
        self.waiting[body] = d
        return d

    def table(self) -> dict[str, Any]:
        def not_found(body: Any) -> Any:
            raise NotFound(f"no key {body}")

        def not_leader(body: Any) -> Any:
            raise NotLeader("10.0.0.3:8300")

        def bug(body: Any) -> Any:
            return 1 / 0

        return {
            "KVS.Apply": lambda body: {"Applied": body},
            "KVS.Slow": self.slow,
            "KVS.Get": not_found,
            "KVS.Lead": not_leader,
            "KVS.Bug": bug,
            "KVS.Object": lambda body: object(),
        }


class ConnectedTests(SynchronousTestCase):
    """A client protocol and the port's server side, joined in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.handlers = Handlers()
        self.dispatcher = Dispatcher(self.handlers.table())
        self.factory = PortFactory(self.dispatcher)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            lambda: RPCClientProtocol(self.clock),
        )
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def call(self, method: str, body: Any = None, timeout: float | None = None) -> Deferred[Any]:
        d = self.client.call(method, body, timeout)
        self.pump.flush()
        return d

    def test_call_answers_the_handlers_body(self) -> None:
        self.assertEqual(
            self.successResultOf(self.call("KVS.Apply", {"Key": "web"})),
            {"Applied": {"Key": "web"}},
        )
        self.assertEqual(self.factory.stats["rpc_connections"], 1)

    def test_status_ping_is_built_in(self) -> None:
        self.assertIs(self.successResultOf(self.call("Status.Ping")), True)

    def test_many_calls_in_flight_answered_out_of_order(self) -> None:
        calls = [self.client.call("KVS.Slow", i) for i in range(20)]
        self.pump.flush()
        self.assertEqual(sorted(self.handlers.waiting), list(range(20)))
        self.assertEqual(self.client.in_flight, 20)
        for i in reversed(range(20)):
            self.handlers.waiting[i].callback(f"answer {i}")
            self.pump.flush()
            if i:
                self.assertNoResult(calls[0])
        self.assertEqual(
            [self.successResultOf(d) for d in calls], [f"answer {i}" for i in range(20)]
        )
        self.assertEqual(self.client.in_flight, 0)

    def test_fast_call_overtakes_a_slow_one(self) -> None:
        slow = self.client.call("KVS.Slow", "s")
        fast = self.client.call("KVS.Apply", "f")
        self.pump.flush()
        self.assertEqual(self.successResultOf(fast), {"Applied": "f"})
        self.assertNoResult(slow)
        self.handlers.waiting["s"].callback(1)
        self.pump.flush()
        self.assertEqual(self.successResultOf(slow), 1)

    def test_handler_errors_come_back_typed(self) -> None:
        failure = self.failureResultOf(self.call("KVS.Get", "web"), NotFound)
        self.assertEqual(str(failure.value), "no key web")
        leader = self.failureResultOf(self.call("KVS.Lead"), NotLeader).value
        self.assertEqual(leader.leader, "10.0.0.3:8300")

    def test_unknown_method_is_an_error_frame(self) -> None:
        failure = self.failureResultOf(self.call("KVS.Nope"), UnknownMethod)
        self.assertEqual(failure.value.method, "KVS.Nope")
        self.assertEqual(self.dispatcher.stats["unknown_method"], 1)
        self.assertIs(self.successResultOf(self.call("Status.Ping")), True)

    def test_handler_bug_is_logged_answered_and_survived(self) -> None:
        failure = self.failureResultOf(self.call("KVS.Bug"), TxConsulError)
        self.assertIn("ZeroDivisionError", str(failure.value))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.dispatcher.stats["internal_errors"], 1)
        self.assertIs(self.successResultOf(self.call("Status.Ping")), True)

    def test_unencodable_result_is_an_error_not_a_hang(self) -> None:
        failure = self.failureResultOf(self.call("KVS.Object"), TxConsulError)
        self.assertIn("could not be encoded", str(failure.value))

    def test_unencodable_body_fails_the_call_only(self) -> None:
        self.failureResultOf(self.client.call("KVS.Apply", object()), BadRequest)
        self.assertEqual(self.client.in_flight, 0)

    def test_timeout_fails_the_call_and_a_late_answer_is_dropped(self) -> None:
        d = self.call("KVS.Slow", "t", timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, RPCTimeout)
        self.handlers.waiting["t"].callback("too late")
        self.pump.flush()
        self.assertEqual(self.client.stats["late_responses"], 1)
        self.assertEqual(self.client.stats["timeouts"], 1)

    def test_answer_in_time_cancels_the_timer(self) -> None:
        d = self.call("KVS.Apply", 1, timeout=5)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_call_is_forgotten(self) -> None:
        d = self.call("KVS.Slow", "c", timeout=5)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.client.in_flight, 0)

    def test_a_cancelled_call_cancels_the_handler_on_the_server(self) -> None:
        d = self.call("KVS.Slow", "abandoned")
        self.assertEqual(self.factory.in_flight(), 1)
        d.cancel()
        self.pump.flush()
        self.failureResultOf(d)
        self.assertEqual(self.handlers.cancelled, ["abandoned"])
        self.assertEqual(self.factory.in_flight(), 0)
        self.assertEqual(self.client.stats["cancels_sent"], 1)
        self.assertEqual(self.factory.stats["cancelled"], 1)
        # no answer comes back for it, and the connection serves on
        self.assertEqual(self.client.stats["late_responses"], 0)
        self.assertIs(self.successResultOf(self.call("Status.Ping")), True)

    def test_a_timed_out_call_cancels_the_handler_on_the_server(self) -> None:
        d = self.call("KVS.Slow", "slow", timeout=5)
        self.clock.advance(5)
        self.pump.flush()
        self.failureResultOf(d, RPCTimeout)
        self.assertEqual(self.handlers.cancelled, ["slow"])
        self.assertEqual(self.factory.in_flight(), 0)

    def test_a_cancel_crossing_the_answer_changes_nothing(self) -> None:
        d = self.client.call("KVS.Slow", "crossed")
        self.pump.flush()
        self.handlers.waiting["crossed"].callback("answer")  # written, not yet delivered
        d.cancel()
        self.pump.flush()
        self.failureResultOf(d)
        self.assertEqual(self.handlers.cancelled, [])
        self.assertEqual(self.factory.stats["late_cancels"], 1)
        self.assertEqual(self.client.stats["late_responses"], 1)
        self.assertIs(self.successResultOf(self.call("Status.Ping")), True)

    def test_many_cancelled_calls_leave_nothing_in_flight(self) -> None:
        calls = [self.client.call("KVS.Slow", i) for i in range(100)]
        self.pump.flush()
        self.assertEqual(self.factory.in_flight(), 100)
        for d in calls:
            d.cancel()
            d.addErrback(lambda _: None)
        self.pump.flush()
        self.assertEqual(self.factory.in_flight(), 0)
        self.assertEqual(sorted(self.handlers.cancelled), list(range(100)))

    def test_connection_loss_fails_every_pending_call(self) -> None:
        calls = [self.call("KVS.Slow", i, timeout=30) for i in range(3)]
        self.server.transport.loseConnection()
        self.pump.flush()
        for d in calls:
            failure = self.failureResultOf(d, RPCConnectionLost)
            self.assertIn("KVS.Slow: connection to", str(failure.value))
        self.assertEqual(sorted(self.handlers.cancelled), [0, 1, 2])
        self.failureResultOf(self.client.call("Status.Ping"), RPCConnectError)

    def test_a_silent_connection_with_a_call_waiting_is_pinged_then_aborted(self) -> None:
        d = self.call("KVS.Slow", "cut")  # delivered; then the network goes silent
        self.clock.advance(1.0)
        self.assertEqual(self.client.stats["pings"], 1)
        self.clock.advance(1.0)
        self.assertEqual(self.client.stats["pings"], 1, "one ping at a time")
        self.assertFalse(self.client.closed)
        self.clock.advance(1.0)
        self.assertTrue(self.client.closed, "dead after 3 s of silence")
        self.assertEqual(self.client.stats["dead_connections"], 1)
        self.failureResultOf(self.client.call("Status.Ping"), RPCConnectError)
        self.pump.flush()
        failure = self.failureResultOf(d, RPCConnectionLost)
        self.assertIn("no answer for 3.0s", str(failure.value))

    def test_a_long_call_on_a_live_connection_is_never_suspected(self) -> None:
        d = self.call("KVS.Slow", "blocking query")
        for _ in range(30):
            self.clock.advance(1.0)
            self.pump.flush()  # the server answers each ping
        self.assertNoResult(d)
        self.assertFalse(self.client.closed)
        self.assertEqual(self.client.stats["dead_connections"], 0)
        self.assertGreaterEqual(self.client.stats["pings"], 10)
        self.handlers.waiting["blocking query"].callback("changed")
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), "changed")

    def test_answers_keep_a_busy_connection_alive_without_pings(self) -> None:
        slow = self.call("KVS.Slow", "s")
        for i in range(10):
            self.clock.advance(0.9)
            self.successResultOf(self.call("KVS.Apply", i))
        self.assertEqual(self.client.stats["pings"], 0)
        self.handlers.waiting["s"].callback("done")
        self.pump.flush()
        self.successResultOf(slow)

    def test_too_many_in_flight_is_refused_per_request(self) -> None:
        self.factory.max_in_flight = 2
        self.client.transport.loseConnection()
        self.pump.flush()
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            lambda: RPCClientProtocol(self.clock),
        )
        first = [self.call("KVS.Slow", i) for i in range(2)]
        self.failureResultOf(self.call("KVS.Slow", 9), RPCError)
        self.assertEqual(self.factory.stats["busy"], 1)
        for i in range(2):
            self.handlers.waiting[i].callback(i)
        self.pump.flush()
        self.assertEqual([self.successResultOf(d) for d in first], [0, 1])


class ServerGarbageTests(SynchronousTestCase):
    """The server side of port 8300 over a StringTransport."""

    def setUp(self) -> None:
        self.dispatcher = Dispatcher(
            {"KVS.Apply": lambda body: body, "KVS.Big": lambda body: "x" * 2000}
        )
        self.raft: list[RaftConnection] = []
        self.factory = PortFactory(self.dispatcher, max_rpc_frame=1024)
        self.connect()

    def connect(self) -> None:
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_unknown_protocol_byte_is_refused_logged_and_counted(self) -> None:
        with capturedLogs() as events:
            self.proto.dataReceived(b"\x07" + request_frame("KVS.Apply", 1))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.factory.stats["unknown_protocol"], 1)
        self.assertEqual([e.get("byte") for e in events], [7])

    def test_protocol_byte_and_frames_may_arrive_in_pieces(self) -> None:
        stream = b"\x00" + request_frame("KVS.Apply", 1, "a") + request_frame("KVS.Apply", 2, "b")
        for i in range(len(stream)):
            self.proto.dataReceived(stream[i : i + 1])
        self.assertEqual(
            responses(self.transport), [Response(1, None, "a"), Response(2, None, "b")]
        )

    def test_frame_with_an_id_but_no_method_gets_an_error_frame(self) -> None:
        self.proto.dataReceived(b"\x00" + encode_frame(pack({"ID": 5, "Method": 3})))
        [response] = responses(self.transport)
        self.assertEqual(response.id, 5)
        assert response.error is not None
        self.assertTrue(response.error.startswith("Malformed frame: "))
        self.assertEqual(self.factory.stats["malformed_frames"], 1)

    def test_a_cancel_for_nothing_in_flight_is_ignored(self) -> None:
        self.proto.dataReceived(b"\x00" + encode_frame(Cancel(42).to_wire()))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.factory.stats["late_cancels"], 1)
        self.proto.dataReceived(request_frame("KVS.Apply", 1, "ok"))
        self.assertEqual(responses(self.transport), [Response(1, None, "ok")])

    def test_a_request_id_already_in_flight_is_refused(self) -> None:
        self.dispatcher.register("KVS.Wait", lambda body: Deferred())
        self.proto.dataReceived(b"\x00" + request_frame("KVS.Wait", 7))
        self.proto.dataReceived(request_frame("KVS.Wait", 7))
        [response] = responses(self.transport)
        self.assertEqual(response.id, 7)
        assert response.error is not None
        self.assertIn("in flight already", response.error)
        self.assertEqual(self.factory.stats["duplicate_ids"], 1)

    def test_garbled_frame_is_dropped_and_the_next_served(self) -> None:
        with capturedLogs() as events:
            self.proto.dataReceived(b"\x00" + encode_frame(b"\xc1\xc1garbage"))
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.factory.stats["malformed_frames"], 1)
        self.assertEqual(len(events), 1)
        self.proto.dataReceived(request_frame("KVS.Apply", 1, "ok"))
        self.assertEqual(responses(self.transport), [Response(1, None, "ok")])

    def test_oversized_frame_closes_the_connection(self) -> None:
        self.proto.dataReceived(b"\x00" + struct.pack(">I", 1025) + b"x" * 10)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.stats["oversized_frames"], 1)

    def test_oversized_response_becomes_a_too_large_error(self) -> None:
        self.proto.dataReceived(b"\x00" + request_frame("KVS.Big", 3))
        [response] = responses(self.transport)
        assert response.error is not None
        self.assertTrue(response.error.startswith("Too large: "))

    def test_truncated_frame_at_close_is_counted(self) -> None:
        self.proto.dataReceived(b"\x00" + request_frame("KVS.Apply", 1)[:-1])
        self.proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.factory.stats["truncated_frames"], 1)
        self.assertEqual(self.transport.value(), b"")

    def test_raft_without_a_handler_is_refused(self) -> None:
        self.proto.dataReceived(b"\x01")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.stats["raft_refused"], 1)

    def test_raft_connection_goes_to_the_handler_with_its_frames(self) -> None:
        got: list[bytes] = []

        def handler(connection: RaftConnection) -> None:
            connection.on_frame = got.append
            self.raft.append(connection)

        self.factory.raft_handler = handler
        self.proto.dataReceived(b"\x01" + encode_frame(b"vote") + encode_frame(b"append")[:3])
        self.proto.dataReceived(encode_frame(b"append")[3:])
        self.assertEqual(got, [b"vote", b"append"])
        self.raft[0].send(b"reply")
        self.assertEqual(self.transport.value(), encode_frame(b"reply"))

    def test_truncated_raft_frame_is_never_delivered_and_is_logged(self) -> None:
        got: list[bytes] = []

        def handler(connection: RaftConnection) -> None:
            connection.on_frame = got.append

        self.factory.raft_handler = handler
        frame = encode_frame(b"append entries")
        self.proto.dataReceived(b"\x01" + encode_frame(b"vote") + frame[:-3])
        with capturedLogs() as events:
            self.proto.connectionLost(Failure(ConnectionError()))
        self.assertEqual(got, [b"vote"])
        self.assertEqual(self.factory.stats["truncated_frames"], 1)
        self.assertEqual(
            [e["n"] for e in events if "closed inside a frame" in e["log_format"]], [len(frame) - 3]
        )

    def test_garbled_raft_length_closes_the_raft_connection_with_a_log_line(self) -> None:
        got: list[bytes] = []

        def handler(connection: RaftConnection) -> None:
            connection.on_frame = got.append

        self.factory.raft_handler = handler
        with capturedLogs() as events:
            self.proto.dataReceived(b"\x01" + b"\x00\x00\x00\x00")  # a zero-length frame
        self.assertEqual(got, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(
            len([e for e in events if "closing raft connection" in e["log_format"]]), 1
        )

    def test_raft_handler_bug_refuses_the_connection(self) -> None:
        def handler(connection: RaftConnection) -> None:
            raise RuntimeError("not ready")

        self.factory.raft_handler = handler
        self.proto.dataReceived(b"\x01")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_raft_frame_handler_bug_is_logged_and_survived(self) -> None:
        got: list[bytes] = []

        def on_frame(payload: bytes) -> None:
            if payload == b"bad":
                raise ValueError(payload)
            got.append(payload)

        def handler(connection: RaftConnection) -> None:
            connection.on_frame = on_frame

        self.factory.raft_handler = handler
        self.proto.dataReceived(b"\x01" + encode_frame(b"bad") + encode_frame(b"good"))
        self.assertEqual(got, [b"good"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @given(st.binary(max_size=300), st.integers(1, 50))
    def test_random_bytes_never_crash_the_server(self, data: bytes, chunk: int) -> None:
        self.connect()
        stream = b"\x00" + data
        for i in range(0, len(stream), chunk):
            if self.transport.disconnecting:
                break
            self.proto.dataReceived(stream[i : i + chunk])
        self.proto.connectionLost(Failure(ConnectionError()))
        for response in responses(self.transport):
            self.assertIsNotNone(response.error)

    @given(st.binary(max_size=300))
    def test_random_bytes_never_crash_the_client(self, data: bytes) -> None:
        client = RPCClientProtocol(Clock())
        client.makeConnection(StringTransport())
        d = client.call("KVS.Apply", 1)
        client.dataReceived(data)
        client.connectionLost(Failure(ConnectionError()))
        self.assertTrue(d.called)
        d.addErrback(lambda f: None)


class PoolTests(SynchronousTestCase):
    """RPCClient over a MemoryReactorClock; the test completes each connection."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = RPCClient(self.reactor, self.reactor)
        self.factory = PortFactory(Dispatcher({"KVS.Apply": lambda body: body}))
        self.pumps: list[iosim.IOPump] = []
        self.addCleanup(lambda: self.assertEqual(self.reactor.getDelayedCalls(), []))

    def complete(self, index: int = -1) -> iosim.IOPump:
        """Let the connection attempt number ``index`` succeed."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        client = factory.buildProtocol(None)
        server = self.factory.buildProtocol(None)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
        )
        self.pumps.append(pump)
        return pump

    def refuse(self, index: int = -1) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def test_one_connection_per_address_reused(self) -> None:
        first = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 5)
        second = self.client.call("10.0.0.1:8300", "KVS.Apply", 2, 5)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.1", 8300))
        pump = self.complete()
        pump.flush()
        third = self.client.call("10.0.0.1:8300", "KVS.Apply", 3, 5)
        pump.flush()
        self.assertEqual([self.successResultOf(d) for d in (first, second, third)], [1, 2, 3])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        other = self.client.call("10.0.0.2:8300", "KVS.Apply", 4, 5)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.complete().flush()
        self.assertEqual(self.successResultOf(other), 4)

    def test_failed_connect_fails_the_calls_and_the_next_call_retries(self) -> None:
        d = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 5)
        self.refuse()
        self.failureResultOf(d, RPCConnectError)
        self.assertEqual(self.client.stats["connect_failures"], 1)
        again = self.client.call("10.0.0.1:8300", "KVS.Apply", 2, 5)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.complete().flush()
        self.assertEqual(self.successResultOf(again), 2)

    def test_lost_connection_is_replaced_on_the_next_call(self) -> None:
        d = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 5)
        pump = self.complete()
        pump.flush()
        self.successResultOf(d)
        pump.server.transport.loseConnection()
        pump.flush()
        again = self.client.call("10.0.0.1:8300", "KVS.Apply", 2, 5)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.complete().flush()
        self.assertEqual(self.successResultOf(again), 2)

    def test_a_connection_found_dead_is_replaced_on_the_next_call(self) -> None:
        self.factory.dispatcher.register("KVS.Slow", lambda body: Deferred())
        d = self.client.call("10.0.0.1:8300", "KVS.Slow", 1, 10)
        pump = self.complete()  # the request is delivered, then nothing gets through
        for _ in range(3):
            self.reactor.advance(1.0)
        again = self.client.call("10.0.0.1:8300", "KVS.Apply", 2, 10)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.complete().flush()
        self.assertEqual(self.successResultOf(again), 2)
        pump.flush()
        self.failureResultOf(d, RPCConnectionLost)

    def test_timeout_covers_connecting(self) -> None:
        d = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 2)
        self.reactor.advance(2)
        failure = self.failureResultOf(d, RPCTimeout)
        self.assertIn("10.0.0.1:8300", str(failure.value))
        # the attempt goes on for later calls
        later = self.client.call("10.0.0.1:8300", "KVS.Apply", 2, 2)
        self.complete().flush()
        self.assertEqual(self.successResultOf(later), 2)

    def test_timeout_of_an_answered_call_is_cancelled(self) -> None:
        d = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 2)
        self.complete().flush()
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bad_address_fails_at_once(self) -> None:
        self.failureResultOf(self.client.call("nowhere", "KVS.Apply", 1, 2), BadRequest)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_ipv6_address(self) -> None:
        d = self.client.call("[::1]:8300", "KVS.Apply", 1, 2)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("::1", 8300))
        self.complete().flush()
        self.successResultOf(d)

    def test_close_closes_connections(self) -> None:
        d = self.client.call("10.0.0.1:8300", "KVS.Apply", 1, 5)
        pump = self.complete()
        pump.flush()
        self.successResultOf(d)
        closed = self.client.close()
        pump.flush()
        self.successResultOf(closed)


class DispatcherTests(SynchronousTestCase):
    def test_handler_errors_become_their_family_strings(self) -> None:
        for error in (NoLeader("No cluster leader"), TooLarge("big"), BadRequest("bad")):

            def handler(body: Any, error: Exception = error) -> Any:
                raise error

            dispatcher = Dispatcher({"X.Y": handler})
            response = self.successResultOf(dispatcher.dispatch(Request("X.Y", 1)))
            self.assertEqual(response.id, 1)
            assert response.error is not None
            self.assertIs(type(error_from_wire(response.error)), type(error))
            self.assertEqual(dispatcher.stats["errors"], 1)

    def test_methods_lists_the_table(self) -> None:
        dispatcher = Dispatcher({"KVS.Apply": lambda body: body})
        dispatcher.register("Status.Leader", lambda body: "")
        self.assertEqual(dispatcher.methods(), ["KVS.Apply", "Status.Leader", "Status.Ping"])
