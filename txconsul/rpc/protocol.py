# -*- test-case-name: txconsul.test.rpc.test_protocol -*-
"""
RPC over one connection, both ends, and a pool of client connections.

``RPCClientProtocol`` numbers each call, writes its request frame and keeps a
Deferred per ID, so many calls share a connection and their answers may come
in any order; each call may have a timeout on the injected clock, and a lost
connection fails every call still waiting. ``RPCServerProtocol`` decodes
request frames and hands them to a ``Dispatcher``, which runs the handler
named by ``Method`` and turns its result or exception (through
``txconsul.rpc.errors``) into a response frame. A call cancelled by its
caller, or timed out, sends ``Cancel`` for its ID, and the server cancels the
handler: a blocking query abandoned on a client agent drops its watch on the
server at once, instead of holding it until its wait ends.
``RaftConnection`` carries Raft's frames, untouched, to whatever the Raft
transport plugs in.
``RPCClient`` keeps one client connection per server address.

Liveness: a network cut leaves a TCP connection open with its unsent data in
retransmission backoff, and the calls on it would wait for their own
timeouts, then the next ones on the same dead connection too. So while calls
are in flight a client connection that has heard nothing for
``probe_interval`` sends a ``Status.Ping``, and one that has heard nothing for
``dead_after`` is aborted: its calls fail with ``RPCConnectionLost`` (retried
by forwarding where that is safe) and the pool dials a new connection for the
next call. A long blocking query on a live connection is not affected: the
server answers the pings. An idle connection is not probed; TCP keepalive is
on for every connection of the port, so one whose peer vanished is reaped in
the end.

Bad input is never fatal: a frame that is not a request is answered with an
error when it has an ID and dropped otherwise, a frame over the size limit
closes the connection (the stream cannot be resynchronised), each counted in
a ``Counter`` and logged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.errors import BadRequest, TooLarge, TxConsulError
from txconsul.rpc.errors import (
    RPCConnectError,
    RPCConnectionLost,
    RPCError,
    RPCTimeout,
    UnknownMethod,
    error_from_wire,
    error_to_wire,
)
from txconsul.rpc.framing import (
    DEFAULT_MAX_FRAME,
    MAX_ID,
    PROTOCOL_RAFT,
    PROTOCOL_RPC,
    RAFT_MAX_FRAME,
    Cancel,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    Request,
    Response,
    client_frame_from_wire,
    encode_frame,
)

#: a handler takes a request's Body and returns the response Body, or a Deferred of it
Handler = Callable[[Any], Any]

#: requests one connection may have in flight on a server before it answers "busy"
DEFAULT_MAX_IN_FLIGHT = 1024

#: a client connection with calls in flight pings after this much silence
PROBE_INTERVAL = 1.0
#: and is aborted after this much (below the 5 s of a server's RPC timeout)
DEAD_AFTER = 3.0

#: the method a client pings with (every ``Dispatcher`` answers it)
PING_METHOD = "Status.Ping"


def tune_tcp(transport: object) -> None:
    """TCP keepalive on a port-8300 connection: a peer gone behind a network cut is found in the end."""
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    if set_keepalive is not None:
        set_keepalive(True)


def _peer(protocol: Protocol) -> str:
    transport = protocol.transport
    if transport is None:
        return "?"
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class Dispatcher:
    """
    The server's table of RPC methods: ``{"KVS.Apply": handler, ...}``.

    ``Status.Ping`` is built in (it answers ``True``), so a client can check
    that a server is reachable before any endpoint is registered.
    """

    log = Logger()

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {"Status.Ping": lambda body: True}
        self._handlers.update(handlers or {})
        self.stats: Counter[str] = Counter()

    def register(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def dispatch(self, request: Request, peer: str = "") -> Deferred[Response]:
        """Run the handler; the Deferred always fires with a response, never fails."""
        handler = self._handlers.get(request.method)
        if handler is None:
            self.stats["unknown_method"] += 1
            self.log.info("unknown RPC {method} from {peer}", method=request.method, peer=peer)
            return succeed(Response(request.id, error_to_wire(UnknownMethod(request.method))))
        self.stats["requests"] += 1
        d = maybeDeferred(handler, request.body)
        return d.addCallbacks(
            lambda body: Response(request.id, None, body),
            lambda failure: self._failed(request, peer, failure),
        )

    def _failed(self, request: Request, peer: str, failure: Failure) -> Response:
        if failure.check(CancelledError):
            # the caller went away; this answer is never written
            return Response(request.id, error_to_wire(RPCConnectionLost("cancelled")))
        if failure.check(TxConsulError):
            self.stats["errors"] += 1
        else:
            self.stats["internal_errors"] += 1
            self.log.failure(
                "RPC {method} from {peer} failed", failure, method=request.method, peer=peer
            )
        assert failure.value is not None
        return Response(request.id, error_to_wire(failure.value))


class RPCServerProtocol(Protocol):
    """
    The server end of an RPC connection (after its protocol byte).

    Requests run concurrently; each response is written when its handler is
    done. A ``Cancel`` for a request in flight cancels its handler and no
    answer is written; a lost connection cancels every handler still running
    (either way a blocking query stops waiting and drops its watch).
    """

    log = Logger()

    def __init__(
        self,
        dispatcher: Dispatcher,
        stats: Counter[str] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._dispatcher = dispatcher
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._decoder = FrameDecoder(max_frame)
        self._max_frame = max_frame
        self._max_in_flight = max_in_flight
        self._in_flight: dict[int, Deferred[Response]] = {}
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Requests whose handler is still running."""
        return len(self._in_flight)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except MalformedFrame as e:
            self._refuse_stream(e)
            return
        for payload in frames:
            with self.log.failuresHandled("RPC frame from {peer}", peer=_peer(self)):
                self._frame(payload)

    def _refuse_stream(self, error: MalformedFrame) -> None:
        self.stats["oversized_frames" if isinstance(error, FrameTooLarge) else "bad_frames"] += 1
        self.log.warn(
            "closing RPC connection from {peer}: {error}", peer=_peer(self), error=str(error)
        )
        assert self.transport is not None
        self.transport.loseConnection()

    def _frame(self, payload: bytes) -> None:
        if self._closed:
            return
        try:
            request = client_frame_from_wire(payload)
        except MalformedFrame as e:
            self.stats["malformed_frames"] += 1
            request_id = Request.id_of(payload)
            self.log.warn(
                "malformed RPC frame from {peer} (ID {id}): {error}",
                peer=_peer(self),
                id=request_id,
                error=str(e),
            )
            if request_id is not None:
                self._respond(Response(request_id, error_to_wire(e)))
            return
        if isinstance(request, Cancel):
            self._cancel(request.id)
            return
        if request.id in self._in_flight:
            self.stats["duplicate_ids"] += 1
            duplicate = BadRequest(f"request ID {request.id} is in flight already")
            self._respond(Response(request.id, error_to_wire(duplicate)))
            return
        if len(self._in_flight) >= self._max_in_flight:
            self.stats["busy"] += 1
            busy = RPCError(f"more than {self._max_in_flight} requests in flight")
            self._respond(Response(request.id, error_to_wire(busy)))
            return
        d = self._dispatcher.dispatch(request, _peer(self))
        if d.called:
            d.addCallback(self._respond)
            return
        self._in_flight[request.id] = d

        def done(response: Response) -> None:
            if self._in_flight.get(request.id) is d:
                del self._in_flight[request.id]
                self._respond(response)
            # else cancelled: the client wants no answer

        d.addCallback(done)

    def _cancel(self, request_id: int) -> None:
        d = self._in_flight.pop(request_id, None)
        if d is None:
            # answered already (the answer and the cancel crossed), or never asked
            self.stats["late_cancels"] += 1
            return
        self.stats["cancelled"] += 1
        d.cancel()

    def _respond(self, response: Response) -> None:
        if self._closed or self.transport is None:
            return
        try:
            frame = encode_frame(response.to_wire(), self._max_frame)
        except FrameTooLarge as e:
            frame = encode_frame(Response(response.id, error_to_wire(TooLarge(str(e)))).to_wire())
        except Exception as e:  # a handler returned something msgpack cannot carry
            self.log.error("RPC response {id} not encodable: {error}", id=response.id, error=e)
            error = TxConsulError("the response could not be encoded")
            frame = encode_frame(Response(response.id, error_to_wire(error)).to_wire())
        self.transport.write(frame)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._closed = True
        if self._decoder.pending:
            self.stats["truncated_frames"] += 1
            self.log.info(
                "RPC connection from {peer} closed inside a frame ({n} bytes held)",
                peer=_peer(self),
                n=self._decoder.pending,
            )
        in_flight, self._in_flight = self._in_flight, {}
        for d in in_flight.values():
            d.cancel()


