# -*- test-case-name: txconsul.test.test_duration -*-
"""
Go duration strings (``10s``, ``1h30m``, ``1.5ms``), as Consul accepts them.

Consul's JSON accepts a duration either as such a string or as integer
nanoseconds; both become float seconds here.
"""

import re

from txconsul.errors import BadRequest

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """
    Parse a Go duration string into seconds.

    :raises BadRequest: if ``text`` is not a Go duration.
    """
    if not isinstance(text, str):
        raise BadRequest(f"invalid duration {text!r}")
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise BadRequest(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise BadRequest(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def duration_value(value: object) -> float:
    """A duration given in JSON: a Go duration string or integer nanoseconds."""
    if isinstance(value, bool):
        raise BadRequest(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        return parse_duration(value)
    raise BadRequest(f"invalid duration {value!r}")


def format_duration(seconds: float) -> str:
    """Render seconds the way Go prints a time.Duration (``10s``, ``1m30s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    neg = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        ms = seconds * 1000
        text = f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}\u00b5s"
    else:
        h, rest = divmod(seconds, 3600)
        m, s = divmod(rest, 60)
        text = ""
        if h:
            text += f"{int(h)}h"
        if h or m:
            text += f"{int(m)}m"
        text += f"{round(s, 9):g}s"
    return ("-" if neg else "") + text
