"""
FAULTS.md test 8, real variant: false failure declarations around overloaded
members, txconsul against serf, on real processes in the same run.

    sudo python bench/lifeguard_real.py --seconds 120

Each side runs 20 agents on 127.0.0.1 with LAN default timings, joined into
one pool: ``twistd -n txconsul`` client agents (one process each), then
``serf agent`` processes. Once every agent lists all 20 alive, two of them
(not the seed) are starved for ``--seconds``: each is put in a cgroup v1
``cpu`` group of its own with ``cpu.cfs_quota_us=5000`` per
``cpu.cfs_period_us=100000`` (5 % of one CPU), together with a busy-loop
child (``python -c "while True: pass"``) that takes half of it. The quota
alone does not overload an idle agent: gossip at this size needs about
0.3 % of a CPU, which it gets at once when it wakes, so the stalls stay
under the CFS period. So the bench also keeps each starved agent busy
through its own API, ``--load`` (default 4) member-list requests in flight
back to back (txconsul: ``GET /v1/agent/members``; serf: the ``members``
command of its RPC, the like-for-like local API): the agent then wants more
CPU than it gets, incoming probes queue behind that work and its own timers
fire late, which is Lifeguard's "overloaded member" (the paper overloaded
the VM with a CPU hog). The CPU seconds each starved agent used are printed
(about 2.5 % of a CPU with the default load: its whole share). The 5 % is
enforced per CFS period: ``--period-us 1000000`` (50 ms of CPU a second,
stalls up to 950 ms, beyond the 500 ms probe timeout) is the harsher fault at
the same share, and ``--hogs`` puts more busy loops beside each agent.

Meanwhile every healthy agent's member list is read every 0.5 s (txconsul:
``/v1/agent/members``; serf: the ``members`` command of its msgpack RPC) and
each change from alive to failed counts: about one of the 18 healthy members
(a false positive: what Lifeguard prevents) or about one of the 2 starved
ones (counted apart: they are really slow). Pass: txconsul's false
positives at healthy members are at most serf's.

Needs root and the cgroup v1 ``cpu`` controller; every process is bound to
127.0.0.1, stopped by its pid at the end (also on an error or Ctrl-C), and
the cgroups are removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from gossip_real import SerfProcess, SerfRPC, proc_cpu, start_serf
from twisted.internet import defer, task

from txconsul.testing.process import AgentProcess, free_port, http_json, spawn_twistd

N = 20
SLOW = 2
POLL = 0.5
#: the starved agents' share of one CPU, and the default CFS period it is enforced over
SHARE, PERIOD_US = 0.05, 100000
#: agent status codes of /v1/agent/members (serf's status names on serf's side)
ALIVE, FAILED = 1, 4
BUSY_LOOP = "while True: pass"


class Unsupported(Exception):
    """This machine cannot run the bench; the message says what is missing."""


def cpu_cgroup_root() -> str:
    """Where the cgroup v1 ``cpu`` controller is mounted."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
                if os.path.exists(os.path.join(fields[1], "cpu.cfs_quota_us")):
                    return fields[1]
    raise Unsupported("no cgroup v1 cpu controller mounted (needs cpu.cfs_quota_us)")


class Reaper:
    """
    Every child process and cgroup this bench made, undone by ``undo``:
    synchronously, so that it also runs from a shutdown trigger (Ctrl-C).
    """

    def __init__(self, root: str, period_us: int = PERIOD_US, hogs: int = 1) -> None:
        self.root = root
        self.period_us = period_us
        self.quota_us = int(period_us * SHARE)
        self.hogs = hogs
        self.procs: list[Any] = []  # AgentProcess / SerfProcess
        self.groups: list[str] = []

    def group(self, name: str) -> str:
        path = os.path.join(self.root, name)
        os.mkdir(path)
        self.groups.append(path)
        with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
            f.write(str(self.period_us))
        with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(self.quota_us))
        return path

    @staticmethod
    def put(group: str, pid: int) -> None:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def release(self) -> None:
        """Move every process out of the bench's cgroups and remove them."""
        for path in self.groups:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids = f.read().split()
                for pid in pids:
                    try:
                        self.put(self.root, int(pid))
                    except OSError:
                        pass  # exited meanwhile
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"could not remove cgroup {path}: {e}", file=sys.stderr)
        self.groups = [p for p in self.groups if os.path.exists(p)]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.transport is not None and not proc.ended.called:
                try:
                    proc.transport.signalProcess(signal.SIGKILL)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def undo(self) -> None:
        self.release()
        self.kill()

    async def stop(self) -> None:
        self.undo()
        await defer.DeferredList([p.ended for p in self.procs])
        self.procs = []


