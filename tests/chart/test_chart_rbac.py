"""Least privilege: no wildcards, exactly the API calls the operator makes, and Roles in each
watched namespace instead of cluster-wide rights when it watches namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chart_support import NAMESPACE, RELEASE, Obj, Rendered, render, value_sets

VALUE_SETS = value_sets()

# Every API call of the operator (kube.py, reconciler.py, leader.py, handlers.py and kopf's own
# watches and Events), as (apiGroup, resource, verb).
SESSION_NAMESPACE_CALLS = {
    ("avatar-operator.dev", "avatarsessions", "list"),
    ("avatar-operator.dev", "avatarsessions", "watch"),
    ("avatar-operator.dev", "avatarsessions", "delete"),
    ("avatar-operator.dev", "avatarsessions/status", "patch"),
    # warm pools: kopf's watch of the pools, their status; a pool's workers are Pods
    ("avatar-operator.dev", "avatarpools", "list"),
    ("avatar-operator.dev", "avatarpools", "watch"),
    ("avatar-operator.dev", "avatarpools/status", "patch"),
    ("", "pods", "get"),  # a warm worker read again after a conditional patch met a newer one
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "create"),
    ("", "pods", "patch"),  # a session claims a warm worker: its labels and ownerReferences
    ("", "pods", "delete"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "create"),
    ("", "secrets", "delete"),
    ("", "events", "create"),
}
CLUSTER_CALLS = {("", "nodes", "list"), ("", "nodes", "watch")}
# The operator never writes a pool's spec (users and the scale subresource do).
NOT_NEEDED_FOR_POOLS = {
    ("avatar-operator.dev", "avatarpools", verb) for verb in ("create", "update", "patch", "delete")
} | {("avatar-operator.dev", "avatarpools/scale", verb) for verb in ("get", "update", "patch")}
# kopf's scanning is off (handlers.configure): it lists neither Namespaces nor CRDs
NOT_NEEDED = {
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}


def grants(rules: list[Obj]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


def operator_grants(rendered: Rendered, kind: str, namespace: str | None = None) -> set[tuple]:
    """What the operator's ServiceAccount gets from the (Cluster)Roles bound to it."""
    binding_kind = "RoleBinding" if kind == "Role" else "ClusterRoleBinding"
    found: set[tuple] = set()
    for binding in rendered.of_kind(binding_kind):
        if namespace is not None and binding["metadata"]["namespace"] != namespace:
            continue
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
        ]
        ref = binding["roleRef"]
        role = next(
            r
            for r in rendered.of_kind(ref["kind"])
            if r["metadata"]["name"] == ref["name"]
            and r["metadata"].get("namespace") == binding["metadata"].get("namespace")
        )
        found |= {g for g in grants(role["rules"]) if not _restricted(role, g)}
    return found


