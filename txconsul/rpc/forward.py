# -*- test-case-name: txconsul.test.rpc.test_forward -*-
"""
Where a request goes when this agent cannot answer it, and when to give up.

A client agent sends every request to a server of its datacenter (it sticks
to one while it works and picks another when it fails); a follower server
sends writes to the leader (or to the server a ``NotLeader`` answer named); a
request for another datacenter goes to one of that datacenter's servers. A
failure that left the request unsent (``RPCConnectError``) or unserved
(``NoLeader``, ``NotLeader``) is retried after a backoff with jitter from the
injected ``random.Random``; a call that may have been applied (``RPCTimeout``,
``RPCConnectionLost``, and Raft's ``LeadershipLost``: the leader stepped down
with the write in its log) is retried only when the caller says it is idempotent;
any other error is the answer. Past the deadline the forwarder gives up with
``NoLeader`` ("No cluster leader"), ``NoServers`` ("No known Consul
servers"), ``NoPathToDatacenter`` ("No path to datacenter") or the last error.

The class does no I/O of its own: it takes ``call(address, method, body)``
(``RPCClient.call`` with a timeout bound in) and an ``IReactorTime``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.errors import NoLeader, TxConsulError
from txconsul.raft.core import NotLeader
from txconsul.raft.node import LeadershipLost
from txconsul.rpc.errors import (
    NoPathToDatacenter,
    NoServers,
    RPCConnectError,
    RPCConnectionLost,
    RPCTimeout,
)

#: ``call(address, method, body)``: one RPC to one server
Call = Callable[[str, str, Any], "Deferred[Any]"]

#: how long a request may wait for a leader or a path (Consul's RPC hold timeout)
DEFAULT_DEADLINE = 7.0


@attrs.frozen
class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half drawn."""

    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        step: float = min(self.cap, self.base * 2.0 ** min(attempt, 32))
        return step / 2 + rng.uniform(0.0, step / 2)


class Forwarder:
    """
    :param datacenter: this agent's datacenter.
    :param servers: the known servers (``ip:port`` of their RPC ports) of a
        datacenter: the LAN pool's for ours, the WAN pool's for others.
    :param leader: on a server, the current leader's address (``""`` while
        there is none); ``None`` on a client agent, which never looks for the
        leader itself.
    """

    log = Logger()

    def __init__(
        self,
        call: Call,
        clock: IReactorTime,
        rng: random.Random,
        datacenter: str,
        servers: Callable[[str], Sequence[str]],
        leader: Callable[[], str] | None = None,
        deadline: float = DEFAULT_DEADLINE,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._call = call
        self._clock = clock
        self._rng = rng
        self.datacenter = datacenter
        self._servers = servers
        self._leader = leader
        self.deadline = deadline
        self.backoff = backoff
        self.preferred: str | None = None

    def forward(
        self, method: str, body: Any, dc: str | None = None, idempotent: bool = False
    ) -> Deferred[Any]:
        """Send ``method`` where it can be served; the Deferred fires with the response body."""
        return _Attempt(self, method, body, dc or self.datacenter, idempotent).start()

    def target(self, dc: str, hint: str, failed: set[str]) -> str | None:
        """The next server to try, or ``None`` when there is none yet."""
        if dc == self.datacenter and self._leader is not None:
            return hint or self._leader() or None
        if hint:
            return hint
        candidates = list(self._servers(dc))
        fresh = [c for c in candidates if c not in failed]
        if not fresh:
            failed.clear()
            fresh = candidates
        if not fresh:
            return None
        if dc != self.datacenter:
            return self._rng.choice(fresh)
        if self.preferred not in fresh:
            self.preferred = self._rng.choice(fresh)
        return self.preferred

    def nowhere(self, dc: str) -> TxConsulError:
        """The error for "no server to send it to" in ``dc``."""
        if dc != self.datacenter:
            return NoPathToDatacenter("No path to datacenter")
        if self._leader is not None:
            return NoLeader("No cluster leader")
        return NoServers("No known Consul servers")


class _Attempt:
    """One forwarded request, from its first try to its answer or its deadline."""

    def __init__(
        self, forwarder: Forwarder, method: str, body: Any, dc: str, idempotent: bool
    ) -> None:
        self.f = forwarder
        self.method = method
        self.body = body
        self.dc = dc
        self.idempotent = idempotent
        self.clock = forwarder._clock
        self.give_up_at = self.clock.seconds() + forwarder.deadline
        self.tries = 0
        self.waits = 0
        self.hint = ""
        self.hints_followed: set[str] = set()
        self.failed: set[str] = set()
        self.last_error: TxConsulError | None = None
        self.timer: IDelayedCall | None = None
        self.call: Deferred[Any] | None = None
        self.result: Deferred[Any] = Deferred(canceller=self._cancel)

    def start(self) -> Deferred[Any]:
        self._try()
        return self.result

    def _cancel(self, d: Deferred[Any]) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        call, self.call = self.call, None
        if call is not None:
            call.cancel()

    def _try(self) -> None:
        self.timer = None
        hint, self.hint = self.hint, ""
        target = self.f.target(self.dc, hint, self.failed)
        if target is None:
            self.last_error = self.f.nowhere(self.dc)
            self._retry()
            return
        self.tries += 1
        call = self.f._call(target, self.method, self.body)
        self.call = call
        call.addCallbacks(self._answered, self._failed, errbackArgs=(target,))

    def _answered(self, body: Any) -> None:
        self.call = None
        if not self.result.called:
            self.result.callback(body)

    def _failed(self, failure: Failure, target: str) -> None:
        self.call = None
        if self.result.called:
            return
        error = failure.value
        if failure.check(CancelledError) or not isinstance(error, TxConsulError):
            self.result.errback(failure)
            return
        self.f.log.debug(
            "forwarding {method} to {target} failed: {error}",
            method=self.method,
            target=target,
            error=error,
        )
        if isinstance(error, NotLeader):
            if error.leader and error.leader not in self.hints_followed:
                # go straight to the server it named, once per name
                self.hints_followed.add(error.leader)
                self.hint = error.leader
                self.last_error = NoLeader("No cluster leader")
                self._try()
                return
            self.last_error = NoLeader("No cluster leader")
        elif isinstance(error, LeadershipLost) and not self.idempotent:
            self.result.errback(failure)  # it may have committed: never apply it twice
            return
        elif isinstance(error, NoLeader):
            self.last_error = error
        elif isinstance(error, RPCConnectError) or (
            self.idempotent and isinstance(error, (RPCTimeout, RPCConnectionLost))
        ):
            self.failed.add(target)
            if self.f.preferred == target:
                self.f.preferred = None
            self.last_error = error
        else:
            self.result.errback(failure)
            return
        self._retry()

    def _retry(self) -> None:
        now = self.clock.seconds()
        if now >= self.give_up_at:
            self.result.errback(self._give_up())
            return
        # the last wait is cut short so that one try happens at the deadline itself
        delay = min(self.f.backoff.delay(self.waits, self.f._rng), self.give_up_at - now)
        self.waits += 1
        self.timer = self.clock.callLater(delay, self._try)

    def _give_up(self) -> TxConsulError:
        error = self.last_error
        if error is None or (self.dc != self.f.datacenter and isinstance(error, RPCConnectError)):
            return self.f.nowhere(self.dc)
        return error
