"""
KV throughput, latency and blocking-query wake-up: txconsul against etcd and
against a bare twisted.web resource, on this machine, in one run.

``python3 bench/kv.py`` starts three servers on 127.0.0.1, each on a free port:

- a txconsul dev agent (``twistd -n --pidfile= txconsul --dev``);
- etcd (Debian's ``etcd-server``), a one-member cluster driven through its v3
  JSON gateway (``POST /v3/kv/put`` and ``POST /v3/kv/range``, base64 keys and
  values), its data directory on tmpfs unless ``--etcd-data-dir`` says where;
- ``bench/ceiling.py``, a twisted.web resource answering a fixed JSON body the
  size of the agent's GET answer: what the framework alone does here.

It drives all three with the same keep-alive load generator, ``wrk`` with
``bench/kv.lua``: PUT and GET of one key with a 100-byte value at 1 and 16
concurrent clients, for ``--duration`` seconds a run, every run repeated
``--repeat`` times in an interleaved order, and each figure the median of its
runs. Then ``bench/blockers.py``, a separate process, holds 1,000 blocking
queries on one key, sends one PUT and times each wake-up (and the same with
etcd watches). It prints every figure, the ratios txconsul/etcd and
txconsul/ceiling, and whether the targets are met.

By default the servers run on CPU 0 and the load generators on CPU 1
(``--no-pin`` lets the scheduler place everything). The load generator
shares the machine with the servers either way; its CPU use is printed so
that one can see it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from txconsul.testing.process import free_port

HERE = Path(__file__).resolve().parent
LUA = HERE / "kv.lua"
KEY = "bench/key"
BLOCK_KEY = "bench/blocking"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets from the issue: ratios of txconsul to etcd at 16 clients, and the p99
# of the blocking wake-up.
AGENT_OTHER_PORTS = (
    "--dns-port",
    "--serf-lan-port",
    "--serf-wan-port",
    "--server-port",
)
TARGET_GET = 1.0
TARGET_PUT = 0.8
TARGET_WAKE_P99_MS = 200.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _set_pdeathsig() -> None:
    """Have the kernel send SIGTERM to the child if this process dies first."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _preexec(cpus: set[int] | None):
    def run() -> None:
        os.setsid()
        _set_pdeathsig()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return run


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def child_pid(pid: int) -> int:
    """The pid of the one child of ``pid`` (the server under ``timeout``)."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    return pid


@dataclass
class Server:
    """One server process, started under ``timeout`` so that it cannot outlive its bound."""

    name: str
    argv: list[str]
    port: int
    logdir: Path
    limit: float
    cpus: set[int] | None
    env: dict[str, str] | None = None
    data_dir: Path | None = None
    proc: subprocess.Popen | None = None
    pid: int = 0

    def start(self) -> None:
        log = open(self.logdir / f"{self.name}.log", "wb")
        argv = ["timeout", "-k", "5", str(int(self.limit)), *self.argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=_preexec(self.cpus),
        )
        log.close()
        self.pid = child_pid(self.proc.pid)

    def wait_ready(self, probe, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                probe()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
                time.sleep(0.2)
        tail = (self.logdir / f"{self.name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not come up on port {self.port}: {last}\n{tail}")

    def stop(self) -> None:
        """SIGTERM by pid (``timeout`` passes it on), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            if self.pid != self.proc.pid:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(resp.headers), resp.read()


