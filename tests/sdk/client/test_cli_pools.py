"""`avatarctl pool get | describe | scale` against the emulated API: tables, describe with the
pool's worker Pods and Events, the scale subresource, and the errors' exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from client_support import MERGE_PATCH, NS, T0, condition, deny, run_cli

from avatar_devtools.localcluster import clock, cluster
from avatar_sdk import api, cli, crd, pools

NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # five minutes after T0


def now() -> datetime:
    return NOW


def pools_info(local: cluster.LocalCluster) -> Any:
    return local.store.lookup(api.GROUP, api.VERSION, pools.POOL_PLURAL)


def stored_pool(local: cluster.LocalCluster, name: str) -> dict[str, Any] | None:
    record = local.store.find(pools_info(local), NS, name)
    return None if record is None else dict(record.obj)


def pool_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": pools.POOL_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def set_pool_status(local: cluster.LocalCluster, name: str, status: dict[str, Any]) -> None:
    """As the operator would write it: a merge patch of the status subresource."""
    local.store.patch(
        pools_info(local), NS, name, MERGE_PATCH, {"status": status}, subresource="status"
    )


def worker_pod(name: str, pool: str, state: str, session: str | None = None) -> dict[str, Any]:
    labels = {pools.POOL_LABEL: pool, pools.POOL_STATE_LABEL: state}
    if session is not None:
        labels[pools.SESSION_LABEL] = session
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "nodeName": "gpu-z",  # no such node: no kubelet plays this Pod's phases
            "containers": [{"name": "worker", "image": "ghcr.io/avatar-operator/worker:0.1.0"}],
        },
    }


@pytest.fixture
def frozen_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects written from now on are stamped T0 by the emulated API server."""
    stamp = clock.timestamp
    monkeypatch.setattr(clock, "timestamp", lambda at=None: T0 if at is None else stamp(at))


@pytest_asyncio.fixture
async def pool_crd(cluster_with_crd: cluster.LocalCluster) -> cluster.LocalCluster:
    cluster_with_crd.apply(crd.custom_resource_definition(pools.POOL_KIND))
    return cluster_with_crd


@pytest_asyncio.fixture
async def two_pools(
    pool_crd: cluster.LocalCluster, frozen_timestamps: None
) -> cluster.LocalCluster:
    """`default` (two wanted: one ready, one starting, one claimed by a session) and `big`
    (nothing reported yet), with worker Pods and an Event of the operator."""
    local = pool_crd
    local.apply(
        pool_manifest(
            "default",
            replicas=2,
            template={
                "avatar": {"renderer": "portrait"},
                "resources": {"vramMiB": 3072},
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        )
    )
    set_pool_status(
        local,
        "default",
        {
            "replicas": 2,
            "readyReplicas": 1,
            "starting": 1,
            "claimed": 1,
            "selector": pools.idle_selector("default"),
            "observedGeneration": 1,
            "conditions": [
                condition("Ready", "False", "WorkersStarting", "1 of 2 idle workers ready"),
                condition("Progressing", "True", "StartingWorkers"),
            ],
        },
    )
    local.apply(pool_manifest("big", replicas=8, whenEmpty="Wait"))
    for pod in (
        worker_pod("default-w1", "default", "ready"),
        worker_pod("default-w2", "default", "starting"),
        worker_pod("default-w3", "default", "claimed", session="support-desk"),
        worker_pod("big-w1", "big", "starting"),
    ):
        local.apply(pod)
    local.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "default.1", "namespace": NS},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": pools.POOL_KIND,
                "name": "default",
            },
            "type": "Normal",
            "reason": "WorkerClaimed",
            "message": "session support-desk claimed default-w3",
            "lastTimestamp": "2026-01-01T00:02:00Z",
            "count": 1,
            "source": {"component": "avatar-operator"},
        }
    )
    return local


GET_TABLE = """\
NAME      DESIRED   READY   CLAIMED   STARTING   AGE
big       8         0       0         0          5m
default   2         1       1         1          5m
"""

DESCRIBE_DEFAULT = """\
Name:          default
Namespace:     agents
Created:       2026-01-01T00:00:00Z (5m ago)
Replicas:      2 desired
Workers:       1 ready, 1 starting, 1 claimed (2 idle)
When Empty:    Cold
Avatar:        portrait, 512x512 @ 30 fps, audio 24000 Hz mono
Resources:     3072 MiB VRAM, GPU shared
Node Selector: nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3
Tolerations:   nvidia.com/gpu (Exists):NoSchedule
Selector:      avatar-operator.dev/pool=default,avatar-operator.dev/pool-state in (starting,ready)
Observed Gen:  1 (spec generation 1)
Conditions:
  Type          Status   Reason            Age   Message
  Ready         False    WorkersStarting   5m    1 of 2 idle workers ready
  Progressing   True     StartingWorkers   5m
Worker Pods:
  NAME         STATE      SESSION        PHASE     NODE    AGE
  default-w1   ready      <none>         Pending   gpu-z   5m
  default-w2   starting   <none>         Pending   gpu-z   5m
  default-w3   claimed    support-desk   Pending   gpu-z   5m
Events:
  Type     Reason          Age   From              Message
  Normal   WorkerClaimed   3m    avatar-operator   session support-desk claimed default-w3
"""


