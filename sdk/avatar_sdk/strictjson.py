"""JSON from outside the process, parsed so that it cannot crash or poison what reads it.

`json.loads` accepts `NaN`, `Infinity` and numbers like `1e400` (which become `inf`), and
recurses once per nesting level, so `"[" * 8000` raises `RecursionError` from deep inside a
handler. `loads` refuses all three before anything is built from them: the nesting is measured
by a scan of the raw text (strings skipped) before parsing, and non-finite numbers are refused
while parsing, each with a message that says what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # no body this project reads nests deeper than a few levels


class JSONRefused(ValueError):
    """The text is not JSON that this project accepts; the message says why."""


# JSON strings, escapes included (the unrolled form: runs of plain characters in one step)
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (string contents do not count).

    The strings are cut out by one regex pass and only the brackets left are walked, so a
    relay report or a launch body costs microseconds, not a Python step per character."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not a JSON number (only finite numbers are accepted)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {text[:40]} is too large (not a finite number)")
    return value


def _finite_int(text: str) -> int:
    if len(text) > 400:
        raise JSONRefused(f"an integer of {len(text)} digits is too large")
    return int(text)


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `raw` (UTF-8) as JSON; raises JSONRefused: not UTF-8, not JSON, nested deeper than
    `max_depth`, or holding a non-finite number."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise JSONRefused(f"not UTF-8: {exc}") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JSONRefused(f"nested {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_finite_int,
        )
    except JSONRefused:
        raise
    except (ValueError, RecursionError) as exc:
        raise JSONRefused(f"not JSON: {exc}") from None


def is_finite_number(value: object) -> bool:
    """A JSON number a claim or field may hold: an int, or a finite float (not a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
