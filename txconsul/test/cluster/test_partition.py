"""
FAULTS.md test 4, real processes: the leader cut off by nftables for 10 s.

The scenario (``txconsul.testing.netpartition``) runs as a child process in a
network namespace of its own (``unshare -n``), so its nftables rules never
touch this machine's; it writes the history and the facts to a JSON file that
this test judges: the isolated leader acknowledges no write called after the
cut, the majority elects a leader that acknowledges a write within 5 s, every
server answers a read again within 10 s of the heal, no acknowledged write is
lost, and the history passes the checker.

Needs root, ``unshare``, ``ip`` and ``nft`` (``apt-get install nftables``) and
a cgroup v2 hierarchy under /sys/fs/cgroup; it skips naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.test.cluster.support import Report, final_reads, seed_from_env, verify_history
from txconsul.testing.netpartition import Unsupported, cgroup2_mount
from txconsul.testing.process import AgentProcess
from txconsul.testing.register import history_from_json

#: seconds the leader stays cut off
ISOLATE = 10.0
FAILOVER_LIMIT = 5.0
#: FAULTS.md's bound for a whole cluster after the heal (every member answers a read)
HEALTHY_LIMIT = 10.0
#: whether the isolated leader must also refuse ``?consistent`` reads, and
#: reads go into the history
CHECK_READS = True


def missing_requirements() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    try:
        cgroup2_mount()
    except Unsupported as e:
        missing.append(str(e))
    return missing


class LeaderPartitionTests(TestCase):
    timeout = 150

    async def test_an_isolated_leader_acknowledges_nothing_and_the_cluster_heals(self) -> None:
        missing = missing_requirements()
        if missing:
            raise SkipTest("needs " + ", ".join(missing))
        seed = seed_from_env()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        out = os.path.join(base, "result.json")
        report = Report("partition", seed, base)
        argv = [
            "unshare", "-n", sys.executable, "-m", "txconsul.testing.netpartition",
            "--base", base, "--out", out, "--seed", str(seed), "--isolate", str(ISOLATE),
        ]  # fmt: skip
        if CHECK_READS:
            argv.append("--reads")
        proto = AgentProcess()
        unshare = shutil.which("unshare")
        assert unshare is not None
        reactor.spawnProcess(proto, unshare, argv, env=dict(os.environ), path=base)
        timer = reactor.callLater(self.timeout - 10, proto.kill, 9)

        def cancel() -> None:
            if timer.active():
                timer.cancel()

        self.addCleanup(cancel)
        code = await proto.ended
        output = proto.output.decode(errors="replace")
        if code != 0 or not os.path.exists(out):
            self.fail(f"scenario failed (exit {code}, TXCONSUL_SEED={seed}):\n{output[-6000:]}")
        with open(out) as f:
            facts = json.load(f)
        report.lines.extend(facts["events"])

        history = history_from_json(facts["history"])
        final = final_reads(history)
        problems = []
        if facts["minority_writes_tried"] == 0:
            problems.append("no write was sent to the isolated leader: the test proved nothing")
        if facts["minority_acks"]:
            problems.append(
                f"the isolated leader acknowledged {len(facts['minority_acks'])} writes called "
                f"after the cut (seconds after it, called and answered): {facts['minority_acks'][:10]}"
            )
        if CHECK_READS and facts["minority_consistent_reads"]:
            problems.append(
                f"the isolated leader answered {len(facts['minority_consistent_reads'])} "
                f"?consistent reads: {facts['minority_consistent_reads'][:10]}"
            )
        if facts["majority_write_after"] > FAILOVER_LIMIT:
            problems.append(f"the majority took {facts['majority_write_after']:.2f}s to write")
        if facts["healthy_after"] > HEALTHY_LIMIT:
            problems.append(f"the cluster took {facts['healthy_after']:.2f}s to heal")
        if sorted(final) != sorted({op.input.key for op in history if op.client == "final"}):  # type: ignore[attr-defined]
            problems.append("a final read failed")
        failure = verify_history(report, history, final)
        if failure or problems:
            logs = report.keep("servers.log", facts["logs"])
            rules = report.keep("rules.nft", facts.get("rules", ""))
            self.fail(
                "\n".join(
                    [failure or report.summary(), *problems, f"logs in {logs}, rules in {rules}"]
                )
            )
        print(report.summary())
