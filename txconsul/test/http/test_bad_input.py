# -*- test-case-name: txconsul.test.http.test_bad_input -*-
"""
Bad input to the HTTP API: each class of mistake gets its status and a
plain-text reason, and none of them crashes the agent or changes its state.

The requests go through ``StubTreq`` over the real Klein resource of a dev
agent started on a ``MemoryReactorClock``: no sockets, and blocking queries are
ended by advancing the clock.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txconsul.agent.agent import Agent
from txconsul.config import load
from txconsul.http.app import MAX_WAIT
from txconsul.testing.agent import dev_config

BASE = "http://127.0.0.1:8500"
PLAIN = b"text/plain; charset=utf-8"


@attrs.frozen
class Response:
    code: int
    content_type: bytes | None
    body: bytes
    headers: Any

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class AgentHarness:
    """A started dev agent, a StubTreq over its HTTP API and a view of its state."""

    def __init__(self, **flags: Any) -> None:
        self.clock = MemoryReactorClock()
        self.agent = Agent(load(dev_config(**flags)), self.clock, random.Random(1))
        self.agent.startService()
        self.client = StubTreq(self.agent.http_api.resource())
        self.blocked = False  # whether the last request waited on the clock

    def stop(self) -> None:
        self.agent.stopService()

    def request(
        self, method: str, path: str | bytes, body: bytes | None = None, **headers: str | bytes
    ) -> Response:
        """
        One request, answered without sockets; a blocking query is allowed to
        run out its longest wait (plus jitter) on the clock.

        :raises AssertionError: if no response comes even then.
        """
        url = (BASE.encode() + path) if isinstance(path, bytes) else BASE + path
        d = self.client.request(  # type: ignore[attr-defined]
            method,
            url,
            data=body,
            headers={
                k.replace("_", "-").encode(): [v if isinstance(v, bytes) else v.encode()]
                for k, v in headers.items()
            },
            allow_redirects=False,
        )
        results: list[Any] = []
        d.addBoth(results.append)
        self.client.flush()
        self.blocked = not results
        if not results:
            self.clock.advance(MAX_WAIT * 17 / 16 + 1)
            self.client.flush()
        assert results, f"no response to {method} {path!r}"
        response = results[0]
        if not hasattr(response, "code"):
            response.raiseException()
        content: list[Any] = []
        response.content().addBoth(content.append)
        self.client.flush()
        assert content and isinstance(content[0], bytes), content
        types = response.headers.getRawHeaders(b"content-type")
        return Response(response.code, types[0] if types else None, content[0], response.headers)

    def state(self) -> Any:
        """Everything a request could change: the store and the agent's own registrations."""
        store = self.agent.store
        local = self.agent.local
        return copy.deepcopy(
            (
                store.last_index,
                self.contents(),
                sorted(local.services.items()),
                sorted((cid, c.definition, c.status, c.output) for cid, c in local.checks.items()),
            )
        )

    def contents(self) -> Any:
        """The store's tables (and their indexes), without the log index."""
        store = self.agent.store
        return copy.deepcopy((store.kv.dump(), store.catalog.dump(), store.sessions))


