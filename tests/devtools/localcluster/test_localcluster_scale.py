"""The scale subresource of custom resources over HTTP: an autoscaling/v1 Scale made from the
object, PATCH and PUT writing spec.replicas back, and discovery, as kube-apiserver serves it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from localcluster_helpers import WIDGET_GROUP

from avatar_devtools.localcluster import cluster, resources, store, watching

NS = "default"
GADGETS = f"/apis/{WIDGET_GROUP}/v1/namespaces/{NS}/gadgets"


def gadget_crd() -> dict[str, Any]:
    """A CRD with a scale subresource shaped like AvatarPool's."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{WIDGET_GROUP}"},
        "spec": {
            "group": WIDGET_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {
                                            "type": "integer",
                                            "minimum": 0,
                                            "maximum": 10,
                                        },
                                        "color": {"type": "string"},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0},
                                        "ready": {"type": "integer"},
                                        "selector": {"type": "string", "nullable": True},
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def gadget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{WIDGET_GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


@pytest.fixture
async def gadgets(localcluster: cluster.LocalCluster) -> cluster.LocalCluster:
    localcluster.apply(gadget_crd())
    return localcluster


def info(local: cluster.LocalCluster) -> resources.ResourceInfo:
    return local.store.lookup(WIDGET_GROUP, "v1", "gadgets")


def stored(local: cluster.LocalCluster, name: str) -> dict[str, Any]:
    record = local.store.find(info(local), NS, name)
    assert record is not None
    return dict(record.obj)


async def request(
    local: cluster.LocalCluster,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, list[str]]:
    data = None if body is None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{local.url}{path}",
            data=data,
            headers={"Content-Type": content_type, **(headers or {})},
        ) as response,
    ):
        return response.status, await response.json(), response.headers.getall("Warning", [])


def scale_of(obj: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": spec,
        "status": status,
    }


async def test_get_answers_a_scale_made_from_the_object(gadgets: cluster.LocalCluster) -> None:
    gadgets.apply(gadget("g1", replicas=3, color="red"))
    gadgets.store.patch(
        info(gadgets),
        NS,
        "g1",
        store.MERGE_PATCH,
        {"status": {"replicas": 2, "ready": 1, "selector": "app=g1"}},
        subresource="status",
    )
    code, body, _ = await request(gadgets, "GET", f"{GADGETS}/g1/scale")
    assert code == 200
    assert body == scale_of(
        stored(gadgets, "g1"), {"replicas": 3}, {"replicas": 2, "selector": "app=g1"}
    )
    # nothing at the paths: 0 replicas both (spec.replicas left out, as Go's omitempty does)
    gadgets.apply(gadget("bare"))
    code, body, _ = await request(gadgets, "GET", f"{GADGETS}/bare/scale")
    assert code == 200 and body == scale_of(stored(gadgets, "bare"), {}, {"replicas": 0})
    code, body, _ = await request(gadgets, "GET", f"{GADGETS}/nope/scale")
    assert (code, body["reason"]) == (404, "NotFound")
    assert body["message"] == f'gadgets.{WIDGET_GROUP} "nope" not found'


