# -*- test-case-name: txconsul.test.cli.test_commands -*-
"""
The CLI's HTTP client of the agent, and the flags every HTTP command takes.

The agent's address comes from ``-http-addr`` or ``CONSUL_HTTP_ADDR`` (default
``127.0.0.1:8500``, an ``http://`` or ``https://`` prefix allowed), the token
from ``-token``, ``-token-file``, ``CONSUL_HTTP_TOKEN`` or
``CONSUL_HTTP_TOKEN_FILE``; it is sent as ``X-Consul-Token``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived

from txconsul.cli.context import Context
from txconsul.cli.flags import Command

DEFAULT_ADDRESS = "127.0.0.1:8500"

# A query parameter: ("recurse", None) is sent bare, as Consul's clients do.
Param = tuple[str, str | None]


class AgentError(Exception):
    """The agent answered with a status that is not 2xx."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"Unexpected response code: {self.status} ({self.reason})"


class Unreachable(Exception):
    """No agent answered at the address."""


@attrs.frozen
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def base_url(address: str, environ: Any) -> str:
    """``scheme://host:port`` of the agent, from a Consul-style address."""
    address = address.strip()
    if "://" in address:
        scheme, _, rest = address.partition("://")
        if scheme not in ("http", "https"):
            raise usage.UsageError(f"unsupported agent address scheme {scheme!r} in {address!r}")
    else:
        ssl = environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "t", "true")
        scheme, rest = ("https" if ssl else "http"), address
    rest = rest.rstrip("/")
    if not rest:
        raise usage.UsageError(f"bad agent address {address!r}")
    return f"{scheme}://{rest}"


class AgentClient:
    """A few typed calls over treq; one connection pool, closed by ``close()``."""

    def __init__(self, reactor: Any, url: str, token: str | None, params: Sequence[Param]) -> None:
        self.url = url
        self._token = token
        self._common = list(params)
        self._pool = HTTPConnectionPool(reactor)
        self._http = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=10))

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    def _url(self, path: str, params: Sequence[Param]) -> str:
        parts = []
        for name, value in [*self._common, *params]:
            parts.append(name if value is None else f"{name}={quote(value, safe='')}")
        query = "?" + "&".join(parts) if parts else ""
        return self.url + quote(path, safe="/") + query

    async def request(
        self,
        method: str,
        path: str,
        params: Sequence[Param] = (),
        body: bytes | None = None,
        ok: Sequence[int] = (),
    ) -> Response:
        """
        One request. A status outside 2xx raises ``AgentError`` with the
        agent's plain-text reason, unless it is listed in ``ok``.
        """
        headers: dict[bytes | str, list[bytes | str]] = {}
        if self._token:
            headers["X-Consul-Token"] = [self._token]
        url = self._url(path, params)
        try:
            response = await self._http.request(method, url, headers=headers, data=body)
            content = await treq.content(response)
        except ConnectError as e:
            raise Unreachable(f"{self.url}: {describe(e)}") from None
        except (DNSLookupError, ConnectTimeout, ResponseNeverReceived, ResponseFailed) as e:
            raise Unreachable(f"{self.url}: {describe(e)}") from None
        status = int(response.code)
        if not 200 <= status < 300 and status not in ok:
            reason = content.decode("utf-8", "replace").strip() or str(response.phrase, "latin-1")
            raise AgentError(status, reason)
        return Response(status, content)

    async def get_json(self, path: str, params: Sequence[Param] = (), missing: Any = ...) -> Any:
        """GET and decode JSON; a 404 gives ``missing`` when one is given."""
        ok = (404,) if missing is not ... else ()
        response = await self.request("GET", path, params, ok=ok)
        if response.status == 404:
            return missing
        return response.json()


def describe(error: Exception) -> str:
    """A short reason for a connection failure."""
    if isinstance(error, (ResponseNeverReceived, ResponseFailed)):
        reasons = [f.getErrorMessage() for f in error.reasons]
        return "the connection was lost (" + "; ".join(reasons) + ")"
    text = str(error).strip().rstrip(".")
    if "Connection refused" in text:
        return "connection refused"
    return text


class HTTPCommand(Command):
    """A command that talks to the agent's HTTP API."""

    optParameters = [
        [
            "http-addr",
            None,
            None,
            "Address of the agent's HTTP API (env CONSUL_HTTP_ADDR, default 127.0.0.1:8500).",
        ],
        ["token", None, None, "ACL token to send (env CONSUL_HTTP_TOKEN)."],
        ["token-file", None, None, "File holding the ACL token (env CONSUL_HTTP_TOKEN_FILE)."],
        ["datacenter", None, None, "Datacenter to query (default: the agent's)."],
    ]
    optFlags = [["stale", None, "Let any server answer reads, even a stale one."]]

    # Which command prefix ("Error querying Consul agent") fits a failed call.
    error_prefix = "Error querying Consul agent"

    def client(self, ctx: Context) -> AgentClient:
        address = self["http-addr"] or ctx.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
        url = base_url(address, ctx.environ)
        token = self["token"] or ctx.environ.get("CONSUL_HTTP_TOKEN")
        token_file = self["token-file"] or ctx.environ.get("CONSUL_HTTP_TOKEN_FILE")
        if not token and token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"cannot read the token file: {e}") from None
        params: list[Param] = []
        if self["datacenter"]:
            params.append(("dc", self["datacenter"]))
        if self["stale"]:
            params.append(("stale", None))
        return AgentClient(ctx.reactor, url, token, params)

    async def execute(self, ctx: Context) -> int:
        client = self.client(ctx)
        try:
            return await self.call(ctx, client)
        except Unreachable as e:
            ctx.err(f"Error connecting to the agent at {e}")
            ctx.err(
                "Is an agent running there? Set CONSUL_HTTP_ADDR or -http-addr to its HTTP address."
            )
            return 1
        except AgentError as e:
            ctx.err(f"{self.error_prefix}: {e}")
            return 1
        finally:
            await client.close()

    async def call(self, ctx: Context, client: AgentClient) -> int:
        raise NotImplementedError(type(self).__name__)
