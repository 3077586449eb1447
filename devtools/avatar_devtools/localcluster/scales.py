"""The `scale` subresource of custom resources, as apiextensions-apiserver serves it.

A CRD version that declares `subresources.scale {specReplicasPath, statusReplicasPath,
labelSelectorPath}` serves `.../NAME/scale` as an `autoscaling/v1` `Scale` made from the custom
object: `spec.replicas` from specReplicasPath, `status.replicas` from statusReplicasPath (0 when
absent, either), `status.selector` from labelSelectorPath (left out when absent or empty; the
Go type's `omitempty` also leaves `spec.replicas` out when it is 0). A PATCH applies to that
Scale, a PUT replaces it; either writes the Scale's `spec.replicas` back to the object's
specReplicasPath and nothing else (see `Store.write_scale`), with the Scale's
`metadata.resourceVersion`, when set, as the write's precondition.

The object's validation checks the paths on every write, as kube-apiserver's
`ValidateScaleSpec`/`ValidateScaleStatus` do: an integer in 0..2^31-1 at the replicas paths,
a string at labelSelectorPath (`null` included: it is no string).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from avatar_devtools.localcluster import errors

API_VERSION = "autoscaling/v1"
KIND = "Scale"
GROUP = "autoscaling"
VERSION = "v1"
VERBS = ("get", "patch", "update")
MAX_INT32 = 2**31 - 1
UNSET_REPLICAS = -(2**31)  # what the API server patches when specReplicasPath is not set
# the Scale's fields, by path: anything else in a body is an unknown field
_FIELDS: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": None,  # ObjectMeta: not walked here
    "spec": {"replicas": None},
    "status": {"replicas": None, "selector": None},
}
_SCALE_METADATA = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")


@dataclasses.dataclass(frozen=True)
class ScalePaths:
    spec_replicas: str
    status_replicas: str
    label_selector: str | None

    @staticmethod
    def of(crd_version: dict[str, Any]) -> ScalePaths | None:
        scale = (crd_version.get("subresources") or {}).get("scale")
        if not isinstance(scale, dict):
            return None
        return ScalePaths(
            str(scale.get("specReplicasPath") or ""),
            str(scale.get("statusReplicasPath") or ""),
            scale.get("labelSelectorPath") or None,
        )


class AccessorError(Exception):
    """What unstructured.NestedInt64/NestedString answer for a value of the wrong type."""


def _fields(path: str) -> list[str]:
    return path.removeprefix(".").split(".")


def _go_print(value: Any) -> str:
    """`%v` of a decoded JSON value, near enough."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_print(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_print(v) for v in value) + "]"
    return str(value)


def _nested(obj: dict[str, Any], path: str) -> tuple[Any, bool]:
    fields = _fields(path)
    value: Any = obj
    for index, field in enumerate(fields):
        if value is None:
            return None, False
        if not isinstance(value, dict):
            joined = "." + ".".join(fields[:index])
            raise AccessorError(
                f"{joined} accessor error: {_go_print(value)} is of the type "
                f"{errors.type_name(value, errors.GO_TYPES)}, expected map[string]interface{{}}"
            )
        if field not in value:
            return None, False
        value = value[field]
    return value, True


def nested_int(obj: dict[str, Any], path: str) -> tuple[int, bool]:
    value, found = _nested(obj, path)
    if not found:
        return 0, False
    if isinstance(value, bool) or not isinstance(value, int):
        raise AccessorError(
            f"{'.' + '.'.join(_fields(path))} accessor error: {_go_print(value)} is of the type "
            f"{errors.type_name(value, errors.GO_TYPES)}, expected int64"
        )
    return value, True


def nested_string(obj: dict[str, Any], path: str) -> tuple[str, bool]:
    value, found = _nested(obj, path)
    if not found:
        return "", False
    if not isinstance(value, str):
        raise AccessorError(
            f"{'.' + '.'.join(_fields(path))} accessor error: {_go_print(value)} is of the type "
            f"{errors.type_name(value, errors.GO_TYPES)}, expected string"
        )
    return value, True


def scale_of(paths: ScalePaths, obj: dict[str, Any], *, to_write: bool = False) -> dict[str, Any]:
    """The object as a Scale, as the API server serialises it. `to_write`: the Scale a patch
    applies to, whose spec.replicas is `UNSET_REPLICAS` when specReplicasPath is not set."""
    try:
        spec_replicas, found = nested_int(obj, paths.spec_replicas)
        status_replicas, _ = nested_int(obj, paths.status_replicas)
        selector = nested_string(obj, paths.label_selector)[0] if paths.label_selector else ""
    except AccessorError as e:
        raise errors.internal(str(e)) from None
    if to_write and not found:
        spec_replicas = UNSET_REPLICAS
    meta = obj.get("metadata") or {}
    scale_meta = {k: meta[k] for k in _SCALE_METADATA if meta.get(k)}
    spec: dict[str, Any] = {"replicas": spec_replicas} if spec_replicas else {}
    status: dict[str, Any] = {"replicas": status_replicas}
    if selector:
        status["selector"] = selector
    return {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": scale_meta,
        "spec": spec,
        "status": status,
    }


