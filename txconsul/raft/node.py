# -*- test-case-name: txconsul.test.raft.test_node -*-
"""
RaftNode: the Twisted service that drives a ``RaftCore``.

It owns the one timer (armed at the core's next deadline, measured on the
injected monotonic clock; the agent's reactor schedules it on that clock too,
see ``txconsul.clock``), persists before it sends (all ``Persist*`` outputs
of a batch go to the log store, then one ``sync()``, then the sends and the
applies), applies committed commands to the FSM, and implements
``IConsensus``: ``apply(command)`` returns a Deferred that fires with the
FSM's result once the command is committed and applied here.

Commands given to ``apply`` within one reactor turn are proposed together:
one log append, one fsync, one round of AppendEntries. A lone voter over a
volatile store (``--dev``) has neither an fsync nor a round to share, so it
proposes, commits and applies before ``apply`` returns; being its own quorum,
it also elects itself before ``startService`` returns. Such a server runs no
timer at all.

A failed sync halts the node: every waiting Deferred fails, nothing more is
acknowledged or sent, and the other servers elect a new leader.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from txconsul.errors import NoLeader, TxConsulError
from txconsul.interfaces import IConsensus
from txconsul.raft.core import (
    INFINITY,
    Apply,
    NotLeader,
    Output,
    PersistEntries,
    PersistSnapshot,
    PersistState,
    PersistVoters,
    RaftCore,
    ReadFailed,
    ReadReady,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    TakeSnapshot,
    Timing,
)
from txconsul.raft.logstore import ILogStore, StoreFailed
from txconsul.raft.messages import MalformedFrame, Message, from_wire, to_wire
from txconsul.state.fsm import FSM


class LeadershipLost(NoLeader):
    """This server stopped leading before the command committed: its outcome is unknown."""


class IRaftTransport(Interface):
    """Carries encoded Raft messages to other servers (port 8300 in production)."""

    def send(to: str, data: bytes) -> None:
        """Send one message to the server ``to``; losing it is allowed."""


#: how ``/v1/agent/self`` names each role, as hashicorp/raft's ``RaftState`` prints it
_STATE_NAMES = {
    Role.FOLLOWER: "Follower",
    Role.PRECANDIDATE: "Candidate",  # a pre-vote round is a candidate state to an operator
    Role.CANDIDATE: "Candidate",
    Role.LEADER: "Leader",
}


@implementer(IConsensus)
class RaftNode(Service):
    """
    :param me: this server's RPC address (``ip:port``), its identity in the configuration.
    :param voters: the configuration of a new cluster (ignored when the store holds one).
    :param monotonic: the clock for every Raft duration (``time.monotonic`` in production).
    """

    log = Logger()

    def __init__(
        self,
        me: str,
        voters: list[str],
        fsm: FSM,
        store: ILogStore,
        transport: IRaftTransport,
        reactor: IReactorTime,
        monotonic: Callable[[], float],
        rng: random.Random,
        timing: Timing = Timing(),
    ) -> None:
        self.me = me
        self._voters = voters
        self._fsm = fsm
        self._store = store
        self._volatile = bool(store.volatile)
        # one Packer for every command: msgpack.packb builds a new one per call
        self._packer = msgpack.Packer(use_bin_type=True)
        self._transport = transport
        self._reactor = reactor
        self._monotonic = monotonic
        self._rng = rng
        self._timing = timing
        self.core: RaftCore | None = None
        self._timer: IDelayedCall | None = None
        self._timer_at = INFINITY
        self._queued: list[tuple[bytes, Deferred[Any]]] = []
        self._flush_call: IDelayedCall | None = None
        self._waiting: dict[int, tuple[int, Deferred[Any]]] = {}
        self._reads: dict[int, Deferred[int]] = {}
        self._leader_waiters: list[Deferred[None]] = []
        self.halted = False
        #: why the node halted (a failed sync, or a store it could not load)
        self.halt_error: Exception | None = None
        self.dropped = 0

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        try:
            restored = self._store.load()
            if restored.snapshot is not None:
                self._fsm.store.restore(restored.snapshot.data)
        except Exception as e:
            # a corrupt snapshot or stable record: this server takes no part
            # rather than serve or replicate state it cannot trust
            super().startService()
            self.log.critical(
                "raft cannot start, refusing to take part in the cluster: {error}", error=e
            )
            self.halted = True
            self.halt_error = e
            return
        self.core = RaftCore(
            self.me, self._voters, self._monotonic(), self._rng, self._timing, restored
        )
        super().startService()
        if self.core.next_deadline() <= self._monotonic():
            self._tick()  # a lone voter's election is due at once
        else:
            self._drain()  # a new cluster's voters are durable before anything else; arms the timer

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in (self._timer, self._flush_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._flush_call = None
        self._timer_at = INFINITY
        self._fail_all(LeadershipLost("the server is stopping"))
        self._store.close()
        return succeed(None)

    def _halt(self, error: Exception) -> None:
        self.log.critical("raft halted, acknowledging nothing more: {error}", error=error)
        self.halted = True
        self.halt_error = error
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = INFINITY
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        waiting = [d for _, d in self._waiting.values()] + [d for _, d in self._queued]
        waiting += list(self._reads.values())
        waiting += self._leader_waiters
        self._leader_waiters = []
        self._waiting.clear()
        self._queued.clear()
        self._reads.clear()
        for d in waiting:
            d.errback(error)

    # -- inputs -----------------------------------------------------------------------

    def receive(self, src: str, data: bytes) -> None:
        """One encoded message from server ``src``, as the transport got it."""
        try:
            message = from_wire(data)
        except MalformedFrame as e:
            self.dropped += 1
            self.log.warn("dropped a malformed raft message from {src}: {error}", src=src, error=e)
            return
        self.receive_message(src, message)

    def receive_message(self, src: str, message: Message) -> None:
        # A stopped node's store is closed: a message still in flight from a
        # peer is dropped (Raft resends whatever still matters).
        if self.halted or self.core is None or not self.running:
            return
        self.core.receive(self._monotonic(), src, message)
        self._drain()

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = INFINITY
        if self.halted or self.core is None:
            return
        self.core.tick(self._monotonic())
        self._drain()

    def apply(self, command: dict[str, Any]) -> Deferred[Any]:
        """Replicate ``command``; the Deferred fires with the FSM's result once applied here."""
        core = self.core
        if self.halted or core is None or not self.running:
            return fail(NoLeader("raft is not running"))
        if core.role is not Role.LEADER:
            return fail(NotLeader(core.leader))
        d: Deferred[Any] = Deferred()
        packed = self._packer.pack(command)
        if self._flush_call is None and self._batching_gains_nothing(core):
            self._propose(core, [packed], [d])
            return d
        self._queued.append((packed, d))
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _batching_gains_nothing(self, core: RaftCore) -> bool:
        """A lone voter whose store never reaches a disk: no fsync, no round to share."""
        return self._volatile and core.config == (self.me,)

    def _flush(self) -> None:
        self._flush_call = None
        queued, self._queued = self._queued, []
        core = self.core
        if not queued or self.halted or core is None:
            return
        self._propose(core, [c for c, _ in queued], [d for _, d in queued])

    def _propose(self, core: RaftCore, commands: list[bytes], waiters: list[Deferred[Any]]) -> None:
        """One batch: one log append, one sync, one round of AppendEntries."""
        result = core.propose_many(self._monotonic(), commands)
        if isinstance(result, NotLeader):
            for d in waiters:
                d.errback(result)
            return
        term = core.term
        waiting = self._waiting
        for index, d in zip(result, waiters, strict=True):
            waiting[index] = (term, d)
        self._drain()

    def consistent_read(self) -> Deferred[int]:
        """
        Fires (with the read index) once a quorum confirmed this leader and the
        FSM has applied everything committed before the call: then a read of the
        local store is linearizable.
        """
        if self.halted or self.core is None:
            return fail(NoLeader("raft is not running"))
        read_id = self.core.read_index(self._monotonic())
        if isinstance(read_id, NotLeader):
            return fail(read_id)
        d: Deferred[int] = Deferred()
        self._reads[read_id] = d
        self._drain()
        return d

    def when_leader(self) -> Deferred[None]:
        """
        Fires once this server leads with a committed entry of its term (its state
        is then current: the start-up barrier before serving reads). A lone
        ``--dev`` server gets there in its first reactor turn.
        """
        if self.halt_error is not None:
            return fail(self.halt_error)
        if self.core is not None and self.core.leading_with_current_commit():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._leader_waiters.append(d)
        return d

    def transfer_leadership(self, target: str = "") -> bool:
        """Hand leadership over (graceful leave); False if there is nobody to take it."""
        if self.halted or self.core is None:
            return False
        started = self.core.transfer_leadership(self._monotonic(), target)
        self._drain()
        return started

    def change_config(self, voters: list[str]) -> int:
        """Add or remove one voter; the log index of the change (raises NotLeader, ValueError)."""
        if self.halted or self.core is None:
            raise NoLeader("raft is not running")
        result = self.core.change_config(self._monotonic(), voters)
        if isinstance(result, NotLeader):
            raise result
        self._drain()
        return result

    # -- outputs ----------------------------------------------------------------------

    def _drain(self) -> None:
        core = self.core
        assert core is not None
        store = self._store
        dirty = False
        try:
            while core.outbox:
                for out in core.take_outputs():
                    if isinstance(out, PersistEntries):
                        store.store_entries(out.first_index, out.entries)
                        dirty = True
                    elif isinstance(out, PersistState):
                        store.set_state(out.term, out.vote)
                        dirty = True
                    elif isinstance(out, PersistVoters):
                        store.set_voters(out.voters)
                        dirty = True
                    elif isinstance(out, PersistSnapshot):
                        store.store_snapshot(out.snapshot, out.base_index, out.base_term)
                        dirty = True
                    else:
                        if dirty:
                            store.sync()  # durable before anything leaves or is acknowledged
                            dirty = False
                        if isinstance(out, Apply):  # every write: checked first
                            self._apply(out)
                        else:
                            self._effect(core, out)
            if dirty:
                store.sync()
        except StoreFailed as e:
            self._halt(e)
            return
        if self._leader_waiters and core.leading_with_current_commit():
            waiters, self._leader_waiters = self._leader_waiters, []
            for d in waiters:
                d.callback(None)
        self._arm()

    def _effect(self, core: RaftCore, out: Output) -> None:
        if isinstance(out, Send):
            self._transport.send(out.to, to_wire(out.message))
        elif isinstance(out, TakeSnapshot):
            core.snapshot_taken(self._monotonic(), out.index, self._fsm.store.snapshot())
        elif isinstance(out, RestoreSnapshot):
            self._fsm.store.restore(out.snapshot.data)
            self.log.info(
                "raft: installed the leader's snapshot at index {index} (term {term})",
                index=out.snapshot.index,
                term=out.snapshot.term,
                server=self.me,
            )
        elif isinstance(out, ReadReady):
            d = self._reads.pop(out.read_id, None)
            if d is not None:
                d.callback(out.index)
        elif isinstance(out, ReadFailed):
            d = self._reads.pop(out.read_id, None)
            if d is not None:
                d.errback(NotLeader(out.leader))
        elif isinstance(out, RoleChanged):
            self.log.info(
                "raft: {role} in term {term}, leader {leader}",
                role=out.role.value,
                term=out.term,
                leader=out.leader or "unknown",
                server=self.me,
            )
            if out.role is not Role.LEADER and self._waiting:
                waiting, self._waiting = self._waiting, {}
                for _, d in waiting.values():
                    d.errback(LeadershipLost("leadership lost before the command committed"))

    def _apply(self, out: Apply) -> None:
        waiter = self._waiting.pop(out.index, None)
        ok, result = True, None
        try:
            command = msgpack.unpackb(out.command, raw=False)
            result = self._fsm.apply(out.index, command)
        except TxConsulError as e:
            ok, result = False, e
        except Exception as e:
            # one bad command must not stop the log: every server fails it the same way
            self.log.failure("applying raft entry {index}", index=out.index)
            ok, result = False, e
        if waiter is None:
            return
        term, d = waiter
        if term != out.term:
            d.errback(LeadershipLost("the entry was replaced by another leader's"))
        elif ok:
            d.callback(result)
        else:
            d.errback(result)

    def _arm(self) -> None:
        if self.halted or self.core is None or not self.running:
            return
        deadline = self.core.next_deadline()
        # no timer means none is due (a lone voter leading): nothing to re-arm
        if deadline == self._timer_at and (self._timer is None or self._timer.active()):
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        if deadline == INFINITY:
            self._timer = None
            return
        delay = max(deadline - self._monotonic(), 0.0)
        self._timer = self._reactor.callLater(delay, self._tick)

    # -- IConsensus ---------------------------------------------------------------------

    def is_leader(self) -> bool:
        return (
            not self.halted
            and self.core is not None
            and self.core.can_serve_default_read(self._monotonic())
        )

    def leader_address(self) -> str:
        return "" if self.halted or self.core is None else self.core.leader

    def peers(self) -> list[str]:
        return [] if self.core is None else list(self.core.config)

    def last_contact(self) -> float:
        if self.core is None or self.core.role is Role.LEADER:
            return 0.0
        return max(self._monotonic() - self.core.last_leader_contact, 0.0)

    def stats(self) -> dict[str, str]:
        """Consul's ``Stats.raft`` of ``/v1/agent/self``: every value a string."""
        core = self.core
        if core is None:
            return {}
        if core.role is Role.LEADER:
            contact = "0"
        elif core.leader:
            contact = f"{self.last_contact() * 1000:.3f}ms"
        else:
            contact = "never"
        snapshot = core.snapshot
        state = "Shutdown" if self.halted else _STATE_NAMES[core.role]
        return {
            "state": state,
            "term": str(core.term),
            "last_log_index": str(core.last_index),
            "last_log_term": str(core.last_term),
            "commit_index": str(core.commit_index),
            "applied_index": str(core.last_applied),
            "last_snapshot_index": str(snapshot.index if snapshot else 0),
            "last_snapshot_term": str(snapshot.term if snapshot else 0),
            "latest_configuration_index": str(core.config_index),
            "latest_configuration": "["
            + ", ".join(f"{{Suffrage:Voter ID:{a} Address:{a}}}" for a in core.config)
            + "]",
            "num_peers": str(max(len(core.config) - 1, 0)),
            "last_contact": contact,
            "protocol_version": "3",
        }
