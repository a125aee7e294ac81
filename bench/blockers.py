"""
Wake-up latency of many blocked readers after one write.

``python3 bench/blockers.py consul|etcd --port P --clients 1000`` opens one
keep-alive connection for the writer and CLIENTS more, each holding one
blocked read on the same key: a Consul blocking query
(``GET /v1/kv/K?index=N&wait=30s``) or an etcd v3 watch over the JSON gateway
(``POST /v3/watch``, a streamed answer). Once every read is known to be
registered it sends a single PUT and records, for each reader, the time from
sending the PUT to the complete answer (Consul) or to the event (etcd).
It prints one JSON line; ``bench/kv.py`` runs it as a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import resource
import subprocess
import sys
import time

PERF = time.perf_counter


class Conn(asyncio.Protocol):
    """One HTTP/1.1 connection that keeps what arrives and says when an answer is whole."""

    def __init__(self, done_when) -> None:
        self.buf = bytearray()
        self.done_when = done_when
        self.answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.first_at: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = PERF()
        if self.first_at is None:
            self.first_at = now
        self.buf += data
        if not self.answered.done() and self.done_when(self.buf):
            self.answered.set_result(now)

    def connection_lost(self, exc) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"closed: {exc}"))

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def reset(self, done_when) -> None:
        self.buf = bytearray()
        self.done_when = done_when
        self.first_at = None
        self.answered = asyncio.get_running_loop().create_future()


def whole_response(buf: bytearray) -> bool:
    """A complete HTTP answer: Content-Length satisfied, or the last chunk seen."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(buf[:end]).lower()
    m = re.search(rb"content-length:\s*(\d+)", head)
    if m:
        return len(buf) - end - 4 >= int(m.group(1))
    return buf.endswith(b"0\r\n\r\n")


def body_of(buf: bytearray) -> bytes:
    """The body of a whole answer, chunks joined."""
    end = buf.find(b"\r\n\r\n")
    head, rest = bytes(buf[:end]).lower(), bytes(buf[end + 4 :])
    if b"transfer-encoding: chunked" not in head:
        return rest
    out = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def request(method: str, path: str, body: bytes = b"", ctype: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body or method in ("PUT", "POST"):
        head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def connect(host: str, port: int, done_when) -> Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Conn(done_when), host, port)
    return proto


async def ask(conn: Conn, data: bytes, timeout: float = 10.0) -> bytes:
    conn.reset(whole_response)
    conn.send(data)
    await asyncio.wait_for(asyncio.shield(conn.answered), timeout)
    return bytes(conn.buf)


def server_queues(port: int) -> list[int] | None:
    """Recv-Q of every established server-side socket on ``port``, or None without ss."""
    try:
        out = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [int(line.split()[0]) for line in out.splitlines() if line.strip()]


async def open_many(
    n: int,
    host: str,
    port: int,
    parallel: int,
    done_when,
    first: bytes,
) -> list[Conn]:
    """Open ``n`` connections, at most ``parallel`` connecting at once, each sending ``first``."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> Conn:
        async with gate:
            conn = await connect(host, port, done_when)
        conn.send(first)
        return conn

    return list(await asyncio.gather(*(one() for _ in range(n))))


def percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    v = sorted(values_ms)

    def pick(q: float) -> float:
        return v[min(len(v) - 1, max(0, round(q * len(v) + 0.5) - 1))]

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": v[-1], "min_ms": v[0]}


async def run(opts) -> None:
    host, port, n = "127.0.0.1", opts.port, opts.clients
    value = b"v" * opts.value_size
    key = opts.key
    if opts.kind == "consul":
        put = request("PUT", f"/v1/kv/{key}", value, "application/octet-stream")
    else:
        put = request(
            "POST",
            "/v3/kv/put",
            json.dumps({"key": b64(key.encode()), "value": b64(value)}).encode(),
        )

    writer = await connect(host, port, whole_response)
    answer = await ask(writer, put)
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"first PUT failed: {answer[:200]!r}")

    started = PERF()
    if opts.kind == "consul":
        answer = await ask(writer, request("GET", f"/v1/kv/{key}"))
        index = int(re.search(rb"(?i)x-consul-index:\s*(\d+)", answer).group(1))
        blocked = request("GET", f"/v1/kv/{key}?index={index}&wait={opts.wait}s")
        readers = await open_many(n, host, port, opts.parallel, whole_response, blocked)
    else:
        watch = request(
            "POST", "/v3/watch", json.dumps({"create_request": {"key": b64(key.encode())}}).encode()
        )
        readers = await open_many(
            n, host, port, opts.parallel, lambda buf: b'"created":true' in buf, watch
        )
        # A watch is registered once the gateway has said "created".
        await asyncio.wait_for(asyncio.gather(*(r.answered for r in readers)), 30)
        for r in readers:
            r.reset(lambda buf: b'"events"' in buf)
    connected_s = PERF() - started

    # Registered: every request has been read by the server (Recv-Q empty on all of
    # its sockets), nobody has been answered yet, and a short settle has passed.
    verified = None
    deadline = PERF() + 20
    while PERF() < deadline:
        await asyncio.sleep(0.1)
        queues = server_queues(port)
        if queues is None:
            break
        if len(queues) >= n + 1 and not any(queues):
            verified = True
            break
    else:
        verified = False
    await asyncio.sleep(opts.settle)
    if opts.go_on_stdin:
        # Let a profiler attach to the server now, and only time the wake-up.
        print("registered", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    early = sum(1 for r in readers if r.answered.done())
    if early:
        raise SystemExit(f"{early} blocked reads were answered before the PUT")

    t0 = PERF()
    writer.reset(whole_response)
    writer.send(put)
    results = await asyncio.wait_for(
        asyncio.gather(*(r.answered for r in readers), return_exceptions=True), opts.timeout
    )
    ack = await asyncio.wait_for(asyncio.shield(writer.answered), opts.timeout)

    lat = [(t - t0) * 1000 for t in results if isinstance(t, float)]
    failed = [str(t) for t in results if not isinstance(t, float)]
    bad = 0
    if opts.kind == "consul":
        bad = sum(1 for r in readers if not r.buf.startswith(b"HTTP/1.1 200"))
        sample = body_of(readers[0].buf)
        if value not in base64.b64decode(json.loads(sample)[0]["Value"]):
            bad += 1
    # Print before closing the connections, so that a profiler stopped on this
    # line has not seen the server tear them down.
    print(
        json.dumps(
            {
                "kind": opts.kind,
                "clients": n,
                "answered": len(lat),
                "failed": len(failed),
                "bad": bad,
                "verified_registered": verified,
                "connect_s": round(connected_s, 3),
                "put_ack_ms": round((ack - t0) * 1000, 3),
                **{k: round(v, 3) for k, v in percentiles(lat).items()},
                "errors": failed[:3],
            }
        ),
        flush=True,
    )
    for r in readers + [writer]:
        if r.transport is not None:
            r.transport.close()
    await asyncio.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["consul", "etcd"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--key", default="bench/blocking")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--wait", type=int, default=30, help="blocking query wait, seconds")
    p.add_argument("--parallel", type=int, default=32, help="connections opened at once")
    p.add_argument("--settle", type=float, default=0.5, help="seconds to wait after registering")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument(
        "--go-on-stdin",
        action="store_true",
        help='print "registered" once the reads are held, and PUT after a line on stdin',
    )
    opts = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = opts.clients + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"ulimit -n is {hard}; {need} descriptors are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    asyncio.run(run(opts))


if __name__ == "__main__":
    main()
