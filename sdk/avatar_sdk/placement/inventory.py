"""The GPUs that sessions can be placed on, read from Node objects.

A node's GPUs come from NVIDIA GPU Feature Discovery's labels (`nvidia.com/gpu.count`,
`nvidia.com/gpu.memory` in MiB per GPU, `nvidia.com/gpu.product`), checked against what the
device plugin advertises (`status.allocatable["nvidia.com/gpu"]`, divided by
`nvidia.com/gpu.replicas` on time-sliced nodes). Operator settings can override any of it per
pool of nodes (`PoolOverride`, matched by labels, first match wins): VRAM per GPU, the headroom
kept free on each GPU, a cap on sessions per GPU, and the per-process overhead added to every
session's VRAM on that pool.

Parsing is pure: `parse_node(body, settings)` turns a raw Node into a frozen `NodeInfo`, equal
to the previous one when nothing placement cares about changed (so the frequent status
heartbeats of a Node cost nothing downstream). `exclusion()` says why a node cannot take a
session, one rule at a time, so that an Unschedulable message can count the reasons.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TypedDict

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from avatar_sdk import api

LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_REPLICAS = "nvidia.com/gpu.replicas"  # time-slicing / MPS replicas per GPU
RESOURCE_GPU = "nvidia.com/gpu"

# Taint effects that keep a Pod off a node; PreferNoSchedule is only a preference.
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


# ---------------------------------------------------------------------------------------------
# raw Kubernetes payloads (only the fields read here)


class TaintDict(TypedDict, total=False):
    key: str
    value: str
    effect: str


class NodeConditionDict(TypedDict, total=False):
    type: str
    status: str


class NodeMetadataDict(TypedDict, total=False):
    name: str
    labels: dict[str, str]


class NodeSpecDict(TypedDict, total=False):
    unschedulable: bool
    taints: list[TaintDict]


class NodeStatusDict(TypedDict, total=False):
    allocatable: dict[str, str]
    conditions: list[NodeConditionDict]


class NodeDict(TypedDict, total=False):
    metadata: NodeMetadataDict
    spec: NodeSpecDict
    status: NodeStatusDict


# ---------------------------------------------------------------------------------------------
# settings


class _Settings(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class PoolOverride(_Settings):
    """Settings for the nodes whose labels include all of `match_labels` (first match wins)."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Node labels that select the pool; empty: every node."
    )
    gpu_count: int | None = Field(None, ge=0, description="GPUs per node, instead of GFD's.")
    vram_mib: int | None = Field(
        None, ge=1, alias="vramMiB", description="VRAM per GPU in MiB, instead of GFD's."
    )
    product: str | None = Field(None, description="GPU product name, instead of GFD's.")
    headroom_mib: int | None = Field(
        None, ge=0, alias="headroomMiB", description="VRAM kept free on each GPU."
    )
    max_sessions_per_gpu: int | None = Field(
        None, ge=1, description="At most this many sessions share one GPU."
    )
    overhead_mib: int | None = Field(
        None,
        ge=0,
        alias="overheadMiB",
        description="Added to each session's VRAM on this pool (driver, context).",
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class InventorySettings(_Settings):
    """Fleet-wide defaults and per-pool overrides."""

    headroom_mib: int = Field(
        0,
        ge=0,
        alias="headroomMiB",
        description="VRAM kept free on each GPU (the driver and stray allocations).",
    )
    max_sessions_per_gpu: int | None = Field(
        None, ge=1, description="At most this many sessions share one GPU; empty: no cap."
    )
    overhead_mib: int = Field(
        0,
        ge=0,
        alias="overheadMiB",
        description="Added to each session's VRAM. Zero by default: a session's vramMiB "
        "already includes its worker's CUDA context (~612 MiB measured on an H200).",
    )
    pools: tuple[PoolOverride, ...] = Field((), description="Per-pool overrides, in order.")
    worker_cpu: str | None = Field(
        None,
        alias="workerCpu",
        pattern=api.QUANTITY_PATTERN,
        description="A worker Pod's CPU request (the operator sets its own): a node holds no "
        "more sessions than its allocatable CPU has room for, as the scheduler would refuse them.",
    )
    worker_memory: str | None = Field(
        None,
        alias="workerMemory",
        pattern=api.QUANTITY_PATTERN,
        description="A worker Pod's memory request, likewise against allocatable memory.",
    )

    def pool_for(self, labels: Mapping[str, str]) -> PoolOverride | None:
        return next((p for p in self.pools if p.matches(labels)), None)


# ---------------------------------------------------------------------------------------------
# parsed nodes


class Taint(NamedTuple):
    key: str
    value: str
    effect: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclasses.dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU as placement sees it."""

    index: int
    vram_mib: int  # what the GPU has
    capacity_mib: int  # what sessions may reserve: vram_mib less the headroom


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """The placement-relevant facts about one Node; equal when none of them changed."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    schedulable: bool
    ready: bool
    gpus: tuple[GpuInfo, ...]
    product: str | None
    max_sessions_per_gpu: int | None
    overhead_mib: int
    max_sessions: int | None = None  # worker Pods its allocatable pods/CPU/memory hold

    @property
    def gpu_vram_mib(self) -> int:
        return self.gpus[0].vram_mib if self.gpus else 0

    @property
    def vram_mib(self) -> int:
        """Total VRAM of the node's GPUs."""
        return sum(g.vram_mib for g in self.gpus)

    @property
    def capacity_mib(self) -> int:
        return sum(g.capacity_mib for g in self.gpus)


def _int(value: object) -> int | None:
    """A label or quantity as an int; None when absent or not a plain integer."""
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


_QUANTITY = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?"
)
_SUFFIXES: dict[str | None, float] = {None: 1.0, "m": 1e-3}
_SUFFIXES.update({s: 1000.0**i for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)})
_SUFFIXES.update({s: 1024.0**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)})


