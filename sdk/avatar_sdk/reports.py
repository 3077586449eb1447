"""What a worker may report into its own session's status, and the credential it reports with.

The contract between the worker's reporter (`avatar_worker.status`) and the operator's status
relay (`avatar_operator.relay`), kept here, once, so the two cannot disagree: the fields a worker
may write (`REPORTABLE`), the phases and end reasons among them (`WORKER_PHASES`,
`WORKER_END_REASONS`; the others are the operator's to decide), the check of a report
(`parse_report`), and the relay credential (`status_token`): `HMAC-SHA256(relay key,
namespace/name/uid)`, bound to the session's uid so that a session re-created under the same
name does not accept its predecessor's worker.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import pydantic

from avatar_sdk import api, timestamps

# What a worker may write, and the values it may write there.
REPORTABLE = frozenset(
    {"phase", "playback", "joinedAt", "endedAt", "endReason", "vramUsedMiB", "fps", "syncErrorMs"}
)
WORKER_PHASES = frozenset({api.Phase.JOINED.value, api.Phase.ENDED.value})
WORKER_END_REASONS = frozenset(
    {api.EndReason.ROOM_ENDED.value, api.EndReason.AGENT_LEFT.value, api.EndReason.ERROR.value}
)


MAX_CLOCK_SKEW_SECONDS = 60.0  # a worker's clock may be this far ahead of the operator's


def _check_reported_time(field: str, value: Any, *, now: float) -> None:
    """A time a worker reports is a timestamp, never cleared, and not in the future. (Every
    lifetime limit counts from the operator's own record of time: these are for users.)"""
    if value is None:
        raise ReportError(403, "Forbidden", f"a worker may not clear status.{field}")
    moment = timestamps.parse(value)
    if moment is None:
        raise ReportError(422, "Invalid", f"status.{field}: not an RFC 3339 time ({value!r})")
    ahead = moment.timestamp() - now
    if ahead > MAX_CLOCK_SKEW_SECONDS:
        raise ReportError(
            422, "Invalid", f"status.{field} is {ahead:.0f} s in the future (the worker's clock?)"
        )


def status_token(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The credential a session's worker presents."""
    message = f"{namespace}/{name}/{uid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class ReportError(ValueError):
    """A worker report the relay refuses; `code` is the HTTP status to answer."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def parse_report(body: Any) -> dict[str, Any]:
    """Check a worker's merge patch; returns the status fields it sets."""
    if not isinstance(body, dict) or set(body) - {"status", "metadata"}:
        raise ReportError(422, "Invalid", 'a status report is {"status": {...}}')
    status = body.get("status")
    if not isinstance(status, dict) or not status:
        raise ReportError(422, "Invalid", "status must be a non-empty object")
    forbidden = sorted(set(status) - REPORTABLE)
    if forbidden:
        raise ReportError(403, "Forbidden", f"status.{forbidden[0]} is not writable by the worker")
    phase = status.get("phase")
    if phase is not None and phase not in WORKER_PHASES:
        raise ReportError(403, "Forbidden", f"a worker may not set status.phase to {phase!r}")
    for field in ("joinedAt", "endedAt"):
        if field in status:
            _check_reported_time(field, status[field], now=time.time())
    reason = status.get("endReason")
    if reason is not None and reason not in WORKER_END_REASONS:
        raise ReportError(403, "Forbidden", f"a worker may not set status.endReason to {reason!r}")
    # the values must be what the status schema accepts
    try:
        api.AvatarSessionStatus.model_validate({k: v for k, v in status.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise ReportError(
            422, "Invalid", str(api.describe_validation_error(exc, "status"))
        ) from exc
    return status