async def test_pool_get_prints_the_table_and_the_api_objects(
    kubeconfig: Path, two_pools: cluster.LocalCluster
) -> None:
    for argv in (["pool", "get"], ["-n", NS, "pool", "get"], ["pool", "get", "--namespace", NS]):
        assert await run_cli(*argv, kubeconfig=kubeconfig, clock=now) == (0, GET_TABLE, "")
    code, out, _ = await run_cli("pool", "get", "default", kubeconfig=kubeconfig, clock=now)
    assert (code, out.splitlines()[1].split()) == (0, ["default", "2", "1", "1", "1", "5m"])
    code, out, _ = await run_cli("pool", "get", "-A", kubeconfig=kubeconfig, clock=now)
    assert out.splitlines()[0].split() == ["NAMESPACE", *cli.POOL_COLUMNS]
    assert out.splitlines()[1].split()[:2] == [NS, "big"]
    code, out, _ = await run_cli("pool", "get", "default", "-o", "json", kubeconfig=kubeconfig)
    assert code == 0 and json.loads(out) == stored_pool(two_pools, "default")
    code, out, _ = await run_cli("pool", "get", "-o", "yaml", kubeconfig=kubeconfig)
    document = yaml.safe_load(out)
    assert document["kind"] == "List"
    assert [(i["kind"], i["metadata"]["name"]) for i in document["items"]] == [
        ("AvatarPool", "big"),
        ("AvatarPool", "default"),
    ]
    code, out, _ = await run_cli("pool", "get", "-o", "name", kubeconfig=kubeconfig)
    assert out == f"{cli.POOL_KIND_NAME}/big\n{cli.POOL_KIND_NAME}/default\n"
    code, out, _ = await run_cli("pool", "get", "-n", "default", kubeconfig=kubeconfig)
    assert (code, out) == (0, "No avatar pools found in namespace default.\n")


async def test_pool_describe_shows_counts_conditions_workers_and_events(
    kubeconfig: Path, two_pools: cluster.LocalCluster
) -> None:
    result = await run_cli("pool", "describe", "default", kubeconfig=kubeconfig, clock=now)
    assert result == (0, DESCRIBE_DEFAULT, "")
    code, out, _ = await run_cli("pool", "describe", "default", "-o", "json", kubeconfig=kubeconfig)
    body = json.loads(out)
    assert body["pool"]["metadata"]["name"] == "default"
    assert [w["metadata"]["name"] for w in body["workers"]] == [
        "default-w1",
        "default-w2",
        "default-w3",
    ]
    assert [e["reason"] for e in body["events"]] == ["WorkerClaimed"]
    # a pool with nothing reported yet, and no right to list Pods or Events: still described
    deny(two_pools, "list", plural="pods", group="")
    deny(two_pools, "list", plural="events", group="")
    code, out, _ = await run_cli("pool", "describe", "big", kubeconfig=kubeconfig, clock=now)
    assert code == 0
    assert "Replicas:      8 desired\n" in out and "When Empty:    Wait\n" in out
    assert "Workers:       0 ready, 0 starting, 0 claimed (0 idle)\n" in out
    assert "Conditions:\n  <none>\n" in out
    assert "Worker Pods:\n  <cannot list pods: grant the ServiceAccount `list` on pods>" in out
    assert "Events:\n  <cannot list events: grant the ServiceAccount `list` on events>" in out


