# -*- test-case-name: txconsul.test.raft.test_core -*-
"""
Raft as a pure state machine (the paper and Ongaro's thesis).

``RaftCore`` takes the time and an input (a message, a tick, a proposal) and
appends outputs to its outbox: messages to send, state to persist, entries to
apply, snapshots to take or restore. It never touches a socket, a disk or a
clock; ``txconsul.raft.node`` (and the simulation in the tests) carries the
outputs out. The contract with whoever drains the outbox: every ``Persist*``
output is durable before any later ``Send`` leaves, and before the next input
reaches the core.

Beyond the paper: pre-vote and leader stickiness (thesis 9.6 and 4.2.3), so a
server that rejoins cannot depose a healthy leader; a leader lease shorter
than the election timeout for default reads; read index for consistent reads;
conflict-term backtracking; pipelined AppendEntries; snapshots with
InstallSnapshot; single-server membership changes; leadership transfer.
"""

from __future__ import annotations

import bisect
import enum
import random
from collections.abc import Iterable, Sequence

import attrs

from txconsul.errors import TxConsulError
from txconsul.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)

INFINITY = float("inf")


class NotLeader(TxConsulError):
    """This server cannot take the request; ``leader`` names who can, or is empty."""

    code = 500

    def __init__(self, leader: str = "") -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


