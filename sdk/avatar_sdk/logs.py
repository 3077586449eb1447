"""Log lines with their fields: `time level logger message key=value …`, or one JSON object a
line (`AVATAR_OPERATOR_LOG_FORMAT=json`, which the chart sets), for the operator and the worker.

Every `logger.info("launched", extra={"session": …, "room_id": …})` keeps its fields in both
formats: a line that concerns a session names it.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal

_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

Format = Literal["text", "json"]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra={...}` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS}


class KeyValueFormatter(logging.Formatter):
    """`time level logger message k=v …`, the `extra={...}` fields appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = fields(record)
        if extras:
            line += " " + " ".join(
                f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                for k, v in sorted(extras.items())
            )
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the extra fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(level: str = "info", fmt: Format = "text") -> None:
    """Send every logger's records to stderr in `fmt`, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
