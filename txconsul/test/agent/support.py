"""
What the in-process cluster tests share: server and client agents in this
process on 127.0.0.1 (port 0), with gossip fast enough that they find each
other at once, and the helpers that wait for them and talk to them.

``ClusterTestCase`` has no tests of its own: a module that subclasses it runs
its own tests only, however many modules share it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import consul
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txconsul.agent.agent import Agent
from txconsul.testing.agent import api_call, make_agent, start_agent
from txconsul.testing.polling import poll_until

FAST = {"probe_interval": "100ms", "probe_timeout": "50ms", "gossip_interval": "20ms"}


def lan(agent: Agent) -> str:
    """``ip:port`` of the agent's LAN gossip, to join it."""
    assert agent.membership.lan is not None
    return "127.0.0.1:%d" % agent.membership.lan.gossip.address()[1]


def server_port(agent: Agent) -> int:
    """The bound RPC port of a server agent (its identity in the Raft configuration)."""
    assert agent.servers is not None and agent.servers.listener is not None
    return agent.servers.listener.address()[1]


class ClusterTestCase(TestCase):
    """Three servers (s1-s3, ``bootstrap_expect`` 3) and client agents joined to them."""

    timeout = 60

    def server(self, name: str, **flags: Any) -> Agent:
        """A server agent with its own data directory, started but maybe not ready."""
        flags.setdefault("bootstrap_expect", 3)
        flags.setdefault("data_dir", self.mktemp())
        ports = {"server": 0, **flags.pop("ports", {})}
        return make_agent(
            self,
            reactor,
            node_name=name,
            dev=False,
            server=True,
            gossip_lan=FAST,
            gossip_wan=FAST,
            ports=ports,
            **flags,
        )

    async def cluster(self) -> list[Agent]:
        """s1, s2 and s3, joined through s1, once each is ready (a leader is known)."""
        s1 = self.server("s1")
        s2 = self.server("s2", start_join=[lan(s1)])
        s3 = self.server("s3", start_join=[lan(s1)])
        servers = [s1, s2, s3]
        await gatherResults([a.when_ready() for a in servers])
        return servers

    async def client(
        self, name: str, servers: list[Agent], dirs: tuple[str, ...] = (), **flags: Any
    ) -> Agent:
        """A ready client agent joined to ``servers[0]``."""
        flags.setdefault("start_join", [lan(servers[0])])
        return await start_agent(
            self,
            reactor,
            dirs=dirs,
            node_name=name,
            dev=False,
            server=False,
            data_dir=self.mktemp(),
            gossip_lan=FAST,
            **flags,
        )

    def py_consul(self, agent: Agent, **kw: Any) -> consul.Consul:
        host, port = agent.http.address()
        c = consul.Consul(host=host, port=port, **kw)
        self.addCleanup(c.http.session.close)
        return c

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One blocking py-consul call, in a thread while the reactor serves it."""
        return deferToThread(f, *args, **kw)

    async def http(
        self, agent: Agent, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, Any]:
        return await api_call(agent, method, path, body)

    async def wait_for(self, condition: Callable[[], Any], limit: float = 15.0) -> None:
        if not await poll_until(reactor, condition, limit):
            self.fail(f"condition not met within {limit}s")

    def leaders(self, agents: list[Agent]) -> list[Agent]:
        """The running agents of ``agents`` that lead with a valid lease."""
        return [a for a in agents if a.running and a.consensus.is_leader()]

    def leader(self, servers: list[Agent]) -> Agent:
        """The one leader among ``servers`` (an assertion error if there is not exactly one)."""
        leaders = self.leaders(servers)
        assert len(leaders) == 1, leaders
        return leaders[0]

    def knows_leader(self, agent: Agent) -> bool:
        return agent.consensus.leader_address() != ""

    def knows(self, agent: Agent, leader: Agent) -> bool:
        return agent.consensus.leader_address() == leader.config.rpc_address

    def has_voters(self, agent: Agent, addresses: list[str]) -> bool:
        return sorted(agent.consensus.peers()) == addresses

    async def kv(self, agent: Agent, key: str, query: str = "") -> str | None:
        """The value of ``key`` read through ``agent`` (``query``: ``?stale``, ...), or None."""
        code, body = await api_call(agent, "GET", f"/v1/kv/{key}{query}")
        if code != 200:
            return None
        return base64.b64decode(body[0]["Value"]).decode()

    async def stale_kv(self, agent: Agent, key: str) -> str | None:
        """The value in ``agent``'s own store (a ``?stale`` read: no trip to the leader)."""
        return await self.kv(agent, key, "?stale")

    async def put(self, agent: Agent, key: str, value: bytes = b"v") -> bool:
        code, body = await api_call(agent, "PUT", f"/v1/kv/{key}", value)
        return code == 200 and body is True
