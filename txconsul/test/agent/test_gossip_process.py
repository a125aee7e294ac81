"""Two real ``twistd -n txconsul`` processes gossiping over loopback."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import treq
from twisted.internet import reactor  # noqa: TID251 (real-process test)
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txconsul.testing.process import AgentProcess, free_port, spawn_twistd, wait_for_leader


class GossipProcessTests(TestCase):
    timeout = 60

    def start(self, *args: str, ports: dict[str, int] | None = None) -> AgentProcess:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        proto = spawn_twistd(reactor, list(args), path, ports=ports)

        def stop() -> Any:
            proto.kill(signal.SIGKILL)
            return proto.ended

        self.addCleanup(stop)
        return proto

    async def members(self, http_port: int) -> dict[str, int]:
        url = f"http://127.0.0.1:{http_port}/v1/agent/members"
        response = await treq.get(url, persistent=False)
        return {m["Name"]: m["Status"] for m in await response.json()}

    async def test_client_process_joins_a_server_process_and_leaves(self) -> None:
        # a server of its own Raft cluster: the client sends its requests there
        server = self.start(
            "--server", "--bootstrap-expect", "1", "--node", "p-server",
            "--data-dir", os.path.abspath(self.mktemp()), "--dns-port", "-1",
            ports={"http-port": free_port()},
        )  # fmt: skip
        await wait_for_leader(reactor, None, server)
        server_http, server_lan = server.ports["http-port"], server.ports["serf-lan-port"]
        client = self.start(
            "--node", "p-client", "--data-dir", os.path.abspath(self.mktemp()),
            "--dns-port", "-1", "--join", f"127.0.0.1:{server_lan}",
            ports={"http-port": free_port()},
        )  # fmt: skip
        await wait_for_leader(reactor, None, client)
        client_http = client.ports["http-port"]
        want = {"p-server": 1, "p-client": 1}
        end = time.monotonic() + 20
        while await self.members(server_http) != want or await self.members(client_http) != want:
            self.assertLess(time.monotonic(), end, client.output.decode(errors="replace"))
            await deferLater(reactor, 0.1, lambda: None)
        # the client answers from the server: the same leader, the same KV
        url = f"http://127.0.0.1:{client_http}"
        self.assertEqual(
            await (await treq.get(url + "/v1/status/leader", persistent=False)).text(),
            await (
                await treq.get(f"http://127.0.0.1:{server_http}/v1/status/leader", persistent=False)
            ).text(),
        )
        put = await treq.put(url + "/v1/kv/greeting", data=b"hi", persistent=False)
        self.assertEqual(put.code, 200)
        got = await treq.get(f"http://127.0.0.1:{server_http}/v1/kv/greeting?raw", persistent=False)
        self.assertEqual(await got.content(), b"hi")
        response = await treq.put(
            f"http://127.0.0.1:{client_http}/v1/agent/leave", persistent=False
        )
        self.assertEqual(response.code, 200)
        await client.ended  # the leave shuts the process down
        self.assertEqual((await self.members(server_http))["p-client"], 3)

    async def test_a_join_that_nobody_answers_stops_the_process(self) -> None:
        proto = self.start(
            "--dev", "--dns-port", "-1", "--join", f"127.0.0.1:{free_port()}",
            ports={"http-port": free_port()},
        )  # fmt: skip
        await proto.ended
        self.assertIn(b"start_join: none of", proto.output)
