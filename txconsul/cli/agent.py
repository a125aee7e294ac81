# -*- test-case-name: txconsul.test.cli.test_agent -*-
"""
``txconsul agent``: run an agent, exactly as ``twistd -n txconsul`` would.

Consul's single-dash flags (``-dev``, ``-http-port=0``, ``-config-dir DIR``)
are rewritten into the double-dash form of the twistd plugin's options
(``txconsul.tap.Options``), then twistd runs in this process and owns the
reactor until the agent stops.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from txconsul.cli.context import Context
from txconsul.cli.flags import Command, translate

# What twistd itself is told: stay in the foreground, write no pid file.
TWISTD_PREFIX = ["twistd", "-n", "--pidfile=", "txconsul"]


def agent_argv(args: Sequence[str]) -> list[str]:
    """The plugin's arguments for Consul-style agent flags."""
    from txconsul.tap import Options as AgentFlags

    flags = AgentFlags()
    # Consul spells help "-h"; the plugin only knows "--help".
    args = ["--help" if a in ("-h", "-help") else a for a in args]
    return translate(args, flags.longOpt, flags.shortOpt)


def twistd_argv(args: Sequence[str]) -> list[str]:
    """The whole ``sys.argv`` that makes twistd run this agent."""
    return [*TWISTD_PREFIX, *agent_argv(args)]


def run_agent(args: Sequence[str]) -> None:
    """Run twistd in this process; it returns once the reactor stops."""
    from twisted.scripts import twistd

    sys.argv = twistd_argv(args)
    twistd.run()


class AgentCommand(Command):
    """
    Listed among the subcommands for the help text; ``main`` hands the
    arguments to twistd before any parsing, since twistd runs its own reactor.
    """

    synopsis = "txconsul agent [options]   (the options of: twistd txconsul --help)"
    longdesc = "Run a txconsul agent in the foreground."

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        self.args = list(options or [])

    async def execute(self, ctx: Context) -> int:
        ctx.err("txconsul agent runs its own reactor; start it through txconsul.cli.main.main().")
        return 1
