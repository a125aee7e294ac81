"""Tests for txconsul.rpc.errors: every error family survives the trip to a client."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txconsul.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NoLeader,
    NotFound,
    PermissionDenied,
    TooLarge,
    TxConsulError,
)
from txconsul.raft.core import NotLeader
from txconsul.raft.messages import MalformedFrame
from txconsul.raft.node import LeadershipLost
from txconsul.rpc.errors import (
    NoPathToDatacenter,
    NoServers,
    RemoteError,
    RPCConnectError,
    RPCConnectionLost,
    RPCTimeout,
    UnknownMethod,
    error_from_wire,
    error_to_wire,
    register_error,
    unregister_error,
)
from txconsul.state.fsm import TxnFailed


class ErrorMappingTests(SynchronousTestCase):
    def round_trip(self, error: BaseException) -> TxConsulError:
        return error_from_wire(error_to_wire(error))

    def test_each_family_comes_back_as_itself_with_its_message(self) -> None:
        for error in [
            BadRequest("missing key"),
            PermissionDenied("token lacks key:write"),
            NotFound("no such session"),
            MethodNotAllowed("GET only"),
            Conflict("index moved"),
            TooLarge("value over 512 KiB"),
            NoLeader("the server is stopping"),
            MalformedFrame("not msgpack"),
            RPCConnectError("cannot reach 10.0.0.1:8300"),
            RPCConnectionLost("lost"),
            RPCTimeout("no answer"),
            TxConsulError("something broke"),
        ]:
            back = self.round_trip(error)
            self.assertIs(type(back), type(error), error_to_wire(error))
            self.assertEqual(str(back), str(error))

    def test_consul_texts(self) -> None:
        self.assertEqual(error_to_wire(NoLeader("No cluster leader")), "No cluster leader")
        self.assertEqual(error_to_wire(NoLeader()), "No cluster leader")
        self.assertEqual(error_to_wire(PermissionDenied()), "Permission denied")
        self.assertEqual(
            error_to_wire(NoPathToDatacenter("No path to datacenter")), "No path to datacenter"
        )
        self.assertEqual(
            error_to_wire(UnknownMethod("KVS.Nope")), "rpc: can't find method KVS.Nope"
        )

    def test_texts_without_a_message_come_back_typed(self) -> None:
        self.assertIsInstance(error_from_wire("No cluster leader"), NoLeader)
        self.assertIs(type(error_from_wire("No known Consul servers")), NoServers)
        self.assertIs(type(error_from_wire("No path to datacenter")), NoPathToDatacenter)
        self.assertIs(type(error_from_wire("Permission denied")), PermissionDenied)

    def test_not_leader_carries_the_leader(self) -> None:
        back = self.round_trip(NotLeader("10.0.0.2:8300"))
        assert isinstance(back, NotLeader)
        self.assertEqual(back.leader, "10.0.0.2:8300")
        unknown = self.round_trip(NotLeader())
        assert isinstance(unknown, NotLeader)
        self.assertEqual(unknown.leader, "")

    def test_unknown_method_names_the_method(self) -> None:
        back = self.round_trip(UnknownMethod("Foo.Bar"))
        assert isinstance(back, UnknownMethod)
        self.assertEqual(back.method, "Foo.Bar")
        self.assertIsInstance(back, BadRequest)

    def test_subclass_without_an_entry_travels_as_its_parent(self) -> None:
        class LeadershipLostLike(NoLeader):
            pass

        self.assertIs(type(self.round_trip(LeadershipLostLike("lost it"))), NoLeader)

    def test_registered_subclass_travels_as_itself(self) -> None:
        class OutcomeUnknown(NoLeader):
            pass

        register_error(OutcomeUnknown, "Test outcome unknown")
        self.addCleanup(unregister_error, OutcomeUnknown)
        back = self.round_trip(OutcomeUnknown("stepped down"))
        self.assertIs(type(back), OutcomeUnknown)
        self.assertEqual(error_to_wire(back), "Test outcome unknown: stepped down")

    def test_foreign_exceptions_are_internal_errors(self) -> None:
        text = error_to_wire(ZeroDivisionError("division by zero"))
        self.assertEqual(text, "Internal error: ZeroDivisionError: division by zero")
        self.assertIs(type(error_from_wire(text)), TxConsulError)

    def test_unknown_text_is_a_remote_error(self) -> None:
        back = error_from_wire("rpc error: something Go said")
        self.assertIs(type(back), RemoteError)
        self.assertEqual(str(back), "rpc error: something Go said")

    def test_a_failed_transaction_carries_its_errors(self) -> None:
        errors = [{"OpIndex": 1, "What": "key 'a' doesn't exist"}]
        back = self.round_trip(TxnFailed(errors))
        assert isinstance(back, TxnFailed)
        self.assertEqual((back.errors, back.code), (errors, 409))

    def test_a_garbled_transaction_error_is_a_remote_error(self) -> None:
        for text in ("Transaction failed: {nope", "Transaction failed: [1, 2]"):
            self.assertIs(type(error_from_wire(text)), RemoteError)

    def test_leadership_lost_stays_apart_from_no_leader(self) -> None:
        back = self.round_trip(LeadershipLost("stepped down"))
        self.assertIs(type(back), LeadershipLost)
        self.assertEqual(str(back), "stepped down")
        self.assertIs(type(self.round_trip(NoLeader("No cluster leader"))), NoLeader)

    def test_prefix_must_end_at_a_separator(self) -> None:
        self.assertIs(type(error_from_wire("Not foundling")), RemoteError)
