# -*- test-case-name: txconsul.test.checks.test_bad_checks -*-
"""
Checks against things that misbehave: each ends critical (or is refused)
with a message that says why, and leaves no descriptor or process behind.

Servers are real listeners on 127.0.0.1; scripts are real processes. Leaks
are counted in ``/proc/self/fd`` and in the children of this process.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer, reactor  # noqa: TID251 (real-socket test)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txconsul.checks.http import HTTPChecker
from txconsul.checks.script import run_script
from txconsul.checks.status import MAX_OUTPUT
from txconsul.checks.tcp import check_tcp
from txconsul.test.http.test_bad_input import BadInputMixin
from txconsul.testing.process import free_port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def children() -> set[int]:
    """Live (not zombie) child processes of this process, from every thread."""
    kids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                kids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return {pid for pid in kids if _state(pid) not in ("Z", None)}


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def group_members(pgid: int) -> list[int]:
    """Processes, zombies aside, still in the process group ``pgid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(name))
    return out


class LeakChecking(TestCase):
    """Compares descriptors and children before and after each check."""

    timeout = 30
    fds: int
    kids: set[int]

    @defer.inlineCallbacks
    def assertNoLeak(self, before_fds: int, before_kids: set[int], limit: float = 3.0) -> Any:
        """Closing is asynchronous: allow ``limit`` seconds for it, no more."""
        waited = 0.0
        while waited < limit:
            if open_fds() <= before_fds and children() <= before_kids:
                return
            yield deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        self.assertEqual(open_fds(), before_fds, "descriptors leaked")
        self.assertEqual(children() - before_kids, set(), "processes leaked")

    def listen(self, factory: Any) -> int:
        """A listener for the test; the baseline counts its descriptor."""
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.fds = open_fds()
        return int(port.getHost().port)


# -- HTTP ---------------------------------------------------------------------------


class Silent(Protocol):
    """Accepts and never answers."""

    def connectionMade(self) -> None:
        self.factory.opened.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.closed.append(self)  # type: ignore[attr-defined]


class Garbage(Silent):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"\x00\xff\xfeSSH-2.0-not-http\r\n\r\n" * 50)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class Hangup(Silent):
    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class StalledBody(Silent):
    """Sends the headers and the start of a body, then nothing more."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nstarted"
        )


class EndlessBody(Silent):
    """A chunked body that never ends."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self._more()

    def _more(self) -> None:
        if self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
            self.transport.write(b"1000\r\n" + b"z" * 0x1000 + b"\r\n")
            reactor.callLater(0.01, self._more)  # type: ignore[attr-defined]


def server(kind: type[Protocol]) -> Any:
    factory = Factory.forProtocol(kind)
    factory.noisy = False
    factory.opened = []  # type: ignore[attr-defined]
    factory.closed = []  # type: ignore[attr-defined]
    return factory


