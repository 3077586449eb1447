"""Test CRDs and builders shared by the localcluster tests (imported by name, not a plugin)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

WIDGET_GROUP = "test.localcluster.dev"


def widget_crd(
    *, plural: str = "widgets", kind: str = "Widget", scope: str = "Namespaced"
) -> dict[str, Any]:
    """A small CRD of our own, so that these tests do not depend on the project's models."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{WIDGET_GROUP}"},
        "spec": {
            "group": WIDGET_GROUP,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "shortNames": ["wd"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                        "color": {
                                            "type": "string",
                                            "enum": ["red", "blue"],
                                            "default": "red",
                                        },
                                        "note": {"type": "string", "nullable": True},
                                        "tags": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "parts": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "name": {"type": "string"},
                                                    "count": {"type": "integer", "default": 1},
                                                },
                                            },
                                        },
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "phase": {"type": "string"},
                                        "children": {"type": "integer"},
                                        "seen": {"type": "integer"},
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def widget(name: str, size: int = 3, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{WIDGET_GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"size": size, **spec},
    }


async def until(condition: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll `condition` until it is truthy (kopf and processes run elsewhere: no event to await)."""
    async with asyncio.timeout(within):
        while True:
            if result := condition():
                return result
            await asyncio.sleep(0.01)
