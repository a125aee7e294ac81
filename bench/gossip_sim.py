"""
Gossip simulation figures (issue 3): convergence, failure detection, false
positives under loss, bytes per node per second, and Lifeguard on/off with
slow members. Runs the real memberlist core on the simulated network.

    python bench/gossip_sim.py --nodes 100 1000 --loss 0.05 --seed 1
    python bench/gossip_sim.py --lifeguard --nodes 100 --slow 1 2 4 8 --minutes 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import attrs

from txconsul.gossip.memberlist import GossipConfig
from txconsul.gossip.simulation import SimCluster


def membership(seed: int, n: int, loss: float, seconds: float) -> None:
    wall = time.monotonic()
    cluster = SimCluster(seed, n, loss=loss, measure_bytes=True)
    converged = cluster.run_until_converged(120, step=0.5)
    start_bytes = sum(cluster.net.bytes_sent.values())
    t0 = cluster.clock.seconds()
    victim = f"node-{n // 2}"
    cluster.kill(victim)
    cluster.run(seconds)
    detections = cluster.detections(victim)
    lat = sorted(t - t0 for t in detections.values())
    per_node = (sum(cluster.net.bytes_sent.values()) - start_bytes) / n / seconds
    print(
        f"n={n} loss={loss:.0%} converged_at={converged} s "
        f"detected_by={len(detections)}/{n - 1} "
        f"detect_median={statistics.median(lat) if lat else None:.2f} s "
        f"detect_max={max(lat) if lat else None:.2f} s "
        f"false_positives={len(cluster.false_positives())} "
        f"bytes_per_node_per_s={per_node:.0f} wall={time.monotonic() - wall:.1f} s"
    )


def lifeguard(seed: int, n: int, slow: int, minutes: float, on: bool) -> tuple[int, float]:
    config = GossipConfig.lan()
    if not on:
        config = attrs.evolve(config, awareness=False, dynamic_suspicion=False)
    cluster = SimCluster(seed, n, config=config)
    cluster.run_until_converged(120, step=0.5)
    rng = cluster.rng
    slow_members = [cluster.members[f"node-{i}"] for i in range(1, slow + 1)]
    end = cluster.clock.seconds() + minutes * 60
    while cluster.clock.seconds() < end:
        for member in slow_members:
            if member.slow_until <= cluster.clock.seconds() and rng.random() < 0.2:
                member.slow_until = cluster.clock.seconds() + rng.uniform(1, 5)
        cluster.run(1.0)
    healthy_fp = [d for d in cluster.false_positives()]
    # true detections: crash 5 members, measure median detection
    t0 = cluster.clock.seconds()
    victims = [f"node-{n - 1 - i}" for i in range(5)]
    for name in victims:
        cluster.kill(name)
    cluster.run(60)
    lat = [t - t0 for v in victims for t in cluster.detections(v).values()]
    return len(healthy_fp), statistics.median(lat) if lat else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[100])
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lifeguard", action="store_true")
    parser.add_argument("--slow", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    if args.lifeguard:
        for n in args.nodes:
            for k in args.slow:
                off = lifeguard(args.seed, n, k, args.minutes, on=False)
                on = lifeguard(args.seed, n, k, args.minutes, on=True)
                print(
                    f"n={n} slow={k} FP off={off[0]} on={on[0]} "
                    f"median detection off={off[1]:.2f} s on={on[1]:.2f} s"
                )
        return
    for n in args.nodes:
        membership(args.seed, n, args.loss, args.seconds)


if __name__ == "__main__":
    main()
