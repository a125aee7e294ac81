# -*- test-case-name: txconsul.test.checks.test_runner -*-
"""Checks registered on a real agent run on their interval and reach the catalog."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor  # noqa: TID251 (real-process test)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txconsul.agent.definitions import parse_check, parse_service
from txconsul.testing.agent import start_agent


class RunnerTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def wait_for_status(self, agent: Any, cid: str, status: str, limit: float = 10) -> Any:
        waited = 0.0
        while waited < limit:
            row = agent.store.catalog.checks.get("node1", {}).get(cid)
            if row is not None and row["Status"] == status:
                return row
            yield deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        self.fail(f"{cid} never became {status}: {row}")

    @defer.inlineCallbacks
    def test_script_tcp_and_http_checks_run_and_report(self) -> Any:
        agent = yield start_agent(self, reactor, enable_script_checks=True)
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        http = f"http://{agent.http.address()[0]}:{agent.http.address()[1]}/v1/status/leader"
        service = parse_service(
            {
                "name": "web",
                "checks": [
                    {"id": "ok", "args": ["/bin/sh", "-c", "echo fine"], "interval": "1s"},
                    {"id": "bad", "args": ["/bin/sh", "-c", "exit 2"], "interval": "1s"},
                    {"id": "tcp", "tcp": f"127.0.0.1:{port.getHost().port}", "interval": "1s"},
                    {"id": "http", "http": http, "interval": "1s"},
                ],
            }
        )
        yield agent.local.add_service(service)
        row = yield self.wait_for_status(agent, "ok", "passing")
        self.assertEqual(row["Output"], "fine\n")
        yield self.wait_for_status(agent, "bad", "critical")
        yield self.wait_for_status(agent, "tcp", "passing")
        row = yield self.wait_for_status(agent, "http", "passing")
        self.assertIn("200 OK", row["Output"])

    @defer.inlineCallbacks
    def test_removing_a_check_stops_its_runs(self) -> Any:
        agent = yield start_agent(self, reactor, enable_script_checks=True)
        yield agent.local.add_check(
            parse_check({"name": "c", "args": ["/bin/true"], "interval": "1s"})
        )
        runner = agent.local.checks["c"].runner
        yield agent.local.remove_check("c")
        runs = runner.runs
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(runner.runs, runs)


class RunLimitTests(TestCase):
    """Runs beyond the shared limit wait their turn instead of piling up."""

    timeout = 30

    @defer.inlineCallbacks
    def test_no_more_than_the_limit_run_at_once(self) -> Any:
        import random

        from twisted.internet.defer import DeferredSemaphore

        from txconsul.checks.http import HTTPChecker
        from txconsul.checks.runner import CheckRunner

        limit = DeferredSemaphore(2)
        results: list[Any] = []
        runners = [
            CheckRunner(
                reactor,
                parse_check(
                    {"name": f"s{i}", "args": ["/bin/sh", "-c", "sleep 0.3"], "interval": "30s"}
                ),
                results.append,
                random.Random(i),
                HTTPChecker(reactor),
                limit,
            )
            for i in range(5)
        ]
        for r in runners:
            r._run()

        def stop_all() -> None:
            for r in runners:
                r.stop()

        self.addCleanup(stop_all)
        running = 2 - limit.tokens
        self.assertEqual((running, len(limit.waiting)), (2, 3))
        while len(results) < 5:
            self.assertLessEqual(2 - limit.tokens, 2)
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual({r.status for r in results}, {"passing"})
