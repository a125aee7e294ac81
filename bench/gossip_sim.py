"""
Gossip simulation figures for issue 3, from the real memberlist core on the
simulated network (txconsul.gossip.simulation). Every figure is in virtual
time and replays exactly from its seed; wall times are indicative only.

    python bench/gossip_sim.py scale --nodes 100 1000 --seeds 1 2 3
    python bench/gossip_sim.py scale --nodes 10000 --seeds 1
    python bench/gossip_sim.py lifeguard --slow 1 2 4 8 --minutes 10 --seeds 1
    python bench/gossip_sim.py loss --nodes 1000 --loss 0.05 0.1 0.2 --minutes 5

``scale`` starts a converged pool (``SimCluster(bootstrap=True)``) at LAN
defaults with 5% packet loss, measures bytes per node per second (UDP, and
push/pull under ``GossipConfig.push_pull_budget``) over five quiet minutes
(``--window``), fires five user events from one node, kills one node, and
counts false positives over the whole run. The dissemination constant lambda is the slowest
receipt in gossip periods (0.2 s) over log10(n + 1). ``lifeguard`` is Lifeguard's experiment,
FAULTS test 8 at full size: 100 members, some of them slow (in episodes of
1-5 s, what they read and, with ``--send-late``, the default, what they send is
1-5 s late while their deadlines expire on time), with awareness and dynamic
suspicion off and on.
``loss`` is FAULTS test 9 in simulation: a converged pool under random packet
loss for some virtual minutes, a user event fired every 10 s by a random
member; it counts members wrongly declared dead and times each event's spread
to every member (lambda per event as above).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import random
import resource
import statistics
import time

import attrs

from txconsul.gossip.memberlist import GossipConfig
from txconsul.gossip.simulation import SimCluster


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@attrs.frozen
class ScaleResult:
    udp_bytes: float  # per node per second
    stream_bytes: float
    push_pull_interval: float  # node-0's, at the end of the byte window
    event_p50: float
    event_p99: float
    event_max: float
    event_reached_all: bool
    detected_by: int
    should_detect: int
    detect_median: float
    detect_max: float
    false_positives: int
    wall: float
    cpu: float


def scale(seed: int, n: int, loss: float, window: float) -> ScaleResult:
    wall, cpu = time.monotonic(), time.process_time()
    cluster = SimCluster(seed, n, loss=loss, measure_bytes=True, bootstrap=True)
    # the pool's records live for the whole run: keep the cyclic collector off them
    gc.collect()
    gc.freeze()
    cluster.run(10)  # let the staggered timers settle
    net = cluster.net
    udp0, stream0 = net.datagram_bytes, net.stream_bytes
    cluster.run(window)
    udp = (net.datagram_bytes - udp0) / n / window
    stream = (net.stream_bytes - stream0) / n / window
    interval = cluster.members["node-0"].core._push_pull_interval()
    # five user events from one member, two seconds apart
    fired: dict[int, float] = {}
    for ltime in range(1, 6):
        fired[ltime] = cluster.clock.seconds()
        cluster.fire_event("node-0", ltime, f"deploy-{ltime}", b"v1")
        cluster.run(2)
    cluster.run(8)
    latencies = [t - fired[lt] for t, who, lt in cluster.deliveries if who != "node-0"]
    reached_all = len(latencies) == 5 * (n - 1)
    # one member crashes
    victim = f"node-{n // 2}"
    killed_at = cluster.clock.seconds()
    cluster.kill(victim)
    cluster.run(60)
    detections = cluster.detections(victim)
    lat = [t - killed_at for t in detections.values()]
    gc.unfreeze()
    return ScaleResult(
        udp,
        stream,
        interval,
        percentile(latencies, 50),
        percentile(latencies, 99),
        max(latencies) if latencies else float("nan"),
        reached_all,
        len(detections),
        n - 1,
        statistics.median(lat) if lat else float("nan"),
        max(lat) if lat else float("nan"),
        len(cluster.false_positives()),
        time.monotonic() - wall,
        time.process_time() - cpu,
    )


def run_scale(args: argparse.Namespace) -> None:
    print("targets: user event to every node within 1 s (p99); killed node failed at every")
    print("node; no live node ever failed at 5% loss; bytes/node/s (UDP + push/pull) flat")
    print(f"within 20% from 100 to 1,000 nodes; 10,000 nodes complete. {budget_text()}")
    flat: dict[int, float] = {}
    stream: dict[int, float] = {}
    total: dict[int, float] = {}
    for n in args.nodes:
        results = []
        for seed in args.seeds:
            r = scale(seed, n, args.loss, args.window)
            results.append(r)
            print(
                f"  n={n} seed={seed} loss={args.loss:.0%}: "
                f"udp={r.udp_bytes:.0f} B/node/s push-pull={r.stream_bytes:.0f} B/node/s "
                f"(interval {r.push_pull_interval:.0f} s); "
                f"event p50={r.event_p50:.3f} p99={r.event_p99:.3f} max={r.event_max:.3f} s "
                f"all={r.event_reached_all}; failed at {r.detected_by}/{r.should_detect} "
                f"median={r.detect_median:.1f} max={r.detect_max:.1f} s; "
                f"false positives={r.false_positives}; wall {r.wall:.0f} s "
                f"(cpu {r.cpu:.0f} s, peak rss {peak_rss_gb():.1f} GB)",
                flush=True,
            )
        med = statistics.median
        flat[n] = med(r.udp_bytes for r in results)
        stream[n] = med(r.stream_bytes for r in results)
        total[n] = med(r.udp_bytes + r.stream_bytes for r in results)
        print(
            f"n={n} median over {len(results)} seed(s): "
            f"udp={flat[n]:.0f} B/node/s "
            f"push-pull={stream[n]:.0f} B/node/s total={total[n]:.0f} B/node/s "
            f"push/pull interval={med(r.push_pull_interval for r in results):.0f} s "
            f"event p99={med(r.event_p99 for r in results):.3f} s (target <= 1 s) "
            f"lambda={med(r.event_max for r in results) / 0.2 / math.log10(n + 1):.2f} "
            f"detected by all={all(r.detected_by == r.should_detect for r in results)} "
            f"detect median={med(r.detect_median for r in results):.1f} s "
            f"false positives={sum(r.false_positives for r in results)} (target 0)",
            flush=True,
        )
    sizes = sorted(total)
    for small, big in itertools.pairwise(sizes):
        print(
            f"{small:,} -> {big:,} nodes: total bytes/node/s {total[big] / total[small] - 1:+.1%} "
            f"(target within +-20%), udp {flat[big] / flat[small] - 1:+.1%}, "
            f"push/pull {stream[big] / stream[small] - 1:+.1%}"
        )


def budget_text() -> str:
    budget = GossipConfig.lan().push_pull_budget
    if not budget:
        return "Push/pull on memberlist's schedule alone."
    return (
        f"Push/pull interval: memberlist's scaled one, or longer so that a member's own "
        f"exchanges carry at most {budget:g} B/s."
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


@attrs.frozen
class LifeguardResult:
    healthy_fp: int  # declarations that a healthy (not slow) member is dead
    slow_fp: int  # declarations that a slow member is dead
    detect_median: float  # seen by healthy members, after 5 healthy members crash


def lifeguard(
    seed: int,
    n: int,
    slow: int,
    minutes: float,
    on: bool,
    delays: tuple[float, float],
    lengths: tuple[float, float] = (1.0, 5.0),
    send_late: bool = True,
) -> LifeguardResult:
    config = GossipConfig.lan()
    if not on:
        config = attrs.evolve(config, awareness=False, dynamic_suspicion=False)
    cluster = SimCluster(seed, n, config=config, bootstrap=True)
    cluster.run(10)
    # the same slow episodes with Lifeguard on and off
    episodes = random.Random(seed * 1000 + slow)
    slow_names = [f"node-{i}" for i in range(1, slow + 1)]
    cluster.run_with_slow_members(
        minutes * 60, slow_names, episodes, delays, lengths, send_late=send_late
    )
    wrong = cluster.false_positives()
    healthy_fp = sum(1 for d in wrong if d.subject not in slow_names)
    victims = [f"node-{n - 1 - i}" for i in range(5)]
    killed_at = cluster.clock.seconds()
    for name in victims:
        cluster.kill(name)
    cluster.run_with_slow_members(60, slow_names, episodes, delays, lengths, send_late=send_late)
    lat = [
        t - killed_at
        for v in victims
        for observer, t in cluster.detections(v).items()
        if observer not in slow_names
    ]
    return LifeguardResult(healthy_fp, len(wrong) - healthy_fp, statistics.median(lat))


def run_lifeguard(args: argparse.Namespace) -> None:
    lo, hi = args.delay
    lengths = (args.lengths[0], args.lengths[1])
    print(
        f"targets: >50x fewer false positives with Lifeguard (or zero); median detection "
        f"<= 1.5x plain SWIM and <= 12 s. n={args.n}, slow members' inbox {lo}-{hi} s late "
        f"in episodes of {lengths[0]:g}-{lengths[1]:g} s, sends late: {args.send_late}, "
        f"{args.minutes} virtual minutes per run"
    )
    med = statistics.median
    for k in args.slow:
        off = [
            lifeguard(s, args.n, k, args.minutes, False, (lo, hi), lengths, args.send_late)
            for s in args.seeds
        ]
        on = [
            lifeguard(s, args.n, k, args.minutes, True, (lo, hi), lengths, args.send_late)
            for s in args.seeds
        ]
        fp_off = sum(r.healthy_fp for r in off)
        fp_on = sum(r.healthy_fp for r in on)
        ratio = "inf (zero with Lifeguard)" if fp_on == 0 else f"{fp_off / fp_on:.0f}x"
        d_off = med(r.detect_median for r in off)
        d_on = med(r.detect_median for r in on)
        print(
            f"slow={k} seeds={len(args.seeds)}: healthy nodes declared dead "
            f"SWIM={fp_off} Lifeguard={fp_on} (fewer: {ratio}); slow nodes declared dead "
            f"SWIM={sum(r.slow_fp for r in off)} Lifeguard={sum(r.slow_fp for r in on)}; "
            f"median detection SWIM={d_off:.2f} s Lifeguard={d_on:.2f} s "
            f"({d_on / d_off:.2f}x)",
            flush=True,
        )


@attrs.frozen
class LossResult:
    false_deaths: int
    events: int
    reached_all: int
    spread_p50: float
    spread_max: float
    lambda_max: float
    wall: float
    cpu: float


def loss_run(seed: int, n: int, loss: float, minutes: float) -> LossResult:
    wall, cpu = time.monotonic(), time.process_time()
    cluster = SimCluster(seed, n, loss=loss, bootstrap=True)
    gc.collect()
    gc.freeze()
    cluster.run(10)
    rng = random.Random(seed)
    fired: dict[int, float] = {}
    end = cluster.clock.seconds() + minutes * 60
    ltime = 0
    while cluster.clock.seconds() + 10 <= end:
        ltime += 1
        fired[ltime] = cluster.clock.seconds()
        cluster.fire_event(f"node-{rng.randrange(n)}", ltime, f"event-{ltime}", b"")
        cluster.run(10)
    cluster.run(max(0.0, end - cluster.clock.seconds()))
    receipts: dict[int, list[float]] = {}
    for t, _, lt in cluster.deliveries:
        receipts.setdefault(lt, []).append(t - fired[lt])
    spreads = [max(r) for lt, r in receipts.items() if len(r) == n]
    gc.unfreeze()
    periods = cluster.config.gossip_interval * math.log10(n + 1)
    return LossResult(
        len(cluster.false_positives()),
        len(fired),
        len(spreads),
        statistics.median(spreads) if spreads else float("nan"),
        max(spreads) if spreads else float("nan"),
        max(spreads) / periods if spreads else float("nan"),
        time.monotonic() - wall,
        time.process_time() - cpu,
    )


def run_loss(args: argparse.Namespace) -> None:
    print(
        "FAULTS test 9 (simulation): 0 false deaths at 5% loss; dissemination to all "
        "members within ~lambda * log10(n + 1) gossip periods (lambda reported)"
    )
    for loss in args.loss:
        for seed in args.seeds:
            r = loss_run(seed, args.nodes, loss, args.minutes)
            print(
                f"n={args.nodes} loss={loss:.0%} seed={seed} {args.minutes:g} min: "
                f"false deaths={r.false_deaths}; events reaching all {r.reached_all}/{r.events}, "
                f"spread p50={r.spread_p50:.2f} max={r.spread_max:.2f} s, "
                f"lambda(max)={r.lambda_max:.2f}; wall {r.wall:.0f} s (cpu {r.cpu:.0f} s)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scale")
    p.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--loss", type=float, default=0.05)
    p.add_argument("--window", type=float, default=300, help="seconds of byte counting")
    p = sub.add_parser("lifeguard")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--slow", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--delay", type=float, nargs=2, default=[1.0, 5.0], help="inbox delay range")
    p.add_argument("--lengths", type=float, nargs=2, default=[1.0, 5.0], help="episode lengths")
    p.add_argument(
        "--send-late",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a slow member's sends are as late as its inbox",
    )
    p = sub.add_parser("loss")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--loss", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    if args.command == "scale":
        run_scale(args)
    elif args.command == "loss":
        run_loss(args)
    else:
        run_lifeguard(args)


if __name__ == "__main__":
    main()
