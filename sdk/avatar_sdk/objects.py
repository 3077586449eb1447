"""The raw Kubernetes object: one type for every JSON body the project reads or writes.

A body comes from the API as decoded JSON and goes back as such; where the project knows its
fields it parses them with the pydantic models of `avatar_sdk.api` instead of typing the raw
dict. `Obj` is that raw body, everywhere (the operator, the client, the emulator).
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def key_of(body: Obj) -> str:
    """`namespace/name`: how a namespaced object is named in logs, queues and caches."""
    meta = body["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def resource_version(body: Obj) -> int:
    """The object's resourceVersion as a number (0 when absent): which of two copies is newer."""
    try:
        return int(body["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def merge_patch(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch of `patch` onto `target` (a new object; `None` deletes)."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged
