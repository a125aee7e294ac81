"""
Start a real agent in this process, listening on 127.0.0.1 with port 0.

Tests use it with the real reactor (``twisted.trial.unittest.TestCase``); the
agent is stopped by the cleanup that ``start_agent`` registers.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from txconsul.agent.agent import Agent
from txconsul.config import load


def dev_config(**flags: Any) -> Any:
    """A dev agent's configuration with every listener on a free port."""
    merged: dict[str, Any] = {
        "dev": True,
        "node_name": "node1",
        "ports": {"http": 0, "dns": 0, "serf_lan": 0, "serf_wan": 0, "server": 0},
    }
    ports = flags.pop("ports", {})
    merged["ports"].update(ports)
    merged.update(flags)
    return merged


def start_agent(
    testcase: Any,
    reactor: Any,
    files: tuple[str, ...] = (),
    dirs: tuple[str, ...] = (),
    **flags: Any,
) -> Deferred[Agent]:
    """
    Start a dev agent for ``testcase`` and stop it when the test ends.

    :return: a Deferred that fires with the agent once it is ready.
    """
    agent = make_agent(testcase, reactor, files, dirs, **flags)

    async def ready() -> Agent:
        await agent.when_ready()
        return agent

    return ensureDeferred(ready())


def make_agent(
    testcase: Any,
    reactor: Any,
    files: tuple[str, ...] = (),
    dirs: tuple[str, ...] = (),
    **flags: Any,
) -> Agent:
    """Start an agent for ``testcase`` without waiting for it to be ready (a cluster's members)."""
    config = load(dev_config(**flags), files, dirs)
    agent = Agent(config, reactor, random.Random(1))
    agent.startService()
    testcase.addCleanup(lambda: agent.stopService() if agent.running else None)
    return agent


def http_address(agent: Agent) -> str:
    """``host:port`` of the agent's HTTP API."""
    host, port = agent.http.address()
    return f"{host}:{port}"


async def api_call(
    agent: Agent, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    """One request to the agent's HTTP API: the status and the decoded JSON (or text)."""
    import json

    import treq

    response = await treq.request(
        method, f"http://{http_address(agent)}{path}", data=body, persistent=False
    )
    content: bytes = await response.content()
    try:
        return response.code, json.loads(content)
    except ValueError:
        return response.code, content.decode()
