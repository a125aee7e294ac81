# -*- test-case-name: txconsul.test.state.test_watch -*-
"""
Watches that blocking queries wait on.

A query names the channels its answer depends on (``kv:<key>``, ``kvp:<prefix>``,
``nodes``, ...); a write notifies the channels it touched, and every Deferred
waiting on one of them fires once. A waiter that is cancelled (the client went
away, or its wait ran out) is forgotten at once, so no watch outlives its query.
"""

from collections.abc import Iterable

from twisted.internet.defer import Deferred


class Watches:
    """Deferreds waiting for the next change on any of a set of channels."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[Deferred[None]]] = {}
        self._channels: dict[Deferred[None], tuple[str, ...]] = {}
        self.kv_prefix_waiters = 0

    def __len__(self) -> int:
        return len(self._channels)

    def wait(self, channels: Iterable[str]) -> Deferred[None]:
        """A Deferred that fires with None on the next notify of any channel."""
        names = tuple(channels)
        d: Deferred[None] = Deferred(canceller=self._forget)
        self._channels[d] = names
        for name in names:
            self._waiters.setdefault(name, set()).add(d)
            if name.startswith("kvp:"):
                self.kv_prefix_waiters += 1
        return d

    def _forget(self, d: Deferred[None]) -> None:
        names = self._channels.pop(d, ())
        for name in names:
            waiting = self._waiters.get(name)
            if waiting is not None:
                waiting.discard(d)
                if not waiting:
                    del self._waiters[name]
            if name.startswith("kvp:"):
                self.kv_prefix_waiters -= 1

    def notify(self, channel: str) -> None:
        """Fire every waiter on ``channel``."""
        waiting = self._waiters.get(channel)
        if not waiting:
            return
        for d in list(waiting):
            self._forget(d)
            d.callback(None)

    def notify_kv(self, key: str) -> None:
        """A KV key changed: wake its exact watchers and those of every prefix of it."""
        if not self._waiters:
            return
        self.notify("kv:" + key)
        if self.kv_prefix_waiters:
            for i in range(len(key) + 1):
                self.notify("kvp:" + key[:i])

    def notify_all(self) -> None:
        """Wake everyone (a snapshot was restored)."""
        for d in list(self._channels):
            self._forget(d)
            d.callback(None)
