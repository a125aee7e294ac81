# -*- test-case-name: txconsul.test.gossip.test_serf -*-
"""
The serf layer (spec section 9) as a memberlist delegate: tags in node meta,
Lamport clocks, join/leave intents, member status and user events with a
dedup window. Pure like the memberlist core: it is called with the time and
appends what the application should see to ``events``.
"""

from __future__ import annotations

import enum
import functools
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.logger import Logger

from txconsul.gossip import wire
from txconsul.gossip.broadcast import BroadcastQueue
from txconsul.gossip.keyring import Keyring, KeyringError, encode_key
from txconsul.gossip.memberlist import Memberlist, Node
from txconsul.gossip.messages import Alive, PushNodeState, ip_bytes, ip_text
from txconsul.gossip.states import MemberState
from txconsul.gossip.wire import MalformedPacket

LEAVE, JOIN, PUSH_PULL, USER_EVENT, QUERY, QUERY_RESPONSE = 0, 1, 2, 3, 4, 5
KEY_REQUEST, KEY_RESPONSE, RELAY = 7, 8, 9
TAG_MAGIC = 0xFF
EVENT_BUFFER = 512
QUERY_BUFFER = 512
USER_EVENT_SIZE_LIMIT = 512
QUERY_SIZE_LIMIT = 1024
QUERY_RESPONSE_SIZE_LIMIT = 1024
QUERY_FLAG_ACK = 1
QUERY_FLAG_NO_BROADCAST = 2
#: serf's RelayFactor is a u8; Consul's API allows 0 to 5
MAX_RELAY_FACTOR = 255
FILTER_NODE, FILTER_TAG = 0, 1
INTERNAL_QUERY_PREFIX = "_serf_"
#: keyring operations and the internal queries that carry them (spec 9.7)
KEY_QUERIES = {
    "install": "_serf_install-key",
    "use": "_serf_use-key",
    "remove": "_serf_remove-key",
    "list": "_serf_list-keys",
}
#: serf's bound for one base64 key in a list-keys response, with its framing
MIN_ENCODED_KEY_LENGTH = 25


#: ping payload version 1 + serf's coordinate of a node that has measured nothing yet
FRESH_COORDINATE = b"\x01" + wire.pack(
    {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-05, "Vec": [0.0] * 8}
)


@attrs.frozen
class SerfConfig:
    """serf's timers (spec section 8, serf defaults); seconds throughout."""

    reap_interval: float = 15.0
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0
    tombstone_timeout: float = 24 * 3600.0
    query_timeout_mult: int = 16
    #: how long a leave waits for its broadcast, and then for it to spread; a
    #: pruned member that is still leaving is erased after both
    broadcast_timeout: float = 5.0
    leave_propagate_delay: float = 1.0
    #: how often changed Lamport clocks are written to the snapshot
    clock_save_interval: float = 0.5


class SnapshotWriter(Protocol):
    """Where serf records what a restart needs (``txconsul.gossip.snapshot``)."""

    def alive(self, name: str, address: tuple[str, int]) -> None: ...
    def not_alive(self, name: str) -> None: ...
    def clocks(self, clock: int, event_clock: int, query_clock: int) -> None: ...
    def leave(self) -> None: ...


class MemberStatus(enum.IntEnum):
    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


@attrs.define
class LamportClock:
    counter: int = 1

    def time(self) -> int:
        return self.counter

    def increment(self) -> int:
        self.counter += 1
        return self.counter

    def witness(self, value: int) -> None:
        if value >= self.counter:
            self.counter = value + 1


def encode_tags(tags: Mapping[str, str]) -> bytes:
    return bytes([TAG_MAGIC]) + wire.pack(dict(sorted(tags.items())))


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from node meta; meta without the magic byte is the legacy role string."""
    return dict(_decode_tags(meta))


@functools.lru_cache(maxsize=4096)
def _decode_tags(meta: bytes) -> dict[str, str]:
    """``decode_tags``, kept: every member's meta arrives again and again (never mutate)."""
    if not meta or meta[0] != TAG_MAGIC:
        return {"role": meta.decode("utf-8", "replace")}
    try:
        raw, _ = wire.unpack_one(meta, 1)
    except MalformedPacket:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
        for k, v in raw.items()
        if isinstance(k, bytes) and isinstance(v, bytes)
    }


@attrs.define
class Member:
    name: str
    address: tuple[str, int]
    tags: dict[str, str]
    status: MemberStatus
    status_ltime: int = 0
    #: when the member became failed or left (monotonic seconds)
    leave_time: float = 0.0


@attrs.frozen
class MemberEvent:
    """``kind``: member-join, member-leave, member-failed, member-update, member-reap."""

    kind: str
    name: str


@attrs.frozen
class UserEvent:
    ltime: int
    name: str
    payload: bytes
    coalesce: bool = True


