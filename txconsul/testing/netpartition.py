# -*- test-case-name: txconsul.test.cluster.test_partition -*-
"""
FAULTS.md test 4's scenario: a leader cut off from the other servers by nftables.

Run as root inside a private network namespace made for it, never in the
machine's own (it refuses)::

    unshare -n python -m txconsul.testing.netpartition --base DIR --out RESULT.json

It brings the namespace's loopback up, starts three servers on 127.0.0.1,
127.0.0.2 and 127.0.0.3, each in a cgroup v2 group of its own, and runs the
register workload against them. A server's own connections leave from
127.0.0.1 whatever address it listens on, so addresses cannot say who sent a
packet; instead an ``output`` chain marks every packet with its sending
server's number (``socket cgroupv2``), and the partition is a set of
``input`` rules dropping packets whose mark is one side's and whose
destination socket is the other side's: silent loss in both directions, as
FAULTS.md 1 asks (an output drop would fail ``sendto`` at once). The
workload's clients are in no such group and reach every server throughout.

The leader is isolated for ``--isolate`` seconds, then the rules are flushed.
The result file holds the history (JSON, see ``register.history_to_json``)
and the facts the test judges: which writes the isolated leader acknowledged
after the cut, which ``?consistent`` reads it answered, how long the majority
took to elect a leader that acknowledges a write, and how long after the heal
every server answered a read again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from txconsul.testing.process import ServerCluster, ServerProcess, http_json
from txconsul.testing.register import Client, RegisterWorkload, history_to_json

TABLE = "txconsul_partition"
CGROUP_ROOT = "/sys/fs/cgroup"


class Unsupported(Exception):
    """This machine cannot run the scenario; the message says what is missing."""


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (nft names groups relative to /sys/fs/cgroup)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                mount = fields[1]
                if mount == CGROUP_ROOT or mount.startswith(CGROUP_ROOT + "/"):
                    return mount
    raise Unsupported(f"no cgroup v2 hierarchy mounted under {CGROUP_ROOT}")


def in_private_netns() -> bool:
    """Whether loopback is this namespace's only interface (as in a fresh ``unshare -n``)."""
    with open("/proc/net/dev") as dev:
        names = {line.split(":")[0].strip() for line in dev if ":" in line}
    return names == {"lo"}


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True, text=True)


