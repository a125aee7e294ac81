# -*- test-case-name: txconsul.test.http.test_kv -*-
"""
The HTTP API: one Klein app that mounts each endpoint family.

This module holds what every family shares: the one mapping from
``txconsul.errors`` to status codes and plain-text reasons, the common query
parameters (``dc``, ``stale``/``consistent``, ``pretty``), blocking queries
(``index``/``wait``) and the ``X-Consul-*`` headers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from txconsul import gojson
from txconsul.agent.remote import check_lease, confirm_read, leads
from txconsul.duration import parse_duration
from txconsul.errors import BadRequest, NoLeader, TooLarge, TxConsulError
from txconsul.http.remote import forwarded
from txconsul.state.fsm import TxnFailed

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent


DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_JSON_BODY = 4 * 1024 * 1024

JSON_TYPE = b"application/json"


class NotFoundResult:
    """A read that found nothing: 404 with an empty body, index headers kept."""


NOT_FOUND = NotFoundResult()


@attrs.frozen
class Raw:
    """A response body that is not JSON."""

    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"


@attrs.frozen
class QueryOptions:
    index: int = 0
    wait: float = DEFAULT_WAIT
    stale: bool = False
    consistent: bool = False


def query(request: IRequest) -> dict[bytes, list[bytes]]:
    """
    The query parameters, bare flags (``?raw``) included.

    Twisted's own ``request.args`` drops a parameter that has no ``=``, and
    Consul's clients send flags that way.
    """
    parsed: dict[bytes, list[bytes]] | None = getattr(request, "_txconsul_query", None)
    if parsed is None:
        _, _, qs = request.uri.partition(b"?")
        if not qs:
            parsed = request._txconsul_query = {}  # type: ignore[attr-defined]
            return parsed
        # latin-1 maps bytes to characters one to one, so that a %-escape of
        # any byte survives here and arg() can refuse what is not UTF-8.
        pairs = parse_qs(qs.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        parsed = {k.encode("latin-1"): [v.encode("latin-1") for v in vs] for k, vs in pairs.items()}
        request._txconsul_query = parsed  # type: ignore[attr-defined]
    return parsed


def arg(request: IRequest, name: bytes) -> str | None:
    """The first value of a query parameter (python-consul sends some twice)."""
    values = query(request).get(name)
    if not values:
        return None
    value: bytes = values[0]
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"Invalid encoding of ?{name.decode()}") from None


def args(request: IRequest, name: bytes) -> list[str]:
    try:
        return [v.decode("utf-8") for v in query(request).get(name, [])]
    except UnicodeDecodeError:
        raise BadRequest(f"Invalid encoding of ?{name.decode()}") from None


def flag(request: IRequest, name: bytes) -> bool:
    """A flag parameter counts by its presence, whatever its value."""
    return name in query(request)


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(value: str, what: str) -> bool:
    """Go's strconv.ParseBool."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"Invalid value for ?{what}")


def uint_arg(request: IRequest, name: bytes, what: str) -> int | None:
    value = arg(request, name)
    if value is None:
        return None
    if value == "":
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise BadRequest(f"Invalid {what}")  # int() would take " 1", "+1", "1_0" and "١"
    n = int(value, 10)
    if n < 0 or n >= 2**64:
        raise BadRequest(f"Invalid {what}")
    return n


def read_json(request: IRequest, allow_empty: bool = False) -> Any:
    """The request body as JSON, or BadRequest with the decoder's complaint."""
    body = read_body(request, MAX_JSON_BODY)
    if not body.strip():
        if allow_empty:
            return None
        raise BadRequest("Request decode failed: empty body")
    try:
        return gojson.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Request decode failed: {e}") from None
    except RecursionError:
        raise BadRequest("Request decode failed: nested too deeply") from None


def read_body(request: IRequest, limit: int) -> bytes:
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(f"Request body too large, max size: {limit} bytes")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body: bytes = content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"Request body too large, max size: {limit} bytes")
    return body