def _restricted(role: Obj, grant: tuple[str, str, str]) -> bool:
    """True if the grant only holds for named objects (resourceNames)."""
    return any(
        rule.get("resourceNames")
        and grant[0] in rule["apiGroups"]
        and grant[1] in rule["resources"]
        and grant[2] in rule["verbs"]
        for rule in role["rules"]
    )


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_no_wildcards_anywhere(value_set: str) -> None:
    rendered = render(VALUE_SETS[value_set])
    for role in rendered.of_kind("Role") + rendered.of_kind("ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert not [r for r in rule["resources"] if r.endswith("/*")]
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
            assert "impersonate" not in rule["verbs"]


def test_cluster_wide_mode_grants_exactly_what_the_operator_calls() -> None:
    rendered = render()
    assert rendered.of_kind("Role") == [rendered.one("Role", f"{RELEASE}-leader")]
    cluster = operator_grants(rendered, "ClusterRole")
    assert cluster == SESSION_NAMESPACE_CALLS | CLUSTER_CALLS
    assert not cluster & NOT_NEEDED
    assert not cluster & NOT_NEEDED_FOR_POOLS


def test_namespaced_mode_uses_a_role_per_watched_namespace() -> None:
    rendered = render(VALUE_SETS["single-namespace-values.yaml"])
    watched = ["agents", "support"]
    roles = [r for r in rendered.of_kind("Role") if r["metadata"]["name"] == RELEASE]
    assert sorted(r["metadata"]["namespace"] for r in roles) == watched
    for namespace in watched:
        assert operator_grants(rendered, "Role", namespace) == SESSION_NAMESPACE_CALLS
    # cluster-wide: only the cluster-scoped reads, nothing namespaced
    cluster = operator_grants(rendered, "ClusterRole")
    assert cluster == CLUSTER_CALLS
    assert not {g for g in cluster if g[1] in {"pods", "secrets", "avatarsessions", "avatarpools"}}


@pytest.mark.parametrize("value_set", ["default", "single-namespace-values.yaml"])
def test_the_lease_and_credentials_are_granted_by_name_in_the_release_namespace(
    value_set: str,
) -> None:
    rendered = render(VALUE_SETS[value_set])
    role = rendered.one("Role", f"{RELEASE}-leader")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [RELEASE],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["videosdk-credentials"],
            "verbs": ["get"],
        },
    ]
    binding = rendered.one("RoleBinding", f"{RELEASE}-leader")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_dispatcher_rights_only_when_it_is_enabled() -> None:
    assert not [r for r in render().of_kind("Role") if r["metadata"]["name"].endswith("dispatcher")]
    rendered = render(VALUE_SETS["dispatcher-values.yaml"])
    role = rendered.one("Role", f"{RELEASE}-dispatcher")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert set(grants(role["rules"])) == {
        ("avatar-operator.dev", "avatarsessions", verb)
        for verb in ("create", "get", "list", "delete")
    } | {("", "secrets", verb) for verb in ("create", "get", "update", "delete")}
    binding = rendered.one("RoleBinding", f"{RELEASE}-dispatcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }


def test_dispatcher_in_another_watched_namespace_gets_its_role_there() -> None:
    rendered = render(
        {"watchNamespaces": ["agents"], "dispatcher": {"enabled": True, "namespace": "agents"}}
    )
    role = rendered.one("Role", f"{RELEASE}-dispatcher")
    assert role["metadata"]["namespace"] == "agents"
    env = {
        v["name"]: v.get("value")
        for v in rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["AVATAR_OPERATOR_DISPATCHER_NAMESPACE"] == "agents"


def test_cluster_objects_are_named_per_release_namespace() -> None:
    one = render(namespace="team-a")
    other = render(namespace="team-b")
    names = {r["metadata"]["name"] for r in one.of_kind("ClusterRole")}
    assert names.isdisjoint({r["metadata"]["name"] for r in other.of_kind("ClusterRole")})


def test_users_get_sessions_through_the_built_in_roles() -> None:
    rendered = render()
    labels = {
        label
        for role in rendered.of_kind("ClusterRole")
        for label in role["metadata"]["labels"]
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-")
    }
    assert labels == {
        "rbac.authorization.k8s.io/aggregate-to-view",
        "rbac.authorization.k8s.io/aggregate-to-edit",
        "rbac.authorization.k8s.io/aggregate-to-admin",
    }
    off = render(VALUE_SETS["no-metrics-values.yaml"])
    assert len(off.of_kind("ClusterRole")) == 1


def test_rbac_create_false_renders_no_rbac() -> None:
    rendered = render({"rbac": {"create": False}})
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        assert rendered.of_kind(kind) == []


def test_users_read_write_and_scale_pools_through_the_built_in_roles() -> None:
    rendered = render()
    by_label = {
        label.rsplit("-", 1)[-1]: set(grants(role["rules"]))
        for role in rendered.of_kind("ClusterRole")
        for label in role["metadata"]["labels"]
        if label
        in (
            "rbac.authorization.k8s.io/aggregate-to-view",
            "rbac.authorization.k8s.io/aggregate-to-edit",
        )
    }
    group = "avatar-operator.dev"
    for resource in ("avatarsessions", "avatarpools"):
        for verb in ("get", "list", "watch"):
            assert (group, resource, verb) in by_label["view"], (resource, verb)
            assert (group, f"{resource}/status", verb) in by_label["view"], (resource, verb)
        for verb in ("create", "delete", "deletecollection", "patch", "update"):
            assert (group, resource, verb) in by_label["edit"], (resource, verb)
    for verb in ("get", "update", "patch"):
        assert (group, "avatarpools/scale", verb) in by_label["edit"]
    # view reads, never writes; nobody but the operator writes a status
    assert not {g for g in by_label["view"] if g[2] not in ("get", "list", "watch")}
    assert not {g for g in by_label["edit"] if g[1].endswith("/status")}
