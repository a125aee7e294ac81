# -*- test-case-name: txconsul.test.gossip.test_snapshot -*-
"""
serf's member snapshot (spec section 9.11): an append-only text file in
``data_dir/serf/`` that lets a restarted agent rejoin its pool by itself.

``SnapshotFile`` is what ``Serf(snapshot=...)`` writes to; ``load`` reads a
file back into the members that were alive and the three Lamport clocks.
The agent does, per pool::

    state = snapshot.load(path, rejoin_after_leave)
    serf = Serf(name, tags, snapshot=snapshot.SnapshotFile(path, state, rejoin_after_leave))
    serf.restore(state.clock, state.event_clock, state.query_clock)
    ... start the pool ...
    for address in state.rejoin():  # one at a time, until one answers
        ...

A recorded ``leave`` forgets the members, so an agent that left does not
rejoin by itself; with ``rejoin_after_leave`` the leave is ignored, as serf's
``-rejoin`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

COMPACT_AT = 128 * 1024


@attrs.define
class SnapshotState:
    """What a snapshot file says: alive members, clocks, and whether we left."""

    alive: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    clock: int = 0
    event_clock: int = 0
    query_clock: int = 0
    left: bool = False

    def rejoin(self) -> list[tuple[str, int]]:
        """Addresses to join on start: none after a recorded leave."""
        if self.left:
            return []
        return sorted(set(self.alive.values()))

    def lines(self) -> list[str]:
        out = [f"alive: {name} {host}:{port}" for name, (host, port) in sorted(self.alive.items())]
        out += [
            f"clock: {self.clock}",
            f"event-clock: {self.event_clock}",
            f"query-clock: {self.query_clock}",
        ]
        if self.left:
            out.append("leave")
        return out


def _address(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return (host.strip("[]"), int(port))


def parse(text: str, rejoin_after_leave: bool = False) -> SnapshotState:
    """
    Read snapshot lines; lines that do not parse are skipped, as serf does.
    ``rejoin_after_leave`` ignores ``leave`` lines.
    """
    state = SnapshotState()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if line == "leave":
            if rejoin_after_leave:
                continue
            state.left = True
            state.alive.clear()
        elif key == "alive":
            name, _, addr = value.rpartition(" ")
            address = _address(addr)
            if name and address is not None:
                state.alive[name] = address
                state.left = False
        elif key == "not-alive":
            state.alive.pop(value, None)
        elif key in ("clock", "event-clock", "query-clock") and value.isdigit():
            setattr(state, key.replace("-", "_"), int(value))
    return state


def load(path: str | os.PathLike[str], rejoin_after_leave: bool = False) -> SnapshotState:
    """The state in ``path``; an empty state if there is no file yet."""
    try:
        text = Path(path).read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return SnapshotState()
    return parse(text, rejoin_after_leave)


class SnapshotFile:
    """
    Appends serf's records to ``path`` (creating its directory), and rewrites
    the file from the state in memory once it grows past ``compact_at`` bytes.
    After ``leave`` it records nothing more: what happens while the agent
    leaves must not make it rejoin after a restart.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: SnapshotState | None = None,
        rejoin_after_leave: bool = False,
        compact_at: int = COMPACT_AT,
    ) -> None:
        self.path = Path(path)
        self.rejoin_after_leave = rejoin_after_leave
        self.state = state if state is not None else load(self.path, rejoin_after_leave)
        self.state.left = False  # this run has not left (yet)
        self._leaving = False
        self.compact_at = compact_at
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self.path.stat().st_size

    def _append(self, line: str) -> None:
        if self._file.closed:
            return  # the pool has stopped; a late timer has nothing to record
        self._file.write(line + "\n")
        self._file.flush()
        self._size += len(line) + 1
        if self._size > self.compact_at:
            self.compact()

    def alive(self, name: str, address: tuple[str, int]) -> None:
        if self._leaving or self.state.alive.get(name) == address:
            return
        self.state.alive[name] = address
        self.state.left = False
        self._append(f"alive: {name} {address[0]}:{address[1]}")

    def not_alive(self, name: str) -> None:
        if not self._leaving and self.state.alive.pop(name, None) is not None:
            self._append(f"not-alive: {name}")

    def clocks(self, clock: int, event_clock: int, query_clock: int) -> None:
        state = self.state
        for key, value in (
            ("clock", clock),
            ("event-clock", event_clock),
            ("query-clock", query_clock),
        ):
            attr = key.replace("-", "_")
            if getattr(state, attr) != value:
                setattr(state, attr, value)
                self._append(f"{key}: {value}")

    def leave(self) -> None:
        self._leaving = True
        if not self.rejoin_after_leave:
            self.state.left = True
            self.state.alive.clear()
        self._append("leave")

    def compact(self) -> None:
        """Rewrite the file with only the current state (atomically)."""
        self._file.close()
        tmp = self.path.with_name(self.path.name + ".compact")
        text = "".join(line + "\n" for line in self.state.lines())
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = len(text.encode())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