class BadHTTPTargetTests(LeakChecking):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.checker = HTTPChecker(reactor)
        # One run first, so that whatever the reactor sets up once is not
        # counted as a leak.
        yield defer.ensureDeferred(
            self.checker.check(f"http://127.0.0.1:{free_port()}/", timeout=1)
        )
        self.fds, self.kids = open_fds(), children()

    @defer.inlineCallbacks
    def run_check(self, url: str, timeout: float = 2.0) -> Any:
        result = yield defer.ensureDeferred(self.checker.check(url, timeout=timeout))
        yield self.assertNoLeak(self.fds, self.kids)
        return result

    @defer.inlineCallbacks
    def test_port_that_accepts_and_never_answers_times_out_critical(self) -> Any:
        factory = server(Silent)
        port = self.listen(factory)
        result = yield self.run_check(f"http://127.0.0.1:{port}/health", timeout=0.3)
        self.assertEqual(result.status, "critical")
        self.assertIn("timed out after 0.3s", result.output)
        self.assertEqual(len(factory.closed), 1, "the check's connection is closed")

    @defer.inlineCallbacks
    def test_garbage_answer_is_critical(self) -> Any:
        port = self.listen(server(Garbage))
        result = yield self.run_check(f"http://127.0.0.1:{port}/")
        self.assertEqual(result.status, "critical")
        self.assertIn(f"127.0.0.1:{port}", result.output)

    @defer.inlineCallbacks
    def test_hangup_before_answering_is_critical(self) -> Any:
        port = self.listen(server(Hangup))
        result = yield self.run_check(f"http://127.0.0.1:{port}/")
        self.assertEqual(result.status, "critical")
        self.assertIn("no response", result.output)

    @defer.inlineCallbacks
    def test_closed_port_is_critical(self) -> Any:
        result = yield self.run_check(f"http://127.0.0.1:{free_port()}/")
        self.assertEqual(result.status, "critical")
        self.assertIn("refused", result.output.lower())

    @defer.inlineCallbacks
    def test_stalled_body_ends_at_the_timeout_and_closes_the_connection(self) -> Any:
        factory = server(StalledBody)
        port = self.listen(factory)
        result = yield self.run_check(f"http://127.0.0.1:{port}/", timeout=0.3)
        # As Consul: the status line decides; the body is what came in time.
        self.assertEqual(result.status, "passing")
        self.assertIn("Output: started", result.output)
        self.assertEqual(len(factory.closed), 1, "the stalled connection is closed")

    @defer.inlineCallbacks
    def test_endless_body_is_cut_and_the_connection_closed(self) -> Any:
        factory = server(EndlessBody)
        port = self.listen(factory)
        result = yield self.run_check(f"http://127.0.0.1:{port}/", timeout=5)
        self.assertEqual(result.status, "passing")
        self.assertEqual(result.output.count("z"), MAX_OUTPUT)
        self.assertEqual(len(factory.closed), 1)

    @defer.inlineCallbacks
    def test_cancelled_run_closes_its_connection(self) -> Any:
        for kind in (Silent, StalledBody):
            factory = server(kind)
            port = self.listen(factory)
            d = defer.ensureDeferred(self.checker.check(f"http://127.0.0.1:{port}/", timeout=30))
            while not factory.opened:
                yield deferLater(reactor, 0.01, lambda: None)
            yield deferLater(reactor, 0.05, lambda: None)
            d.cancel()
            d.addErrback(lambda f: f.trap(defer.CancelledError))
            yield d
            yield self.assertNoLeak(self.fds, self.kids)
            self.assertEqual(len(factory.closed), 1, kind.__name__)

    @defer.inlineCallbacks
    def test_runs_leave_no_log_lines(self) -> Any:
        # Two lines per run ("Starting/Stopping factory") flood the log of an
        # agent with thousands of HTTP checks.
        port = self.listen(server(Garbage))
        events: list[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.run_check(f"http://127.0.0.1:{port}/")
        self.assertEqual([e.get("log_format") for e in events], [])

    @defer.inlineCallbacks
    def test_many_bad_targets_at_once(self) -> Any:
        silent, garbage = self.listen(server(Silent)), self.listen(server(Garbage))
        urls = [f"http://127.0.0.1:{p}/" for p in (silent, garbage, free_port())] * 20
        results = yield defer.gatherResults(
            [defer.ensureDeferred(self.checker.check(u, timeout=0.5)) for u in urls]
        )
        self.assertEqual({r.status for r in results}, {"critical"})
        yield self.assertNoLeak(self.fds, self.kids)


# -- TCP ----------------------------------------------------------------------------


class BadTCPTargetTests(LeakChecking):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield defer.ensureDeferred(check_tcp(reactor, f"127.0.0.1:{free_port()}", 1))
        self.fds, self.kids = open_fds(), children()

    @defer.inlineCallbacks
    def run_check(self, address: str, timeout: float = 2.0) -> Any:
        result = yield defer.ensureDeferred(check_tcp(reactor, address, timeout))
        yield self.assertNoLeak(self.fds, self.kids)
        return result

    @defer.inlineCallbacks
    def test_closed_port_is_critical(self) -> Any:
        result = yield self.run_check(f"127.0.0.1:{free_port()}")
        self.assertEqual(result.status, "critical")
        self.assertIn("TCP connect 127.0.0.1:", result.output)

    @defer.inlineCallbacks
    def test_open_port_passes_and_the_connection_is_closed(self) -> Any:
        factory = server(Silent)
        port = self.listen(factory)
        for _ in range(20):
            result = yield self.run_check(f"127.0.0.1:{port}")
            self.assertEqual(result.status, "passing")
        self.assertEqual((len(factory.opened), len(factory.closed)), (20, 20))

    @defer.inlineCallbacks
    def test_unreachable_address_is_critical_in_time(self) -> Any:
        # TEST-NET-1: either nothing answers (timeout) or there is no route.
        started = reactor.seconds()
        result = yield self.run_check("192.0.2.1:9", timeout=0.5)
        self.assertEqual(result.status, "critical")
        self.assertLess(reactor.seconds() - started, 4)

    @defer.inlineCallbacks
    def test_address_that_is_not_host_port_is_critical(self) -> Any:
        for address in ("127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":80"):
            result = yield self.run_check(address)
            self.assertEqual(result.status, "critical")
            self.assertIn("not host:port", result.output)


# -- scripts --------------------------------------------------------------------------


class BadScriptTests(LeakChecking):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        # The first spawn sets up the reactor's child-reaping pipe.
        yield run_script(reactor, ["true"], 5)
        self.fds, self.kids = open_fds(), children()

    def script(self, body: str, shebang: str = "#!/bin/sh") -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(shebang + "\n" + body + "\n")
        os.chmod(path, stat.S_IRWXU)
        return path

    @defer.inlineCallbacks
    def run_check(self, *args: str, timeout: float = 10.0) -> Any:
        result = yield run_script(reactor, list(args), timeout)
        yield self.assertNoLeak(self.fds, self.kids)
        return result

    @defer.inlineCallbacks
    def test_daemonized_grandchildren_are_killed_with_the_group(self) -> Any:
        pidfile = os.path.abspath(self.mktemp())
        # A double fork with every descriptor closed: nothing holds our pipes,
        # the script exits at once, and the grandchild is no child of ours.
        body = (
            f"echo $$ > {pidfile}\n"
            "( (trap '' TERM HUP; sleep 30) </dev/null >/dev/null 2>&1 & ) &\n"
            "sleep 0.2\nexit 0"
        )
        result = yield self.run_check(self.script(body))
        self.assertEqual(result.status, "passing")
        with open(pidfile) as f:
            group = int(f.read())
        for _ in range(40):
            if not group_members(group):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(group_members(group), [])

    @defer.inlineCallbacks
    def test_child_that_ignores_sigterm_and_holds_the_output_pipe(self) -> Any:
        result = yield self.run_check(
            self.script("(trap '' TERM; sleep 30) &\necho parent done; exit 1")
        )
        self.assertEqual(result.status, "warning")
        self.assertIn("parent done", result.output)

    @defer.inlineCallbacks
    def test_hanging_script_flooding_stderr_is_killed_at_its_timeout(self) -> Any:
        result = yield self.run_check(self.script("while :; do echo noise >&2; done"), timeout=0.5)
        self.assertEqual(result.status, "critical")
        self.assertTrue(result.output.startswith("Timed out (0.5s) running check"))
        self.assertLessEqual(len(result.output), MAX_OUTPUT + 64)

    @defer.inlineCallbacks
    def test_exit_by_any_signal_is_critical_and_names_it(self) -> Any:
        for sig in (15, 11, 6):
            result = yield self.run_check(self.script(f"echo before; kill -{sig} $$"))
            self.assertEqual(result.status, "critical")
            self.assertIn(f"Killed by signal {sig}", result.output)
            self.assertIn("before", result.output)

    @defer.inlineCallbacks
    def test_missing_interpreter_is_critical_with_the_reason(self) -> Any:
        result = yield self.run_check(self.script("exit 0", shebang="#!/no/such/interpreter"))
        self.assertEqual(result.status, "critical")
        self.assertIn("No such file", result.output)

    @defer.inlineCallbacks
    def test_directory_or_empty_command_is_critical(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        result = yield self.run_check(directory)
        self.assertEqual(
            (result.status, result.output[:22]), ("critical", "Check script not found")
        )
        result = yield run_script(reactor, [], 5)
        self.assertEqual((result.status, result.output), ("critical", "No script to run"))
        result = yield run_script(reactor, [], 5, shell_script="exit 3")
        self.assertEqual(result.status, "critical")

    @defer.inlineCallbacks
    def test_output_that_is_not_utf8_is_kept_with_replacements(self) -> Any:
        result = yield self.run_check(self.script(r"printf 'ok \377\376 end'; exit 0"))
        self.assertEqual(result.status, "passing")
        self.assertEqual(result.output, "ok \ufffd\ufffd end")

    @defer.inlineCallbacks
    def test_many_misbehaving_scripts_at_once(self) -> Any:
        hang = self.script("sleep 30")
        orphan = self.script("sleep 30 & exit 0")
        flood = self.script("head -c 3000000 /dev/zero; exit 2")
        runs = [run_script(reactor, [p], 1.0) for p in (hang, orphan, flood) * 10]
        results = yield defer.gatherResults(runs)
        self.assertEqual([r.status for r in results], ["critical", "passing", "critical"] * 10)
        yield self.assertNoLeak(self.fds, self.kids)


# -- definitions ------------------------------------------------------------------------


class BadDefinitionTests(BadInputMixin, SynchronousTestCase):
    """Refused at /v1/agent/check/register with 400 and a reason (more in test_bad_input)."""

    def test_bad_timeout_is_refused(self) -> None:
        for timeout, reason in (('"0s"', "timeout must be positive"), ('"soon"', "")):
            body = b'{"Name": "c", "TCP": "127.0.0.1:1", "Interval": "10s", "Timeout": %s}' % (
                timeout.encode()
            )
            response = self.assertRejected("PUT", "/v1/agent/check/register", body)
            self.assertIn("imeout", response.text)
            self.assertIn(reason, response.text)

    def test_ttl_with_args_inside_a_service_is_refused(self) -> None:
        service = {
            "Name": "db",
            "Check": {"TTL": "10s", "Args": ["/bin/true"], "Interval": "10s"},
        }
        self.assertRejected(
            "PUT",
            "/v1/agent/service/register",
            json.dumps(service).encode(),
            reason="Invalid check",
        )

    def test_http_check_without_interval_is_refused(self) -> None:
        self.assertRejected(
            "PUT",
            "/v1/agent/check/register",
            b'{"Name": "c", "HTTP": "http://127.0.0.1/"}',
            reason="Invalid check 'c': http checks need an interval",
        )
