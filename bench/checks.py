"""
Health checks at scale on one agent: CPU, check runs per second, and writes.

``python3 bench/checks.py`` starts, each on free ports of 127.0.0.1:

- ``bench/checks_target.py``, a twisted.web service that the HTTP checks ask
  (``/h/<n>``: 200, or 500 while the bench has marked ``n`` down) and that
  counts the requests it serves;
- a txconsul dev agent (``twistd -n --pidfile= txconsul --dev``, through
  ``bench/run_agent.py``) with ``--config-dir`` holding one generated file:
  ``enable_script_checks``/``enable_local_script_checks`` true, 1,000 script
  checks and 2,000 HTTP checks, all at a 10 s interval. Each script run appends
  one byte to a counter file, so the file's size is the number of script runs.

Once every check has reported passing, it samples for ``--samples`` intervals
with nothing changing, then as many intervals during which ``--flap`` percent
of the checks change status each interval (a new block of checks is marked
down at the start of each interval). Each interval is one sample, and every
figure printed is the median of the samples of its phase:

- CPU of the agent process (utime+stime of its threads, from /proc/<pid>/stat)
  as a share of one core, and beside it the CPU of the check scripts it reaped
  (cutime+cstime);
- check runs per second: script runs from the counter file, HTTP runs from
  the target's count;
- writes per minute from the agent to the servers: the growth of the log
  index (a read-only ``/v1/txn`` answers it in ``X-Consul-Index``; the dev
  agent's one-server log gives each write the next index).

The machine's own load (all CPUs, from /proc/stat) is printed beside the
figures, since other work may share it. Every process is stopped by its pid
when the run ends, and each server runs under ``timeout`` so that none can
outlive a crashed bench.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kv import AGENT_OTHER_PORTS, CLK_TCK, Server, free_port, http

HERE = Path(__file__).resolve().parent

SCRIPT = """#!/bin/sh
printf . >> {runs}
[ -e {down}/s$1 ] && exit 2
exit 0
"""


def agent_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime, cutime+cstime) of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class Snapshot:
    at: float
    script_runs: int
    http_runs: int
    agent_cpu: int
    scripts_cpu: int
    target_cpu: int
    index: int
    busy: int
    total: int


@dataclass
class Sample:
    seconds: float
    agent_cpu: float
    scripts_cpu: float
    target_cpu: float
    script_rate: float
    http_rate: float
    writes_per_min: float
    machine_busy: float

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Sample:
        dt = b.at - a.at
        return cls(
            seconds=dt,
            agent_cpu=(b.agent_cpu - a.agent_cpu) / CLK_TCK / dt,
            scripts_cpu=(b.scripts_cpu - a.scripts_cpu) / CLK_TCK / dt,
            target_cpu=(b.target_cpu - a.target_cpu) / CLK_TCK / dt,
            script_rate=(b.script_runs - a.script_runs) / dt,
            http_rate=(b.http_runs - a.http_runs) / dt,
            writes_per_min=(b.index - a.index) * 60 / dt,
            machine_busy=(b.busy - a.busy) / max(1, b.total - a.total),
        )


class Bench:
    def __init__(self, tmp: Path, opts: argparse.Namespace) -> None:
        self.tmp = tmp
        self.opts = opts
        self.runs_file = tmp / "script-runs"
        self.down = tmp / "down"
        self.down.mkdir()
        self.runs_file.touch()
        self.started: list[Server] = []
        self.agent: Server | None = None
        self.target: Server | None = None

    # -- setup ---------------------------------------------------------------------

    def write_config(self, target_port: int) -> Path:
        script = self.tmp / "check.sh"
        script.write_text(SCRIPT.format(runs=self.runs_file, down=self.down))
        script.chmod(0o755)
        interval = f"{self.opts.interval:g}s"
        checks = [
            {"id": f"s{n}", "name": f"script {n}", "args": [str(script), str(n)]}
            for n in range(self.opts.scripts)
        ]
        checks += [
            {"id": f"h{n}", "name": f"http {n}", "http": f"http://127.0.0.1:{target_port}/h/{n}"}
            for n in range(self.opts.http)
        ]
        for c in checks:
            c.update(interval=interval, timeout="5s")
        config_dir = self.tmp / "config"
        config_dir.mkdir()
        body = {
            "enable_script_checks": True,
            "enable_local_script_checks": True,
            "checks": checks,
        }
        (config_dir / "checks.json").write_text(json.dumps(body))
        return config_dir

    def start(self) -> None:
        limit = self.opts.server_limit
        target_port = free_port()
        self.target = Server(
            "target",
            [sys.executable, str(HERE / "checks_target.py"), str(target_port), str(self.down)],
            target_port,
            self.tmp,
            limit,
            None,
        )
        self.started.append(self.target)
        self.target.start()
        self.target.wait_ready(lambda: http("GET", self.target_url("/_count")))
        config_dir = self.write_config(target_port)
        port = free_port()
        self.agent = Server(
            "txconsul",
            [
                sys.executable,
                str(HERE / "run_agent.py"),
                "-n",
                "--pidfile=",
                "txconsul",
                "--dev",
                "--config-dir",
                str(config_dir),
                "--http-port",
                str(port),
                *[a for flag in AGENT_OTHER_PORTS for a in (flag, str(free_port()))],
            ],
            port,
            self.tmp,
            limit,
            None,
        )
        self.started.append(self.agent)
        self.agent.start()
        started = time.monotonic()
        self.agent.wait_ready(self.all_registered, seconds=120)
        print(f"  agent up with {self.total} checks in {time.monotonic() - started:.1f} s")

    @property
    def total(self) -> int:
        return int(self.opts.scripts + self.opts.http)

    def agent_url(self, path: str) -> str:
        assert self.agent is not None
        return f"http://127.0.0.1:{self.agent.port}{path}"

    def target_url(self, path: str) -> str:
        assert self.target is not None
        return f"http://127.0.0.1:{self.target.port}{path}"

    def all_registered(self) -> None:
        _, body = http("GET", self.agent_url("/v1/agent/self"))
        checks = int(json.loads(body)["Stats"]["agent"]["checks"])
        if checks < self.total:
            raise RuntimeError(f"{checks} of {self.total} checks registered")

    def critical(self) -> int:
        _, body = http("GET", self.agent_url("/v1/health/state/critical"), timeout=60)
        return len(json.loads(body))

    def wait_all_passing(self) -> None:
        """Wait for the warm-up (every check's first result) to end; on a machine
        too slow for the load it may not: go on and say so."""
        deadline = time.monotonic() + 3 * self.opts.interval + 30
        started = time.monotonic()
        left = -1
        while time.monotonic() < deadline:
            try:
                left = self.critical()
            except OSError as e:
                print(f"  (health query failed: {e})")
            if left == 0:
                print(
                    f"  every check passing {time.monotonic() - started:.1f} s after registration"
                )
                return
            time.sleep(1)
        print(f"  WARNING: {left} checks still critical after the warm-up; measuring anyway")

    # -- measuring -----------------------------------------------------------------

    def log_index(self) -> int:
        """The agent's log index: a read-only txn answers it, writing nothing."""
        req = urllib.request.Request(
            self.agent_url("/v1/txn"),
            data=json.dumps([{"KV": {"Verb": "get-or-empty", "Key": "bench/none"}}]).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.headers["X-Consul-Index"])

    def snapshot(self) -> Snapshot:
        assert self.agent is not None and self.target is not None
        own, children = agent_ticks(self.agent.pid)
        target, _ = agent_ticks(self.target.pid)
        _, count = http("GET", self.target_url("/_count"))
        busy, total = machine_ticks()
        return Snapshot(
            at=time.monotonic(),
            script_runs=self.runs_file.stat().st_size,
            http_runs=int(count),
            agent_cpu=own,
            scripts_cpu=children,
            target_cpu=target,
            index=self.log_index(),
            busy=busy,
            total=total,
        )

    def phase(self, name: str, flap: bool) -> list[Sample]:
        samples = []
        before = self.snapshot()
        for k in range(self.opts.samples):
            if flap:
                self.mark_block_down(k)
            time.sleep(max(0.0, before.at + self.opts.interval - time.monotonic()))
            after = self.snapshot()
            s = Sample.between(before, after)
            samples.append(s)
            print(
                f"  {name} {k + 1}/{self.opts.samples}: agent {100 * s.agent_cpu:.0f}% "
                f"(+scripts {100 * s.scripts_cpu:.0f}%), "
                f"{s.script_rate:.0f}+{s.http_rate:.0f} runs/s, "
                f"{s.writes_per_min:.0f} writes/min, machine {100 * s.machine_busy:.0f}% busy"
            )
            before = after
        return samples

    def block(self, k: int) -> range:
        """Check numbers marked down at flap interval ``k``: one block of ``--flap`` percent."""
        blocks = round(100 / self.opts.flap)
        return range(k % blocks, max(self.opts.scripts, self.opts.http), blocks)

    def mark_block_down(self, k: int) -> None:
        for n in self.block(k):
            if n < self.opts.scripts:
                (self.down / f"s{n}").touch()
            if n < self.opts.http:
                (self.down / f"h{n}").touch()

    def expected_flaps(self) -> int:
        blocks = round(100 / self.opts.flap)
        down = {n % blocks for n in range(self.opts.samples)}
        return sum(1 for n in range(self.opts.scripts) if n % blocks in down) + sum(
            1 for n in range(self.opts.http) if n % blocks in down
        )

    def stop(self) -> None:
        for server in self.started:
            server.stop()


def median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def report(quiet: list[Sample], flapping: list[Sample], opts: argparse.Namespace) -> None:
    nominal = (opts.scripts + opts.http) / opts.interval
    flaps = (opts.scripts + opts.http) * opts.flap / 100
    print(
        f"\nMedians over {opts.samples} intervals of {opts.interval:g} s "
        f"({opts.scripts} script + {opts.http} HTTP checks; nominal {nominal:.0f} runs/s):"
    )
    print(f"  {'':34}{'nothing changes':>18}{f'{opts.flap:g}% flap':>14}")
    rows = (
        ("agent CPU (% of one core)", "agent_cpu", 100, "{:.0f}"),
        ("check scripts' CPU (reaped)", "scripts_cpu", 100, "{:.0f}"),
        ("HTTP target's CPU", "target_cpu", 100, "{:.0f}"),
        ("script check runs/s", "script_rate", 1, "{:.1f}"),
        ("HTTP check runs/s", "http_rate", 1, "{:.1f}"),
        ("writes to the servers per minute", "writes_per_min", 1, "{:.0f}"),
        ("whole machine busy (% of all CPUs)", "machine_busy", 100, "{:.0f}"),
    )
    for label, attr, scale, fmt in rows:
        q = fmt.format(scale * median(quiet, attr))
        f = fmt.format(scale * median(flapping, attr))
        print(f"  {label:34}{q:>18}{f:>14}")
    print(
        f"  expected writes/min while flapping: {flaps * 60 / opts.interval:.0f} "
        f"(one per status change, {flaps:.0f} changes per interval)"
    )
    runs = median(quiet, "script_rate") + median(quiet, "http_rate")
    print(f"  sustained {runs:.0f} of {nominal:.0f} nominal runs/s ({100 * runs / nominal:.0f}%)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU, check runs per second and catalog writes of one txconsul agent "
        "running many script and HTTP checks.",
    )
    p.add_argument("--scripts", type=int, default=1000, help="script checks (1000)")
    p.add_argument("--http", type=int, default=2000, help="HTTP checks (2000)")
    p.add_argument("--interval", type=float, default=10.0, help="check interval, s (10)")
    p.add_argument("--samples", type=int, default=6, help="intervals measured per phase (6)")
    p.add_argument("--flap", type=float, default=1.0, help="%% of checks flapping per interval (1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="100 script and 200 HTTP checks at 5 s, 3 intervals per phase",
    )
    p.add_argument(
        "--server-limit",
        type=float,
        default=600,
        help="seconds after which the agent and target are killed regardless (600)",
    )
    opts = p.parse_args(argv)
    if opts.quick:
        opts.scripts, opts.http, opts.interval, opts.samples = 100, 200, 5.0, 3
    if not 0 < opts.flap <= 100:
        p.error("--flap must be in (0, 100]")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if shutil.which("timeout") is None:
        print("timeout (coreutils) not found", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(
        f"bench/checks.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.uname().nodename}  "
        f"{os.cpu_count()} CPUs (shared; load average {load[0]:.1f} at start)  "
        f"Python {sys.version.split()[0]}"
    )
    print(
        f"  {opts.scripts} script checks (/bin/sh, one byte appended to a counter file) and "
        f"{opts.http} HTTP checks (GET of bench/checks_target.py), every {opts.interval:g} s"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-checks-"))
    bench = Bench(tmp, opts)
    try:
        bench.start()
        bench.wait_all_passing()
        # Let the warm-up's writes settle into the first interval, uncounted.
        time.sleep(2)
        quiet = bench.phase("quiet", flap=False)
        flapping = bench.phase("flap ", flap=True)
        time.sleep(opts.interval + 2)
        try:
            critical: int | str = bench.critical()
        except OSError as e:
            critical = f"unknown ({e})"
        expected = bench.expected_flaps()
        print(
            f"  critical in the catalog after the flap phase: {critical} (marked down: {expected})"
        )
        report(quiet, flapping, opts)
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
