# -*- test-case-name: txconsul.test.http.test_fuzz -*-
"""
Parser fuzzing of the HTTP API and the config files (FAULTS.md, test 10).

Random paths, query strings, methods and bodies go to the real Klein
resource of a dev agent (through ``StubTreq``, no sockets); random config
files and ``twistd`` arguments go to ``txconsul.config.load`` and
``txconsul.tap.Options``. The oracle: every response has a defined status
with a reason (never 500 "Internal error"), nothing is logged as a failure,
a refused request leaves the state as it was, the store can still be
snapshotted, and config parsing raises only ``ConfigError`` (or ``UsageError``).

The examples are derandomized (the ``ci`` profile of
``txconsul.testing.hypothesis``): 2,000 per surface, the same on every run.
"""

from __future__ import annotations

import base64
import json
import os
import string
from typing import Any
from urllib.parse import quote

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

import txconsul.testing.hypothesis  # noqa: F401  (registers and loads the ci profile)
from txconsul.config import AgentConfig, load
from txconsul.errors import ConfigError
from txconsul.tap import Options
from txconsul.test.http.test_bad_input import PLAIN, AgentHarness, Response

# -- HTTP -------------------------------------------------------------------------

PREFIXES = [
    "/v1/kv/",
    "/v1/txn",
    "/v1/catalog/register",
    "/v1/catalog/deregister",
    "/v1/catalog/datacenters",
    "/v1/catalog/nodes",
    "/v1/catalog/services",
    "/v1/catalog/service/",
    "/v1/catalog/node/",
    "/v1/health/node/",
    "/v1/health/checks/",
    "/v1/health/service/",
    "/v1/health/state/",
    "/v1/agent/self",
    "/v1/agent/members",
    "/v1/agent/services",
    "/v1/agent/service/",
    "/v1/agent/checks",
    "/v1/agent/service/register",
    "/v1/agent/service/deregister/",
    "/v1/agent/check/register",
    "/v1/agent/check/deregister/",
    "/v1/agent/check/pass/",
    "/v1/agent/check/warn/",
    "/v1/agent/check/fail/",
    "/v1/agent/check/update/",
    "/v1/status/leader",
    "/v1/status/peers",
    "/v1/",
    "/",
]
JSON_ENDPOINTS = [
    ("PUT", "/v1/txn"),
    ("PUT", "/v1/catalog/register"),
    ("PUT", "/v1/catalog/deregister"),
    ("PUT", "/v1/agent/service/register"),
    ("PUT", "/v1/agent/check/register"),
    ("PUT", "/v1/agent/check/update/service:web"),
    ("POST", "/v1/txn"),
]
PARAMS = [
    "index",
    "wait",
    "stale",
    "consistent",
    "dc",
    "recurse",
    "keys",
    "separator",
    "seperator",
    "raw",
    "flags",
    "cas",
    "acquire",
    "release",
    "passing",
    "tag",
    "node-meta",
    "pretty",
    "note",
    "replace-existing-checks",
    "wan",
]
METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW"]

# Text that is already a valid piece of URL, with valid and invalid %-escapes.
url_piece = st.lists(
    st.one_of(
        st.text(string.ascii_letters + string.digits + "-._~:@!$'()*,;/", max_size=6),
        st.sampled_from(["%ff", "%00", "%2F", "%C3%A9", "%zz", "%", "//", "..", "%E2%82", "+"]),
        st.text(max_size=4).map(lambda t: quote(t, safe="")),
    ),
    max_size=5,
).map("".join)