class Tally:
    """Changes from alive to failed seen in the healthy agents' member lists."""

    def __init__(self, slow: set[str]) -> None:
        self.slow = slow
        self.last: dict[tuple[int, str], bool] = {}  # (observer, member) -> failed
        self.healthy_fp = 0
        self.slow_declared = 0
        self.falsely_declared: set[str] = set()
        self.missed_polls = 0

    def see(self, observer: int, listing: dict[str, tuple[bool, bool]]) -> None:
        """``listing``: member name -> (alive, failed)."""
        for name, (alive, failed) in listing.items():
            key = (observer, name)
            before = self.last.get(key)
            if failed and before is False:
                if name in self.slow:
                    self.slow_declared += 1
                else:
                    self.healthy_fp += 1
                    self.falsely_declared.add(name)
            if alive or failed:
                self.last[key] = failed

    def show(self) -> str:
        return (
            f"{self.healthy_fp} FPs at healthy members "
            f"({len(self.falsely_declared)} distinct: {sorted(self.falsely_declared)}), "
            f"{self.slow_declared} declarations about the {SLOW} starved ones"
            + (f", {self.missed_polls} polls unanswered" if self.missed_polls else "")
        )


def spawn_busy(reactor: Any, reaper: Reaper) -> AgentProcess:
    proto = AgentProcess()
    argv = [sys.executable, "-c", BUSY_LOOP]
    reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ))
    reaper.procs.append(proto)
    return proto


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def starve(
    reactor: Any,
    reaper: Reaper,
    label: str,
    slow_pids: list[int],
    seconds: float,
    poll: Any,
    request: Any,
    load: int,
) -> tuple[Tally, list[float]]:
    """
    Starve ``slow_pids`` for ``seconds`` while ``poll()`` feeds a Tally every
    POLL s, and ``load`` loops per starved agent call ``request(i)`` (its
    member list through its local API) back to back.
    """
    stop = False

    async def hammer(i: int) -> None:
        while not stop:
            try:
                await request(i)
            except Exception:  # noqa: BLE001 - a starved agent may time out
                pass

    groups, busy = [], []
    for i, pid in enumerate(slow_pids):
        group = reaper.group(f"lgreal-{os.getpid()}-{label}-{i}")
        reaper.put(group, pid)
        for _ in range(reaper.hogs):
            loop = spawn_busy(reactor, reaper)
            assert loop.pid is not None
            reaper.put(group, loop.pid)
            busy.append(loop)
        groups.append(group)
    cpu = [proc_cpu(pid) for pid in slow_pids]
    loads = [defer.ensureDeferred(hammer(i)) for i in range(len(slow_pids)) for _ in range(load)]
    end = time.monotonic() + seconds
    tally: Tally | None = None
    while time.monotonic() < end:
        step = time.monotonic()
        tally = await poll()
        await sleep(reactor, max(0.0, POLL - (time.monotonic() - step)))
    used = [proc_cpu(pid) - c for pid, c in zip(slow_pids, cpu, strict=True)]
    stop = True
    await defer.DeferredList(loads)
    for loop in busy:
        loop.kill(signal.SIGKILL)
    reaper.release()
    assert tally is not None
    return tally, used


# -- txconsul -------------------------------------------------------------------------


async def members_of(port: int, timeout: float = 2) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/v1/agent/members"
    code, body = await http_json("GET", url, timeout=timeout)
    if code != 200 or not isinstance(body, list):
        raise RuntimeError(f"/v1/agent/members: {code} {body!r}")
    return body


