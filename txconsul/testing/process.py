"""
Real ``twistd`` agents as child processes, for tests that need a whole process.

Each agent gets free ports on 127.0.0.1 and its own data directory; it is
stopped by its process id (SIGTERM, then SIGKILL if it will not go).

A free port is found by binding it and closing it again, and the agent binds
it a second or so later: meanwhile another test (another trial worker, another
suite on the same machine) may have picked and bound the same one. So the
ports given as ``ports`` to ``spawn_twistd`` are the harness's to change: an
agent that exits on its first start because a port was taken ("Address
already in use") is started again, on fresh ports written into the same
dict, which callers read (``ServerProcess.url``, ``wait_for_leader``) after
the agent is up. A restart keeps its ports: a server's RPC address is its
identity in the Raft configuration.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

_PICK = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """
    A port that no TCP or UDP socket is bound to right now (gossip binds both).

    It is drawn below the kernel's ephemeral range, so that no outgoing
    connection of another process takes it as its source port before the
    agent that is given it binds it (which may be seconds later).
    """
    high = min(_ephemeral_low(), 65536)
    low = 10000 if high > 12000 else 1024
    while True:
        port = _PICK.randrange(low, high)
        with socket.socket() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                s.bind((host, port))
                u.bind((host, port))
            except OSError:
                continue
        return port


#: what an agent prints when it cannot bind a port (twistd's CannotListenError)
BIND_FAILED = b"Address already in use"
#: how many times an agent that lost a port race is started on fresh ports
BIND_ATTEMPTS = 4


class AgentProcess(ProcessProtocol):
    """
    A child process whose output is kept and whose end can be awaited.

    With ``respawn`` set, an end caused by a port that was taken before the
    agent bound it is not the end: ``respawn()`` picks fresh ports and starts
    the process again (at most ``BIND_ATTEMPTS`` times), on this same object.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None
        #: the port flags of this agent (``{"http-port": n, ...}``), as it runs now
        self.ports: dict[str, int] = {}
        self.respawn: Callable[[], None] | None = None
        self.respawns = 0
        self._attempt_start = 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        exit_code: int | None = None
        sig: int | None = None
        if reason.check(ProcessDone):
            exit_code = 0
        elif reason.check(ProcessTerminated):
            value: Any = reason.value
            exit_code, sig = value.exitCode, value.signal
        if (
            self.respawn is not None
            and exit_code not in (0, None)
            and BIND_FAILED in self.output[self._attempt_start :]
            and self.respawns < BIND_ATTEMPTS
        ):
            self.respawns += 1
            self.output += b"\n--- a port was taken before the agent bound it: new ports ---\n"
            self._attempt_start = len(self.output)
            self.respawn()
            return
        self.exit_code, self.signal = exit_code, sig
        self.ended.callback(self.exit_code)

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.transport is not None and self.exit_code is None and self.signal is None:
            try:
                self.transport.signalProcess(sig)
            except Exception:  # noqa: BLE001 - already gone
                pass


#: the port flags ``spawn_twistd`` gives free ports unless told otherwise
DEFAULT_PORT_FLAGS = ("serf-lan-port", "serf-wan-port", "server-port")


def spawn_twistd(
    reactor: Any,
    args: list[str],
    cwd: str,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    ports: dict[str, int] | None = None,
    repick: bool = True,
    host: str = "127.0.0.1",
) -> AgentProcess:
    """
    Run ``twistd -n --pidfile= txconsul ARGS`` with this Python; ``env`` is
    added to this process's environment, and ``prefix`` is a command that
    ``exec``s the rest (it keeps the process id, so signals still reach twistd).

    :param ports: port flags (``{"http-port": n}``) to pass; the gossip and
        server ports get free ports unless named here or in ``args`` (a later
        flag wins). The dict is the process's ``ports``, kept up to date.
    :param repick: start again on fresh ports if a port was taken before the
        agent bound it (see the module docstring); off for a restart.
    :param host: the address the agent binds, where ports are looked for.
    """
    proto = AgentProcess()
    chosen = ports if ports is not None else {}
    for flag in DEFAULT_PORT_FLAGS:
        if f"--{flag}" not in args:
            chosen.setdefault(flag, free_port(host))
    proto.ports = chosen

    def spawn() -> None:
        argv = [
            *(prefix or []),
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "txconsul",
            *[a for flag, port in chosen.items() for a in (f"--{flag}", str(port))],
            *args,
        ]
        reactor.spawnProcess(proto, argv[0], argv, env={**os.environ, **(env or {})}, path=cwd)

    def respawn() -> None:
        for flag, port in chosen.items():
            if port > 0:  # 0 and -1 (off) stay as they are
                chosen[flag] = free_port(host)
        spawn()

    if repick:
        proto.respawn = respawn
    spawn()
    return proto