class Partitioner:
    """The servers' cgroups and the nftables table that cuts between them."""

    def __init__(self, count: int) -> None:
        mount = cgroup2_mount()
        tag = f"txconsul-part-{os.getpid()}"
        self.groups = [os.path.join(mount, f"{tag}-s{i + 1}") for i in range(count)]
        # nft names a group relative to /sys/fs/cgroup; its level is its depth
        # below the cgroup v2 root (1: a child of the root)
        self.names = [os.path.relpath(g, CGROUP_ROOT) for g in self.groups]
        self.level = "1"

    def setup(self) -> None:
        for group in self.groups:
            os.mkdir(group)
        nft("add", "table", "inet", TABLE)
        nft("add", "chain", "inet", TABLE, "out", "{ type filter hook output priority 0; }")
        nft("add", "chain", "inet", TABLE, "in", "{ type filter hook input priority 0; }")
        for i, name in enumerate(self.names):
            nft(
                "add", "rule", "inet", TABLE, "out",
                "socket", "cgroupv2", "level", self.level, name,
                "counter", "meta", "mark", "set", str(i + 1),
            )  # fmt: skip

    def prefix(self, i: int) -> list[str]:
        """
        A command that moves itself into server ``i``'s group, then runs the
        server, which gets SIGKILL if this scenario dies first (``setpriv``).
        """
        procs = os.path.join(self.groups[i], "cgroup.procs")
        orphan = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *orphan]

    def cut(self, side: list[int], other: list[int]) -> None:
        """Drop every packet between the servers of ``side`` and those of ``other``."""
        for a in side:
            for b in other:
                for src, dst in ((a, b), (b, a)):
                    name = self.names[dst]
                    nft(
                        "add", "rule", "inet", TABLE, "in", "meta", "mark", str(src + 1),
                        "socket", "cgroupv2", "level", self.level, name,
                        "counter", "drop",
                    )  # fmt: skip

    def heal(self) -> str:
        """Remove the cut; the rules with their packet counters, as they were."""
        rules = subprocess.run(
            ["nft", "list", "table", "inet", TABLE], capture_output=True, text=True
        ).stdout
        nft("flush", "chain", "inet", TABLE, "in")
        return rules

    def teardown(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
        for group in self.groups:
            try:
                os.rmdir(group)
            except OSError:
                pass


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def answers_read(server: ServerProcess) -> bool:
    try:
        code, _ = await http_json("GET", f"{server.url}/v1/kv/health-probe", timeout=0.5)
    except Exception:  # noqa: BLE001 - not answering
        return False
    return code in (200, 404)


async def scenario(reactor: Any, opts: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    facts: dict[str, Any] = {"seed": opts.seed, "events": []}
    started = time.monotonic()

    def event(text: str) -> None:
        line = f"[{time.monotonic() - started:6.1f}s] {text}"
        facts["events"].append(line)
        print(line, flush=True)

    parts = Partitioner(3)
    parts.setup()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    cluster = ServerCluster(
        reactor, opts.base, hosts=hosts, prefix={i: parts.prefix(i) for i in range(3)}
    )
    try:
        cluster.start()
        leader = await cluster.wait_for_leader(limit=40)
        event(f"leader {leader.name}")
        urls = [s.url for s in cluster.servers]
        clients = [Client(f"p{i}", [urls[i % 3]]) for i in range(6)]
        clients += [Client(f"any{i}", urls) for i in range(2)]
        workload = RegisterWorkload(
            reactor, rng, clients, read_modes=("default", "consistent"), record_reads=opts.reads
        )
        stopping = False
        running = ensureDeferred(workload.run(lambda: stopping))
        try:
            await sleep(reactor, 2.0)
            leader = await cluster.wait_for_leader(limit=10)
            li = cluster.servers.index(leader)
            rest = [s for s in cluster.servers if s is not leader]
            reads_before = len(workload.reads)
            parts.cut([li], [i for i in range(3) if i != li])
            cut_at = time.monotonic()
            event(f"{leader.name} cut off from {[s.name for s in rest]}")
            elected = await majority_write(reactor, rest, cut_at, opts.isolate)
            facts["majority_write_after"] = elected
            event(f"the majority acknowledged a write {elected:.2f}s after the cut")
            await sleep(reactor, max(opts.isolate - (time.monotonic() - cut_at), 0))
            facts["rules"] = parts.heal()
            healed_at = time.monotonic()
            event("healed")
            healthy = await all_healthy(reactor, cluster, limit=30)
            facts["healthy_after"] = healthy
            event(f"every server answers a read and names one leader {healthy:.2f}s after the heal")
            await sleep(reactor, 1.0)
        finally:
            stopping = True
            await running
        facts["minority_acks"] = [
            [w.called - cut_at, w.returned - cut_at]
            for w in workload.writes
            if w.target == leader.url and cut_at < w.called < healed_at and w.outcome is True
        ]
        facts["minority_consistent_reads"] = [
            [r.called - cut_at, r.returned - cut_at]
            for r in workload.reads[reads_before:]
            if r.target == leader.url
            and r.mode == "consistent"
            and cut_at < r.called
            and r.returned < healed_at
            and r.answered
        ]
        facts["minority_writes_tried"] = sum(
            1 for w in workload.writes if w.target == leader.url and cut_at < w.called < healed_at
        )
        facts["counts"] = dict(sorted(workload.counts.items()))
        event(f"operations: {facts['counts']}")
        final_leader = await cluster.wait_for_leader(limit=20)
        for key in workload.keys:
            await workload.read("final", final_leader.url, key, "consistent")
        await workload.close()
        facts["history"] = history_to_json(workload.operations())
    finally:
        facts["logs"] = cluster.outputs(tail=100_000)
        await cluster.stop()
        parts.teardown()
    return facts


async def majority_write(
    reactor: Any, servers: list[ServerProcess], since: float, limit: float
) -> float:
    """Seconds from ``since`` until a server of ``servers`` acknowledges a PUT."""
    attempt = 0
    while time.monotonic() - since < limit:
        server = servers[attempt % len(servers)]
        attempt += 1
        try:
            code, body = await http_json("PUT", f"{server.url}/v1/kv/probe/majority", b"1")
            if code == 200 and body is True:
                return time.monotonic() - since
        except Exception:  # noqa: BLE001 - timed out: try the other one
            pass
        await sleep(reactor, 0.05)
    return float("inf")


async def all_healthy(reactor: Any, cluster: ServerCluster, limit: float) -> float:
    """Seconds until every server answers a read and all name the same leader."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        reads = [await answers_read(s) for s in cluster.servers]
        if all(reads) and await cluster.leader() is not None:
            return time.monotonic() - start
        await sleep(reactor, 0.1)
    return float("inf")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="directory for the servers' data")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isolate", type=float, default=10.0, help="seconds of partition")
    parser.add_argument("--reads", action="store_true", help="record reads in the history")
    opts = parser.parse_args(argv)
    if not in_private_netns():
        sys.exit("refusing to run in the machine's own network namespace: use unshare -n")
    try:
        cgroup2_mount()
    except Unsupported as e:
        sys.exit(f"unsupported: {e}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    async def run(reactor: Any) -> None:
        facts = await scenario(reactor, opts)
        with open(opts.out, "w") as f:
            json.dump(facts, f)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
