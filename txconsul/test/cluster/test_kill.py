"""
FAULTS.md test 3: three real ``twistd`` servers, ``kill -9`` of the leader.

A Jepsen ``register`` workload runs over HTTP (10 keys, clients pinned to each
server, clients using any server and clients of a client agent, 1 s timeouts) while the leader is killed
with SIGKILL every few seconds and restarted on its data directory. A new
leader must serve writes within 5 s of each kill; at the end every server
catches up, no acknowledged write is lost, and the history, final reads
included, passes the linearizability checker.

A failure prints ``TXCONSUL_SEED=<n>``: with it the same schedule (operation
mix, kill times) runs again; the processes' timing is real, so it is not an
exact replay. ``TXCONSUL_FAULT_SCALE=10`` runs ten times as many kills.
"""

from __future__ import annotations

import os
import random
import signal
import time

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from txconsul.test.cluster.support import (
    Report,
    caught_up,
    final_reads,
    first_write,
    new_leader,
    scale,
    seed_from_env,
    sleep,
    verify_history,
)
from txconsul.testing.process import ServerCluster
from txconsul.testing.register import Client, RegisterWorkload

#: kills of the leader in one run (times TXCONSUL_FAULT_SCALE)
KILLS = 5
#: a new leader must acknowledge a write within this long after a kill
FAILOVER_LIMIT = 5.0
#: operations per second the workload must reach before the first fault
MINIMAL_QPS = 100.0
#: the reads the workload issues
READ_MODES = ("default", "consistent")
#: whether the history includes them (default reads and ``?consistent`` both
#: must be linearizable, on servers and through the client agent)
RECORD_READS = True


class KillLeaderTests(TestCase):
    timeout = 150 * max(scale(), 1)

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    async def test_kill_9_of_the_leader_loses_no_acknowledged_write(self) -> None:
        seed = seed_from_env()
        rng = random.Random(seed)
        report = Report("kill-9", seed, self.base)
        cluster = ServerCluster(reactor, self.base, clients=1)
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        cluster.start()
        leader = await cluster.wait_for_leader(limit=40)
        report.add(f"leader {leader.name}")

        servers = cluster.servers
        urls = [s.url for s in servers]
        agent = cluster.clients[0].url
        clients = [Client(f"p{i}", [urls[i % 3]]) for i in range(6)]
        clients += [Client(f"any{i}", urls) for i in range(2)]
        clients += [Client(f"c{i}", [agent]) for i in range(2)]
        workload = RegisterWorkload(
            reactor, rng, clients, read_modes=READ_MODES, record_reads=RECORD_READS
        )
        self.addCleanup(lambda: ensureDeferred(workload.close()))
        stopping = False
        running = ensureDeferred(workload.run(lambda: stopping))

        try:
            # the first seconds after the election have the catalog's own writes
            # (every member registered, the client agent's sync) in them
            await sleep(2.0)
            before = workload.completed
            await sleep(4.0)
            qps = (workload.completed - before) / 4.0
            report.add(f"{qps:.0f} ops/s before the first fault")
            failovers: list[float] = []
            for kill in range(round(KILLS * scale())):
                await sleep(rng.uniform(3.0, 6.0))
                leader = await cluster.wait_for_leader(limit=20)
                rest = [s for s in servers if s is not leader]
                await leader.stop(signal.SIGKILL)
                elected = ensureDeferred(new_leader(rest, limit=15.0))
                took = await first_write(rest, f"probe/{kill}", limit=15.0)
                failovers.append(took)
                report.add(
                    f"kill -9 of leader {leader.name}: new leader known after "
                    f"{await elected:.2f}s, a write acknowledged after {took:.2f}s"
                )
                cluster.start(leader)
                # the next kill needs the restarted server back in the cluster
                await cluster.wait_for_leader(limit=30)
        finally:
            stopping = True
            await running
        report.add(f"operations: {dict(sorted(workload.counts.items()))}")

        await cluster.wait_for_leader(limit=20)
        for key in workload.keys:  # through the client agent, which asks the leader
            await workload.read("final", agent, key, "consistent")
        history = workload.operations()
        final = final_reads(history)
        missing = sorted(set(workload.keys) - set(final))
        for server in servers:
            end = time.monotonic() + 15
            while not await caught_up(server, final) and time.monotonic() < end:
                await sleep(0.1)
            if not await caught_up(server, final):
                missing.append(f"{server.name} did not catch up")

        failure = verify_history(report, history, final)
        if failure or missing or qps < MINIMAL_QPS or max(failovers) > FAILOVER_LIMIT:
            logs = report.keep("servers.log", cluster.outputs(tail=200_000))
            self.fail(
                "\n".join(
                    [
                        failure or report.summary(),
                        f"final reads missing or servers behind: {missing}" if missing else "",
                        f"throughput {qps:.0f} ops/s (need {MINIMAL_QPS:.0f})",
                        f"failover times {['%.2f' % t for t in failovers]} (limit {FAILOVER_LIMIT}s)",
                        f"server logs in {logs}",
                    ]
                )
            )
        print(report.summary())
