# -*- test-case-name: txconsul.test.test_linearizability -*-
"""
A parser for Jepsen's textual register logs (``jepsen.util`` lines).

Each line is one event of a client process::

    INFO  jepsen.util - 1	:invoke	:cas	[4 1]
    INFO  jepsen.util - 1	:fail	:cas	[4 1]

Fields are separated by tabs or spaces. The events of a process are paired
into ``Operation`` values of ``txconsul.testing.linearizability`` with the
register inputs (``Read``, ``Write``, ``CompareAndSet``); the time of an event
is its line number. ``:info`` and invocations never completed become
operations of unknown outcome; a ``:fail`` read or write certainly had no
effect and is dropped; a ``:fail`` cas is a compare that did not match.
Nemesis lines and lines that are not ``jepsen.util`` events are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from txconsul.testing.linearizability import (
    UNKNOWN,
    CompareAndSet,
    Operation,
    Read,
    Write,
)

__all__ = ["Event", "JepsenParseError", "parse_events", "parse_history", "parse_file"]

_EVENT = re.compile(
    r"jepsen\.util\s+-\s+(?P<process>\S+)\s+:(?P<type>\S+)\s+:(?P<f>\S+)(?:\s+(?P<value>.*?))?\s*$"
)
_TYPES = frozenset({"invoke", "ok", "fail", "info"})


class JepsenParseError(ValueError):
    """A line that looks like a Jepsen event but cannot be read as one."""


class TimedOut:
    """The ``:timed-out`` value of a completion."""

    def __repr__(self) -> str:
        return ":timed-out"


TIMED_OUT = TimedOut()


@dataclass(frozen=True)
class Event:
    line: int
    process: int
    type: str
    f: str
    value: object


def _value(text: str | None, lineno: int) -> object:
    if text is None or text == "" or text == "nil":
        return None
    if text == ":timed-out":
        return TIMED_OUT
    if text.startswith("["):
        if not text.endswith("]"):
            raise JepsenParseError(f"line {lineno}: unterminated vector {text!r}")
        items = text[1:-1].split()
        return tuple(_value(item, lineno) for item in items)
    try:
        return int(text)
    except ValueError:
        return text


def parse_events(lines: Iterable[str]) -> list[Event]:
    """The client events of a log, in order; nemesis and other lines are skipped."""
    events = []
    for lineno, line in enumerate(lines, start=1):
        found = _EVENT.search(line)
        if found is None:
            if "jepsen.util" in line and ":invoke" in line:
                raise JepsenParseError(f"line {lineno}: cannot read {line.rstrip()!r}")
            continue
        if found["process"] == ":nemesis":
            continue
        try:
            process = int(found["process"])
        except ValueError:
            raise JepsenParseError(f"line {lineno}: bad process {found['process']!r}") from None
        if found["type"] not in _TYPES:
            raise JepsenParseError(f"line {lineno}: unknown event type :{found['type']}")
        events.append(
            Event(lineno, process, found["type"], found["f"], _value(found["value"], lineno))
        )
    return events


def _input(event: Event) -> object:
    if event.f == "read":
        return Read()
    if event.f == "write":
        return Write(_hashable(event.value, event))
    if event.f == "cas":
        value = event.value
        if not (isinstance(value, tuple) and len(value) == 2):
            raise JepsenParseError(f"line {event.line}: cas needs [expected new], got {value!r}")
        return CompareAndSet(_hashable(value[0], event), _hashable(value[1], event))
    raise JepsenParseError(f"line {event.line}: unknown operation :{event.f}")


def _hashable(value: object, event: Event) -> Hashable:
    if not isinstance(value, Hashable) or value is TIMED_OUT:
        raise JepsenParseError(f"line {event.line}: bad argument {value!r}")
    return value


def parse_history(lines: Iterable[str]) -> list[Operation]:
    """Pair the invocations and completions of a register log into operations."""
    open_calls: dict[int, Event] = {}
    done: list[tuple[int, Operation]] = []
    for event in parse_events(lines):
        if event.type == "invoke":
            if event.process in open_calls:
                raise JepsenParseError(
                    f"line {event.line}: process {event.process} invokes twice without a completion"
                )
            _input(event)
            open_calls[event.process] = event
            continue
        call = open_calls.pop(event.process, None)
        if call is None:
            raise JepsenParseError(
                f"line {event.line}: completion for process {event.process} without an invocation"
            )
        if call.f != event.f:
            raise JepsenParseError(
                f"line {event.line}: :{event.f} completes a :{call.f} of process {event.process}"
            )
        input = _input(call)
        output: object
        if event.type == "fail":
            if not isinstance(input, CompareAndSet) or event.value is TIMED_OUT:
                continue  # a failed read, write or timed-out cas certainly had no effect
            output = False  # the compare did not match
        elif event.type == "info" or event.value is TIMED_OUT:
            done.append((call.line, Operation(call.process, input, UNKNOWN, call.line, None)))
            continue
        elif isinstance(input, Read):
            output = _hashable(event.value, event)
        elif isinstance(input, CompareAndSet):
            output = True
        else:
            output = None
        done.append((call.line, Operation(call.process, input, output, call.line, event.line)))
    for call in open_calls.values():
        done.append((call.line, Operation(call.process, _input(call), UNKNOWN, call.line, None)))
    done.sort(key=lambda pair: pair[0])
    return [op for _, op in done]


def parse_file(path: str) -> list[Operation]:
    """``parse_history`` of a log file."""
    with open(path, encoding="utf-8") as log:
        return parse_history(log)
