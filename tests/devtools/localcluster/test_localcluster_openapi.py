"""The OpenAPI v3 documents of the emulated API (no kubectl): what kubectl apply and explain
read from them, as they read it (discovery by hash, a GVK's PATCH parameters, the schema)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from avatar_devtools.localcluster import cluster, openapi, resources
from avatar_sdk import crd as sdk_crd

AVS = "apis/avatar-operator.dev/v1alpha1"
MODEL = "dev.avatar-operator.v1alpha1.AvatarSession"


async def fetch(local: cluster.LocalCluster, path: str) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as client, client.get(local.url + path) as response:
        return response.status, await response.json(), response.headers


def patch_operation(document: dict[str, Any], kind: str) -> dict[str, Any]:
    """As kubectl's query-parameter verifier finds it: the PATCH whose GVK is the kind's."""
    for item in document["paths"].values():
        patch = item.get("patch")
        if patch and patch["x-kubernetes-group-version-kind"]["kind"] == kind:
            return dict(patch)
    raise AssertionError(f"no PATCH operation for {kind}")


async def test_discovery_names_each_group_version_by_hash(
    localcluster: cluster.LocalCluster,
) -> None:
    status, discovery, _ = await fetch(localcluster, "/openapi/v3")
    assert status == 200
    assert {"api/v1", "apis/apps/v1", "apis/coordination.k8s.io/v1"} <= set(discovery["paths"])
    assert AVS not in discovery["paths"]
    url = discovery["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    status, document, headers = await fetch(localcluster, url)
    assert status == 200 and document["openapi"] == "3.0.0"
    assert headers["Cache-Control"] == "public, immutable"

    localcluster.apply(sdk_crd.custom_resource_definition())
    _, discovery, _ = await fetch(localcluster, "/openapi/v3")
    assert AVS in discovery["paths"]


async def test_the_crd_document_has_the_schema_with_descriptions_for_explain(
    localcluster: cluster.LocalCluster,
) -> None:
    localcluster.apply(sdk_crd.custom_resource_definition())
    _, document, _ = await fetch(localcluster, f"/openapi/v3/{AVS}")
    schema = document["components"]["schemas"][MODEL]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "avatar-operator.dev", "version": "v1alpha1", "kind": "AvatarSession"}
    ]
    video = schema["properties"]["spec"]["properties"]["video"]
    assert video["description"] == "The video track the avatar publishes."
    assert "Frame width in pixels" in video["properties"]["width"]["description"]
    assert schema["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    ]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in document["components"]["schemas"]
    listing = document["components"]["schemas"][MODEL + "List"]
    assert listing["x-kubernetes-group-version-kind"][0]["kind"] == "AvatarSessionList"
    # explain finds the kind from the resource's paths
    path = "/apis/avatar-operator.dev/v1alpha1/namespaces/{namespace}/avatarsessions"
    assert document["paths"][path]["get"]["x-kubernetes-group-version-kind"]["kind"] == (
        "AvatarSession"
    )


async def test_patch_takes_field_validation_and_only_built_ins_strategic_merge(
    localcluster: cluster.LocalCluster,
) -> None:
    localcluster.apply(sdk_crd.custom_resource_definition())
    _, core, _ = await fetch(localcluster, "/openapi/v3/api/v1")
    _, avs, _ = await fetch(localcluster, f"/openapi/v3/{AVS}")
    for document, kind in ((core, "Namespace"), (core, "Pod"), (avs, "AvatarSession")):
        patch = patch_operation(document, kind)
        query = {p["name"] for p in patch["parameters"] if p["in"] == "query"}
        assert {"fieldValidation", "dryRun", "fieldManager"} <= query, kind
    assert (
        "application/strategic-merge-patch+json"
        in (patch_operation(core, "Pod")["requestBody"]["content"])
    )
    assert set(patch_operation(avs, "AvatarSession")["requestBody"]["content"]) == {
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    }
    # built-in kinds: kube-apiserver's own schemas, patch strategies included (kubectl's
    # strategic merge patches read them)
    schemas = core["components"]["schemas"]
    pod = schemas["io.k8s.api.core.v1.Pod"]
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Pod", "version": "v1"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert "io.k8s.api.core.v1.Container" in json.dumps(containers["items"])
    assert "io.k8s.api.core.v1.Container" in schemas


def test_every_served_built_in_kind_has_its_schema() -> None:
    for info in (*resources.BUILTINS, *resources.REVIEWS):
        key = openapi.document_key(info.group, info.version)
        schemas = openapi.builtin_schemas(key)
        model = openapi.model_name(info.group, info.version, info.kind)
        assert model in schemas, model
        gvks = schemas[model]["x-kubernetes-group-version-kind"]
        assert {"group": info.group, "version": info.version, "kind": info.kind} in gvks


async def test_v2_is_not_acceptable_and_unknown_documents_are_not_found(
    localcluster: cluster.LocalCluster,
) -> None:
    status, body, _ = await fetch(localcluster, "/openapi/v2")
    assert status == 406 and body["reason"] == "NotAcceptable"
    status, body, _ = await fetch(localcluster, "/openapi/v3/apis/nothing.example.com/v1")
    assert status == 404


def test_model_names_are_kube_apiservers() -> None:
    assert openapi.model_name("avatar-operator.dev", "v1alpha1", "AvatarSession") == MODEL
    assert openapi.model_name("", "v1", "Pod") == "io.k8s.api.core.v1.Pod"
    assert openapi.model_name("apps", "v1", "Deployment") == "io.k8s.api.apps.v1.Deployment"
    assert (
        openapi.model_name("coordination.k8s.io", "v1", "Lease")
        == "io.k8s.api.coordination.v1.Lease"
    )
    assert (
        openapi.model_name("rbac.authorization.k8s.io", "v1", "Role") == "io.k8s.api.rbac.v1.Role"
    )


async def test_aggregated_discovery_when_asked_for_it_as_kubectl_does(
    localcluster: cluster.LocalCluster,
) -> None:
    localcluster.apply(sdk_crd.custom_resource_definition())
    accept = (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
        "application/json"
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(localcluster.url + "/apis", headers={"Accept": accept}) as response:
            assert response.headers["Content-Type"].startswith(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            )
            groups = await response.json()
        async with client.get(localcluster.url + "/api", headers={"Accept": accept}) as response:
            core = await response.json()
        async with client.get(localcluster.url + "/apis") as response:
            legacy = await response.json()
    assert groups["kind"] == "APIGroupDiscoveryList"
    avs = next(g for g in groups["items"] if g["metadata"].get("name") == "avatar-operator.dev")
    (version,) = avs["versions"]
    (resource,) = version["resources"]
    assert resource["resource"] == "avatarsessions" and resource["scope"] == "Namespaced"
    assert resource["shortNames"] == ["avs"]
    assert resource["subresources"][0]["subresource"] == "status"
    pods = next(r for r in core["items"][0]["versions"][0]["resources"] if r["resource"] == "pods")
    assert {s["subresource"] for s in pods["subresources"]} == {"binding", "log", "status"}
    assert legacy["kind"] == "APIGroupList"  # without the Accept: the legacy documents


async def test_reviews_answer_that_every_request_is_allowed(
    localcluster: cluster.LocalCluster,
) -> None:
    """`kubectl auth can-i` and `kubectl auth whoami` (nothing is enforced here)."""
    base = localcluster.url + "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    async with aiohttp.ClientSession() as client:
        async with client.post(base, data=b"k8s\x00anything") as response:
            assert response.status == 201
            review = await response.json()
        async with client.get(base) as response:
            assert response.status == 405
        who = localcluster.url + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
        async with client.post(who, data=b"{}") as response:
            me = await response.json()
    assert review["status"]["allowed"] is True
    assert me["status"]["userInfo"]["username"] == "localcluster"
