# -*- test-case-name: txconsul.test.test_tap -*-
"""
The twistd plugin's options and ``makeService``: the agent's composition root.

Flags carry Consul's names (``--dev``, ``--dc``, ``--node``, ``--client``,
``--config-dir`` ...). ``postOptions`` merges them with the config files and
checks everything, so a bad flag or file stops twistd with a clear message
before anything starts; ``makeService`` only wires the agent.
"""

from __future__ import annotations

import resource
import signal
from typing import Any

from twisted.application.service import IService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from txconsul.clock import use_monotonic_time
from txconsul.config import AgentConfig, load
from txconsul.errors import ConfigError

log = Logger()

# Flags that take effect once the service that uses them lands; they are
# accepted and checked now so that config files and scripts carry over.
_PORT_FLAGS = {
    "http-port": "http",
    "dns-port": "dns",
    "serf-lan-port": "serf_lan",
    "serf-wan-port": "serf_wan",
    "server-port": "server",
}


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise usage.UsageError(f"{value!r} is not a port number") from None
    if not -1 <= n <= 65535:
        raise usage.UsageError(f"port {n} is out of range")
    return n


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a txconsul agent (a Consul-compatible agent)."

    optFlags = [
        ["dev", None, "Development mode: one server, data in memory, UI on."],
        ["server", None, "Run in server mode."],
        ["bootstrap", None, "Server that elects itself (one server, or the first of a cluster)."],
        ["ui", None, "Serve the web UI."],
        ["rejoin", None, "Rejoin the pools from the member snapshot even after a leave."],
    ]
    optParameters = [
        ["dc", None, None, "Datacenter of this agent (default dc1)."],
        ["datacenter", None, None, "Same as --dc."],
        ["node", None, None, "Node name (default: the host name)."],
        ["node-id", None, None, "Node UUID (default: generated and kept in data-dir)."],
        ["client", None, None, "Address of the HTTP and DNS listeners (default 127.0.0.1)."],
        ["bind", None, None, "Address of gossip and server RPC (default 127.0.0.1)."],
        ["advertise", None, None, "Address advertised to other agents."],
        ["advertise-wan", None, None, "Address a server advertises on the WAN pool."],
        ["http-port", None, None, "HTTP API port (default 8500; 0 picks a free one).", _port],
        ["dns-port", None, None, "DNS port (default 8600).", _port],
        ["serf-lan-port", None, None, "LAN gossip port (default 8301).", _port],
        ["serf-wan-port", None, None, "WAN gossip port (default 8302).", _port],
        ["server-port", None, None, "Server RPC port (default 8300).", _port],
        ["data-dir", None, None, "Directory for the agent's state (required unless --dev)."],
        ["bootstrap-expect", None, None, "Servers to wait for before the first election.", int],
        ["encrypt", None, None, "Base64 gossip encryption key (16, 24 or 32 bytes)."],
        ["log-level", None, None, "TRACE, DEBUG, INFO, WARN or ERR."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config-file"] = []
        self["config-dir"] = []
        self["join"] = []
        self["retry-join"] = []
        self["retry-join-wan"] = []
        self.config: AgentConfig | None = None

    def opt_config_file(self, path: str) -> None:
        """A JSON config file (may be given more than once)."""
        self["config-file"].append(path)

    def opt_config_dir(self, path: str) -> None:
        """A directory of JSON config files, merged in name order (repeatable)."""
        self["config-dir"].append(path)

    def opt_join(self, address: str) -> None:
        """Address of an agent to join at start (repeatable)."""
        self["join"].append(address)

    def opt_retry_join(self, address: str) -> None:
        """Like --join, retried until it succeeds (repeatable)."""
        self["retry-join"].append(address)

    def opt_retry_join_wan(self, address: str) -> None:
        """A server's WAN pool member to join, retried until it succeeds (repeatable)."""
        self["retry-join-wan"].append(address)

    def flags(self) -> dict[str, Any]:
        """The options given on the command line, as config-file keys."""
        out: dict[str, Any] = {}
        if self["dev"]:
            out["dev"] = True
        if self["server"]:
            out["server"] = True
        if self["bootstrap"]:
            out["bootstrap"] = True
        if self["ui"]:
            out["ui"] = True
        if self["rejoin"]:
            out["rejoin_after_leave"] = True
        names = {
            "datacenter": "datacenter",
            "dc": "datacenter",
            "node": "node_name",
            "node-id": "node_id",
            "client": "client_addr",
            "bind": "bind_addr",
            "advertise": "advertise_addr",
            "advertise-wan": "advertise_addr_wan",
            "data-dir": "data_dir",
            "bootstrap-expect": "bootstrap_expect",
            "encrypt": "encrypt",
            "log-level": "log_level",
        }
        for flag, key in names.items():
            if self[flag] is not None:
                out[key] = self[flag]
        ports = {key: self[flag] for flag, key in _PORT_FLAGS.items() if self[flag] is not None}
        if ports:
            out["ports"] = ports
        if self["join"]:
            out["start_join"] = list(self["join"])
        if self["retry-join"]:
            out["retry_join"] = list(self["retry-join"])
        if self["retry-join-wan"]:
            out["retry_join_wan"] = list(self["retry-join-wan"])
        return out

    def postOptions(self) -> None:
        try:
            self.config = load(self.flags(), self["config-file"], self["config-dir"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e


def raise_descriptor_limit() -> None:
    """
    Let the agent use as many file descriptors as the system allows.

    Every blocking query, HTTP check and check script holds descriptors; the
    usual soft limit of 1,024 is soon reached, and then the agent can accept
    no more connections at all.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from txconsul.agent.agent import Agent

    assert options.config is not None
    raise_descriptor_limit()
    use_monotonic_time(reactor)  # a wall-clock step must move no timer (txconsul.clock)
    agent = Agent(options.config, reactor, shutdown=lambda: stop(reactor))
    flags, files, dirs = options.flags(), options["config-file"], options["config-dir"]
    agent.reload_config = lambda: load(flags, files, dirs)

    def on_sighup(signum: int, frame: Any) -> None:
        # Only hand the work back to the reactor; the handler does nothing else.
        reactor.callFromThread(lambda: agent.reload().addErrback(lambda _: None))  # type: ignore[attr-defined]

    reactor.callWhenRunning(signal.signal, signal.SIGHUP, on_sighup)
    install_leave_signals(reactor, agent)
    return agent


def install_leave_signals(reactor: Any, agent: Any) -> None:
    """
    SIGTERM (``leave_on_terminate``) and SIGINT (unless
    ``skip_leave_on_interrupt``) leave gracefully before the agent stops, as
    Consul's agent does; otherwise twistd's own handlers stop it at once. A
    second signal during the leave stops it without waiting.
    """
    c = agent.config
    leaving: list[int] = []

    def leave_then_stop() -> None:
        if leaving:
            stop(reactor)
            return
        leaving.append(1)
        log.info("caught a stop signal: leaving gracefully first")
        agent.leave()

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(leave_then_stop)

    for signum, wanted in (
        (signal.SIGTERM, c.leave_on_terminate),
        (signal.SIGINT, not c.skip_leave_on_interrupt),
    ):
        if wanted:
            reactor.callWhenRunning(signal.signal, signum, on_signal)


def stop(reactor: Any) -> None:
    """Stop the reactor, if nobody did already."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
