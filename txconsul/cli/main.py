# -*- test-case-name: txconsul.test.cli.test_commands -*-
"""
The ``txconsul`` command: its composition root.

``run`` parses the arguments and runs one command against an agent's HTTP API
with the reactor, streams and environment it is given, so tests call it
inside trial's reactor; ``main`` runs it under ``react`` with the process's
own. ``txconsul agent`` is the exception: it hands over to twistd, which runs
the reactor itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, NoReturn

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

from txconsul import __version__
from txconsul.cli.agent import AgentCommand, run_agent
from txconsul.cli.agentops import Maint, Reload
from txconsul.cli.catalog import Catalog
from txconsul.cli.context import Context
from txconsul.cli.flags import Command, CommandUsageError, ShowHelp, ShowVersion, leaf
from txconsul.cli.join import ForceLeave, Join, Leave
from txconsul.cli.keyring import Keygen, Keyring
from txconsul.cli.kv import KV
from txconsul.cli.members import Members
from txconsul.cli.operator import Operator


class Options(Command):
    synopsis = "txconsul <command> [options] [args]"
    longdesc = (
        "A Consul-compatible command line. Commands other than 'agent' talk to "
        "the agent at CONSUL_HTTP_ADDR (default 127.0.0.1:8500) or -http-addr."
    )
    subCommands = [
        ["agent", None, AgentCommand, "Run an agent (the same as twistd -n txconsul)."],
        ["catalog", None, Catalog, "List services, nodes and datacenters."],
        ["force-leave", None, ForceLeave, "Mark a failed member of the pool as left."],
        ["join", None, Join, "Join the agent to a pool through other agents."],
        ["keygen", None, Keygen, "Print a new gossip encryption key."],
        ["keyring", None, Keyring, "List and change the gossip encryption keys."],
        ["kv", None, KV, "Read and write the KV store."],
        ["leave", None, Leave, "Leave the pools gracefully and stop the agent."],
        ["members", None, Members, "List the members of the gossip pool."],
        ["maint", None, Maint, "Put the node or a service in maintenance mode."],
        ["reload", None, Reload, "Make the agent read its config files again."],
        ["operator", None, Operator, "Operator commands: operator raft list-peers|remove-peer."],
    ]


async def run(
    reactor: Any,
    argv: Sequence[str],
    stdout: IO[str],
    stderr: IO[str],
    environ: Mapping[str, str],
    stdin: IO[Any] | None = None,
) -> int:
    """
    Run one ``txconsul`` command; the result is the exit status.

    :param argv: the arguments after the program name.
    """
    options = Options()
    try:
        options.parseOptions(list(argv))
    except ShowHelp as e:
        stdout.write(str(e.options))
        return 0
    except ShowVersion:
        stdout.write(f"txconsul v{__version__}\n")
        return 0
    except CommandUsageError as e:
        stderr.write(f"{e}\n\n{e.options}")
        return 1
    ctx = Context(reactor, stdout, stderr, environ, stdin)
    command = leaf(options)
    try:
        return await command.execute(ctx)
    except usage.UsageError as e:
        stderr.write(f"{e}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script ``txconsul``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "agent":
        run_agent(args[1:])
        sys.exit(0)

    async def command(reactor: Any) -> None:
        code = await run(reactor, args, sys.stdout, sys.stderr, os.environ, sys.stdin)
        if code:
            raise SystemExit(code)

    react(lambda reactor: ensureDeferred(command(reactor)))
    raise AssertionError("react() returned")  # react always exits


if __name__ == "__main__":
    main()
