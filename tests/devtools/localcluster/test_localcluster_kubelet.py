"""The simulated kubelet: scheduling, phases, real processes, failures on command."""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import aiohttp
import pytest
from localcluster_helpers import until

from avatar_devtools.localcluster import cluster, fleet, resources
from avatar_devtools.localcluster.fixtures import FLEET_DOCUMENT

PODS = resources.PODS
ANNOTATIONS = "localcluster.avatar-operator.dev/"


def pod(
    name: str, *, command: list[str] | None = None, gpus: int = 0, **spec: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "avatar-worker:dev"}
    if command is not None:
        container["command"] = command
    if gpus:
        container["resources"] = {"limits": {fleet.GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": spec.pop("annotations", {})},
        "spec": {"containers": [container], "restartPolicy": "Never", **spec},
    }


def pinned(node: str) -> dict[str, Any]:
    term = {
        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]
    }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def phase(expected: str) -> Any:
    return lambda p: (p.get("status") or {}).get("phase") == expected


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


async def test_nodes_carry_gpu_feature_discovery_labels(localcluster: cluster.LocalCluster) -> None:
    node = localcluster.store.get(resources.NODES, None, "gpu-node-0").obj
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert node["status"]["allocatable"][fleet.GPU_RESOURCE] == "2"
    assert condition(node, "Ready")["status"] == "True"


