# -*- test-case-name: txconsul.test.cluster.test_partition -*-
"""
FAULTS.md test 4's scenario: network faults between three real servers, by nftables.

Run as root inside a private network namespace made for it, never in the
machine's own (it refuses)::

    unshare -n python -m txconsul.testing.netpartition --base DIR --out RESULT.json

It brings the namespace's loopback up, starts three servers on 127.0.0.1,
127.0.0.2 and 127.0.0.3, each in a cgroup v2 group of its own, and runs the
register workload against them. A server's own connections leave from
127.0.0.1 whatever address it listens on, so addresses cannot say who sent a
packet; instead an ``output`` chain marks every packet with its sending
server's number (``socket cgroupv2``), and a fault is a set of ``input``
rules dropping packets whose mark is one server's and whose destination
socket is another's: silent loss, as FAULTS.md 1 asks (an output drop would
fail ``sendto`` at once). The workload's clients are in no such group and
reach every server throughout.

The faults (``--faults``, in order, each healed before the next):

``isolate-leader``
    the leader cut off from the others both ways for ``--isolate`` seconds;
``drop``
    half of the packets between any two servers dropped (``numgen random
    mod 2``) for ``--drop`` seconds;
``one-way``
    the leader hears no other server (their packets to it are dropped, its
    own go through) for ``--one-way`` seconds;
``snapshot``
    a follower cut off both ways until the leader has compacted its log past
    the follower's last entry, so that it can only catch up by
    InstallSnapshot (the servers run with a low ``raft_snapshot_threshold``).

The result file holds the history (JSON, see ``register.history_to_json``)
and, per fault, the facts the test judges: which writes the cut-off server
(the minority side) acknowledged after the cut, which ``?consistent`` reads
it answered, how long the others took to acknowledge a write, how long
after the heal every server answered a read again, and for ``snapshot``
whether the follower installed the leader's snapshot.
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

#: every fault, in the order a round runs them
FAULTS = ("isolate-leader", "drop", "one-way", "snapshot")
#: snapshots every 128 entries, 32 kept before each: a follower cut off for a
#: few seconds of the workload's writes falls behind the leader's log
SNAPSHOT_CONFIG = {"raft_snapshot_threshold": 128, "raft_trailing_logs": 32}
#: the shortest time the follower stays cut off in ``snapshot``
SNAPSHOT_MIN_CUT = 4.0
#: what a server logs when it installs the leader's snapshot (txconsul.raft.node)
INSTALLED = "installed the leader's snapshot"


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
        self.drop(side, other)
        self.drop(other, side)

    def drop(self, sources: list[int], destinations: list[int], one_in: int = 1) -> None:
        """
        Drop packets from the servers of ``sources`` to those of
        ``destinations`` (one way): all of them, or one in ``one_in`` at random.
        """
        chance = ["numgen", "random", "mod", str(one_in), "0"] if one_in > 1 else []
        for src in sources:
            for dst in destinations:
                if src == dst:
                    continue
                nft(
                    "add", "rule", "inet", TABLE, "in", "meta", "mark", str(src + 1),
                    "socket", "cgroupv2", "level", self.level, self.names[dst],
                    *chance, "counter", "drop",
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


class Run:
    """One scenario run: the cluster, its partitioner and workload, the events seen."""

    def __init__(self, reactor: Any, opts: argparse.Namespace) -> None:
        self.reactor = reactor
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.started = time.monotonic()
        self.events: list[str] = []
        self.parts = Partitioner(3)
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        self.cluster = ServerCluster(
            reactor,
            opts.base,
            hosts=hosts,
            prefix={i: self.parts.prefix(i) for i in range(3)},
            config=SNAPSHOT_CONFIG,
        )

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.events.append(line)
        print(line, flush=True)

    def others(self, server: ServerProcess) -> list[ServerProcess]:
        return [s for s in self.cluster.servers if s is not server]

    def index(self, server: ServerProcess) -> int:
        return self.cluster.servers.index(server)

    async def heal(self, fault: dict[str, Any]) -> None:
        """Flush the rules, then time how long until the whole cluster answers again."""
        fault["rules"] = self.parts.heal()
        fault["healed_at"] = time.monotonic()
        self.event(f"{fault['fault']}: healed")
        fault["healthy_after"] = await all_healthy(self.reactor, self.cluster, limit=30)
        self.event(
            f"{fault['fault']}: every server answers a read and names one leader "
            f"{fault['healthy_after']:.2f}s after the heal"
        )

    async def cut_off(
        self, name: str, minority: ServerProcess, seconds: float, one_way: bool = False
    ) -> dict[str, Any]:
        """``minority`` cut from the others (or deaf to them) for ``seconds``."""
        i = self.index(minority)
        rest = self.others(minority)
        if one_way:
            self.parts.drop([self.index(s) for s in rest], [i])
        else:
            self.parts.cut([i], [self.index(s) for s in rest])
        fault: dict[str, Any] = {"fault": name, "minority": minority.url}
        fault["cut_at"] = cut_at = time.monotonic()
        how = "hears nothing from" if one_way else "cut off from"
        self.event(f"{name}: {minority.name} {how} {[s.name for s in rest]}")
        elected = await majority_write(self.reactor, rest, cut_at, seconds)
        fault["majority_write_after"] = elected
        self.event(f"{name}: the others acknowledged a write {elected:.2f}s after the cut")
        await sleep(self.reactor, max(seconds - (time.monotonic() - cut_at), 0))
        await self.heal(fault)
        return fault

    async def isolate_leader(self) -> dict[str, Any]:
        leader = await self.cluster.wait_for_leader(limit=10)
        return await self.cut_off("isolate-leader", leader, self.opts.isolate)

    async def one_way(self) -> dict[str, Any]:
        leader = await self.cluster.wait_for_leader(limit=10)
        return await self.cut_off("one-way", leader, self.opts.one_way, one_way=True)

    async def drop(self) -> dict[str, Any]:
        await self.cluster.wait_for_leader(limit=10)
        everyone = list(range(len(self.cluster.servers)))
        self.parts.drop(everyone, everyone, one_in=2)
        fault: dict[str, Any] = {"fault": "drop", "minority": None}
        fault["cut_at"] = time.monotonic()
        self.event(f"drop: half of the packets between servers dropped for {self.opts.drop}s")
        await sleep(self.reactor, self.opts.drop)
        await self.heal(fault)
        return fault

    async def snapshot(self) -> dict[str, Any]:
        leader = await self.cluster.wait_for_leader(limit=10)
        follower = self.rng.choice(self.others(leader))
        i = self.index(follower)
        self.parts.cut([i], [self.index(s) for s in self.others(follower)])
        fault: dict[str, Any] = {"fault": "snapshot", "minority": follower.url}
        fault["cut_at"] = cut_at = time.monotonic()
        installs_before = follower.output().count(INSTALLED)
        behind = int((await raft_stats(follower)).get("last_log_index", 0))
        self.event(f"snapshot: {follower.name} cut off, its log ends at {behind}")
        rest = self.others(follower)
        fault["majority_write_after"] = await majority_write(self.reactor, rest, cut_at, 10)
        trailing = SNAPSHOT_CONFIG["raft_trailing_logs"]
        compacted = 0
        while time.monotonic() - cut_at < self.opts.snapshot_limit:
            try:
                compacted = int((await raft_stats(leader)).get("last_snapshot_index", 0))
            except Exception:  # noqa: BLE001 - busy: ask again
                pass
            # a few seconds at least, so the follower's clients try it while it is cut off
            if compacted - trailing > behind and time.monotonic() - cut_at >= SNAPSHOT_MIN_CUT:
                break
            # writes of our own, so the log grows however slow the workload is
            for n in range(10):
                try:
                    await http_json("PUT", f"{leader.url}/v1/kv/probe/log", str(n).encode())
                except Exception:  # noqa: BLE001 - busy: the next one
                    pass
        fault["compacted_past"] = compacted - trailing > behind
        self.event(
            f"snapshot: {leader.name} snapshotted at {compacted}, keeping entries from "
            f"{compacted - trailing} ({time.monotonic() - cut_at:.1f}s after the cut)"
        )
        await self.heal(fault)
        limit = time.monotonic() + 10
        while follower.output().count(INSTALLED) <= installs_before and time.monotonic() < limit:
            await sleep(self.reactor, 0.1)
        fault["snapshot_installed"] = follower.output().count(INSTALLED) > installs_before
        self.event(
            f"snapshot: {follower.name} "
            + (
                "installed the leader's snapshot"
                if fault["snapshot_installed"]
                else "installed NO snapshot"
            )
        )
        return fault


async def raft_stats(server: ServerProcess) -> dict[str, str]:
    """``Stats.raft`` of the server's ``/v1/agent/self``."""
    code, body = await http_json("GET", f"{server.url}/v1/agent/self", timeout=1.0)
    if code != 200 or not isinstance(body, dict):
        raise RuntimeError(f"{server.name}: /v1/agent/self answered {code}")
    stats: dict[str, str] = body["Stats"]["raft"]
    return stats


