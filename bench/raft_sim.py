"""
Raft simulation sweep: many seeded schedules of 3- or 5-server clusters under
partitions, loss, reordering, delays, pauses and crashes with restarts
(txconsul.test.raft.sim), each checked for election safety, log matching,
leader completeness, state machine safety, lost acknowledged writes and, when
``txconsul.testing.linearizability`` is present, linearizability of the KV
history. Planted bugs show that the checks catch what they should.

    python bench/raft_sim.py --size 3 --seeds 10000
    python bench/raft_sim.py --size 5 --first 50000 --seeds 2000 --seconds 30
    python bench/raft_sim.py --bug no-lease --seeds 1000

A failure prints ``TXCONSUL_SEED=<n>``; ``TXCONSUL_SEED=<n> trial
txconsul.test.raft`` or ``--first n --seeds 1`` replays it.
"""

from __future__ import annotations

import argparse
import time

from txconsul.test.raft.sim import BUGS, SafetyViolation, Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--first", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual seconds of faults")
    parser.add_argument("--bug", choices=sorted(BUGS), default="")
    parser.add_argument("--no-check", action="store_true", help="skip the linearizability check")
    args = parser.parse_args()

    start = time.monotonic()
    failures: list[int] = []
    ops = acked = elections = events = 0
    checked = not args.no_check
    for seed in range(args.first, args.first + args.seeds):
        sim = Simulation(seed, size=args.size, bug=args.bug)
        try:
            sim.run(args.seconds)
            if checked:
                try:
                    sim.check_linearizable()
                except ImportError:
                    checked = False
        except SafetyViolation as e:
            failures.append(seed)
            if len(failures) <= 3:
                print(str(e)[:2000])
        ops += len(sim.ops)
        acked += len(sim.acked)
        elections += len(sim.leaders)
        events += sim.events
    wall = time.monotonic() - start
    n = args.seeds
    print(
        f"size={args.size} seeds={n} bug={args.bug or 'none'} "
        f"linearizability={'checked' if checked else 'not checked'}"
    )
    print(
        f"  per schedule: {ops / n:.0f} client ops, {acked / n:.0f} acked writes, "
        f"{elections / n:.1f} leaders, {events / n:.0f} core inputs"
    )
    print(f"  failing seeds: {len(failures)} ({failures[:20]})")
    print(f"  wall time: {wall:.1f} s ({wall / n * 1000:.0f} ms per schedule)")


if __name__ == "__main__":
    main()
