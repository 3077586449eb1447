"""Pin a worker Pod to the GPU its session was given: pure manifest fragments.

Two modes, chosen per cluster:

`visible-devices` (default): the Pod requests no `nvidia.com/gpu`. It gets a required node
affinity on its node (`matchFields metadata.name`, so the kube-scheduler still checks CPU,
memory and taints) and `NVIDIA_VISIBLE_DEVICES=<GPU index>`: the NVIDIA container runtime then
mounts only that GPU, which the worker sees as CUDA device 0 (`CUDA_VISIBLE_DEVICES=0`). This is
what lets many sessions share one GPU by VRAM, and it needs the runtime to accept the variable
from unprivileged containers (nvidia-container-toolkit's
`accept-nvidia-visible-devices-envvar-when-unprivileged = true`, its upstream default; off on
some hardened images) and the `nvidia` runtime for the Pod (`runtime_class` when it is not the
node's default). The device plugin does not see these GPUs as allocated, so the GPUs that avatar
sessions use must not also be handed out by it to other Pods: dedicate the pool (a taint the
sessions tolerate).

`resource`: for clusters whose device plugin shares GPUs itself (time-slicing or MPS replicas).
The Pod requests `nvidia.com/gpu: 1` (one replica) and gets the same node affinity; the device
plugin picks the GPU, so the ledger's GPU index is advisory there and `exclusive` isolation is
whatever the plugin's sharing gives.

A session with `gpu: none` gets `NVIDIA_VISIBLE_DEVICES=void`, so a CPU worker that lands on a
GPU node sees no GPU even where `nvidia` is the default runtime.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

from avatar_sdk import api
from avatar_sdk.placement import inventory

ANNOTATION_NODE = f"{api.GROUP}/node"
ANNOTATION_GPU = f"{api.GROUP}/gpu"


class PinningMode(enum.StrEnum):
    VISIBLE_DEVICES = "visible-devices"
    RESOURCE = "resource"


class EnvVar(TypedDict):
    name: str
    value: str


class PodPinning(NamedTuple):
    """What pinning adds to a Pod: affinity, container env and limits, annotations."""

    affinity: dict[str, Any] | None
    env: tuple[EnvVar, ...]
    limits: dict[str, str]
    annotations: dict[str, str]
    runtime_class: str | None = None


def node_affinity(node: str) -> dict[str, Any]:
    """A required node affinity on exactly one node, by name."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            }
        }
    }


def pinning_for(
    placement: api.Placement | None,
    mode: PinningMode = PinningMode.VISIBLE_DEVICES,
    *,
    runtime_class: str | None = None,
    resource_name: str = inventory.RESOURCE_GPU,
) -> PodPinning:
    """The pinning of a session's Pod; `placement` None (or without a GPU) means no GPU."""
    if placement is None or placement.gpu is None:
        return PodPinning(
            affinity=None,
            env=(EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="void"),),
            limits={},
            annotations={},
        )
    annotations = {ANNOTATION_NODE: placement.node, ANNOTATION_GPU: str(placement.gpu)}
    if mode is PinningMode.RESOURCE:
        return PodPinning(
            affinity=node_affinity(placement.node),
            env=(),
            limits={resource_name: "1"},
            annotations=annotations,
            runtime_class=runtime_class,
        )
    return PodPinning(
        affinity=node_affinity(placement.node),
        env=(
            EnvVar(name="NVIDIA_VISIBLE_DEVICES", value=str(placement.gpu)),
            EnvVar(name="CUDA_VISIBLE_DEVICES", value="0"),
            EnvVar(name="NVIDIA_DRIVER_CAPABILITIES", value="compute,utility"),
        ),
        limits={},
        annotations=annotations,
        runtime_class=runtime_class,
    )


def _and_terms(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Merge required node affinities: our constraint joins every existing term (terms are
    ORed, requirements inside a term are ANDed)."""
    merged = copy.deepcopy(existing)
    node_aff = merged.setdefault("nodeAffinity", {})
    required = node_aff.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or []
    our_term = ours["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]
    if not terms:
        required["nodeSelectorTerms"] = [copy.deepcopy(our_term)]
        return merged
    for term in terms:
        term.setdefault("matchFields", []).extend(copy.deepcopy(our_term["matchFields"]))
    required["nodeSelectorTerms"] = terms
    return merged


def apply(
    pod: Mapping[str, Any], pinning: PodPinning, *, container: str | None = None
) -> dict[str, Any]:
    """A copy of `pod` with the pinning added to its spec and to `container` (default: all)."""
    result = copy.deepcopy(dict(pod))
    if pinning.annotations:
        metadata = result.setdefault("metadata", {})
        metadata.setdefault("annotations", {}).update(pinning.annotations)
    spec = result.setdefault("spec", {})
    if pinning.affinity is not None:
        spec["affinity"] = _and_terms(spec.get("affinity") or {}, pinning.affinity)
    if pinning.runtime_class:
        spec["runtimeClassName"] = pinning.runtime_class
    for c in spec.get("containers") or []:
        if container is not None and c.get("name") != container:
            continue
        names = {e["name"] for e in pinning.env}
        c["env"] = [e for e in c.get("env") or [] if e.get("name") not in names] + [
            dict(e) for e in pinning.env
        ]
        if pinning.limits:
            resources = c.setdefault("resources", {})
            resources.setdefault("limits", {}).update(pinning.limits)
    return result