async def scenario(reactor: Any, opts: argparse.Namespace) -> dict[str, Any]:
    run = Run(reactor, opts)
    cluster, parts = run.cluster, run.parts
    facts: dict[str, Any] = {"seed": opts.seed, "events": run.events, "faults": []}
    parts.setup()
    try:
        cluster.start()
        leader = await cluster.wait_for_leader(limit=40)
        run.event(f"leader {leader.name}")
        urls = [s.url for s in cluster.servers]
        clients = [Client(f"p{i}", [urls[i % 3]]) for i in range(6)]
        clients += [Client(f"any{i}", urls) for i in range(2)]
        workload = RegisterWorkload(
            reactor, run.rng, clients, read_modes=("default", "consistent"), record_reads=opts.reads
        )
        stopping = False
        running = ensureDeferred(workload.run(lambda: stopping))
        try:
            await sleep(reactor, 2.0)
            for name in opts.faults * opts.rounds:
                runner = {
                    "isolate-leader": run.isolate_leader,
                    "drop": run.drop,
                    "one-way": run.one_way,
                    "snapshot": run.snapshot,
                }[name]
                facts["faults"].append(await runner())
                await sleep(reactor, 1.0)
        finally:
            stopping = True
            await running
        for fault in facts["faults"]:
            judge_minority(fault, workload)
        facts["counts"] = dict(sorted(workload.counts.items()))
        run.event(f"operations: {facts['counts']}")
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


