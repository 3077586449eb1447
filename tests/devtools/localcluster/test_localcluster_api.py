"""The HTTP API, driven by the real `kubernetes` client (blocking: always in a thread)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
from kubernetes.client import ApiException
from localcluster_helpers import WIDGET_GROUP, widget, widget_crd

from avatar_devtools.localcluster import cluster, resources

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def raises(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ApiException:
    with pytest.raises(ApiException) as e:
        await call(fn, *args, **kwargs)
    return e.value


def body_of(error: ApiException) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(error.body)
    return parsed


@pytest.fixture
def core(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_client)


@pytest.fixture
def custom(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_client)


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox:1"}], "restartPolicy": "Never"},
    }


async def test_kubeconfig_works_with_the_kubernetes_client(localcluster_kubeconfig: Path) -> None:
    configuration = kubernetes.client.Configuration()
    await call(
        kubernetes.config.load_kube_config,
        config_file=str(localcluster_kubeconfig),
        client_configuration=configuration,
    )
    with kubernetes.client.ApiClient(configuration) as api:
        version = await call(kubernetes.client.VersionApi(api).get_code)
        namespaces = await call(kubernetes.client.CoreV1Api(api).list_namespace)
    assert version.git_version.endswith("-localcluster")
    assert {"default", "kube-system"} <= {n.metadata.name for n in namespaces.items}


async def test_crd_registration_makes_the_resource_appear_in_discovery(
    kube_client: kubernetes.client.ApiClient, core: kubernetes.client.CoreV1Api
) -> None:
    core_resources = await call(core.get_api_resources)
    assert {"pods", "pods/status", "namespaces", "secrets"} <= {
        r.name for r in core_resources.resources
    }
    apis = kubernetes.client.ApisApi(kube_client)
    before = await call(apis.get_api_versions)
    assert WIDGET_GROUP not in {g.name for g in before.groups}
    extensions = kubernetes.client.ApiextensionsV1Api(kube_client)
    created = await call(extensions.create_custom_resource_definition, widget_crd())
    assert {c.type for c in created.status.conditions} >= {"Established", "NamesAccepted"}
    after = await call(apis.get_api_versions)
    assert WIDGET_GROUP in {g.name for g in after.groups}
    served = await call(
        kubernetes.client.CustomObjectsApi(kube_client).get_api_resources, WIDGET_GROUP, "v1"
    )
    assert {r.name for r in served.resources} == {"widgets", "widgets/status"}


@pytest.mark.usefixtures("with_widgets")
async def test_custom_objects_crud_and_errors(custom: kubernetes.client.CustomObjectsApi) -> None:
    args = (WIDGET_GROUP, "v1", "default", "widgets")
    created = await call(custom.create_namespaced_custom_object, *args, widget("w1"))
    assert created["spec"] == {"size": 3, "color": "red"}
    fetched = await call(custom.get_namespaced_custom_object, *args, "w1")
    assert fetched["metadata"]["uid"] == created["metadata"]["uid"]
    listed = await call(custom.list_namespaced_custom_object, *args)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w1"]

    missing = await raises(custom.get_namespaced_custom_object, *args, "nope")
    assert (missing.status, body_of(missing)["reason"]) == (404, "NotFound")

    duplicate = await raises(custom.create_namespaced_custom_object, *args, widget("w1"))
    assert (duplicate.status, body_of(duplicate)["reason"]) == (409, "AlreadyExists")

    await call(custom.patch_namespaced_custom_object, *args, "w1", {"spec": {"size": 4}})
    stale = await raises(custom.replace_namespaced_custom_object, *args, "w1", created)
    assert (stale.status, body_of(stale)["reason"]) == (409, "Conflict")

    invalid = await raises(custom.create_namespaced_custom_object, *args, widget("w2", size=99))
    status = body_of(invalid)
    assert (invalid.status, status["reason"]) == (422, "Invalid")
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.size"]

    await call(custom.delete_namespaced_custom_object, *args, "w1")
    gone = await raises(custom.get_namespaced_custom_object, *args, "w1")
    assert gone.status == 404


@pytest.mark.usefixtures("with_widgets")
async def test_status_and_generation_through_the_client(
    custom: kubernetes.client.CustomObjectsApi,
) -> None:
    args = (WIDGET_GROUP, "v1", "default", "widgets")
    await call(custom.create_namespaced_custom_object, *args, widget("w1"))
    with_status = await call(
        custom.patch_namespaced_custom_object_status,
        *args,
        "w1",
        {"spec": {"size": 9}, "status": {"phase": "Ready"}},
    )
    assert with_status["status"] == {"phase": "Ready"} and with_status["spec"]["size"] == 3
    ignored = await call(
        custom.patch_namespaced_custom_object, *args, "w1", {"status": {"phase": "Hacked"}}
    )
    assert ignored["status"] == {"phase": "Ready"}
    assert ignored["metadata"]["generation"] == 1
    resized = await call(custom.patch_namespaced_custom_object, *args, "w1", {"spec": {"size": 5}})
    assert resized["metadata"]["generation"] == 2


async def test_label_and_field_selectors(
    localcluster: cluster.LocalCluster, core: kubernetes.client.CoreV1Api
) -> None:
    await call(core.create_namespaced_pod, "default", pod("a", app="x"))
    await call(core.create_namespaced_pod, "default", pod("b", app="y"))
    await localcluster.wait_for(
        {"apiVersion": "v1", "kind": "Pod"},
        "default",
        "b",
        lambda p: p["status"]["phase"] == "Running",
    )
    by_label = await call(core.list_namespaced_pod, "default", label_selector="app in (x)")
    assert [p.metadata.name for p in by_label.items] == ["a"]
    running = await call(core.list_pod_for_all_namespaces, field_selector="status.phase=Running")
    assert {p.metadata.name for p in running.items} == {"a", "b"}
    node = running.items[0].spec.node_name
    on_node = await call(
        core.list_namespaced_pod, "default", field_selector=f"spec.nodeName={node}"
    )
    assert running.items[0].metadata.name in {p.metadata.name for p in on_node.items}
    not_a = await call(core.list_namespaced_pod, "default", field_selector="metadata.name!=a")
    assert [p.metadata.name for p in not_a.items] == ["b"]
    unsupported = await raises(core.list_namespaced_pod, "default", field_selector="spec.bogus=1")
    assert unsupported.status == 400
    bad = await raises(core.list_namespaced_pod, "default", label_selector="app in x)")
    assert bad.status == 400


async def test_pagination_with_limit_and_continue(core: kubernetes.client.CoreV1Api) -> None:
    for i in range(5):
        await call(core.create_namespaced_config_map, "default", {"metadata": {"name": f"c{i}"}})
    first = await call(core.list_namespaced_config_map, "default", limit=2)
    second = await call(
        core.list_namespaced_config_map, "default", limit=2, _continue=first.metadata._continue
    )
    third = await call(
        core.list_namespaced_config_map, "default", limit=2, _continue=second.metadata._continue
    )
    names = [c.metadata.name for page in (first, second, third) for c in page.items]
    assert names == ["c0", "c1", "c2", "c3", "c4"] and not third.metadata._continue


async def test_watch_resumes_after_a_dropped_connection(
    localcluster: cluster.LocalCluster,
    with_widgets: cluster.LocalCluster,
    custom: kubernetes.client.CustomObjectsApi,
) -> None:
    args = (WIDGET_GROUP, "v1", "default", "widgets")
    seen: list[str] = []
    failure: list[BaseException] = []
    watcher = kubernetes.watch.Watch()
    first_event = threading.Event()

    def follow() -> None:
        try:
            for event in watcher.stream(
                custom.list_namespaced_custom_object, *args, timeout_seconds=30
            ):
                seen.append(event["object"]["metadata"]["name"])
                first_event.set()
        except Exception as e:  # the dropped connection
            failure.append(e)

    thread = threading.Thread(target=follow)
    thread.start()
    await localcluster.server.wait_for_watches(f"widgets.{WIDGET_GROUP}")
    await call(custom.create_namespaced_custom_object, *args, widget("w1"))
    assert await call(first_event.wait, 10)
    last_rv = watcher.resource_version
    assert localcluster.server.drop_watches() == 1
    await call(thread.join, 10)
    assert failure, "dropping the connection should break the stream"

    await call(custom.create_namespaced_custom_object, *args, widget("w2"))
    await call(custom.patch_namespaced_custom_object, *args, "w1", {"spec": {"size": 7}})
    resumed = kubernetes.watch.Watch()
    events = await call(
        lambda: [
            (e["type"], e["object"]["metadata"]["name"])
            for e in resumed.stream(
                custom.list_namespaced_custom_object,
                *args,
                resource_version=last_rv,
                timeout_seconds=1,
            )
        ]
    )
    assert events == [("ADDED", "w2"), ("MODIFIED", "w1")]


async def test_too_old_resource_version_is_410_gone(
    localcluster: cluster.LocalCluster, core: kubernetes.client.CoreV1Api
) -> None:
    created = await call(core.create_namespaced_config_map, "default", {"metadata": {"name": "c"}})
    await call(core.patch_namespaced_config_map, "c", "default", {"data": {"a": "1"}})
    localcluster.store.compact()
    watcher = kubernetes.watch.Watch()
    error = await raises(
        lambda: list(
            watcher.stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=created.metadata.resource_version,
                timeout_seconds=1,
            )
        )
    )
    assert error.status == 410 and "too old resource version" in error.reason


async def test_bookmarks_only_when_asked(localcluster_factory: Any, tmp_path: Path) -> None:
    local = await localcluster_factory(bookmark_interval=0.1)
    configuration = kubernetes.client.Configuration(host=local.url)
    with kubernetes.client.ApiClient(configuration) as api:
        core = kubernetes.client.CoreV1Api(api)

        def kinds(**kwargs: Any) -> list[str]:
            stream = kubernetes.watch.Watch().stream(
                core.list_namespaced_config_map, "default", timeout_seconds=1, **kwargs
            )
            return [e["type"] for e in stream]

        with_bookmarks = await call(
            kinds, allow_watch_bookmarks=True, resource_version=str(local.store.rv)
        )
        without = await call(kinds, resource_version=str(local.store.rv))
    assert with_bookmarks and set(with_bookmarks) == {"BOOKMARK"}
    assert without == []


async def test_finalizers_and_cascade_through_the_client(
    localcluster: cluster.LocalCluster,
    with_widgets: cluster.LocalCluster,
    custom: kubernetes.client.CustomObjectsApi,
    core: kubernetes.client.CoreV1Api,
) -> None:
    args = (WIDGET_GROUP, "v1", "default", "widgets")
    owner_body = widget("w1")
    owner_body["metadata"]["finalizers"] = ["test/hold"]
    owner = await call(custom.create_namespaced_custom_object, *args, owner_body)
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": "Widget",
        "name": "w1",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    await call(
        core.create_namespaced_config_map,
        "default",
        {"metadata": {"name": "child", "ownerReferences": [reference]}},
    )
    marked = await call(custom.delete_namespaced_custom_object, *args, "w1")
    assert marked["metadata"]["deletionTimestamp"]
    assert (
        await call(core.read_namespaced_config_map, "child", "default")
    ).metadata.name == "child"
    await call(
        custom.patch_namespaced_custom_object, *args, "w1", {"metadata": {"finalizers": None}}
    )
    assert (await raises(custom.get_namespaced_custom_object, *args, "w1")).status == 404
    for _ in range(100):
        if localcluster.store.find(resources.CONFIGMAPS, "default", "child") is None:
            break
        await asyncio.sleep(0.01)
    assert (await raises(core.read_namespaced_config_map, "child", "default")).status == 404


@pytest.mark.usefixtures("with_widgets")
async def test_left_out_features_answer_clearly(
    custom: kubernetes.client.CustomObjectsApi, core: kubernetes.client.CoreV1Api
) -> None:
    args = (WIDGET_GROUP, "v1", "default", "widgets")
    await call(custom.create_namespaced_custom_object, *args, widget("w1"))
    apply = await raises(
        custom.patch_namespaced_custom_object,
        *args,
        "w1",
        {"spec": {"size": 2}},
        _content_type="application/apply-patch+yaml",
    )
    assert apply.status == 400 and "fieldManager is required" in body_of(apply)["message"]
    applied = await call(
        custom.patch_namespaced_custom_object,
        *args,
        "w1",
        {"spec": {"size": 2}},
        field_manager="test",
        _content_type="application/apply-patch+yaml",
    )
    assert applied["spec"]["size"] == 2  # server-side apply, approximated as a merge
    strategic = await raises(
        custom.patch_namespaced_custom_object,
        *args,
        "w1",
        {"spec": {"size": 2}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert strategic.status == 415
    assert "not supported for custom resources" in body_of(strategic)["message"]
    log = await raises(core.read_namespaced_pod_log, "nope", "default")
    assert log.status == 404


async def test_strategic_merge_patch_of_a_pod(core: kubernetes.client.CoreV1Api) -> None:
    body = pod("p", app="x")
    body["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    await call(core.create_namespaced_pod, "default", body)
    patch = {
        "metadata": {"labels": {"tier": "gpu"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:2"}]},
    }
    patched = await call(core.patch_namespaced_pod, "p", "default", patch)
    assert patched.metadata.labels == {"app": "x", "tier": "gpu"}
    assert patched.spec.containers[0].image == "busybox:2"
    assert patched.spec.containers[0].env[0].name == "A"  # merged by name, not replaced


async def test_dry_run_and_delete_collection(core: kubernetes.client.CoreV1Api) -> None:
    await call(
        core.create_namespaced_secret, "default", {"metadata": {"name": "s0"}}, dry_run="All"
    )
    assert (await raises(core.read_namespaced_secret, "s0", "default")).status == 404
    for i in range(3):
        labels = {"batch": "1"} if i < 2 else {}
        await call(
            core.create_namespaced_secret,
            "default",
            {"metadata": {"name": f"s{i}", "labels": labels}},
        )
    await call(core.delete_collection_namespaced_secret, "default", label_selector="batch=1")
    left = await call(core.list_namespaced_secret, "default")
    assert [s.metadata.name for s in left.items] == ["s2"]
