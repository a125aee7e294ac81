"""
``txconsul agent``: flags rewritten for the twistd plugin, and a real agent
started as a child process, queried, and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.cli.agent import agent_argv, twistd_argv
from txconsul.cli.client import AgentClient, Unreachable
from txconsul.test.cli.support import closed_port


class AgentFlagTests(SynchronousTestCase):
    def test_dev_is_twistd_txconsul_dev(self) -> None:
        self.assertEqual(twistd_argv(["-dev"]), ["twistd", "-n", "--pidfile=", "txconsul", "--dev"])

    def test_values_joined_or_separate(self) -> None:
        self.assertEqual(
            agent_argv(["-dev", "-http-port=0", "-config-dir", "/etc/consul.d", "-node", "n1"]),
            ["--dev", "--http-port=0", "--config-dir", "/etc/consul.d", "--node", "n1"],
        )

    def test_repeatable_flags_and_boolean_values(self) -> None:
        self.assertEqual(
            agent_argv(["-server", "-ui=false", "-join", "10.0.0.1", "-join=10.0.0.2"]),
            ["--server", "--join", "10.0.0.1", "--join=10.0.0.2"],
        )

    def test_double_dash_flags_pass_through(self) -> None:
        self.assertEqual(agent_argv(["--dev", "--dc", "east"]), ["--dev", "--dc", "east"])

    def test_help(self) -> None:
        self.assertEqual(agent_argv(["-h"]), ["--help"])
        self.assertEqual(agent_argv(["-help"]), ["--help"])


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(None)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CONSUL_HTTP_ADDR", None)
    return env


class AgentProcessTests(TestCase):
    timeout = 90

    async def _leader(self, address: str, tries: int = 300, pause: float = 0.1) -> Any:
        """Poll /v1/status/leader until the agent answers, at most ``tries`` times."""
        for _ in range(tries):
            client = AgentClient(reactor, "http://" + address, None, [])
            try:
                return await client.get_json("/v1/status/leader")
            except Unreachable:
                await deferLater(reactor, pause, lambda: None)
            finally:
                await client.close()
        self.fail(f"no agent answered at {address} after {tries} tries")

    async def test_txconsul_agent_dev_serves_and_stops_on_sigterm(self) -> None:
        port = await closed_port()
        address = f"127.0.0.1:{port}"
        args = [
            sys.executable,
            "-m",
            "txconsul.cli",
            "agent",
            "-dev",
            f"-http-port={port}",
            "-dns-port=0",
            "-serf-lan-port=0",
            "-serf-wan-port=0",
            "-server-port=0",
        ]
        child = _Child()
        transport = reactor.spawnProcess(child, sys.executable, args, env=_child_env())

        def kill_if_running() -> Deferred[None] | None:
            if transport.pid is not None:
                os.kill(transport.pid, signal.SIGKILL)
                return child.ended
            return None

        self.addCleanup(kill_if_running)

        leader = await self._leader(address)
        self.assertTrue(leader, child.output.decode("utf-8", "replace"))

        # The console-script path through react(): exit codes reach the shell.
        cli = [sys.executable, "-m", "txconsul.cli"]
        env = {**_child_env(), "CONSUL_HTTP_ADDR": address}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, cli[1:] + ["kv", "put", "greeting", "hello"], env=env
        )
        self.assertEqual((code, out), (0, b"Success! Data written to: greeting\n"), err)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, cli[1:] + ["kv", "get", "missing"], env=env
        )
        self.assertEqual((code, err), (1, b"Error! No key exists at: missing\n"))

        pid = transport.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        await child.ended
        reason = child.reason
        assert reason is not None
        # twistd stops the reactor cleanly, then ends by the same signal.
        if isinstance(reason.value, ProcessTerminated):
            self.assertEqual(reason.value.signal, signal.SIGTERM, reason)
        else:
            self.assertIsInstance(reason.value, ProcessDone)
        self.assertIn(b"Server Shut Down", bytes(child.output))
