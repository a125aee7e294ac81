"""
A 3-server txconsul cluster against a 3-member etcd cluster: replicated KV
PUT throughput and latency, fsyncs per write, and failover after kill -9.

``python3 bench/raft.py`` starts, on 127.0.0.1 with free ports and data
directories on disk (both fsync every commit):

- three ``twistd -n txconsul --server --bootstrap-expect 3`` processes,
  each joining the others (``txconsul.testing.process.ServerProcess`` gives
  their flags), with an LD_PRELOAD shim built here with gcc that counts the
  process's ``fsync`` and ``fdatasync`` calls in a shared counter file;
- three etcd members (Debian's ``etcd-server``) forming one cluster, driven
  through the v3 JSON gateway (``POST /v3/kv/put``), as ``bench/kv.py`` does.

Then:

1. ``wrk`` with ``bench/kv.lua`` PUTs a 100-byte value to one key on each
   cluster's leader at 1, 16 and 64 concurrent keep-alive connections, for
   ``--duration`` seconds, ``--repeat`` times interleaved; the medians of
   rate, p50 and p99 are shown with the ratio txconsul/etcd. For txconsul
   the fsyncs of the leader and of the followers during each run are divided
   by the writes acknowledged in it.
2. ``--kills`` times per cluster: the leader gets SIGKILL; the time until a
   survivor names a survivor as leader, and until a survivor acknowledges a
   PUT, is measured (polling every 20 ms, 0.5 s timeouts); the killed server
   restarts on its data and the cluster is whole again before the next kill.

Every process runs under ``timeout`` and dies with this one. By default the
servers share CPU 0 and wrk runs on CPU 1, as in ``bench/kv.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from kv import CLK_TCK, LUA, _preexec, child_pid, cpu_ticks, free_port  # noqa: E402

from txconsul.testing.process import ServerProcess  # noqa: E402

KEY = "bench/raft"
TARGET_PUT_64 = 0.5

COUNTER_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static long *counter;

__attribute__((constructor)) static void setup(void) {
    const char *path = getenv("FSYNC_COUNTER");
    if (!path)
        return;
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        return;
    if (ftruncate(fd, sizeof *counter) == 0) {
        void *p = mmap(0, sizeof *counter, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED)
            counter = p;
    }
    close(fd);
}

static void count(void) {
    if (counter)
        __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    count();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    count();
    return real(fd);
}
"""


def build_counter(tmp: Path) -> Path | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    src, lib = tmp / "fsynccount.c", tmp / "fsynccount.so"
    src.write_text(COUNTER_SHIM)
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
        capture_output=True,
        text=True,
    )
    return lib if done.returncode == 0 else None


