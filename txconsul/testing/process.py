"""
Real ``twistd`` agents as child processes, for tests that need a whole process.

Each agent gets free ports on 127.0.0.1 and its own data directory; it is
stopped by its process id (SIGTERM, then SIGKILL if it will not go).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AgentProcess(ProcessProtocol):
    """A child process whose output is kept and whose end can be awaited."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.signal: int | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exit_code = 0
        elif reason.check(ProcessTerminated):
            value: Any = reason.value
            self.exit_code, self.signal = value.exitCode, value.signal
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


def spawn_twistd(reactor: Any, args: list[str], cwd: str) -> AgentProcess:
    """
    Run ``twistd -n --pidfile= txconsul ARGS`` with this Python, its gossip
    pools on free ports unless ARGS name them (a later flag wins).
    """
    proto = AgentProcess()
    argv = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "txconsul",
        "--serf-lan-port",
        str(free_port()),
        "--serf-wan-port",
        str(free_port()),
        *args,
    ]
    reactor.spawnProcess(proto, sys.executable, argv, env=dict(os.environ), path=cwd)
    return proto


async def wait_for_leader(
    reactor: Any, http_port: int, proto: AgentProcess, limit: float = 20.0
) -> str:
    """Poll ``/v1/status/leader`` until it answers, the process dies, or ``limit`` passes."""
    url = f"http://127.0.0.1:{http_port}/v1/status/leader"
    waited = 0.0
    while waited < limit:
        if proto.ended.called:
            raise RuntimeError(f"agent exited early:\n{proto.output.decode(errors='replace')}")
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
