# -*- test-case-name: txconsul.test.http.test_bad_input -*-
"""
JSON decoded as Go's decoder (Consul's) would: no NaN or Infinity, no
numbers beyond 64 bits.

Letting those in would put values in the store that later code and msgpack
reject, so both request bodies and config files are read with ``loads``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _int(text: str) -> int:
    n = int(text)
    if not -(2**63) <= n < 2**64:
        raise ValueError(f"number {text[:24]} overflows 64 bits")
    return n


def _float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:24]} is out of range")
    return x


def _constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[:1]!r} looking for beginning of value")


def loads(text: str | bytes) -> Any:
    """Decode JSON; ValueError (or RecursionError) for what Go would refuse."""
    return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
