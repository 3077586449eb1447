"""The OpenAPI v3 documents kubectl reads: `/openapi/v3` and one document per group/version.

kubectl relies on them for three things, and this serves what each needs:

- `kubectl apply` (and create, replace, patch with `--validate`, the default) looks for the
  `fieldValidation` parameter on the PATCH operation of the object's kind (found by
  `x-kubernetes-group-version-kind`); when it is there the server validates (`Strict`: unknown
  fields refused), as here, and kubectl does not need a schema of its own.
- Client-side `kubectl apply` of a built-in kind computes a strategic merge patch: PATCH lists
  `application/strategic-merge-patch+json` for built-in kinds only, as on a real server (a
  custom resource gets a JSON merge patch).
- `kubectl explain` finds the schema of a kind among `components.schemas` by
  `x-kubernetes-group-version-kind`, following `$ref`s and `allOf`s.

Documents are made as kube-apiserver makes them: a custom resource's schema is its CRD
version's `openAPIV3Schema` with descriptions, under the reversed-group model name
(`dev.avatar-operator.v1alpha1.AvatarSession`), `metadata` a reference to `ObjectMeta`, and a
`...List` kind beside it; the `meta.k8s.io` types (`ObjectMeta`, `ListMeta`, `Status`, `Patch`,
`DeleteOptions`, ...) and the operations' query parameters are copied from kube-apiserver
1.37's documents (`openapi_meta.json`), less the parameters not served here (`shardSelector`).
The discovery document names each one with a hash of its content (`?hash=`, answered as
immutable), so kubectl's cache refreshes when a CRD changes.

The built-in kinds served here have kube-apiserver 1.37's own schemas (and those they
reference), copied by `hack/kube/openapi_builtins.py` into `openapi_builtins.json.gz`: `kubectl
explain pods` reads as on a real server, and kubectl's strategic merge patches of built-in kinds
follow their patch strategies. OpenAPI v2 (`/openapi/v2`, asked for as protobuf) answers 406,
which kubectl takes as "use v3".
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
from importlib import resources as package_files
from typing import Any

from avatar_devtools.localcluster import resources

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_OBJECT_META_DOC = (
    "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_LIST_META_DOC = (
    "Standard list metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)
_API_VERSION_DOC = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should "
    "convert recognized schemas to the latest internal value, and may reject unrecognized values. "
    "More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
_KIND_DOC = (
    "Kind is a string value representing the REST resource this object represents. Servers may "
    "infer this from the endpoint the client submits requests to. Cannot be updated. In "
    "CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)
# Query parameters kube-apiserver publishes that the emulated API does not take.
_NOT_SERVED = frozenset({"shardSelector", "ignoreStoreReadErrorWithClusterBreakingPotential"})
_PRODUCES = ("application/json", "application/yaml")


@functools.cache
def _reference() -> dict[str, Any]:
    """kube-apiserver 1.37's `meta.k8s.io/v1` schemas and per-action query parameters."""
    text = package_files.files(__package__).joinpath("openapi_meta.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


BUILTINS_FILE = "openapi_builtins.json.gz"


@functools.cache
def _builtins() -> dict[str, Any]:
    """kube-apiserver 1.37's schemas of the built-in kinds served here, by group/version
    (written by `hack/kube/openapi_builtins.py`)."""
    data = package_files.files(__package__).joinpath(BUILTINS_FILE).read_bytes()
    loaded: dict[str, Any] = json.loads(gzip.decompress(data))
    return loaded


def all_builtin_schemas() -> dict[str, Any]:
    """Every schema of the built-in kinds served (and those they reference), by model name."""
    schemas: dict[str, Any] = _builtins()["schemas"]
    return schemas


def builtin_schemas(key: str) -> dict[str, Any]:
    """The schemas of one built-in group/version's served kinds and all they reference."""
    found = _builtins()
    return {name: found["schemas"][name] for name in found["groupVersions"].get(key, ())}


def meta_schemas() -> dict[str, Any]:
    """The `meta.k8s.io/v1` component schemas (`ObjectMeta`, `Status`, ...)."""
    schemas: dict[str, Any] = _reference()["schemas"]
    return schemas


def _parameters(action: str) -> list[dict[str, Any]]:
    """The query parameters of an action (`list`, `post`, `patch`, ...), as published."""
    found = _reference()["parameters"][action]
    return [copy.deepcopy(p) for p in found if p["name"] not in _NOT_SERVED]


def model_name(group: str, version: str, kind: str) -> str:
    """The model name of a kind: `dev.avatar-operator.v1alpha1.AvatarSession` (the group
    reversed), `io.k8s.api.core.v1.Pod`, `io.k8s.api.coordination.v1.Lease`."""
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    if group == "apiextensions.k8s.io":
        return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}"
    if group.endswith(".k8s.io") or "." not in group:
        # the Go package of the built-in group: k8s.io/api/rbac/v1 for rbac.authorization.k8s.io
        return f"io.k8s.api.{group.split('.')[0]}.{version}.{kind}"
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _gvk(info: resources.ResourceInfo, kind: str | None = None) -> dict[str, str]:
    return {"group": info.group, "version": info.version, "kind": kind or info.kind}


