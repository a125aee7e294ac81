# -*- test-case-name: txconsul.test.checks.test_script -*-
"""Script checks run as real processes: exit codes, output, timeouts, leaks."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import defer, reactor  # noqa: TID251 (real-process test)
from twisted.internet.process import ProcessReader
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.checks.script import run_script
from txconsul.checks.status import MAX_OUTPUT, CheckResult, clip, http_status, nagios_status


class StatusRuleTests(SynchronousTestCase):
    def test_nagios_exit_codes(self) -> None:
        self.assertEqual(
            [nagios_status(c) for c in (0, 1, 2, 3, 127)],
            ["passing", "warning", "critical", "critical", "critical"],
        )

    def test_http_codes(self) -> None:
        self.assertEqual(
            [http_status(c) for c in (200, 204, 299, 301, 404, 429, 500)],
            ["passing"] * 3 + ["critical", "critical", "warning", "critical"],
        )

    def test_output_is_cut_at_4_kib(self) -> None:
        self.assertEqual(len(clip(b"x" * 10000)), MAX_OUTPUT)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_after_first_spawn() -> Any:
    """Open descriptors once the reactor has set up its own child-reaping
    pipe (which the first spawn of a test creates)."""
    d = run_script(reactor, ["true"], 5)
    return d.addCallback(lambda _: open_fds())


class ScriptTests(TestCase):
    timeout = 30

    def script(self, body: str, executable: bool = True) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        if executable:
            os.chmod(path, stat.S_IRWXU)
        return path

    @defer.inlineCallbacks
    def check(self, *args: str, timeout: float | None = None, shell: str = "") -> Any:
        result = yield run_script(reactor, list(args), timeout, shell_script=shell)
        return result

    @defer.inlineCallbacks
    def test_exit_codes_map_to_statuses_and_output_is_kept(self) -> Any:
        for code, status in ((0, "passing"), (1, "warning"), (2, "critical"), (42, "critical")):
            result = yield self.check(self.script(f"echo out-{code}; echo err >&2; exit {code}"))
            self.assertEqual(result.status, status)
            self.assertIn(f"out-{code}", result.output)
            self.assertIn("err", result.output)

    @defer.inlineCallbacks
    def test_old_script_string_runs_through_a_shell(self) -> Any:
        result = yield self.check(shell="echo a && exit 1")
        self.assertEqual(result, CheckResult("warning", "a\n"))

    @defer.inlineCallbacks
    def test_missing_script_is_critical_and_says_so(self) -> Any:
        result = yield self.check("/no/such/check_thing", "-w")
        self.assertEqual(result.status, "critical")
        self.assertIn("not found", result.output)
        result = yield self.check("no-such-program-anywhere")
        self.assertEqual(result.status, "critical")

    @defer.inlineCallbacks
    def test_script_that_is_not_executable_is_critical(self) -> Any:
        result = yield self.check(self.script("exit 0", executable=False))
        self.assertEqual(result.status, "critical")
        self.assertIn("not executable", result.output)

    @defer.inlineCallbacks
    def test_hanging_script_is_killed_at_its_timeout(self) -> Any:
        before = yield fds_after_first_spawn()
        result = yield self.check(self.script("echo started; sleep 60"), timeout=0.5)
        self.assertEqual(result.status, "critical")
        self.assertIn("Timed out", result.output)
        self.assertIn("started", result.output)
        self.assertEqual(open_fds(), before)

    @defer.inlineCallbacks
    def test_megabytes_of_output_are_read_and_cut(self) -> Any:
        result = yield self.check(self.script("head -c 5000000 /dev/zero | tr '\\0' x; exit 0"))
        self.assertEqual(result.status, "passing")
        self.assertEqual(len(result.output), MAX_OUTPUT)

    @defer.inlineCallbacks
    def test_children_that_outlive_the_script_are_killed(self) -> Any:
        marker = os.path.abspath(self.mktemp())
        before = yield fds_after_first_spawn()
        result = yield self.check(
            self.script(f"(sleep 30; touch {marker}) & echo $! > {marker}.pid; exit 0")
        )
        self.assertEqual(result.status, "passing")
        with open(marker + ".pid") as f:
            child = int(f.read())
        # The orphan was sent SIGKILL; within moments it is gone (or a zombie
        # waiting for init to reap it).
        state = "?"
        for _ in range(100):
            try:
                with open(f"/proc/{child}/stat") as f:
                    state = f.read().split(")")[1].split()[0]
            except FileNotFoundError:
                state = "gone"
            if state in ("gone", "Z", "X"):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIn(state, ("gone", "Z", "X"))
        self.assertEqual(open_fds(), before)

    @defer.inlineCallbacks
    def test_script_killed_by_a_signal_is_critical(self) -> Any:
        result = yield self.check(self.script("kill -9 $$"))
        self.assertEqual(result.status, "critical")
        self.assertIn("signal", result.output)

    @defer.inlineCallbacks
    def test_cancelling_a_run_kills_the_script(self) -> Any:
        before = yield fds_after_first_spawn()
        d = run_script(reactor, [self.script("sleep 60")], 30)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        # The killed child's pipes close within moments, not after 60 s.
        for _ in range(100):
            if not any(isinstance(r, ProcessReader) for r in reactor.getReaders()):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(open_fds(), before)
