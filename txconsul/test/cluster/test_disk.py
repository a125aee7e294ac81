"""
FAULTS.md test 7, real processes: a server whose fsync starts failing.

The LD_PRELOAD shim of FAULTS.md 1.1 (``txconsul.testing.faults``) is built
with gcc into the test's directory and loaded into the servers; touching a
server's arm file makes every later ``fsync``/``fdatasync`` of that process
fail with EIO, while a register workload runs. What must hold:

- a single server acknowledges no write called after its disk failed;
- in a cluster of three, the other two elect a new leader that serves writes
  within 5 s, and the broken server never leads again;
- after the broken server is killed and restarted on a healthy disk, no
  acknowledged write is lost and the history passes the checker.

A third test flips one bit of a follower's log entry on disk while it is
down: the entry's checksum finds it, the log is truncated there and fetched
again from the leader, and the follower never serves the corrupt value.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.test.cluster.support import (
    Report,
    caught_up,
    final_reads,
    first_write,
    new_leader,
    seed_from_env,
    sleep,
    verify_history,
)
from txconsul.testing.faults import (
    SHIM_MARK,
    ShimUnavailable,
    build_fsync_shim,
    fsync_failure_env,
)
from txconsul.testing.process import ServerCluster, ServerProcess, http_json
from txconsul.testing.register import Client, RegisterWorkload

FAILOVER_LIMIT = 5.0


class FsyncFailureTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def build_shim(self) -> str:
        try:
            return build_fsync_shim(os.path.join(self.base, "shim"))
        except ShimUnavailable as e:
            if os.environ.get("CI") == "true":
                self.fail(f"{e} (.ci/run installs gcc)")
            raise SkipTest(str(e)) from e

    def cluster(self, n: int) -> tuple[ServerCluster, list[str]]:
        self.shim = self.build_shim()
        arms = [os.path.join(self.base, f"arm-s{i + 1}") for i in range(n)]
        env = {i: fsync_failure_env(self.shim, arms[i]) for i in range(n)}
        cluster = ServerCluster(reactor, self.base, n=n, env=env)
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        cluster.start()
        return cluster, arms

    async def break_disk(self, server: ServerProcess, arm: str, report: Report) -> float:
        """Arm the shim; the monotonic time at which the first fsync failed."""
        open(arm, "w").close()
        armed = time.monotonic()
        while server.proto is not None and SHIM_MARK not in server.proto.output:
            if time.monotonic() - armed > 10:
                self.fail(f"no fsync of {server.name} failed within 10s of arming the shim")
            await sleep(0.01)
        failed = time.monotonic()
        report.add(f"{server.name}: first fsync failed {failed - armed:.2f}s after arming")
        return failed

    async def heal_and_check(
        self,
        report: Report,
        cluster: ServerCluster,
        broken: ServerProcess,
        workload: RegisterWorkload,
    ) -> None:
        """Kill -9 the broken server, restart it on a sound disk, check the outcome."""
        ended = "still running" if broken.running else f"exited ({broken.proto.exit_code})"  # type: ignore[union-attr]
        report.add(f"{broken.name} after the failure: {ended}")
        await broken.stop(signal.SIGKILL)
        broken.env = {}
        cluster.start(broken)
        leader = await cluster.wait_for_leader(limit=30)
        for key in workload.keys:
            await workload.read("final", leader.url, key, "consistent")
        history = workload.operations()
        final = final_reads(history)
        behind = []
        for server in cluster.servers:
            end = time.monotonic() + 15
            while not await caught_up(server, final) and time.monotonic() < end:
                await sleep(0.1)
            if not await caught_up(server, final):
                behind.append(server.name)
        report.add(f"operations: {dict(sorted(workload.counts.items()))}")
        failure = verify_history(report, history, final)
        missing = sorted(set(workload.keys) - set(final))
        if failure or behind or missing:
            logs = report.keep("servers.log", cluster.outputs(tail=200_000))
            self.fail(
                f"{failure or report.summary()}\nservers behind: {behind}, keys without a "
                f"final read: {missing}\nserver logs in {logs}"
            )
        print(report.summary())

    async def test_a_single_server_acknowledges_no_write_after_its_fsync_fails(self) -> None:
        seed = seed_from_env()
        report = Report("fsync-single", seed, self.base)
        cluster, arms = self.cluster(1)
        server = await cluster.wait_for_leader(limit=30)
        clients = [Client(f"p{i}", [server.url]) for i in range(4)]
        workload = RegisterWorkload(reactor, random.Random(seed), clients, keys=5)
        self.addCleanup(lambda: ensureDeferred(workload.close()))
        stopping = False
        running = ensureDeferred(workload.run(lambda: stopping))
        try:
            await sleep(1.5)
            failed = await self.break_disk(server, arms[0], report)
            await sleep(1.0)
        finally:
            stopping = True
            await running
        for i in range(5):  # and a few more, one at a time
            try:
                await workload.write("after", server.url, workload.keys[i])
            except Exception:  # noqa: BLE001 - unknown outcome, recorded
                pass
        before = [w for w in workload.writes if w.called < failed and w.outcome is True]
        after = [w for w in workload.writes if w.called > failed]
        acknowledged = [w for w in after if w.outcome is True]
        report.add(
            f"{len(before)} writes acknowledged before the failure; "
            f"{len(after)} called after it, {len(acknowledged)} of them acknowledged"
        )
        self.assertTrue(before, report.summary())
        self.assertTrue(after, report.summary())
        self.assertEqual(acknowledged, [], report.summary())
        await self.heal_and_check(report, cluster, server, workload)

    async def test_a_leader_whose_fsync_fails_gives_way_and_loses_nothing(self) -> None:
        seed = seed_from_env()
        report = Report("fsync-leader", seed, self.base)
        cluster, arms = self.cluster(3)
        leader = await cluster.wait_for_leader(limit=40)
        urls = [s.url for s in cluster.servers]
        clients = [Client(f"p{i}", [urls[i % 3]]) for i in range(6)]
        workload = RegisterWorkload(reactor, random.Random(seed), clients, keys=5)
        self.addCleanup(lambda: ensureDeferred(workload.close()))
        stopping = False
        running = ensureDeferred(workload.run(lambda: stopping))
        rest = [s for s in cluster.servers if s is not leader]
        try:
            await sleep(1.5)
            failed = await self.break_disk(leader, arms[cluster.servers.index(leader)], report)
            elected = await new_leader(rest, limit=15)
            wrote = await first_write(rest, "probe/after-fsync-failure", limit=15)
            took = time.monotonic() - failed
            report.add(
                f"new leader known {elected:.2f}s and a write acknowledged "
                f"{took:.2f}s after the failure"
            )
            self.assertLessEqual(wrote, FAILOVER_LIMIT, report.summary())
            # the broken server never leads again while its disk is broken
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                named = await cluster.leader(among=rest)
                self.assertIsNot(named, leader, report.summary())
                await sleep(0.2)
        finally:
            stopping = True
            await running
        await self.heal_and_check(report, cluster, leader, workload)


class BitFlipTests(TestCase):
    timeout = 90

    async def flip_a_followers_entry(self) -> tuple[ServerCluster, ServerProcess, int, dict]:
        """Write 30 keys, stop a follower, flip one bit of one of its log entries on disk."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.report = Report("bit-flip", 0, base)
        cluster = ServerCluster(reactor, base)
        self.addCleanup(lambda: ensureDeferred(cluster.stop()))
        cluster.start()
        leader = await cluster.wait_for_leader(limit=40)
        written = {f"flip/{i}": f"value-{i}" for i in range(30)}
        for key, value in written.items():
            code, body = await http_json("PUT", f"{leader.url}/v1/kv/{key}", value.encode(), 5)
            self.assertEqual((code, body), (200, True))
        follower = next(s for s in cluster.servers if s is not leader)
        end = time.monotonic() + 15
        while not await caught_up(follower, written):
            self.assertLess(time.monotonic(), end, "the follower did not catch up")
            await sleep(0.1)
        await follower.stop(signal.SIGKILL)
        # one bit of the entry that wrote value-15, on disk, its checksum untouched
        db = sqlite3.connect(os.path.join(follower.data_dir, "raft", "raft.db"))
        try:
            rows = db.execute("SELECT idx, command FROM log").fetchall()
            index, command = next((i, c) for i, c in rows if b"value-15" in c)
            at = command.index(b"value-15")
            flipped = command[:at] + bytes([command[at] ^ 0x02]) + command[at + 1 :]
            db.execute("UPDATE log SET command = ? WHERE idx = ?", (flipped, index))
            db.commit()
        finally:
            db.close()
        self.report.add(f"{follower.name}: flipped a bit of log entry {index} (value-15: talue-15)")
        cluster.start(follower)
        return cluster, follower, index, written

    async def test_a_flipped_bit_in_a_followers_log_is_found_and_never_served(self) -> None:
        cluster, follower, index, written = await self.flip_a_followers_entry()
        found = f"bad or missing entry at {index}"
        end = time.monotonic() + 30
        while found not in follower.output():
            if time.monotonic() > end:
                logs = self.report.keep("servers.log", cluster.outputs(tail=200_000))
                self.fail(f"{follower.name} never reported the bad entry; logs in {logs}")
            await sleep(0.1)
        seen: set[object] = set()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            for key in written:
                try:
                    code, body = await http_json("GET", f"{follower.url}/v1/kv/{key}?stale&raw")
                except Exception:  # noqa: BLE001 - starting
                    continue
                if code == 200:
                    seen.add(body)
            await sleep(0.1)
        self.assertEqual(seen - set(written.values()), set(), "the follower served a corrupt value")
        print(self.report.summary())

    async def test_a_follower_that_truncated_its_log_catches_up_from_the_leader(self) -> None:
        cluster, follower, index, written = await self.flip_a_followers_entry()
        end = time.monotonic() + 20
        while not await caught_up(follower, written):
            if time.monotonic() > end:
                logs = self.report.keep("servers.log", cluster.outputs(tail=200_000))
                self.fail(
                    f"{self.report.summary()}\n{follower.name} did not catch up; logs in {logs}"
                )
            await sleep(0.1)