def _content(schema: dict[str, Any], types: tuple[str, ...]) -> dict[str, Any]:
    return {media: {"schema": schema} for media in types}


def _tag(info: resources.ResourceInfo) -> str:
    """`core_v1`, `apps_v1`, `coordination_v1`, `avatarOperatorDev_v1alpha1`."""
    if not info.group:
        return f"core_{info.version}"
    if info.group.endswith(".k8s.io"):
        words = info.group.removesuffix(".k8s.io").split(".")[:1]
    else:
        words = info.group.replace("-", ".").split(".")
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:]) + f"_{info.version}"


def _operation_prefix(info: resources.ResourceInfo) -> str:
    """`CoreV1`, `AvatarOperatorDevV1alpha1`: the tag in an operationId."""
    group, version = _tag(info).split("_")
    return group[:1].upper() + group[1:] + version[:1].upper() + version[1:]


def _patch_types(info: resources.ResourceInfo) -> tuple[str, ...]:
    """What PATCH takes: server-side apply, JSON and merge patches; strategic merge for
    built-in kinds only (as on a real server)."""
    types = [
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ]
    if not info.custom:
        types.append("application/strategic-merge-patch+json")
    return tuple(types)


def _operation(
    info: resources.ResourceInfo,
    action: str,
    operation_id: str,
    description: str,
    response: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    extra_responses: tuple[str, ...] = (),
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": _content(response, _PRODUCES)},
    }
    for code in extra_responses:
        label = {"201": "Created", "202": "Accepted"}[code]
        responses[code] = {"description": label, "content": _content(response, _PRODUCES)}
    responses["401"] = {"description": "Unauthorized"}
    operation: dict[str, Any] = {
        "tags": [_tag(info)],
        "description": description,
        "operationId": operation_id,
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    operation["x-kubernetes-action"] = action
    operation["x-kubernetes-group-version-kind"] = _gvk(info)
    return operation


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "description": description,
        "required": True,
        "schema": {"type": "string", "uniqueItems": True},
    }


