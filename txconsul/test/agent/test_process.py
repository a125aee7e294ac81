# -*- test-case-name: txconsul.test.agent.test_process -*-
"""Real ``twistd -n txconsul`` processes: side by side, stopped by signals."""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import Any

import treq
from twisted.internet import defer, reactor  # noqa: TID251 (real-process test)
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txconsul.testing.polling import poll_until
from txconsul.testing.process import (
    FAST_CONFIG,
    ServerCluster,
    ServerProcess,
    free_port,
    http_json,
    spawn_twistd,
    wait_for_leader,
)


class TwistdTests(TestCase):
    timeout = 60

    def start(self, *args: str, ports: dict[str, int] | None = None, repick: bool = True) -> Any:
        proto = spawn_twistd(reactor, list(args), self.mktemp_dir(), ports=ports, repick=repick)

        def stop() -> Any:
            proto.kill(signal.SIGKILL)
            return proto.ended

        self.addCleanup(stop)
        return proto

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    async def put_and_get(self, port: int, key: str, value: bytes) -> bytes:
        url = f"http://127.0.0.1:{port}/v1/kv/{key}"
        response = await treq.put(url, data=value, persistent=False)
        self.assertEqual(await response.json(), True)
        response = await treq.get(url + "?raw", persistent=False)
        body: bytes = await response.content()
        return body

    @defer.inlineCallbacks
    def test_two_agents_side_by_side_with_their_own_ports_and_data(self) -> Any:
        agents = []
        for name in ("a1", "a2"):
            ports = {"http-port": free_port(), "server-port": free_port(), "dns-port": free_port()}
            proto = self.start(
                "--node",
                name,
                "--data-dir",
                self.mktemp_dir(),
                "--server",
                "--bootstrap",
                ports=ports,
            )
            agents.append(proto)
        for proto in agents:
            leader = yield defer.ensureDeferred(wait_for_leader(reactor, None, proto))
            self.assertEqual(json.loads(leader), f"127.0.0.1:{proto.ports['server-port']}")
        a = yield defer.ensureDeferred(self.put_and_get(agents[0].ports["http-port"], "k", b"one"))
        b = yield defer.ensureDeferred(self.put_and_get(agents[1].ports["http-port"], "k", b"two"))
        self.assertEqual((a, b), (b"one", b"two"))

    @defer.inlineCallbacks
    def test_sigterm_and_sigint_stop_the_agent_cleanly(self) -> Any:
        for sig in (signal.SIGTERM, signal.SIGINT):
            proto = self.start("--dev", ports={"http-port": free_port(), "dns-port": free_port()})
            yield defer.ensureDeferred(wait_for_leader(reactor, None, proto))
            proto.kill(sig)
            code = yield proto.ended
            # twistd shuts down, then ends itself by the same signal so that its
            # parent sees why it stopped.
            self.assertTrue(code == 0 or proto.signal == sig, proto.output.decode(errors="replace"))
            self.assertIn(b"Main loop terminated", proto.output)
            self.assertIn(b"Server Shut Down", proto.output)

    @defer.inlineCallbacks
    def test_unparsable_config_file_stops_the_agent_naming_the_file(self) -> Any:
        config_dir = self.mktemp_dir()
        path = os.path.join(config_dir, "broken.json")
        with open(path, "w") as f:
            f.write('{"service": {"name": "web",}')
        proto = self.start(
            "--dev",
            "--config-dir",
            config_dir,
            ports={"http-port": free_port(), "dns-port": free_port()},
        )
        code = yield proto.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"broken.json", proto.output)
        self.assertIn(b"not valid JSON", proto.output)

    @defer.inlineCallbacks
    def test_an_agent_whose_port_was_taken_starts_again_on_another(self) -> Any:
        # another process binds the port between the harness's pick and the agent's bind
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"http-port": port}
        proto = self.start("--dev", "--dns-port", "-1", ports=ports)
        yield defer.ensureDeferred(wait_for_leader(reactor, None, proto))
        self.assertEqual(proto.respawns, 1)
        self.assertNotEqual(ports["http-port"], port)
        self.assertIs(proto.ports, ports)
        self.assertIn(b"Address already in use", proto.output)

    @defer.inlineCallbacks
    def test_a_restart_keeps_its_ports_and_reports_one_taken(self) -> Any:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        proto = self.start("--dev", "--dns-port", "-1", ports={"http-port": port}, repick=False)
        code = yield proto.ended
        self.assertEqual(code, 1)
        self.assertEqual(proto.ports["http-port"], port)
        self.assertIn(b"Address already in use", proto.output)


class ReloadProcessTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sighup_reloads_service_definitions(self) -> Any:
        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        with open(os.path.join(config_dir, "a.json"), "w") as f:
            json.dump({"service": {"name": "first"}}, f)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        proto = spawn_twistd(
            reactor, ["--dev", "--config-dir", config_dir], cwd, ports={"http-port": free_port()}
        )

        def stop() -> Any:
            proto.kill(signal.SIGKILL)
            return proto.ended

        self.addCleanup(stop)
        yield defer.ensureDeferred(wait_for_leader(reactor, None, proto))
        port = proto.ports["http-port"]
        with open(os.path.join(config_dir, "b.json"), "w") as f:
            json.dump({"service": {"name": "second"}}, f)
        os.remove(os.path.join(config_dir, "a.json"))
        proto.kill(signal.SIGHUP)
        url = f"http://127.0.0.1:{port}/v1/agent/services"
        services: Any = None
        for _ in range(100):
            response = yield treq.get(url, persistent=False)
            services = yield response.json()
            if sorted(services) == ["second"]:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sorted(services), ["second"])
        self.assertIsNone(proto.exit_code, "SIGHUP stopped the agent")


class ServerSignalTests(TestCase):
    """Three real servers: what SIGTERM means for a server, as in Consul."""

    timeout = 120

    async def cluster(self, **config: Any) -> ServerCluster:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        cluster = ServerCluster(reactor, base, n=3)
        for server in cluster.servers:
            with open(server.config_file, "w") as f:
                json.dump({**FAST_CONFIG, **config}, f)
        self.addCleanup(lambda: defer.ensureDeferred(cluster.stop()))
        cluster.start()
        for server in cluster.servers:
            await self.until(lambda server=server: self.voters(server, 3))
        return cluster

    async def until(self, condition: Any, limit: float = 30.0) -> None:
        if not await poll_until(reactor, condition, limit):
            self.fail(f"condition not met within {limit}s")

    async def voters(self, server: ServerProcess, n: int) -> bool:
        try:
            code, body = await http_json("GET", server.url + "/v1/operator/raft/configuration")
        except ConnectError:
            return False  # not listening yet
        return code == 200 and len(body["Servers"]) == n

    async def addresses(self, server: ServerProcess) -> set[str]:
        _, body = await http_json("GET", server.url + "/v1/operator/raft/configuration")
        return {s["Address"] for s in body["Servers"]}

    async def test_sigterm_with_leave_on_terminate_hands_leadership_over_and_leaves(self) -> None:
        cluster = await self.cluster(leave_on_terminate=True)
        leader = await cluster.wait_for_leader()
        rest = [s for s in cluster.servers if s is not leader]
        assert leader.proto is not None
        seen = {s.name: len(s.output()) for s in rest}
        await leader.stop(signal.SIGTERM)
        self.assertIn("handing raft leadership over", leader.output())
        self.assertEqual(leader.proto.exit_code, 0, leader.output()[-3000:])
        cluster.servers.remove(leader)  # it left: the cluster is the other two now
        new = await cluster.wait_for_leader(among=rest)
        for server in rest:
            self.assertNotIn("pre-candidate", server.output()[seen[server.name] :])
        await self.until(lambda: self.voters(new, 2))
        self.assertNotIn(leader.rpc_address, await self.addresses(new))

    async def test_sigterm_stops_a_server_without_leaving(self) -> None:
        cluster = await self.cluster()
        leader = await cluster.wait_for_leader()
        gone = next(s for s in cluster.servers if s is not leader)
        await gone.stop(signal.SIGTERM)
        self.assertNotIn("leaving", gone.output())

        async def failed() -> bool:
            _, members = await http_json("GET", leader.url + "/v1/agent/members")
            return any(m["Name"] == gone.name and m["Status"] == 4 for m in members)

        await self.until(failed)  # failed, not left: it stays a voter
        self.assertIn(gone.rpc_address, await self.addresses(leader))