async def txconsul_side(
    reactor: Any, reaper: Reaper, workdir: str, seconds: float, load: int
) -> Tally:
    agents: list[AgentProcess] = []

    async def up(proto: AgentProcess) -> int:
        """The agent's HTTP port once it answers (it moves if the agent had to start again)."""
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if proto.ended.called:
                raise RuntimeError("agent exited:\n" + proto.output.decode(errors="replace"))
            port = proto.ports.get("http-port", 0)
            if port:
                try:
                    await members_of(port)
                    return port
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            await sleep(reactor, 0.2)
        raise RuntimeError("agent did not answer:\n" + proto.output.decode(errors="replace"))

    seed_http = free_port()
    seed = spawn_agent(reactor, reaper, workdir, 0, [], seed_http)
    agents.append(seed)
    await up(seed)
    seed_lan = f"127.0.0.1:{seed.ports['serf-lan-port']}"
    for i in range(1, N):
        agents.append(spawn_agent(reactor, reaper, workdir, i, [seed_lan], free_port()))
    ports = [await up(a) for a in agents]
    print(f"txconsul: {N} agents answer; waiting for every one to list {N} alive", flush=True)
    end = time.monotonic() + 120
    while True:
        listings = await defer.gatherResults([defer.ensureDeferred(members_of(p)) for p in ports])
        alive = sum(sum(m["Status"] == ALIVE for m in listing) for listing in listings)
        if alive == N * N:
            break
        if time.monotonic() > end:
            raise RuntimeError(f"the pool did not converge in 120 s ({alive} of {N * N} alive)")
        await sleep(reactor, POLL)
    slow = {f"tx-{i}" for i in range(N - SLOW, N)}
    tally = Tally(slow)
    healthy = list(range(N - SLOW))

    async def poll() -> Tally:
        async def one(i: int) -> None:
            try:
                listing = await members_of(ports[i])
            except Exception:  # noqa: BLE001 - counted, not fatal
                tally.missed_polls += 1
                return
            tally.see(
                i, {m["Name"]: (m["Status"] == ALIVE, m["Status"] == FAILED) for m in listing}
            )

        await defer.gatherResults([defer.ensureDeferred(one(i)) for i in healthy])
        return tally

    await poll()
    print(f"txconsul: all alive; starving tx-18, tx-19 for {seconds:.0f} s", flush=True)
    pids = [a.pid for a in agents[N - SLOW :]]
    assert all(pid is not None for pid in pids)
    slow_ports = ports[N - SLOW :]

    async def request(i: int) -> None:
        await members_of(slow_ports[i], timeout=10)

    tally, used = await starve(
        reactor,
        reaper,
        "tx",
        pids,
        seconds,
        poll,
        request,
        load,  # type: ignore[arg-type]
    )
    print(f"  txconsul: {tally.show()}; starved agents' CPU: {fmt_cpu(used, seconds)}", flush=True)
    return tally


def spawn_agent(
    reactor: Any, reaper: Reaper, workdir: str, i: int, join: list[str], http: int
) -> AgentProcess:
    """A client agent with LAN default timings, HTTP on ``http``, no DNS."""
    data = os.path.join(workdir, f"tx-{i}")
    os.makedirs(data)
    args = ["--node", f"tx-{i}", "--data-dir", data, "--bind", "127.0.0.1"]
    args += ["--client", "127.0.0.1", "--log-level", "ERR"]
    for address in join:
        args += ["--retry-join", address]
    proto = spawn_twistd(reactor, args, data, ports={"http-port": http, "dns-port": -1})
    reaper.procs.append(proto)
    return proto


def fmt_cpu(used: list[float], seconds: float) -> str:
    return ", ".join(f"{u:.2f} s ({100 * u / seconds:.1f} %)" for u in used)


# -- serf -----------------------------------------------------------------------------


