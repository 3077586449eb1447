"""The three patch formats a kube-apiserver takes besides server-side apply.

- JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge recursively, `null`
  deletes a key, anything else (lists included) replaces. kopf patches with it.
- JSON patch (RFC 6902, `application/json-patch+json`): `add`, `remove`, `replace`, `move`,
  `copy` and `test`. A failed `test` raises 422, which is how kopf's finalizer patches
  (`test /metadata/resourceVersion` first) learn that the object moved on.
- Strategic merge patch (`application/strategic-merge-patch+json`), built-in kinds only (a real
  API server answers 415 for custom resources, and so does this one). The `kubernetes` client
  sends it for every dict-shaped patch of a built-in. Supported subset:

  | construct                                   | behaviour                                   |
  |---------------------------------------------|---------------------------------------------|
  | maps                                        | merge recursively; `null` deletes a key     |
  | `$patch: replace` / `$patch: delete` in map | replace the map / delete the map            |
  | lists with a merge key (table below)        | merge items by key; new keys are appended   |
  | `{"$patch": "delete", key: ...}` list item  | removes the item with that key              |
  | `{"$patch": "replace"}` list item           | the rest of the patch list replaces it      |
  | `finalizers` (primitive list, merge)        | union, in order                             |
  | `$deleteFromPrimitiveList/<field>`          | removes those values from the primitive list|
  | `$setElementOrder/...`, `$retainKeys`       | accepted and ignored                        |
  | every other list                            | replaced, as Kubernetes does without a key  |

  Merge keys, by field name (Kubernetes keys them by Go type; these names are unambiguous in
  the kinds localcluster serves): containers, initContainers, ephemeralContainers, env,
  volumes, imagePullSecrets → `name`; volumeMounts → `mountPath`; volumeDevices →
  `devicePath`; ports → `containerPort` in containers, `port` elsewhere; ownerReferences →
  `uid`; conditions, addresses → `type`; hostAliases → `ip`.

All functions take the target as a fresh copy they may change, and return the result.
"""

from __future__ import annotations

import copy
from typing import Any

from avatar_devtools.localcluster import errors

_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "conditions": "type",
    "addresses": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
_PRIMITIVE_MERGE_LISTS = frozenset({"finalizers"})


# --- JSON merge patch ------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


# --- JSON patch --------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise errors.unprocessable(f"invalid JSON pointer: {path!r}")
    if path == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token.startswith("0") and token != "0"):
        raise errors.unprocessable(f"invalid array index {token!r} in {path}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise errors.unprocessable(f"array index {index} out of bounds in {path}")
    return index


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for token in parts[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise errors.unprocessable(f"doc is missing path: {path}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, for_add=False)]
        else:
            raise errors.unprocessable(f"doc is missing path: {path}")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise errors.unprocessable(f"doc is missing key: {path}")
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, path, for_add=False)]
    raise errors.unprocessable(f"doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, path, for_add=True), value)
    else:
        raise errors.unprocessable(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise errors.unprocessable("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    token = parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise errors.unprocessable(
                f"remove operation does not apply: doc is missing key: {path}"
            )
        return doc, parent.pop(token)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, token, path, for_add=False))
    raise errors.unprocessable(f"doc is missing path: {path}")


def json_patch(doc: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise errors.bad_request("a JSON patch must be a list of operations")
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.bad_request(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise errors.bad_request(f"JSON patch operation {kind} needs a value: {op!r}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            parts = _pointer(path)
            parent = _parent(doc, parts, path) if parts else None
            if not isinstance(parent, dict):
                _get(doc, path)  # the target must exist (in an object: see below)
            # kube-apiserver's json-patch (v4) replaces a missing key of an object as if it
            # were there: `replace /spec/replicas` of a Scale whose replicas (0) is left out
            # succeeds on a real server
            if isinstance(parent, dict) and parts[-1] not in parent:
                doc = _add(doc, path, copy.deepcopy(op["value"]))
            elif parts:
                doc, _ = _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(op["value"]))
            else:
                doc = copy.deepcopy(op["value"])
        elif kind == "move":
            doc, value = _remove(doc, op.get("from", ""))
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            try:
                actual = _get(doc, path)
            except errors.ApiError:
                actual = None
            if actual != op["value"]:
                raise errors.unprocessable(
                    f"the server rejected our request due to an error in our request: "
                    f"testing value {path} failed: expected {op['value']!r}, got {actual!r}"
                )
        else:
            raise errors.bad_request(f"unknown JSON patch operation {kind!r}")
    return doc


# --- strategic merge patch ---------------------------------------------------------------------


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    return _smp_map(target if isinstance(target, dict) else {}, patch, parent_field="")


def _smp_map(target: dict[str, Any], patch: Any, parent_field: str) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(target.get(field), list) and isinstance(value, list):
                target[field] = [v for v in target[field] if v not in value]
            continue
        if value is None:
            target.pop(key, None)
            continue
        current = target.get(key)
        if isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value, key)
            if merged is None:
                target.pop(key, None)
            else:
                target[key] = merged
        elif isinstance(value, list):
            target[key] = _smp_list(current if isinstance(current, list) else [], value, key)
        else:
            target[key] = value
    return target


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def _smp_list(target: list[Any], patch: list[Any], field: str) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch"))]
    if field in _PRIMITIVE_MERGE_LISTS:
        merged = list(target)
        merged.extend(v for v in patch if v not in merged)
        return merged
    key = _merge_key(field, patch + target)
    if key is None:
        return copy.deepcopy(patch)
    merged = list(target)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise errors.bad_request(
                f"strategic merge patch: every item of {field} needs its merge key {key!r}"
            )
        position = next(
            (
                i
                for i, old in enumerate(merged)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                merged.pop(position)
            continue
        if position is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            merged[position] = _smp_map(dict(merged[position]), item, field)
    return merged
