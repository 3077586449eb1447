"""What a worker sends the operator's status relay, for the tests of this layer."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from avatar_sdk import api


def report(
    status_url: str,
    namespace: str,
    name: str,
    token: str,
    status: dict[str, Any],
    context: ssl.SSLContext | None = None,
) -> int:
    """A merge patch of the session's status through the relay at `status_url` (the operator's
    setting), with the worker's credential, verifying the relay with `context` as a worker does;
    the HTTP status of the answer."""
    path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
    request = urllib.request.Request(
        f"{status_url}{path}",
        data=json.dumps({"status": status}).encode(),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
