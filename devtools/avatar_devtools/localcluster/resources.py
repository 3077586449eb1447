"""What the emulated API serves: the built-in kinds, CRD-registered kinds, and discovery.

A `ResourceInfo` is one served group/version/plural and everything the store needs to treat it
right: scope, subresources, whether it keeps a `generation`, which field selectors it indexes,
and for a custom resource the compiled schema of that version. Several versions of one CRD are
several `ResourceInfo`s sharing one `storage` key, so they are one collection of objects (the
CRD's `conversion: None` strategy: only `apiVersion` differs between the versions' views).

`ResourceRegistry` is the discovery document in memory: `/api`, `/apis`, `/apis/{group}` and
the per-version resource lists are rendered from it (and the aggregated discovery document,
`apidiscovery.k8s.io/v2`, that kubectl asks `/api` and `/apis` for), so creating a
CustomResourceDefinition makes its resource appear in discovery at once, as kopf's CRD watcher
expects.

Built-ins served (plain storage unless a controller is named):
core v1 namespaces (namespace controller), nodes, pods (simulated kubelet), secrets,
configmaps, serviceaccounts, services, events, persistentvolumeclaims, endpoints;
apps/v1 deployments (no controller); coordination.k8s.io/v1 leases;
rbac.authorization.k8s.io/v1 roles, rolebindings, clusterroles, clusterrolebindings (stored,
never enforced); apiextensions.k8s.io/v1 customresourcedefinitions (registration, cleanup).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from avatar_devtools.localcluster import printers, scales, schemas, tables

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
KUBE_VERSION = {"major": "1", "minor": "37"}  # the version kubectl and the real layer use

_METADATA_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)
_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)


@dataclasses.dataclass(frozen=True)
class ResourceInfo:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    has_generation: bool = False
    field_labels: frozenset[str] = _METADATA_FIELDS
    schema: schemas.CustomResourceSchema | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    custom: bool = False
    verbs: tuple[str, ...] = ALL_VERBS
    # what `kubectl get` prints (a Table); for a custom resource its printer columns
    printer: tables.Printer = dataclasses.field(default=tables.DEFAULT, compare=False, repr=False)
    # a custom resource's CRD version, as written (OpenAPI documents are made from it)
    crd_version: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage(self) -> tuple[str, str]:
        """The collection the objects live in, shared by all versions of one resource."""
        return (self.group, self.plural)

    @property
    def name(self) -> str:
        """`pods`, `avatarsessions.avatar-operator.dev`: the name in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def status_subresource(self) -> bool:
        return "status" in self.subresources

    @property
    def scale(self) -> scales.ScalePaths | None:
        """A custom resource's scale subresource paths, or None without one."""
        return scales.ScalePaths.of(self.crd_version) if "scale" in self.subresources else None

    def aggregated_entry(self) -> dict[str, Any]:
        """This resource in an aggregated discovery document (`apidiscovery.k8s.io/v2`)."""
        return _aggregated_entry(self)

    def discovery_entries(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        for sub in sorted(self.subresources):
            found: dict[str, Any] = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": "Binding" if sub == "binding" else self.kind,
                "verbs": list(_SUBRESOURCE_VERBS.get(sub, ["get"])),
            }
            if sub == "scale":
                found.update(group=scales.GROUP, version=scales.VERSION, kind=scales.KIND)
            entries.append(found)
        return entries


_SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": list(scales.VERBS),
    "log": ["get"],
    "binding": ["create"],
}


def _aggregated_entry(info: ResourceInfo) -> dict[str, Any]:
    kind = {"group": info.group, "version": info.version, "kind": info.kind}
    entry: dict[str, Any] = {
        "resource": info.plural,
        "responseKind": kind,
        "scope": "Namespaced" if info.namespaced else "Cluster",
        "singularResource": info.singular or info.kind.lower(),
        "verbs": sorted(info.verbs),
    }
    if info.short_names:
        entry["shortNames"] = list(info.short_names)
    if info.categories:
        entry["categories"] = list(info.categories)
    subresources = []
    for sub in sorted(info.subresources):
        found: dict[str, Any] = {"subresource": sub, "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"])}
        if sub == "binding":
            found["responseKind"] = {"group": "", "version": "v1", "kind": "Binding"}
        elif sub == "scale":
            found["responseKind"] = {
                "group": scales.GROUP,
                "version": scales.VERSION,
                "kind": scales.KIND,
            }
        elif sub != "log":
            found["responseKind"] = kind
        subresources.append(found)
    if subresources:
        entry["subresources"] = subresources
    return entry