class RaftConnection(Protocol):
    """
    A connection carrying Raft frames, either way.

    The Raft transport sets ``on_frame`` (one payload, as sent) and, if it
    cares, ``on_close``; ``send`` writes one payload. An outbound connection
    (``outbound=True``) writes the Raft protocol byte first. Frames arriving
    while nobody listens are counted and dropped.
    """

    log = Logger()

    def __init__(
        self,
        outbound: bool = False,
        max_frame: int = RAFT_MAX_FRAME,
        stats: Counter[str] | None = None,
    ) -> None:
        self.outbound = outbound
        self.max_frame = max_frame
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.on_frame: Callable[[bytes], None] | None = None
        self.on_close: Callable[[Failure], None] | None = None
        self._decoder = FrameDecoder(max_frame)
        self.closed = False

    @property
    def peer(self) -> str:
        return _peer(self)

    def connectionMade(self) -> None:
        if self.outbound:
            assert self.transport is not None
            self.transport.write(bytes([PROTOCOL_RAFT]))

    def send(self, payload: bytes) -> None:
        """Write one frame; ``FrameTooLarge`` if ``payload`` is over the limit."""
        if self.closed or self.transport is None:
            return
        self.transport.write(encode_frame(payload, self.max_frame))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.loseConnection()

    def abort(self) -> None:
        """
        Close at once, dropping unsent data (a dead path would hold a graceful
        close until TCP gives up); ``closed`` from now, ``on_close`` when the
        transport reports the loss.
        """
        if self.transport is not None and not self.closed:
            self.closed = True
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except MalformedFrame as e:
            self.stats["oversized_frames" if isinstance(e, FrameTooLarge) else "bad_frames"] += 1
            self.log.warn("closing raft connection {peer}: {error}", peer=self.peer, error=str(e))
            self.close()
            return
        for payload in frames:
            if self.on_frame is None:
                self.stats["unhandled_raft_frames"] += 1
                continue
            with self.log.failuresHandled("raft frame from {peer}", peer=self.peer):
                self.on_frame(payload)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        if self._decoder.pending:
            self.stats["truncated_frames"] += 1
            self.log.info(
                "raft connection {peer} closed inside a frame ({n} bytes dropped)",
                peer=self.peer,
                n=self._decoder.pending,
            )
        if self.on_close is not None:
            with self.log.failuresHandled("raft connection close {peer}", peer=self.peer):
                self.on_close(reason)


