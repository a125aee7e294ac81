"""
Seeded simulations of 3- and 5-server Raft clusters under partitions, loss,
reordering, delays, pauses and crashes with restarts (txconsul.test.raft.sim).

A failure names its seed; ``TXCONSUL_SEED=<n> trial txconsul.test.raft`` replays it.
``bench/raft_sim.py`` runs many more seeds.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from txconsul.raft.core import Role
from txconsul.test.raft.sim import Faults, SafetyViolation, Simulation, seeds_from_env
from txconsul.testing.linearizability import Verdict

#: seeds that once failed, kept as regression cases, then a fixed sweep
REGRESSIONS = [1, 189, 232, 513, 713]
THREE_SERVER_SEEDS = 800
FIVE_SERVER_SEEDS = 200
#: virtual seconds of faults and client load per schedule (about 170 client operations)
SECONDS = 15.0
#: seconds the checker may search one history before its verdict is "unknown" (a failure)
CHECK_TIMEOUT = 60.0


QUIET = Faults(
    loss=0.0, crashes=False, partitions=False, pauses=False, membership=False, transfers=False
)


def fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


class SimulationTests(SynchronousTestCase):
    def run_seeds(self, seeds: list[int], size: int, **kw) -> None:
        for seed in seeds_from_env(seeds):
            sim = Simulation(seed, size=size, **kw)
            sim.run(SECONDS)
            self.assertTrue(sim.leaders, f"no leader ever (TXCONSUL_SEED={seed})")
            # a history the checker could not decide proves nothing; the budget is
            # far above the slowest seen (1.4 s on a loaded 2-core machine)
            verdict = sim.check_linearizable(timeout=CHECK_TIMEOUT)
            self.assertIs(verdict, Verdict.LINEARIZABLE, f"TXCONSUL_SEED={seed}")

    def test_three_servers_stay_safe_under_faults(self) -> None:
        self.run_seeds(
            REGRESSIONS + list(range(1000, 1000 + THREE_SERVER_SEEDS)) + [fresh_seed()], 3
        )

    def test_five_servers_stay_safe_under_faults(self) -> None:
        self.run_seeds(list(range(5000, 5000 + FIVE_SERVER_SEEDS)) + [fresh_seed()], 5)

    def test_clocks_drifting_within_the_lease_margin(self) -> None:
        # the lease (0.8 s) against the election timeout (1 s) leaves room for +-10 % rates
        self.run_seeds(list(range(7000, 7100)), 3, faults=Faults(drift=0.1))

    def test_messages_through_the_codec(self) -> None:
        self.run_seeds(list(range(9000, 9010)), 3, faults=Faults(wire=True))

    def test_same_seed_same_history(self) -> None:
        a, b = Simulation(42), Simulation(42)
        a.run(10.0)
        b.run(10.0)
        self.assertEqual(a.trace, b.trace)
        self.assertEqual(a.ops, b.ops)
        self.assertEqual(a.committed, b.committed)

    def test_acknowledged_writes_happen_without_faults(self) -> None:
        sim = Simulation(7, faults=QUIET)
        sim.run(10.0)
        self.assertEqual(len(sim.leaders), 1)
        puts = [op for op in sim.ops if op.kind == "put"]
        self.assertTrue(puts)
        self.assertEqual([op for op in puts if op.ret is None], [])

    def test_a_leader_is_elected_and_survives_a_crash(self) -> None:
        sim = Simulation(3, faults=QUIET)
        sim.clock.advance(3.0)
        leader = sim._leader()
        assert leader is not None
        sim.crash(leader.name)
        sim.clock.advance(4.0)
        new = sim._leader()
        assert new is not None
        self.assertNotEqual(new.name, leader.name)
        self.assertIs(new.core.role, Role.LEADER)
        self.assertGreater(new.core.term, leader.core.term)


class PlantedBugTests(SynchronousTestCase):
    """The checks must catch known bugs, or a clean run proves nothing (FAULTS.md test 1)."""

    def caught(self, bug: str, seeds: range) -> int:
        count = 0
        for seed in seeds:
            sim = Simulation(seed, bug=bug)
            try:
                sim.run(SECONDS)
                sim.check_linearizable()
            except SafetyViolation:
                count += 1
        return count

    def test_reads_without_the_lease_are_caught(self) -> None:
        self.assertGreater(self.caught("no-lease", range(50)), 0)

    def test_followers_answering_default_reads_are_caught(self) -> None:
        self.assertGreater(self.caught("follower-read", range(10)), 0)