_F = TypeVar("_F", bound=Callable[..., Any])


def router(app: Klein, family: str) -> Callable[..., Callable[[_F], _F]]:
    """``app.route`` with endpoint names prefixed by ``family``, so that families
    may reuse function names without one route replacing another."""

    def route(path: str, **kw: Any) -> Callable[[_F], _F]:
        def decorate(f: _F) -> _F:
            kw.setdefault("endpoint", f"{family}.{f.__name__}")
            app.route(path, **kw)(f)
            return f

        return decorate

    return route


class HTTPApi:
    """The Klein app of one agent's HTTP API."""

    log = Logger()

    def __init__(self, agent: Agent, clock: IReactorTime, rng: random.Random) -> None:
        self.agent = agent
        self.clock = clock
        self.rng = rng
        self.app = Klein()
        # path prefix -> method -> handler(request, rest of path), served by
        # APIRoot without Klein's routing; a family fills it in if it wants.
        self.fast_routes: dict[bytes, dict[bytes, Callable[[IRequest, str], Any]]] = {}
        self._install_errors()
        from txconsul.http import agent as agent_routes
        from txconsul.http import catalog, gossip, health, kv, operator, status, txn

        for family in (kv, txn, catalog, health, agent_routes, status, gossip, operator):
            family.install(self.app, self)

    def resource(self) -> Any:
        return APIRoot(self, self.app.resource())

    @property
    def store(self) -> Any:
        return self.agent.store

    # -- errors -------------------------------------------------------------

    def _install_errors(self) -> None:
        app = self.app

        @app.handle_errors(TxnFailed)
        def txn_failed(request: IRequest, failure: Failure) -> bytes:
            error = failure.value
            assert isinstance(error, TxnFailed)
            request.setResponseCode(409)
            request.setHeader(b"content-type", JSON_TYPE)
            return json.dumps({"Results": None, "Errors": error.errors}).encode()

        @app.handle_errors(TxConsulError)
        def api_error(request: IRequest, failure: Failure) -> bytes:
            error = failure.value
            assert isinstance(error, TxConsulError)
            return self.plain_error(request, error.code, str(error))

        @app.handle_errors(WerkzeugNotFound)
        def not_found(request: IRequest, failure: Failure) -> bytes:
            return self.plain_error(request, 404, "404 page not found")

        @app.handle_errors(WerkzeugMethodNotAllowed)
        def not_allowed(request: IRequest, failure: Failure) -> bytes:
            error = failure.value
            assert isinstance(error, WerkzeugMethodNotAllowed)
            if error.valid_methods:
                request.setHeader(b"allow", ", ".join(sorted(error.valid_methods)).encode())
            method = request.method.decode("ascii", "replace")
            return self.plain_error(request, 405, f"method {method} not allowed")

        @app.handle_errors(RequestRedirect)
        def redirect(request: IRequest, failure: Failure) -> bytes:
            # werkzeug's answer to "//" in a path or a missing trailing slash
            error = failure.value
            assert isinstance(error, RequestRedirect)
            request.setHeader(b"location", error.new_url.encode("utf-8"))
            return self.plain_error(request, error.code, f"Moved to {error.new_url}")

        @app.handle_errors(CancelledError)
        def cancelled(request: IRequest, failure: Failure) -> bytes:
            return b""

        @app.handle_errors(Exception)
        def internal(request: IRequest, failure: Failure) -> bytes:
            self.log.failure("unexpected error serving {path}", failure, path=request.uri)
            return self.plain_error(request, 500, "Internal error")

    @staticmethod
    def plain_error(request: IRequest, code: int, reason: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"{reason}\n".encode()

    # -- common parameters ----------------------------------------------------

    def check_dc(self, request: IRequest) -> None:
        dc = arg(request, b"dc")
        if dc and dc.lower() != self.agent.config.datacenter:
            raise TxConsulError(f"No path to datacenter {dc!r}")

    def query_options(self, request: IRequest) -> QueryOptions:
        self.check_dc(request)
        stale = flag(request, b"stale")
        consistent = flag(request, b"consistent")
        if stale and consistent:
            raise BadRequest("Conflicting flags: stale and consistent")
        index = uint_arg(request, b"index", "index") or 0
        wait = DEFAULT_WAIT
        wait_text = arg(request, b"wait")
        if wait_text:
            try:
                wait = parse_duration(wait_text)
            except BadRequest:
                raise BadRequest("Invalid wait time") from None
            if wait < 0:
                raise BadRequest("Invalid wait time")
            wait = min(wait, MAX_WAIT)
        return QueryOptions(index=index, wait=wait, stale=stale, consistent=consistent)

    # -- responses ------------------------------------------------------------

    def json(self, request: IRequest, value: Any) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        if flag(request, b"pretty"):
            return (json.dumps(value, indent=4) + "\n").encode()
        # every write answers a bare boolean: json.dumps would build an encoder for it
        if value is True:
            return b"true"
        if value is False:
            return b"false"
        return json.dumps(value).encode()

    def _meta_headers(self, request: IRequest, index: int) -> None:
        consensus = self.agent.consensus
        request.setHeader(b"X-Consul-Index", str(max(index, 1)).encode())
        request.setHeader(
            b"X-Consul-KnownLeader", b"true" if consensus.leader_address() else b"false"
        )
        request.setHeader(
            b"X-Consul-LastContact", str(int(consensus.last_contact() * 1000)).encode()
        )

    def _render(self, request: IRequest, index: int, result: Any) -> bytes:
        self._meta_headers(request, index)
        if result is NOT_FOUND:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b""
        if isinstance(result, Raw):
            request.setHeader(b"content-type", result.content_type)
            return result.body
        return self.json(request, result)

    def read(
        self,
        request: IRequest,
        channels: Iterable[str],
        run: Callable[[], tuple[int, Any]],
        opts: QueryOptions | None = None,
    ) -> bytes | Deferred[bytes]:
        """
        Answer a read, blocking first when ``?index`` asks to.

        ``run`` computes ``(index, result)`` from the store; while the index is
        not past the client's, the query waits on ``channels`` and runs again,
        until ``wait`` (plus up to 1/16 of it as jitter) runs out.
        """
        if opts is None:
            opts = self.query_options(request)
        if self._needs_leader(opts):
            agent = self.agent
            if not leads(agent):
                # a follower: the leader answers (a request sent on already stops here)
                if getattr(request, "hop", False):
                    raise NoLeader("No cluster leader")
                try:
                    body = read_body(request, MAX_JSON_BODY)
                except TxConsulError as e:
                    return fail(e)
                return agent.remote.http(request, body, hop=True)
            if opts.consistent or opts.index:
                return ensureDeferred(self._block(request, tuple(channels), run, opts))
            check_lease(agent)
        index, result = run()
        if opts.index and index <= opts.index:
            return ensureDeferred(self._block(request, tuple(channels), run, opts))
        return self._render(request, index, result)

    def _needs_leader(self, opts: QueryOptions) -> bool:
        """Default and ``?consistent`` reads on a server are the leader's (DESIGN.md)."""
        return not opts.stale and self.agent.config.server

    async def _confirm(self, opts: QueryOptions) -> None:
        """Before each run of a leader's read: its lease, or a quorum's word."""
        if opts.consistent:
            await confirm_read(self.agent, self.clock)
        else:
            check_lease(self.agent)

    async def _block(
        self,
        request: IRequest,
        channels: tuple[str, ...],
        run: Callable[[], tuple[int, Any]],
        opts: QueryOptions,
    ) -> bytes:
        wait = opts.wait + self.rng.random() * opts.wait / 16
        deadline = self.clock.seconds() + wait
        leader = self._needs_leader(opts)
        if leader:
            await self._confirm(opts)
        index, result = run()
        while opts.index and index <= opts.index:
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                break
            waiting = self.store.watches.wait(channels)
            waiting.addTimeout(remaining, self.clock, onTimeoutCancel=_timed_out)
            await waiting
            if leader:
                await self._confirm(opts)
            index, result = run()
        return self._render(request, index, result)

    def agent_write(self, request: IRequest, d: Deferred[Any]) -> Deferred[bytes]:
        """An agent endpoint's write: 200 with an empty body once it is done."""
        return d.addCallback(lambda _: b"")

    def apply(self, request: IRequest, command: dict[str, Any]) -> Deferred[bytes]:
        """Apply a command and answer its result as JSON."""
        self.check_dc(request)
        d: Deferred[Any] = self.agent.consensus.apply(command)
        return d.addCallback(lambda result: self.json(request, result))


def _timed_out(result: object, timeout: float) -> None:
    return None


class APIRoot(Resource):
    """
    The root of the API: a fast path for the hottest endpoints, Klein for the rest.

    Klein's routing (werkzeug's matcher, and an IDNA encoding of the Host
    header on every request) costs more than the KV handler itself, so the
    prefixes in ``HTTPApi.fast_routes`` are dispatched here by a dict lookup,
    with the same handlers and the same error mapping.

    It also refuses a request whose path, host or method is not UTF-8 before
    Klein sees it: Klein answers the path and host with an HTML 400 and a
    logged traceback each, and fails on the method with a 500.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, api: HTTPApi, inner: Resource) -> None:
        super().__init__()
        self._api = api
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            path: bytes = request.path
            unquote_to_bytes(path).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
            request.method.decode("utf-8")
        except UnicodeDecodeError:
            return HTTPApi.plain_error(request, 400, "Invalid URL encoding: not UTF-8")
        agent = self._api.agent
        if not agent.config.server and forwarded(path):
            return self._later(request, self._forward(request))
        for prefix, methods in self._api.fast_routes.items():
            if path.startswith(prefix) and len(path) > len(prefix) and b"//" not in path:
                handler = methods.get(request.method)
                if handler is None:
                    break  # Klein answers 405 with the Allow header
                try:
                    rest = unquote_to_bytes(path[len(prefix) :]).decode("utf-8")
                except UnicodeDecodeError:
                    return HTTPApi.plain_error(request, 400, "Invalid URL encoding: not UTF-8")
                return self._serve(request, handler, rest)
        return self._inner.render(request)

    def _forward(self, request: IRequest) -> Deferred[bytes]:
        """A client agent's request, answered by a server."""
        remote = self._api.agent.remote
        try:
            body = read_body(request, MAX_JSON_BODY)
        except TxConsulError as e:
            return fail(e)
        return remote.http(request, body, hop=False)

    def _serve(self, request: IRequest, handler: Callable[[IRequest, str], Any], rest: str) -> Any:
        try:
            result = handler(request, rest)
        except Exception as e:  # noqa: BLE001 - mapped to a status as Klein's handlers do
            return self._error(request, Failure(e))
        if not isinstance(result, Deferred):
            return result
        return self._later(request, result)

    def _later(self, request: IRequest, result: Deferred[bytes]) -> Any:
        """Answer with what ``result`` fires with; cancel it if the client goes away."""
        gone: list[bool] = []
        answered: list[bool] = []

        def client_left(reason: Failure) -> None:
            # A blocked query whose client went away frees its watch now.
            gone.append(True)
            result.cancel()

        def write(body: bytes) -> None:
            if gone:
                return
            answered.append(True)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return
            write(self._error(request, failure))

        result.addCallbacks(write, failed)
        if not answered:
            # Still waiting (a write that fired already, as a dev server's
            # does, needs no watch on the connection).
            request.notifyFinish().addErrback(client_left)  # type: ignore[attr-defined]
        return NOT_DONE_YET

    def _error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, TxConsulError):
            return HTTPApi.plain_error(request, error.code, str(error))
        self.log.failure("unexpected error serving {path}", failure, path=request.uri)
        return HTTPApi.plain_error(request, 500, "Internal error")