async def test_pod_pinned_by_affinity_runs_then_completes(
    localcluster: cluster.LocalCluster,
) -> None:
    body = pod(
        "p1", affinity=pinned("gpu-node-1"), annotations={ANNOTATIONS + "run-seconds": "0.2"}
    )
    localcluster.apply(body)
    running = await localcluster.wait_for(PODS, "default", "p1", phase("Running"))
    assert running["spec"]["nodeName"] == "gpu-node-1"
    assert condition(running, "Ready")["status"] == "True"
    assert running["status"]["podIP"].startswith("10.244.")
    assert running["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    done = await localcluster.wait_for(PODS, "default", "p1", phase("Succeeded"))
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert condition(done, "Ready")["status"] == "False"


async def test_exit_code_and_restart_policy(localcluster: cluster.LocalCluster) -> None:
    failing = pod(
        "fails", annotations={ANNOTATIONS + "run-seconds": "0.1", ANNOTATIONS + "exit-code": "3"}
    )
    restarting = pod("restarts", annotations={ANNOTATIONS + "run-seconds": "0.1"})
    restarting["spec"]["restartPolicy"] = "Always"
    localcluster.apply(failing)
    localcluster.apply(restarting)
    failed = await localcluster.wait_for(PODS, "default", "fails", phase("Failed"))
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    again = await localcluster.wait_for(
        PODS,
        "default",
        "restarts",
        lambda p: (p["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1,
    )
    assert again["status"]["phase"] == "Running"


async def test_gpu_capacity_and_selectors_decide_scheduling(
    localcluster: cluster.LocalCluster,
) -> None:
    for i in range(3):
        localcluster.apply(pod(f"gpu{i}", gpus=2))
    await localcluster.wait_for(PODS, "default", "gpu0", phase("Running"))
    await localcluster.wait_for(PODS, "default", "gpu1", phase("Running"))
    waiting = await localcluster.wait_for(
        PODS, "default", "gpu2", lambda p: condition(p, "PodScheduled").get("status") == "False"
    )
    assert condition(waiting, "PodScheduled")["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition(waiting, "PodScheduled")["message"]
    localcluster.store.delete(PODS, "default", "gpu0")
    await localcluster.wait_for(PODS, "default", "gpu2", phase("Running"))

    localcluster.apply(pod("nowhere", nodeSelector={"nvidia.com/gpu.product": "NVIDIA-B200"}))
    nowhere = await localcluster.wait_for(
        PODS,
        "default",
        "nowhere",
        lambda p: condition(p, "PodScheduled").get("reason") == "Unschedulable",
    )
    assert (
        "didn't match Pod's node affinity/selector" in condition(nowhere, "PodScheduled")["message"]
    )


@pytest.mark.parametrize(
    ("requests", "why"),
    [({"cpu": "20"}, "Insufficient cpu"), ({"memory": "200Gi"}, "Insufficient memory")],
)
async def test_allocatable_cpu_and_memory_decide_scheduling(
    localcluster: cluster.LocalCluster, requests: dict[str, str], why: str
) -> None:
    """As kube-scheduler's NodeResourcesFit: the requests of the Pods bound to a node (32 CPUs,
    256Gi here) against its allocatable — the difference the real scheduler showed."""
    for name in ("first", "second"):
        body = pod(name, affinity=pinned("gpu-node-0"))
        body["spec"]["containers"][0]["resources"] = {"requests": requests}
        localcluster.apply(body)
    await localcluster.wait_for(PODS, "default", "first", phase("Running"))
    waiting = await localcluster.wait_for(
        PODS, "default", "second", lambda p: condition(p, "PodScheduled").get("status") == "False"
    )
    assert why in condition(waiting, "PodScheduled")["message"]
    localcluster.store.delete(PODS, "default", "first")
    await localcluster.wait_for(PODS, "default", "second", phase("Running"))


async def test_cordoned_and_tainted_nodes_get_no_new_pods(
    localcluster: cluster.LocalCluster,
) -> None:
    kubelet = localcluster.kubelet
    assert kubelet is not None
    kubelet.cordon_node("gpu-node-0")
    localcluster.store.mutate(
        resources.NODES,
        None,
        "gpu-node-1",
        lambda n: n["spec"].update(
            taints=[{"key": "dedicated", "value": "avatars", "effect": "NoSchedule"}]
        ),
    )
    localcluster.apply(pod("p1"))
    blocked = await localcluster.wait_for(
        PODS, "default", "p1", lambda p: condition(p, "PodScheduled").get("status") == "False"
    )
    message = condition(blocked, "PodScheduled")["message"]
    assert "unschedulable" in message and "untolerated taint" in message
    tolerant = pod(
        "p2", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "avatars"}]
    )
    localcluster.apply(tolerant)
    assert (await localcluster.wait_for(PODS, "default", "p2", phase("Running")))["spec"][
        "nodeName"
    ] == "gpu-node-1"
    kubelet.uncordon_node("gpu-node-0")
    assert (await localcluster.wait_for(PODS, "default", "p1", phase("Running")))["spec"][
        "nodeName"
    ] == "gpu-node-0"


async def test_fail_pod_on_command_and_graceful_deletion(
    localcluster: cluster.LocalCluster,
) -> None:
    assert localcluster.kubelet is not None
    localcluster.apply(pod("p1"))
    localcluster.apply(pod("p2"))
    await localcluster.wait_for(PODS, "default", "p1", phase("Running"))
    await localcluster.kubelet.fail_pod(
        "default", "p1", reason="OOMKilled", message="out of memory", exit_code=137
    )
    failed = await localcluster.wait_for(PODS, "default", "p1", phase("Failed"))
    assert (failed["status"]["reason"], failed["status"]["message"]) == (
        "OOMKilled",
        "out of memory",
    )
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137

    await localcluster.wait_for(PODS, "default", "p2", phase("Running"))
    marked = localcluster.store.delete(PODS, "default", "p2")
    assert marked.obj["metadata"]["deletionTimestamp"]  # the kubelet stops it, then it goes
    assert marked.obj["metadata"]["deletionGracePeriodSeconds"] == 30
    assert await gone(localcluster, "default", "p2")


async def gone(local: cluster.LocalCluster, namespace: str, name: str) -> bool:
    """Wait until the pod is deleted (TimeoutError if it stays)."""
    return bool(await until(lambda: local.store.find(PODS, namespace, name) is None))


async def test_removing_a_node_fails_its_pods_then_collects_them(
    localcluster: cluster.LocalCluster,
) -> None:
    assert localcluster.kubelet is not None
    localcluster.apply(pod("p1", affinity=pinned("gpu-node-0")))
    await localcluster.wait_for(PODS, "default", "p1", phase("Running"))
    await localcluster.kubelet.remove_node("gpu-node-0")
    lost = localcluster.store.get(PODS, "default", "p1").obj
    assert (lost["status"]["phase"], lost["status"]["reason"]) == ("Failed", "NodeLost")
    assert condition(lost, "DisruptionTarget")["status"] == "True"
    assert localcluster.store.find(resources.NODES, None, "gpu-node-0") is None
    assert await gone(localcluster, "default", "p1")  # after podGCSeconds


# --- process mode -------------------------------------------------------------------------------

SCRIPT = """
import os, pathlib, sys
root = os.environ["AVATAR_POD_ROOT"]
token = pathlib.Path(sys.argv[1]).read_text()
print("greeting", os.environ["GREETING"], "key", os.environ["API_KEY"], "token", token)
sa = pathlib.Path(root, "var/run/secrets/kubernetes.io/serviceaccount")
print("namespace", (sa / "namespace").read_text())
print("pod", os.environ["POD_NAME"], "expanded", os.environ["EXPANDED"])
print("root-ok", sys.argv[1].startswith(root), os.environ["TOKEN_FILE"].startswith(root))
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


@pytest.fixture
async def process_cluster(localcluster_factory: Any) -> cluster.LocalCluster:
    local: cluster.LocalCluster = await localcluster_factory(
        fleet_spec=fleet.parse(FLEET_DOCUMENT), kubelet_mode="process"
    )
    return local


def worker_pod(name: str, exit_code: int = 0) -> dict[str, Any]:
    body = pod(
        name,
        command=["python", "-c", SCRIPT],
        volumes=[{"name": "token", "secret": {"secretName": "room-token"}}],
    )
    container = body["spec"]["containers"][0]
    container["args"] = ["/var/run/avatar/token"]
    container["volumeMounts"] = [
        {"name": "token", "mountPath": "/var/run/avatar", "readOnly": True}
    ]
    container["env"] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "room-token", "key": "apiKey"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "EXPANDED", "value": "$(GREETING)-$(POD_NAME)"},
        {"name": "TOKEN_FILE", "value": "/var/run/avatar/token"},
        {"name": "EXIT_CODE", "value": str(exit_code)},
    ]
    return body


def secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "room-token"},
        "data": {
            "token": base64.b64encode(b"jwt-123").decode(),
            "apiKey": base64.b64encode(b"key-9").decode(),
        },
    }


async def test_process_mode_runs_the_command_with_env_and_secret_files(
    process_cluster: cluster.LocalCluster,
) -> None:
    process_cluster.apply(secret())
    process_cluster.apply(worker_pod("w1"))
    done = await process_cluster.wait_for(PODS, "default", "w1", phase("Succeeded"))
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{process_cluster.url}/api/v1/namespaces/default/pods/w1/log") as response,
    ):
        log = await response.text()
    assert "greeting hello key key-9 token jwt-123" in log
    assert "namespace default" in log
    assert "pod w1 expanded hello-w1" in log
    assert "root-ok True True" in log


async def test_process_exit_code_fails_the_pod(process_cluster: cluster.LocalCluster) -> None:
    process_cluster.apply(secret())
    process_cluster.apply(worker_pod("w1", exit_code=4))
    failed = await process_cluster.wait_for(PODS, "default", "w1", phase("Failed"))
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (4, "Error")


async def test_process_waits_for_its_secret(process_cluster: cluster.LocalCluster) -> None:
    process_cluster.apply(worker_pod("w1"))
    waiting = await process_cluster.wait_for(
        PODS,
        "default",
        "w1",
        lambda p: (
            "waiting" in ((p["status"].get("containerStatuses") or [{}])[0].get("state") or {})
        ),
    )
    state = waiting["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["status"]["phase"] == "Pending"
    assert state["reason"] in ("CreateContainerConfigError", "ContainerCreating")
    process_cluster.apply(secret())
    await process_cluster.wait_for(PODS, "default", "w1", phase("Succeeded"))


async def test_deleting_a_pod_terminates_its_process(
    process_cluster: cluster.LocalCluster, tmp_path: Any
) -> None:
    pid_file = tmp_path / "pid"
    code = (
        f"import os, time, pathlib; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()));"
        " time.sleep(60)"
    )
    process_cluster.apply(pod("sleeper", command=[sys.executable, "-c", code]))
    await process_cluster.wait_for(PODS, "default", "sleeper", phase("Running"))
    await until(lambda: pid_file.exists() and pid_file.read_text())
    pid = int(pid_file.read_text())
    process_cluster.store.delete(PODS, "default", "sleeper")
    assert await gone(process_cluster, "default", "sleeper")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_the_path_rule_spares_the_kubelets_own_paths(
    process_cluster: cluster.LocalCluster, tmp_path: Any
) -> None:
    """A pod that mounts /tmp (the worker does) while the kubelet's directory, interpreter and
    environment may lie under /tmp too: only what the pod's spec says is rewritten."""
    assert process_cluster.kubelet is not None
    assert str(process_cluster.kubelet.workdir).startswith("/tmp/")  # pytest's tmp_path
    code = (
        "import os, sys; root = os.environ['AVATAR_POD_ROOT'];"
        " print('root-exists', os.path.isdir(root));"
        " print('own', os.environ['SCRATCH'] == root + '/tmp/scratch');"
        " print('inherited', os.environ['LC_TEST_HOST_PATH']);"
        " print('interpreter', sys.executable == os.environ['LC_TEST_PYTHON'])"
    )
    body = pod(
        "tmp-user",
        command=["python", "-c", code],
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    container = body["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    container["env"] = [{"name": "SCRATCH", "value": "/tmp/scratch"}]
    host_path = str(tmp_path / "host-file")
    os.environ["LC_TEST_HOST_PATH"] = host_path
    os.environ["LC_TEST_PYTHON"] = sys.executable
    try:
        process_cluster.apply(body)
        await process_cluster.wait_for(PODS, "default", "tmp-user", phase("Succeeded"))
    finally:
        del os.environ["LC_TEST_HOST_PATH"], os.environ["LC_TEST_PYTHON"]
    log = process_cluster.kubelet.read_log("default", "tmp-user", None) or ""
    assert "root-exists True" in log
    assert "own True" in log
    assert f"inherited {host_path}" in log
    assert "interpreter True" in log


async def test_container_pid_names_the_running_process(
    process_cluster: cluster.LocalCluster,
) -> None:
    process_cluster.apply(pod("sleeper", command=["python", "-c", "import time; time.sleep(60)"]))
    await process_cluster.wait_for(PODS, "default", "sleeper", phase("Running"))
    assert process_cluster.kubelet is not None
    pid = process_cluster.kubelet.container_pid("default", "sleeper")
    assert pid is not None
    os.kill(pid, 9)
    failed = await process_cluster.wait_for(PODS, "default", "sleeper", phase("Failed"))
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert process_cluster.kubelet.container_pid("default", "sleeper") is None
    assert process_cluster.kubelet.container_pid("default", "nobody") is None
