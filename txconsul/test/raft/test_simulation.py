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
from txconsul.test.raft.sim import Faults, Simulation, seeds_from_env

#: seeds that once failed, kept as regression cases, then a fixed sweep
REGRESSIONS = [1, 189, 232, 513, 713]
THREE_SERVER_SEEDS = 400
FIVE_SERVER_SEEDS = 100


def fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


class SimulationTests(SynchronousTestCase):
    def run_seeds(self, seeds: list[int], size: int, **kw) -> None:
        for seed in seeds_from_env(seeds):
            sim = Simulation(seed, size=size, **kw)
            sim.run(20.0)
            self.assertTrue(sim.leaders, f"no leader ever (TXCONSUL_SEED={seed})")

    def test_three_servers_stay_safe_under_faults(self) -> None:
        self.run_seeds(
            REGRESSIONS + list(range(1000, 1000 + THREE_SERVER_SEEDS)) + [fresh_seed()], 3
        )

    def test_five_servers_stay_safe_under_faults(self) -> None:
        self.run_seeds(list(range(5000, 5000 + FIVE_SERVER_SEEDS)) + [fresh_seed()], 5)

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
        sim = Simulation(7, faults=Faults(loss=0.0, crashes=False, partitions=False, pauses=False))
        sim.run(10.0)
        self.assertEqual(len(sim.leaders), 1)
        puts = [op for op in sim.ops if op.kind == "put"]
        self.assertTrue(puts)
        self.assertEqual([op for op in puts if op.ret is None], [])

    def test_a_leader_is_elected_and_survives_a_crash(self) -> None:
        sim = Simulation(3, faults=Faults(loss=0.0, crashes=False, partitions=False, pauses=False))
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