def _paths(info: resources.ResourceInfo) -> dict[str, Any]:
    """The REST paths of one resource, with their operations, as kube-apiserver lists them."""
    model = model_name(info.group, info.version, info.kind)
    model_list = model_name(info.group, info.version, info.kind + "List")
    prefix = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    scope = "Namespaced" if info.namespaced else ""
    ident = _operation_prefix(info)
    root = f"{prefix}/{info.plural}"
    if info.namespaced:
        root = f"{prefix}/namespaces/{{namespace}}/{info.plural}"
    pretty = copy.deepcopy(_reference()["pretty"])
    namespace = _path_parameter(
        "namespace", "object name and auth scope, such as for teams and projects"
    )
    common = [*([namespace] if info.namespaced else []), pretty]
    article = "an" if info.kind[:1] in "AEIOU" else "a"
    body = {"content": _content(_ref(model), _PRODUCES), "required": True}
    patch_body = {"content": _content(_ref(f"{META}.Patch"), _patch_types(info)), "required": True}
    status = _ref(f"{META}.Status")
    paths: dict[str, Any] = {}
    if info.namespaced:
        paths[f"{prefix}/{info.plural}"] = {
            "get": _operation(
                info,
                "list",
                f"list{ident}{info.kind}ForAllNamespaces",
                f"list objects of kind {info.kind}",
                _ref(model_list),
            ),
            "parameters": sorted([*_parameters("list"), pretty], key=lambda p: p["name"]),
        }
    paths[root] = {
        "get": _operation(
            info,
            "list",
            f"list{ident}{scope}{info.kind}",
            f"list objects of kind {info.kind}",
            _ref(model_list),
            parameters=_parameters("list"),
        ),
        "post": _operation(
            info,
            "post",
            f"create{ident}{scope}{info.kind}",
            f"create {article} {info.kind}",
            _ref(model),
            parameters=_parameters("post"),
            body=body,
            extra_responses=("201", "202"),
        ),
        "delete": _operation(
            info,
            "deletecollection",
            f"delete{ident}Collection{scope}{info.kind}",
            f"delete collection of {info.kind}",
            status,
            parameters=_parameters("deletecollection"),
        ),
        "parameters": common,
    }
    item: dict[str, Any] = {
        "get": _operation(
            info,
            "get",
            f"read{ident}{scope}{info.kind}",
            f"read the specified {info.kind}",
            _ref(model),
            parameters=_parameters("get"),
        ),
        "put": _operation(
            info,
            "put",
            f"replace{ident}{scope}{info.kind}",
            f"replace the specified {info.kind}",
            _ref(model),
            parameters=_parameters("put"),
            body=body,
            extra_responses=("201",),
        ),
        "delete": _operation(
            info,
            "delete",
            f"delete{ident}{scope}{info.kind}",
            f"delete {article} {info.kind}",
            status,
            parameters=_parameters("delete"),
            body={"content": _content(_ref(f"{META}.DeleteOptions"), _PRODUCES)},
            extra_responses=("202",),
        ),
        "patch": _operation(
            info,
            "patch",
            f"patch{ident}{scope}{info.kind}",
            f"partially update the specified {info.kind}",
            _ref(model),
            parameters=_parameters("patch"),
            body=patch_body,
        ),
        "parameters": [_path_parameter("name", f"name of the {info.kind}"), *common],
    }
    paths[f"{root}/{{name}}"] = item
    if info.status_subresource:
        status_item: dict[str, Any] = copy.deepcopy(item)
        del status_item["delete"]
        for verb, operation in status_item.items():
            if verb == "parameters":
                continue
            operation["operationId"] += "Status"
            operation["description"] = operation["description"].replace(
                "the specified", "status of the specified"
            )
        paths[f"{root}/{{name}}/status"] = status_item
    return paths


def _custom_schema(info: resources.ResourceInfo) -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(info.schema.schema if info.schema else {})
    if not schema:
        schema = {"type": "object"}
    else:
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"description": _API_VERSION_DOC, "type": "string"}
        properties["kind"] = {"description": _KIND_DOC, "type": "string"}
        properties["metadata"] = {
            "allOf": [_ref(f"{META}.ObjectMeta")],
            "description": _OBJECT_META_DOC,
        }
    schema["x-kubernetes-group-version-kind"] = [_gvk(info)]
    return schema


