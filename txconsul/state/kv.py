# -*- test-case-name: txconsul.test.state.test_kv -*-
"""
The KV table: entries sorted by key, tombstones for deleted keys.

Every mutation takes the index of the log entry that makes it, so that
``CreateIndex``/``ModifyIndex`` are the same on every server. A journal can be
opened around a group of mutations (a transaction) and rolled back whole.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

from sortedcontainers import SortedDict


class KVEntry:
    """One key, as Consul's DirEntry."""

    __slots__ = ("create_index", "flags", "key", "lock_index", "modify_index", "session", "value")

    def __init__(
        self,
        key: str,
        value: bytes | None,
        flags: int,
        session: str | None,
        lock_index: int,
        create_index: int,
        modify_index: int,
    ) -> None:
        self.key = key
        self.value = value
        self.flags = flags
        self.session = session
        self.lock_index = lock_index
        self.create_index = create_index
        self.modify_index = modify_index

    def copy(self) -> KVEntry:
        return KVEntry(
            self.key,
            self.value,
            self.flags,
            self.session,
            self.lock_index,
            self.create_index,
            self.modify_index,
        )

    def to_api(self, with_value: bool = True) -> dict[str, Any]:
        """The entry as Consul's DirEntry JSON object."""
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": (
                base64.b64encode(self.value).decode("ascii") if with_value and self.value else None
            ),
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out

    def to_wire(self) -> list[Any]:
        return [
            self.key,
            self.value,
            self.flags,
            self.session,
            self.lock_index,
            self.create_index,
            self.modify_index,
        ]

    @classmethod
    def from_wire(cls, row: list[Any]) -> KVEntry:
        return cls(*row)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KVEntry) and self.to_wire() == other.to_wire()

    def __repr__(self) -> str:
        return f"KVEntry({', '.join(repr(v) for v in self.to_wire())})"


_MISSING = object()


