"""Unknown fields of built-in kinds (no kubectl): refused with Strict, dropped with a warning
with Warn (the default), dropped silently with Ignore — as kube-apiserver decodes them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from avatar_devtools.localcluster import cluster, fieldcheck


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"any-label": "x"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "x:1",
                    "imagePolicy": "Always",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                }
            ],
            "restartPolcy": "Never",
        },
    }


def test_the_paths_of_unknown_fields_and_what_is_kept() -> None:
    body = pod("p")
    found = fieldcheck.unknown_fields("", "v1", "Pod", body, prune=True)
    assert found == ["spec.containers[0].imagePolicy", "spec.restartPolcy"]
    assert "restartPolcy" not in body["spec"] and "imagePolicy" not in body["spec"]["containers"][0]
    assert body["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert body["metadata"]["labels"] == {"any-label": "x"}
    # a field without declared structure takes anything (a CRD's `default` is JSON)
    crd = {"spec": {"versions": [{"schema": {"openAPIV3Schema": {"default": {"a": [1]}}}}]}}
    assert (
        fieldcheck.unknown_fields("apiextensions.k8s.io", "v1", "CustomResourceDefinition", crd)
        == []
    )
    assert fieldcheck.unknown_fields("example.com", "v1", "Thing", {"x": 1}) == []


async def post(local: cluster.LocalCluster, query: str, body: dict[str, Any]) -> Any:
    url = f"{local.url}/api/v1/namespaces/default/pods{query}"
    async with (
        aiohttp.ClientSession() as client,
        client.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, await r.json(), r.headers.getall("Warning", [])


async def test_strict_refuses_warn_drops_with_a_warning_ignore_drops(
    localcluster: cluster.LocalCluster,
) -> None:
    status, body, _ = await post(localcluster, "?fieldValidation=Strict", pod("strict"))
    assert status == 400
    assert body["message"] == (
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field '
        '"spec.containers[0].imagePolicy", unknown field "spec.restartPolcy"'
    )
    status, body, warnings = await post(localcluster, "", pod("warned"))
    assert status == 201 and "restartPolcy" not in body["spec"]
    assert warnings == [
        '299 - "unknown field \\"spec.containers[0].imagePolicy\\""',
        '299 - "unknown field \\"spec.restartPolcy\\""',
    ]
    status, body, warnings = await post(localcluster, "?fieldValidation=Ignore", pod("ignored"))
    assert status == 201 and warnings == [] and "restartPolcy" not in body["spec"]
