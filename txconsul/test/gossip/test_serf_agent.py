"""
A txconsul agent and real ``serf`` agents (Debian package ``serf``) in one
LAN pool: serf joins the agent, the agent joins serf, a pool of two serf
agents and the reverse, with and without encryption (16-, 24- and 32-byte
keys); both sides agree on who is alive, failed and left, and user events
fired on either side arrive on the other.
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

import attrs
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from txconsul.agent.agent import Agent
from txconsul.gossip.serf import UserEvent
from txconsul.testing.agent import api_call, start_agent
from txconsul.testing.polling import poll_until
from txconsul.testing.process import free_port

KEY = base64.b64encode(bytes(range(32))).decode()
NEW_KEY = base64.b64encode(bytes(range(1, 33))).decode()
#: Consul's member status codes, by serf's names
STATUS = {"alive": 1, "leaving": 2, "left": 3, "failed": 4}


@attrs.define
class SerfProcess:
    """One ``serf agent`` child process: its node name, gossip port, RPC address and log."""

    name: str
    port: int
    rpc: str
    log: str
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        with open(self.log) as f:
            return f.read()


class SerfHarness(TestCase):
    """Starts ``serf agent`` processes beside txconsul agents in this process."""

    timeout = 60

    async def start_serf(self, *extra: str, name: str = "serf-a") -> SerfProcess:
        """
        Start ``serf agent`` named ``name`` and wait until it answers; new ports
        if one was taken. The first one started is the default of the helpers.
        """
        self.serf_bin = shutil.which("serf")
        if self.serf_bin is None:
            if os.environ.get("CI") == "true":
                self.fail("the serf binary is missing (apt-get install serf)")
            raise SkipTest("needs the serf binary: apt-get install serf")
        log = tempfile.NamedTemporaryFile(prefix="serf-", suffix=".log", delete=False)
        self.addCleanup(os.unlink, log.name)
        self.addCleanup(log.close)
        for _ in range(5):
            port, rpc = free_port(), f"127.0.0.1:{free_port()}"
            args = [
                self.serf_bin, "agent", f"-node={name}", f"-bind=127.0.0.1:{port}",
                f"-rpc-addr={rpc}", "-log-level=debug",
                "-tag", "role=node", "-tag", "dc=dc1", *extra,
            ]  # fmt: skip
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            self.addCleanup(self._stop, process)
            serf = SerfProcess(name, port, rpc, log.name, process)
            self.serfs = [*getattr(self, "serfs", []), serf]

            def up_or_gone(s: SerfProcess = serf) -> bool:
                return s.process.poll() is not None or bool(self.serf_members(s))

            await self.wait_for(up_or_gone)
            if process.poll() is None:
                if not hasattr(self, "rpc"):
                    self.serf_port, self.rpc, self.log = port, rpc, log
                return serf
            self.serfs.remove(serf)
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

    def serf_cli(self, command: str, *args: str, serf: SerfProcess | None = None) -> str:
        assert self.serf_bin is not None
        rpc = self.rpc if serf is None else serf.rpc
        done = subprocess.run(
            [self.serf_bin, command, f"-rpc-addr={rpc}", *args],
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

    async def serf_join(self, address: str, serf: SerfProcess | None = None) -> None:
        """``serf join`` as a child process, so the reactor keeps serving our side."""
        await self.serf_command("join", address, serf=serf)

    async def serf_command(self, command: str, *args: str, serf: SerfProcess | None = None) -> None:
        """``serf COMMAND`` as a child process (the reactor keeps serving); raises on failure."""
        assert self.serf_bin is not None
        rpc = self.rpc if serf is None else serf.rpc
        out, err, code = await getProcessOutputAndValue(
            self.serf_bin, [command, f"-rpc-addr={rpc}", *args], env=dict(os.environ)
        )
        if code != 0:
            raise RuntimeError((out + err).decode())

    def serf_members(self, serf: SerfProcess | None = None) -> dict[str, dict[str, Any]]:
        try:
            listing = json.loads(self.serf_cli("members", "-format=json", serf=serf))
        except (RuntimeError, ValueError):
            return {}
        return {m["name"]: m for m in listing["members"]}

    async def wait_for(self, condition: Callable[[], bool], limit: float = 20.0) -> None:
        if not await poll_until(reactor, condition, limit, interval=0.1):
            tails = "".join(
                f"\n--- {s.name}:\n{s.log_text()[-1500:]}" for s in getattr(self, "serfs", [])
            )
            self.fail(f"condition not met in time; serf logs:{tails}")

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


class SerfPoolTests(SerfHarness):
    """
    A txconsul agent and a pool of two serf agents: both sides agree on who is
    alive, left and failed, and user events cross both ways, in plaintext and
    encrypted pools.
    """

    timeout = 90

    async def serf_pool(self, *extra: str) -> tuple[SerfProcess, SerfProcess]:
        """serf-a and serf-b, serf-b joined to serf-a."""
        a = await self.start_serf(*extra, name="serf-a")
        b = await self.start_serf(*extra, name="serf-b")
        await self.serf_join(a.address, serf=b)
        return a, b

    async def agent_statuses(self, agent: Agent) -> dict[str, int]:
        """The agent's members and statuses, from ``GET /v1/agent/members``."""
        code, listing = await api_call(agent, "GET", "/v1/agent/members")
        self.assertEqual(code, 200, listing)
        return {m["Name"]: m["Status"] for m in listing}

    async def agreed(
        self, agent: Agent | None, serfs: list[SerfProcess], want: dict[str, str]
    ) -> None:
        """Wait until the agent (if running) and each serf agent list exactly ``want``."""

        async def agree() -> bool:
            for serf in serfs:
                theirs = {n: m["status"] for n, m in self.serf_members(serf).items()}
                if theirs != want:
                    return False
            return agent is None or await self.agent_statuses(agent) == {
                n: STATUS[s] for n, s in want.items()
            }

        await self.wait_for(agree, limit=40.0)

    def user_events(self, agent: Agent) -> list[UserEvent]:
        """The user events the agent's LAN pool delivers from now on."""
        seen: list[UserEvent] = []

        def collect(pool: Any, events: list[Any]) -> None:
            if not pool.wan:
                seen.extend(e for e in events if isinstance(e, UserEvent))

        agent.membership.subscribe(collect)
        return seen

    async def events_both_ways(
        self, agent: Agent, seen: list[UserEvent], serfs: list[SerfProcess]
    ) -> None:
        """``serf event`` on the last serf agent reaches the agent; the agent's reaches them all."""
        await self.serf_command("event", "from-serf", "serf-payload", serf=serfs[-1])
        await self.wait_for(
            lambda: any((e.name, e.payload) == ("from-serf", b"serf-payload") for e in seen)
        )
        pool = agent.membership.lan
        assert pool is not None
        pool.serf.user_event("from-txconsul", b"tx-payload")
        pool.gossip.flush()
        await self.wait_for(lambda: all("user-event: from-txconsul" in s.log_text() for s in serfs))

    async def test_the_agent_joins_a_pool_of_two_serf_agents(self) -> None:
        a, b = await self.serf_pool()
        agent = await start_agent(self, reactor, node_name="tx-agent")
        seen = self.user_events(agent)
        self.assertEqual(await agent.membership.join([a.address]), 1)
        await self.agreed(
            agent, [a, b], {"tx-agent": "alive", "serf-a": "alive", "serf-b": "alive"}
        )
        await self.events_both_ways(agent, seen, [a, b])

        await self.serf_command("leave", serf=b)  # graceful: serf-b is left for everyone
        await self.agreed(agent, [a], {"tx-agent": "alive", "serf-a": "alive", "serf-b": "left"})

        await agent.stopService()  # stopped without leaving: failed for serf
        await self.agreed(None, [a], {"tx-agent": "failed", "serf-a": "alive", "serf-b": "left"})

    async def test_two_serf_agents_join_the_agent(self) -> None:
        agent = await start_agent(self, reactor, node_name="tx-agent")
        seen = self.user_events(agent)
        a = await self.start_serf(name="serf-a")
        b = await self.start_serf(name="serf-b")
        for serf in (a, b):
            await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}", serf=serf)
        await self.agreed(
            agent, [a, b], {"tx-agent": "alive", "serf-a": "alive", "serf-b": "alive"}
        )
        await self.events_both_ways(agent, seen, [a, b])

        b.process.kill()  # SIGKILL: serf-b is failed for everyone
        b.process.wait(5)
        await self.agreed(agent, [a], {"tx-agent": "alive", "serf-a": "alive", "serf-b": "failed"})

        code, body = await api_call(agent, "PUT", "/v1/agent/leave")
        self.assertEqual(code, 200, body)
        await self.agreed(None, [a], {"tx-agent": "left", "serf-a": "alive", "serf-b": "failed"})

    async def test_the_agent_joins_an_encrypted_pool_of_two_serf_agents(self) -> None:
        a, b = await self.serf_pool(f"-encrypt={KEY}")
        agent = await start_agent(self, reactor, node_name="tx-agent", encrypt=KEY)
        seen = self.user_events(agent)
        self.assertEqual(await agent.membership.join([b.address]), 1)
        await self.agreed(
            agent, [a, b], {"tx-agent": "alive", "serf-a": "alive", "serf-b": "alive"}
        )
        await self.events_both_ways(agent, seen, [b, a])

    async def keyed(self, size: int) -> None:
        """serf joins an agent with a ``size``-byte key; members and user events cross."""
        key = base64.b64encode(bytes(range(100, 100 + size))).decode()
        agent = await self.start_both(encrypt=key)
        seen = self.user_events(agent)
        [serf] = self.serfs
        await self.serf_join(f"127.0.0.1:{self.lan_port(agent)}")
        await self.assert_both_alive(agent)
        await self.events_both_ways(agent, seen, [serf])

    async def test_a_16_byte_key(self) -> None:
        await self.keyed(16)

    async def test_a_24_byte_key(self) -> None:
        await self.keyed(24)