async def test_merge_patch_writes_spec_replicas_and_answers_the_scale(
    gadgets: cluster.LocalCluster,
) -> None:
    gadgets.apply(gadget("g1", replicas=3, color="red"))
    gadgets.store.patch(
        info(gadgets),
        NS,
        "g1",
        store.MERGE_PATCH,
        {"status": {"replicas": 3}},
        subresource="status",
    )
    before = stored(gadgets, "g1")
    seen: list[watching.WatchEvent] = []
    gadgets.store.add_listener(info(gadgets), seen.append)
    code, body, _ = await request(
        gadgets,
        "PATCH",
        f"{GADGETS}/g1/scale",
        # only spec.replicas is written back: the status and metadata of a Scale are not
        {"spec": {"replicas": 5}, "status": {"replicas": 9}, "metadata": {"labels": {"a": "b"}}},
        store.MERGE_PATCH,
    )
    assert code == 200, body
    after = stored(gadgets, "g1")
    assert after["spec"] == {"replicas": 5, "color": "red"}
    assert after["status"] == {"replicas": 3}
    assert "labels" not in after["metadata"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert body == scale_of(after, {"replicas": 5}, {"replicas": 3})
    assert [e.kind for e in seen] == [watching.MODIFIED]
    # the same replicas again: nothing written, no event
    code, body, _ = await request(
        gadgets, "PATCH", f"{GADGETS}/g1/scale", {"spec": {"replicas": 5}}, store.MERGE_PATCH
    )
    assert (
        code == 200 and body["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    )
    assert len(seen) == 1
    # to 0: written as 0, answered without spec.replicas
    code, body, _ = await request(
        gadgets, "PATCH", f"{GADGETS}/g1/scale", {"spec": {"replicas": 0}}, store.MERGE_PATCH
    )
    assert (code, body["spec"]) == (200, {})
    assert stored(gadgets, "g1")["spec"]["replicas"] == 0


async def test_json_patch_and_the_patch_types_of_a_custom_resource(
    gadgets: cluster.LocalCluster,
) -> None:
    gadgets.apply(gadget("g1", replicas=3))
    path = f"{GADGETS}/g1/scale"
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 7}]
    code, body, _ = await request(gadgets, "PATCH", path, ops, store.JSON_PATCH)
    assert (code, body["spec"]) == (200, {"replicas": 7})
    assert stored(gadgets, "g1")["spec"]["replicas"] == 7
    # at 0 the Scale leaves spec.replicas out, and a replace of it still applies (the
    # json-patch of kube-apiserver replaces a missing key of an object)
    zero = [{"op": "replace", "path": "/spec/replicas", "value": 0}]
    code, body, _ = await request(gadgets, "PATCH", path, zero, store.JSON_PATCH)
    assert (code, body["spec"]) == (200, {})
    code, body, _ = await request(gadgets, "PATCH", path, ops, store.JSON_PATCH)
    assert (code, body["spec"]) == (200, {"replicas": 7})
    # strategic merge patch: refused for a custom resource, its scale included (415)
    code, body, _ = await request(
        gadgets, "PATCH", path, {"spec": {"replicas": 1}}, store.STRATEGIC_PATCH
    )
    assert (code, body["reason"]) == (415, "UnsupportedMediaType")
    # server-side apply of a Scale: its spec.replicas is written
    apply = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 2}}
    code, body, _ = await request(
        gadgets, "PATCH", f"{path}?fieldManager=test", apply, "application/apply-patch+yaml"
    )
    assert (code, body["spec"]) == (200, {"replicas": 2})


async def test_the_object_schema_and_scale_validation_refuse_a_bad_replicas(
    gadgets: cluster.LocalCluster,
) -> None:
    gadgets.apply(gadget("g1", replicas=3))
    before = stored(gadgets, "g1")
    path = f"{GADGETS}/g1/scale"
    code, body, _ = await request(
        gadgets, "PATCH", path, {"spec": {"replicas": 11}}, store.MERGE_PATCH
    )
    assert (code, body["reason"], body["details"]["kind"]) == (422, "Invalid", "Gadget")
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.replicas"]
    assert body["message"].startswith(f'Gadget.{WIDGET_GROUP} "g1" is invalid: spec.replicas')
    code, body, _ = await request(
        gadgets, "PATCH", path, {"spec": {"replicas": -1}}, store.MERGE_PATCH
    )
    assert code == 422
    causes = {c["field"]: c["message"] for c in body["details"]["causes"]}
    assert causes[".spec.replicas"] == "Invalid value: -1: should be a non-negative integer"
    # what does not decode as the Scale's int32
    code, body, _ = await request(
        gadgets, "PATCH", path, {"spec": {"replicas": "two"}}, store.MERGE_PATCH
    )
    assert (code, body["reason"]) == (422, "Invalid")
    assert (
        "cannot unmarshal string into Go struct field ScaleSpec.spec.replicas of type int32"
        in (body["message"])
    )
    assert stored(gadgets, "g1") == before  # nothing written
    # spec.replicas unset on the object, and the patch leaves it so
    gadgets.apply(gadget("bare"))
    code, body, _ = await request(
        gadgets,
        "PATCH",
        f"{GADGETS}/bare/scale",
        {"metadata": {"labels": {"a": "b"}}},
        store.MERGE_PATCH,
    )
    assert (code, body["reason"]) == (400, "BadRequest")
    assert body["message"] == 'the spec replicas field ".spec.replicas" cannot be empty'
    # Strict field validation knows the Scale's fields, not the object's
    code, body, _ = await request(
        gadgets,
        "PATCH",
        f"{path}?fieldValidation=Strict",
        {"spec": {"replicas": 4, "color": "blue"}},
        store.MERGE_PATCH,
    )
    # (as a patched Scale that does not decode: 422, as kube-apiserver answers it)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"].startswith(' "" is invalid: patch: Invalid value: "{')
    assert body["message"].endswith('strict decoding error: unknown field "spec.color"')
    code, body, warnings = await request(
        gadgets, "PATCH", path, {"spec": {"replicas": 4, "color": "blue"}}, store.MERGE_PATCH
    )
    assert code == 200 and warnings == ['299 - "unknown field \\"spec.color\\""']
    assert "color" not in stored(gadgets, "g1")["spec"]


