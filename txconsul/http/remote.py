# -*- test-case-name: txconsul.test.http.test_remote -*-
"""
An HTTP request carried to another agent over RPC, and its answer carried back.

A client agent keeps no state: each request to a family of ``FORWARDED``
is sent whole (method, URI, headers, body) to a server in one RPC,
``HTTP.Request``; the server runs it through its own ``HTTPApi``, exactly
as if it had come in on its own port, and sends back the status, headers
and body, which the client writes out unchanged. A follower server sends a
read that needs the leader the same way, marked as a ``Hop`` so that it
travels at most one server further.

The serving end builds a ``twisted.web.server.Request`` over an in-memory
channel that records what the resource writes; cancelling the RPC (the
caller went away) ends the request like a lost connection, which frees a
blocked query's watch.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site

from txconsul.duration import parse_duration
from txconsul.errors import BadRequest

#: the endpoint families a client agent sends to a server
FORWARDED = (
    b"/v1/kv/",
    b"/v1/txn",
    b"/v1/catalog/",
    b"/v1/health/",
    b"/v1/status/",
    b"/v1/operator/raft/",
    b"/v1/operator/autopilot/",
    b"/v1/session/",
    b"/v1/coordinate/",
    b"/v1/query",
    b"/v1/snapshot",
)

#: seconds an RPC carrying a request may take beyond the query's own blocking
#: time: a server's forwarding deadline plus one call to the leader, with room
CLIENT_SLACK = 30.0
#: the same for a follower's hop to the leader (shorter than the client's)
HOP_SLACK = 15.0

#: headers that belong to one connection, not to the answer
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)
#: the blocking wait a client assumes when ``?wait`` is absent or unreadable
_DEFAULT_WAIT = 300.0
_MAX_WAIT = 600.0


def forwarded(path: bytes) -> bool:
    """Whether a client agent sends a request for ``path`` to a server."""
    return path.startswith(FORWARDED)


def is_read(method: bytes) -> bool:
    """A read may be sent again after a timeout; a write only when it was never sent."""
    return method in (b"GET", b"HEAD")


def blocking_time(request: IRequest) -> float:
    """
    The longest a server may hold ``request`` before answering: ``wait``
    plus the 1/16 of it that the server adds as jitter, for a blocking query
    (``?index`` above 0); otherwise 0.
    """
    from txconsul.http.app import query  # the one query-string parser

    params = query(request)
    index = (params.get(b"index") or [b""])[0]
    if not index.isdigit() or int(index) == 0:
        return 0.0
    wait = _DEFAULT_WAIT
    text = (params.get(b"wait") or [b""])[0]
    if text:
        try:
            wait = min(max(parse_duration(text.decode("utf-8")), 0.0), _MAX_WAIT)
        except (BadRequest, UnicodeDecodeError):
            pass  # the server refuses it with a 400 at once
    return wait + wait / 16


def request_to_wire(request: IRequest, body: bytes, hop: bool, timeout: float) -> dict[str, Any]:
    """The body of an ``HTTP.Request`` RPC for ``request``."""
    headers = [
        [name, value]
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
        if name.lower() not in _HOP_BY_HOP
    ]
    return {
        "Method": request.method,
        "URI": request.uri,
        "Headers": headers,
        "Body": body,
        "Hop": hop,
        "Timeout": timeout,
    }


def render_response(request: IRequest, answer: Any) -> bytes:
    """Write a server's answer (status and headers) on ``request``; its body is returned."""
    if not isinstance(answer, dict):
        raise BadRequest("a server sent an HTTP answer that is not a map")
    code, headers, body = answer.get("Code"), answer.get("Headers"), answer.get("Body")
    if not isinstance(code, int) or not isinstance(body, bytes) or not isinstance(headers, list):
        raise BadRequest("a server sent an HTTP answer of the wrong shape")
    request.setResponseCode(code)
    # the server's headers replace any of the same name set here already
    # (a follower may have set some before it sent the request on)
    grouped: dict[bytes, list[bytes]] = {}
    for pair in headers:
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], bytes)
            and isinstance(pair[1], bytes)
            and pair[0].lower() not in _HOP_BY_HOP
        ):
            grouped.setdefault(pair[0].lower(), []).append(pair[1])
    for name, values in grouped.items():
        request.responseHeaders.setRawHeaders(name, values)
    return body


@attrs.frozen
class WireRequest:
    """An ``HTTP.Request`` body, checked."""

    method: bytes
    uri: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    hop: bool

    @classmethod
    def from_wire(cls, value: Any) -> WireRequest:
        if not isinstance(value, dict):
            raise BadRequest("HTTP.Request takes a map")
        method, uri, body = value.get("Method"), value.get("URI"), value.get("Body", b"")
        if not isinstance(method, bytes) or not method.isalpha():
            raise BadRequest("HTTP.Request: Method must be an HTTP method")
        if not isinstance(uri, bytes) or not uri.startswith(b"/"):
            raise BadRequest("HTTP.Request: URI must be a path")
        if not isinstance(body, bytes):
            raise BadRequest("HTTP.Request: Body must be bytes")
        headers = []
        for pair in value.get("Headers") or []:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], bytes)
                and isinstance(pair[1], bytes)
            ):
                raise BadRequest("HTTP.Request: Headers must be [name, value] byte pairs")
            headers.append((pair[0], pair[1]))
        return cls(method, uri, headers, body, bool(value.get("Hop")))


class _MemoryChannel:
    """Just enough of an ``HTTPChannel`` for one ``Request``: it keeps what is written."""

    factory = None
    transport = None

    def __init__(self, site: Site) -> None:
        self.site = site
        self.code = 500
        self.headers: list[list[bytes]] = []
        self.body: list[bytes] = []
        self.done: Deferred[dict[str, Any]] = Deferred()

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)

    def isSecure(self) -> bool:
        return False

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        self.code = int(code)
        self.headers = [
            [name, value] for name, values in headers.getAllRawHeaders() for value in values
        ]

    def write(self, data: bytes) -> None:
        self.body.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.body.extend(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def requestDone(self, request: Request) -> None:
        if not self.done.called:
            self.done.callback(
                {"Code": self.code, "Headers": self.headers, "Body": b"".join(self.body)}
            )


class ForwardedRequest(Request):
    """A request that came over RPC; ``hop`` says a server sent it on from another."""

    hop = False


def serve(site: Site, call: WireRequest) -> Deferred[dict[str, Any]]:
    """
    Run ``call`` through ``site`` as if it came in on this agent's HTTP port.

    :return: a Deferred of the answer (``Code``, ``Headers``, ``Body``);
        cancelling it ends the request as a lost connection would.
    """
    channel = _MemoryChannel(site)
    request = ForwardedRequest(channel)
    request.hop = call.hop
    for name, value in call.headers:
        request.requestHeaders.addRawHeader(name, value)
    request.requestHeaders.setRawHeaders(b"content-length", [b"%d" % len(call.body)])
    request.content = io.BytesIO(call.body)
    done = channel.done

    def cancel(d: Deferred[dict[str, Any]]) -> None:
        if not request.finished and not request._disconnected:
            request.connectionLost(Failure(ConnectionDone("the caller went away")))

    answer: Deferred[dict[str, Any]] = Deferred(canceller=cancel)

    def finished(result: dict[str, Any]) -> None:
        if not answer.called:
            answer.callback(result)

    done.addCallback(finished)
    # HTTP/1.0: the answer is written whole, never chunked
    request.requestReceived(call.method, call.uri, b"HTTP/1.0")
    return answer
