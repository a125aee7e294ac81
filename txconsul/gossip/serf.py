# -*- test-case-name: txconsul.test.gossip.test_serf -*-
"""
The serf layer (spec section 9) as a memberlist delegate: tags in node meta,
Lamport clocks, join/leave intents, member status and user events with a
dedup window. Pure like the memberlist core: it is called with the time and
appends what the application should see to ``events``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from txconsul.gossip import wire
from txconsul.gossip.broadcast import BroadcastQueue
from txconsul.gossip.memberlist import Memberlist, Node
from txconsul.gossip.states import MemberState
from txconsul.gossip.wire import MalformedPacket

LEAVE, JOIN, PUSH_PULL, USER_EVENT, QUERY = 0, 1, 2, 3, 4
TAG_MAGIC = 0xFF
EVENT_BUFFER = 512
USER_EVENT_SIZE_LIMIT = 512


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


@attrs.frozen
class MemberEvent:
    """``kind`` is one of member-join, member-leave, member-failed, member-update."""

    kind: str
    name: str


@attrs.frozen
class UserEvent:
    ltime: int
    name: str
    payload: bytes
    coalesce: bool = True


def _msg(kind: int, body: dict[str, Any]) -> bytes:
    return bytes([kind]) + wire.pack(dict(sorted(body.items())))


def _u64(body: Mapping[bytes, Any], key: bytes) -> int:
    value = body.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise MalformedPacket(f"{key.decode()} is not a u64")
    return value


def _text(body: Mapping[bytes, Any], key: bytes) -> str:
    value = body.get(key) or b""
    if not isinstance(value, bytes):
        raise MalformedPacket(f"{key.decode()} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacket(f"{key.decode()} is not UTF-8") from e


def user_event_message(ltime: int, name: str, payload: bytes, coalesce: bool = True) -> bytes:
    """A serf user event as it travels in a memberlist user message."""
    return _msg(USER_EVENT, {"CC": coalesce, "LTime": ltime, "Name": name, "Payload": payload})


class Serf:
    """
    One serf member; give it to ``Memberlist`` as the delegate, then set ``memberlist``.

    :param tags: published in node meta (at most 512 bytes encoded).
    """

    def __init__(self, name: str, tags: Mapping[str, str], retransmit_mult: int = 4) -> None:
        self.name = name
        self.tags = dict(tags)
        self.clock = LamportClock()
        self.event_clock = LamportClock()
        self.query_clock = LamportClock()
        self.members: dict[str, Member] = {}
        self.events: list[MemberEvent | UserEvent] = []
        self.broadcasts: BroadcastQueue[bytes] = BroadcastQueue(retransmit_mult)
        self._seen_events: dict[int, set[tuple[str, bytes]]] = {}
        self._intents: dict[str, tuple[int, int]] = {}  # name -> (kind, ltime)
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

    def notify_msg(self, now: float, payload: bytes) -> None:
        if not payload:
            return
        try:
            if payload[0] == USER_EVENT:
                self._on_user_event(payload[1:], rebroadcast=True)
            elif payload[0] in (JOIN, LEAVE):
                self._on_intent(payload)
            elif payload[0] == QUERY:
                body = self._body(payload[1:])
                self.query_clock.witness(_u64(body, b"LTime"))
        except MalformedPacket:
            return

    def _body(self, data: bytes) -> Mapping[bytes, Any]:
        body, _ = wire.unpack_one(data)
        if not isinstance(body, dict):
            raise MalformedPacket("serf message is not a map")
        return body

    def _on_intent(self, payload: bytes) -> None:
        kind = payload[0]
        body = self._body(payload[1:])
        ltime = _u64(body, b"LTime")
        node = _text(body, b"Node")
        self.clock.witness(ltime)
        if self._apply_intent(kind, node, ltime):
            self._broadcast(payload)

    def _apply_intent(self, kind: int, node: str, ltime: int) -> bool:
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
        return True

    def _on_user_event(self, data: bytes, rebroadcast: bool) -> None:
        body = self._body(data)
        ltime = _u64(body, b"LTime")
        name = _text(body, b"Name")
        payload = body.get(b"Payload") or b""
        if not isinstance(payload, bytes):
            raise MalformedPacket("Payload is not bytes")
        self.event_clock.witness(ltime)
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
        if not data or data[0] != PUSH_PULL:
            return
        try:
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
            left = {n for n in (body.get(b"LeftMembers") or []) if isinstance(n, bytes)}
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
            for entry in body.get(b"Events") or []:
                if not isinstance(entry, dict):
                    continue
                ltime = entry.get(b"LTime")
                for event in entry.get(b"Events") or []:
                    if isinstance(event, dict) and isinstance(ltime, int):
                        inner = {
                            "LTime": ltime,
                            "Name": event.get(b"Name") or b"",
                            "Payload": event.get(b"Payload") or b"",
                        }
                        self._on_user_event(wire.pack(inner), rebroadcast=False)
        except MalformedPacket:
            return

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
        self.events.append(MemberEvent("member-join", node.name))

    def notify_leave(self, now: float, node: Node) -> None:
        member = self.members.get(node.name)
        if member is None:
            return
        if member.status == MemberStatus.LEAVING or node.state == MemberState.LEFT:
            member.status = MemberStatus.LEFT
            self.events.append(MemberEvent("member-leave", node.name))
        else:
            member.status = MemberStatus.FAILED
            self.events.append(MemberEvent("member-failed", node.name))

    def notify_update(self, now: float, node: Node) -> None:
        member = self.members.get(node.name)
        if member is not None:
            member.tags = decode_tags(node.meta)
            self.events.append(MemberEvent("member-update", node.name))
