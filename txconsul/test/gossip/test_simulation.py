"""
Whole-cluster simulations of the memberlist core (txconsul.gossip.simulation),
on the heap clock and the in-memory network. Each test runs a fixed seed plus
``TXCONSUL_SEED`` when set; every failure message says how to replay it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txconsul.gossip.simulation import SimCluster, seed_from_env
from txconsul.testing.simclock import SimClock


def replay(seed: int) -> str:
    return f"replay with TXCONSUL_SEED={seed}"


class SimClockTests(SynchronousTestCase):
    def test_calls_run_at_their_own_deadline_in_order(self) -> None:
        clock = SimClock()
        seen: list[tuple[str, float]] = []
        clock.callLater(2.0, lambda: seen.append(("b", clock.seconds())))
        clock.callLater(1.0, lambda: seen.append(("a", clock.seconds())))
        clock.advance(5)
        self.assertEqual(seen, [("a", 1.0), ("b", 2.0)])
        self.assertEqual(clock.seconds(), 5.0)

    def test_reset_and_cancel(self) -> None:
        clock = SimClock()
        seen: list[float] = []
        call = clock.callLater(1.0, lambda: seen.append(clock.seconds()))
        call.reset(3.0)
        clock.advance(2)
        self.assertEqual(seen, [])
        clock.advance(2)
        self.assertEqual(seen, [3.0])
        other = clock.callLater(1.0, seen.append, -1.0)
        other.cancel()
        clock.advance(5)
        self.assertEqual(seen, [3.0])
        self.assertEqual(clock.getDelayedCalls(), [])


class ClusterTests(SynchronousTestCase):
    seed = seed_from_env(7)

    def test_hundred_members_converge_after_joining(self) -> None:
        cluster = SimCluster(self.seed, 100)
        when = cluster.run_until_converged(30)
        self.assertIsNotNone(when, replay(self.seed))

    def test_killed_member_is_declared_dead_by_everyone(self) -> None:
        cluster = SimCluster(self.seed, 30)
        self.assertIsNotNone(cluster.run_until_converged(30), replay(self.seed))
        killed_at = cluster.clock.seconds()
        cluster.kill("node-5")
        cluster.run(40)
        detections = cluster.detections("node-5")
        self.assertEqual(len(detections), 29, replay(self.seed))
        slowest = max(detections.values()) - killed_at
        self.assertLess(slowest, 30, replay(self.seed))
        self.assertTrue(cluster.converged(), replay(self.seed))
        self.assertEqual(cluster.false_positives(), [], replay(self.seed))

    def test_no_false_positives_at_five_percent_loss(self) -> None:
        cluster = SimCluster(self.seed, 100, loss=0.05)
        self.assertIsNotNone(cluster.run_until_converged(60), replay(self.seed))
        cluster.run(60)
        self.assertEqual(cluster.false_positives(), [], replay(self.seed))

    def test_partition_heals_and_members_rejoin(self) -> None:
        cluster = SimCluster(self.seed, 12)
        self.assertIsNotNone(cluster.run_until_converged(30), replay(self.seed))
        side = [cluster.address_of(i) for i in range(3)]
        rest = [cluster.address_of(i) for i in range(3, 12)]
        cluster.net.partition(side, rest)
        cluster.run(20)
        self.assertTrue(cluster.false_positives(), "a partition should look like failures")
        cluster.net.heal()
        # members are still gossiped to for GossipToTheDeadTime, and refute their death
        self.assertIsNotNone(cluster.run_until_converged(60), replay(self.seed))

    def test_same_seed_same_history(self) -> None:
        def history(seed: int) -> list[tuple[float, str, str, int]]:
            cluster = SimCluster(seed, 20, loss=0.1)
            cluster.run(5)
            cluster.kill("node-3")
            cluster.run(25)
            return cluster.trace()

        first = history(self.seed)
        self.assertTrue(first, replay(self.seed))
        self.assertEqual(first, history(self.seed), replay(self.seed))