def _list_schema(info: resources.ResourceInfo) -> dict[str, Any]:
    model = model_name(info.group, info.version, info.kind)
    return {
        "description": f"{info.kind}List is a list of {info.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"description": _API_VERSION_DOC, "type": "string"},
            "items": {
                "description": (
                    f"List of {info.plural}. More info: "
                    "https://git.k8s.io/community/contributors/devel/sig-architecture/"
                    "api-conventions.md"
                ),
                "type": "array",
                "items": _ref(model),
            },
            "kind": {"description": _KIND_DOC, "type": "string"},
            "metadata": {
                "allOf": [_ref(f"{META}.ListMeta")],
                "description": _LIST_META_DOC,
            },
        },
        "x-kubernetes-group-version-kind": [_gvk(info, info.kind + "List")],
    }


def group_version_document(infos: list[resources.ResourceInfo]) -> dict[str, Any]:
    """The OpenAPI v3 document of one group/version's resources."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = dict(meta_schemas())
    if infos and not infos[0].custom:
        schemas.update(builtin_schemas(document_key(infos[0].group, infos[0].version)))
    for info in sorted(infos, key=lambda i: i.plural):
        paths.update(_paths(info))
        if info.custom:
            schemas[model_name(info.group, info.version, info.kind)] = _custom_schema(info)
            schemas[model_name(info.group, info.version, info.kind + "List")] = _list_schema(info)
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    if any(info.custom for info in infos):  # a CRD's own document (never a built-in group's)
        info_block = {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"}
    else:
        info_block = {"title": "Kubernetes", "version": _server_version()}
        components["securitySchemes"] = {
            "BearerToken": {
                "type": "apiKey",
                "description": "Bearer Token authentication",
                "name": "authorization",
                "in": "header",
            }
        }
    return {"openapi": "3.0.0", "info": info_block, "paths": paths, "components": components}


def _server_version() -> str:
    return f"{resources.KUBE_VERSION['major']}.{resources.KUBE_VERSION['minor']}"


def document_key(group: str, version: str) -> str:
    """`api/v1`, `apis/avatar-operator.dev/v1alpha1`: the key in `/openapi/v3` and the URL."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _rendered(document: dict[str, Any]) -> tuple[bytes, str]:
    body = json.dumps(document, separators=(",", ":")).encode()
    return body, hashlib.sha512(body).hexdigest().upper()


@functools.cache
def _builtin_document(infos: tuple[resources.ResourceInfo, ...]) -> tuple[bytes, str]:
    return _rendered(group_version_document(list(infos)))


class Documents:
    """The documents of one state of the registry (rebuilt when a CRD comes or goes)."""

    def __init__(self, registry: resources.ResourceRegistry) -> None:
        by_group_version: dict[tuple[str, str], list[resources.ResourceInfo]] = {}
        for info in registry:
            by_group_version.setdefault((info.group, info.version), []).append(info)
        self.bodies: dict[str, bytes] = {}
        self.hashes: dict[str, str] = {}
        for (group, version), infos in sorted(by_group_version.items()):
            key = document_key(group, version)
            if any(info.custom for info in infos):
                body, digest = _rendered(group_version_document(infos))
            else:  # the same for the server's whole life: made once
                body, digest = _builtin_document(tuple(infos))
            self.bodies[key] = body
            self.hashes[key] = digest

    def discovery(self) -> bytes:
        paths = {
            key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            for key, digest in self.hashes.items()
        }
        return json.dumps({"paths": paths}, separators=(",", ":")).encode()


class OpenApi:
    """`/openapi/v3` for a registry, cached until the registry changes."""

    def __init__(self, registry: resources.ResourceRegistry) -> None:
        self.registry = registry
        self._documents: Documents | None = None
        self._revision = -1

    def documents(self) -> Documents:
        if self._documents is None or self._revision != self.registry.revision:
            self._documents = Documents(self.registry)
            self._revision = self.registry.revision
        return self._documents
