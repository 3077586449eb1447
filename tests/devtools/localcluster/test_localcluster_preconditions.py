"""`metadata.resourceVersion` in a merge patch is a precondition, as on kube-apiserver: how the
operator claims a warm worker Pod (labels and ownerReferences replaced in one patch), so that
of two claimers racing for one Pod exactly one wins."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from localcluster_helpers import WIDGET_GROUP, widget

from avatar_devtools.localcluster import cluster, resources, store

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
WIDGETS = f"/apis/{WIDGET_GROUP}/v1/namespaces/{NS}/widgets"
CONFLICT = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def worker(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"pool": "p", "state": "ready", "spare": "x"}},
        # no such node: no kubelet plays this Pod
        "spec": {"nodeName": "gpu-z", "containers": [{"name": "w", "image": "busybox:1"}]},
    }


async def merge_patch(
    http: aiohttp.ClientSession, local: cluster.LocalCluster, path: str, body: Any
) -> tuple[int, Any]:
    async with http.patch(
        f"{local.url}{path}",
        data=json.dumps(body),
        headers={"Content-Type": store.MERGE_PATCH},
    ) as response:
        return response.status, await response.json()


def claim(rv: str, owner: dict[str, Any], session: str) -> dict[str, Any]:
    return {
        "metadata": {
            "resourceVersion": rv,
            "labels": {"state": "claimed", "session": session, "spare": None},
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
    }


async def test_a_stale_resource_version_in_a_merge_patch_of_a_pod_is_409(
    with_widgets: cluster.LocalCluster,
) -> None:
    local = with_widgets
    pod = local.apply(worker("w1")).obj
    rv = pod["metadata"]["resourceVersion"]
    owner = local.apply(widget("s1")).obj
    local.apply(widget("s2"))
    async with aiohttp.ClientSession() as http:
        code, body = await merge_patch(
            http, local, f"{PODS}/w1", claim(str(int(rv) - 1), owner, "s1")
        )
        assert (code, body["reason"], body["code"]) == (409, "Conflict", 409)
        assert body["message"] == f'Operation cannot be fulfilled on pods "w1": {CONFLICT}'
        assert body["details"] == {"name": "w1", "kind": "pods"}
        unchanged = local.store.get(resources.PODS, NS, "w1").obj
        assert unchanged["metadata"]["resourceVersion"] == rv
        assert unchanged["metadata"]["labels"] == {"pool": "p", "state": "ready", "spare": "x"}
        assert "ownerReferences" not in unchanged["metadata"]
        # the stored resourceVersion: applied, labels merged (null deletes), owners replaced
        code, body = await merge_patch(http, local, f"{PODS}/w1", claim(rv, owner, "s1"))
        assert code == 200, body
        meta = body["metadata"]
        assert meta["labels"] == {"pool": "p", "state": "claimed", "session": "s1"}
        assert [o["uid"] for o in meta["ownerReferences"]] == [owner["metadata"]["uid"]]
        assert int(meta["resourceVersion"]) > int(rv)
        assert meta["generation"] == 1  # metadata only
        # the ownerReferences list is replaced whole, not merged
        other = local.store.get(local.store.lookup(WIDGET_GROUP, "v1", "widgets"), NS, "s2").obj
        code, body = await merge_patch(
            http, local, f"{PODS}/w1", claim(meta["resourceVersion"], other, "s2")
        )
        assert code == 200
        assert [o["name"] for o in body["metadata"]["ownerReferences"]] == ["s2"]


async def test_two_claimers_of_one_pod_never_both_win(
    with_widgets: cluster.LocalCluster,
) -> None:
    local = with_widgets
    pods = [local.apply(worker(f"w{i}")).obj for i in range(5)]
    owners = [local.apply(widget(f"s{i}")).obj for i in range(2)]
    async with aiohttp.ClientSession() as http:
        for pod in pods:
            name, rv = pod["metadata"]["name"], pod["metadata"]["resourceVersion"]
            results = await asyncio.gather(
                *(
                    merge_patch(http, local, f"{PODS}/{name}", claim(rv, o, o["metadata"]["name"]))
                    for o in owners
                )
            )
            assert sorted(code for code, _ in results) == [200, 409], results
            winner = next(body for code, body in results if code == 200)
            stored = local.store.get(resources.PODS, NS, name).obj["metadata"]
            assert stored["labels"]["session"] == winner["metadata"]["labels"]["session"]
            assert len(stored["ownerReferences"]) == 1


async def test_a_stale_resource_version_in_a_merge_patch_of_a_custom_resource_is_409(
    with_widgets: cluster.LocalCluster,
) -> None:
    local = with_widgets
    obj = local.apply(widget("a")).obj
    rv = obj["metadata"]["resourceVersion"]
    async with aiohttp.ClientSession() as http:
        stale = {"metadata": {"resourceVersion": "1"}, "spec": {"size": 5}}
        code, body = await merge_patch(http, local, f"{WIDGETS}/a", stale)
        assert (code, body["reason"]) == (409, "Conflict")
        assert body["message"] == (
            f'Operation cannot be fulfilled on widgets.{WIDGET_GROUP} "a": {CONFLICT}'
        )
        assert body["details"] == {"name": "a", "group": WIDGET_GROUP, "kind": "widgets"}
        code, body = await merge_patch(
            http, local, f"{WIDGETS}/a", {"metadata": {"resourceVersion": rv}, "spec": {"size": 5}}
        )
        assert (code, body["spec"]["size"], body["metadata"]["generation"]) == (200, 5, 2)
