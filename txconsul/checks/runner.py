# -*- test-case-name: txconsul.test.checks.test_runner -*-
"""
Runs one check on its interval and reports each result.

The first run comes at a random point within the first interval, so that
the checks of many services registered together do not fire in lockstep;
a run never overlaps the previous one of the same check.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from txconsul.agent.definitions import CheckDefinition
from txconsul.checks.http import HTTPChecker
from txconsul.checks.script import run_script
from txconsul.checks.status import CRITICAL, CheckResult
from txconsul.checks.tcp import check_tcp

RUNNABLE = frozenset({"script", "http", "tcp"})

# Check runs under way at once on one agent; more wait their turn.
MAX_CONCURRENT_RUNS = 256


class CheckRunner:
    """The periodic runs of one script, HTTP or TCP check."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        definition: CheckDefinition,
        report: Callable[[CheckResult], Any],
        rng: random.Random,
        http: HTTPChecker,
        limit: DeferredSemaphore | None = None,
    ) -> None:
        """
        :param limit: shared by all the agent's runners, it bounds how many
            runs are under way at once, so that thousands of checks falling
            due together cannot starve the reactor (and the HTTP API with it).
        """
        self._reactor = reactor
        self._limit = limit
        self.definition = definition
        self._report = report
        self._rng = rng
        self._http = http
        self._timer: IDelayedCall | None = None
        self._running: Deferred[CheckResult] | None = None
        self._stopped = False
        self.runs = 0

    @property
    def interval(self) -> float:
        return self.definition.interval or 10.0

    def start(self) -> None:
        self._timer = self._reactor.callLater(self._rng.uniform(0, self.interval), self._run)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is not None:
            running, self._running = self._running, None
            running.cancel()

    def _execute(self) -> Deferred[CheckResult]:
        c = self.definition
        if c.kind == "script":
            return run_script(self._reactor, c.args, c.timeout, shell_script=c.script)
        if c.kind == "http":
            return ensureDeferred(
                self._http.check(c.http, c.method, c.header, c.body, c.timeout, c.tls_skip_verify)
            )
        if c.kind == "tcp":
            return ensureDeferred(check_tcp(self._reactor, c.tcp, c.timeout))
        return succeed(CheckResult(CRITICAL, f"{c.kind} checks are not run by this agent"))

    def _run(self) -> None:
        self._timer = None
        started = self._reactor.seconds()
        self.runs += 1
        if self._limit is not None:
            self._running = d = self._limit.run(self._execute)
        else:
            self._running = d = self._execute()

        def finished(result: CheckResult) -> None:
            self._running = None
            if self._stopped:
                return
            self._report(result)
            elapsed = self._reactor.seconds() - started
            self._timer = self._reactor.callLater(max(0.0, self.interval - elapsed), self._run)

        def failed(failure: Any) -> None:
            if self._stopped:
                return None
            self.log.failure("check {check} failed to run", failure, check=self.definition.check_id)
            finished(CheckResult(CRITICAL, f"check failed to run: {failure.getErrorMessage()}"))
            return None

        d.addCallbacks(finished, failed)