async def wait_for_leader(
    reactor: Any, http_port: int | None, proto: AgentProcess, limit: float = 20.0
) -> str:
    """
    Poll ``/v1/status/leader`` until it answers, the process dies, or ``limit``
    passes. The port is ``proto.ports["http-port"]`` when the harness chose it
    (it may change if the agent had to start again), else ``http_port``.
    """
    waited = 0.0
    while waited < limit:
        if proto.ended.called:
            raise RuntimeError(f"agent exited early:\n{proto.output.decode(errors='replace')}")
        port = proto.ports.get("http-port", http_port)
        url = f"http://127.0.0.1:{port}/v1/status/leader"
        try:
            response = await treq.get(url, timeout=1, persistent=False)
            body: bytes = await response.content()
            return body.decode()
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    raise RuntimeError(
        f"agent did not answer in {limit}s:\n{proto.output.decode(errors='replace')}"
    )


async def http_json(
    method: str, url: str, body: bytes | None = None, timeout: float = 1.0
) -> tuple[int, Any]:
    """One request on a fresh connection: the status and the decoded JSON body (or text)."""
    response = await treq.request(method, url, data=body, timeout=timeout, persistent=False)
    content: bytes = await response.content()
    try:
        return response.code, json.loads(content) if content else None
    except ValueError:
        return response.code, content.decode(errors="replace")


#: gossip fast enough that servers find each other (and a restarted one
#: rejoins) in well under a second; joins retried every second
FAST_CONFIG = {
    "gossip_lan": {"probe_interval": "200ms", "probe_timeout": "100ms", "gossip_interval": "50ms"},
    "gossip_wan": {"probe_interval": "200ms", "probe_timeout": "100ms", "gossip_interval": "50ms"},
    "retry_interval": "1s",
}