@dataclass
class Target:
    """A server under load and the requests that mean GET and PUT to it."""

    name: str
    server: Server
    get: tuple[str, str, str]  # method, path, body
    put: tuple[str, str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    wrk_cpu: float
    errors: int

    @property
    def per_cpu_s(self) -> float:
        return self.rate / self.server_cpu if self.server_cpu else 0.0


@dataclass
class Results:
    runs: dict[tuple[str, str, int], list[Run]] = field(default_factory=dict)
    wake: dict[str, list[dict]] = field(default_factory=dict)

    def median(self, target: str, op: str, clients: int, attr: str) -> float | None:
        runs = self.runs.get((target, op, clients))
        if not runs:
            return None
        return statistics.median(getattr(r, attr) for r in runs)


def run_wrk(target: Target, op: str, clients: int, duration: int, opts) -> Run:
    method, path, body = target.get if op == "GET" else target.put
    threads = max(1, min(opts.wrk_threads, clients))
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(clients),
        "-d",
        f"{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        target.base + path,
        "--",
        method,
        body,
    ]
    before_srv = cpu_ticks(target.server.pid)
    before_kids = os.times()
    started = time.monotonic()
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        preexec_fn=_preexec(opts.client_cpus),
        check=True,
    ).stdout
    wall = time.monotonic() - started
    after_kids = os.times()
    srv = (cpu_ticks(target.server.pid) - before_srv) / CLK_TCK / wall
    gen = (
        (after_kids.children_user - before_kids.children_user)
        + (after_kids.children_system - before_kids.children_system)
    ) / wall
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    s = json.loads(line)
    errors = s["err_connect"] + s["err_read"] + s["err_write"] + s["err_status"] + s["err_timeout"]
    return Run(
        rate=s["requests"] / (s["duration_us"] / 1e6),
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        server_cpu=srv,
        wrk_cpu=gen,
        errors=errors,
    )


def blockers_argv(kind: str, port: int, opts) -> list[str]:
    return [
        sys.executable,
        str(HERE / "blockers.py"),
        kind,
        "--port",
        str(port),
        "--clients",
        str(opts.blockers),
        "--key",
        BLOCK_KEY,
    ]


def run_blockers(kind: str, port: int, opts) -> dict:
    argv = blockers_argv(kind, port, opts)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, preexec_fn=_preexec(opts.client_cpus)
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- profiling ---------------------------------------------------------------------


def read_gc(pid: int, path: Path) -> dict | None:
    """Ask the agent (started by run_agent.py --gc-stats) for its collector's figures."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(50):
        if path.exists():
            break
        time.sleep(0.02)
    try:
        return json.loads(path.read_text())["gc"]
    except (OSError, ValueError, KeyError):
        return None


def print_gc(before: dict | None, after: dict | None, seconds: float) -> None:
    """What the agent's garbage collector took between two readings of its stats."""
    if before is None or after is None:
        return
    parts = []
    total = 0.0
    for g in ("0", "1", "2"):
        n = after[g]["count"] - before[g]["count"]
        took = after[g]["total_s"] - before[g]["total_s"]
        total += took
        parts.append(f"gen{g} {n} x, {1000 * took:.0f} ms")
    longest = max(after[g]["max_s"] for g in ("0", "1", "2"))
    print(
        f"  garbage collector: {'; '.join(parts)}; {100 * total / seconds:.1f}% of the "
        f"{seconds:.1f} s; longest pause {1000 * longest:.0f} ms"
    )


def profile(target: Target, tmp: Path, opts) -> None:
    """py-spy the agent under GET and PUT load at 16 clients and during one wake-up."""
    gc_file = tmp / "gc.json"
    spy = shutil.which("py-spy")
    if spy is None:
        print("\n(profile: py-spy not found; pip install py-spy)")
        return
    outdir = Path(opts.profile)
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"\nProfiles of the agent (py-spy, raw stacks in {outdir}):")
    for name, op in (("get16", "GET"), ("put16", "PUT")):
        with py_spy(spy, target.server.pid, outdir / f"{name}.txt", 250, opts):
            before = read_gc(target.server.pid, gc_file)
            run = run_wrk(target, op, 16, opts.duration, opts)
            after = read_gc(target.server.pid, gc_file)
        print(f"\n{op} at 16 clients ({run.rate:.0f}/s while sampled):")
        print_gc(before, after, opts.duration)
        summarize_profile(outdir / f"{name}.txt", opts.profile_top)
    wakes = []
    for n in range(opts.repeat if opts.blockers else 0):
        out = outdir / f"wake{n + 1}.txt"
        argv = [*blockers_argv("consul", target.server.port, opts), "--go-on-stdin"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_preexec(opts.client_cpus),
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            if proc.stdout.readline().strip() != "registered":
                continue
            with py_spy(spy, target.server.pid, out, 1000, opts):
                before = read_gc(target.server.pid, gc_file)
                started = time.monotonic()
                proc.stdin.write("go\n")
                proc.stdin.flush()
                result = proc.stdout.readline().strip()
                took = time.monotonic() - started
                after = read_gc(target.server.pid, gc_file)
            print(f"\nWake-up {n + 1} of {opts.blockers} blocking queries: {result}")
            print_gc(before, after, took)
            wakes.append(out)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if wakes:
        print(f"\nDuring the {len(wakes)} wake-ups (from the PUT to the last answer):")
        summarize_profile(wakes, opts.profile_top)


@contextlib.contextmanager
def py_spy(spy: str, pid: int, out: Path, rate: int, opts):
    """Sample ``pid`` with py-spy while the block runs; raw (collapsed) stacks go to ``out``."""
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_preexec(opts.client_cpus),
    )
    try:
        time.sleep(1.0)  # attaching takes a moment
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            print(f"  py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}")


