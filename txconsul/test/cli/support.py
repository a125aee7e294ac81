"""
Running ``txconsul`` commands in-process against a real agent, for tests.

The agent listens on 127.0.0.1, port 0, in trial's reactor; each command runs
through ``txconsul.cli.main.run`` with ``StringIO`` streams.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
from twisted.internet import reactor  # noqa: TID251 (real-socket tests)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from txconsul.cli.client import AgentClient
from txconsul.cli.main import run
from txconsul.testing.agent import http_address, start_agent


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


async def run_cli(
    argv: list[str], environ: dict[str, str] | None = None, stdin: bytes | None = None
) -> Result:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = await run(
        reactor,
        argv,
        stdout,
        stderr,
        environ or {},
        io.BytesIO(stdin) if stdin is not None else None,
    )
    return Result(code, stdout.getvalue(), stderr.getvalue())


async def listen(factory: IProtocolFactory) -> tuple[IListeningPort, int]:
    """Listen on 127.0.0.1 with a free port; the port and its number."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    host = port.getHost()
    assert isinstance(host, IPv4Address)
    return port, host.port


async def closed_port() -> int:
    """A local port on which, a moment ago, something listened and now nothing does."""
    port, number = await listen(Factory())
    await maybeDeferred(port.stopListening)
    return number


class AgentTestCase(TestCase):
    """A test with one dev agent; ``self.cli(...)`` runs a command against it."""

    timeout = 30

    async def start(self, **flags: Any) -> None:
        self.agent = await start_agent(self, reactor, **flags)
        self.address = http_address(self.agent)

    async def cli(self, *argv: str, stdin: bytes | None = None) -> Result:
        return await run_cli(list(argv), {"CONSUL_HTTP_ADDR": self.address}, stdin)

    async def api(self, method: str, path: str, body: bytes | None = None) -> Any:
        """A direct HTTP call, to set up or check state beside the CLI."""
        client = AgentClient(reactor, "http://" + self.address, None, [])
        try:
            response = await client.request(method, path, body=body, ok=(404,))
            return response.json() if response.status != 404 else None
        finally:
            await client.close()
