"""Admission for the built-in kinds: defaults the API server fills in, and what it refuses.

This is the part of kube-apiserver's per-kind "strategy" that an operator's tests trip over,
not the whole of it: object names (DNS-1123), label syntax, Pod essentials (containers with
name and image, volume mounts that name a volume) and Pod spec immutability, Secret
`stringData` folding and base64 `data`, immutable Secrets and ConfigMaps, Namespace naming and
its `kubernetes` finalizer, and the CRD checks that decide whether a resource can be served
(name = plural.group, one storage version, a structural schema).

Each `prepare_*` function mutates the new object in place and returns the causes of a 422
(empty when the object is acceptable). `old` is None on create.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from avatar_devtools.localcluster import clock, errors, resources, schemas

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    r"used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_NAMED = frozenset({"namespaces", "services"})
_POD_MUTABLE_HELP = (
    "pod updates may not change fields other than `spec.containers[*].image`, "
    "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
    "(only additions to existing tolerations), `spec.terminationGracePeriodSeconds`"
)


def _name_causes(info: resources.ResourceInfo, name: str) -> list[errors.StatusCause]:
    if info.plural in _LABEL_NAMED:
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            return [errors.invalid_value("metadata.name", name, LABEL_HELP)]
    elif info.plural in (
        "events",
        "leases",
        "clusterroles",
        "clusterrolebindings",
        "roles",
        "rolebindings",
    ):
        # These take path-segment names (`system:controller:...`), not DNS names.
        if "/" in name or name in (".", ".."):
            return [errors.invalid_value("metadata.name", name, "may not contain '/'")]
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return [errors.invalid_value("metadata.name", name, SUBDOMAIN_HELP)]
    return []


def _qualified_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def metadata_causes(info: resources.ResourceInfo, obj: dict[str, Any]) -> list[errors.StatusCause]:
    meta = obj.get("metadata") or {}
    causes: list[errors.StatusCause] = []
    name = meta.get("name") or ""
    if not name:
        causes.append(errors.required("metadata.name", "name or generateName is required"))
    else:
        causes.extend(_name_causes(info, name))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(errors.invalid_value("metadata.labels", labels, "must be a map"))
        labels = {}
    for key, value in labels.items():
        if not _qualified_key_ok(key):
            causes.append(
                errors.invalid_value(
                    "metadata.labels",
                    key,
                    "name part must consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                errors.invalid_value(
                    f"metadata.labels[{key}]" if isinstance(key, str) else "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character",
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        causes.append(
            errors.invalid_value("metadata.annotations", annotations, "values must be strings")
        )
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for field in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref, dict) or not ref.get(field):
                causes.append(errors.required(f"metadata.ownerReferences[{i}].{field}"))
    return causes


# --- per-kind preparation ----------------------------------------------------------------------


def prepare(
    info: resources.ResourceInfo,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    *,
    meta_changed: bool = True,
) -> list[errors.StatusCause]:
    """Fill in what the API server defaults, and say what it would refuse.

    `meta_changed=False` (an update that leaves metadata alone) skips the metadata checks:
    the stored metadata passed them when it was written.
    """
    causes = metadata_causes(info, obj) if meta_changed or old is None else []
    if info.custom:
        return causes
    preparer = _PREPARERS.get(info.plural)
    if preparer is not None:
        causes.extend(preparer(obj, old))
    return causes


def _prepare_namespace(obj: dict[str, Any], old: dict[str, Any] | None) -> list[errors.StatusCause]:
    name = obj["metadata"].get("name", "")
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    if old is None:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    return []


def _qos_class(spec: dict[str, Any]) -> str:
    containers = spec.get("containers") or []
    requests = [((c.get("resources") or {}).get("requests") or {}) for c in containers]
    limits = [((c.get("resources") or {}).get("limits") or {}) for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        lim.get("cpu")
        and lim.get("memory")
        and req.get("cpu", lim["cpu"]) == lim["cpu"]
        and req.get("memory", lim["memory"]) == lim["memory"]
        for req, lim in zip(requests, limits, strict=True)
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _prepare_pod(obj: dict[str, Any], old: dict[str, Any] | None) -> list[errors.StatusCause]:
    spec = obj.get("spec")
    causes: list[errors.StatusCause] = []
    if not isinstance(spec, dict):
        return [errors.required("spec")]
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        causes.append(errors.required("spec.containers"))
        containers = []
    volume_names = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        vname = volume.get("name") if isinstance(volume, dict) else None
        if not vname:
            causes.append(errors.required(f"spec.volumes[{i}].name"))
        elif vname in volume_names:
            causes.append(errors.duplicate(f"spec.volumes[{i}].name", vname))
        volume_names.add(vname)
    for group in ("initContainers", "containers"):
        seen: set[str] = set()
        for i, container in enumerate(spec.get(group) or []):
            path = f"spec.{group}[{i}]"
            if not isinstance(container, dict):
                causes.append(errors.invalid_value(path, container, "must be an object"))
                continue
            cname = container.get("name")
            if not cname:
                causes.append(errors.required(f"{path}.name"))
            elif not DNS1123_LABEL.match(cname):
                causes.append(errors.invalid_value(f"{path}.name", cname, LABEL_HELP))
            elif cname in seen:
                causes.append(errors.duplicate(f"{path}.name", cname))
            seen.add(cname or "")
            if not container.get("image"):
                causes.append(errors.required(f"{path}.image"))
            for j, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") not in volume_names:
                    causes.append(
                        errors.cause(
                            "FieldValueNotFound",
                            f"{path}.volumeMounts[{j}].name",
                            f"Not found: {errors.go_value(mount.get('name'))}",
                        )
                    )
                if not str(mount.get("mountPath", "")).startswith("/"):
                    causes.append(errors.required(f"{path}.volumeMounts[{j}].mountPath"))
            if old is None:
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
                image = str(container.get("image", ""))
                latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
                container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
                container.setdefault("resources", {})
    policy = spec.setdefault("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(
            errors.not_supported("spec.restartPolicy", policy, ["Always", "OnFailure", "Never"])
        )
    if old is None:
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("securityContext", {})
        spec.setdefault("priority", 0)
        spec.setdefault("enableServiceLinks", True)
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
    else:
        causes.extend(_pod_update_causes(spec, old.get("spec") or {}))
    return causes


def _pod_update_causes(new: dict[str, Any], old: dict[str, Any]) -> list[errors.StatusCause]:
    """Pods are immutable but for a few fields; the kubelet's binding goes through /binding."""

    def mutable_view(spec: dict[str, Any]) -> dict[str, Any]:
        view = {
            k: v
            for k, v in spec.items()
            if k not in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
        }
        for group in ("containers", "initContainers"):
            if isinstance(view.get(group), list):
                view[group] = [
                    {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                    for c in view[group]
                ]
        return view

    causes: list[errors.StatusCause] = []
    if mutable_view(new) != mutable_view(old):
        causes.append(errors.forbidden("spec", _POD_MUTABLE_HELP))
    old_tolerations = old.get("tolerations") or []
    new_tolerations = new.get("tolerations") or []
    if any(t not in new_tolerations for t in old_tolerations):
        causes.append(
            errors.forbidden("spec.tolerations", "existing toleration can not be modified")
        )
    return causes


def _prepare_secret(obj: dict[str, Any], old: dict[str, Any] | None) -> list[errors.StatusCause]:
    causes: list[errors.StatusCause] = []
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {}) if (obj.get("data") or string_data) else obj.get("data")
    for key, value in string_data.items():
        if not isinstance(value, str):
            causes.append(errors.invalid_value(f"stringData[{key}]", value, "must be a string"))
            continue
        assert data is not None
        data[key] = base64.b64encode(value.encode()).decode()
    for key, value in (data or {}).items():
        if not _CONFIG_KEY.match(key):
            causes.append(
                errors.invalid_value(
                    f"data[{key}]",
                    key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            causes.append(
                errors.invalid_value(f"data[{key}]", "<secret data>", "illegal base64 data")
            )
    obj.setdefault("type", "Opaque")
    if old is not None:
        causes.extend(_immutable_data_causes(obj, old, ("data", "type")))
    return causes


def _prepare_configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> list[errors.StatusCause]:
    causes: list[errors.StatusCause] = []
    for field in ("data", "binaryData"):
        for key in obj.get(field) or {}:
            if not _CONFIG_KEY.match(key):
                causes.append(errors.invalid_value(f"{field}[{key}]", key, "invalid config key"))
    if old is not None:
        causes.extend(_immutable_data_causes(obj, old, ("data", "binaryData")))
    return causes


def _immutable_data_causes(
    obj: dict[str, Any], old: dict[str, Any], fields: tuple[str, ...]
) -> list[errors.StatusCause]:
    if not old.get("immutable"):
        return []
    if not obj.get("immutable"):
        return [errors.forbidden("immutable", "field is immutable when `immutable` is set")]
    return [
        errors.forbidden(field, "field is immutable when `immutable` is set")
        for field in fields
        if obj.get(field) != old.get(field)
    ]


def _prepare_crd(obj: dict[str, Any], old: dict[str, Any] | None) -> list[errors.StatusCause]:
    causes: list[errors.StatusCause] = []
    schema_causes: list[errors.StatusCause] = []  # kept apart: Store may be lenient on them
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [errors.required("spec")]
    group = spec.get("group") or ""
    names = spec.get("names") or {}
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not group:
        causes.append(errors.required("spec.group"))
    elif "." not in group or not DNS1123_SUBDOMAIN.match(group):
        causes.append(
            errors.invalid_value("spec.group", group, "should be a domain with at least one dot")
        )
    if not plural:
        causes.append(errors.required("spec.names.plural"))
    elif not DNS1123_LABEL.match(plural):
        causes.append(errors.invalid_value("spec.names.plural", plural, LABEL_HELP))
    if not kind:
        causes.append(errors.required("spec.names.kind"))
    name = obj["metadata"].get("name", "")
    if plural and group and name != f"{plural}.{group}":
        causes.append(
            errors.invalid_value("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
        )
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        causes.append(errors.not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(
            errors.required(
                "spec.versions", "must have exactly one version marked as storage version"
            )
        )
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if versions and len(storage) != 1:
        causes.append(
            errors.invalid_value(
                "spec.versions",
                len(storage),
                "must have exactly one version marked as storage version",
            )
        )
    seen: set[str] = set()
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}]"
        vname = version.get("name") if isinstance(version, dict) else None
        if not vname:
            causes.append(errors.required(f"{path}.name"))
            continue
        if vname in seen:
            causes.append(errors.duplicate(f"{path}.name", vname))
        seen.add(vname)
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append(errors.required(f"{path}.schema.openAPIV3Schema", "schemas are required"))
        else:
            schema_causes.extend(
                schemas.structural_errors(schema, f"{path}.schema.openAPIV3Schema")
            )
        for key in version.get("subresources") or {}:
            if key not in ("status", "scale"):
                causes.append(
                    errors.not_supported(f"{path}.subresources", key, ["scale", "status"])
                )
    if old is not None:
        old_spec = old.get("spec") or {}
        for field in ("scope", "group"):
            if spec.get(field) != old_spec.get(field):
                causes.append(
                    errors.invalid_value(f"spec.{field}", spec.get(field), "field is immutable")
                )
        if plural != (old_spec.get("names") or {}).get("plural"):
            causes.append(errors.invalid_value("spec.names.plural", plural, "field is immutable"))
    if causes:
        return causes + schema_causes
    names.setdefault("singular", kind.lower())
    names.setdefault("listKind", f"{kind}List")
    if old is None:
        finalizers = obj["metadata"].setdefault("finalizers", [])
        if CRD_CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CRD_CLEANUP_FINALIZER)
    status = obj.setdefault("status", {})
    status["acceptedNames"] = dict(names)
    status["storedVersions"] = sorted(
        set((old or {}).get("status", {}).get("storedVersions") or [])
        | {v["name"] for v in storage}
    )
    if not status.get("conditions"):
        status["conditions"] = [
            _condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            _condition(
                "Established", "InitialNamesAccepted", "the initial names have been accepted"
            ),
        ]
    return schema_causes


CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "lastTransitionTime": clock.timestamp(),
        "reason": reason,
        "message": message,
    }


_PREPARERS = {
    "namespaces": _prepare_namespace,
    "pods": _prepare_pod,
    "secrets": _prepare_secret,
    "configmaps": _prepare_configmap,
    "customresourcedefinitions": _prepare_crd,
}
