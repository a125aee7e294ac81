"""
Convergence after joins on real sockets: N txconsul agents on loopback in one
process against N ``serf agent`` processes on the same machine, in the same run.

    python bench/gossip_real.py --nodes 50 --repeats 3

Each side starts N members alone (LAN timings, no encryption), then all but
the first ask to join the first at the same moment: ``Membership.join`` for
txconsul client agents, the ``join`` command of serf's RPC for serf agents.

The serf agents run twice: with the tags a Consul client agent gossips (role,
dc, segment, id, vsn, vsn_min, vsn_max, build: the same tags the txconsul
agents carry, each with its own node ID), which is the like-for-like
comparison, and bare, without tags. Tags travel in every alive message, so
they decide how many members' news fits in one 1,400-byte gossip packet:
about 230 bytes an alive message with Consul's tags, about 100 without.
The time measured runs from the joins until every member lists all N alive
(txconsul: ``/v1/agent/members``' data read in process every 50 ms; serf: the
``members`` command of each agent's RPC, polled every 50 ms), and the CPU
seconds the members used meanwhile (this process; the serf processes from
/proc). It prints each run, the medians over the repeats, and txconsul's
median over serf's, and the same for the fastest runs: when UDP packets
are lost (a loaded machine drops them from full socket buffers) a member
can miss a broadcast and learn of a member only at the next push/pull, so
single runs of either side can take tens of seconds. A run that has not
converged after ``--limit`` seconds is counted at the limit (and printed
with ``>``), so a median over it is a lower bound. Each run also says when
99% of the N x N listings first said alive: the speed of the gossip itself,
without the tail of a member that missed a broadcast. With ``--bare`` the
txconsul agents also run once more without tags, to compare the gossip layer
alone with bare serf.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from typing import Any
from unittest import mock

import attrs
import msgpack
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from txconsul.agent.agent import Agent
from txconsul.agent.membership import Membership
from txconsul.config import load
from txconsul.testing.agent import dev_config
from txconsul.testing.process import free_port

POLL = 0.05


# -- txconsul -----------------------------------------------------------------------


@attrs.frozen
class Run:
    seconds: float  # from the joins until every member lists all alive
    nearly: float  # from the joins until 99% of the N x N listings say alive
    cpu: float  # CPU seconds the members used meanwhile
    converged: bool = True  # False: stopped at the limit

    def show(self) -> str:
        mark = "" if self.converged else ">"
        return f"{mark}{self.seconds:.2f} s (99% {self.nearly:.2f} s, cpu {self.cpu:.2f} s)"


class Progress:
    """When the N x N listings reached 99% alive, and then 100%."""

    def __init__(self, n: int, start: float) -> None:
        self.n, self.start = n, start
        self.nearly: float | None = None
        self.converged = False

    def done(self, alive: int) -> bool:
        now = time.monotonic() - self.start
        if self.nearly is None and alive >= 0.99 * self.n * self.n:
            self.nearly = now
        self.converged = alive == self.n * self.n
        return self.converged

    def run(self, cpu: float) -> Run:
        seconds = time.monotonic() - self.start
        nearly = seconds if self.nearly is None else self.nearly
        return Run(seconds, nearly, cpu, self.converged)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def txconsul_run(
    reactor: Any, n: int, workdir: str, limit: float
) -> tuple[Run, dict[str, str]]:
    """One run; also the LAN tags the first agent gossips."""
    agents: list[Agent] = []
    try:
        for i in range(n):
            config = load(
                dev_config(
                    dev=False,
                    server=False,
                    node_name=f"tx-{i}",
                    data_dir=os.path.join(workdir, f"tx-{i}"),
                    ports={"http": 0, "dns": -1, "serf_lan": 0, "serf_wan": 0},
                )
            )
            agent = Agent(config, reactor)
            agent.startService()
            agents.append(agent)
        await defer.gatherResults([a.when_ready() for a in agents])
        lan = agents[0].membership.lan
        assert lan is not None
        seed = "127.0.0.1:%d" % lan.gossip.address()[1]
        start, cpu = time.monotonic(), time.process_time()
        joins = [a.membership.join([seed]) for a in agents[1:]]

        def alive() -> int:
            return sum(
                sum(m["Status"] == 1 for m in agent.membership.members()) for agent in agents
            )

        watch = Progress(n, start)
        while not watch.done(alive()) and time.monotonic() - start < limit:
            await task.deferLater(reactor, POLL, lambda: None)
        took = watch.run(time.process_time() - cpu)
        await defer.gatherResults(joins)
        return took, agents[0].membership.tags(wan=False)
    finally:
        await defer.DeferredList([a.stopService() for a in agents if a.running])


# -- serf ---------------------------------------------------------------------------


class SerfRPC(protocol.Protocol):
    """serf's msgpack RPC (handshake, join, members) over one TCP connection."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(raw=True)
        self._seq = 0
        self._waiting: dict[int, tuple[bool, Deferred[Any]]] = {}
        self._header: dict[bytes, Any] | None = None

    def call(self, command: str, body: dict[str, Any] | None, has_reply: bool) -> Deferred[Any]:
        self._seq += 1
        d: Deferred[Any] = Deferred()
        self._waiting[self._seq] = (has_reply, d)
        data = msgpack.packb({"Command": command, "Seq": self._seq})
        if body is not None:
            data += msgpack.packb(body)
        assert self.transport is not None
        self.transport.write(data)
        return d

    def dataReceived(self, data: bytes) -> None:
        self._unpacker.feed(data)
        for value in self._unpacker:
            if self._header is None:
                header = value
                has_reply, d = self._waiting[header[b"Seq"]]
                if header.get(b"Error"):
                    del self._waiting[header[b"Seq"]]
                    d.errback(RuntimeError(header[b"Error"].decode()))
                elif has_reply:
                    self._header = header
                else:
                    del self._waiting[header[b"Seq"]]
                    d.callback(None)
            else:
                _, d = self._waiting.pop(self._header[b"Seq"])
                self._header = None
                d.callback(value)


class SerfProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data[-4096:]

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


async def connect_rpc(reactor: Any, port: int, proc: SerfProcess) -> SerfRPC:
    end = time.monotonic() + 20
    while True:
        if proc.ended.called:
            raise RuntimeError("serf agent exited: " + proc.output.decode(errors="replace"))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
        try:
            rpc = await connectProtocol(endpoint, SerfRPC())
            await rpc.call("handshake", {"Version": 1}, has_reply=False)
            return rpc
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > end:
                raise
            await task.deferLater(reactor, 0.05, lambda: None)


async def start_serf(
    reactor: Any, serf: str, i: int, tags: dict[str, str]
) -> tuple[SerfProcess, SerfRPC, int]:
    """One ``serf agent`` on fresh ports (again on others if a port was taken)."""
    for _ in range(5):
        gossip, rpc_port = free_port(), free_port()
        proc = SerfProcess()
        args = [
            serf, "agent", f"-node=serf-{i}", f"-bind=127.0.0.1:{gossip}",
            f"-rpc-addr=127.0.0.1:{rpc_port}", "-log-level=err",
        ] + [f"-tag={key}={value}" for key, value in tags.items()]  # fmt: skip
        reactor.spawnProcess(proc, serf, args, env=dict(os.environ))
        try:
            return proc, await connect_rpc(reactor, rpc_port, proc), gossip
        except RuntimeError:
            if proc.transport is not None and not proc.ended.called:
                proc.transport.signalProcess(signal.SIGKILL)
            await proc.ended
    raise RuntimeError(f"serf agent {i} would not start")


