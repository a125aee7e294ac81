# -*- test-case-name: txconsul.test.cli.test_flags -*-
"""
Consul's command-line habits on top of ``twisted.python.usage``.

Consul's commands take Go-style flags: one dash before long names
(``-recurse``, ``-http-addr=ADDR``), ``-flag=true``/``-flag=false`` for
booleans, and flags end at the first positional argument. ``usage.Options``
parses GNU-style ``--long`` options, so every command level rewrites its own
arguments before getopt sees them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.python import usage

if TYPE_CHECKING:
    from txconsul.cli.context import Context

# Go's strconv.ParseBool, which the flag package uses for -flag=VALUE.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def translate(argv: Sequence[str], long_opts: Iterable[str], short_opts: str = "") -> list[str]:
    """
    Rewrite Consul-style arguments into the GNU form getopt understands.

    ``-name`` becomes ``--name``; a boolean ``-name=false`` is dropped and
    ``-name=true`` becomes ``--name``. Translation stops, as Go's flag package
    does, at ``--`` or at the first argument that is not a flag (the value of
    a flag that takes one is skipped over, not mistaken for it).

    :param long_opts: getopt's long option list: ``name`` for a flag,
        ``name=`` for an option that takes a value.
    :param short_opts: getopt's short option string (``"h"``, ``"d:"``).
    """
    flags: set[str] = set()
    takes_value: set[str] = set()
    for opt in long_opts:
        if opt.endswith("="):
            takes_value.add(opt[:-1])
        else:
            flags.add(opt)
    short_values = {c for i, c in enumerate(short_opts) if short_opts[i + 1 : i + 2] == ":"}
    short_all = {c for c in short_opts if c != ":"}

    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            out.extend(args[i - 1 :])
            break
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, eq, value = body.partition("=")
        if not arg.startswith("--") and len(name) == 1 and name in short_all and not eq:
            out.append(arg)
            if name in short_values and i < len(args):
                out.append(args[i])
                i += 1
            continue
        if name in flags and eq:
            if value in _TRUE:
                out.append("--" + name)
            elif value in _FALSE:
                pass
            else:
                out.append("--" + body)  # getopt refuses it with a clear message
            continue
        out.append("--" + body)
        if name in takes_value and not eq and i < len(args):
            out.append(args[i])
            i += 1
    return out


class ShowHelp(Exception):
    """``-h``/``-help`` was given: print this command's usage and stop."""

    def __init__(self, options: usage.Options) -> None:
        super().__init__()
        self.options = options


class ShowVersion(Exception):
    """``-version`` was given."""


class CommandUsageError(usage.UsageError):
    """A usage error, with the command whose usage should be shown."""

    def __init__(self, message: str, options: usage.Options) -> None:
        super().__init__(message)
        self.options = options


_OPTION_LINE = re.compile(r"^(\s+)(-\w, )?--(?=\w)")


class Command(usage.Options):
    """
    A ``txconsul`` command or command group.

    Leaves override ``execute``; groups list their ``subCommands``. Each class
    sets ``synopsis`` to its whole usage line, from ``txconsul`` on.
    """

    synopsis = "txconsul"
    optFlags: list[list[str | None]] = []
    optParameters: list[list[Any]] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        assert options is not None, "txconsul commands are always given their argv"
        try:
            super().parseOptions(translate(options, self.longOpt, self.shortOpt))
        except CommandUsageError:
            raise
        except usage.UsageError as e:
            raise CommandUsageError(str(e).replace("option --", "option -"), self) from None

    def postOptions(self) -> None:
        if getattr(self, "subCommands", None) and self.subCommand is None:
            raise usage.UsageError("a subcommand is required")

    def opt_help(self) -> None:
        """Show this help."""
        raise ShowHelp(self)

    opt_h = opt_help

    def opt_version(self) -> None:
        """Show the version of txconsul."""
        raise ShowVersion()

    def getSynopsis(self) -> str:
        return f"Usage: {self.synopsis}"

    def getUsage(self, width: int | None = None) -> str:
        """Twisted's usage text, with options shown the way Consul spells them."""
        text: str = super().getUsage(width)
        lines = [
            _OPTION_LINE.sub(lambda m: m.group(1) + (m.group(2) or "") + "-", line)
            for line in text.splitlines()
        ]
        return "\n".join(lines).rstrip("\n") + "\n"

    async def execute(self, ctx: Context) -> int:
        """Run the command; the exit status is the result."""
        raise NotImplementedError(type(self).__name__)


def leaf(options: Any) -> Command:
    """The innermost subcommand that was parsed."""
    while getattr(options, "subOptions", None) is not None:
        options = options.subOptions
    assert isinstance(options, Command)
    return options