class BadInputMixin:
    """Sets up one agent per test and checks each bad request against it."""

    harness: AgentHarness

    def setUp(self) -> None:
        self.harness = AgentHarness()
        self.addCleanup(self.harness.stop)  # type: ignore[attr-defined]
        # something to lose, so that a change would show
        ok = self.harness.request("PUT", "/v1/kv/keep?flags=7", b"kept")
        assert ok.code == 200, ok
        self.harness.request(
            "PUT",
            "/v1/agent/service/register",
            b'{"Name": "web", "Port": 80, "Check": {"TTL": "30s"}}',
        )

    def assertRejected(
        self,
        method: str,
        path: str | bytes,
        body: bytes | None = None,
        code: int = 400,
        reason: str | tuple[str, ...] | None = None,
        **headers: str | bytes,
    ) -> Response:
        """
        The request is refused with ``code`` and a plain-text body starting with
        ``reason``, and the agent's state is as it was.
        """
        before = self.harness.state()
        response = self.harness.request(method, path, body, **headers)
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(
            (response.code, response.content_type),
            (code, PLAIN),
            f"{method} {path!r}: {response.text}",
        )
        tc.assertNotIn("Internal error", response.text)
        tc.assertTrue(response.body.endswith(b"\n"), response.body)
        if reason is not None:
            tc.assertTrue(
                response.text.startswith(reason),
                f"{method} {path!r}: {response.text!r} does not start with {reason!r}",
            )
        else:
            tc.assertTrue(response.text.strip(), "an error needs a reason")
        tc.assertEqual(self.harness.state(), before, f"{method} {path!r} changed the state")
        return response


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def txn(*ops: dict[str, Any]) -> bytes:
    return json.dumps(list(ops)).encode()


class KVTests(BadInputMixin, SynchronousTestCase):
    def test_missing_key_name(self) -> None:
        self.assertRejected("GET", "/v1/kv/", reason="Missing key name")
        self.assertRejected("PUT", "/v1/kv/", b"x", reason="Missing key name")
        self.assertRejected("DELETE", "/v1/kv/", reason="Missing key name")

    def test_value_over_512_kib_is_413(self) -> None:
        self.assertRejected(
            "PUT", "/v1/kv/big", b"x" * (512 * 1024 + 1), code=413, reason="Request body"
        )
        self.assertRejected(
            "PUT", "/v1/kv/keep?cas=0", b"x" * (512 * 1024 + 1), code=413, reason="Request body"
        )

    def test_value_of_exactly_512_kib_is_stored(self) -> None:
        response = self.harness.request("PUT", "/v1/kv/big", b"x" * (512 * 1024))
        self.assertEqual((response.code, response.body), (200, b"true"))

    def test_bad_flags(self) -> None:
        for value in ("abc", "-1", "1.5", "0x10", "+1", "%201", "1_0", str(2**64), "1" * 5000):
            self.assertRejected("PUT", f"/v1/kv/keep?flags={value}", b"x", reason="Invalid flags")

    def test_bad_cas(self) -> None:
        for value in ("abc", "-1", "", "1e3", str(2**64)):
            self.assertRejected("PUT", f"/v1/kv/keep?cas={value}", b"x", reason="Invalid cas")
        for value in ("abc", "0", "", "-1"):
            self.assertRejected("DELETE", f"/v1/kv/keep?cas={value}", reason="Invalid cas")

    def test_conflicting_flags(self) -> None:
        self.assertRejected(
            "PUT", "/v1/kv/keep?cas=0&acquire=s", b"x", reason="Conflicting flags: cas, acquire"
        )
        self.assertRejected(
            "PUT", "/v1/kv/keep?acquire=s&release=s", b"x", reason="Conflicting flags"
        )
        self.assertRejected("DELETE", "/v1/kv/keep?recurse&cas=1", reason="Conflicting flags")

    def test_bad_index(self) -> None:
        for value in ("abc", "-1", "1.0", " 1", "1_000", "\u0661", str(2**64)):
            self.assertRejected("GET", f"/v1/kv/keep?index={value}", reason="Invalid index")
        self.assertRejected("GET", "/v1/kv/?recurse&index=x", reason="Invalid index")

    def test_bad_wait(self) -> None:
        for value in ("abc", "10", "-1s", "1d", "s", "1s2"):
            self.assertRejected(
                "GET", f"/v1/kv/keep?index=1&wait={value}", reason="Invalid wait time"
            )

    def test_query_value_that_is_not_utf8(self) -> None:
        self.assertRejected("GET", "/v1/kv/keep?index=%ff", reason="Invalid encoding of ?index")
        self.assertRejected("GET", "/v1/kv/keep?keys&separator=%ff%fe", reason="Invalid encoding")

    def test_escaped_non_ascii_query_name_is_not_an_error(self) -> None:
        response = self.harness.request("GET", "/v1/kv/keep?%C3%A9=%C3%A9&%ff")
        self.assertEqual(response.code, 200)

    def test_stale_and_consistent_conflict(self) -> None:
        self.assertRejected(
            "GET", "/v1/kv/keep?stale&consistent", reason="Conflicting flags: stale and consistent"
        )

    def test_unknown_datacenter(self) -> None:
        for method, body in (("GET", None), ("PUT", b"x"), ("DELETE", None)):
            self.assertRejected(
                method, "/v1/kv/keep?dc=other", body, code=500, reason="No path to datacenter"
            )

    def test_acquire_with_unknown_session_changes_nothing(self) -> None:
        before = self.harness.contents()
        response = self.harness.request("PUT", "/v1/kv/keep?acquire=no-such-session", b"x")
        self.assertEqual((response.code, response.content_type), (500, PLAIN))
        self.assertIn("invalid session", response.text)
        self.assertEqual(self.harness.contents(), before)


