"""
Convergence after joins on real sockets: N txconsul agents on loopback in one
process against N ``serf agent`` processes on the same machine, in the same run.

    python bench/gossip_real.py --nodes 50 --repeats 3

Each side starts N members alone (LAN timings, no encryption), then all but
the first ask to join the first at the same moment: ``Membership.join`` for
txconsul client agents, the ``join`` command of serf's RPC for serf agents.
The time measured runs from the joins until every member lists all N alive
(txconsul: ``/v1/agent/members``' data read in process every 20 ms; serf: the
``members`` command of each agent's RPC, polled every 20 ms). It prints each
run, the medians over the repeats, and txconsul's median over serf's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time
from typing import Any

import msgpack
from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from txconsul.agent.agent import Agent
from txconsul.config import load
from txconsul.testing.agent import dev_config
from txconsul.testing.process import free_port

POLL = 0.02


# -- txconsul -----------------------------------------------------------------------


async def txconsul_run(reactor: Any, n: int, workdir: str) -> float:
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
        start = time.monotonic()
        joins = [a.membership.join([seed]) for a in agents[1:]]

        def converged() -> bool:
            for agent in agents:
                members = agent.membership.members()
                if len(members) != n or any(m["Status"] != 1 for m in members):
                    return False
            return True

        while not converged():
            await task.deferLater(reactor, POLL, lambda: None)
        took = time.monotonic() - start
        await defer.gatherResults(joins)
        return took
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


async def serf_run(reactor: Any, n: int, serf: str) -> float:
    procs: list[SerfProcess] = []
    rpcs: list[SerfRPC] = []
    try:
        gossip = [free_port() for _ in range(n)]
        rpc_ports = [free_port() for _ in range(n)]
        for i in range(n):
            proc = SerfProcess()
            args = [
                serf, "agent", f"-node=serf-{i}", f"-bind=127.0.0.1:{gossip[i]}",
                f"-rpc-addr=127.0.0.1:{rpc_ports[i]}", "-log-level=err",
            ]  # fmt: skip
            reactor.spawnProcess(proc, serf, args, env=dict(os.environ))
            procs.append(proc)
        for port, proc in zip(rpc_ports, procs, strict=True):
            rpcs.append(await connect_rpc(reactor, port, proc))
        seed = f"127.0.0.1:{gossip[0]}"
        start = time.monotonic()
        joins = [
            rpc.call("join", {"Existing": [seed], "Replay": False}, has_reply=True)
            for rpc in rpcs[1:]
        ]

        async def converged() -> bool:
            listings = await defer.gatherResults(
                [rpc.call("members", None, has_reply=True) for rpc in rpcs]
            )
            for listing in listings:
                members = listing[b"Members"]
                if len(members) != n or any(m[b"Status"] != b"alive" for m in members):
                    return False
            return True

        while not await converged():
            await task.deferLater(reactor, POLL, lambda: None)
        took = time.monotonic() - start
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


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    serf = shutil.which("serf")
    if serf is None:
        raise SystemExit("needs the serf binary: apt-get install serf")
    print(
        f"{args.nodes} members join one of them at once; seconds until every member "
        f"lists all {args.nodes} alive (LAN timings)",
        flush=True,
    )
    ours: list[float] = []
    theirs: list[float] = []
    for repeat in range(1, args.repeats + 1):
        with tempfile.TemporaryDirectory(prefix="gossip-real-") as workdir:
            ours.append(await txconsul_run(reactor, args.nodes, workdir))
        theirs.append(await serf_run(reactor, args.nodes, serf))
        print(f"  run {repeat}: txconsul {ours[-1]:.2f} s, serf {theirs[-1]:.2f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"median over {args.repeats} runs: txconsul {a:.2f} s (in one process), "
        f"serf {b:.2f} s ({args.nodes} processes); txconsul/serf = {a / b:.2f}"
    )


if __name__ == "__main__":
    import sys

    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
