# -*- test-case-name: txconsul.test.gossip.test_adapter -*-
"""
Twisted adapters around the memberlist core: one ``DatagramProtocol`` for UDP,
one stream protocol for push/pull and TCP pings, and ``GossipPool``, the
service that owns both sockets on one port.

Twisted calls ``datagramReceived``, ``dataReceived`` and the timer; the core's
outputs drive ``transport.write`` and outgoing connections. The core's time is
the injected monotonic clock, never ``reactor.seconds()`` (the wall clock).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorUDP,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.gossip import wire
from txconsul.gossip.keyring import Keyring
from txconsul.gossip.memberlist import (
    Address,
    Delegate,
    GossipConfig,
    Memberlist,
    MergeRefused,
    Node,
    Output,
    Packet,
    StartPushPull,
    StreamPing,
)
from txconsul.gossip.messages import (
    Ack,
    ErrResp,
    Ping,
    PushPull,
    UserStream,
    decode_packet,
    decode_stream,
    encode_packet,
    encode_stream,
)
from txconsul.gossip.wire import Incomplete, MalformedPacket

Monotonic = Callable[[], float]


class Codec:
    """
    Packet and stream framing for one pool: compression, CRC, encryption.

    :param compress: LZW-compress TCP streams, as serf does.
    :param compress_packets: also try LZW on every UDP packet, as memberlist
        does with EnableCompression.
    :param verify_incoming: with a keyring, refuse plaintext packets and
        streams (memberlist's GossipVerifyIncoming, Consul's
        ``encrypt_verify_incoming``); off, plaintext is read as well.
    :param verify_outgoing: with a keyring, seal what is sent (memberlist's
        GossipVerifyOutgoing, Consul's ``encrypt_verify_outgoing``); off,
        packets and streams go out in plaintext.

    The two flags let a running pool move to encryption by rolling restarts
    (docs/gossip.rst); without a keyring they change nothing.

    Both compressions are off in the pools (``GossipConfig.compress_streams``
    and ``compress_packets``): LZW in pure Python costs about 0.7 ms per full
    1,400-byte packet and 3 ms per 10 KB push/pull each way, the largest CPU
    costs of a pool converging, to save about half the bytes. Compressed
    packets and streams from peers are decoded either way.
    """

    def __init__(
        self,
        keyring: Keyring | None = None,
        compress: bool = True,
        compress_packets: bool = False,
        verify_incoming: bool = True,
        verify_outgoing: bool = True,
    ) -> None:
        self.keyring = keyring
        self.compress = compress
        self.compress_packets = compress_packets
        self.verify_incoming = verify_incoming
        self.verify_outgoing = verify_outgoing

    def encode_packet(self, packet: Packet) -> bytes:
        data = encode_packet(
            [m.to_wire() for m in packet.messages], compress=self.compress_packets, crc=packet.crc
        )
        if self.keyring is None or not self.verify_outgoing:
            return data
        return self.keyring.encrypt_packet(data)

    def decode_packet(self, data: bytes) -> list[Any]:
        _, data = wire.strip_label(data)
        if self.keyring is None:
            return decode_packet(data)
        try:
            plain = self.keyring.decrypt_packet(data)
        except MalformedPacket as e:
            if self.verify_incoming:
                raise
            # as memberlist: what no key opens is read as plaintext
            try:
                return decode_packet(data)
            except MalformedPacket as e2:
                raise MalformedPacket(f"{e}; nor is it plaintext: {e2}") from e2
        return decode_packet(plain)

    def encode_stream(self, message: Any) -> bytes:
        data = encode_stream(message, compress=self.compress)
        if self.keyring is None or not self.verify_outgoing:
            return data
        return self.keyring.encrypt_stream(data)

    def decode_stream(self, buffer: bytes) -> tuple[Any, int]:
        """:raise Incomplete: wait for more bytes."""
        _, rest = wire.strip_label(buffer)
        skipped = len(buffer) - len(rest)
        if self.keyring is not None:
            if not rest:
                raise Incomplete("stream type")
            if rest[0] == wire.ENCRYPT or self.verify_incoming:
                plain, used = self.keyring.decrypt_stream(rest)
                try:
                    message, _ = decode_stream(plain)
                except Incomplete as e:
                    raise MalformedPacket("encrypted stream frame ends inside a message") from e
                return message, skipped + used
        message, used = decode_stream(rest)
        return message, skipped + used


class GossipNode:
    """
    The core plus the plumbing every adapter shares: one timer re-armed to the
    core's next deadline, and outputs turned into datagrams and connections.
    """

    log = Logger()

    def __init__(
        self,
        core: Memberlist,
        codec: Codec,
        reactor: Any,
        monotonic: Monotonic,
        interface: str,
    ) -> None:
        self.core = core
        self.codec = codec
        self.reactor = reactor
        self.monotonic = monotonic
        self.interface = interface
        self.udp: DatagramProtocol | None = None
        self._timer: IDelayedCall | None = None
        self.dropped = 0
        #: open push/pull and ping streams, both ways, and connections being made
        self.streams: set[StreamProtocol] = set()
        self.connecting: set[Any] = set()
        #: serf's reconnects to failed members: tried, and answered with a push/pull
        self.reconnects_tried = 0
        self.reconnects_answered = 0
        #: memberlist's TCP fallback pings: sent, and answered with an ack
        self.stream_pings_sent = 0
        self.stream_pings_acked = 0

    def close_streams(self) -> Deferred[None]:
        """Abort every stream and connection attempt; fires once all are closed."""
        for connector in list(self.connecting):
            if connector.state == "connecting":
                connector.stopConnecting()
        closed = [s.closed for s in self.streams]
        for stream in list(self.streams):
            if stream.transport is not None:
                stream.transport.abortConnection()  # type: ignore[attr-defined]
        return DeferredList(closed).addCallback(lambda _: None)

    def emit(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Packet):
                self._send_packet(out)
            elif isinstance(out, StreamPing):
                self.stream_pings_sent += 1
                self.exchange(out.to, out.ping).addCallback(self._on_stream_reply, out.to)
            elif isinstance(out, StartPushPull):
                self.exchange(out.to, out.state).addCallback(self._on_stream_reply, out.to)
        self.arm()

    def _send_packet(self, packet: Packet) -> None:
        transport = self.udp.transport if self.udp is not None else None
        if transport is None:
            return
        try:
            transport.write(self.codec.encode_packet(packet), packet.to)
        except OSError as e:
            self.log.debug("send to {addr} failed: {why}", addr=packet.to, why=str(e))

    def _on_stream_reply(self, message: Any, source: Address) -> None:
        if message is None:
            return
        now = self.monotonic()
        if isinstance(message, PushPull):
            try:
                self.emit(self.core.merge_remote_state(now, message))
            except (MalformedPacket, MergeRefused) as e:
                self.log.info("push/pull with {addr} refused: {why}", addr=source, why=str(e))
        elif isinstance(message, Ack):
            self.stream_pings_acked += 1
            self.emit(self.core.receive(now, source, message))

    def exchange(self, to: Address, request: Any) -> Deferred[Any]:
        """Connect, send ``request``, return the reply (``None`` on any failure)."""
        factory = _ClientFactory(self, request)
        timeout = self.core.config.tcp_timeout
        connector = self.reactor.connectTCP(to[0], to[1], factory, timeout, (self.interface, 0))
        self.connecting.add(connector)

        def finished(result: Any) -> Any:
            self.connecting.discard(connector)
            return result

        return factory.done.addBoth(finished)

    def datagram(self, data: bytes, addr: Address) -> None:
        try:
            messages = self.codec.decode_packet(data)
        except MalformedPacket as e:
            self.dropped += 1
            self.log.debug("dropped packet from {addr}: {why}", addr=addr, why=str(e))
            return
        now = self.monotonic()
        receive = self.core.receive
        outputs: list[Output] = []
        for message in messages:
            try:
                outputs += receive(now, addr, message)
            except Exception:
                self.log.failure("gossip {message} from {addr}", message=message, addr=addr)
        self.emit(outputs)  # once per packet: one timer re-arm for all its messages

    def stream_request(self, message: Any, peer: Address) -> Any:
        """Answer one inbound stream message; :return: the reply, or ``None``."""
        now = self.monotonic()
        if isinstance(message, PushPull):
            reply = self.core.local_state(message.join)
            try:
                self.emit(self.core.merge_remote_state(now, message))
            except MergeRefused as e:
                self.log.info("push/pull from {addr} refused: {why}", addr=peer, why=str(e))
                return ErrResp(str(e))
            except MalformedPacket as e:
                return ErrResp(str(e))
            return reply
        if isinstance(message, Ping):
            if message.node and message.node != self.core.name:
                return ErrResp("ping for an unexpected node")
            return Ack(message.seq_no)
        if isinstance(message, UserStream):
            self.core.delegate.notify_msg(now, message.payload)
        return None

    def arm(self) -> None:
        if self.core.stopped:
            self.disarm()
            return
        deadline = self.core.next_deadline()
        periodic = getattr(self.core.delegate, "next_deadline", None)
        if periodic is not None:
            deadline = min(deadline, periodic())  # serf's reaping and reconnecting
        delay = max(0.0, deadline - self.monotonic())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        with self.log.failuresHandled("gossip timer"):
            now = self.monotonic()
            outputs = self.core.tick(now)
            periodic = getattr(self.core.delegate, "tick", None)
            if periodic is not None and not self.core.stopped:
                for address in periodic(now):
                    self.reconnect(address)
            self.emit(outputs)

    def reconnect(self, address: Address) -> None:
        """Try a failed member again (serf's reconnect): a joining push/pull with it."""
        self.reconnects_tried += 1
        self.log.info("attempting reconnect to {addr}", addr="%s:%d" % address)
        state = self.core.local_state(join=True)
        self.exchange(address, state).addCallback(self._reconnected, address)

    def _reconnected(self, reply: Any, address: Address) -> None:
        if isinstance(reply, PushPull):
            self.reconnects_answered += 1
        self._on_stream_reply(reply, address)

    def disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class GossipProtocol(DatagramProtocol):
    """UDP: Twisted calls ``datagramReceived``; the node writes the core's packets."""

    node: GossipNode | None = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.node is not None:
            self.node.datagram(datagram, (addr[0], addr[1]))


class StreamProtocol(Protocol):
    """
    One TCP exchange. As a server it reads one message and writes the reply; as
    a client (``request`` set) it writes first and hands the reply to ``done``.
    """

    log = Logger()

    def __init__(self, node: GossipNode, request: Any = None) -> None:
        self.node = node
        self.request = request
        self.done: Deferred[Any] = Deferred()
        #: fires when the connection is gone (``GossipNode.close_streams`` waits on it)
        self.closed: Deferred[None] = Deferred()
        self._buffer = b""
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.node.streams.add(self)
        self._timeout = self.node.reactor.callLater(
            self.node.core.config.tcp_timeout, self.transport.loseConnection
        )
        if self.request is not None:
            self.transport.write(self.node.codec.encode_stream(self.request))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self._buffer += data
        if len(self._buffer) > 32 * 1024 * 1024:
            self._fail("stream too long")
            return
        try:
            message, _ = self.node.codec.decode_stream(self._buffer)
        except Incomplete:
            return
        except MalformedPacket as e:
            self._fail(str(e))
            return
        peer = self.transport.getPeer()
        if self.request is not None:
            self._finish(message)
            self.transport.loseConnection()
            return
        reply = None
        with self.log.failuresHandled("stream {message}", message=message):
            reply = self.node.stream_request(message, (peer.host, peer.port))  # type: ignore[attr-defined]
        if reply is not None:
            self.transport.write(self.node.codec.encode_stream(reply))
        self.transport.loseConnection()

    def _fail(self, why: str) -> None:
        assert self.transport is not None
        self.node.dropped += 1
        self.log.debug("dropped stream: {why}", why=why)
        if self.request is None:
            self.transport.write(self.node.codec.encode_stream(ErrResp(why)))
        self._finish(None)
        self.transport.loseConnection()

    def _finish(self, result: Any) -> None:
        if not self.done.called:
            self.done.callback(result)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self.node.streams.discard(self)
        self._finish(None)
        if not self.closed.called:
            self.closed.callback(None)


class _ServerFactory(ServerFactory):
    node: GossipNode | None = None

    def buildProtocol(self, addr: Any) -> StreamProtocol | None:
        return StreamProtocol(self.node) if self.node is not None else None


class _ClientFactory(ClientFactory):
    def __init__(self, node: GossipNode, request: Any) -> None:
        self.node = node
        self.request = request
        self.done: Deferred[Any] = Deferred()

    def buildProtocol(self, addr: Any) -> StreamProtocol:
        proto = StreamProtocol(self.node, self.request)
        proto.done.addBoth(self._finish)
        return proto

    def _finish(self, result: Any) -> None:
        if not self.done.called:
            self.done.callback(result)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._finish(None)


class GossipPool(Service):
    """
    One LAN or WAN pool: UDP and TCP on the same port, the core and its timer.

    :param reactor: provides ``IReactorUDP``, ``IReactorTCP`` and ``IReactorTime``.
    :param monotonic: the core's clock (``time.monotonic`` in production).
    :param port: 0 picks a free port (UDP first, then TCP on the same number).
    :param compress: LZW on outgoing streams; by default ``config.compress_streams``.
    :param advertise: the IP address other members reach this one at (Consul's
        ``advertise_addr``; a NAT's public side, say), with the bound port;
        by default the bound address itself.
    :param verify_incoming: refuse plaintext when there is a keyring (``Codec``).
    :param verify_outgoing: encrypt when there is a keyring (``Codec``).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        monotonic: Monotonic,
        name: str,
        interface: str = "127.0.0.1",
        port: int = 0,
        config: GossipConfig | None = None,
        rng: random.Random | None = None,
        delegate: Delegate | None = None,
        keyring: Keyring | None = None,
        compress: bool | None = None,
        advertise: str | None = None,
        verify_incoming: bool = True,
        verify_outgoing: bool = True,
    ) -> None:
        self._reactor = reactor
        self._advertise = advertise
        self._monotonic = monotonic
        self.node_name = name
        self._interface = interface
        self._portno = port
        self._config = config if config is not None else GossipConfig.lan()
        if keyring is not None and verify_outgoing:
            self._config = _with_encryption(self._config)
        self._rng = rng if rng is not None else random.Random()
        self._delegate = delegate
        if compress is None:
            compress = self._config.compress_streams
        self.codec = Codec(
            keyring, compress, self._config.compress_packets, verify_incoming, verify_outgoing
        )
        self.node: GossipNode | None = None
        #: why the last join through an address was refused (by either side)
        self.refusals: dict[Address, str] = {}
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None

    def address(self) -> Address:
        """The bound ``(ip, port)``; valid once started."""
        assert self._udp is not None, "the pool is not running"
        host = self._udp.getHost()
        return (host.host, host.port)  # type: ignore[attr-defined]

    def advertised(self) -> Address:
        """The ``(ip, port)`` the other members know this one by; valid once started."""
        host, port = self.address()
        return (self._advertise or host, port)

    @property
    def core(self) -> Memberlist:
        assert self.node is not None, "the pool is not running"
        return self.node.core

    def startService(self) -> None:
        self._bind()
        core = Memberlist(
            self.node_name,
            self.advertised(),
            self._config,
            self._rng,
            self._monotonic(),
            self._delegate,
        )
        attach = getattr(self._delegate, "attach", None)
        if attach is not None:
            attach(core)  # the serf layer lists itself
        self.node = GossipNode(core, self.codec, self._reactor, self._monotonic, self._interface)
        self._proto.node = self.node
        self.node.udp = self._proto
        self._factory.node = self.node
        self.node.arm()
        super().startService()

    def _bind(self) -> None:
        udp_reactor: IReactorUDP = self._reactor
        tcp_reactor: IReactorTCP = self._reactor
        self._factory = _ServerFactory()
        for _ in range(20):
            # a fresh protocol each time: the one of a port just closed keeps
            # its transport until the reactor's next turn
            self._proto = GossipProtocol()
            udp = udp_reactor.listenUDP(self._portno, self._proto, self._interface, 65536)
            port = udp.getHost().port  # type: ignore[attr-defined]
            try:
                self._tcp = tcp_reactor.listenTCP(port, self._factory, 128, self._interface)
            except CannotListenError:
                udp.stopListening()
                if self._portno:
                    raise
                continue
            self._udp = udp
            return
        raise CannotListenError(self._interface, self._portno, OSError("no free UDP+TCP port"))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        stopping = []
        if self.node is not None:
            self.node.core.stop()
            self.node.disarm()
            # push/pulls and pings still in flight end now, not at their timeout
            stopping.append(self.node.close_streams())
        for port in (self._udp, self._tcp):
            if port is not None:
                d = port.stopListening()
                if d is not None:
                    stopping.append(d)
        self._udp = self._tcp = None
        return DeferredList(stopping).addCallback(lambda _: None) if stopping else succeed(None)

    def suspend(self) -> Deferred[Any]:
        """
        Cut this member off the network while it keeps its state: close both
        listeners (datagrams and connections to it are refused) and stop its
        timer. ``resume`` binds the same port again. For tests of what the
        others do with a member that vanished and came back, in one process.
        """
        assert self.node is not None and self._udp is not None and self._tcp is not None
        self._portno = self.address()[1]
        self.node.disarm()
        self.node.udp = None
        stopping = [self.node.close_streams()]
        for port in (self._udp, self._tcp):
            d = port.stopListening()
            if d is not None:
                stopping.append(d)
        self._udp = self._tcp = None
        return DeferredList(stopping)

    def resume(self) -> None:
        """Listen again on the port ``suspend`` closed, and restart the timer."""
        assert self.node is not None and self._udp is None
        self._bind()
        self._proto.node = self.node
        self.node.udp = self._proto
        self._factory.node = self.node
        self.node.arm()

    def stop_reading_udp(self) -> None:
        """
        Leave datagrams to this member unread while it still sends its own
        and serves TCP (a firewall dropping UDP inbound, say): for tests of
        memberlist's TCP fallback ping. ``start_reading_udp`` undoes it.
        """
        assert self._udp is not None
        self._udp.stopReading()  # type: ignore[attr-defined]

    def start_reading_udp(self) -> None:
        if self._udp is not None:
            self._udp.startReading()  # type: ignore[attr-defined]

    def join(self, addresses: list[Address]) -> Deferred[int]:
        """Push/pull with each address; fires with how many answered."""
        node = self.node
        assert node is not None, "the pool is not running"
        core = node.core
        state = core.local_state(join=True)
        exchanges = []
        for address in addresses:
            d = node.exchange(address, state)
            d.addCallback(self._joined, address)
            exchanges.append(d)
        done = DeferredList(exchanges)
        return done.addCallback(lambda results: sum(1 for ok, r in results if ok and r))

    def _joined(self, reply: Any, address: Address) -> bool:
        assert self.node is not None
        if isinstance(reply, ErrResp):
            self.refusals[address] = reply.error
            self.log.info("join {addr} refused there: {why}", addr=address, why=reply.error)
            return False
        if not isinstance(reply, PushPull):
            self.log.info("join {addr} failed", addr=address)
            return False
        try:
            self.node.emit(self.node.core.merge_remote_state(self._monotonic(), reply))
        except (MalformedPacket, MergeRefused) as e:
            self.refusals[address] = str(e)
            self.log.info("join {addr} refused: {why}", addr=address, why=str(e))
            return False
        self.refusals.pop(address, None)
        return True

    def leave(self) -> None:
        """Announce our leave; the caller waits a propagation delay before stopping."""
        assert self.node is not None
        self.node.emit(self.node.core.leave(self._monotonic()))

    def flush(self) -> None:
        """Send what the delegate queued outside a core call, and re-arm."""
        if self.node is not None:
            self.node.emit(self.node.core.take_outputs())

    def members(self) -> list[Node]:
        return self.core.members() if self.node is not None else []


def _with_encryption(config: GossipConfig) -> GossipConfig:
    return attrs.evolve(config, encrypted=True)