def request(
    method: str, url: str, body: bytes | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- one server process of either kind ------------------------------------------------


@dataclass
class Member:
    name: str
    argv: list[str]
    http_port: int
    logdir: Path
    opts: argparse.Namespace
    env: dict[str, str] = field(default_factory=dict)
    counter: Path | None = None
    proc: subprocess.Popen | None = None
    pid: int = 0
    #: the member's own identity in its cluster (RPC address, etcd member id)
    ident: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        log = open(self.logdir / f"{self.name}.log", "ab")
        argv = ["timeout", "-k", "5", str(int(self.opts.server_limit)), *self.argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            preexec_fn=_preexec(self.opts.server_cpus),
        )
        log.close()
        self.pid = child_pid(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the server itself (``timeout`` then ends too)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in {self.pid, self.proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def fsyncs(self) -> int:
        if self.counter is None or not self.counter.exists():
            return 0
        data = self.counter.read_bytes()
        return int.from_bytes(data[:8], "little") if len(data) >= 8 else 0

    def cpu(self) -> int:
        try:
            return cpu_ticks(self.pid)
        except OSError:
            return 0


class Cluster:
    name = ""
    members: list[Member]

    def put_request(self, value: bytes) -> tuple[str, str, str]:
        raise NotImplementedError

    def leader(self, among: list[Member] | None = None, timeout: float = 0.5) -> Member | None:
        raise NotImplementedError

    def put(self, member: Member, value: bytes, timeout: float = 1.0) -> bool:
        raise NotImplementedError

    def wait_whole(self, limit: float = 60.0) -> Member:
        """Until every member agrees on a leader that acknowledges a write."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    tail = (m.logdir / f"{m.name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{m.name} exited:\n{tail}")
            leader = self.leader()
            if leader is not None:
                try:
                    if self.put(leader, b"ready"):
                        return leader
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no leader within {limit}s")


class TxconsulCluster(Cluster):
    name = "txconsul"

    def __init__(self, tmp: Path, opts: argparse.Namespace, shim: Path | None) -> None:
        base = tmp / "txconsul"
        servers = [ServerProcess(f"s{i + 1}", "127.0.0.1", str(base), 3) for i in range(3)]
        self.members = []
        for s in servers:
            join = [o.lan_address for o in servers if o is not s]
            argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
            # args() leaves the ports out (spawn_twistd adds them in the tests)
            ports = [a for flag, port in s.ports.items() for a in (f"--{flag}", str(port))]
            argv += ["-n", "--pidfile=", "txconsul", *ports, *s.args(join)]
            counter = tmp / f"fsyncs-{s.name}"
            env = {"LD_PRELOAD": str(shim), "FSYNC_COUNTER": str(counter)} if shim else {}
            self.members.append(
                Member(
                    f"txconsul-{s.name}",
                    argv,
                    s.ports["http-port"],
                    tmp,
                    opts,
                    env,
                    counter if shim else None,
                    ident=s.rpc_address,
                )
            )

    def put_request(self, value: bytes) -> tuple[str, str, str]:
        return ("PUT", f"/v1/kv/{KEY}", value.decode())

    def leader(self, among: list[Member] | None = None, timeout: float = 0.5) -> Member | None:
        names = set()
        for m in among or self.members:
            try:
                code, body = request("GET", m.base + "/v1/status/leader", timeout=timeout)
            except OSError:
                return None
            names.add(json.loads(body) if code == 200 else "")
        if len(names) != 1:
            return None
        name = names.pop()
        return next((m for m in self.members if m.ident == name), None)

    def put(self, member: Member, value: bytes, timeout: float = 1.0) -> bool:
        code, body = request("PUT", f"{member.base}/v1/kv/{KEY}", value, timeout)
        return code == 200 and body.strip() == b"true"


class EtcdCluster(Cluster):
    name = "etcd"

    def __init__(self, tmp: Path, opts: argparse.Namespace) -> None:
        peers = [free_port() for _ in range(3)]
        clients = [free_port() for _ in range(3)]
        initial = ",".join(f"e{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        env = {k: "" for k in os.environ if k.startswith("ETCD")}
        self.members = []
        for i in range(3):
            data = tmp / "etcd" / f"e{i + 1}"
            data.parent.mkdir(parents=True, exist_ok=True)
            cu, pu = f"http://127.0.0.1:{clients[i]}", f"http://127.0.0.1:{peers[i]}"
            argv = [opts.etcd, "--name", f"e{i + 1}", "--data-dir", str(data)]
            argv += ["--listen-client-urls", cu, "--advertise-client-urls", cu]
            argv += ["--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu]
            argv += ["--initial-cluster", initial, "--initial-cluster-state", "new"]
            argv += ["--initial-cluster-token", f"bench-raft-{os.getpid()}"]
            argv += ["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
            self.members.append(Member(f"etcd-e{i + 1}", argv, clients[i], tmp, opts, env))

    def put_request(self, value: bytes) -> tuple[str, str, str]:
        return ("POST", "/v3/kv/put", json.dumps({"key": b64(KEY.encode()), "value": b64(value)}))

    def status(self, m: Member, timeout: float) -> tuple[str, str]:
        code, body = request("POST", m.base + "/v3/maintenance/status", b"{}", timeout)
        if code != 200:
            return "", ""
        s = json.loads(body)
        return str(s["header"]["member_id"]), str(s.get("leader", ""))

    def leader(self, among: list[Member] | None = None, timeout: float = 0.5) -> Member | None:
        leaders = set()
        for m in among or self.members:
            try:
                me, leader = self.status(m, timeout)
            except OSError:
                return None
            m.ident = me
            leaders.add(leader)
        if len(leaders) != 1:
            return None
        lead = leaders.pop()
        return next((m for m in self.members if m.ident == lead and lead), None)

    def put(self, member: Member, value: bytes, timeout: float = 1.0) -> bool:
        _, path, body = self.put_request(value)
        code, _ = request("POST", member.base + path, body.encode(), timeout)
        return code == 200


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    #: fsyncs per acknowledged write on the leader and on each follower (txconsul)
    leader_fsyncs: float | None = None
    follower_fsyncs: float | None = None
    cpu: float = 0.0


def run_wrk(cluster: Cluster, leader: Member, clients: int, opts: argparse.Namespace) -> Run:
    method, path, body = cluster.put_request(b"v" * opts.value_size)
    argv = ["wrk", "-t", "1", "-c", str(clients), "-d", f"{opts.duration}s", "--timeout", "5s"]
    argv += ["-s", str(LUA), leader.base + path, "--", method, body]
    followers = [m for m in cluster.members if m is not leader]
    before = {m.name: m.fsyncs() for m in cluster.members}
    cpu_before = sum(m.cpu() for m in cluster.members)
    started = time.monotonic()
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=opts.duration + 30,
        preexec_fn=_preexec(opts.client_cpus),
        check=True,
    ).stdout
    wall = time.monotonic() - started
    cpu = (sum(m.cpu() for m in cluster.members) - cpu_before) / CLK_TCK / wall
    s = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    errors = s["err_connect"] + s["err_read"] + s["err_write"] + s["err_status"] + s["err_timeout"]
    writes = max(s["requests"] - s["err_status"], 1)
    run = Run(
        s["requests"] / (s["duration_us"] / 1e6), s["p50_us"] / 1000, s["p99_us"] / 1000, errors
    )
    run.cpu = cpu
    if leader.counter is not None:
        run.leader_fsyncs = (leader.fsyncs() - before[leader.name]) / writes
        run.follower_fsyncs = statistics.mean(
            (m.fsyncs() - before[m.name]) / writes for m in followers
        )
    return run


def failover(cluster: Cluster, opts: argparse.Namespace) -> tuple[float, float]:
    """Kill -9 the leader; seconds until a new leader is named and until it writes."""
    leader = cluster.wait_whole()
    rest = [m for m in cluster.members if m is not leader]
    leader.kill()
    t0 = time.monotonic()
    elected = written = float("inf")
    attempt = 0
    while time.monotonic() - t0 < 20 and written == float("inf"):
        if elected == float("inf"):
            new = cluster.leader(rest, timeout=0.5)
            if new is not None and new is not leader:
                elected = time.monotonic() - t0
        target = rest[attempt % 2]
        attempt += 1
        try:
            if cluster.put(target, b"after-kill", timeout=0.5):
                written = time.monotonic() - t0
                elected = min(elected, written)
        except OSError:
            pass
        time.sleep(0.02)
    leader.start()
    cluster.wait_whole()
    return elected, written


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, medians shown (3)")
    p.add_argument("--duration", type=int, default=4, help="seconds per wrk run (4)")
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 64],
        help="comma-separated concurrent connections (1,16,64)",
    )
    p.add_argument("--kills", type=int, default=5, help="leader kills per cluster (5)")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--no-pin", action="store_true", help="let the scheduler place everything")
    p.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    p.add_argument("--data-dir", default=None, help="parent of the data directories (on disk)")
    p.add_argument(
        "--server-limit", type=float, default=1200, help="seconds before any server dies"
    )
    opts = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if opts.no_pin or len(cpus) < 2:
        opts.server_cpus = opts.client_cpus = None
    else:
        opts.server_cpus, opts.client_cpus = {cpus[0]}, {cpus[1]}
    for tool in ("wrk", "timeout", opts.etcd):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install -y wrk etcd-server)", file=sys.stderr)
            return 2
    etcd_version = subprocess.run([opts.etcd, "--version"], capture_output=True, text=True)
    print(
        f"bench/raft.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
        f"Python {sys.version.split()[0]}  {etcd_version.stdout.splitlines()[0]}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-raft-", dir=opts.data_dir))
    print(f"  data on disk under {tmp}; " + (
        f"servers on CPU {sorted(opts.server_cpus)}, wrk on CPU {sorted(opts.client_cpus)}"
        if opts.server_cpus else "not pinned"
    ))  # fmt: skip
    shim = build_counter(tmp)
    if shim is None:
        print("  no C compiler: fsyncs are not counted (apt-get install gcc)")
    clusters: list[Cluster] = [TxconsulCluster(tmp, opts, shim), EtcdCluster(tmp, opts)]
    runs: dict[tuple[str, int], list[Run]] = {}
    failovers: dict[str, list[tuple[float, float]]] = {}
    try:
        for c in clusters:
            for m in c.members:
                m.start()
        leaders = {c.name: c.wait_whole() for c in clusters}
        print("  leaders: " + ", ".join(f"{n} {m.name}" for n, m in leaders.items()))
        for c in clusters:  # warm-up, not counted
            run_wrk(c, leaders[c.name], 16, argparse.Namespace(**{**vars(opts), "duration": 1}))
        for r in range(opts.repeat):
            for clients in opts.clients:
                for c in clusters:
                    run = run_wrk(c, leaders[c.name], clients, opts)
                    runs.setdefault((c.name, clients), []).append(run)
                    fs = (
                        f"  fsyncs/write leader {run.leader_fsyncs:.3f} follower {run.follower_fsyncs:.3f}"
                        if run.leader_fsyncs is not None
                        else ""
                    )
                    print(
                        f"  run {r + 1}/{opts.repeat} PUT c={clients:<3d} {c.name:9s}"
                        f"{run.rate:8.0f}/s p50 {run.p50_ms:7.2f} ms p99 {run.p99_ms:7.2f} ms"
                        f"  cpu {run.cpu:4.2f}{fs}"
                        + (f"  ERRORS {run.errors}" if run.errors else ""),
                        flush=True,
                    )
        for i in range(opts.kills):
            for c in clusters:
                elected, written = failover(c, opts)
                failovers.setdefault(c.name, []).append((elected, written))
                print(
                    f"  kill {i + 1}/{opts.kills} {c.name:9s} leader named after {elected:.2f} s, "
                    f"write acknowledged after {written:.2f} s",
                    flush=True,
                )
    finally:
        for c in clusters:
            for m in c.members:
                m.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nPUT to the leader, medians of {opts.repeat} runs of {opts.duration} s:")
    print(f"{'clients':>7s} {'txconsul/s':>10s} {'p50':>7s} {'p99':>7s} {'etcd/s':>8s} "
          f"{'p50':>7s} {'p99':>7s} {'tx/etcd':>7s} {'fsyncs/write leader':>20s} {'follower':>8s}")  # fmt: skip
    for clients in opts.clients:
        tx, et = runs[("txconsul", clients)], runs[("etcd", clients)]
        lf = [r.leader_fsyncs for r in tx if r.leader_fsyncs is not None]
        ff = [r.follower_fsyncs for r in tx if r.follower_fsyncs is not None]
        rate_tx, rate_et = med([r.rate for r in tx]), med([r.rate for r in et])
        print(
            f"{clients:7d} {rate_tx:10.0f} {med([r.p50_ms for r in tx]):7.2f} "
            f"{med([r.p99_ms for r in tx]):7.2f} {rate_et:8.0f} {med([r.p50_ms for r in et]):7.2f} "
            f"{med([r.p99_ms for r in et]):7.2f} {rate_tx / rate_et:6.2f}x "
            f"{med(lf) if lf else float('nan'):20.3f} {med(ff) if ff else float('nan'):8.3f}"
        )
    print(f"\nFailover after kill -9 of the leader ({opts.kills} kills each), seconds:")
    for name, times in failovers.items():
        named = [t[0] for t in times]
        wrote = [t[1] for t in times]
        print(
            f"  {name:9s} new leader named: median {med(named):.2f} max {max(named):.2f};  "
            f"first write: median {med(wrote):.2f} max {max(wrote):.2f}"
        )
    print("\nTargets:")
    c = max(opts.clients)
    ratio = med([r.rate for r in runs[("txconsul", c)]]) / med([r.rate for r in runs[("etcd", c)]])
    verdict = "met" if ratio >= TARGET_PUT_64 else "MISSED"
    print(f"  PUT at {c} clients >= {TARGET_PUT_64}x etcd: {ratio:.2f}x  {verdict}")
    lf = [r.leader_fsyncs for r in runs[("txconsul", c)] if r.leader_fsyncs is not None]
    if lf:
        verdict = "met" if med(lf) < 1 else "MISSED"
        print(f"  fsyncs per write on the leader at {c} clients below 1: {med(lf):.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
