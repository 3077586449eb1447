"""The API server's answers as the node agent's async clients read them: `APIError` for a
status that is not a success, and `events()` for the lines of a watch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


class APIError(RuntimeError):
    """A request the API server answered with `status` (its Status object in `body`)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {str(body)[:300]}")
        self.status = status
        self.body = body


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A watch's events, `(type, object)`, until the server ends it: ADDED, MODIFIED, DELETED
    and BOOKMARK. A refused watch, and an ERROR event (410 Gone: list again), raise APIError."""
    if response.status != 200:
        raise APIError(response.status, await response.text())
    async for line in response.content:
        if not line.strip():
            continue
        event = json.loads(line)
        kind, obj = str(event.get("type")), event.get("object") or {}
        if kind == "ERROR":
            raise APIError(int(obj.get("code", 500)), obj)
        yield kind, obj
