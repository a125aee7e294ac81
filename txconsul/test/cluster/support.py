"""
What the real-process cluster tests share: the seed and scale knobs, and the
end-of-run checks (final reads, catch-up, lost writes, the linearizability
checker) with a failure report that names the seed and keeps the evidence.
"""

from __future__ import annotations

import json
import os
import random
import time

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.task import deferLater

from txconsul.testing.linearizability import Get, KVModel, Operation, Verdict, check
from txconsul.testing.process import ServerProcess, http_json
from txconsul.testing.register import history_to_json, lost_writes

#: how long the checker may search before the verdict is "unknown" (a failure)
CHECK_TIMEOUT = 60.0


def seed_from_env() -> int:
    """``TXCONSUL_SEED`` if set (a replay), else a fresh one."""
    given = os.environ.get("TXCONSUL_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 31)


def scale() -> float:
    """``TXCONSUL_FAULT_SCALE`` (default 1): the long runs multiply the fault count by it."""
    return float(os.environ.get("TXCONSUL_FAULT_SCALE", "1"))


class Report:
    """A run's facts, printed on failure together with the seed; evidence goes to ``directory``."""

    def __init__(self, name: str, seed: int, directory: str) -> None:
        self.name = name
        self.seed = seed
        self.directory = directory
        self.lines: list[str] = []
        self.started = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(f"[{time.monotonic() - self.started:6.1f}s] {line}")
        print(f"{self.name}: {line}")

    def summary(self) -> str:
        return "\n".join(
            [f"{self.name} (replay the schedule with TXCONSUL_SEED={self.seed})", *self.lines]
        )

    def keep(self, filename: str, text: str) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.abspath(os.path.join(self.directory, filename))
        with open(path, "w") as f:
            f.write(text)
        return path


def verify_history(report: Report, history: list[Operation], final: dict[str, object]) -> str:
    """
    Check a finished run: no acknowledged write lost, and the history (which
    includes the final reads) linearizable. Returns "" or a failure text.
    """
    problems = []
    lost = lost_writes(history, final)
    if lost:
        problems.append(
            f"{len(lost)} acknowledged writes lost, e.g.:\n"
            + "\n".join(f"  {op!r} (final {final[op.input.key]!r})" for op in lost[:10])  # type: ignore[attr-defined]
        )
    result = check(KVModel(), history, timeout=CHECK_TIMEOUT)
    report.add(
        f"checker: {result.verdict.value}, {len(history)} operations "
        f"({sum(op.unknown for op in history)} of unknown outcome) in {result.elapsed:.1f}s"
    )
    if result.verdict is not Verdict.LINEARIZABLE:
        problems.append(result.explain())
    if not problems:
        return ""
    path = report.keep("history.json", json.dumps(history_to_json(history)))
    return "\n".join([report.summary(), *problems, f"history kept in {path}"])


def final_reads(history: list[Operation]) -> dict[str, object]:
    """The values the final reads saw, by key (the last completed read of each key)."""
    final: dict[str, object] = {}
    for op in history:
        if isinstance(op.input, Get) and not op.unknown and op.client == "final":
            final[op.input.key] = op.output
    return final


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def first_write(servers: list[ServerProcess], key: str, limit: float) -> float:
    """Seconds until one of ``servers`` acknowledges a PUT of ``key`` (trying each in turn)."""
    start = time.monotonic()
    attempt = 0
    while time.monotonic() - start < limit:
        server = servers[attempt % len(servers)]
        attempt += 1
        try:
            code, body = await http_json("PUT", f"{server.url}/v1/kv/{key}", b"probe")
            if code == 200 and body is True:
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - timed out or refused: try the next one
            pass
        await sleep(0.05)
    return float("inf")


async def new_leader(servers: list[ServerProcess], limit: float) -> float:
    """Seconds until one of ``servers`` names one of them as the leader."""
    start = time.monotonic()
    addresses = {s.rpc_address for s in servers}
    while time.monotonic() - start < limit:
        for server in servers:
            try:
                if await server.leader(timeout=0.5) in addresses:
                    return time.monotonic() - start
            except Exception:  # noqa: BLE001 - busy: ask again
                pass
        await sleep(0.02)
    return float("inf")


async def caught_up(server: ServerProcess, final: dict[str, object]) -> bool:
    """Whether ``server``'s own store (``?stale``) holds the final value of every key."""
    for key, value in final.items():
        try:
            code, body = await http_json("GET", f"{server.url}/v1/kv/{key}?stale&raw")
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        got = None if code == 404 else body if isinstance(body, str) else str(body)
        if got != value:
            return False
    return True