def _builtin(
    group: str,
    version: str,
    kind: str,
    plural: str,
    namespaced: bool,
    *,
    short_names: tuple[str, ...] = (),
    subresources: tuple[str, ...] = (),
    has_generation: bool = False,
    field_labels: frozenset[str] = frozenset(),
    categories: tuple[str, ...] = (),
) -> ResourceInfo:
    return ResourceInfo(
        group=group,
        version=version,
        kind=kind,
        plural=plural,
        namespaced=namespaced,
        printer=printers.builtin_printer((group, plural)),
        singular=kind.lower(),
        short_names=short_names,
        categories=categories,
        subresources=frozenset(subresources),
        has_generation=has_generation,
        field_labels=_METADATA_FIELDS | field_labels,
    )


BUILTINS: tuple[ResourceInfo, ...] = (
    _builtin(
        "",
        "v1",
        "Namespace",
        "namespaces",
        False,
        short_names=("ns",),
        subresources=("status", "finalize"),
        field_labels=frozenset({"status.phase"}),
    ),
    _builtin(
        "",
        "v1",
        "Node",
        "nodes",
        False,
        short_names=("no",),
        subresources=("status",),
        field_labels=frozenset({"spec.unschedulable"}),
    ),
    _builtin(
        "",
        "v1",
        "Pod",
        "pods",
        True,
        short_names=("po",),
        subresources=("status", "log", "binding"),
        has_generation=True,
        field_labels=_POD_FIELDS,
        categories=("all",),
    ),
    _builtin("", "v1", "Secret", "secrets", True, field_labels=frozenset({"type"})),
    _builtin("", "v1", "ConfigMap", "configmaps", True, short_names=("cm",)),
    _builtin("", "v1", "ServiceAccount", "serviceaccounts", True, short_names=("sa",)),
    _builtin(
        "",
        "v1",
        "Service",
        "services",
        True,
        short_names=("svc",),
        subresources=("status",),
        categories=("all",),
    ),
    _builtin("", "v1", "Endpoints", "endpoints", True, short_names=("ep",)),
    _builtin("", "v1", "Event", "events", True, short_names=("ev",), field_labels=_EVENT_FIELDS),
    _builtin(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        True,
        short_names=("pvc",),
        subresources=("status",),
    ),
    _builtin(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        True,
        short_names=("deploy",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    _builtin("coordination.k8s.io", "v1", "Lease", "leases", True),
    _builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    _builtin("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
    _builtin("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    _builtin("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        False,
        short_names=("crd", "crds"),
        subresources=("status",),
        has_generation=True,
    ),
)

# Reviews (`kubectl auth can-i`, `kubectl auth whoami`): create-only, never stored; answered by
# the API server (every request is allowed here).
REVIEWS: tuple[ResourceInfo, ...] = tuple(
    dataclasses.replace(_builtin(group, "v1", kind, plural, namespaced), verbs=("create",))
    for group, kind, plural, namespaced in (
        ("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews", False),
        ("authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews", False),
        ("authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews", False),
        ("authorization.k8s.io", "LocalSubjectAccessReview", "localsubjectaccessreviews", True),
        ("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews", False),
    )
)
REVIEW_GROUPS = frozenset(info.group for info in REVIEWS)

NAMESPACES = BUILTINS[0]
NODES = BUILTINS[1]
PODS = BUILTINS[2]
SECRETS = BUILTINS[3]
CONFIGMAPS = BUILTINS[4]
SERVICEACCOUNTS = BUILTINS[5]
EVENTS = next(r for r in BUILTINS if r.plural == "events")
CRDS = BUILTINS[-1]


def from_crd(crd: dict[str, Any]) -> list[ResourceInfo]:
    """The served versions of a (validated) CRD object, each as a ResourceInfo."""
    spec = crd["spec"]
    names = spec["names"]
    infos = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
        selectable = frozenset(
            f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or []
        )
        infos.append(
            ResourceInfo(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                plural=names["plural"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset((version.get("subresources") or {}).keys()),
                has_generation=True,
                field_labels=_METADATA_FIELDS | selectable,
                schema=schemas.CustomResourceSchema(schema),
                custom=True,
                printer=tables.custom_printer(version),
                crd_version=version,
            )
        )
    return infos


def storage_version(crd: dict[str, Any]) -> str:
    return str(next(v["name"] for v in crd["spec"]["versions"] if v.get("storage")))


class ResourceRegistry:
    """The served resources, by (group, version, plural), and their discovery documents."""

    def __init__(self) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceInfo] = {}
        self._storage_versions: dict[tuple[str, str], str] = {}
        # bumped by every change of what is served (the OpenAPI documents are rebuilt)
        self.revision = 0
        for info in (*BUILTINS, *REVIEWS):
            self._add(info)
            self._storage_versions[info.storage] = info.version

    def _add(self, info: ResourceInfo) -> None:
        self._by_path[(info.group, info.version, info.plural)] = info
        self.revision += 1

    def get(self, group: str, version: str, plural: str) -> ResourceInfo | None:
        return self._by_path.get((group, version, plural))

    def __iter__(self) -> Iterator[ResourceInfo]:
        return iter(list(self._by_path.values()))

    def storage_version(self, storage: tuple[str, str]) -> str | None:
        return self._storage_versions.get(storage)

    def versions_of(self, storage: tuple[str, str]) -> list[ResourceInfo]:
        return [i for i in self._by_path.values() if i.storage == storage]

    def register_crd(self, crd: dict[str, Any]) -> list[ResourceInfo]:
        infos = from_crd(crd)
        storage = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        self.unregister(storage)
        for info in infos:
            self._add(info)
        self._storage_versions[storage] = storage_version(crd)
        return infos

    def unregister(self, storage: tuple[str, str]) -> None:
        for key in [k for k, v in self._by_path.items() if v.storage == storage and v.custom]:
            del self._by_path[key]
        self.revision += 1
        self._storage_versions.pop(storage, None)

    # --- discovery documents -----------------------------------------------------------------

    def groups(self) -> dict[str, list[str]]:
        """Group name → served versions, preferred (storage) version first."""
        found: dict[str, list[str]] = {}
        for info in self._by_path.values():
            versions = found.setdefault(info.group, [])
            if info.version not in versions:
                versions.append(info.version)
        for group, versions in found.items():
            preferred = next(
                (
                    self._storage_versions.get(i.storage)
                    for i in self._by_path.values()
                    if i.group == group
                ),
                None,
            )
            if preferred in versions:
                versions.remove(preferred)
                versions.insert(0, preferred)
        return found

    def api_versions(self) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
            ],
        }

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.groups().get(group)
        if not versions or not group:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def api_group_list(self) -> dict[str, Any]:
        groups = [self.api_group(g) for g in sorted(self.groups()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]}

    def aggregated(self, *, core: bool) -> dict[str, Any]:
        """Aggregated discovery (`apidiscovery.k8s.io/v2`, what kubectl asks `/api` and `/apis`
        for first): every group, version and resource in one document."""
        items = []
        for group, versions in sorted(self.groups().items()):
            if (group == "") != core:
                continue
            entries = []
            for version in versions:
                infos = [
                    i for i in self._by_path.values() if i.group == group and i.version == version
                ]
                resources = [i.aggregated_entry() for i in sorted(infos, key=lambda i: i.plural)]
                entries.append({"version": version, "resources": resources, "freshness": "Current"})
            items.append({"metadata": {"name": group} if group else {}, "versions": entries})
        return {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        }

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        infos = [i for i in self._by_path.values() if i.group == group and i.version == version]
        if not infos:
            return None
        entries = [entry for info in infos for entry in info.discovery_entries()]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": entries,
        }
