"""Unknown fields of built-in kinds, found with kube-apiserver's own schemas of them.

kube-apiserver decodes a built-in object into its Go type, so a field the type does not have
cannot survive: with `fieldValidation=Strict` (what kubectl sends) the request is refused
(`strict decoding error: unknown field "spec.containers[0].imagePolicy"`), with `Warn` (the
default) the field is dropped with a `Warning` header, with `Ignore` dropped silently. The
emulated API does the same, walking the schemas of `openapi_builtins.json.gz` (the same
documents `kubectl explain` reads): properties by name, map values, list items, `$ref`s and
`allOf`s followed; a node that declares no structure (`RawExtension`, `FieldsV1`, `JSON`,
`x-kubernetes-preserve-unknown-fields`) takes anything. Custom resources are pruned by their
CRD's schema instead (`schemas`).
"""

from __future__ import annotations

import functools
from typing import Any

from avatar_devtools.localcluster import openapi

_REF = "#/components/schemas/"


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A node with its `$ref` (or a single-`$ref` `allOf`) replaced by the schema it names."""
    schemas = openapi.all_builtin_schemas()
    while True:
        ref = node.get("$ref")
        if ref is None and len(node.get("allOf") or ()) == 1:
            ref = node["allOf"][0].get("$ref")
        if not isinstance(ref, str) or not ref.startswith(_REF):
            return node
        node = schemas.get(ref.removeprefix(_REF), {})


def _walk(value: Any, node: dict[str, Any], path: str, found: list[str], prune: bool) -> None:
    node = _resolve(node)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = node.get("properties")
        additional = node.get("additionalProperties")
        if properties is None and not isinstance(additional, dict):
            return  # no structure declared: anything goes
        for key in list(value):
            here = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                _walk(value[key], properties[key], here, found, prune)
            elif isinstance(additional, dict):
                _walk(value[key], additional, here, found, prune)
            elif properties is not None:
                found.append(here)
                if prune:
                    del value[key]
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            _walk(item, node["items"], f"{path}[{index}]", found, prune)


@functools.cache
def _model(group: str, version: str, kind: str) -> dict[str, Any] | None:
    return openapi.all_builtin_schemas().get(openapi.model_name(group, version, kind))


def unknown_fields(
    group: str, version: str, kind: str, obj: dict[str, Any], *, prune: bool = False
) -> list[str]:
    """The paths of the fields of a built-in object its kind does not have (dropped with
    `prune`); [] for a kind without a schema here."""
    model = _model(group, version, kind)
    if model is None:
        return []
    found: list[str] = []
    _walk(obj, model, "", found, prune)
    return found