#: the role changes Raft allows; ``_become`` refuses any other
MAY_BECOME: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.FOLLOWER, Role.PRECANDIDATE, Role.CANDIDATE}),
    Role.PRECANDIDATE: frozenset({Role.FOLLOWER, Role.PRECANDIDATE, Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.FOLLOWER, Role.PRECANDIDATE, Role.CANDIDATE, Role.LEADER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}


@attrs.frozen
class Timing:
    """
    Durations in seconds. The lease must stay below ``election_timeout``
    (the shortest time a voter waits after hearing a leader before it votes
    for someone else), with a margin for clock rate differences.
    """

    election_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    lease: float = 0.8
    max_inflight: int = 8
    max_batch: int = 256
    snapshot_threshold: int = 8192
    trailing_logs: int = 1024

    def __attrs_post_init__(self) -> None:
        if not 0 < self.lease < self.election_timeout:
            raise ValueError("the lease must be shorter than the election timeout")
        if not 0 < self.heartbeat_interval < self.lease:
            raise ValueError("heartbeats must come more often than the lease expires")


@attrs.frozen
class Snapshot:
    """The state machine as of ``index``, with the configuration in force then."""

    index: int
    term: int
    config: tuple[str, ...]
    data: bytes


# -- outputs ------------------------------------------------------------------


@attrs.frozen
class Send:
    to: str
    message: Message


@attrs.frozen
class PersistState:
    term: int
    vote: str | None


@attrs.frozen
class PersistVoters:
    """
    Keep the configuration this server started a new cluster with: until the
    log holds a configuration entry (or a snapshot), it is the only record of
    who the voters are, and a server restarted without it could not vote.
    """

    voters: tuple[str, ...]


@attrs.frozen
class PersistEntries:
    """Drop every stored entry at or after ``first_index``, then store ``entries``."""

    first_index: int
    entries: tuple[Entry, ...]


@attrs.frozen
class PersistSnapshot:
    """Store ``snapshot``; keep only log entries after ``base_index`` (whose term is ``base_term``)."""

    snapshot: Snapshot
    base_index: int
    base_term: int


@attrs.frozen
class Apply:
    """A committed command, in log order."""

    index: int
    term: int
    command: bytes


@attrs.frozen
class RestoreSnapshot:
    """Replace the state machine with ``snapshot`` (a follower fell too far behind)."""

    snapshot: Snapshot


@attrs.frozen
class TakeSnapshot:
    """Serialise the state machine, which has applied up to ``index``; call ``snapshot_taken``."""

    index: int


@attrs.frozen
class ReadReady:
    """Leadership was confirmed: the read may run once ``index`` is applied."""

    read_id: int
    index: int


@attrs.frozen
class ReadFailed:
    read_id: int
    leader: str


@attrs.frozen
class RoleChanged:
    role: Role
    term: int
    leader: str


Output = (
    Send
    | PersistState
    | PersistVoters
    | PersistEntries
    | PersistSnapshot
    | Apply
    | RestoreSnapshot
    | TakeSnapshot
    | ReadReady
    | ReadFailed
    | RoleChanged
)


@attrs.frozen
class Restored:
    """What a server finds on its disk when it starts."""

    term: int = 0
    vote: str | None = None
    snapshot: Snapshot | None = None
    base_index: int = 0
    base_term: int = 0
    entries: tuple[Entry, ...] = ()
    #: the configuration a new cluster started with (``PersistVoters``)
    voters: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        """Whether the disk says who the voters are (a restart needs no bootstrap)."""
        return (
            bool(self.voters)
            or self.snapshot is not None
            or any(e.config is not None for e in self.entries)
        )


# -- role-only data -----------------------------------------------------------


@attrs.define
class Peer:
    """What a leader knows of one follower."""

    next_index: int
    match_index: int = 0
    probing: bool = True
    inflight: list[tuple[int, float]] = attrs.Factory(list)  # (last index, sent) of each batch
    last_send: float = -INFINITY
    acked_seq: int = 0
    acked_time: float = -INFINITY  # send time of the newest round it answered
    match_seq: int = 0  # seq of the reply that last raised match_index
    lowered_seq: int = 0  # seq of the rejection that last lowered it (the follower lost entries)
    snapshot_sent: float = -INFINITY


@attrs.define
class PendingRead:
    read_id: int
    index: int
    seq: int


class RaftCore:
    """
    One server's Raft state.

    :param voters: the configuration to start from when the disk holds none
        (every server of a new cluster is given the same list). It is persisted
        (``PersistVoters``, the first output) so that a restart finds it; once
        the disk holds a configuration, ``voters`` is ignored.
    """

    def __init__(
        self,
        me: str,
        voters: Iterable[str],
        now: float,
        rng: random.Random,
        timing: Timing = Timing(),
        restored: Restored = Restored(),
    ) -> None:
        self.me = me
        self.timing = timing
        self._rng = rng
        self.outbox: list[Output] = []
        self.term = restored.term
        self.vote = restored.vote
        self.role = Role.FOLLOWER
        self.leader = ""
        self._bootstrap = restored.voters or tuple(sorted(set(voters)))
        if self._bootstrap and not restored.configured:
            self.outbox.append(PersistVoters(self._bootstrap))
        self.snapshot = restored.snapshot
        self._base_index = restored.base_index
        self._base_term = restored.base_term
        self._log: list[Entry] = list(restored.entries)
        self.commit_index = self.snapshot.index if self.snapshot else 0
        self.last_applied = self.commit_index
        self.config: tuple[str, ...] = ()
        self.config_index = 0
        self._recompute_config()
        # a restarted voter may have promised a leader not to vote: wait as if it had just heard one
        self._leader_contact = now
        self._election_deadline = INFINITY
        self._reset_election_timer(now, first=True)
        # candidate data
        self._votes: set[str] = set()
        # leader data
        self._peers: dict[str, Peer] = {}
        self._seq = 0
        self._sent_at: list[tuple[int, float]] = []
        self._reads: list[PendingRead] = []
        self._read_ids = 0
        self._term_start = 0
        self._leader_since = now
        self._transfer_target = ""
        self._transfer_deadline = INFINITY
        self._lease_void_term = -1
        self._snapshot_requested = False

    # -- log access ---------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self._base_index + len(self._log)

    @property
    def last_term(self) -> int:
        return self._log[-1].term if self._log else self._base_term

    @property
    def first_index(self) -> int:
        """The first index still in the log (entries before are in the snapshot)."""
        return self._base_index + 1

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or ``None`` if compacted away or absent."""
        if index == self._base_index:
            return self._base_term
        if self._base_index < index <= self.last_index:
            return self._log[index - self._base_index - 1].term
        if self.snapshot is not None and index == self.snapshot.index:
            return self.snapshot.term
        return None

    def entry(self, index: int) -> Entry:
        return self._log[index - self._base_index - 1]

    def entries(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start`` to ``stop - 1``, all of which must be in the log."""
        return self._log[start - self._base_index - 1 : stop - self._base_index - 1]

    def _truncate_from(self, index: int) -> None:
        if index <= self.commit_index:
            raise AssertionError(f"{self.me}: truncating committed entry {index}")
        del self._log[index - self._base_index - 1 :]
        if self.config_index >= index:
            self._recompute_config()

    def _append(self, entries: Sequence[Entry]) -> None:
        self._log.extend(entries)
        for e in entries:
            if e.config is not None:
                self.config, self.config_index = e.config, e.index

    def _recompute_config(self) -> None:
        for e in reversed(self._log):
            if e.config is not None:
                self.config, self.config_index = e.config, e.index
                return
        if self.snapshot is not None:
            self.config, self.config_index = self.snapshot.config, self.snapshot.index
        else:
            self.config, self.config_index = self._bootstrap, 0

    # -- small helpers ------------------------------------------------------------

    def _quorum(self) -> int:
        return len(self.config) // 2 + 1

    def _send(self, to: str, message: Message) -> None:
        self.outbox.append(Send(to, message))

    def _persist_state(self) -> None:
        self.outbox.append(PersistState(self.term, self.vote))

    def _reset_election_timer(self, now: float, first: bool = False) -> None:
        t = self.timing.election_timeout
        if first and self.config == (self.me,):
            self._election_deadline = now  # a lone server need not wait for anyone
        else:
            self._election_deadline = now + t + self._rng.random() * t

    def _become(self, role: Role, now: float) -> None:
        if role not in MAY_BECOME[self.role]:
            raise AssertionError(f"{self.me}: {self.role} may not become {role}")
        was = self.role
        self.role = role
        if was is Role.LEADER and role is not Role.LEADER:
            self._peers.clear()
            self._sent_at.clear()
            self._transfer_target = ""
            self._transfer_deadline = INFINITY
            for read in self._reads:
                self.outbox.append(ReadFailed(read.read_id, self.leader))
            self._reads.clear()
            self._leader_contact = now
        if role is not was:
            self.outbox.append(RoleChanged(role, self.term, self.leader))

    def _step_down(self, now: float, term: int, leader: str = "") -> None:
        """Follow ``leader`` (or nobody yet) in ``term``, which is at least ours."""
        if term > self.term:
            self.term, self.vote = term, None
            self._persist_state()
        changed = self.leader != leader
        self.leader = leader
        if self.role is not Role.FOLLOWER:
            self._become(Role.FOLLOWER, now)
            self._reset_election_timer(now)
        elif changed:
            self.outbox.append(RoleChanged(Role.FOLLOWER, self.term, leader))

    def _sticky(self, now: float) -> bool:
        """Whether we heard a live leader too recently to vote for another (thesis 4.2.3)."""
        if self.role is Role.LEADER:
            return True
        return now - self._leader_contact < self.timing.election_timeout

    def _log_ok(self, last_term: int, last_index: int) -> bool:
        return (last_term, last_index) >= (self.last_term, self.last_index)

    # -- inputs -------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The time of the next ``tick`` that has something to do."""
        if self.role is not Role.LEADER:
            return self._election_deadline if self.me in self.config else INFINITY
        deadline = self._transfer_deadline
        if self._peers:
            deadline = min(deadline, self._contact_time() + self.timing.election_timeout)
        for peer in self._peers.values():
            deadline = min(deadline, peer.last_send + self.timing.heartbeat_interval)
        return deadline

    def tick(self, now: float) -> None:
        if self.role is Role.LEADER:
            self._tick_leader(now)
        elif now >= self._election_deadline and self.me in self.config:
            self._start_pre_vote(now)

    def receive(self, now: float, src: str, message: Message) -> None:
        if isinstance(message, AppendEntries):
            self._on_append(now, message)
        elif isinstance(message, AppendEntriesReply):
            self._on_append_reply(now, src, message)
        elif isinstance(message, RequestVote):
            self._on_request_vote(now, src, message)
        elif isinstance(message, RequestVoteReply):
            self._on_vote_reply(now, src, message)
        elif isinstance(message, InstallSnapshot):
            self._on_install_snapshot(now, message)
        elif isinstance(message, InstallSnapshotReply):
            self._on_install_snapshot_reply(now, src, message)
        elif isinstance(message, TimeoutNow):
            self._on_timeout_now(now, message)

    def propose(self, now: float, command: bytes) -> int | NotLeader:
        """Append a command to the leader's log; its index, or NotLeader."""
        if self.role is not Role.LEADER or self._transfer_target:
            return NotLeader(self.leader)
        index = self.last_index + 1
        self._leader_append(now, [Entry(self.term, index, command)])
        self._replicate(now)
        return index

    def propose_many(self, now: float, commands: Sequence[bytes]) -> list[int] | NotLeader:
        """Several commands in one batch: one persist, one round of sends."""
        if self.role is not Role.LEADER or self._transfer_target:
            return NotLeader(self.leader)
        term = self.term
        first = self._base_index + len(self._log) + 1
        entries = [Entry(term, first + i, c) for i, c in enumerate(commands)]
        self._leader_append(now, entries)
        if self._peers:
            self._replicate(now)
        return list(range(first, first + len(entries)))

    def change_config(self, now: float, voters: Iterable[str]) -> int | NotLeader:
        """
        Add or remove one voter. Refused (``ValueError``) while an earlier change
        is uncommitted, before the leader committed an entry of its term, or
        when ``voters`` differs from the current configuration by more than one.
        """
        if self.role is not Role.LEADER or self._transfer_target:
            return NotLeader(self.leader)
        new = tuple(sorted(set(voters)))
        if len(set(new) ^ set(self.config)) != 1:
            raise ValueError("a configuration change adds or removes exactly one server")
        if self.config_index > self.commit_index or self.commit_index < self._term_start:
            raise ValueError("an earlier configuration change is still in progress")
        index = self.last_index + 1
        self._leader_append(now, [Entry(self.term, index, b"", new)])
        for server in new:
            if server != self.me and server not in self._peers:
                self._peers[server] = Peer(next_index=index)
        self._replicate(now)
        return index

    def transfer_leadership(self, now: float, target: str = "") -> bool:
        """
        Hand leadership to ``target`` (or the most up-to-date voter): stop taking
        proposals, bring it up to date, then send it TimeoutNow. False if there is
        nobody to hand over to.
        """
        if self.role is not Role.LEADER:
            return False
        candidates = [p for p in self.config if p != self.me and p in self._peers]
        if target:
            candidates = [p for p in candidates if p == target]
        if not candidates:
            return False
        self._transfer_target = max(candidates, key=lambda p: self._peers[p].match_index)
        self._transfer_deadline = now + self.timing.election_timeout
        self._lease_void_term = (
            self.term
        )  # the target will be elected past every voter's stickiness
        self._maybe_send_timeout_now(now)
        self._replicate(now)
        return True

    def read_index(self, now: float) -> int | NotLeader:
        """
        Start a consistent read: its id; ``ReadReady(id, index)`` follows once a
        quorum confirmed our leadership (``ReadFailed`` if we lose it first).
        """
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        self._read_ids += 1
        read = PendingRead(self._read_ids, self.commit_index, self._seq + 1)
        self._reads.append(read)
        if len(self.config) == 1 and self.me in self.config:
            self._check_reads()
        else:
            self._heartbeat_all(now)
        return read.read_id

    def can_serve_default_read(self, now: float) -> bool:
        """Whether our lease holds: a quorum answered us within the lease, and it cannot have moved on."""
        if self.role is not Role.LEADER or self._lease_void_term == self.term:
            return False
        if self.commit_index < self._term_start:
            return False
        return now < self._quorum_time() + self.timing.lease

    def snapshot_taken(self, now: float, index: int, data: bytes) -> None:
        """The state machine as of ``index`` (answering TakeSnapshot): compact the log."""
        self._snapshot_requested = False
        if index <= self._base_index or index > self.last_applied:
            return
        term = self.term_at(index)
        assert term is not None
        config = self._config_at(index)
        self.snapshot = Snapshot(index, term, config, data)
        keep_from = max(index - self.timing.trailing_logs, self._base_index)
        if keep_from > self._base_index:
            base_term = self.term_at(keep_from)
            assert base_term is not None
            del self._log[: keep_from - self._base_index]
            self._base_index, self._base_term = keep_from, base_term
        self.outbox.append(PersistSnapshot(self.snapshot, self._base_index, self._base_term))

    def _config_at(self, index: int) -> tuple[str, ...]:
        for e in reversed(self.entries(self.first_index, index + 1)):
            if e.config is not None:
                return e.config
        if self.snapshot is not None and self.snapshot.index <= index:
            return self.snapshot.config
        return self._bootstrap

    # -- elections ----------------------------------------------------------------

    def _start_pre_vote(self, now: float) -> None:
        self.leader = ""
        self._become(Role.PRECANDIDATE, now)
        self._reset_election_timer(now)
        self._votes = {self.me}
        if len(self._votes) >= self._quorum():
            self._start_election(now, transfer=False)
            return
        msg = RequestVote(self.term + 1, self.me, self.last_index, self.last_term, pre_vote=True)
        for peer in self.config:
            if peer != self.me:
                self._send(peer, msg)

    def _start_election(self, now: float, transfer: bool) -> None:
        self.leader = ""
        self.term += 1
        self.vote = self.me
        self._become(Role.CANDIDATE, now)  # after the term moves, so RoleChanged names the new one
        self._persist_state()
        self._reset_election_timer(now)
        self._votes = {self.me}
        if len(self._votes) >= self._quorum():
            self._become_leader(now)
            return
        msg = RequestVote(self.term, self.me, self.last_index, self.last_term, transfer=transfer)
        for peer in self.config:
            if peer != self.me:
                self._send(peer, msg)

    def _on_request_vote(self, now: float, src: str, msg: RequestVote) -> None:
        if msg.pre_vote:
            granted = (
                msg.term > self.term
                and not self._sticky(now)
                and self._log_ok(msg.last_log_term, msg.last_log_index)
            )
            self._send(src, RequestVoteReply(self.term if not granted else msg.term, granted, True))
            return
        if msg.term < self.term or (self._sticky(now) and not msg.transfer):
            self._send(src, RequestVoteReply(self.term, False))
            return
        if msg.term > self.term:
            self._step_down(now, msg.term)
        granted = self.vote in (None, msg.candidate) and self._log_ok(
            msg.last_log_term, msg.last_log_index
        )
        if granted:
            self.vote = msg.candidate
            self._persist_state()
            self._reset_election_timer(now)
        self._send(src, RequestVoteReply(self.term, granted))

    def _on_vote_reply(self, now: float, src: str, msg: RequestVoteReply) -> None:
        if msg.term > self.term and not msg.granted:
            self._step_down(now, msg.term)
            return
        if msg.pre_vote:
            if self.role is Role.PRECANDIDATE and msg.granted and msg.term == self.term + 1:
                self._votes.add(src)
                if len(self._votes & set(self.config)) >= self._quorum():
                    self._start_election(now, transfer=False)
            return
        if self.role is Role.CANDIDATE and msg.granted and msg.term == self.term:
            self._votes.add(src)
            if len(self._votes & set(self.config)) >= self._quorum():
                self._become_leader(now)

    def _on_timeout_now(self, now: float, msg: TimeoutNow) -> None:
        if msg.term == self.term and self.me in self.config and self.role is not Role.LEADER:
            self._start_election(now, transfer=True)

    def _become_leader(self, now: float) -> None:
        self.leader = self.me
        self._become(Role.LEADER, now)
        self._peers = {p: Peer(next_index=self.last_index + 1) for p in self.config if p != self.me}
        self._sent_at = []
        self._leader_since = now
        self._term_start = self.last_index + 1
        self._leader_append(now, [Entry(self.term, self._term_start)])  # the no-op of thesis 6.4
        self._heartbeat_all(now)

    # -- replication, leader side ---------------------------------------------------

    def _leader_append(self, now: float, entries: list[Entry]) -> None:
        self._append(entries)
        self.outbox.append(PersistEntries(entries[0].index, tuple(entries)))
        self._advance_commit(now)  # a lone voter commits at once

    def _quorum_time(self) -> float:
        """The send time of the newest round a quorum (ourselves included) has answered."""
        times = sorted(
            (INFINITY if p == self.me else self._peers[p].acked_time)
            for p in self.config
            if p == self.me or p in self._peers
        )
        times.reverse()
        q = self._quorum()
        return times[q - 1] if len(times) >= q else -INFINITY

    def _contact_time(self) -> float:
        return max(self._quorum_time(), self._leader_since)

    def _tick_leader(self, now: float) -> None:
        if self._peers and now >= self._contact_time() + self.timing.election_timeout:
            self._step_down(now, self.term)  # lost touch with a quorum (thesis 6.2)
            return
        if now >= self._transfer_deadline:
            self._transfer_target = ""
            self._transfer_deadline = INFINITY
        for name, peer in self._peers.items():
            if now >= peer.last_send + self.timing.heartbeat_interval:
                self._send_to(now, name, peer, heartbeat=True)
        cutoff = now - 2 * self.timing.election_timeout
        drop = bisect.bisect_left(self._sent_at, cutoff, key=lambda sent: sent[1])
        del self._sent_at[:drop]

    def _heartbeat_all(self, now: float) -> None:
        for name, peer in self._peers.items():
            self._send_to(now, name, peer, heartbeat=True)

    def _replicate(self, now: float) -> None:
        for name, peer in self._peers.items():
            if peer.next_index <= self.last_index:
                self._send_to(now, name, peer, heartbeat=False)

    def _next_seq(self, now: float) -> int:
        self._seq += 1
        self._sent_at.append((self._seq, now))
        return self._seq

    def _send_to(self, now: float, name: str, peer: Peer, heartbeat: bool) -> None:
        if self.term_at(peer.next_index - 1) is None:
            if now >= peer.snapshot_sent + self.timing.election_timeout:
                self._send_snapshot(now, name, peer)
                return
            if not heartbeat:
                return
        if heartbeat and (
            (peer.inflight and now >= peer.inflight[0][1] + 2 * self.timing.heartbeat_interval)
            or (not peer.inflight and peer.next_index > peer.match_index + 1)
        ):
            # a batch went unanswered: assume it was lost and start again after the match
            peer.inflight.clear()
            peer.next_index = peer.match_index + 1
            peer.probing = True
        limit = 1 if peer.probing else self.timing.max_inflight
        if (
            peer.next_index <= self.last_index
            and len(peer.inflight) < limit
            and self.term_at(peer.next_index - 1) is not None
        ):
            prev = peer.next_index - 1
            stop = min(self.last_index + 1, peer.next_index + self.timing.max_batch)
            batch = tuple(self.entries(peer.next_index, stop))
            peer.inflight.append((stop - 1, now))
            peer.next_index = stop
        elif heartbeat:
            # a heartbeat checks only what is known to match, so it never fails spuriously
            prev, batch = peer.match_index, ()
            if self.term_at(prev) is None:
                prev = 0  # index 0 of term 0 matches every log, compacted or not
        else:
            return
        prev_term = self.term_at(prev) or 0
        seq = self._next_seq(now)
        peer.last_send = now
        self._send(
            name, AppendEntries(self.term, self.me, prev, prev_term, batch, self.commit_index, seq)
        )

    def _send_snapshot(self, now: float, name: str, peer: Peer) -> None:
        if self.snapshot is None:
            return
        s = self.snapshot
        peer.snapshot_sent = now
        peer.last_send = now
        seq = self._next_seq(now)
        self._send(
            name, InstallSnapshot(self.term, self.me, s.index, s.term, s.config, s.data, seq)
        )

    def _sent_time(self, seq: int) -> float:
        i = bisect.bisect_left(self._sent_at, (seq, -INFINITY))
        if i < len(self._sent_at) and self._sent_at[i][0] == seq:
            return self._sent_at[i][1]
        return -INFINITY

    def _acked(self, peer: Peer, seq: int) -> None:
        if seq > peer.acked_seq:
            peer.acked_seq = seq
            peer.acked_time = max(peer.acked_time, self._sent_time(seq))
        self._check_reads()

    def _replying_peer(
        self, now: float, src: str, msg: AppendEntriesReply | InstallSnapshotReply
    ) -> Peer | None:
        """
        The follower a reply of this leader's term comes from, its round counted as
        acknowledged; None when the reply is of another term (a newer one deposes
        us) or we no longer lead.
        """
        if msg.term > self.term:
            self._step_down(now, msg.term)
            return None
        peer = self._peers.get(src)
        if self.role is not Role.LEADER or msg.term != self.term or peer is None:
            return None
        self._acked(peer, msg.seq)
        return peer

    def _on_append_reply(self, now: float, src: str, msg: AppendEntriesReply) -> None:
        peer = self._replying_peer(now, src, msg)
        if peer is None:
            return
        if msg.success:
            # a success sent before the rejection that reported a loss is stale: it says nothing
            if msg.seq > peer.lowered_seq:
                if msg.match_index > peer.match_index:
                    peer.match_index = msg.match_index
                    peer.match_seq = msg.seq
                peer.next_index = max(peer.next_index, peer.match_index + 1)
                peer.inflight = [b for b in peer.inflight if b[0] > peer.match_index]
                peer.probing = False
                self._advance_commit(now)
        else:
            nxt = msg.conflict_index
            if msg.conflict_term:
                last = self._last_index_of_term(msg.conflict_term)
                if last:
                    nxt = last + 1
            # an older rejection may predate the match (replies get reordered): only one
            # newer than the reply that raised the match can take it back
            if msg.seq > peer.match_seq and msg.conflict_index <= peer.match_index:
                self._lower_match(peer, msg)
                nxt = min(nxt, peer.match_index + 1)
            peer.next_index = min(max(nxt, peer.match_index + 1, 1), self.last_index + 1)
            peer.inflight.clear()
            peer.probing = True
        if self.role is Role.LEADER:  # advancing the commit may have removed us
            self._maybe_send_timeout_now(now)
            if peer.next_index <= self.last_index:
                self._send_to(now, src, peer, heartbeat=False)

    def _lower_match(self, peer: Peer, msg: AppendEntriesReply) -> None:
        """
        A rejection newer than the reply that raised ``match_index`` puts the
        follower's log below it: the follower lost entries it had acknowledged
        (a corrupt tail cut off on restart). Count it only for what it still
        has, which is never more than it says (``commit_index`` itself stays:
        what is committed stays committed), and resend from there. A follower
        in our term takes entries only from us, so what it kept is a prefix of
        our log; a mismatching term below the match is past explaining, so it
        is proven again from nothing.
        """
        has = msg.conflict_index - 1 if not msg.conflict_term else 0
        peer.match_index = max(min(peer.match_index, has), 0)
        peer.lowered_seq = msg.seq

    def _on_install_snapshot_reply(self, now: float, src: str, msg: InstallSnapshotReply) -> None:
        peer = self._replying_peer(now, src, msg)
        if peer is None:
            return
        if msg.last_index > peer.match_index:
            # a snapshot is never cut off on restart, only entries after it
            peer.match_index = msg.last_index
            peer.match_seq = msg.seq
        peer.next_index = max(peer.next_index, peer.match_index + 1)
        peer.inflight.clear()
        peer.probing = True
        peer.snapshot_sent = -INFINITY
        self._advance_commit(now)
        if self.role is Role.LEADER and peer.next_index <= self.last_index:
            self._send_to(now, src, peer, heartbeat=False)

    def _last_index_of_term(self, term: int) -> int:
        """The last index of ``term`` in our log (terms only grow along it), or 0."""
        i = bisect.bisect_right(self._log, term, key=lambda e: e.term)
        if i and self._log[i - 1].term == term:
            return self._log[i - 1].index
        return 0

    def _maybe_send_timeout_now(self, now: float) -> None:
        target = self._transfer_target
        if target and target in self._peers and self._peers[target].match_index == self.last_index:
            self._send(target, TimeoutNow(self.term, self.me))

    def _quorum_match(self) -> int:
        """The highest index a quorum of voters stores (0 if no quorum is known)."""
        if not self._peers and self.config == (self.me,):
            return self._base_index + len(self._log)  # a lone voter is its own quorum
        matches = sorted(
            (self.last_index if p == self.me else self._peers[p].match_index)
            for p in self.config
            if p == self.me or p in self._peers
        )
        matches.reverse()
        q = self._quorum()
        return matches[q - 1] if len(matches) >= q else 0

    def _advance_commit(self, now: float) -> None:
        if self.role is not Role.LEADER:
            return
        n = self._quorum_match()
        if n > self.commit_index and self.term_at(n) == self.term:
            self._commit_to(n)
            if self._reads:
                self._check_reads()
            if self.me not in self.config and self.commit_index >= self.config_index:
                self._step_down(now, self.term)  # removed: hand over by silence
                return
            # drop peers that left the configuration once it is committed
            if self._peers and self.commit_index >= self.config_index:
                for p in [p for p in self._peers if p not in self.config]:
                    del self._peers[p]

    def _check_reads(self) -> None:
        if not self._reads or self.commit_index < self._term_start:
            return
        voters = [p for p in self.config if p != self.me]
        ready = []
        for read in self._reads:
            acks = (1 if self.me in self.config else 0) + sum(
                1 for p in voters if p in self._peers and self._peers[p].acked_seq >= read.seq
            )
            if acks >= self._quorum():
                ready.append(read)
        for read in ready:
            self._reads.remove(read)
            self.outbox.append(ReadReady(read.read_id, max(read.index, self._term_start)))

    # -- replication, follower side -------------------------------------------------

    def _heard_leader(self, now: float, term: int, leader: str) -> None:
        if term > self.term or self.role is not Role.FOLLOWER or self.leader != leader:
            self._step_down(now, term, leader)
        self._leader_contact = now
        self._reset_election_timer(now)

    def _on_append(self, now: float, msg: AppendEntries) -> None:
        if msg.term < self.term:
            self._send(msg.leader, AppendEntriesReply(self.term, False, 0, 0, 0, msg.seq))
            return
        self._heard_leader(now, msg.term, msg.leader)
        prev, prev_term, entries = msg.prev_index, msg.prev_term, list(msg.entries)
        if any(e.index != prev + 1 + i for i, e in enumerate(entries)):
            return  # not a run of entries after prev: a broken sender, ignore it
        if prev < self._base_index:
            # everything up to our base is committed, hence matching: skip it
            skip = self._base_index - prev
            entries = entries[skip:]
            if not entries:
                match = min(msg.prev_index + len(msg.entries), self._base_index)
                self._reply_append(msg, True, match)
                return
            prev, prev_term = self._base_index, self._base_term
        elif prev > self.last_index:
            self._reply_append(msg, False, 0, self.last_index + 1, 0)
            return
        elif self.term_at(prev) != prev_term:
            conflict_term = self.term_at(prev)
            assert conflict_term is not None
            first = prev
            while first - 1 > self._base_index and self.term_at(first - 1) == conflict_term:
                first -= 1
            self._reply_append(msg, False, 0, first, conflict_term)
            return
        new: list[Entry] = []
        for i, e in enumerate(entries):
            if e.index > self.last_index:
                new = entries[i:]
                break
            if self.term_at(e.index) != e.term:
                self._truncate_from(e.index)
                new = entries[i:]
                break
        if new:
            self._append(new)
            self.outbox.append(PersistEntries(new[0].index, tuple(new)))
        match = prev + len(entries)
        if msg.commit > self.commit_index:
            self._commit_to(min(msg.commit, match))
        self._reply_append(msg, True, match)

    def _reply_append(
        self, msg: AppendEntries, ok: bool, match: int, c_index: int = 0, c_term: int = 0
    ) -> None:
        self._send(msg.leader, AppendEntriesReply(self.term, ok, match, c_index, c_term, msg.seq))

    def _on_install_snapshot(self, now: float, msg: InstallSnapshot) -> None:
        if msg.term < self.term:
            self._send(msg.leader, InstallSnapshotReply(self.term, 0, msg.seq))
            return
        self._heard_leader(now, msg.term, msg.leader)
        if msg.last_index > self.commit_index:
            snap = Snapshot(msg.last_index, msg.last_term, msg.config, msg.data)
            self.snapshot = snap
            if self.term_at(msg.last_index) == msg.last_term and msg.last_index <= self.last_index:
                del self._log[: msg.last_index - self._base_index]  # keep what follows
            else:
                self._log = []
                # what follows disagrees with the snapshot: gone, in the same batch
                self.outbox.append(PersistEntries(msg.last_index + 1, ()))
            self._base_index, self._base_term = msg.last_index, msg.last_term
            self._recompute_config()
            self.commit_index = self.last_applied = msg.last_index
            self.outbox.append(PersistSnapshot(snap, self._base_index, self._base_term))
            self.outbox.append(RestoreSnapshot(snap))
        self._send(msg.leader, InstallSnapshotReply(self.term, msg.last_index, msg.seq))

    # -- commit and apply -----------------------------------------------------------

    def _commit_to(self, index: int) -> None:
        if index <= self.commit_index:
            return
        self.commit_index = index
        outbox, base = self.outbox, self._base_index
        for e in self._log[self.last_applied - base : index - base]:
            if e.config is None and e.command:
                outbox.append(Apply(e.index, e.term, e.command))
        self.last_applied = index
        if (
            not self._snapshot_requested
            and self.last_applied - self._base_index >= self.timing.snapshot_threshold
        ):
            self._snapshot_requested = True
            self.outbox.append(TakeSnapshot(self.last_applied))

    # -- views ----------------------------------------------------------------------

    def leading_with_current_commit(self) -> bool:
        """Leader, and an entry of our term is committed, so our commit index is current."""
        return self.role is Role.LEADER and self.commit_index >= self._term_start

    @property
    def last_leader_contact(self) -> float:
        """When we last heard a leader (our own start counts as hearing one)."""
        return self._leader_contact

    def take_outputs(self) -> list[Output]:
        """Empty the outbox and return what it held."""
        out, self.outbox = self.outbox, []
        return out

    def log_entries(self) -> list[Entry]:
        """The entries still in the log (for tests and invariants)."""
        return list(self._log)
