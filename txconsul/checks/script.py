# -*- test-case-name: txconsul.test.checks.test_script -*-
"""
Script checks: run a program, read its exit code the Nagios way.

The program runs in a session of its own (through ``setsid``), so that on a
timeout, and after it exits, the whole process group is killed: a script
that leaves children behind does not leak them. Output is kept up to 4 KiB;
the rest is read and dropped so that a chatty script never blocks.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.checks.status import CRITICAL, MAX_OUTPUT, CheckResult, clip, nagios_status

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
DEFAULT_TIMEOUT = 30.0


class _ScriptProtocol(ProcessProtocol):
    log = Logger()

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._output = bytearray()
        self._timer: IDelayedCall | None = None
        self._timed_out = False
        self._exit: Failure | None = None
        self._pid: int | None = None
        self.done: Deferred[CheckResult] = Deferred(canceller=self._cancel)

    def connectionMade(self) -> None:
        # Twisted forgets the pid once the process is reaped, but its group
        # may live on; keep it to kill the group.
        self._pid = getattr(self.transport, "pid", None)
        self.transport.closeStdin()  # type: ignore[union-attr]
        self._timer = self._reactor.callLater(self._timeout, self._kill_on_timeout)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = MAX_OUTPUT - len(self._output)
        if room > 0:
            self._output += data[:room]

    def _kill_group(self) -> None:
        pid = self._pid
        if not pid:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if self._exit is None:
            # setsid may not have made the group yet: kill the process itself.
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _cancel(self, d: Deferred[CheckResult]) -> None:
        """The run is no longer wanted (its check went away): kill it now."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._kill_group()

    def _kill_on_timeout(self) -> None:
        self._timer = None
        self._timed_out = True
        self._kill_group()

    def processExited(self, reason: Failure) -> None:
        # The script is gone; anything it left running in its group goes too,
        # or a child holding our pipes would keep the check from finishing.
        self._exit = reason
        self._kill_group()

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        reason = self._exit or reason
        output = clip(bytes(self._output))
        if self._timed_out:
            result = CheckResult(
                CRITICAL, f"Timed out ({self._timeout:g}s) running check\n{output}"
            )
        elif reason.check(ProcessDone):
            result = CheckResult(nagios_status(0), output)
        elif reason.check(ProcessTerminated):
            value: Any = reason.value
            if value.exitCode is not None:
                result = CheckResult(nagios_status(value.exitCode), output)
            else:
                result = CheckResult(CRITICAL, f"Killed by signal {value.signal}\n{output}")
        else:
            result = CheckResult(CRITICAL, f"Check ended: {reason.getErrorMessage()}\n{output}")
        if not self.done.called:
            self.done.callback(result)


def _resolve(program: str) -> str | None:
    if "/" in program:
        return program if os.path.isfile(program) else None
    return shutil.which(program, mode=os.F_OK)


def run_script(
    reactor: Any,
    args: tuple[str, ...] | list[str],
    timeout: float | None = None,
    shell_script: str = "",
) -> Deferred[CheckResult]:
    """
    Run one script check.

    :param args: the program and its arguments (Consul's ``args``).
    :param shell_script: the older ``script`` form: a string run by ``/bin/sh -c``.
    """
    from twisted.internet.defer import succeed

    argv = ["/bin/sh", "-c", shell_script] if shell_script else list(args)
    if not argv:
        return succeed(CheckResult(CRITICAL, "No script to run"))
    program = _resolve(argv[0])
    if program is None:
        return succeed(CheckResult(CRITICAL, f"Check script not found: {argv[0]}"))
    if not os.access(program, os.X_OK):
        return succeed(CheckResult(CRITICAL, f"Check script is not executable: {program}"))
    proto = _ScriptProtocol(reactor, timeout if timeout is not None else DEFAULT_TIMEOUT)
    env = dict(os.environ)
    try:
        reactor.spawnProcess(proto, SETSID, [SETSID, program, *argv[1:]], env=env)
    except OSError as e:
        return succeed(CheckResult(CRITICAL, f"Could not start check script: {e}"))
    return proto.done
