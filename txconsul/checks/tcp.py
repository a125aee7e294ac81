# -*- test-case-name: txconsul.test.checks.test_tcp -*-
"""TCP checks: passing when a connection to ``host:port`` opens in time."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol

from txconsul.checks.status import CRITICAL, PASSING, CheckResult

DEFAULT_TIMEOUT = 10.0


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts; ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


async def check_tcp(reactor: Any, address: str, timeout: float | None = None) -> CheckResult:
    timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
    try:
        host, port = split_host_port(address)
    except ValueError as e:
        return CheckResult(CRITICAL, str(e))
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        d = endpoint.connect(Factory.forProtocol(Protocol))
        d.addTimeout(timeout, reactor)
        proto: Any = await d
    except (CancelledError, DeferredTimeout):
        return CheckResult(CRITICAL, f"TCP connect {address}: timed out after {timeout:g}s")
    except Exception as e:  # noqa: BLE001 - every failure is a critical check
        return CheckResult(CRITICAL, f"TCP connect {address}: {e}")
    proto.transport.loseConnection()
    return CheckResult(PASSING, f"TCP connect {address}: Success")
