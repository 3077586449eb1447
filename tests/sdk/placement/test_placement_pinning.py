"""Pinning: the manifest fragments a worker Pod gets from its placement."""

from __future__ import annotations

from typing import Any

from avatar_sdk import api
from avatar_sdk.placement import pinning

PLACED = api.Placement(node="gpu-node-7", gpu=3, vram_mib=4096, product="NVIDIA-H200")
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}
                    ]
                }
            ]
        }
    }
}


def _pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "w", "annotations": {"keep": "me"}},
        "spec": {
            "containers": [
                {"name": "worker", "env": [{"name": "AVATAR_ROOM_ID", "value": "r"}]},
                {"name": "sidecar"},
            ],
            **spec,
        },
    }


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_visible_devices_pins_node_and_gpu() -> None:
    pod = pinning.apply(_pod(), pinning.pinning_for(PLACED), container="worker")
    assert pod["spec"]["affinity"] == AFFINITY
    worker, sidecar = pod["spec"]["containers"]
    assert _env(worker) == {
        "AVATAR_ROOM_ID": "r",
        "NVIDIA_VISIBLE_DEVICES": "3",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }
    assert "resources" not in worker  # no nvidia.com/gpu: the device plugin is not involved
    assert "env" not in sidecar
    assert pod["metadata"]["annotations"] == {
        "keep": "me",
        "avatar-operator.dev/node": "gpu-node-7",
        "avatar-operator.dev/gpu": "3",
    }


def test_resource_mode_requests_one_gpu_and_sets_no_env() -> None:
    pin = pinning.pinning_for(PLACED, pinning.PinningMode.RESOURCE, runtime_class="nvidia")
    pod = pinning.apply(_pod(), pin, container="worker")
    worker = pod["spec"]["containers"][0]
    assert worker["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert _env(worker) == {"AVATAR_ROOM_ID": "r"}
    assert pod["spec"]["affinity"] == AFFINITY
    assert pod["spec"]["runtimeClassName"] == "nvidia"


def test_exclusive_is_pinned_like_shared() -> None:
    placed = PLACED.model_copy(update={"exclusive": True, "vram_mib": 143_771})
    pin = pinning.pinning_for(placed)
    assert {e["name"]: e["value"] for e in pin.env}["NVIDIA_VISIBLE_DEVICES"] == "3"


def test_no_gpu_hides_the_gpus_and_leaves_the_node_to_the_scheduler() -> None:
    for placement in (None, api.Placement(node="cpu-1")):
        pod = pinning.apply(_pod(), pinning.pinning_for(placement), container="worker")
        assert "affinity" not in pod["spec"]
        assert _env(pod["spec"]["containers"][0])["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_existing_required_affinity_is_narrowed_not_replaced() -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
    existing: dict[str, Any] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}]
            }
        },
        "podAntiAffinity": {"x": 1},
    }
    pod = pinning.apply(_pod(affinity=existing), pinning.pinning_for(PLACED))
    term = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [zone]
    assert term["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}
    ]
    assert pod["spec"]["affinity"]["podAntiAffinity"] == {"x": 1}
    assert existing["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0] == {"matchExpressions": [zone]}  # the input is untouched


def test_pinning_replaces_stale_gpu_env_and_is_idempotent() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
    once = pinning.apply(pod, pinning.pinning_for(PLACED), container="worker")
    twice = pinning.apply(once, pinning.pinning_for(PLACED), container="worker")
    assert _env(once["spec"]["containers"][0])["NVIDIA_VISIBLE_DEVICES"] == "3"
    assert twice["spec"]["containers"] == once["spec"]["containers"]