def _check_replicas(obj: dict[str, Any], path: str) -> list[errors.StatusCause]:
    try:
        replicas, _ = nested_int(obj, path)
    except AccessorError as e:
        return [errors.invalid_value(path, 0, str(e))]
    if replicas < 0:
        return [errors.invalid_value(path, replicas, "should be a non-negative integer")]
    if replicas > MAX_INT32:
        return [
            errors.invalid_value(path, replicas, f"should be less than or equal to {MAX_INT32}")
        ]
    return []


def validate_spec(paths: ScalePaths, obj: dict[str, Any]) -> list[errors.StatusCause]:
    """kube-apiserver's ValidateScaleSpec of a custom object."""
    return _check_replicas(obj, paths.spec_replicas)


def validate_status(paths: ScalePaths, obj: dict[str, Any]) -> list[errors.StatusCause]:
    """kube-apiserver's ValidateScaleStatus of a custom object."""
    causes = _check_replicas(obj, paths.status_replicas)
    if paths.label_selector:
        try:
            nested_string(obj, paths.label_selector)
        except AccessorError as e:
            causes.append(errors.invalid_value(paths.label_selector, "", str(e)))
    return causes


def replicas_of(body: dict[str, Any], *, patched: bool) -> int:
    """The Scale's spec.replicas as the Go type decodes it (an int32, 0 when absent), or the
    error of a body that does not decode: 422 for the result of a patch, 400 for a PUT."""
    spec = body.get("spec")
    replicas = spec.get("replicas") if isinstance(spec, dict) else None
    if spec is None or (isinstance(spec, dict) and replicas is None):
        return 0
    if (
        isinstance(spec, dict)
        and isinstance(replicas, int | float)
        and not isinstance(replicas, bool)
        and float(replicas).is_integer()
        and -(2**31) <= replicas <= MAX_INT32
    ):
        return int(replicas)
    if not isinstance(spec, dict):
        named = errors.type_name(spec, errors.JSON_TYPES)
        why = f"json: cannot unmarshal {named} into Go struct field Scale.spec of type v1.ScaleSpec"
    elif isinstance(replicas, int | float) and not isinstance(replicas, bool):
        why = (
            f"json: cannot unmarshal number {replicas} into Go struct field "
            "ScaleSpec.spec.replicas of type int32"
        )
    else:
        why = (
            f"json: cannot unmarshal {errors.type_name(replicas, errors.JSON_TYPES)} into Go "
            "struct field ScaleSpec.spec.replicas of type int32"
        )
    if patched:
        raise patch_invalid(body, why)
    raise errors.bad_request(f'Scale in version "v1" cannot be handled as a Scale: {why}')


def patch_invalid(patched: dict[str, Any], why: str) -> errors.ApiError:
    """422 for a patched Scale that does not decode, as kube-apiserver words it: the patched
    JSON as the invalid value of the field `patch`, of no kind and no name."""
    ordered = {
        k: v if k == "metadata" or not isinstance(v, dict) else dict(sorted(v.items()))
        for k, v in sorted(patched.items())
    }
    value = json.dumps(ordered, separators=(",", ":"))
    return errors.ApiError(
        422,
        "Invalid",
        f' "" is invalid: patch: Invalid value: {json.dumps(value)}: {why}',
        {"causes": [errors.invalid_value("patch", value, why)]},
    )


def unknown_fields(body: Any) -> list[str]:
    """The fields of a Scale body that autoscaling/v1 Scale does not have."""
    found: list[str] = []
    if not isinstance(body, dict):
        return found
    for key, value in body.items():
        if key not in _FIELDS:
            found.append(key)
            continue
        allowed = _FIELDS[key]
        if allowed is not None and isinstance(value, dict):
            found.extend(f"{key}.{sub}" for sub in value if sub not in allowed)
    return found


def set_replicas(obj: dict[str, Any], path: str, replicas: int) -> None:
    """unstructured.SetNestedField: the maps along the path made as needed."""
    fields = _fields(path)
    node = obj
    for field in fields[:-1]:
        child = node.get(field)
        if not isinstance(child, dict):
            child = node[field] = {}
        node = child
    node[fields[-1]] = replicas
