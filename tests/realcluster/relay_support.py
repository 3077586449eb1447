"""What a worker sends the operator's status relay, for the tests of this layer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from avatar_sdk import api


def report(port: int, namespace: str, name: str, token: str, status: dict[str, Any]) -> int:
    """A merge patch of the session's status through the relay on 127.0.0.1:`port`, with the
    worker's credential; the HTTP status of the answer."""
    path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps({"status": status}).encode(),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
