"""`kubectl get`'s Tables from the emulated API (no kubectl): the Accept header kubectl sends,
the AvatarSession printer columns, nodes and pods as kube-apiserver prints them, watches."""

from __future__ import annotations

import datetime
import json
from typing import Any

import aiohttp
import pytest

from avatar_devtools.localcluster import cluster, printers, tables
from avatar_sdk import crd as sdk_crd

KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
SESSIONS = "/apis/avatar-operator.dev/v1alpha1/namespaces/default/avatarsessions"


async def get(local: cluster.LocalCluster, path: str, accept: str = KUBECTL_ACCEPT) -> Any:
    async with (
        aiohttp.ClientSession() as client,
        client.get(local.url + path, headers={"Accept": accept}) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


def names(table: dict[str, Any], *, wide: bool = False) -> list[str]:
    return [c["name"] for c in table["columnDefinitions"] if wide or not c.get("priority")]


@pytest.fixture
def with_sessions(localcluster: cluster.LocalCluster) -> cluster.LocalCluster:
    localcluster.apply(sdk_crd.custom_resource_definition())
    session = {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": "columns", "namespace": "default"},
        "spec": {"roomId": "room-1"},
    }
    localcluster.apply(session)
    status = {
        "phase": "Joined",
        "playback": {"state": "Speaking"},
        "placement": {"node": "gpu-node-0", "gpu": 3, "vramMiB": 2048},
    }
    localcluster.store.mutate(
        localcluster.store.lookup("avatar-operator.dev", "v1alpha1", "avatarsessions"),
        "default",
        "columns",
        lambda obj: obj.__setitem__("status", status),
        subresource="status",
    )
    return localcluster


def test_only_a_table_accept_header_asks_for_a_table() -> None:
    assert tables.wants_table(KUBECTL_ACCEPT)
    assert tables.wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io")
    assert not tables.wants_table("application/json")
    assert not tables.wants_table("application/json, application/json;as=Table;v=v1;g=meta.k8s.io")
    assert not tables.wants_table(None)


async def test_avatarsessions_print_the_crds_columns(with_sessions: cluster.LocalCluster) -> None:
    table = await get(with_sessions, SESSIONS)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert names(table) == ["Name", "Phase", "Playback", "Node", "GPU", "VRAM", "Age"]
    assert names(table, wide=True) == [
        "Name",
        "Phase",
        "Playback",
        "Room",
        "Node",
        "GPU",
        "VRAM",
        "Reason",
        "Age",
    ]
    (row,) = table["rows"]
    cells = row["cells"]
    assert cells[:8] == ["columns", "Joined", "Speaking", "room-1", "gpu-node-0", 3, 2048, None]
    assert cells[8].endswith("s")  # an age: "0s"
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "columns"
    vram = next(c for c in table["columnDefinitions"] if c["name"] == "VRAM")
    assert vram == {
        "name": "VRAM",
        "type": "integer",
        "format": "",
        "description": "VRAM reserved on the GPU, in MiB",
        "priority": 0,
    }


async def test_a_get_of_one_object_is_a_one_row_table(with_sessions: cluster.LocalCluster) -> None:
    table = await get(with_sessions, f"{SESSIONS}/columns?includeObject=Object")
    (row,) = table["rows"]
    assert row["object"]["kind"] == "AvatarSession"
    assert row["object"]["spec"]["roomId"] == "room-1"
    plain = await get(with_sessions, f"{SESSIONS}/columns", accept="application/json")
    assert plain["kind"] == "AvatarSession"


async def test_nodes_print_status_roles_age_version_and_wide_columns(
    localcluster: cluster.LocalCluster,
) -> None:
    table = await get(localcluster, "/api/v1/nodes")
    assert names(table) == ["Name", "Status", "Roles", "Age", "Version"]
    assert names(table, wide=True)[5:] == [
        "Internal-IP",
        "External-IP",
        "OS-Image",
        "Kernel-Version",
        "Container-Runtime",
    ]
    row = table["rows"][0]["cells"]
    assert row[0] == "gpu-node-0"
    assert row[1] == "Ready"
    assert row[2] == "<none>"
    assert row[4].startswith("v")


def test_node_status_roles_and_pod_status_as_kube_apiserver_prints_them() -> None:
    node = {
        "metadata": {
            "name": "n",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"node-role.kubernetes.io/gpu": "", "kubernetes.io/role": "worker"},
        },
        "spec": {"unschedulable": True},
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "v1.37.2", "architecture": "amd64"},
        },
    }
    cells = printers.NODES.cells(node)
    assert cells[1:3] == ["NotReady,SchedulingDisabled", "gpu,worker"]
    assert cells[5:9] == ["10.0.0.1", "<none>", "<unknown>", "<unknown> (amd64)"]
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n"},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": "10.1.0.5"}],
            "containerStatuses": [
                {"name": "a", "ready": True, "restartCount": 0, "state": {"running": {}}},
                {
                    "name": "b",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                },
            ],
        },
    }
    cells = printers.PODS.cells(pod)
    assert cells[:4] == ["p", "1/2", "CrashLoopBackOff", "2"]
    assert cells[5:7] == ["10.1.0.5", "n"]
    pod["status"]["phase"] = "Succeeded"
    (row,) = tables.table(printers.PODS, [pod], resource_version="1")["rows"]
    assert row["conditions"][0]["type"] == "Completed"


