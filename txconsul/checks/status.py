# -*- test-case-name: txconsul.test.checks.test_script -*-
"""The result of one run of a check, and the rules shared by every runner."""

from __future__ import annotations

import attrs

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"

# Check output kept, as Consul does (4 KiB).
MAX_OUTPUT = 4096


@attrs.frozen
class CheckResult:
    status: str
    output: str


def nagios_status(exit_code: int) -> str:
    """Nagios plugin convention: 0 passing, 1 warning, anything else critical."""
    if exit_code == 0:
        return PASSING
    if exit_code == 1:
        return WARNING
    return CRITICAL


def http_status(code: int) -> str:
    """2xx passing, 429 (Too Many Requests) warning, anything else critical."""
    if 200 <= code < 300:
        return PASSING
    if code == 429:
        return WARNING
    return CRITICAL


def clip(data: bytes) -> str:
    """Output as text, cut at MAX_OUTPUT bytes."""
    return data[:MAX_OUTPUT].decode("utf-8", errors="replace")