class TxnTests(BadInputMixin, SynchronousTestCase):
    def test_malformed_json(self) -> None:
        for body in (b"[{", b"", b"   ", b"\xff\xfe", b"[1,]", b"[NaN]", b"[Infinity]"):
            self.assertRejected("PUT", "/v1/txn", body, reason="Failed to parse body")

    def test_body_of_the_wrong_shape(self) -> None:
        for body in (b"{}", b"null", b'"KV"', b"[1]", b"[[]]", b'[{"KV": []}]', b'[{"KV": 5}]'):
            self.assertRejected(
                "PUT", "/v1/txn", body, reason=("Failed to parse body", "Request decode failed")
            )

    def test_operation_that_is_not_kv(self) -> None:
        self.assertRejected(
            "PUT", "/v1/txn", b'[{"Node": {"Verb": "get", "Node": "n"}}]', reason="Failed to parse"
        )

    def test_bad_verb(self) -> None:
        for verb in ("explode", "", None, 5, ["set"]):
            self.assertRejected(
                "PUT", "/v1/txn", txn({"KV": {"Verb": verb, "Key": "k"}}), reason="Failed to parse"
            )

    def test_fields_of_the_wrong_type(self) -> None:
        for op in (
            {"Verb": "set", "Key": 5},
            {"Verb": "set", "Key": ["k"]},
            {"Verb": "set", "Key": "k", "Value": 5},
            {"Verb": "set", "Key": "k", "Flags": "1"},
            {"Verb": "set", "Key": "k", "Flags": -1},
            {"Verb": "set", "Key": "k", "Flags": True},
            {"Verb": "set", "Key": "k", "Flags": 1.5},
            {"Verb": "cas", "Key": "k", "Index": "1"},
            {"Verb": "lock", "Key": "k", "Session": 5},
        ):
            self.assertRejected("PUT", "/v1/txn", txn({"KV": op}), reason="Failed to parse body")

    def test_number_beyond_64_bits(self) -> None:
        body = b'[{"KV": {"Verb": "set", "Key": "k", "Flags": %d}}]' % 2**64
        self.assertRejected("PUT", "/v1/txn", body, reason="Failed to parse body")

    def test_missing_key_and_session(self) -> None:
        self.assertRejected(
            "PUT", "/v1/txn", txn({"KV": {"Verb": "set", "Value": b64(b"x")}}), reason="Failed"
        )
        self.assertRejected(
            "PUT", "/v1/txn", txn({"KV": {"Verb": "lock", "Key": "k"}}), reason="Failed"
        )

    def test_bad_base64(self) -> None:
        for value in ("not base64!", "eA", "e===", "\u00e9"):
            self.assertRejected(
                "PUT",
                "/v1/txn",
                txn({"KV": {"Verb": "set", "Key": "k", "Value": value}}),
                reason="Failed to parse body",
            )

    def test_too_many_operations_is_413(self) -> None:
        ops = [{"KV": {"Verb": "set", "Key": f"k{i}", "Value": b64(b"x")}} for i in range(129)]
        self.assertRejected("PUT", "/v1/txn", txn(*ops), code=413)

    def test_value_over_512_kib_is_413(self) -> None:
        op = {"KV": {"Verb": "set", "Key": "k", "Value": b64(b"x" * (512 * 1024 + 1))}}
        self.assertRejected("PUT", "/v1/txn", txn(op), code=413)

    def test_failed_operation_is_409_and_nothing_is_applied(self) -> None:
        before = self.harness.contents()
        body = txn(
            {"KV": {"Verb": "set", "Key": "new", "Value": b64(b"1")}},
            {"KV": {"Verb": "delete", "Key": "keep"}},
            {"KV": {"Verb": "cas", "Key": "keep", "Index": 999, "Value": b64(b"2")}},
            {"KV": {"Verb": "get", "Key": "missing"}},
        )
        response = self.harness.request("PUT", "/v1/txn", body)
        self.assertEqual((response.code, response.content_type), (409, b"application/json"))
        answer = json.loads(response.body)
        self.assertIsNone(answer["Results"])
        self.assertEqual([e["OpIndex"] for e in answer["Errors"]], [2, 3])
        self.assertTrue(all(e["What"] for e in answer["Errors"]))
        # The log entry is spent, as in Consul, but no table and no table index moves.
        self.assertEqual(self.harness.contents(), before)
        self.assertEqual(self.harness.request("GET", "/v1/kv/new").code, 404)
        self.assertEqual(self.harness.request("GET", "/v1/kv/keep?raw").body, b"kept")

    def test_failed_read_only_transaction_is_409_and_goes_nowhere(self) -> None:
        before = self.harness.state()
        response = self.harness.request(
            "PUT", "/v1/txn", txn({"KV": {"Verb": "check-index", "Key": "keep", "Index": 999}})
        )
        self.assertEqual(response.code, 409)
        self.assertEqual(json.loads(response.body)["Errors"][0]["OpIndex"], 0)
        self.assertEqual(self.harness.state(), before)

    def test_common_parameters(self) -> None:
        read = txn({"KV": {"Verb": "get", "Key": "keep"}})
        self.assertRejected("PUT", "/v1/txn?stale&consistent", read, reason="Conflicting flags")
        self.assertRejected(
            "PUT", "/v1/txn?dc=other", read, code=500, reason="No path to datacenter"
        )


