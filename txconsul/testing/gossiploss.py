# -*- test-case-name: txconsul.test.gossip.test_netloss -*-
"""
FAULTS.md test 9's real variant: gossip between real agents under random packet loss.

Run as root inside a private network namespace made for it, never in the
machine's own (it refuses)::

    unshare -n python -m txconsul.testing.gossiploss --base DIR --out RESULT.json

It brings the namespace's loopback up and starts four ``twistd`` agents at
LAN timings: a ``--dev`` server, two clients that join it, and a fourth
client alone. Once the first three list each other alive, an ``input`` rule
drops the given share of the packets (``numgen random mod 100 < PERCENT``)
whose destination port is any agent's gossip port, UDP and TCP: silent loss,
as FAULTS.md 1 asks. Under the loss, the fourth agent joins the second (a
join: an alive broadcast that must reach every member), and near the end
leaves gracefully (a serf leave intent: the serf layer's broadcast, the path
user events take; agents expose no user-event API). Throughout, every
agent's ``/v1/agent/members`` is read every 0.2 s.

The result file holds, per loss rate: every observation of a member that
never stopped listed as anything but alive (false deaths), the seconds until
all four listed the joiner alive and until the others listed it as left,
the rule's drop counter, and the agents' logs. Times count from the HTTP
request that started the join or the leave.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from txconsul.testing.netpartition import in_private_netns
from txconsul.testing.process import (
    AgentProcess,
    free_port,
    http_json,
    spawn_twistd,
    wait_for_leader,
)

TABLE = "txconsul_gossiploss"
#: /v1/agent/members statuses
ALIVE, LEFT = 1, 3


def nft(*args: str) -> str:
    done = subprocess.run(["nft", *args], check=True, capture_output=True, text=True)
    return done.stdout


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Agent:
    def __init__(self, name: str, base: str) -> None:
        self.name = name
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.http = free_port()
        self.lan = free_port()
        self.proto: AgentProcess | None = None

    def start(self, reactor: Any, *args: str) -> AgentProcess:
        orphan = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        ports = {"http-port": self.http, "serf-lan-port": self.lan, "dns-port": -1}
        self.proto = spawn_twistd(
            reactor,
            ["--node", self.name, *args],
            self.dir,
            prefix=orphan,
            ports=ports,
            repick=False,
        )
        return self.proto

    async def members(self) -> dict[str, int]:
        code, body = await http_json(
            "GET", f"http://127.0.0.1:{self.http}/v1/agent/members", timeout=2.0
        )
        if code != 200 or not isinstance(body, list):
            raise RuntimeError(f"{self.name}: members answered {code}: {body}")
        return {m["Name"]: m["Status"] for m in body}


async def until(reactor: Any, agents: list[Agent], name: str, status: int, limit: float) -> float:
    """Seconds until every agent of ``agents`` lists ``name`` in ``status`` (inf: never)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            views = [(await a.members()).get(name) for a in agents]
        except Exception:  # noqa: BLE001 - one read timed out under loss: read again
            views = []
        if views and all(v == status for v in views):
            return time.monotonic() - start
        await sleep(reactor, 0.05)
    return float("inf")