param_value = st.one_of(
    st.none(),
    st.sampled_from(["", "0", "1", "true", "false", "bogus", "-1", "10s", "1.5m", "5", "other"]),
    st.integers(min_value=-5, max_value=2**65).map(str),
    st.sampled_from(["dc1", "DC1", "key:value", "nocolon", "%ff", "1e3", "١", "1_0", " 1"]),
    url_piece,
)
query_string = st.lists(
    st.tuples(st.one_of(st.sampled_from(PARAMS), url_piece), param_value), max_size=5
).map(lambda pairs: "&".join(k if v is None else f"{k}={v}" for k, v in pairs))

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(
        ["set", "get", "cas", "lock", "delete-tree", "check-index", "passing", "critical"]
        + ["10s", "1m", "-1s", "0", "eA==", "!!", "web", "node1", "10.0.0.1", "0.0.0.0", "::"]
    ),
)
FIELDS = [
    "Node",
    "Address",
    "Service",
    "Services",
    "Check",
    "Checks",
    "ID",
    "Name",
    "Tags",
    "Port",
    "Meta",
    "NodeMeta",
    "TaggedAddresses",
    "Weights",
    "Passing",
    "Warning",
    "EnableTagOverride",
    "SkipNodeUpdate",
    "CheckID",
    "ServiceID",
    "service_id",
    "Status",
    "Output",
    "Notes",
    "TTL",
    "ttl",
    "Interval",
    "Timeout",
    "Args",
    "ScriptArgs",
    "Script",
    "HTTP",
    "TCP",
    "GRPC",
    "Header",
    "Method",
    "Body",
    "DockerContainerID",
    "AliasService",
    "DeregisterCriticalServiceAfter",
    "Definition",
    "KV",
    "Verb",
    "Key",
    "Value",
    "Flags",
    "Index",
    "Session",
    "Kind",
]
field = st.one_of(
    st.sampled_from(FIELDS), st.sampled_from(FIELDS).map(str.lower), st.text(max_size=6)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(field, inner, max_size=6)),
    max_leaves=20,
)
kv_op = st.fixed_dictionaries(
    {"Verb": json_scalar},
    optional={
        "Key": st.one_of(st.text(max_size=8), json_scalar),
        "Value": st.one_of(
            st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()), json_scalar
        ),
        "Flags": json_scalar,
        "Index": st.one_of(st.integers(min_value=0, max_value=30), json_scalar),
        "Session": json_scalar,
    },
)
txn_body = st.lists(st.one_of(st.builds(lambda op: {"KV": op}, kv_op), json_value), max_size=6)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def mutated(data: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    """``data`` with a few bytes replaced, as a fuzzer would flip them."""
    out = bytearray(data)
    for pos, piece in cuts:
        if out:
            i = pos % len(out)
            out[i : i + len(piece)] = piece
    return bytes(out)


json_ish_body = st.one_of(
    json_value.map(dumps),
    txn_body.map(dumps),
    st.binary(max_size=64),
    st.tuples(
        st.one_of(json_value.map(dumps), txn_body.map(dumps)),
        st.lists(st.tuples(st.integers(0, 200), st.binary(min_size=1, max_size=3)), max_size=3),
    ).map(lambda t: mutated(*t)),
    st.sampled_from(
        [b"NaN", b"[Infinity]", b'{"Port": 1e999}', b"[" * 2000, b"-", b"\xef\xbb\xbf{}"]
    ),
)

DEFINED_500 = ("No path to datacenter", "invalid session")


class HTTPFuzzTests(SynchronousTestCase):
    """Random requests against one agent; state accumulates across examples."""

    def setUp(self) -> None:
        self.harness = AgentHarness()
        self.addCleanup(self.harness.stop)
        self.failures: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.harness.request(
            "PUT",
            "/v1/agent/service/register",
            b'{"Name": "web", "Port": 80, "Check": {"TTL": "30s"}}',
        )

    def state(self) -> tuple[int, bytes, bytes]:
        """The log index, the tables, and the agent's own registrations, packed."""
        store = self.harness.agent.store
        local = self.harness.agent.local
        tables = msgpack.packb([store.kv.dump(), store.catalog.dump(), store.sessions])
        own = repr(
            (
                sorted(local.services.items()),
                sorted((k, c.definition, c.status, c.output) for k, c in local.checks.items()),
            )
        ).encode()
        return store.last_index, tables, own

    def check(self, method: str, path: str, body: bytes | None) -> Response:
        del self.failures[:]
        before = self.state()
        response = self.harness.request(method, path, body)
        what = f"{method} {path!r} {body!r:.300}: {response.code} {response.text!r:.300}"
        self.assertEqual(self.failures, [], what)
        self.assertNotIn("Internal error", response.text, what)
        code = response.code
        if code == 500 and method != "HEAD":  # a HEAD answer has no body to read
            self.assertTrue(response.text.startswith(DEFINED_500), what)
        elif code == 409:
            self.assertTrue(path.startswith("/v1/txn"), what)
            self.assertEqual(json.loads(response.body)["Results"], None, what)
        else:
            self.assertIn(code, (200, 308, 400, 404, 405, 413), what)
        if code in (400, 405, 413, 500):
            self.assertEqual(response.content_type, PLAIN, what)
            if method != "HEAD":
                self.assertTrue(response.text.strip(), what)
        after = self.state()  # packing it is also a check: the store stays snapshottable
        if self.harness.blocked:
            pass  # the clock ran: TTLs may have expired while the query waited
        elif code >= 300 and code not in (409, 500):
            self.assertEqual(after, before, f"refused, yet the state changed: {what}")
        elif code in (409, 500):
            self.assertEqual(after[1:], before[1:], f"failed, yet the tables changed: {what}")
        return response

    @settings(max_examples=700)
    @given(
        method=st.sampled_from(METHODS),
        prefix=st.sampled_from(PREFIXES),
        suffix=url_piece,
        qs=query_string,
        body=st.one_of(st.none(), st.binary(max_size=32), json_ish_body),
    )
    def test_random_requests(
        self, method: str, prefix: str, suffix: str, qs: str, body: bytes | None
    ) -> None:
        path = prefix + suffix + ("?" + qs if qs else "")
        self.check(method, path, body if method in ("PUT", "POST") else None)

    @settings(max_examples=800)
    @given(endpoint=st.sampled_from(JSON_ENDPOINTS), qs=query_string, body=json_ish_body)
    def test_random_json_bodies(self, endpoint: tuple[str, str], qs: str, body: bytes) -> None:
        method, path = endpoint
        self.check(method, path + ("?" + qs if qs else ""), body)

    @settings(max_examples=500)
    @given(
        method=st.sampled_from(["GET", "PUT", "DELETE"]),
        key=url_piece,
        qs=query_string,
        value=st.one_of(st.binary(max_size=16), st.just(b"x" * (512 * 1024 + 1))),
    )
    def test_random_kv_requests(self, method: str, key: str, qs: str, value: bytes) -> None:
        path = "/v1/kv/" + key + ("?" + qs if qs else "")
        self.check(method, path, value if method == "PUT" else None)


# -- config files and twistd arguments ------------------------------------------------

CONFIG_KEYS = [
    "datacenter",
    "data_dir",
    "node_name",
    "node_id",
    "server",
    "dev",
    "bootstrap_expect",
    "bind_addr",
    "client_addr",
    "advertise_addr",
    "ports",
    "start_join",
    "retry_join",
    "encrypt",
    "ui",
    "ui_config",
    "log_level",
    "domain",
    "recursors",
    "node_meta",
    "kv_max_value_size",
    "service",
    "services",
    "check",
    "checks",
]
PORT_NAMES = ["http", "dns", "serf_lan", "serf_wan", "server", "https", "grpc", "bogus"]
config_scalar = st.one_of(
    json_scalar,
    st.sampled_from(
        ["127.0.0.1", "::1", "not-an-ip", "1.2.3.4:8301", "host:x", "INFO", "loud", "/tmp/x"]
        + ["pUDWwCKA0AR5ksQe6JQfDg==", "short", "!!!", "dc-1", "DC 1", "node.1", ""]
    ),
)
config_value = st.recursive(
    config_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(PORT_NAMES + ["enabled"]), field), inner, max_size=4
        ),
    ),
    max_leaves=12,
)
config_doc = st.dictionaries(
    st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)), config_value, max_size=6
)
service_doc = st.fixed_dictionaries(
    {},
    optional={
        "service": st.dictionaries(field, json_value, max_size=6),
        "services": st.lists(st.dictionaries(field, json_value, max_size=5), max_size=3),
        "check": st.dictionaries(field, json_value, max_size=6),
        "checks": json_value,
    },
)