def test_ages_read_as_kubectls() -> None:
    assert [tables.human_duration(s) for s in (5, 119, 150, 601, 3 * 3600 + 60, 50 * 3600)] == [
        "5s",
        "119s",
        "2m30s",
        "10m",
        "3h1m",
        "2d2h",
    ]
    now = datetime.datetime(2026, 1, 1, 0, 1, 0, tzinfo=datetime.UTC)
    assert tables.age("2026-01-01T00:00:00Z", now) == "60s"


def test_printer_column_jsonpaths() -> None:
    obj = {
        "metadata": {"name": "x"},
        "status": {
            "conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}],
            "items": [{"n": 1}, {"n": 2}],
        },
    }
    printer = tables.custom_printer(
        {
            "additionalPrinterColumns": [
                {
                    "name": "Ready",
                    "type": "string",
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                },
                {"name": "First", "type": "integer", "jsonPath": ".status.items[0].n"},
                {"name": "All", "type": "string", "jsonPath": ".status.items[*].n"},
                {"name": "Missing", "type": "string", "jsonPath": ".status.nope"},
                {"name": "Wrong", "type": "integer", "jsonPath": ".metadata.name"},
            ]
        }
    )
    assert printer.cells(obj) == ["x", "True", 1, "1", None, None]
    default = tables.custom_printer({})
    assert [c["name"] for c in default.columns] == ["Name", "Age"]


async def test_a_watch_as_table_sends_the_columns_once(with_sessions: cluster.LocalCluster) -> None:
    events = []
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            with_sessions.url + "/api/v1/nodes?watch=true&timeoutSeconds=1",
            headers={"Accept": KUBECTL_ACCEPT},
        ) as response,
    ):
        async for line in response.content:
            if line.strip():
                events.append(json.loads(line))
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    first, second = (e["object"] for e in events)
    assert first["kind"] == "Table" and names(first)[0] == "Name"
    assert second["columnDefinitions"] == []
    assert second["rows"][0]["cells"][0] == "gpu-node-1"


def test_events_deployments_and_bindings_as_kube_apiserver_prints_them() -> None:
    event = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "AvatarSession", "name": "demo"},
        "reason": "InvalidSpec",
        "message": "spec.video.fps: too big ",
        "type": "Warning",
        "source": {"component": "avatar-operator"},
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "count": 2,
    }
    cells = printers.EVENTS.cells(event)
    assert cells[1:7] == [
        "Warning",
        "InvalidSpec",
        "avatarsession/demo",
        "",
        "avatar-operator",
        "spec.video.fps: too big",
    ]
    assert cells[0] == cells[7] and cells[8:] == [2, "e1"]
    assert [c["name"] for c in printers.EVENTS.columns if not c.get("priority")] == [
        "Last Seen",
        "Type",
        "Reason",
        "Object",
        "Message",
    ]
    deployment = {
        "metadata": {"name": "d", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "d", "tier": "x"}},
            "template": {"spec": {"containers": [{"name": "a", "image": "i:1"}]}},
        },
        "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1},
    }
    cells = printers.DEPLOYMENTS.cells(deployment)
    assert cells[:4] == ["d", "1/2", 2, 1]
    assert cells[5:] == ["a", "i:1", "app=d,tier=x"]
    binding = {
        "metadata": {"name": "b"},
        "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "bot", "namespace": "agents"},
            {"kind": "User", "name": "ann"},
        ],
    }
    cells = printers.builtin_printer(("rbac.authorization.k8s.io", "rolebindings")).cells(binding)
    assert cells[:2] == ["b", "Role/r"] and cells[3:] == ["ann", "", "agents/bot"]


def test_services_and_endpoints_as_kube_apiserver_prints_them() -> None:
    service = {
        "metadata": {"name": "relay"},
        "spec": {
            "clusterIPs": ["10.96.0.10"],
            "selector": {"tier": "x", "app": "relay"},
            "ports": [{"port": 8443}, {"port": 9090, "protocol": "UDP", "nodePort": 30090}],
        },
    }
    cells = printers.SERVICES.cells(service)
    assert cells[:5] == ["relay", "ClusterIP", "10.96.0.10", "<none>", "8443/TCP,9090:30090/UDP"]
    assert cells[6] == "app=relay,tier=x"
    service["spec"]["type"] = "LoadBalancer"
    assert printers.SERVICES.cells(service)[3] == "<pending>"
    endpoints = {
        "metadata": {"name": "e"},
        "subsets": [
            {"addresses": [{"ip": f"10.1.0.{i}"} for i in range(5)], "ports": [{"port": 80}]}
        ],
    }
    assert printers.ENDPOINTS.cells(endpoints)[1] == (
        "10.1.0.0:80,10.1.0.1:80,10.1.0.2:80 + 2 more..."
    )
    assert printers.ENDPOINTS.cells({"metadata": {"name": "e"}})[1] == "<none>"


async def test_v1_endpoints_requests_are_warned_deprecated(
    localcluster: cluster.LocalCluster,
) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(localcluster.url + "/api/v1/namespaces/default/endpoints") as response,
    ):
        assert response.headers.getall("Warning") == [
            '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'
        ]
