# -*- test-case-name: txconsul.test.checks.test_http -*-
"""
HTTP checks: a request to the service, judged by the status code.

2xx is passing, 429 warning, anything else (or no answer in time) critical.
The first 4 KiB of the body are kept as the check's output.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.protocol import Protocol
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from txconsul.checks.status import CRITICAL, MAX_OUTPUT, CheckResult, clip, http_status

DEFAULT_TIMEOUT = 10.0


@implementer(IPolicyForHTTPS)
class _NoVerify:
    """TLS without certificate checks, for ``tls_skip_verify``."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.CertificateOptions(verify=False)


class _QuietFactory(_HTTP11ClientFactory):
    """No "Starting factory"/"Stopping factory" log lines: two per check run."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class HTTPChecker:
    """Runs HTTP checks with one connection pool, no keep-alive between runs."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        pool = _QuietPool(reactor, persistent=False)
        self._agent = Agent(reactor, BrowserLikePolicyForHTTPS(), pool=pool)
        self._insecure = Agent(reactor, _NoVerify(), pool=pool)

    async def check(
        self,
        url: str,
        method: str = "GET",
        headers: tuple[tuple[str, tuple[str, ...]], ...] = (),
        body: str = "",
        timeout: float | None = None,
        tls_skip_verify: bool = False,
    ) -> CheckResult:
        timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        method = (method or "GET").upper()
        agent = self._insecure if tls_skip_verify else self._agent
        h = Headers({"User-Agent": ["Consul Health Check"], "Accept": ["text/plain, text/*, */*"]})
        for name, values in headers:
            h.setRawHeaders(name, list(values))
        producer = None
        if body:
            import io

            from twisted.web.client import FileBodyProducer

            producer = FileBodyProducer(io.BytesIO(body.encode()))
        try:
            d = agent.request(method.encode("ascii"), url.encode("utf-8"), h, producer)
            d.addTimeout(timeout, self._reactor)
            response = await d
            collected = bytearray()
            reading = _read_some(response, collected)
            reading.addTimeout(timeout, self._reactor)
            try:
                await reading
            except (CancelledError, DeferredTimeout):
                pass  # the body as far as it came is the output
        except (CancelledError, DeferredTimeout):
            return CheckResult(CRITICAL, f"{method} {url}: timed out after {timeout:g}s")
        except ResponseNeverReceived as e:
            if any(r.check(CancelledError) for r in e.reasons):
                return CheckResult(CRITICAL, f"{method} {url}: timed out after {timeout:g}s")
            why = "; ".join(r.getErrorMessage() for r in e.reasons)
            return CheckResult(CRITICAL, f"{method} {url}: no response: {why}")
        except Exception as e:  # noqa: BLE001 - every failure is a critical check
            return CheckResult(CRITICAL, f"{method} {url}: {e.__class__.__name__}: {e}")
        code = response.code
        phrase = response.phrase.decode("latin-1", errors="replace")
        output = f"HTTP {method} {url}: {code} {phrase} Output: {clip(bytes(collected))}"
        return CheckResult(http_status(code), output)


def _read_some(response: Any, into: bytearray) -> Any:
    """
    Read the body, keeping at most MAX_OUTPUT bytes; fires when it ends.

    Cancelling it (a timeout, or the check going away) closes the connection:
    a server that stalls in the middle of a body must not keep it open.
    """

    def close(_: Deferred[None]) -> None:
        if collect.transport is not None:
            collect.transport.stopProducing()  # type: ignore[attr-defined]

    done: Deferred[None] = Deferred(close)

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            room = MAX_OUTPUT - len(into)
            if room > 0:
                into.extend(data[:room])
            if len(into) >= MAX_OUTPUT and self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]

        def connectionLost(self, reason: Any = None) -> None:
            # The end of the body, whether it ended well or not (a cut body is
            # still the output we report).
            if not done.called:
                done.callback(None)

    collect = Collect()
    response.deliverBody(collect)
    return done