class ConfigFuzzTests(SynchronousTestCase):
    """Random config files: load() returns a config or raises ConfigError naming the file."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "agent.json")

    def load_file(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
        try:
            config = load({"dev": True, "node_name": "node1"}, [self.path])
        except ConfigError as e:
            self.assertIn(self.path, str(e))
        else:
            self.assertIsInstance(config, AgentConfig)

    @settings(max_examples=700)
    @given(doc=config_doc)
    def test_random_config_values(self, doc: dict[str, Any]) -> None:
        self.load_file(dumps(doc))

    @settings(max_examples=500)
    @given(doc=service_doc)
    def test_random_service_definitions(self, doc: dict[str, Any]) -> None:
        self.load_file(dumps(doc))

    @settings(max_examples=400)
    @given(
        data=st.one_of(
            st.binary(max_size=64),
            st.tuples(
                config_doc.map(dumps),
                st.lists(
                    st.tuples(st.integers(0, 200), st.binary(min_size=1, max_size=3)), max_size=3
                ),
            ).map(lambda t: mutated(*t)),
            st.sampled_from([b"NaN", b'{"ports": {"http": Infinity}}', b'{"server": 1e999}']),
        )
    )
    def test_random_bytes(self, data: bytes) -> None:
        self.load_file(data)

    @settings(max_examples=400)
    @given(
        argv=st.lists(
            st.one_of(
                st.sampled_from(
                    ["--dev", "--server", "--ui", "--bogus", "-x", "--", "--dc", "--http-port"]
                ),
                st.tuples(
                    st.sampled_from(
                        [
                            "--dc",
                            "--node",
                            "--client",
                            "--bind",
                            "--advertise",
                            "--http-port",
                            "--dns-port",
                            "--serf-lan-port",
                            "--server-port",
                            "--bootstrap-expect",
                            "--encrypt",
                            "--log-level",
                            "--join",
                            "--retry-join",
                            "--config-file",
                            "--config-dir",
                        ]
                    ),
                    st.one_of(config_scalar.map(str), st.text(max_size=8)),
                ).map(lambda t: f"{t[0]}={t[1]}"),
            ),
            max_size=6,
        )
    )
    def test_random_twistd_arguments(self, argv: list[str]) -> None:
        options = Options()
        try:
            options.parseOptions(["--node", "node1", *argv])
        except usage.UsageError:
            pass
        else:
            self.assertIsInstance(options.config, AgentConfig)