def judge_minority(fault: dict[str, Any], workload: RegisterWorkload) -> None:
    """
    What the cut-off server answered on its own: writes and ``?consistent``
    reads called after the cut and answered before the heal, in seconds
    after the cut. (A write it held, waiting for a leader, and forwarded once
    the cut healed may be acknowledged after the heal: the whole cluster
    committed it, and the checker judges it with the rest.)
    """
    target, cut_at, healed_at = fault["minority"], fault["cut_at"], fault["healed_at"]
    during = [w for w in workload.writes if w.target == target and cut_at < w.called < healed_at]
    fault["minority_writes_tried"] = len(during)
    fault["minority_acks"] = [
        [w.called - cut_at, w.returned - cut_at]
        for w in during
        if w.outcome is True and w.returned < healed_at
    ]
    fault["minority_consistent_reads"] = [
        [r.called - cut_at, r.returned - cut_at]
        for r in workload.reads
        if r.target == target
        and r.mode == "consistent"
        and cut_at < r.called
        and r.returned < healed_at
        and r.answered
    ]


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
    parser.add_argument(
        "--faults",
        type=lambda text: [f for f in text.split(",") if f],
        default=list(FAULTS),
        help=f"comma-separated, in order, from {','.join(FAULTS)}",
    )
    parser.add_argument("--rounds", type=int, default=1, help="times to run the faults")
    parser.add_argument("--isolate", type=float, default=10.0, help="seconds the leader is cut off")
    parser.add_argument("--drop", type=float, default=1.0, help="seconds of 50%% loss")
    parser.add_argument("--one-way", type=float, default=5.0, help="seconds the leader is deaf")
    parser.add_argument(
        "--snapshot-limit", type=float, default=20.0, help="longest a follower is cut off"
    )
    parser.add_argument("--reads", action="store_true", help="record reads in the history")
    opts = parser.parse_args(argv)
    unknown = sorted(set(opts.faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
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