class _Pending:
    def __init__(self, method: str, deferred: Deferred[Any]) -> None:
        self.method = method
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


class RPCClientProtocol(Protocol):
    """
    The client end of an RPC connection: ``call`` returns a Deferred of the response body.

    A failed call raises what the server raised (``NotFound``, ``NoLeader``,
    ...); ``RPCTimeout`` after ``timeout`` seconds; ``RPCConnectionLost`` when the
    connection closes first (or is found dead: see the module docstring);
    ``RPCConnectError`` if the connection is already closed (the request was
    never sent).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_frame: int = DEFAULT_MAX_FRAME,
        stats: Counter[str] | None = None,
        probe_interval: float = PROBE_INTERVAL,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        self._clock = clock
        self._max_frame = max_frame
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.probe_interval = probe_interval
        self.dead_after = dead_after
        self._decoder = FrameDecoder(max_frame)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self.whenClosed: Deferred[None] = Deferred()
        #: since when nothing came in while calls waited (None: nothing waits)
        self._quiet_since: float | None = None
        self._probe: IDelayedCall | None = None
        self._ping: Deferred[Any] | None = None
        self._dead_reason = ""

    def connectionMade(self) -> None:
        assert self.transport is not None
        tune_tcp(self.transport)
        self.transport.write(bytes([PROTOCOL_RPC]))

    # -- liveness ---------------------------------------------------------------------

    def _waiting_changed(self) -> None:
        """Arm the liveness check while calls wait, disarm it when none does."""
        if self._pending and not self.closed:
            if self._quiet_since is None:
                self._quiet_since = self._clock.seconds()
            if self._probe is None:
                self._probe = self._clock.callLater(self.probe_interval, self._check)
        else:
            self._quiet_since = None
            if self._probe is not None:
                if self._probe.active():
                    self._probe.cancel()
                self._probe = None

    def _check(self) -> None:
        self._probe = None
        if not self._pending or self.closed or self._quiet_since is None:
            self._waiting_changed()
            return
        silence = self._clock.seconds() - self._quiet_since
        if silence >= self.dead_after:
            self._condemn(silence)
            return
        if silence >= self.probe_interval and (self._ping is None or self._ping.called):
            self._send_ping()  # a call: it may arm the next check itself
        if self._probe is None:
            self._probe = self._clock.callLater(self.probe_interval, self._check)

    def _send_ping(self) -> None:
        self._ping = self.call(PING_METHOD)
        self.stats["pings"] += 1
        # the answer matters only as a sign of life (dataReceived); a lost
        # connection fails the ping like any call, and that is no error
        self._ping.addErrback(lambda f: None)

    def _condemn(self, silence: float) -> None:
        self.stats["dead_connections"] += 1
        self._dead_reason = f"no answer for {silence:.1f}s"
        self.log.info(
            "RPC connection to {peer}: no answer for {seconds:.1f}s with {n} calls waiting;"
            " closing it",
            peer=_peer(self),
            seconds=silence,
            n=len(self._pending),
        )
        self.closed = True  # the pool dials a new connection for the next call
        assert self.transport is not None
        abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        abort()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _allocate_id(self) -> int:
        while True:
            request_id = self._next_id
            self._next_id = 1 if self._next_id >= MAX_ID else self._next_id + 1
            if request_id not in self._pending:
                return request_id

    def call(self, method: str, body: Any = None, timeout: float | None = None) -> Deferred[Any]:
        if self.closed or self.transport is None:
            return fail(RPCConnectError(f"not connected (calling {method})"))
        request_id = self._allocate_id()
        try:
            frame = encode_frame(Request(method, request_id, body).to_wire(), self._max_frame)
        except FrameTooLarge as e:
            return fail(TooLarge(str(e)))
        except Exception as e:  # msgpack cannot carry the body: the caller's mistake
            return fail(BadRequest(f"cannot encode the body of {method}: {e}"))

        def cancel(d: Deferred[Any]) -> None:
            if self._forget(request_id) is not None:
                self._send_cancel(request_id)

        d: Deferred[Any] = Deferred(canceller=cancel)
        pending = _Pending(method, d)
        self._pending[request_id] = pending
        if timeout is not None:
            pending.timer = self._clock.callLater(timeout, self._timed_out, request_id, timeout)
        self._waiting_changed()
        self.transport.write(frame)
        return d

    def _forget(self, request_id: int) -> _Pending | None:
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self._waiting_changed()
        return pending

    def _send_cancel(self, request_id: int) -> None:
        """Tell the server to stop working on a request nobody waits for any more."""
        if self.closed or self.transport is None:
            return
        self.stats["cancels_sent"] += 1
        self.transport.write(encode_frame(Cancel(request_id).to_wire(), self._max_frame))

    def _timed_out(self, request_id: int, timeout: float) -> None:
        pending = self._pending.pop(request_id, None)
        self._waiting_changed()
        if pending is not None:
            pending.timer = None
            self.stats["timeouts"] += 1
            self._send_cancel(request_id)
            pending.deferred.errback(
                RPCTimeout(f"{pending.method} got no answer within {timeout:g}s")
            )

    def dataReceived(self, data: bytes) -> None:
        if self._quiet_since is not None:
            self._quiet_since = self._clock.seconds()  # it is alive
        try:
            frames = self._decoder.feed(data)
        except MalformedFrame as e:
            self.stats["oversized_frames" if isinstance(e, FrameTooLarge) else "bad_frames"] += 1
            self.log.warn("closing RPC connection to {peer}: {error}", peer=_peer(self), error=e)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for payload in frames:
            with self.log.failuresHandled("RPC response from {peer}", peer=_peer(self)):
                self._response(payload)

    def _response(self, payload: bytes) -> None:
        try:
            response = Response.from_wire(payload)
        except MalformedFrame as e:
            self.stats["malformed_frames"] += 1
            self.log.warn(
                "malformed RPC response from {peer}: {error}", peer=_peer(self), error=str(e)
            )
            return
        pending = self._forget(response.id)
        if pending is None:
            # the call timed out or was cancelled before its answer came
            self.stats["late_responses"] += 1
            self.log.debug("RPC response {id} matches no call", id=response.id)
            return
        if response.error is not None:
            pending.deferred.errback(error_from_wire(response.error))
        else:
            pending.deferred.callback(response.body)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        self._waiting_changed()
        why = self._dead_reason or reason.getErrorMessage()
        for p in pending.values():
            if p.timer is not None and p.timer.active():
                p.timer.cancel()
        for p in pending.values():
            p.deferred.errback(
                RPCConnectionLost(f"{p.method}: connection to {_peer(self)} lost ({why})")
            )
        if self.on_close is not None:
            self.on_close()
        self.whenClosed.callback(None)


def parse_address(address: str) -> tuple[str, int]:
    """``"10.0.0.1:8300"`` or ``"[::1]:8300"`` -> host and port; ``BadRequest`` otherwise."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"not a host:port address: {address!r}")
    return host, int(port)