@attrs.frozen
class Query:
    """A query for the application to answer with ``Serf.respond`` before ``deadline``."""

    ltime: int
    id: int
    name: str
    payload: bytes
    source: str
    address: tuple[str, int]
    deadline: float
    #: how many other members also relay each answer to the source
    relay_factor: int = 0


@attrs.define
class QueryHandle:
    """A query this member sent: the acks and responses that came back in time."""

    ltime: int
    id: int
    deadline: float
    acks: set[str] = attrs.field(factory=set)
    responses: dict[str, bytes] = attrs.field(factory=dict)
    #: acks and responses that came again (relayed copies): counted once, then ignored
    duplicates: int = 0
    #: set once the deadline has passed (``Serf.tick``) or the member stopped
    closed: bool = False
    #: called after each ack or response and once when the query closes
    watcher: Callable[[QueryHandle], None] | None = None

    def open(self, now: float) -> bool:
        return not self.closed and now <= self.deadline

    def _changed(self) -> None:
        if self.watcher is not None:
            self.watcher(self)


@attrs.frozen
class KeyResponse:
    """A keyring operation's answers from the pool, summed up as serf's KeyManager does."""

    num_nodes: int
    num_resp: int
    num_err: int
    messages: dict[str, str]
    keys: dict[str, int]
    primary_keys: dict[str, int]

    def error(self) -> str | None:
        """serf's verdict: ``None``, or how many members failed or did not answer."""
        if self.num_err:
            return f"{self.num_err}/{self.num_nodes} nodes reported failure"
        if self.num_resp != self.num_nodes:
            return f"{self.num_resp}/{self.num_nodes} nodes reported success"
        return None


def key_response(handle: QueryHandle, num_nodes: int) -> KeyResponse:
    """Sum up the responses to a key query (serf's ``streamKeyResp``)."""
    messages: dict[str, str] = {}
    keys: dict[str, int] = {}
    primary: dict[str, int] = {}
    errors = 0
    for sender, payload in sorted(handle.responses.items()):
        try:
            if not payload or payload[0] != KEY_RESPONSE:
                raise MalformedPacket("Invalid key query response type")
            body, _ = wire.unpack_one(payload, 1)
            if not isinstance(body, dict):
                raise MalformedPacket("Failed to decode key query response")
            message = _text(body, b"Message")
            listed = [
                k.decode("ascii", "replace") for k in _list(body, b"Keys") if isinstance(k, bytes)
            ]
            primary_key = _text(body, b"PrimaryKey")
        except MalformedPacket as e:
            messages[sender] = str(e)
            errors += 1
            continue
        if body.get(b"Result") is not True:
            messages[sender] = message
            errors += 1
        elif message:
            messages[sender] = message
        for key in listed:
            keys[key] = keys.get(key, 0) + 1
        if primary_key:
            primary[primary_key] = primary.get(primary_key, 0) + 1
    return KeyResponse(num_nodes, len(handle.responses), errors, messages, keys, primary)


def _msg(kind: int, body: dict[str, Any]) -> bytes:
    return bytes([kind]) + wire.pack(dict(sorted(body.items())))


def _u64(body: Mapping[bytes, Any], key: bytes) -> int:
    value = body.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise MalformedPacket(f"{key.decode()} is not a u64")
    return value


def _list(body: Mapping[bytes, Any], key: bytes) -> list[Any]:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise MalformedPacket(f"{key.decode()} is not a list")
    return value