async def serf_side(reactor: Any, reaper: Reaper, serf: str, seconds: float, load: int) -> Tally:
    procs: list[SerfProcess] = []
    rpcs: list[SerfRPC] = []
    try:
        gossip = []
        for i in range(N):
            proc, rpc, port = await start_serf(reactor, serf, i, {})
            reaper.procs.append(proc)
            procs.append(proc)
            rpcs.append(rpc)
            gossip.append(port)
        seed = f"127.0.0.1:{gossip[0]}"
        await defer.gatherResults(
            [
                rpc.call("join", {"Existing": [seed], "Replay": False}, has_reply=True)
                for rpc in rpcs[1:]
            ]
        )
        print(f"serf: {N} agents joined; waiting for every one to list {N} alive", flush=True)
        end = time.monotonic() + 120
        while True:
            listings = await defer.gatherResults(
                [rpc.call("members", None, has_reply=True) for rpc in rpcs]
            )
            alive = sum(
                sum(m[b"Status"] == b"alive" for m in listing[b"Members"]) for listing in listings
            )
            if alive == N * N:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"serf did not converge in 120 s ({alive} of {N * N} alive)")
            await sleep(reactor, POLL)
        tally = Tally({f"serf-{i}" for i in range(N - SLOW, N)})
        healthy = list(range(N - SLOW))

        async def poll() -> Tally:
            listings = await defer.gatherResults(
                [rpcs[i].call("members", None, has_reply=True) for i in healthy]
            )
            for i, listing in zip(healthy, listings, strict=True):
                tally.see(
                    i,
                    {
                        m[b"Name"].decode(): (m[b"Status"] == b"alive", m[b"Status"] == b"failed")
                        for m in listing[b"Members"]
                    },
                )
            return tally

        await poll()
        print(f"serf: all alive; starving serf-18, serf-19 for {seconds:.0f} s", flush=True)
        pids = [p.transport.pid for p in procs[N - SLOW :] if p.transport is not None]

        async def request(i: int) -> None:
            await rpcs[N - SLOW + i].call("members", None, has_reply=True)

        tally, used = await starve(reactor, reaper, "serf", pids, seconds, poll, request, load)
        print(f"  serf: {tally.show()}; starved agents' CPU: {fmt_cpu(used, seconds)}", flush=True)
        return tally
    finally:
        for rpc in rpcs:
            if rpc.transport is not None:
                rpc.transport.loseConnection()


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long 2 agents starve")
    parser.add_argument(
        "--period-us",
        type=int,
        default=PERIOD_US,
        help="CFS period of the starved agents' groups; the quota is 5%% of it, so a longer "
        "period means longer stalls at the same share (default %(default)s)",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=4,
        help="member-list requests kept in flight to each starved agent through its own "
        "API (txconsul HTTP, serf RPC), so that it wants more CPU than it gets (default 4)",
    )
    parser.add_argument(
        "--hogs", type=int, default=1, help="busy loops beside each starved agent (default 1)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (it creates cgroups): run it with sudo")
    try:
        root = cpu_cgroup_root()
    except Unsupported as e:
        raise SystemExit(f"cannot starve agents here: {e}") from None
    serf = shutil.which("serf")
    if serf is None:
        raise SystemExit("needs the serf binary: apt-get install serf")
    reaper = Reaper(root, args.period_us, args.hogs)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", reaper.undo)
    try:
        print(
            f"{N} agents per side, {SLOW} starved ({reaper.quota_us}/{reaper.period_us} us CPU "
            f"quota, {reaper.hogs} busy loop(s) beside each, {args.load} "
            f"member-list requests in flight to each) for {args.seconds:.0f} s; member lists polled every "
            f"{POLL} s on the {N - SLOW} healthy agents",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="lgreal-") as workdir:
            try:
                ours = await txconsul_side(reactor, reaper, workdir, args.seconds, args.load)
            finally:
                await reaper.stop()
        try:
            theirs = await serf_side(reactor, reaper, serf, args.seconds, args.load)
        finally:
            await reaper.stop()
    finally:
        reaper.undo()
        reactor.removeSystemEventTrigger(trigger)
    print(f"txconsul: {ours.healthy_fp} FPs at healthy members ({ours.slow_declared} about slow)")
    print(
        f"serf:     {theirs.healthy_fp} FPs at healthy members ({theirs.slow_declared} about slow)"
    )
    ratio = (
        f"{ours.healthy_fp / theirs.healthy_fp:.2f}"
        if theirs.healthy_fp
        else ("n/a (both 0)" if ours.healthy_fp == 0 else "inf (serf 0)")
    )
    ok = ours.healthy_fp <= theirs.healthy_fp
    print(f"txconsul / serf FPs at healthy members: {ratio}")
    print(
        f"pass (txconsul FPs at healthy agents <= serf's): {'yes' if ok else 'NO'} "
        f"({ours.healthy_fp} <= {theirs.healthy_fp})"
    )


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