def quantity(value: object) -> float | None:
    """A Kubernetes quantity ("500m", "2Gi", "96") as a number; None when absent or not one."""
    if value is None:
        return None
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        return None
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def worker_room(allocatable: Mapping[str, Any], settings: InventorySettings) -> int | None:
    """How many worker Pods a node's allocatable pods, CPU and memory hold; None: no limit
    known. (The node's other Pods are not counted: the scheduler may still refuse earlier.)"""
    room: list[int] = []
    pods = _int(allocatable.get("pods"))
    if pods is not None:
        room.append(pods)
    for resource, request in (("cpu", settings.worker_cpu), ("memory", settings.worker_memory)):
        have, need = quantity(allocatable.get(resource)), quantity(request)
        if have is not None and need:
            room.append(int(have / need + 1e-9))
    return min(room) if room else None


def _ready(conditions: Iterable[Mapping[str, Any]]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def parse_node(body: Mapping[str, Any], settings: InventorySettings | None = None) -> NodeInfo:
    """The GPUs and scheduling facts of a raw Node object (never raises on odd labels)."""
    settings = settings or InventorySettings()
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    labels: dict[str, str] = dict(metadata.get("labels") or {})
    pool = settings.pool_for(labels)

    count = _int(labels.get(LABEL_GPU_COUNT))
    allocatable = _int((status.get("allocatable") or {}).get(RESOURCE_GPU))
    if allocatable is not None:
        replicas = max(_int(labels.get(LABEL_GPU_REPLICAS)) or 1, 1)
        # The device plugin drops unhealthy GPUs from allocatable: never count more than it has.
        physical = allocatable // replicas
        count = physical if count is None else min(count, physical)
    if pool is not None and pool.gpu_count is not None:
        count = pool.gpu_count
    vram = _int(labels.get(LABEL_GPU_MEMORY))
    if pool is not None and pool.vram_mib is not None:
        vram = pool.vram_mib
    product = labels.get(LABEL_GPU_PRODUCT)
    if pool is not None and pool.product is not None:
        product = pool.product
    headroom = settings.headroom_mib
    if pool is not None and pool.headroom_mib is not None:
        headroom = pool.headroom_mib
    max_sessions = settings.max_sessions_per_gpu
    if pool is not None and pool.max_sessions_per_gpu is not None:
        max_sessions = pool.max_sessions_per_gpu
    overhead = settings.overhead_mib
    if pool is not None and pool.overhead_mib is not None:
        overhead = pool.overhead_mib

    gpus: tuple[GpuInfo, ...] = ()
    if count and count > 0 and vram and vram > 0:
        gpus = tuple(GpuInfo(i, vram, max(vram - headroom, 0)) for i in range(count))
    taints = tuple(
        Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
        for t in spec.get("taints") or ()
    )
    return NodeInfo(
        name=str(metadata.get("name") or ""),
        labels=labels,
        taints=taints,
        schedulable=not spec.get("unschedulable", False),
        ready=_ready(status.get("conditions") or ()),
        gpus=gpus,
        product=product,
        max_sessions_per_gpu=max_sessions,
        overhead_mib=overhead,
        max_sessions=worker_room(status.get("allocatable") or {}, settings),
    )


# ---------------------------------------------------------------------------------------------
# exclusion rules


class Exclusion(enum.StrEnum):
    """Why a node cannot take a session; the values read well in an Unschedulable message."""

    UNSCHEDULABLE = "unschedulable"
    NOT_READY = "not ready"
    NO_GPU = "no GPU"
    NODE_SELECTOR = "node selector mismatch"
    TAINT = "untolerated taint"


def untolerated(taints: Iterable[Taint], tolerations: Iterable[api.Toleration]) -> Taint | None:
    """The first taint that keeps the session off the node, if any."""
    tolerations = tuple(tolerations)
    for taint in taints:
        if taint.effect not in BLOCKING_TAINT_EFFECTS:
            continue
        as_dict = taint.as_dict()
        if not any(t.tolerates(as_dict) for t in tolerations):
            return taint
    return None


def exclusion(
    node: NodeInfo,
    node_selector: Iterable[tuple[str, str]],
    tolerations: Iterable[api.Toleration],
    *,
    needs_gpu: bool = True,
) -> Exclusion | None:
    """Why `node` cannot host a session with this selector and these tolerations, or None."""
    if not node.schedulable:
        return Exclusion.UNSCHEDULABLE
    if not node.ready:
        return Exclusion.NOT_READY
    if needs_gpu and not node.gpus:
        return Exclusion.NO_GPU
    if any(node.labels.get(k) != v for k, v in node_selector):
        return Exclusion.NODE_SELECTOR
    if untolerated(node.taints, tolerations) is not None:
        return Exclusion.TAINT
    return None