class KVTable:
    """Entries and tombstones, with the highest index of each."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.entries: SortedDict = SortedDict()
        self.tombstones: SortedDict = SortedDict()
        self.index = 0
        self.tombstone_index = 0
        self._notify = notify
        self._journal: list[tuple[str, object, object]] | None = None
        self._journal_indexes: tuple[int, int] = (0, 0)
        self._touched: list[str] = []

    # -- transactions -------------------------------------------------------

    def begin(self) -> None:
        """Record every change from now on so that ``rollback`` can undo them."""
        self._journal = []
        self._journal_indexes = (self.index, self.tombstone_index)
        self._touched = []

    def commit(self) -> None:
        self._journal = None
        touched, self._touched = self._touched, []
        for key in touched:
            self._notify(key)

    def rollback(self) -> None:
        journal, self._journal = self._journal or [], None
        for key, entry, tomb in reversed(journal):
            if entry is _MISSING:
                self.entries.pop(key, None)
            else:
                self.entries[key] = entry
            if tomb is _MISSING:
                self.tombstones.pop(key, None)
            else:
                self.tombstones[key] = tomb
        self.index, self.tombstone_index = self._journal_indexes
        self._touched = []

    def _record(self, key: str) -> None:
        if self._journal is not None:
            self._journal.append(
                (key, self.entries.get(key, _MISSING), self.tombstones.get(key, _MISSING))
            )
            self._touched.append(key)

    def _changed(self, key: str) -> None:
        if self._journal is None:
            self._notify(key)

    # -- reads --------------------------------------------------------------

    def get(self, key: str) -> KVEntry | None:
        entry: KVEntry | None = self.entries.get(key)
        return entry

    def under(self, prefix: str) -> list[KVEntry]:
        return [self.entries[k] for k in self._keys_under(prefix)]

    def _keys_under(self, prefix: str) -> Iterator[str]:
        if not prefix:
            return iter(self.entries.keys())
        keys: Iterator[str] = self.entries.irange(minimum=prefix, maximum=prefix + "\U0010ffff")
        return keys

    def keys(self, prefix: str, separator: str | None) -> list[str]:
        out: list[str] = []
        last = None
        for key in self._keys_under(prefix):
            if not key.startswith(prefix):
                continue
            if separator:
                cut = key.find(separator, len(prefix))
                if cut != -1:
                    key = key[: cut + len(separator)]
            if key != last:
                out.append(key)
                last = key
        return out

    def key_index(self, key: str) -> int:
        """The index a blocking query on one key compares against."""
        entry = self.entries.get(key)
        if entry is not None:
            return int(entry.modify_index)
        return max(self.index, self.tombstone_index, 1)

    def prefix_index(self, prefix: str) -> int:
        """The highest ModifyIndex under ``prefix``, tombstones included."""
        best = 0
        for key in self._keys_under(prefix):
            mi = self.entries[key].modify_index
            best = max(best, mi)
        if prefix:
            tombs = self.tombstones.irange(minimum=prefix, maximum=prefix + "\U0010ffff")
        else:
            tombs = iter(self.tombstones.keys())
        for key in tombs:
            ti = self.tombstones[key]
            best = max(best, ti)
        if best == 0:
            best = max(self.index, self.tombstone_index)
        return max(best, 1)

    # -- writes -------------------------------------------------------------

    def set(self, index: int, key: str, value: bytes | None, flags: int) -> KVEntry:
        self._record(key)
        old: KVEntry | None = self.entries.get(key)
        if old is None:
            entry = KVEntry(key, value, flags, None, 0, index, index)
        else:
            entry = KVEntry(key, value, flags, old.session, old.lock_index, old.create_index, index)
        self.entries[key] = entry
        self.tombstones.pop(key, None)
        self.index = index
        self._changed(key)
        return entry

    def cas(self, index: int, key: str, value: bytes | None, flags: int, cas: int) -> bool:
        old = self.entries.get(key)
        if cas == 0:
            if old is not None:
                return False
        elif old is None or old.modify_index != cas:
            return False
        self.set(index, key, value, flags)
        return True

    def lock(self, index: int, key: str, value: bytes | None, flags: int, session: str) -> bool:
        old: KVEntry | None = self.entries.get(key)
        if old is not None and old.session is not None and old.session != session:
            return False
        self._record(key)
        if old is None:
            entry = KVEntry(key, value, flags, session, 1, index, index)
        elif old.session == session:
            entry = KVEntry(key, value, flags, session, old.lock_index, old.create_index, index)
        else:
            entry = KVEntry(key, value, flags, session, old.lock_index + 1, old.create_index, index)
        self.entries[key] = entry
        self.tombstones.pop(key, None)
        self.index = index
        self._changed(key)
        return True

    def unlock(self, index: int, key: str, value: bytes | None, flags: int, session: str) -> bool:
        old: KVEntry | None = self.entries.get(key)
        if old is None or old.session != session:
            return False
        self._record(key)
        self.entries[key] = KVEntry(
            key, value, flags, None, old.lock_index, old.create_index, index
        )
        self.index = index
        self._changed(key)
        return True

    def delete(self, index: int, key: str) -> bool:
        if key not in self.entries:
            return True
        self._record(key)
        del self.entries[key]
        self.tombstones[key] = index
        self.tombstone_index = index
        self.index = index
        self._changed(key)
        return True

    def delete_cas(self, index: int, key: str, cas: int) -> bool:
        old = self.entries.get(key)
        if old is None:
            # As Consul: deleting a key that is already gone succeeds.
            return True
        if old.modify_index != cas:
            return False
        return self.delete(index, key)

    def delete_tree(self, index: int, prefix: str) -> bool:
        for key in list(self._keys_under(prefix)):
            self.delete(index, key)
        return True

    # -- snapshot -----------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "entries": [e.to_wire() for e in self.entries.values()],
            "tombstones": list(self.tombstones.items()),
            "index": self.index,
            "tombstone_index": self.tombstone_index,
        }

    def load(self, data: dict[str, Any]) -> None:
        self.entries = SortedDict((row[0], KVEntry.from_wire(row)) for row in data["entries"])
        self.tombstones = SortedDict((k, i) for k, i in data["tombstones"])
        self.index = data["index"]
        self.tombstone_index = data["tombstone_index"]