class ServerProcess:
    """
    One ``--server`` agent of a real cluster on ``host`` (or, with
    ``server=False``, a client agent): its ports are chosen once, so that it
    restarts on the same ports with the same data directory (the other
    servers know it by its RPC address). ``config`` is added to its config
    file (``FAST_CONFIG``).
    """

    def __init__(
        self,
        name: str,
        host: str,
        base_dir: str,
        bootstrap_expect: int,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        server: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.host = host
        self.bootstrap_expect = bootstrap_expect
        self.env = dict(env or {})
        self.prefix = list(prefix or [])
        self.dir = os.path.join(base_dir, name)
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.ports = {
            flag: free_port(host)
            for flag in ("http-port", "dns-port", "serf-lan-port", "serf-wan-port", "server-port")
        }
        self.config_file = os.path.join(self.dir, "fast.json")
        with open(self.config_file, "w") as f:
            json.dump({**FAST_CONFIG, **(config or {})}, f)
        self.proto: AgentProcess | None = None
        #: the output of earlier runs (before a kill), for failure reports
        self.past_output = b""
        self.starts = 0
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports['http-port']}"

    @property
    def rpc_address(self) -> str:
        return f"{self.host}:{self.ports['server-port']}"

    @property
    def lan_address(self) -> str:
        return f"{self.host}:{self.ports['serf-lan-port']}"

    @property
    def running(self) -> bool:
        return self.proto is not None and not self.proto.ended.called

    def args(self, join: list[str]) -> list[str]:
        """The flags of this agent, its ports aside (``spawn_twistd`` adds ``ports``)."""
        out = ["--node", self.name, "--data-dir", self.data_dir]
        if self.server:
            out += ["--server", "--bootstrap-expect", str(self.bootstrap_expect)]
        out += ["--bind", self.host, "--client", self.host]
        out += ["--config-file", self.config_file]
        for address in join:
            out += ["--retry-join", address]
        return out

    def start(self, reactor: Any, join: list[str]) -> AgentProcess:
        """Start (or restart) the process, joining the LAN pool through ``join``."""
        if self.running:
            raise RuntimeError(f"{self.name} is running already")
        if self.proto is not None:
            self.past_output += self.proto.output + b"\n--- restarted ---\n"
        # new ports only on the first start: the others know this agent by them
        self.proto = spawn_twistd(
            reactor,
            self.args(join),
            self.dir,
            self.env,
            self.prefix,
            ports=self.ports,
            repick=self.starts == 0,
            host=self.host,
        )
        self.starts += 1
        self.started_at = time.monotonic()
        return self.proto

    async def stop(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (kill -9 by default) and wait for the process to end."""
        proto = self.proto
        if proto is None or proto.ended.called:
            return
        proto.kill(sig)
        await proto.ended

    def output(self) -> str:
        now = self.proto.output if self.proto is not None else b""
        return (self.past_output + now).decode(errors="replace")

    async def leader(self, timeout: float = 1.0) -> str:
        """``/v1/status/leader`` of this server: the leader's RPC address or ``""``."""
        code, body = await http_json("GET", self.url + "/v1/status/leader", timeout=timeout)
        return body if code == 200 and isinstance(body, str) else ""


class ServerCluster:
    """
    ``n`` server processes on ``hosts`` (one address each, or all on one), each
    joining the others with ``--retry-join`` and ``--bootstrap-expect n``, and
    ``clients`` client agents joining the servers; ``config`` goes into
    every server's config file.
    """

    def __init__(
        self,
        reactor: Any,
        base_dir: str,
        n: int = 3,
        hosts: list[str] | None = None,
        env: dict[int, dict[str, str]] | None = None,
        prefix: dict[int, list[str]] | None = None,
        clients: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.reactor = reactor
        hosts = hosts or ["127.0.0.1"] * n
        env = env or {}
        prefix = prefix or {}
        self.servers = [
            ServerProcess(
                f"s{i + 1}", hosts[i], base_dir, n, env.get(i), prefix.get(i), config=config
            )
            for i in range(n)
        ]
        self.clients = [
            ServerProcess(f"c{i + 1}", hosts[0], base_dir, n, server=False) for i in range(clients)
        ]

    def start(self, server: ServerProcess | None = None) -> None:
        """Start every server and client agent (or restart one of them)."""
        for s in [server] if server is not None else self.servers + self.clients:
            s.start(self.reactor, [o.lan_address for o in self.servers if o is not s])

    async def stop(self) -> None:
        for s in self.clients + self.servers:
            await s.stop()

    def by_address(self, rpc_address: str) -> ServerProcess | None:
        return next((s for s in self.servers if s.rpc_address == rpc_address), None)

    async def leader(self, among: list[ServerProcess] | None = None) -> ServerProcess | None:
        """The leader that every running server of ``among`` names, or None."""
        names = set()
        for s in among if among is not None else self.servers:
            if not s.running:
                continue
            try:
                names.add(await s.leader())
            except Exception:  # noqa: BLE001 - down or busy: no agreement
                return None
        if len(names) != 1:
            return None
        return self.by_address(names.pop())

    async def wait_for_leader(
        self, limit: float = 30.0, among: list[ServerProcess] | None = None
    ) -> ServerProcess:
        """Poll until every running server of ``among`` names the same running leader."""
        end = time.monotonic() + limit
        while True:
            for s in self.servers + self.clients:
                if s.proto is not None and s.proto.ended.called and s.proto.signal is None:
                    raise RuntimeError(f"{s.name} exited:\n{s.output()[-4000:]}")
            leader = await self.leader(among)
            if leader is not None and leader.running:
                return leader
            if time.monotonic() > end:
                raise RuntimeError(
                    f"no leader that all servers agree on within {limit}s\n" + self.outputs()
                )
            await deferLater(self.reactor, 0.1, lambda: None)

    def outputs(self, tail: int = 3000) -> str:
        now = time.monotonic()
        return "\n".join(
            f"== {s.name} (pid {s.proto.pid if s.proto else None}, "
            f"{'running' if s.running else 'ended'}, start {s.starts} "
            f"{now - s.started_at:.1f}s ago)\n{s.output()[-tail:]}"
            for s in self.servers + self.clients
        )


def missing_netns_tools() -> list[str]:
    """What a scenario in a private network namespace with nftables lacks here."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


async def run_in_netns(
    reactor: Any, base: str, module: str, args: list[str], time_limit: float
) -> tuple[dict[str, Any] | None, str]:
    """
    Run ``python -m module --base base --out base/result.json *args`` in a
    network namespace of its own (``unshare -n``), killed after
    ``time_limit`` seconds, and read the facts it wrote: ``(facts, output)``,
    facts None when it failed (the output then says why).
    """
    out = os.path.join(base, "result.json")
    unshare = shutil.which("unshare")
    assert unshare is not None
    argv = ["unshare", "-n", sys.executable, "-m", module, "--base", base, "--out", out, *args]
    proto = AgentProcess()
    reactor.spawnProcess(proto, unshare, argv, env=dict(os.environ), path=base)
    timer = reactor.callLater(time_limit, proto.kill, signal.SIGKILL)
    try:
        code = await proto.ended
    finally:
        if timer.active():
            timer.cancel()
        if not proto.ended.called:  # the test gave up on it: stop it anyway
            proto.kill(signal.SIGKILL)
    output = proto.output.decode(errors="replace")
    if code != 0 or not os.path.exists(out):
        return None, f"exit {code}:\n{output[-6000:]}"
    with open(out) as f:
        facts: dict[str, Any] = json.load(f)
    return facts, output
