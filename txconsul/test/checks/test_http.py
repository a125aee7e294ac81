# -*- test-case-name: txconsul.test.checks.test_http -*-
"""HTTP and TCP checks against real listeners on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor  # noqa: TID251 (real-socket test)
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from txconsul.checks.http import HTTPChecker
from txconsul.checks.status import MAX_OUTPUT
from txconsul.checks.tcp import check_tcp, split_host_port
from txconsul.testing.process import free_port


class Answer(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"text/plain")
        self.last_method = request.method
        self.last_header = request.getHeader(b"x-probe")
        if path == "/big":
            return b"y" * (3 * MAX_OUTPUT)
        code = int(path.strip("/") or 200)
        request.setResponseCode(code)
        return f"answer {code}".encode()


class Garbage(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"\x00\xffthis is not http\r\n\r\n")
        self.transport.loseConnection()


class Silent(Protocol):
    """Accepts and never answers."""


class HTTPCheckTests(TestCase):
    timeout = 30

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def setUp(self) -> None:
        self.resource = Answer()
        self.port = self.listen(Site(self.resource))
        self.checker = HTTPChecker(reactor)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @defer.inlineCallbacks
    def test_status_codes_decide_the_status(self) -> Any:
        for path, status in (
            ("/200", "passing"),
            ("/204", "passing"),
            ("/429", "warning"),
            ("/503", "critical"),
            ("/404", "critical"),
        ):
            result = yield defer.ensureDeferred(self.checker.check(self.url(path)))
            self.assertEqual(result.status, status, path)
        result = yield defer.ensureDeferred(self.checker.check(self.url("/200")))
        self.assertIn("200 OK", result.output)
        self.assertIn("answer 200", result.output)

    @defer.inlineCallbacks
    def test_method_and_headers_are_sent(self) -> Any:
        yield defer.ensureDeferred(
            self.checker.check(self.url("/200"), "POST", (("X-Probe", ("yes",)),), body="b")
        )
        self.assertEqual((self.resource.last_method, self.resource.last_header), (b"POST", b"yes"))

    @defer.inlineCallbacks
    def test_long_body_is_cut(self) -> Any:
        result = yield defer.ensureDeferred(self.checker.check(self.url("/big")))
        self.assertEqual(result.status, "passing")
        self.assertEqual(result.output.count("y"), MAX_OUTPUT)

    @defer.inlineCallbacks
    def test_closed_port_is_critical(self) -> Any:
        result = yield defer.ensureDeferred(
            self.checker.check(f"http://127.0.0.1:{free_port()}/", timeout=2)
        )
        self.assertEqual(result.status, "critical")

    @defer.inlineCallbacks
    def test_garbage_answer_is_critical(self) -> Any:
        port = self.listen(Factory.forProtocol(Garbage))
        result = yield defer.ensureDeferred(
            self.checker.check(f"http://127.0.0.1:{port}/", timeout=2)
        )
        self.assertEqual(result.status, "critical")

    @defer.inlineCallbacks
    def test_silent_server_times_out_critical(self) -> Any:
        silent = Factory.forProtocol(Silent)
        port = self.listen(silent)
        result = yield defer.ensureDeferred(
            self.checker.check(f"http://127.0.0.1:{port}/", timeout=0.3)
        )
        self.assertEqual(result.status, "critical")
        self.assertIn("timed out", result.output)

    @defer.inlineCallbacks
    def test_bad_url_is_critical(self) -> Any:
        result = yield defer.ensureDeferred(self.checker.check("not a url"))
        self.assertEqual(result.status, "critical")


class TCPCheckTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_open_port_passes_and_closed_port_fails(self) -> Any:
        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        good = yield defer.ensureDeferred(check_tcp(reactor, f"127.0.0.1:{port.getHost().port}", 2))
        bad = yield defer.ensureDeferred(check_tcp(reactor, f"127.0.0.1:{free_port()}", 2))
        self.assertEqual((good.status, bad.status), ("passing", "critical"))
        self.assertIn("Success", good.output)


class SplitTests(SynchronousTestCase):
    def test_host_port_forms(self) -> None:
        self.assertEqual(split_host_port("localhost:80"), ("localhost", 80))
        self.assertEqual(split_host_port("[::1]:53"), ("::1", 53))
        for bad in ("nohost", ":80", "h:0", "h:99999", "h:x"):
            self.assertRaises(ValueError, split_host_port, bad)
