"""
A txconsul agent and a real ``serf`` agent (Debian package ``serf``) in one
LAN pool: serf joins the agent, the agent joins serf, with and without
encryption, and both list each other alive.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.agent.agent import Agent
from txconsul.testing.agent import api_call, start_agent
from txconsul.testing.polling import poll_until
from txconsul.testing.process import free_port

KEY = base64.b64encode(bytes(range(32))).decode()
NEW_KEY = base64.b64encode(bytes(range(1, 33))).decode()


class SerfHarness(TestCase):
    """Starts one ``serf agent`` beside txconsul agents in this process."""

    timeout = 60

    async def start_serf(self, *extra: str) -> None:
        """Start ``serf agent`` and wait until it answers; new ports if one was taken."""
        self.serf_bin = shutil.which("serf")
        if self.serf_bin is None:
            if os.environ.get("CI") == "true":
                self.fail("the serf binary is missing (apt-get install serf)")
            raise SkipTest("needs the serf binary: apt-get install serf")
        self.log = tempfile.NamedTemporaryFile(prefix="serf-", suffix=".log", delete=False)
        self.addCleanup(os.unlink, self.log.name)
        self.addCleanup(self.log.close)
        for _ in range(5):
            self.serf_port = free_port()
            self.rpc = f"127.0.0.1:{free_port()}"
            args = [
                self.serf_bin, "agent", "-node=serf-a", f"-bind=127.0.0.1:{self.serf_port}",
                f"-rpc-addr={self.rpc}", "-log-level=debug",
                "-tag", "role=node", "-tag", "dc=dc1", *extra,
            ]  # fmt: skip
            process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
            self.addCleanup(self._stop, process)

            def up_or_gone(p: subprocess.Popen[bytes] = process) -> bool:
                return p.poll() is not None or bool(self.serf_members())

            await self.wait_for(up_or_gone)
            if process.poll() is None:
                return
        self.fail("serf agent would not start")

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def serf_cli(self, command: str, *args: str) -> str:
        assert self.serf_bin is not None
        done = subprocess.run(
            [self.serf_bin, command, f"-rpc-addr={self.rpc}", *args],
            capture_output=True,
            timeout=5,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stdout.decode() + done.stderr.decode())
        return done.stdout.decode()

    async def serf_keys(self, *args: str) -> tuple[int, str]:
        """``serf keys ...`` as a child process: serf queries us while we keep serving."""
        assert self.serf_bin is not None
        out, err, code = await getProcessOutputAndValue(
            self.serf_bin, ["keys", f"-rpc-addr={self.rpc}", *args], env=dict(os.environ)
        )
        return code, (out + err).decode()

    async def serf_join(self, address: str) -> None:
        """``serf join`` as a child process, so the reactor keeps serving our side."""
        assert self.serf_bin is not None
        out, err, code = await getProcessOutputAndValue(
            self.serf_bin, ["join", f"-rpc-addr={self.rpc}", address], env=dict(os.environ)
        )
        if code != 0:
            raise RuntimeError((out + err).decode())

    def serf_members(self) -> dict[str, dict[str, Any]]:
        try:
            listing = json.loads(self.serf_cli("members", "-format=json"))
        except (RuntimeError, ValueError):
            return {}
        return {m["name"]: m for m in listing["members"]}

    async def wait_for(self, condition: Callable[[], bool], limit: float = 20.0) -> None:
        if not await poll_until(reactor, condition, limit, interval=0.1):
            with open(self.log.name) as f:
                tail = f.read()[-2000:]
            self.fail(f"condition not met in time; serf log:\n{tail}")

    async def start_both(self, encrypt: str | None = None) -> Agent:
        await self.start_serf(*([f"-encrypt={encrypt}"] if encrypt else []))
        flags: dict[str, Any] = {"node_name": "tx-agent"}
        if encrypt:
            flags["encrypt"] = encrypt
        return await start_agent(self, reactor, **flags)

    def lan_port(self, agent: Agent) -> int:
        assert agent.membership.lan is not None
        return agent.membership.lan.gossip.address()[1]

    async def assert_both_alive(self, agent: Agent) -> None:
        def both() -> bool:
            theirs = self.serf_members().get("tx-agent")
            ours = {m["Name"]: m for m in agent.membership.members()}.get("serf-a")
            return (
                theirs is not None
                and theirs["status"] == "alive"
                and theirs["tags"].get("role") == "consul"
                and theirs["tags"].get("id") == agent.node_id
                and ours is not None
                and ours["Status"] == 1
                and ours["Tags"] == {"role": "node", "dc": "dc1"}
            )

        await self.wait_for(both)


class SerfAndAgentTests(SerfHarness):
    async def test_serf_joins_the_agent_and_the_server_catalogs_it(self) -> None:
        agent = await self.start_both()
        await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")
        await self.assert_both_alive(agent)
        checks = agent.store.catalog.node_checks("serf-a")
        self.assertEqual([(c["CheckID"], c["Status"]) for c in checks], [("serfHealth", "passing")])

    async def test_the_agent_joins_serf(self) -> None:
        agent = await self.start_both()
        joined = await agent.membership.join([f"127.0.0.1:{self.serf_port}"])
        self.assertEqual(joined, 1)
        await self.assert_both_alive(agent)

    async def test_serf_joins_an_encrypted_agent_with_the_same_key(self) -> None:
        agent = await self.start_both(encrypt=KEY)
        await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")
        await self.assert_both_alive(agent)

    async def test_serf_with_another_key_cannot_join(self) -> None:
        await self.start_serf(f"-encrypt={base64.b64encode(bytes(16)).decode()}")
        agent = await start_agent(self, reactor, node_name="tx-agent", encrypt=KEY)
        await self.assertFailure(
            ensureDeferred(self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")), RuntimeError
        )
        self.assertEqual(await agent.membership.join([f"127.0.0.1:{self.serf_port}"]), 0)
        self.assertEqual([m["Name"] for m in agent.membership.members()], ["tx-agent"])


class SerfPlaintextTests(SerfHarness):
    """
    A plaintext serf agent and a txconsul agent with a key: the first step of
    turning encryption on in a running pool, and the last.
    """

    async def test_plain_serf_joins_a_keyed_agent_that_verifies_neither_way(self) -> None:
        await self.start_serf()
        agent = await start_agent(
            self,
            reactor,
            node_name="tx-agent",
            encrypt=KEY,
            encrypt_verify_incoming=False,
            encrypt_verify_outgoing=False,
        )
        await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")
        await self.assert_both_alive(agent)

    async def test_plain_serf_cannot_join_an_agent_that_verifies_incoming(self) -> None:
        await self.start_serf()
        agent = await start_agent(
            self, reactor, node_name="tx-agent", encrypt=KEY, encrypt_verify_outgoing=False
        )
        await self.assertFailure(
            ensureDeferred(self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")), RuntimeError
        )
        self.assertEqual([m["Name"] for m in agent.membership.members()], ["tx-agent"])
        assert agent.membership.lan is not None and agent.membership.lan.gossip.node is not None
        self.assertGreater(agent.membership.lan.gossip.node.dropped, 0)


class SerfKeyringTests(SerfHarness):
    """Key rotation across a pool of a txconsul agent and a serf agent with a keyring file."""

    async def keyring_pair(self) -> Agent:
        ring = tempfile.NamedTemporaryFile("w", prefix="serf-", suffix=".keyring", delete=False)
        self.addCleanup(os.unlink, ring.name)
        json.dump([KEY], ring)
        ring.close()
        self.keyring_file = ring.name
        await self.start_serf(f"-keyring-file={ring.name}")
        agent = await start_agent(self, reactor, node_name="tx-agent", encrypt=KEY)
        await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")
        await self.assert_both_alive(agent)
        return agent

    def lan_keys(self, agent: Agent) -> list[bytes]:
        assert agent.membership.lan is not None and agent.membership.lan.keyring is not None
        return agent.membership.lan.keyring.keys

    async def test_serf_keys_install_use_remove_change_our_keyring(self) -> None:
        agent = await self.keyring_pair()
        code, out = await self.serf_keys(f"-install={NEW_KEY}")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.lan_keys(agent), [bytes(range(32)), bytes(range(1, 33))])
        code, out = await self.serf_keys("-list")
        self.assertEqual(code, 0, out)
        self.assertRegex(out, rf"{re.escape(NEW_KEY)}\s+\[2/2\]")
        code, out = await self.serf_keys(f"-use={NEW_KEY}")
        self.assertEqual(code, 0, out)
        code, out = await self.serf_keys(f"-remove={KEY}")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.lan_keys(agent), [bytes(range(1, 33))])
        code, out = await self.serf_keys(f"-remove={NEW_KEY}")  # the primary: refused by both
        self.assertEqual(code, 1, out)
        self.assertIn("Removing the primary key is not allowed", out)
        await self.assert_both_alive(agent)  # still talking, with the new key

    async def test_our_keyring_api_changes_serfs_keyring(self) -> None:
        agent = await self.keyring_pair()
        body = json.dumps({"Key": NEW_KEY}).encode()
        for method in ("POST", "PUT"):
            code, reason = await api_call(agent, method, "/v1/operator/keyring", body)
            self.assertEqual(code, 200, reason)
        with open(self.keyring_file) as f:
            self.assertEqual(json.load(f), [NEW_KEY, KEY])  # serf saved it, primary first
        code, listing = await api_call(agent, "GET", "/v1/operator/keyring")
        self.assertEqual(code, 200, listing)
        lan = next(p for p in listing if not p["WAN"])
        self.assertEqual(
            (lan["Keys"], lan["PrimaryKeys"], lan["NumNodes"], lan["NumResp"]),
            ({KEY: 2, NEW_KEY: 2}, {NEW_KEY: 2}, 2, 2),
        )
        old = json.dumps({"Key": KEY}).encode()
        self.assertEqual((await api_call(agent, "DELETE", "/v1/operator/keyring", old))[0], 200)
        code, out = await self.serf_keys("-list")
        self.assertEqual(code, 0, out)
        self.assertNotIn(KEY, out)
        await self.assert_both_alive(agent)