class RPCClient:
    """
    A pool of RPC connections, one per server address, opened on first use.

    A connection that fails or closes is forgotten, so the next call to that
    address connects again. ``timeout`` bounds the whole call, connecting
    included, on ``clock``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        connect_timeout: float = 5.0,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._max_frame = max_frame
        self._connections: dict[str, RPCClientProtocol] = {}
        self._connecting: dict[str, tuple[Deferred[RPCClientProtocol], list[Deferred[Any]]]] = {}
        self.stats: Counter[str] = Counter()

    def call(self, address: str, method: str, body: Any, timeout: float) -> Deferred[Any]:
        d = self._connection(address)
        d.addCallback(lambda protocol: protocol.call(method, body))

        def timed_out(result: Any, seconds: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                self.stats["timeouts"] += 1
                return Failure(
                    RPCTimeout(f"{method} to {address} got no answer within {seconds:g}s")
                )
            return result

        return d.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)

    def _connection(self, address: str) -> Deferred[RPCClientProtocol]:
        protocol = self._connections.get(address)
        if protocol is not None and not protocol.closed:
            return succeed(protocol)
        if address not in self._connecting:
            try:
                endpoint = self._endpoint(address)
            except BadRequest as e:
                return fail(e)
            waiters: list[Deferred[Any]] = []
            self._connect(address, endpoint, waiters)
        waiters = self._connecting[address][1]

        def forget(d: Deferred[Any]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[Any] = Deferred(canceller=forget)
        waiters.append(waiter)
        return waiter

    def _endpoint(self, address: str) -> IStreamClientEndpoint:
        host, port = parse_address(address)
        if ":" in host:
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
        return TCP4ClientEndpoint(self._reactor, host, port, timeout=self._connect_timeout)

    def _connect(
        self, address: str, endpoint: IStreamClientEndpoint, waiters: list[Deferred[Any]]
    ) -> None:
        protocol = RPCClientProtocol(self._clock, self._max_frame, self.stats)
        protocol.on_close = lambda: self._lost(address, protocol)
        attempt: Deferred[RPCClientProtocol] = connectProtocol(endpoint, protocol)
        self._connecting[address] = (attempt, waiters)

        def connected(protocol: RPCClientProtocol) -> None:
            _, waiters = self._connecting.pop(address)
            self._connections[address] = protocol
            for w in waiters:
                w.callback(protocol)

        def failed(failure: Failure) -> None:
            _, waiters = self._connecting.pop(address)
            self.stats["connect_failures"] += 1
            self.log.info(
                "cannot connect to server {address}: {why}",
                address=address,
                why=failure.getErrorMessage(),
            )
            for w in waiters:
                w.errback(RPCConnectError(f"cannot reach {address}: {failure.getErrorMessage()}"))

        attempt.addCallbacks(connected, failed)

    def _lost(self, address: str, protocol: RPCClientProtocol) -> None:
        if self._connections.get(address) is protocol:
            del self._connections[address]

    def close(self) -> Deferred[Any]:
        """Close every connection and stop every attempt; fires once all are closed."""
        for attempt, _ in list(self._connecting.values()):
            attempt.cancel()
        closing = []
        for protocol in list(self._connections.values()):
            if not protocol.closed and protocol.transport is not None:
                closing.append(protocol.whenClosed)
                protocol.transport.loseConnection()
        self._connections.clear()
        return DeferredList(closing)
