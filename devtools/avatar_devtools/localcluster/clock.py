"""Timestamps as Kubernetes writes them: RFC 3339, UTC, whole seconds, a trailing `Z`.

`timestamp()` of "now" is cached per second: every write stamps one, and strftime is not free.
"""

from __future__ import annotations

import datetime
import time

_cached_second = -1
_cached_text = ""


def _format(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(at: float | None = None) -> str:
    global _cached_second, _cached_text
    if at is not None:
        return _format(at)
    now = time.time()
    second = int(now)
    if second != _cached_second:
        _cached_second, _cached_text = second, _format(now)
    return _cached_text


def micro_timestamp(at: float | None = None) -> str:
    """`MicroTime` (Events' eventTime, Leases' renewTime): microseconds, trailing `Z`."""
    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
