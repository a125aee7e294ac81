"""
FAULTS.md test 6, real processes: wall-clock jumps and monotonic offsets.

Three ``twistd`` servers run under libfaketime, each with its own timestamp
file (``FAKETIME_TIMESTAMP_FILE``), and with ``FAKETIME_DONT_FAKE_MONOTONIC``
so that, as with an NTP step or an operator's ``date -s``, only the wall
clock moves. The third server also runs in a time namespace whose monotonic
clock is a day ahead of the others' (``unshare --time --monotonic``), which
catches any comparison of monotonic readings across machines.

The leader's wall clock jumps an hour ahead, then an hour behind where it
was, then a follower's does the same; after each jump the cluster stays
quiet for a few election timeouts (only the servers' own timers run: a timer
armed on the wall clock before a backward jump would wait an hour), then a
register workload runs for a moment. What must hold: the HTTP ``Date`` of the jumped server shows the jump (the fault
took effect), no server starts an election (every server's Raft term stays
what it was), the leader stays the leader, writes keep being acknowledged,
and the history passes the linearizability checker.
"""

from __future__ import annotations

import email.utils
import os
import random
import shutil
import time

import treq
from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.test.cluster.support import (
    Report,
    final_reads,
    seed_from_env,
    sleep,
    verify_history,
)
from txconsul.testing.process import ServerCluster, ServerProcess, http_json
from txconsul.testing.register import Client, RegisterWorkload

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
#: how far the jumped server's wall clock moves, each way
JUMP = 3600
#: how long each jumped clock stays jumped: several election timeouts and
#: many leader leases of the fast config the cluster runs with
HOLD = 3.0
#: how long the workload runs after each quiet hold
BURST = 1.5
#: the monotonic offset of the third server's time namespace
MONOTONIC_OFFSET = 86400


def faketime_env(timestamp_file: str) -> dict[str, str]:
    return {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": timestamp_file,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def set_offset(timestamp_file: str, seconds: int) -> None:
    """Step the wall clock of the processes reading ``timestamp_file``."""
    with open(timestamp_file, "w") as f:
        f.write(f"{seconds:+d}\n")


async def raft_stats(server: ServerProcess) -> dict[str, str]:
    code, body = await http_json("GET", server.url + "/v1/agent/self", timeout=2.0)
    if code != 200 or not isinstance(body, dict):
        raise AssertionError(f"{server.name}: /v1/agent/self answered {code}")
    stats: dict[str, str] = body["Stats"]["raft"]
    return stats


async def wall_offset(server: ServerProcess) -> float:
    """How far ``server``'s wall clock is from ours, from its HTTP ``Date`` header."""
    response = await treq.get(server.url + "/v1/status/leader", timeout=2.0, persistent=False)
    await response.content()
    date = response.headers.getRawHeaders(b"date")[0].decode()
    wall = time.time()  # noqa: TID251 (the wall clock is what this test compares)
    return email.utils.parsedate_to_datetime(date).timestamp() - wall


class ClockJumpTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(LIBFAKETIME):
            reason = f"{LIBFAKETIME} is missing (Debian package libfaketime)"
            if os.environ.get("CI") == "true":
                self.fail(f"{reason}; .ci/run installs it")
            raise SkipTest(reason)
        if shutil.which("unshare") is None or os.geteuid() != 0:
            reason = "a time namespace needs root and unshare (util-linux)"
            if os.environ.get("CI") == "true":
                self.fail(reason)
            raise SkipTest(reason)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    async def test_wall_clock_jumps_start_no_election_and_lose_nothing(self) -> None:
        seed = seed_from_env()
        rng = random.Random(seed)
        report = Report("clock", seed, self.base)
        clocks = [os.path.join(self.base, f"clock-s{i + 1}") for i in range(3)]
        for path in clocks:
            set_offset(path, 0)
        ahead = [
            "unshare",
            "--time",
            "--fork",
            "--kill-child=SIGKILL",
            "--monotonic",
            str(MONOTONIC_OFFSET),
        ]
        cluster = ServerCluster(
            reactor,
            self.base,
            env={i: faketime_env(clocks[i]) for i in range(3)},
            prefix={2: ahead},
        )
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        cluster.start()
        leader = await cluster.wait_for_leader(limit=40)
        follower = next(s for s in cluster.servers if s is not leader)
        report.add(f"leader {leader.name}; s3's monotonic clock is {MONOTONIC_OFFSET}s ahead")

        urls = [s.url for s in cluster.servers]
        clients = [Client(f"p{i}", [urls[i % 3]]) for i in range(6)]
        workload = RegisterWorkload(reactor, rng, clients, read_modes=("default", "consistent"))
        self.addCleanup(lambda: ensureDeferred(workload.close()))

        async def burst() -> int:
            """Run the workload for BURST seconds; the operations completed."""
            done = workload.completed
            stop = reactor.seconds() + BURST
            await workload.run(lambda: reactor.seconds() >= stop)
            return workload.completed - done

        problems: list[str] = []
        await sleep(1.0)  # the catalog's own first writes settle
        await burst()
        terms = {s.name: (await raft_stats(s))["term"] for s in cluster.servers}
        report.add(f"terms before the jumps: {terms}")
        for jumped in (leader, follower):
            clock = clocks[cluster.servers.index(jumped)]
            for offset in (JUMP, -JUMP):
                set_offset(clock, offset)
                seen = await wall_offset(jumped)
                if abs(seen - offset) > 60:
                    problems.append(f"{jumped.name}'s clock did not jump: off by {seen:.0f}s")
                # quiet: only the servers' own timers run (a timer on the wall
                # clock armed before a backward jump would now wait an hour)
                await sleep(HOLD)
                done = await burst()
                report.add(
                    f"{jumped.name} wall clock {offset:+d}s (its Date says {seen:+.0f}s): "
                    f"{done} operations in the {BURST}s after {HOLD}s of quiet"
                )
                if done == 0:
                    problems.append(
                        f"no operation completed while {jumped.name} was at {offset:+d}s"
                    )
            set_offset(clock, 0)
        after = {s.name: (await raft_stats(s))["term"] for s in cluster.servers}
        report.add(f"terms after the jumps: {after}")
        if after != terms:
            problems.append(f"an election happened: terms {terms} -> {after}")
        stats = await raft_stats(leader)
        if stats["state"] != "Leader":
            problems.append(f"{leader.name} is {stats['state']} after the jumps")
        report.add(f"operations: {dict(sorted(workload.counts.items()))}")
        for key in workload.keys:
            await workload.read("final", leader.url, key, "consistent")
        history = workload.operations()
        failure = verify_history(report, history, final_reads(history))
        if failure or problems:
            logs = report.keep("servers.log", cluster.outputs(tail=200_000))
            self.fail("\n".join([failure or report.summary(), *problems, f"server logs in {logs}"]))
        print(report.summary())
