"""RFC 3339 timestamps as Kubernetes writes them, formatted and parsed in one place.

Kubernetes' `Time` has whole seconds (`2026-12-02T11:02:12Z`), its `MicroTime` (Leases, Events'
`eventTime`) microseconds (`2026-12-02T11:02:12.123456Z`); both are UTC with a `Z`.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time as Kubernetes stores it: UTC, whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def format(moment: datetime | float) -> str:
    """A `Time`: whole seconds, UTC, `Z`; `moment` is a datetime or Unix seconds."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(int(moment), UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def format_micro(moment: datetime | float) -> str:
    """A `MicroTime`: microseconds, UTC, `Z`."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    """`format(now())`: the timestamp the operator stamps on what it writes."""
    return format(now())


def parse(value: object) -> datetime | None:
    """A timestamp from the API (a string, or a datetime pydantic already made); None when it
    is empty or not RFC 3339. A time without a zone is taken as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