async def test_pool_errors_name_the_pool_and_have_their_exit_codes(
    kubeconfig: Path,
    pool_crd: cluster.LocalCluster,
    cluster_with_crd: cluster.LocalCluster,
    localcluster_factory: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        ["pool", "get", "nope"],
        ["pool", "describe", "nope"],
        ["pool", "scale", "nope", "--replicas", "3"],
    ):
        code, out, err = await run_cli(*argv, kubeconfig=kubeconfig)
        assert (code, out) == (cli.EXIT_NOT_FOUND, ""), (argv, err)
        assert f'avatar pool "{NS}/nope" not found' in err, (argv, err)
    for replicas in ("-1", "501", "two"):
        code, _, err = await run_cli(
            "pool", "scale", "default", "--replicas", replicas, kubeconfig=kubeconfig
        )
        assert code == cli.EXIT_USAGE, (replicas, err)  # argparse's message goes to stderr
    code, _, err = await run_cli("pool", "scale", "default", kubeconfig=kubeconfig)
    assert code == cli.EXIT_USAGE
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["pool", "scale", "default", "--replicas", "-1"])
    assert "must be between 0 and 500, got -1" in capsys.readouterr().err
    deny(cluster_with_crd, "list", plural=pools.POOL_PLURAL)
    code, _, err = await run_cli("pool", "get", kubeconfig=kubeconfig)
    assert code == cli.EXIT_FORBIDDEN and f'resources: ["{pools.POOL_PLURAL}"]' in err
    # a cluster with the AvatarSession CRD only: the AvatarPool CRD is missing
    bare: cluster.LocalCluster = await localcluster_factory()
    bare.apply(crd.custom_resource_definition())
    only_sessions = bare.write_kubeconfig(tmp_path / "sessions-only")
    code, _, err = await run_cli("pool", "get", kubeconfig=only_sessions)
    assert code == cli.EXIT_NO_CRD and "the AvatarPool CRD is not installed" in err


async def test_pool_scale_patches_the_scale_subresource(
    kubeconfig: Path, two_pools: cluster.LocalCluster
) -> None:
    """`avatarctl pool scale` is `kubectl scale`: a merge patch of .../avatarpools/NAME/scale
    (an autoscaling/v1 Scale), which sets spec.replicas and answers with the Scale."""
    code, out, err = await run_cli(
        "pool", "scale", "default", "--replicas", "4", kubeconfig=kubeconfig
    )
    assert (code, err) == (0, ""), (
        "PATCH .../avatarpools/default/scale failed: the emulated API server must serve the "
        f"scale subresource of custom resources (got exit {code}: {err.strip()})"
    )
    assert out == f"{cli.POOL_KIND_NAME}/default scaled to 4\n"
    pool = stored_pool(two_pools, "default")
    assert pool is not None and pool["spec"]["replicas"] == 4
    assert pool["spec"]["template"]["resources"]["vramMiB"] == 3072  # the rest is untouched
    assert pool["status"]["readyReplicas"] == 1  # and so is the status

    code, out, _ = await run_cli(
        "pool", "scale", "default", "--replicas", "0", "-o", "json", kubeconfig=kubeconfig
    )
    scale = json.loads(out)
    assert code == 0
    assert (scale["apiVersion"], scale["kind"]) == ("autoscaling/v1", "Scale")
    assert scale["metadata"]["name"] == "default"
    assert scale["spec"] == {"replicas": 0}
    assert scale["status"] == {"replicas": 2, "selector": pools.idle_selector("default")}
    pool = stored_pool(two_pools, "default")
    assert pool is not None and pool["spec"]["replicas"] == 0


async def test_pool_scale_sends_what_kubectl_scale_sends(
    kubeconfig: Path, two_pools: cluster.LocalCluster
) -> None:
    """The request itself, whatever the server does with it: PATCH of the scale subresource
    with a JSON merge patch of spec.replicas, and the Scale answered is what `-o json` prints.
    (The server's side is test_pool_scale_patches_the_scale_subresource.)"""
    from aiohttp import web

    server = two_pools.server
    dispatch = server._dispatch
    seen: list[tuple[str, str, str, Any]] = []

    async def recording(request: Any) -> Any:
        if request.path.endswith("/scale"):
            body = json.loads(await request.read())
            seen.append((request.method, request.path, request.content_type, body))
            return web.json_response(
                {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {"name": "default", "namespace": NS},
                    "spec": body["spec"],
                    "status": {"replicas": 2, "selector": pools.idle_selector("default")},
                }
            )
        return await dispatch(request)

    server._dispatch = recording  # type: ignore[method-assign]
    code, out, err = await run_cli(
        "pool", "scale", "default", "--replicas", "3", "-o", "json", kubeconfig=kubeconfig
    )
    assert (code, err) == (0, "")
    assert seen == [
        (
            "PATCH",
            f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{pools.POOL_PLURAL}/default/scale",
            "application/merge-patch+json",
            {"spec": {"replicas": 3}},
        )
    ]
    assert json.loads(out)["spec"] == {"replicas": 3}
    code, out, _ = await run_cli(
        "pool", "scale", "default", "--replicas", "3", "-o", "name", kubeconfig=kubeconfig
    )
    assert (code, out) == (0, f"{cli.POOL_KIND_NAME}/default\n")