async def test_put_honours_the_resource_version_precondition(gadgets: cluster.LocalCluster) -> None:
    gadgets.apply(gadget("g1", replicas=3))
    path = f"{GADGETS}/g1/scale"
    code, scale, _ = await request(gadgets, "GET", path)
    stale = dict(scale, spec={"replicas": 4})
    code, body, _ = await request(gadgets, "PUT", path, stale)
    assert code == 200 and body["spec"] == {"replicas": 4}
    code, body, _ = await request(gadgets, "PUT", path, dict(stale, spec={"replicas": 5}))
    assert (code, body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        f'Operation cannot be fulfilled on gadgets.{WIDGET_GROUP} "g1": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    assert stored(gadgets, "g1")["spec"]["replicas"] == 4
    # a merge patch carrying a stale resourceVersion is refused too
    code, body, _ = await request(
        gadgets,
        "PATCH",
        path,
        {
            "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
            "spec": {"replicas": 6},
        },
        store.MERGE_PATCH,
    )
    assert (code, body["reason"]) == (409, "Conflict")
    # without a resourceVersion: unconditional
    unconditional = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 6}}
    code, body, _ = await request(gadgets, "PUT", path, unconditional)
    assert code == 200 and stored(gadgets, "g1")["spec"]["replicas"] == 6
    # a Scale of another name, or not a Scale
    code, body, _ = await request(
        gadgets, "PUT", path, dict(unconditional, metadata={"name": "g2"})
    )
    assert code == 400 and "does not match the name on the URL" in body["message"]
    code, body, _ = await request(gadgets, "PUT", path, dict(unconditional, kind="Gadget"))
    assert code == 400
    # a PUT without spec.replicas is a Scale of 0 replicas
    code, body, _ = await request(
        gadgets, "PUT", path, {"apiVersion": "autoscaling/v1", "kind": "Scale"}
    )
    assert code == 200 and stored(gadgets, "g1")["spec"]["replicas"] == 0


async def test_scale_paths_are_validated_on_every_write(gadgets: cluster.LocalCluster) -> None:
    """ValidateScaleStatus: a null selector is no string (a status write refused with 422);
    ValidateScaleSpec on create: a negative spec.replicas has two causes, the schema's and its."""
    gadgets.apply(gadget("g1", replicas=1))
    code, body, _ = await request(
        gadgets,
        "PATCH",
        f"{GADGETS}/g1/status",
        # (a merge patch's null would delete the field: a JSON patch writes one)
        [{"op": "add", "path": "/status", "value": {"replicas": 1, "selector": None}}],
        store.JSON_PATCH,
    )
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": ".status.selector",
            "message": 'Invalid value: "": .status.selector accessor error: <nil> is of the type '
            "<nil>, expected string",
        }
    ]


async def test_discovery_lists_the_scale_subresource(gadgets: cluster.LocalCluster) -> None:
    code, body, _ = await request(gadgets, "GET", f"/apis/{WIDGET_GROUP}/v1")
    entries = {e["name"]: e for e in body["resources"]}
    assert entries["gadgets/scale"] == {
        "name": "gadgets/scale",
        "singularName": "",
        "namespaced": True,
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
        "verbs": ["get", "patch", "update"],
    }
    assert entries["gadgets/status"]["kind"] == "Gadget"
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    code, body, _ = await request(gadgets, "GET", "/apis", headers={"Accept": accept})
    group = next(g for g in body["items"] if g["metadata"].get("name") == WIDGET_GROUP)
    resource = next(r for r in group["versions"][0]["resources"] if r["resource"] == "gadgets")
    assert {s["subresource"]: s for s in resource["subresources"]}["scale"] == {
        "subresource": "scale",
        "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
        "verbs": ["get", "patch", "update"],
    }
    code, body, _ = await request(gadgets, "POST", GADGETS, gadget("neg", replicas=-2))
    assert code == 422
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.replicas", ".spec.replicas"]
