"""A small YAML description of simulated GPU nodes, turned into Node objects.

```yaml
kubelet:                      # optional; see kubelet.KubeletConfig
  mode: phases                # phases (default) | process
  startSeconds: 0.05          # Pending → Running delay in phases mode
  podGCSeconds: 1.0           # how long pods of a lost node stay Failed before deletion
  images:                     # process mode: the command of a container that has none
    avatar-worker: [python, -m, avatar_worker]
nodes:
  - name: gpu-a               # with count: gpu-a-0, gpu-a-1, ...
    count: 2
    gpus: 8                   # nvidia.com/gpu allocatable and nvidia.com/gpu.count
    product: NVIDIA-H100-80GB-HBM3
    memoryMiB: 81559          # per GPU: nvidia.com/gpu.memory
    cpu: "64"
    memory: 512Gi
    labels: {topology.kubernetes.io/zone: local-a}
    taints: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}]
    unschedulable: false
```

Nodes are labelled as NVIDIA GPU Feature Discovery labels real ones (`nvidia.com/gpu.count`,
`nvidia.com/gpu.memory` in MiB per GPU, `nvidia.com/gpu.product`, `nvidia.com/gpu.present`),
plus the well-known `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch` (and their
`beta.` pair), and
report `nvidia.com/gpu` in capacity and allocatable, as the NVIDIA device plugin does. A node
without GPUs (`gpus: 0`) carries no nvidia labels.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml

from avatar_devtools.localcluster import clock

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_PRESENT = "nvidia.com/gpu.present"
LABEL_HOSTNAME = "kubernetes.io/hostname"
DEFAULT_PRODUCT = "NVIDIA-H100-80GB-HBM3"
DEFAULT_GPU_MEMORY_MIB = 81559


class FleetError(ValueError):
    """The fleet description is malformed; the message names the entry."""


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int = 0
    product: str = DEFAULT_PRODUCT
    memory_mib: int = DEFAULT_GPU_MEMORY_MIB
    cpu: str = "32"
    memory: str = "256Gi"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    taints: tuple[dict[str, Any], ...] = ()
    unschedulable: bool = False
    address: str = "10.0.0.1"

    def manifest(self) -> dict[str, Any]:
        labels = {
            LABEL_HOSTNAME: self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            # the kubelet still sets the deprecated pair too (as `kubectl get nodes
            # --show-labels` shows on a real cluster)
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
        }
        if self.gpus:
            labels.update(
                {
                    LABEL_GPU_PRESENT: "true",
                    LABEL_GPU_COUNT: str(self.gpus),
                    LABEL_GPU_MEMORY: str(self.memory_mib),
                    LABEL_GPU_PRODUCT: self.product,
                }
            )
        labels.update(self.labels)
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "110",
            "ephemeral-storage": "500Gi",
        }
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
        spec: dict[str, Any] = {"podCIDR": _pod_cidr(self.address)}
        if self.taints:
            spec["taints"] = [dict(t) for t in self.taints]
        if self.unschedulable:
            spec["unschedulable"] = True
        now = clock.timestamp()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": spec,
            "status": {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "conditions": [
                    _condition("MemoryPressure", "False", "KubeletHasSufficientMemory", now),
                    _condition("DiskPressure", "False", "KubeletHasNoDiskPressure", now),
                    _condition("PIDPressure", "False", "KubeletHasSufficientPID", now),
                    _condition("Ready", "True", "KubeletReady", now),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": self.address},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "osImage": "localcluster",
                    "kernelVersion": os.uname().release,
                    "containerRuntimeVersion": "localcluster://0.1",
                    "kubeletVersion": "v1.37.0-localcluster",
                    "kubeProxyVersion": "",
                    "machineID": self.name,
                    "systemUUID": self.name,
                    "bootID": self.name,
                },
            },
        }


def _condition(kind: str, status: str, reason: str, now: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": f"kubelet reports {reason}",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def _pod_cidr(address: str) -> str:
    last = int(ipaddress.IPv4Address(address)) & 0xFF
    return f"10.244.{last}.0/24"


@dataclasses.dataclass(frozen=True)
class KubeletConfig:
    mode: str = "phases"
    start_seconds: float = 0.05
    pod_gc_seconds: float = 1.0
    images: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Fleet:
    nodes: tuple[NodeSpec, ...]
    kubelet: KubeletConfig


def _node_specs(entry: Any, index: int, first_address: int) -> list[NodeSpec]:
    if not isinstance(entry, dict) or not entry.get("name"):
        raise FleetError(f"nodes[{index}]: every node needs a name")
    count = int(entry.get("count", 1))
    names = (
        [entry["name"]] if "count" not in entry else [f"{entry['name']}-{i}" for i in range(count)]
    )
    taints = entry.get("taints") or []
    if not isinstance(taints, list) or not all(
        isinstance(t, dict) and t.get("key") and t.get("effect") for t in taints
    ):
        raise FleetError(f"nodes[{index}].taints: each taint needs a key and an effect")
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict):
        raise FleetError(f"nodes[{index}].labels: must be a map")
    specs = []
    for offset, name in enumerate(names):
        specs.append(
            NodeSpec(
                name=str(name),
                gpus=int(entry.get("gpus", 0)),
                product=str(entry.get("product", DEFAULT_PRODUCT)),
                memory_mib=int(entry.get("memoryMiB", DEFAULT_GPU_MEMORY_MIB)),
                cpu=str(entry.get("cpu", "32")),
                memory=str(entry.get("memory", "256Gi")),
                labels={str(k): str(v) for k, v in labels.items()},
                taints=tuple(dict(t) for t in taints),
                unschedulable=bool(entry.get("unschedulable", False)),
                address=str(ipaddress.IPv4Address("10.0.0.0") + first_address + offset),
            )
        )
    return specs


def parse(document: Any) -> Fleet:
    if not isinstance(document, dict):
        raise FleetError("a fleet is a map with `nodes` (and optionally `kubelet`)")
    nodes: list[NodeSpec] = []
    for index, entry in enumerate(document.get("nodes") or []):
        nodes.extend(_node_specs(entry, index, len(nodes) + 1))
    names = [n.name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(f"duplicate node names: {', '.join(duplicates)}")
    raw = document.get("kubelet") or {}
    if not isinstance(raw, dict):
        raise FleetError("kubelet: must be a map")
    mode = str(raw.get("mode", "phases"))
    if mode not in ("phases", "process"):
        raise FleetError(f"kubelet.mode: {mode!r} is not one of phases, process")
    images = raw.get("images") or {}
    kubelet = KubeletConfig(
        mode=mode,
        start_seconds=float(raw.get("startSeconds", 0.05)),
        pod_gc_seconds=float(raw.get("podGCSeconds", 1.0)),
        images={str(k): tuple(str(a) for a in v) for k, v in images.items()},
    )
    return Fleet(nodes=tuple(nodes), kubelet=kubelet)


def load(path: str | os.PathLike[str]) -> Fleet:
    return parse(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