def _text(body: Mapping[bytes, Any], key: bytes) -> str:
    value = body.get(key) or b""
    if not isinstance(value, bytes):
        raise MalformedPacket(f"{key.decode()} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacket(f"{key.decode()} is not UTF-8") from e


#: serf's MergeDelegate: (name, tags) of the members to merge -> a refusal, or ``None``
MergeCheck = Callable[[list[tuple[str, dict[str, str]]]], "str | None"]


def _log10_ceil(n: int) -> int:
    return max(1, math.ceil(math.log10(n)))


def user_event_message(ltime: int, name: str, payload: bytes, coalesce: bool = True) -> bytes:
    """A serf user event as it travels in a memberlist user message."""
    return _msg(USER_EVENT, {"CC": coalesce, "LTime": ltime, "Name": name, "Payload": payload})


class Serf:
    """
    One serf member; give it to ``Memberlist`` as the delegate, then set ``memberlist``.

    :param tags: published in node meta (at most 512 bytes encoded).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        tags: Mapping[str, str],
        retransmit_mult: int = 4,
        *,
        config: SerfConfig | None = None,
        rng: random.Random | None = None,
        snapshot: SnapshotWriter | None = None,
        keyring: Keyring | None = None,
        save_keyring: Callable[[Keyring], None] | None = None,
        merge: MergeCheck | None = None,
    ) -> None:
        """
        :param keyring: the pool's keyring (shared with its codec), which the
            internal key queries change; ``None`` when encryption is off.
        :param save_keyring: persists the keyring after each change; an
            ``OSError`` makes the change answer as failed.
        :param merge: serf's MergeDelegate: given the name and tags of members
            about to be merged (a push/pull's, or one alive message's), a
            reason to refuse them, or ``None`` (Consul's pool rules).
        """
        self.merge = merge
        self.name = name
        self.tags = dict(tags)
        self.config = config if config is not None else SerfConfig()
        self.rng = rng if rng is not None else random.Random(name)
        self.snapshot = snapshot
        self.keyring = keyring
        self.save_keyring = save_keyring
        self._saved_clocks = (0, 0, 0)
        self.event_min_time = 0
        self.query_min_time = 0
        self._seen_queries: dict[int, set[int]] = {}
        self._queries: dict[tuple[int, int], QueryHandle] = {}
        self._answered: set[tuple[int, int]] = set()
        self._next_reap: float | None = None
        self._next_reconnect: float | None = None
        self._next_clock_save: float | None = None
        self.clock = LamportClock()
        self.event_clock = LamportClock()
        self.query_clock = LamportClock()
        self.members: dict[str, Member] = {}
        self.events: list[MemberEvent | UserEvent] = []
        #: queries for the application to answer (``respond``), apart from events
        self.queries: list[Query] = []
        self.broadcasts: BroadcastQueue[bytes] = BroadcastQueue(retransmit_mult)
        self._seen_events: dict[int, set[tuple[str, bytes]]] = {}
        self._intents: dict[str, tuple[int, int]] = {}  # name -> (kind, ltime)
        #: leaving members a pruning leave intent erases at the given time
        self._prunes: dict[str, float] = {}
        #: query answers we sent through relays, and relayed answers we passed on
        self.relays_sent = 0
        self.relays_forwarded = 0
        #: serf messages and push/pull states that could not be read
        self.dropped = 0
        self.memberlist: Memberlist | None = None

    def attach(self, memberlist: Memberlist) -> None:
        """Bind to the core that uses us as its delegate, and list ourselves."""
        self.memberlist = memberlist
        me = memberlist.me
        self.members[self.name] = Member(
            self.name, me.address, dict(self.tags), MemberStatus.ALIVE, 0
        )

    # --- application API -----------------------------------------------------------

    def join_intent(self) -> None:
        """Announce our join (after the memberlist join succeeded)."""
        ltime = self.clock.time()
        self.clock.witness(ltime)
        me = self.members.get(self.name)
        if me is not None:
            me.status_ltime = ltime
        self._broadcast(_msg(JOIN, {"LTime": ltime, "Node": self.name}))

    def leave_intent(self) -> None:
        """Announce our graceful leave; memberlist's leave follows after it spreads."""
        ltime = self.clock.time()
        self.clock.increment()
        me = self.members.get(self.name)
        if me is not None:
            me.status = MemberStatus.LEAVING
            me.status_ltime = ltime
        self._broadcast(_msg(LEAVE, {"LTime": ltime, "Node": self.name, "Prune": False}))
        if self.snapshot is not None:
            self._save_clocks()
            self.snapshot.leave()

    def force_leave(self, now: float, node: str, prune: bool = False) -> None:
        """
        Broadcast a leave intent for another member (serf's RemoveFailedNode):
        everybody turns it left if it failed; ``prune`` also erases it from
        every member list, as a reap would.
        """
        ltime = self.clock.time()
        self.clock.increment()
        self._apply_intent(LEAVE, node, ltime, prune, now)
        self._broadcast(_msg(LEAVE, {"LTime": ltime, "Node": node, "Prune": prune}))

    def user_event(self, name: str, payload: bytes, coalesce: bool = True) -> None:
        if len(name) + len(payload) > USER_EVENT_SIZE_LIMIT:
            raise ValueError("user event exceeds the size limit")
        ltime = self.event_clock.time()
        self.event_clock.increment()
        body = {"CC": coalesce, "LTime": ltime, "Name": name, "Payload": payload}
        self._on_user_event(_msg(USER_EVENT, body)[1:], rebroadcast=False)
        self._broadcast(_msg(USER_EVENT, body))

    def set_tags(self, now: float, tags: Mapping[str, str]) -> None:
        self.tags = dict(tags)
        if self.memberlist is not None:
            self.memberlist.update_meta(now)

    # --- timers: reaping, reconnecting, saving clocks ---------------------------------

    def next_deadline(self) -> float:
        """When ``tick`` should next run (the adapter arms one timer for both cores)."""
        times = [self._next_reap, self._next_reconnect, self._next_clock_save]
        times += [h.deadline for h in self._queries.values()]
        times += self._prunes.values()
        return min((t for t in times if t is not None), default=0.0)

    def tick(self, now: float) -> list[tuple[str, int]]:
        """Run due periodic work; :return: addresses to try to rejoin (failed members)."""
        cfg = self.config
        if self._next_reap is None or self._next_reconnect is None:
            self._next_reap = now + cfg.reap_interval
            self._next_reconnect = now + cfg.reconnect_interval
        if now >= self._next_reap:
            self._next_reap = now + cfg.reap_interval
            self.reap(now)
        for name, when in list(self._prunes.items()):
            if now >= when:
                del self._prunes[name]
                member = self.members.get(name)
                if member is not None and member.status != MemberStatus.ALIVE:
                    self._erase(member.name)
        targets = []
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            target = self.reconnect_target()
            if target is not None:
                targets.append(target)
        if self.snapshot is not None:
            if self._next_clock_save is None or now >= self._next_clock_save:
                self._next_clock_save = now + cfg.clock_save_interval
                self._save_clocks()
        for key, handle in list(self._queries.items()):
            if now >= handle.deadline:
                del self._queries[key]
                handle.closed = True
                handle._changed()
        return targets

    def close_queries(self) -> None:
        """Close every open query (the member is stopping): watchers hear it once."""
        queries, self._queries = list(self._queries.values()), {}
        for handle in queries:
            handle.closed = True
            handle._changed()

    def reap(self, now: float) -> None:
        """Forget failed members after reconnect_timeout and left ones after tombstone_timeout."""
        cfg = self.config
        for member in list(self.members.values()):
            if member.status == MemberStatus.FAILED:
                limit = cfg.reconnect_timeout
            elif member.status == MemberStatus.LEFT:
                limit = cfg.tombstone_timeout
            else:
                continue
            if member.name != self.name and now - member.leave_time > limit:
                self._erase(member.name)

    def _erase(self, name: str) -> None:
        """Forget a member entirely (serf's eraseNode); memberlist keeps its own record."""
        del self.members[name]
        self._prunes.pop(name, None)
        self.events.append(MemberEvent("member-reap", name))

    def reconnect_target(self) -> tuple[str, int] | None:
        """With probability failed/alive, a random failed member to try to join again."""
        failed = [m for m in self.members.values() if m.status == MemberStatus.FAILED]
        if not failed:
            return None
        alive = sum(1 for m in self.members.values() if m.status == MemberStatus.ALIVE)
        if self.rng.random() >= len(failed) / max(alive, 1):
            return None
        return self.rng.choice(failed).address

    def _save_clocks(self) -> None:
        clocks = (self.clock.time(), self.event_clock.time(), self.query_clock.time())
        if self.snapshot is not None and clocks != self._saved_clocks:
            self._saved_clocks = clocks
            self.snapshot.clocks(*clocks)

    def restore(self, clock: int, event_clock: int, query_clock: int) -> None:
        """Resume the clocks saved in a snapshot; older events and queries are ignored."""
        self.clock.witness(clock)
        self.event_clock.witness(event_clock)
        self.query_clock.witness(query_clock)
        self.event_min_time = event_clock + 1
        self.query_min_time = query_clock + 1

    # --- queries ---------------------------------------------------------------------

    def query(
        self,
        now: float,
        name: str,
        payload: bytes,
        timeout: float | None = None,
        ack: bool = True,
        nodes: list[str] | None = None,
        tags: Mapping[str, str] | None = None,
        relay_factor: int = 0,
    ) -> QueryHandle:
        """
        Send a query to the pool (``nodes`` and ``tags``, a regex per tag, filter
        who answers); acks and responses collect in the handle until it closes.

        :param relay_factor: each responder also sends its ack and response
            through this many other random members, so that an answer gets
            through a lossy path to us; duplicates count once.
        """
        assert self.memberlist is not None, "attach() first"
        if not 0 <= relay_factor <= MAX_RELAY_FACTOR:
            raise ValueError(f"relay factor must be in range: [0, {MAX_RELAY_FACTOR}]")
        if timeout is None:
            timeout = self.default_query_timeout()
        filters: list[bytes] = []
        if nodes is not None:
            filters.append(bytes([FILTER_NODE]) + wire.pack(list(nodes)))
        for tag, expr in sorted((tags or {}).items()):
            filters.append(bytes([FILTER_TAG]) + wire.pack({"Expr": expr, "Tag": tag}))
        me = self.memberlist.me
        ltime = self.query_clock.time()
        qid = self.rng.getrandbits(31)
        body = {
            "Addr": me.addr,
            "Filters": filters or None,
            "Flags": QUERY_FLAG_ACK if ack else 0,
            "ID": qid,
            "LTime": ltime,
            "Name": name,
            "Payload": payload,
            "Port": me.port,
            "RelayFactor": relay_factor,
            "SourceNode": self.name,
            "Timeout": int(timeout * 1e9),
        }
        message = _msg(QUERY, body)
        if len(message) > QUERY_SIZE_LIMIT:
            raise ValueError("query exceeds the size limit")
        handle = QueryHandle(ltime, qid, now + timeout)
        self._queries[(ltime, qid)] = handle
        self.notify_msg(now, message)  # we are a member too: witness, maybe answer
        return handle

    def key_query(
        self, now: float, op: str, key: bytes | None = None, relay_factor: int = 0
    ) -> QueryHandle:
        """
        Ask every member to ``install``, ``use`` or ``remove`` ``key``, or to
        ``list`` its keys (serf's KeyManager); sum up the handle with ``key_response``.
        """
        payload = bytes([KEY_REQUEST]) + wire.pack({"Key": key or b""})
        return self.query(now, KEY_QUERIES[op], payload, ack=False, relay_factor=relay_factor)

    def default_query_timeout(self) -> float:
        assert self.memberlist is not None
        n = max(len(self.members), 1)
        cfg = self.memberlist.config
        return cfg.gossip_interval * self.config.query_timeout_mult * _log10_ceil(n + 1)

    def respond(self, now: float, query: Query, payload: bytes) -> None:
        """Answer ``query`` once, before its deadline."""
        key = (query.ltime, query.id)
        if now > query.deadline:
            raise ValueError("the query has timed out")
        if key in self._answered:
            raise ValueError("the query was already answered")
        message = self._response(query.ltime, query.id, 0, payload)
        if len(message) > QUERY_RESPONSE_SIZE_LIMIT:
            raise ValueError("response exceeds the size limit")
        self._answered.add(key)
        self._send_direct(now, query.address, message)
        self._relay(now, query.relay_factor, query.address, query.source, message)

    def _response(self, ltime: int, qid: int, flags: int, payload: bytes | None) -> bytes:
        body = {"Flags": flags, "From": self.name, "ID": qid, "LTime": ltime, "Payload": payload}
        return _msg(QUERY_RESPONSE, body)

    def _send_direct(self, now: float, to: tuple[str, int], message: bytes) -> None:
        if to == (self.memberlist.me.address if self.memberlist is not None else None):
            self.notify_msg(now, message)
        elif self.memberlist is not None:
            self.memberlist.queue_user(to, message)

    def _relay(
        self, now: float, factor: int, to: tuple[str, int], name: str, message: bytes
    ) -> None:
        """
        Also send a query response through ``factor`` random alive members
        (serf's relayResponse): only in a pool of more than ``factor`` members,
        only through members that speak memberlist protocol 5, never through us.
        """
        if factor == 0 or len(self.members) < factor + 1 or self.memberlist is None:
            return
        header = {"DestAddr": {"IP": ip_bytes(to[0]), "Port": to[1], "Zone": ""}, "DestName": name}
        wrapped = bytes([RELAY]) + wire.pack(header) + message
        if len(wrapped) > QUERY_RESPONSE_SIZE_LIMIT:
            return  # serf gives up on the relay too; the direct answer went out
        nodes = self.memberlist.nodes
        relays = sorted(
            m.name
            for m in self.members.values()
            if m.status == MemberStatus.ALIVE
            and m.name != self.name
            and m.name in nodes
            and nodes[m.name].pmax >= 5
        )
        for relay in self.rng.sample(relays, min(factor, len(relays))):
            self.relays_sent += 1
            self._send_direct(now, self.members[relay].address, wrapped)

    def _on_relay(self, now: float, payload: bytes) -> None:
        """Forward a relayed query response to the member it is for."""
        header, end = wire.unpack_one(payload, 1)
        dest = header.get(b"DestAddr") if isinstance(header, dict) else None
        if not isinstance(dest, dict):
            raise MalformedPacket("relay without DestAddr")
        ip, port = dest.get(b"IP"), dest.get(b"Port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or not 0 < port < 65536:
            raise MalformedPacket("relay with a bad DestAddr")
        inner = payload[end:]
        if inner[:1] != bytes([QUERY_RESPONSE]):
            raise MalformedPacket("serf relays query responses only")
        self.relays_forwarded += 1
        self._send_direct(now, (ip_text(ip), port), inner)

    def _on_query(self, now: float, payload: bytes) -> None:
        body = self._body(payload[1:])
        ltime = _u64(body, b"LTime")
        qid = _u64(body, b"ID")
        self.query_clock.witness(ltime)
        if ltime < self.query_min_time:
            return
        current = self.query_clock.time()
        if current > QUERY_BUFFER and ltime < current - QUERY_BUFFER:
            return
        seen = self._seen_queries.setdefault(ltime, set())
        if qid in seen:
            return
        seen.add(qid)
        for old in [t for t in self._seen_queries if t < current - QUERY_BUFFER]:
            del self._seen_queries[old]
        flags = _u64(body, b"Flags")
        if not flags & QUERY_FLAG_NO_BROADCAST:
            self._broadcast(payload)
        if not self._filters_match(body.get(b"Filters")):
            return
        addr = body.get(b"Addr")
        port = _u64(body, b"Port")
        if not isinstance(addr, bytes) or not 0 < port < 65536:
            raise MalformedPacket("query without a return address")
        address = (ip_text(addr), port)
        name = _text(body, b"Name")
        source = _text(body, b"SourceNode")
        relay_factor = _u64(body, b"RelayFactor")
        if relay_factor > MAX_RELAY_FACTOR:
            raise MalformedPacket("RelayFactor is not a u8")
        data = body.get(b"Payload") or b""
        if not isinstance(data, bytes):
            raise MalformedPacket("Payload is not bytes")
        if flags & QUERY_FLAG_ACK:
            ack = self._response(ltime, qid, QUERY_FLAG_ACK, None)
            self._send_direct(now, address, ack)
            self._relay(now, relay_factor, address, source, ack)
        timeout = _u64(body, b"Timeout") / 1e9
        query = Query(ltime, qid, name, data, source, address, now + timeout, relay_factor)
        if name.startswith(INTERNAL_QUERY_PREFIX):
            self._internal_query(now, query)
            return
        self.queries.append(query)

    def _internal_query(self, now: float, query: Query) -> None:
        """Answer serf's own queries: the key queries; ``_serf_ping`` needs only the ack."""
        op = next((op for op, name in KEY_QUERIES.items() if name == query.name), None)
        if op is None:
            return
        ltime, qid = query.ltime, query.id
        result, message = self._key_operation(op, query.payload)
        keys: list[str] | None = None
        primary = ""
        if op == "list" and self.keyring is not None:
            keys = [encode_key(k) for k in self.keyring.keys]
            primary = encode_key(self.keyring.keys[0])
        total = len(keys or [])
        shown = min(total, QUERY_RESPONSE_SIZE_LIMIT // MIN_ENCODED_KEY_LENGTH)
        while True:
            if keys is not None and shown < total:
                keys = keys[:shown]
                message = f"truncated key list response, showing first {shown} of {total} keys"
            body = {"Keys": keys, "Message": message, "PrimaryKey": primary, "Result": result}
            response = self._response(ltime, qid, 0, bytes([KEY_RESPONSE]) + wire.pack(body))
            if len(response) <= QUERY_RESPONSE_SIZE_LIMIT or not keys:
                break
            shown = len(keys) - 1
        self._answered.add((ltime, qid))
        self._send_direct(now, query.address, response)
        self._relay(now, query.relay_factor, query.address, query.source, response)

    def _key_operation(self, op: str, data: bytes) -> tuple[bool, str]:
        """Change (or read) our keyring as a key query asks; :return: result and message."""
        keyring = self.keyring
        if op == "list":
            if keyring is None:
                return False, "Keyring is empty (encryption not enabled)"
            return True, ""
        try:
            request, _ = wire.unpack_one(data, 1)
            key = request.get(b"Key") if isinstance(request, dict) else None
            if not isinstance(key, bytes):
                raise MalformedPacket("no Key")
        except MalformedPacket:
            return False, "Failed to decode key request"
        if keyring is None:
            return False, "No keyring to modify (encryption not enabled)"
        try:
            getattr(keyring, op)(key)
        except KeyringError as e:
            return False, str(e)
        if self.save_keyring is not None:
            try:
                self.save_keyring(keyring)
            except OSError as e:
                return False, f"Failed to write keyring file: {e.strerror or e}"
        return True, ""

    def _filters_match(self, filters: Any) -> bool:
        if filters is None:
            return True
        if not isinstance(filters, list):
            raise MalformedPacket("Filters is not a list")
        for raw in filters:
            if not isinstance(raw, bytes) or not raw:
                raise MalformedPacket("a filter is not bytes")
            value, _ = wire.unpack_one(raw, 1)
            if raw[0] == FILTER_NODE:
                if not isinstance(value, list):
                    raise MalformedPacket("node filter is not a list")
                if self.name.encode() not in value:
                    return False
            elif raw[0] == FILTER_TAG:
                if not isinstance(value, dict):
                    raise MalformedPacket("tag filter is not a map")
                tag, expr = _text(value, b"Tag"), _text(value, b"Expr")
                try:
                    if re.search(expr, self.tags.get(tag, "")) is None:
                        return False
                except re.error:
                    return False
            else:
                return False
        return True

    def _on_query_response(self, now: float, payload: bytes) -> None:
        body = self._body(payload[1:])
        handle = self._queries.get((_u64(body, b"LTime"), _u64(body, b"ID")))
        if handle is None or not handle.open(now):
            return
        sender = _text(body, b"From")
        if _u64(body, b"Flags") & QUERY_FLAG_ACK:
            if sender in handle.acks:
                handle.duplicates += 1
                return
            handle.acks.add(sender)
            handle._changed()
            return
        data = body.get(b"Payload") or b""
        if not isinstance(data, bytes):
            raise MalformedPacket("Payload is not bytes")
        if sender in handle.responses:
            handle.duplicates += 1
            return
        handle.responses[sender] = data
        handle._changed()

    def drain_queries(self) -> list[Query]:
        queries, self.queries = self.queries, []
        return queries

    def drain_events(self) -> list[MemberEvent | UserEvent]:
        events, self.events = self.events, []
        return events

    def _broadcast(self, message: bytes) -> None:
        self.broadcasts.queue(message, len(message))

    # --- memberlist delegate -------------------------------------------------------

    def node_meta(self, limit: int) -> bytes:
        meta = encode_tags(self.tags)
        if len(meta) > limit:
            raise ValueError("encoded tags exceed the meta limit")
        return meta

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self.broadcasts.get(overhead, limit, max(len(self.members), 1))

    def has_broadcasts(self) -> bool:
        return bool(self.broadcasts)

    def notify_msg(self, now: float, payload: bytes) -> None:
        if not payload:
            return
        try:
            if payload[0] == USER_EVENT:
                self._on_user_event(payload[1:], rebroadcast=True)
            elif payload[0] in (JOIN, LEAVE):
                self._on_intent(now, payload)
            elif payload[0] == QUERY:
                self._on_query(now, payload)
            elif payload[0] == QUERY_RESPONSE:
                self._on_query_response(now, payload)
            elif payload[0] == RELAY:
                self._on_relay(now, payload)
            else:
                raise MalformedPacket(f"unknown serf message type {payload[0]}")
        except MalformedPacket as e:
            self._drop("serf message", e)

    def _drop(self, what: str, why: Exception) -> None:
        """Bad input from a member: counted in ``dropped`` and logged at debug level."""
        self.dropped += 1
        self.log.debug("dropped {what}: {why}", what=what, why=str(why))

    def _body(self, data: bytes) -> Mapping[bytes, Any]:
        body, _ = wire.unpack_one(data)
        if not isinstance(body, dict):
            raise MalformedPacket("serf message is not a map")
        return body

    def _on_intent(self, now: float, payload: bytes) -> None:
        kind = payload[0]
        body = self._body(payload[1:])
        ltime = _u64(body, b"LTime")
        node = _text(body, b"Node")
        prune = kind == LEAVE and body.get(b"Prune") is True
        self.clock.witness(ltime)
        if self._apply_intent(kind, node, ltime, prune, now):
            self._broadcast(payload)

    def _apply_intent(
        self, kind: int, node: str, ltime: int, prune: bool = False, now: float = 0.0
    ) -> bool:
        """
        serf's handling of a join or leave intent newer than the member's; a
        pruning leave then erases the member (a leaving one after the time its
        own leave takes to spread). :return: whether to gossip it on.
        """
        member = self.members.get(node)
        if member is None:
            known = self._intents.get(node)
            if known is None or ltime > known[1]:
                self._intents[node] = (kind, ltime)
                return True
            return False
        if ltime <= member.status_ltime:
            return False
        member.status_ltime = ltime
        if kind == JOIN:
            if member.status == MemberStatus.LEAVING:
                member.status = MemberStatus.ALIVE
            return True
        if node == self.name and member.status == MemberStatus.ALIVE:
            self.join_intent()  # refute a stale leave about ourselves
            return False
        if member.status == MemberStatus.ALIVE:
            member.status = MemberStatus.LEAVING
        elif member.status == MemberStatus.FAILED:
            member.status = MemberStatus.LEFT
            self.events.append(MemberEvent("member-leave", node))
        if prune and node != self.name:
            if member.status == MemberStatus.LEAVING:
                cfg = self.config
                delay = cfg.broadcast_timeout + cfg.leave_propagate_delay
                self._prunes.setdefault(node, now + delay)
            else:
                self._erase(node)
        return True

    def _on_user_event(self, data: bytes, rebroadcast: bool) -> None:
        body = self._body(data)
        ltime = _u64(body, b"LTime")
        name = _text(body, b"Name")
        payload = body.get(b"Payload") or b""
        if not isinstance(payload, bytes):
            raise MalformedPacket("Payload is not bytes")
        self.event_clock.witness(ltime)
        if ltime < self.event_min_time:
            return
        current = self.event_clock.time()
        if current > EVENT_BUFFER and ltime < current - EVENT_BUFFER:
            return
        slot = self._seen_events.setdefault(ltime, set())
        if (name, payload) in slot:
            return
        slot.add((name, payload))
        for old in [t for t in self._seen_events if t < current - EVENT_BUFFER]:
            del self._seen_events[old]
        self.events.append(UserEvent(ltime, name, payload, bool(body.get(b"CC"))))
        if rebroadcast:
            self._broadcast(bytes([USER_EVENT]) + data)

    def local_state(self, join: bool) -> bytes:
        status = {m.name: m.status_ltime for m in self.members.values()}
        left = [m.name for m in self.members.values() if m.status == MemberStatus.LEFT]
        events = []
        for ltime in sorted(self._seen_events)[-EVENT_BUFFER:]:
            entries = [{"Name": n, "Payload": p} for n, p in sorted(self._seen_events[ltime])]
            events.append({"Events": entries, "LTime": ltime})
        body = {
            "EventLTime": self.event_clock.time(),
            "Events": events,
            "LTime": self.clock.time(),
            "LeftMembers": left,
            "QueryLTime": self.query_clock.time(),
            "StatusLTimes": status,
        }
        return _msg(PUSH_PULL, body)

    def merge_remote_state(self, now: float, data: bytes, join: bool) -> None:
        if not data:
            return  # a member without serf state (a bare memberlist)
        try:
            if data[0] != PUSH_PULL:
                raise MalformedPacket(f"serf state of type {data[0]}")
            body = self._body(data[1:])
            for clock, key in (
                (self.clock, b"LTime"),
                (self.event_clock, b"EventLTime"),
                (self.query_clock, b"QueryLTime"),
            ):
                value = _u64(body, key)
                if value > 0:
                    clock.witness(value - 1)
            statuses = body.get(b"StatusLTimes") or {}
            left = {n for n in _list(body, b"LeftMembers") if isinstance(n, bytes)}
            if not isinstance(statuses, dict):
                raise MalformedPacket("StatusLTimes is not a map")
            for raw_name, ltime in statuses.items():
                if not isinstance(ltime, int) or not isinstance(raw_name, bytes):
                    continue
                name = raw_name.decode("utf-8", "replace")
                if raw_name in left:
                    self._apply_intent(LEAVE, name, ltime + 1)
                else:
                    self._apply_intent(JOIN, name, ltime)
            for entry in _list(body, b"Events"):
                if not isinstance(entry, dict):
                    continue
                ltime = entry.get(b"LTime")
                for event in _list(entry, b"Events"):
                    if isinstance(event, dict) and isinstance(ltime, int):
                        inner = {
                            "LTime": ltime,
                            "Name": event.get(b"Name") or b"",
                            "Payload": event.get(b"Payload") or b"",
                        }
                        self._on_user_event(wire.pack(inner), rebroadcast=False)
        except MalformedPacket as e:
            self._drop("serf push/pull state", e)

    def notify_join(self, now: float, node: Node) -> None:
        member = self.members.get(node.name)
        status = MemberStatus.ALIVE
        ltime = 0
        intent = self._intents.pop(node.name, None)
        if intent is not None:
            ltime = intent[1]
            if intent[0] == LEAVE:
                status = MemberStatus.LEAVING
        if member is None:
            member = Member(node.name, node.address, decode_tags(node.meta), status, ltime)
            self.members[node.name] = member
        else:
            member.status = status
            member.address = node.address
            member.tags = decode_tags(node.meta)
            member.status_ltime = max(member.status_ltime, ltime)
        if self.snapshot is not None and node.name != self.name:
            self.snapshot.alive(node.name, node.address)
        self.events.append(MemberEvent("member-join", node.name))

    def notify_leave(self, now: float, node: Node) -> None:
        member = self.members.get(node.name)
        if member is None:
            return
        member.leave_time = now
        if self.snapshot is not None and node.name != self.name:
            self.snapshot.not_alive(node.name)
        if member.status == MemberStatus.LEAVING or node.state == MemberState.LEFT:
            member.status = MemberStatus.LEFT
            self.events.append(MemberEvent("member-leave", node.name))
        else:
            member.status = MemberStatus.FAILED
            self.events.append(MemberEvent("member-failed", node.name))

    def notify_merge(self, nodes: Sequence[PushNodeState]) -> str | None:
        if self.merge is None:
            return None
        return self.merge([(n.name, decode_tags(n.meta)) for n in nodes])

    def notify_alive(self, alive: Alive) -> str | None:
        if self.merge is None:
            return None
        return self.merge([(alive.node, decode_tags(alive.meta))])

    def ack_payload(self) -> bytes | None:
        """What serf puts in direct acks: ping payload version 1 and a coordinate.

        txconsul keeps no Vivaldi coordinate yet, so it sends the one a fresh
        serf node sends (spec 9.10); serf peers treat us as a new node.
        """
        return FRESH_COORDINATE

    def notify_update(self, now: float, node: Node) -> None:
        member = self.members.get(node.name)
        if member is not None:
            member.tags = decode_tags(node.meta)
            self.events.append(MemberEvent("member-update", node.name))