class CatalogTests(BadInputMixin, SynchronousTestCase):
    def test_malformed_json(self) -> None:
        for path in ("/v1/catalog/register", "/v1/catalog/deregister"):
            for body in (b"{", b"", b'{"Node": "n",}', b"\x00", b'{"Node": NaN}'):
                self.assertRejected("PUT", path, body, reason="Request decode failed")

    def test_body_that_is_not_an_object(self) -> None:
        for path in ("/v1/catalog/register", "/v1/catalog/deregister"):
            for body in (b"[]", b"null", b"5", b'"n"'):
                self.assertRejected("PUT", path, body, reason="Request decode failed")

    def test_missing_required_fields(self) -> None:
        register = "/v1/catalog/register"
        self.assertRejected("PUT", register, b'{"Address": "10.0.0.1"}', reason="Must provide node")
        self.assertRejected("PUT", register, b'{"Node": "n"}', reason="Must provide address")
        self.assertRejected(
            "PUT",
            register,
            b'{"Node": "n", "Address": "10.0.0.1", "Service": {"Port": 80}}',
            reason="Must provide service name",
        )
        self.assertRejected(
            "PUT",
            register,
            b'{"Node": "n", "Address": "10.0.0.1", "Check": {"Status": "passing"}}',
            reason="Missing check name",
        )
        self.assertRejected(
            "PUT", "/v1/catalog/deregister", b'{"ServiceID": "web"}', reason="Must provide node"
        )

    def test_fields_of_the_wrong_type(self) -> None:
        for body in (
            {"Node": 5, "Address": "10.0.0.1"},
            {"Node": "n", "Address": ["10.0.0.1"]},
            {"Node": "n", "Address": "10.0.0.1", "NodeMeta": {"rack": 1}},
            {"Node": "n", "Address": "10.0.0.1", "NodeMeta": ["rack"]},
            {"Node": "n", "Address": "10.0.0.1", "TaggedAddresses": {"wan": {"a": 1}}},
            {"Node": "n", "Address": "10.0.0.1", "SkipNodeUpdate": "yes"},
            {"Node": "n", "Address": "10.0.0.1", "Service": "web"},
            {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": "80"}},
            {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 70000}},
            {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Tags": "a"}},
            {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Tags": [1]}},
            {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Meta": {"v": 2}}},
            {
                "Node": "n",
                "Address": "10.0.0.1",
                "Service": {"Service": "web", "Weights": {"Passing": "1"}},
            },
            {"Node": "n", "Address": "10.0.0.1", "Checks": {"Name": "c"}},
            {"Node": "n", "Address": "10.0.0.1", "Checks": [5]},
            {"Node": "n", "Address": "10.0.0.1", "Check": {"Name": "c", "Definition": []}},
        ):
            self.assertRejected(
                "PUT",
                "/v1/catalog/register",
                json.dumps(body).encode(),
                reason="Request decode failed",
            )
        self.assertRejected(
            "PUT",
            "/v1/catalog/deregister",
            b'{"Node": "node1", "ServiceID": 5}',
            reason="Request decode failed",
        )

    def test_bad_check_status(self) -> None:
        self.assertRejected(
            "PUT",
            "/v1/catalog/register",
            b'{"Node": "n", "Address": "10.0.0.1", "Check": {"Name": "c", "Status": "fine"}}',
            reason="Invalid check status",
        )

    def test_unknown_datacenter(self) -> None:
        self.assertRejected(
            "PUT",
            "/v1/catalog/register?dc=other",
            b'{"Node": "n", "Address": "10.0.0.1"}',
            code=500,
            reason="No path to datacenter",
        )
        self.assertRejected("GET", "/v1/catalog/nodes?dc=other", code=500, reason="No path")

    def test_bad_query_parameters(self) -> None:
        self.assertRejected("GET", "/v1/catalog/nodes?index=x", reason="Invalid index")
        self.assertRejected("GET", "/v1/catalog/services?wait=5&index=1", reason="Invalid wait")
        self.assertRejected(
            "GET", "/v1/catalog/nodes?node-meta=nocolon", reason="Invalid node-meta"
        )
        self.assertRejected("GET", "/v1/catalog/service/web?stale&consistent=1", reason="Conflict")


class AgentTests(BadInputMixin, SynchronousTestCase):
    def test_service_register_malformed_json(self) -> None:
        for body in (b"{", b"", b"[]", b'{"Name": "a", "Port": Infinity}', b'{"Port": 1e400}'):
            self.assertRejected(
                "PUT", "/v1/agent/service/register", body, reason="Request decode failed"
            )

    def test_service_register_missing_name(self) -> None:
        for body in (b"{}", b'{"ID": "x", "Port": 80}', b'{"Name": ""}'):
            self.assertRejected(
                "PUT", "/v1/agent/service/register", body, reason="Missing service name"
            )

    def test_service_register_fields_of_the_wrong_type(self) -> None:
        for service in (
            {"Name": 5},
            {"Name": "db", "Port": "80"},
            {"Name": "db", "Port": True},
            {"Name": "db", "Port": 1.5},
            {"Name": "db", "Tags": "primary"},
            {"Name": "db", "Meta": {"v": 7}},
            {"Name": "db", "EnableTagOverride": "true"},
            {"Name": "db", "Weights": [1, 1]},
            {"Name": "db", "Weights": {"Passing": "1"}},
            {"Name": "db", "TaggedAddresses": {"lan": "10.0.0.1"}},
            {"Name": "db", "Checks": {"TTL": "10s"}},
            {"Name": "db", "Check": {"TTL": "ten seconds"}},
            {"Name": "db", "Check": {"TTL": True}},
            {"Name": "db", "Check": {"TTL": "%ds" % 10**300}},
        ):
            self.assertRejected(
                "PUT",
                "/v1/agent/service/register",
                json.dumps(service).encode(),
                reason="Request decode failed",
            )

    def test_service_register_bad_values(self) -> None:
        for service, reason in (
            ({"Name": "db", "Port": 70000}, "Invalid service port"),
            ({"Name": "db", "Port": -1}, "Invalid service port"),
            ({"Name": "db", "Address": "0.0.0.0"}, "Invalid service address"),
            ({"Name": "db", "Address": "::"}, "Invalid service address"),
            ({"Name": "db", "Weights": {"Passing": 0}}, "Passing must be greater than 0"),
            ({"Name": "db", "Check": {"Interval": "10s"}}, "Invalid check"),
        ):
            self.assertRejected(
                "PUT", "/v1/agent/service/register", json.dumps(service).encode(), reason=reason
            )

    def test_check_register_ttl_and_args(self) -> None:
        body = b'{"Name": "c", "TTL": "10s", "Args": ["/bin/true"], "Interval": "10s"}'
        self.assertRejected(
            "PUT", "/v1/agent/check/register", body, reason="Invalid check 'c': only one kind"
        )

    def test_check_register_bad_interval(self) -> None:
        for interval in ('"ten"', '"10"', '"-10s"', '"0s"', "true", '"1e3s"'):
            body = b'{"Name": "c", "HTTP": "http://127.0.0.1/", "Interval": %s}' % interval.encode()
            response = self.assertRejected("PUT", "/v1/agent/check/register", body)
            self.assertIn("nterval", response.text)
        self.assertRejected(
            "PUT",
            "/v1/agent/check/register",
            b'{"Name": "c", "Args": ["/bin/true"]}',
            reason="Invalid check 'c': script checks need an interval",
        )

    def test_check_register_missing_name(self) -> None:
        for body in (b'{"TTL": "10s"}', b'{"Name": "", "TTL": "10s"}', b'{"ID": "", "TTL": "1s"}'):
            self.assertRejected(
                "PUT", "/v1/agent/check/register", body, reason="Missing check name"
            )

    def test_check_register_other_mistakes(self) -> None:
        for check, reason in (
            ({"Name": "c"}, "Invalid check 'c': one of TTL"),
            ({"Name": "c", "TTL": "10s", "Status": "fine"}, "Invalid check status"),
            ({"Name": "c", "TTL": "10s", "ServiceID": "nope"}, "ServiceID 'nope' does not exist"),
            ({"Name": "c", "TCP": "localhost", "Interval": "1s"}, "Invalid check 'c': TCP"),
            ({"Name": "c", "TTL": "-1s"}, "Invalid check 'c': TTL must be positive"),
            ({"Name": "c", "TTL": "1s", "Header": {"a": "b"}}, "Request decode failed"),
            ({"Name": "c", "Args": "/bin/true", "Interval": "1s"}, "Request decode failed"),
            ({"Name": ["c"], "TTL": "1s"}, "Request decode failed"),
        ):
            self.assertRejected(
                "PUT", "/v1/agent/check/register", json.dumps(check).encode(), reason=reason
            )
        self.assertRejected("PUT", "/v1/agent/check/register", b"[{", reason="Request decode")

    def test_check_update(self) -> None:
        update = "/v1/agent/check/update/service:web"
        for body, reason in (
            (b'{"Status": "fine"}', "Invalid check status"),
            (b'{"Output": "x"}', "Invalid check status"),
            (b'{"Status": ["passing"]}', "Invalid check status"),
            (b'{"Status": "passing", "Output": 5}', "Request decode failed"),
            (b"[]", "Request decode failed"),
            (b"{", "Request decode failed"),
        ):
            self.assertRejected("PUT", update, body, reason=reason)
        self.assertRejected(
            "PUT",
            "/v1/agent/check/update/nope",
            b'{"Status": "passing"}',
            code=404,
            reason="Unknown check ID",
        )

    def test_ttl_update_of_unknown_or_non_ttl_check(self) -> None:
        self.assertRejected("PUT", "/v1/agent/check/pass/nope", code=404, reason="Unknown check")
        self.harness.request(
            "PUT",
            "/v1/agent/check/register",
            b'{"Name": "web-http", "HTTP": "http://127.0.0.1/", "Interval": "10s"}',
        )
        self.assertRejected(
            "PUT", "/v1/agent/check/fail/web-http", reason="Check ID 'web-http' does not have"
        )

    def test_unknown_service(self) -> None:
        self.assertRejected("GET", "/v1/agent/service/nope", code=404, reason="unknown service ID")


class HealthTests(BadInputMixin, SynchronousTestCase):
    def test_bad_state(self) -> None:
        for state in ("bogus", "Passing", "unknown", "%C3%A9"):
            self.assertRejected("GET", f"/v1/health/state/{state}", reason="Invalid state")

    def test_bad_passing(self) -> None:
        for value in ("bogus", "yes", "2", "%ff"):
            response = self.assertRejected("GET", f"/v1/health/service/web?passing={value}")
            self.assertIn("?passing", response.text)

    def test_common_parameters(self) -> None:
        self.assertRejected(
            "GET", "/v1/health/service/web?stale&consistent", reason="Conflicting flags"
        )
        self.assertRejected(
            "GET", "/v1/health/checks/web?dc=other", code=500, reason="No path to datacenter"
        )
        self.assertRejected("GET", "/v1/health/node/node1?index=-5", reason="Invalid index")
        self.assertRejected("GET", "/v1/health/state/any?index=1&wait=1y", reason="Invalid wait")


class RoutingTests(BadInputMixin, SynchronousTestCase):
    def test_unknown_paths_are_404(self) -> None:
        for path in (
            "/",
            "/v1",
            "/v1/",
            "/v1/nope",
            "/v2/kv/a",
            "/v1/catalog",
            "/v1/catalog/nodes/extra",
            "/v1/health/state/any/extra",
            "/v1/agent/check/explode/c",
            "/v1/status/leader/x",
            "/ui/../../etc/passwd",
        ):
            self.assertRejected("GET", path, code=404)

    def test_wrong_methods_are_405_with_allow(self) -> None:
        for method, path, allowed in (
            ("GET", "/v1/txn", b"POST, PUT"),
            ("DELETE", "/v1/catalog/register", b"POST, PUT"),
            ("POST", "/v1/catalog/nodes", None),
            ("PUT", "/v1/status/leader", None),
            ("GET", "/v1/agent/check/pass/service:web", None),
            ("PATCH", "/v1/kv/keep", None),
            ("BREW", "/v1/kv/keep", None),
        ):
            response = self.assertRejected(
                method, path, code=405, reason=f"method {method} not allowed"
            )
            allow = response.headers.getRawHeaders(b"allow")
            self.assertTrue(allow, f"{method} {path}: no Allow header")
            if allowed is not None:
                self.assertEqual(allow, [allowed])

    def test_path_or_host_that_is_not_utf8(self) -> None:
        for method, path in (("GET", "/v1/kv/%ff"), ("PUT", "/v1/kv/a%C3"), ("GET", "/v1/%80")):
            self.assertRejected(method, path, b"x", reason="Invalid URL encoding")
        self.assertRejected("GET", "/v1/kv/keep", reason="Invalid URL encoding", Host=b"\xff")

    def test_double_slash_redirects(self) -> None:
        before = self.harness.state()
        response = self.harness.request("GET", "/v1//kv/keep")
        self.assertEqual(response.code, 308)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"), [f"{BASE}/v1/kv/keep".encode()]
        )
        self.assertEqual(self.harness.state(), before)
