"""
FAULTS.md test 4, real processes: network faults made with nftables.

The scenario (``txconsul.testing.netpartition``) runs as a child process in a
network namespace of its own (``unshare -n``), so its nftables rules never
touch this machine's. Three servers take the workload while, one after the
other, each healed before the next: the leader is cut off for 10 s, half of
the packets between servers are dropped for 1 s, the leader hears nobody for
5 s (a one-way cut), and a follower is cut off until it can only catch up by
InstallSnapshot. The scenario writes the history and each fault's facts to a
JSON file that this test judges: the cut-off server (the minority side)
acknowledges no write and answers no ``?consistent`` read called after the
cut, the others acknowledge a write within 5 s, every server answers a read
within 10 s of each heal, the follower installs the leader's snapshot, no
acknowledged write is lost, and the whole history passes the checker.

One scenario runs every fault, so the cluster starts once: the module takes
about 50 s. ``TXCONSUL_FAULT_SCALE=N`` runs the faults N times over.

Needs root, ``unshare``, ``ip`` and ``nft`` (``apt-get install nftables``) and
a cgroup v2 hierarchy under /sys/fs/cgroup; it skips naming what is missing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.test.cluster.support import (
    Report,
    final_reads,
    scale,
    seed_from_env,
    verify_history,
)
from txconsul.testing.netpartition import FAULTS, Unsupported, cgroup2_mount
from txconsul.testing.process import missing_netns_tools, run_in_netns
from txconsul.testing.register import history_from_json

#: seconds the leader stays cut off
ISOLATE = 10.0
#: seconds of 50 % loss between servers
DROP = 1.0
#: seconds the leader hears no other server
ONE_WAY = 5.0
#: the others must acknowledge a write this soon after a cut
FAILOVER_LIMIT = 5.0
#: FAULTS.md's bound for a whole cluster after a heal (every member answers a read)
HEALTHY_LIMIT = 10.0
#: whether the cut-off server must also refuse ``?consistent`` reads, and
#: reads go into the history
CHECK_READS = True


def missing_requirements() -> list[str]:
    missing = missing_netns_tools()
    try:
        cgroup2_mount()
    except Unsupported as e:
        missing.append(str(e))
    return missing


def problems_of(fault: dict[str, Any]) -> list[str]:
    """What one fault's facts break of the pass criteria."""
    name = fault["fault"]
    problems = []
    if fault["minority"] is not None:
        if fault["minority_writes_tried"] == 0:
            problems.append(f"{name}: no write was sent to the cut-off server: it proved nothing")
        if fault["minority_acks"]:
            problems.append(
                f"{name}: the cut-off server acknowledged {len(fault['minority_acks'])} writes "
                f"called after the cut, before the heal (seconds after the cut, called and "
                f"answered): "
                f"{fault['minority_acks'][:10]}"
            )
        if CHECK_READS and fault["minority_consistent_reads"]:
            problems.append(
                f"{name}: the cut-off server answered {len(fault['minority_consistent_reads'])} "
                f"?consistent reads: {fault['minority_consistent_reads'][:10]}"
            )
        if fault["majority_write_after"] > FAILOVER_LIMIT:
            problems.append(
                f"{name}: the others took {fault['majority_write_after']:.2f}s to write"
            )
    if fault["healthy_after"] > HEALTHY_LIMIT:
        problems.append(f"{name}: the cluster took {fault['healthy_after']:.2f}s to heal")
    if name == "snapshot":
        if not fault["compacted_past"]:
            problems.append("snapshot: the leader never compacted past the cut-off follower")
        if not fault["snapshot_installed"]:
            problems.append("snapshot: the follower did not install the leader's snapshot")
    return problems


class NetworkFaultTests(TestCase):
    timeout = 200 * max(scale(), 1)

    async def test_network_faults_lose_nothing_and_the_cluster_heals(self) -> None:
        missing = missing_requirements()
        if missing:
            raise SkipTest("needs " + ", ".join(missing))
        seed = seed_from_env()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        report = Report("network-faults", seed, base)
        args = [
            "--seed", str(seed),
            "--faults", ",".join(FAULTS), "--rounds", str(max(round(scale()), 1)),
            "--isolate", str(ISOLATE), "--drop", str(DROP), "--one-way", str(ONE_WAY),
        ]  # fmt: skip
        if CHECK_READS:
            args.append("--reads")
        facts, output = await run_in_netns(
            reactor, base, "txconsul.testing.netpartition", args, self.timeout - 10
        )
        if facts is None:
            self.fail(f"scenario failed (TXCONSUL_SEED={seed}, {output})")
        report.lines.extend(facts["events"])

        history = history_from_json(facts["history"])
        final = final_reads(history)
        problems = []
        ran = [fault["fault"] for fault in facts["faults"]]
        if sorted(set(ran)) != sorted(FAULTS):
            problems.append(f"faults run: {ran}, expected each of {list(FAULTS)}")
        for fault in facts["faults"]:
            problems.extend(problems_of(fault))
            if fault["minority"] is not None:
                report.add(
                    f"{fault['fault']}: the cut-off server acknowledged "
                    f"{len(fault['minority_acks'])} of {fault['minority_writes_tried']} writes "
                    f"before the heal; the others wrote after {fault['majority_write_after']:.2f}s"
                )
            report.add(f"{fault['fault']}: healthy {fault['healthy_after']:.2f}s after the heal")
        if sorted(final) != sorted({op.input.key for op in history if op.client == "final"}):  # type: ignore[attr-defined]
            problems.append("a final read failed")
        failure = verify_history(report, history, final)
        if failure or problems:
            logs = report.keep("servers.log", facts["logs"])
            rules = report.keep("rules.nft", "\n".join(f.get("rules", "") for f in facts["faults"]))
            self.fail(
                "\n".join(
                    [failure or report.summary(), *problems, f"logs in {logs}, rules in {rules}"]
                )
            )
        print(report.summary())
