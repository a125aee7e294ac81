"""
DNS throughput and latency: a dev agent against twisted.names' own ceiling.

Starts a dev agent (``twistd -n txconsul --dev``) holding 1,000 services with
3 instances each on 1,000 nodes, and a minimal twisted.names authority
serving a static zone of the same records, both on 127.0.0.1 with free ports.
Then ``dnsperf`` (Debian package ``dnsperf``) sends the same mix of A and SRV
queries for service names and A queries for node names to each, in turns,
``--repeats`` times; the medians of queries/s and p99 latency are printed
with the agent/ceiling ratios. Every server is stopped by its pid.

    python bench/dns.py [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from txconsul.testing.process import free_port

SERVICES = 1000
INSTANCES = 3
NODES = 1000
DC = "dc1"


def node_address(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 1}"


def instances_of(s: int) -> list[int]:
    """The nodes that run service ``s``."""
    return [(s + k) % NODES for k in range(INSTANCES)]


def wait_for_dns(port: int, timeout: float = 30.0) -> None:
    """Until a UDP query for the SOA of consul gets any answer."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x06consul\x00\x00\x06\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                s.recv(512)
                return
            except OSError:
                continue
    raise RuntimeError(f"no DNS server on port {port}")


# -- the servers -----------------------------------------------------------------


def start_agent(workdir: str, procs: list[subprocess.Popen[bytes]]) -> int:
    dns_port, http_port = free_port(), free_port()
    log = open(os.path.join(workdir, "agent.log"), "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "txconsul",
            "--dev",
            "--node",
            "bench",
            "--dns-port",
            str(dns_port),
            "--http-port",
            str(http_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    procs.append(proc)
    wait_for_dns(dns_port)
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    for s in range(SERVICES):
        for n in instances_of(s):
            body = {
                "Node": f"node-{n}",
                "Address": node_address(n),
                "Service": {"ID": f"svc-{s}", "Service": f"svc-{s}", "Port": 20000 + s},
            }
            conn.request("PUT", "/v1/catalog/register", json.dumps(body))
            response = conn.getresponse()
            if response.read() != b"true":
                raise RuntimeError(f"register failed: {response.status}")
    conn.close()
    return dns_port


def start_static(workdir: str, procs: list[subprocess.Popen[bytes]]) -> int:
    port = free_port()
    log = open(os.path.join(workdir, "static.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-static", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    procs.append(proc)
    wait_for_dns(port)
    return port


def serve_static(port: int) -> None:
    """The ceiling: twisted.names' server and FileAuthority over a static zone."""
    from twisted.internet import reactor
    from twisted.names import authority, dns, server

    class StaticZone(authority.FileAuthority):
        def __init__(self) -> None:
            authority.FileAuthority.__init__(self, "")
            soa = dns.Record_SOA(b"ns.consul", b"hostmaster.consul", 1, 3600, 600, 86400, 0, 0)
            self.soa = (b"consul", soa)
            records: dict[bytes, list[object]] = {b"consul": [soa]}
            for n in range(NODES):
                a = dns.Record_A(node_address(n), 0)
                records[f"node-{n}.node.consul".encode()] = [a]
                records[f"node-{n}.node.{DC}.consul".encode()] = [a]
            for s in range(SERVICES):
                rows: list[object] = []
                for n in instances_of(s):
                    rows.append(dns.Record_A(node_address(n), 0))
                    target = f"node-{n}.node.{DC}.consul".encode()
                    rows.append(dns.Record_SRV(1, 1, 20000 + s, target, 0))
                records[f"svc-{s}.service.consul".encode()] = rows
            self.records = records

    factory = server.DNSServerFactory(authorities=[StaticZone()])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the load ----------------------------------------------------------------------


def write_queries(path: str) -> None:
    rng = random.Random(7)
    lines = []
    for s in range(SERVICES):
        lines.append(f"svc-{s}.service.consul A")
        lines.append(f"svc-{s}.service.consul SRV")
    for n in range(NODES):
        lines.append(f"node-{n}.node.consul A")
    rng.shuffle(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def dnsperf(port: int, queries: str, seconds: float, outstanding: int) -> tuple[float, float, int]:
    """(queries per second, p99 latency in ms, lost queries) of one dnsperf run."""
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            queries,
            "-l",
            str(seconds),
            "-q",
            str(outstanding),
            "-v",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    latencies = sorted(
        float(line.rsplit(None, 1)[1])
        for line in out.splitlines()
        if line.startswith("> ") and not line.rstrip().endswith(" T")
    )
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    return qps, p99, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--outstanding", type=int, default=20, help="dnsperf -q")
    parser.add_argument("--serve-static", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_static:
        serve_static(args.serve_static)
        return
    if shutil.which("dnsperf") is None:
        sys.exit("dnsperf is not installed: apt-get install dnsperf")
    workdir = tempfile.mkdtemp(prefix="txconsul-bench-dns-")
    queries = os.path.join(workdir, "queries.txt")
    write_queries(queries)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        agent_port = start_agent(workdir, procs)
        static_port = start_static(workdir, procs)
        results: dict[str, list[tuple[float, float, int]]] = {"agent": [], "static": []}
        for i in range(args.repeats):
            for name, port in (("agent", agent_port), ("static", static_port)):
                r = dnsperf(port, queries, args.seconds, args.outstanding)
                results[name].append(r)
                print(f"run {i + 1} {name:6}: {r[0]:9.0f} q/s  p99 {r[1]:6.2f} ms  lost {r[2]}")
    finally:
        for proc in procs:
            stop(proc)
    qps = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    print()
    print(f"{'':28} {'queries/s':>10} {'p99 ms':>8}")
    print(f"{'txconsul agent':28} {qps['agent']:10.0f} {p99['agent']:8.2f}")
    print(f"{'twisted.names static zone':28} {qps['static']:10.0f} {p99['static']:8.2f}")
    print(
        f"ratio agent/ceiling: throughput {qps['agent'] / qps['static']:.2f}x, "
        f"p99 latency {p99['agent'] / p99['static']:.2f}x "
        f"(medians of {args.repeats} runs of {args.seconds:g} s, dnsperf -q {args.outstanding})"
    )


if __name__ == "__main__":
    main()