async def watch(
    reactor: Any, agents: list[Agent], healthy: list[str], seconds: float, seen: list[Any]
) -> None:
    """Read every agent's member list every 0.2 s; note a healthy member not alive."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for agent in agents:
            try:
                members = await agent.members()
            except Exception:  # noqa: BLE001 - a read lost to a slow answer: not a death
                continue
            for name in healthy:
                status = members.get(name)
                if status != ALIVE:
                    seen.append([round(time.monotonic() - start, 2), agent.name, name, status])
        await sleep(reactor, 0.2)


def drop_counter() -> int:
    match = re.search(r"counter packets (\d+)", nft("list", "table", "inet", TABLE))
    return int(match.group(1)) if match else -1


async def scenario(reactor: Any, opts: argparse.Namespace) -> dict[str, Any]:
    names = ["gl-s1", "gl-c1", "gl-c2"]
    pool = [Agent(name, opts.base) for name in names]
    server, c1, c2 = pool
    # a fresh joiner per loss rate
    joiners = [Agent(f"gl-j{percent}", opts.base) for percent in opts.loss]
    agents = pool + joiners
    facts: dict[str, Any] = {"runs": [], "logs": {}}
    try:
        # all at once (starting an agent takes seconds of CPU); the clients
        # retry their join every second until the server listens
        config = os.path.join(opts.base, "retry.json")
        with open(config, "w") as f:
            json.dump({"retry_interval": "1s"}, f)
        join = ("--retry-join", f"127.0.0.1:{server.lan}", "--config-file", config)
        procs = [server.start(reactor, "--dev")]
        procs += [c.start(reactor, "--data-dir", c.dir, *join) for c in (c1, c2)]
        procs += [j.start(reactor, "--data-dir", j.dir) for j in joiners[:1]]
        for agent, proc in zip(agents, procs, strict=False):
            await wait_for_leader(reactor, agent.http, proc, limit=60)
        for name in names[:3]:
            if await until(reactor, pool, name, ALIVE, 20.0) == float("inf"):
                raise RuntimeError(f"{name} never listed alive everywhere before the loss")
        ports = ", ".join(str(a.lan) for a in agents)
        nft("add", "table", "inet", TABLE)
        nft("add", "chain", "inet", TABLE, "in", "{ type filter hook input priority 0; }")
        for percent, joiner in zip(opts.loss, joiners, strict=True):
            run: dict[str, Any] = {"loss": percent, "seconds": opts.seconds}
            nft("flush", "chain", "inet", TABLE, "in")
            nft(
                "add", "rule", "inet", TABLE, "in", "meta", "l4proto", "{ udp, tcp }",
                "th", "dport", f"{{ {ports} }}", "numgen", "random", "mod", "100",
                "<", str(percent), "counter", "drop",
            )  # fmt: skip
            run["rules"] = nft("list", "table", "inet", TABLE)
            if joiner.proto is None:
                joiner.start(reactor, "--data-dir", joiner.dir)
            proto = joiner.proto
            if proto is None:
                raise RuntimeError(f"{joiner.name} did not start")
            await wait_for_leader(reactor, joiner.http, proto, limit=60)
            started = time.monotonic()
            false_deaths: list[Any] = []
            watcher = ensureDeferred(watch(reactor, pool, names[:3], opts.seconds, false_deaths))
            # the join: an alive broadcast that must reach every member
            await sleep(reactor, 1.0)
            joining = time.monotonic()
            code, body = await http_json(
                "PUT",
                f"http://127.0.0.1:{joiner.http}/v1/agent/join/127.0.0.1:{c1.lan}",
                timeout=15.0,
            )
            if code != 200:
                raise RuntimeError(f"join answered {code}: {body}")
            seen = await until(reactor, [*pool, joiner], joiner.name, ALIVE, 15.0)
            run["join_after"] = seen if math.isinf(seen) else time.monotonic() - joining
            # run with the joiner in the pool, then it leaves: a serf intent broadcast
            left = opts.seconds - (time.monotonic() - started) - 5.0
            await sleep(reactor, max(left, 0.0))
            leaving = time.monotonic()
            # the request returns only after Consul's leave propagate delay:
            # watch the others while it runs
            request = ensureDeferred(
                http_json("PUT", f"http://127.0.0.1:{joiner.http}/v1/agent/leave", timeout=15.0)
            )
            seen = await until(reactor, pool, joiner.name, LEFT, 15.0)
            run["leave_after"] = seen if math.isinf(seen) else time.monotonic() - leaving
            await request
            await watcher
            run["false_deaths"] = false_deaths
            run["dropped"] = drop_counter()
            run["loss_seconds"] = time.monotonic() - started
            facts["runs"].append(run)
            proto.kill()
            await proto.ended
        nft("flush", "chain", "inet", TABLE, "in")
    finally:
        for agent in agents:
            if agent.proto is not None:
                agent.proto.kill()
        for agent in agents:
            if agent.proto is not None:
                await agent.proto.ended
                facts["logs"][agent.name] = agent.proto.output.decode(errors="replace")[-4000:]
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="directory for the agents' data")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    parser.add_argument("--loss", type=int, nargs="+", default=[5], help="percent, in order")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per loss rate")
    opts = parser.parse_args(argv)
    if not in_private_netns():
        sys.exit("refusing to run in the machine's own network namespace: use unshare -n")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    async def run(reactor: Any) -> None:
        facts = await scenario(reactor, opts)
        with open(opts.out, "w") as f:
            json.dump(facts, f)

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
