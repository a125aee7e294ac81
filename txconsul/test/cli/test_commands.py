"""
What every command shares: finding the agent, sending the token, reporting
the agent's errors and refused connections, and usage errors.
"""

from __future__ import annotations

import io

from twisted.internet import reactor  # noqa: TID251 (real-socket tests)
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from txconsul.cli.client import base_url
from txconsul.cli.context import Context, columns
from txconsul.cli.members import Members
from txconsul.test.cli.support import AgentTestCase, closed_port, listen, run_cli


class FakeAgent(Resource):
    """Answers every request with one canned status and body, and records it."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status, self.body = status, body
        self.requests: list[tuple[bytes, bytes, list[bytes] | None]] = []

    def render(self, request):
        token = request.requestHeaders.getRawHeaders(b"x-consul-token")
        self.requests.append((request.method, request.uri, token))
        request.setResponseCode(self.status)
        return self.body


class FakeAgentTests(TestCase):
    """Commands against a stand-in HTTP server whose answers the test picks."""

    timeout = 30

    async def serve(self, status: int, body: bytes) -> tuple[FakeAgent, str]:
        resource = FakeAgent(status, body)
        port, number = await listen(Site(resource))
        self.addCleanup(port.stopListening)
        return resource, f"127.0.0.1:{number}"

    async def test_token_flag_is_sent_as_x_consul_token(self) -> None:
        fake, address = await self.serve(200, b"[]")
        env = {"CONSUL_HTTP_ADDR": address, "CONSUL_HTTP_TOKEN": "from-env"}
        await run_cli(["members", "-token=s3cret"], env)
        await run_cli(["members"], env)
        await run_cli(["members"], {"CONSUL_HTTP_ADDR": address})
        self.assertEqual(
            [token for _, _, token in fake.requests], [[b"s3cret"], [b"from-env"], None]
        )

    async def test_token_file_is_read(self) -> None:
        fake, address = await self.serve(200, b"[]")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("file-token\n")
        await run_cli(["members", f"-http-addr={address}", f"-token-file={path}"])
        self.assertEqual(fake.requests[0][2], [b"file-token"])

    async def test_http_addr_flag_wins_over_the_environment_and_takes_a_scheme(self) -> None:
        fake, address = await self.serve(200, b"[]")
        unused = await closed_port()
        env = {"CONSUL_HTTP_ADDR": f"127.0.0.1:{unused}"}
        got = await run_cli(["members", f"-http-addr=http://{address}"], env)
        self.assertEqual(got.code, 2)  # an empty member list
        self.assertEqual(len(fake.requests), 1)

    async def test_datacenter_and_stale_are_query_parameters(self) -> None:
        fake, address = await self.serve(200, b'["a"]')
        await run_cli(["catalog", "services", "-datacenter=dc2", "-stale", "-http-addr", address])
        self.assertEqual(fake.requests[0][:2], (b"GET", b"/v1/catalog/services?dc=dc2&stale"))

    async def test_agent_error_is_printed_with_its_reason(self) -> None:
        _, address = await self.serve(500, b"No cluster leader\n")
        got = await run_cli(["kv", "get", "-http-addr", address, "k"])
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertEqual(
            got.err,
            "Error querying Consul agent: Unexpected response code: 500 (No cluster leader)\n",
        )

    async def test_permission_denied_on_delete(self) -> None:
        _, address = await self.serve(403, b"Permission denied")
        got = await run_cli(["kv", "delete", "-http-addr", address, "k"])
        self.assertEqual(got.code, 1)
        self.assertEqual(
            got.err,
            "Error! Did not delete key k: Unexpected response code: 403 (Permission denied)\n",
        )

    async def test_refused_connection_is_reported_clearly(self) -> None:
        port = await closed_port()
        got = await run_cli(["kv", "get", "k"], {"CONSUL_HTTP_ADDR": f"127.0.0.1:{port}"})
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertIn(
            f"Error connecting to the agent at http://127.0.0.1:{port}: connection refused", got.err
        )
        self.assertIn("CONSUL_HTTP_ADDR", got.err)

    async def test_flags_after_the_first_argument_are_arguments(self) -> None:
        # As with Go's flag package: "-recurse" after the key is a second key.
        fake, address = await self.serve(200, b"[]")
        got = await run_cli(["kv", "get", "-http-addr", address, "k", "-recurse"])
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Too many arguments (expected 1, got 2)\n"))
        self.assertEqual(fake.requests, [])


class UsageTests(TestCase):
    timeout = 10

    async def test_no_command_prints_usage_and_fails(self) -> None:
        got = await run_cli([])
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertIn("Usage: txconsul <command>", got.err)
        self.assertIn("members", got.err)

    async def test_unknown_command(self) -> None:
        got = await run_cli(["frobnicate"])
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Unknown command: frobnicate\n"), got.err)

    async def test_unknown_flag_names_it_consul_style(self) -> None:
        got = await run_cli(["kv", "get", "-bogus", "k"])
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("option -bogus not recognized\n"), got.err)
        self.assertIn("Usage: txconsul kv get", got.err)

    async def test_too_many_arguments(self) -> None:
        got = await run_cli(["kv", "get", "a", "b"])
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Too many arguments (expected 1, got 2)\n"))

    async def test_bad_number(self) -> None:
        got = await run_cli(["kv", "put", "-flags=lots", "k", "v"])
        self.assertEqual(got.code, 1)
        self.assertIn("flags", got.err)

    async def test_help_goes_to_stdout_and_succeeds(self) -> None:
        for argv in (["-h"], ["kv", "-help"], ["kv", "put", "-h"], ["members", "--help"]):
            got = await run_cli(argv)
            self.assertEqual((got.code, got.err), (0, ""), argv)
            self.assertTrue(got.out.startswith("Usage: txconsul"), argv)
        got = await run_cli(["kv", "put", "-h"])
        self.assertIn("  -cas ", got.out)
        self.assertIn("  -modify-index=", got.out)

    async def test_version(self) -> None:
        got = await run_cli(["-version"])
        self.assertEqual(got.code, 0)
        self.assertTrue(got.out.startswith("txconsul v"))

    async def test_bad_address_scheme(self) -> None:
        got = await run_cli(["members", "-http-addr=unix:///tmp/sock"])
        self.assertEqual(got.code, 1)
        self.assertIn("unsupported agent address scheme 'unix'", got.err)


class AddressTests(SynchronousTestCase):
    def test_the_default_address_is_local_port_8500(self) -> None:
        options = Members()
        options.parseOptions([])
        client = options.client(Context(reactor, io.StringIO(), io.StringIO(), {}))
        self.assertEqual(client.url, "http://127.0.0.1:8500")

    def test_forms_of_the_agent_address(self) -> None:
        self.assertEqual(base_url("127.0.0.1:8500", {}), "http://127.0.0.1:8500")
        self.assertEqual(base_url("http://10.0.0.1:8500/", {}), "http://10.0.0.1:8500")
        self.assertEqual(base_url("https://consul:8501", {}), "https://consul:8501")
        self.assertEqual(
            base_url("consul:8501", {"CONSUL_HTTP_SSL": "true"}), "https://consul:8501"
        )


class ColumnTests(SynchronousTestCase):
    def test_columns_align_and_do_not_pad_the_last(self) -> None:
        self.assertEqual(
            columns([["Node", "Address"], ["a-long-name", "1.2.3.4:1"], ["b", ""]]),
            ["Node         Address", "a-long-name  1.2.3.4:1", "b"],
        )


class EnvironmentTests(AgentTestCase):
    async def test_environment_address_with_a_scheme_reaches_the_agent(self) -> None:
        await self.start()
        got = await run_cli(["kv", "put", "k", "v"], {"CONSUL_HTTP_ADDR": "http://" + self.address})
        self.assertEqual((got.code, got.out), (0, "Success! Data written to: k\n"))