async def serf_run(
    reactor: Any, n: int, serf: str, limit: float, tags: dict[str, str] | None
) -> Run:
    """One run; ``tags`` given, every agent carries them with its own ``id``."""
    procs: list[SerfProcess] = []
    rpcs: list[SerfRPC] = []
    gossip: list[int] = []
    try:
        for i in range(n):
            own = {} if tags is None else dict(tags, id=str(uuid.uuid4()))
            proc, rpc, port = await start_serf(reactor, serf, i, own)
            procs.append(proc)
            rpcs.append(rpc)
            gossip.append(port)
        seed = f"127.0.0.1:{gossip[0]}"
        pids = [p.transport.pid for p in procs if p.transport is not None]
        cpu = sum(proc_cpu(pid) for pid in pids)
        start = time.monotonic()
        joins = [
            rpc.call("join", {"Existing": [seed], "Replay": False}, has_reply=True)
            for rpc in rpcs[1:]
        ]

        async def alive() -> int:
            listings = await defer.gatherResults(
                [rpc.call("members", None, has_reply=True) for rpc in rpcs]
            )
            return sum(
                sum(m[b"Status"] == b"alive" for m in listing[b"Members"]) for listing in listings
            )

        watch = Progress(n, start)
        while not watch.done(await alive()) and time.monotonic() - start < limit:
            await task.deferLater(reactor, POLL, lambda: None)
        took = watch.run(sum(proc_cpu(pid) for pid in pids) - cpu)
        await defer.gatherResults(joins)
        return took
    finally:
        for rpc in rpcs:
            if rpc.transport is not None:
                rpc.transport.loseConnection()
        for proc in procs:
            if not proc.ended.called and proc.transport is not None:
                proc.transport.signalProcess(signal.SIGKILL)
        await defer.DeferredList([p.ended for p in procs])


def median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=90.0, help="seconds before a run stops")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also run the txconsul agents without tags (the gossip layer alone, as bare serf)",
    )
    args = parser.parse_args(argv)
    serf = shutil.which("serf")
    if serf is None:
        raise SystemExit("needs the serf binary: apt-get install serf")
    print(
        f"{args.nodes} members join one of them at once; seconds until every member "
        f"lists all {args.nodes} alive (LAN timings)",
        flush=True,
    )
    sides: dict[str, list[Run]] = {"txconsul": [], "serf, Consul's tags": [], "serf, bare": []}
    if args.bare:
        sides["txconsul, bare"] = []
    for repeat in range(1, args.repeats + 1):
        with tempfile.TemporaryDirectory(prefix="gossip-real-") as workdir:
            ours, tags = await txconsul_run(reactor, args.nodes, workdir, args.limit)
        sides["txconsul"].append(ours)
        if args.bare:
            with (
                tempfile.TemporaryDirectory(prefix="gossip-real-") as workdir,
                mock.patch.object(Membership, "tags", lambda self, wan: {}),
            ):
                bare, _ = await txconsul_run(reactor, args.nodes, workdir, args.limit)
            sides["txconsul, bare"].append(bare)
        sides["serf, Consul's tags"].append(
            await serf_run(reactor, args.nodes, serf, args.limit, tags)
        )
        sides["serf, bare"].append(await serf_run(reactor, args.nodes, serf, args.limit, None))
        print(
            f"  run {repeat}: " + ", ".join(f"{k} {v[-1].show()}" for k, v in sides.items()),
            flush=True,
        )
    print(f"over {args.repeats} runs (txconsul: {args.nodes} agents in one process):")
    for name, runs in sides.items():
        unfinished = sum(not r.converged for r in runs)
        print(
            f"  {name:20} median {median(runs, 'seconds'):6.2f} s (99% "
            f"{median(runs, 'nearly'):5.2f} s, cpu {median(runs, 'cpu'):5.2f} s), "
            f"fastest {min(r.seconds for r in runs):6.2f} s"
            + (f", {unfinished} stopped at {args.limit:.0f} s" if unfinished else "")
        )
    pairs = [("txconsul", "serf, Consul's tags"), ("txconsul", "serf, bare")]
    if args.bare:
        pairs.append(("txconsul, bare", "serf, bare"))
    for ours, theirs in pairs:
        a, b = sides[ours], sides[theirs]
        print(
            f"  {ours} / {theirs}: median {median(a, 'seconds') / median(b, 'seconds'):.2f}, "
            f"99% {median(a, 'nearly') / median(b, 'nearly'):.2f}, fastest "
            f"{min(r.seconds for r in a) / min(r.seconds for r in b):.2f}"
        )
    print(
        "(a run where a member missed a broadcast waits for a push/pull, every 60 s at "
        "this size, on either side)"
    )


if __name__ == "__main__":
    import sys

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