# Where a frame's file lives decides the layer it is counted in; the first match wins.
LAYERS = (
    ("txconsul/", "txconsul"),
    ("klein/", "klein"),
    ("werkzeug/", "werkzeug (routing)"),
    ("twisted/web/", "twisted.web (HTTP)"),
    ("twisted/internet/", "twisted.internet (reactor, TCP)"),
    ("twisted/python/", "twisted.python (log context, failure)"),
    ("twisted/logger/", "twisted.logger"),
    ("twisted/protocols/", "twisted.protocols (LineReceiver)"),
    ("zope/", "zope.interface (adaptation)"),
    ("encodings/", "encodings (idna)"),
    ("json/", "json"),
    ("urllib/", "urllib (query parsing)"),
)
# Frames that wrap every sample and say nothing about where the time goes.
PLUMBING = (
    "twisted/internet/",
    "twisted/python/log.py",
    "twisted/python/context.py",
    "twisted/application/",
    "twisted/scripts/",
    "run_agent.py",
)


def _frame(frame: str) -> tuple[str, str]:
    """("function (dir/file.py)", full path) of a py-spy raw frame "function (path:line)"."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:]) if parts else path})", path


def _layer(path: str) -> str:
    for needle, layer in LAYERS:
        if needle in path:
            return layer
    return "other (" + (Path(path).name or "?") + ")"


def summarize_profile(raw: Path | list[Path], top: int) -> None:
    """Self time by layer and by function, and inclusive time of the frames that matter."""
    self_c: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    lines = [
        ln for p in ([raw] if isinstance(raw, Path) else raw) for ln in p.read_text().splitlines()
    ]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [
            _frame(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames or (frames[-1][0].startswith("poll (") and "epoll" in frames[-1][1]):
            continue  # waiting in epoll: idle, not work
        n = int(count)
        total += n
        self_c[frames[-1][0]] += n
        layers[_layer(frames[-1][1])] += n
        for name in {name for name, path in frames if not any(p in path for p in PLUMBING)}:
            incl[name] += n
    if not total:
        print("  (no busy samples)")
        return
    print(f"  {total} busy samples; self time by layer:")
    for layer, n in layers.most_common():
        print(f"    {100 * n / total:5.1f}%  {layer}")
    print("  self time by function:")
    for name, n in self_c.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")
    print("  inclusive (time in the function and what it calls; reactor plumbing left out):")
    for name, n in incl.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")


# -- the run -------------------------------------------------------------------------


def start_servers(tmp: Path, started: list[Server], opts) -> dict[str, Target]:
    """Start the agent, etcd and the ceiling; each goes into ``started`` before it runs."""
    server_cpus = opts.server_cpus
    limit = opts.server_limit
    value = b"v" * opts.value_size
    targets: dict[str, Target] = {}

    agent_port = free_port()
    agent = Server(
        "txconsul",
        [
            sys.executable,
            str(HERE / "run_agent.py"),
            *(["--gc-stats", str(tmp / "gc.json")] if opts.profile else []),
            "-n",
            "--pidfile=",
            "txconsul",
            "--dev",
            "--http-port",
            str(agent_port),
            # Every other listener on a free port too, so that the bench never
            # meets another agent on this machine on a default port.
            *[a for flag in AGENT_OTHER_PORTS for a in (flag, str(free_port()))],
        ],
        agent_port,
        tmp,
        limit,
        server_cpus,
    )
    started.append(agent)
    agent.start()
    targets["txconsul"] = Target(
        "txconsul",
        agent,
        get=("GET", f"/v1/kv/{KEY}", ""),
        put=("PUT", f"/v1/kv/{KEY}", value.decode()),
    )
    if not opts.no_etcd:
        client, peer = free_port(), free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="bench-etcd-", dir=opts.etcd_data_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        cu, pu = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        etcd = Server(
            "etcd",
            [
                opts.etcd,
                "--name",
                "bench",
                "--data-dir",
                str(data_dir),
                "--listen-client-urls",
                cu,
                "--advertise-client-urls",
                cu,
                "--listen-peer-urls",
                pu,
                "--initial-advertise-peer-urls",
                pu,
                "--initial-cluster",
                f"bench={pu}",
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                f"bench-{os.getpid()}",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ],
            client,
            tmp,
            limit,
            server_cpus,
            env=env,
        )
        etcd.data_dir = data_dir
        started.append(etcd)
        etcd.start()
        targets["etcd"] = Target(
            "etcd",
            etcd,
            get=("POST", "/v3/kv/range", json.dumps({"key": b64(KEY.encode())})),
            put=("POST", "/v3/kv/put", json.dumps({"key": b64(KEY.encode()), "value": b64(value)})),
        )

    # The agent's GET answer sets the size of the ceiling's fixed body.
    agent.wait_ready(lambda: http("PUT", f"{targets['txconsul'].base}/v1/kv/{KEY}", value))
    _, answer = http("GET", f"{targets['txconsul'].base}/v1/kv/{KEY}")
    ceiling_port = free_port()
    ceiling = Server(
        "ceiling",
        [sys.executable, str(HERE / "ceiling.py"), str(ceiling_port), str(len(answer))],
        ceiling_port,
        tmp,
        limit,
        server_cpus,
    )
    started.append(ceiling)
    ceiling.start()
    targets["ceiling"] = Target(
        "ceiling", ceiling, get=("GET", "/", ""), put=("PUT", "/", value.decode())
    )
    ceiling.wait_ready(lambda: http("GET", f"{targets['ceiling'].base}/"))
    if "etcd" in targets:
        t = targets["etcd"]
        t.server.wait_ready(lambda: http("POST", t.base + t.put[1], t.put[2].encode()))
        _, got = http("POST", t.base + t.get[1], t.get[2].encode())
        kvs = json.loads(got).get("kvs", [])
        assert kvs and base64.b64decode(kvs[0]["value"]) == value, got
    print(f"GET answer of the agent: {len(answer)} bytes; the ceiling answers the same size")
    return targets


def measure(targets: dict[str, Target], opts) -> Results:
    res = Results()
    # Warm-up: a short run of each kind per server, not counted.
    for t in targets.values():
        for op in ("PUT", "GET"):
            run_wrk(t, op, 16, 1, opts)
    for r in range(opts.repeat):
        for op in ("GET", "PUT"):
            for clients in opts.clients:
                for t in targets.values():
                    run = run_wrk(t, op, clients, opts.duration, opts)
                    res.runs.setdefault((t.name, op, clients), []).append(run)
                    print(
                        f"  run {r + 1}/{opts.repeat} {op} c={clients:<3d} {t.name:9s}"
                        f" {run.rate:9.0f}/s p50 {run.p50_ms:7.3f} ms p99 {run.p99_ms:7.3f} ms"
                        f"  cpu server {run.server_cpu:4.0%} wrk {run.wrk_cpu:4.0%}"
                        + (f"  ERRORS {run.errors}" if run.errors else ""),
                        flush=True,
                    )
        if opts.blockers:
            w = run_blockers("consul", targets["txconsul"].server.port, opts)
            res.wake.setdefault("txconsul", []).append(w)
            print(f"  run {r + 1}/{opts.repeat} wake-up txconsul {w}", flush=True)
            if "etcd" in targets and not opts.no_etcd_watch:
                w = run_blockers("etcd", targets["etcd"].server.port, opts)
                res.wake.setdefault("etcd", []).append(w)
                print(f"  run {r + 1}/{opts.repeat} wake-up etcd     {w}", flush=True)
    return res


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def report(res: Results, targets: dict[str, Target], opts) -> None:
    names = list(targets)
    print(
        f"\nMedians of {opts.repeat} runs of {opts.duration:g} s "
        f"(rate in requests/s, latency in ms):"
    )
    head = f"{'op':4s} {'c':>3s} " + "".join(
        f"{n + ' rate':>15s} {'p50':>7s} {'p99':>7s}" for n in names
    )
    head += f" {'tx/etcd':>8s} {'tx/ceil':>8s}"
    print(head)
    for op in ("GET", "PUT"):
        for c in opts.clients:
            row = f"{op:4s} {c:3d} "
            for n in names:
                row += (
                    f"{res.median(n, op, c, 'rate'):15.0f} {res.median(n, op, c, 'p50_ms'):7.3f}"
                    f" {res.median(n, op, c, 'p99_ms'):7.3f}"
                )
            tx = res.median("txconsul", op, c, "rate")
            row += f" {ratio(tx, res.median('etcd', op, c, 'rate')):>8s}"
            row += f" {ratio(tx, res.median('ceiling', op, c, 'rate')):>8s}"
            print(row)
    print(
        "\nRequests per second of server CPU (rate / CPU use; less sensitive to other load "
        "on the machine):"
    )
    for op in ("GET", "PUT"):
        for c in opts.clients:
            eff = {n: res.median(n, op, c, "per_cpu_s") for n in names}
            cells = "  ".join(f"{n} {eff[n]:8.0f}" for n in names)
            print(
                f"  {op} c={c:<3d} {cells}  tx/etcd {ratio(eff.get('txconsul'), eff.get('etcd'))}"
                f"  tx/ceil {ratio(eff.get('txconsul'), eff.get('ceiling'))}"
            )
    print("\nCPU use during the runs (median, 1.0 = one core busy):")
    for op in ("GET", "PUT"):
        for c in opts.clients:
            cells = "  ".join(
                f"{n} {res.median(n, op, c, 'server_cpu'):.2f} / wrk {res.median(n, op, c, 'wrk_cpu'):.2f}"
                for n in names
            )
            print(f"  {op} c={c:<3d} {cells}")
    errs = sum(r.errors for runs in res.runs.values() for r in runs)
    if errs:
        print(f"\nWARNING: wrk counted {errs} errors (non-2xx answers, timeouts, resets)")

    for kind, runs in res.wake.items():
        ok = [w for w in runs if "p99_ms" in w]
        if not ok:
            print(f"\nWake-up {kind}: failed: {runs}")
            continue
        med = {
            k: statistics.median(w[k] for w in ok)
            for k in ("p50_ms", "p99_ms", "max_ms", "put_ack_ms")
        }
        answered = min(w["answered"] for w in ok)
        what = "blocking queries" if kind == "txconsul" else "watches (POST /v3/watch)"
        print(
            f"\nWake-up of {opts.blockers} {what} on one key after one PUT, ms from sending "
            f"the PUT (median of {len(ok)}): p50 {med['p50_ms']:.1f}  p99 {med['p99_ms']:.1f}  "
            f"max {med['max_ms']:.1f}  PUT answered after {med['put_ack_ms']:.1f}; "
            f"answered {answered}/{opts.blockers}; registration verified: "
            f"{all(w.get('verified_registered') for w in ok)}"
        )

    print("\nTargets:")
    for op, target in (("GET", TARGET_GET), ("PUT", TARGET_PUT)):
        c = max(opts.clients)
        tx, et = res.median("txconsul", op, c, "rate"), res.median("etcd", op, c, "rate")
        if tx is None or et is None:
            continue
        verdict = "met" if tx / et >= target else "MISSED"
        print(f"  {op} at {c} clients >= {target:.1f}x etcd: {tx / et:.2f}x  {verdict}")
    tx_wake = [w for w in res.wake.get("txconsul", []) if "p99_ms" in w]
    if tx_wake:
        p99 = statistics.median(w["p99_ms"] for w in tx_wake)
        all_answered = all(w["answered"] == opts.blockers for w in tx_wake)
        verdict = "met" if p99 <= TARGET_WAKE_P99_MS and all_answered else "MISSED"
        print(f"  wake-up p99 <= {TARGET_WAKE_P99_MS:.0f} ms: {p99:.1f} ms  {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="KV PUT/GET throughput and latency and blocking-query wake-up of a "
        "txconsul dev agent, against etcd and a bare twisted.web resource, in one run.",
        epilog="Needs wrk and etcd (apt-get install wrk etcd-server). The load generator "
        "runs on the same machine as the servers.",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown (3)")
    p.add_argument("--duration", type=int, default=4, help="whole seconds per wrk run (4)")
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="comma-separated concurrent connections (1,16)",
    )
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (100)")
    p.add_argument(
        "--blockers",
        type=int,
        default=1000,
        help="blocking queries held on one key for the wake-up test; 0 skips it (1000)",
    )
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1; at most 2 here)")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin servers to CPU 0 and load generators to CPU 1",
    )
    p.add_argument("--no-etcd", action="store_true", help="skip etcd")
    p.add_argument("--no-etcd-watch", action="store_true", help="skip etcd's watch wake-up test")
    p.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd", help="etcd binary")
    p.add_argument(
        "--etcd-data-dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where etcd's temporary data directory goes (/dev/shm, tmpfs, since the "
        "dev agent keeps its data in memory)",
    )
    p.add_argument(
        "--server-limit",
        type=float,
        default=900,
        help="seconds after which every server is killed regardless (900)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="afterwards, record the agent with py-spy under GET and PUT load and "
        "during a wake-up, write raw stacks to DIR and print the top functions",
    )
    p.add_argument("--profile-top", type=int, default=15, help="functions shown per profile")
    opts = p.parse_args(argv)
    ncpu = len(os.sched_getaffinity(0))
    if opts.no_pin or ncpu < 2:
        opts.server_cpus = opts.client_cpus = None
    else:
        cpus = sorted(os.sched_getaffinity(0))
        opts.server_cpus, opts.client_cpus = {cpus[0]}, {cpus[1]}
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for tool in ("wrk", "timeout") + (() if opts.no_etcd else (opts.etcd,)):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install -y wrk etcd-server)", file=sys.stderr)
            return 2
    etcd_version = ""
    if not opts.no_etcd:
        etcd_version = subprocess.run(
            [opts.etcd, "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    print(
        f"bench/kv.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"{os.uname().nodename}  {os.cpu_count()} CPUs  Python {sys.version.split()[0]}"
    )
    print(
        f"  {etcd_version}, v3 JSON gateway (POST /v3/kv/put, /v3/kv/range, /v3/watch), "
        f"data dir under {opts.etcd_data_dir or tempfile.gettempdir()}"
    )
    print(
        f"  load: {(wrk_version.stdout or wrk_version.stderr).split()[0:2]} "
        f"{opts.wrk_threads} thread(s), keep-alive, {opts.value_size}-byte values; "
        f"wake-up client: bench/blockers.py (asyncio)"
    )
    if opts.server_cpus:
        print(
            f"  pinned: servers on CPU {sorted(opts.server_cpus)}, load generators on CPU "
            f"{sorted(opts.client_cpus)}; they share the machine"
        )
    else:
        print("  not pinned: servers and load generators share all CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-kv-"))
    started: list[Server] = []
    try:
        targets = start_servers(tmp, started, opts)
        res = measure(targets, opts)
        report(res, targets, opts)
        if opts.profile:
            profile(targets["txconsul"], tmp, opts)
    finally:
        for server in started:
            server.stop()
        for server in started:
            if server.data_dir is not None:
                shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
