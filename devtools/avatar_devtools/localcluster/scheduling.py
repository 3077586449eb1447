"""The scheduling predicates the simulated kubelet binds Pods by, as kube-scheduler words them:
node selector, required node affinity (`matchExpressions` on labels, `matchFields` on the name),
taints and tolerations (a cordoned node's `unschedulable` taint too), and what is left of the
node's allocatable pods, CPU, memory and `nvidia.com/gpu` after the requests of the Pods bound to
it (NodeResourcesFit: "Too many pods", "Insufficient cpu"). Pure functions of the Pod and the
Node."""

from __future__ import annotations

from typing import Any, NamedTuple

from avatar_devtools.localcluster import fleet
from avatar_sdk.placement.inventory import quantity

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        wanted = container.get("resources") or {}
        value = (wanted.get("limits") or {}).get(fleet.GPU_RESOURCE) or (
            wanted.get("requests") or {}
        ).get(fleet.GPU_RESOURCE)
        if value:
            total += int(str(value))
    return total


class Usage(NamedTuple):
    """What the Pods bound to a node request, summed (terminal Pods excluded)."""

    pods: int = 0
    cpu: float = 0.0  # cores
    memory: float = 0.0  # bytes
    gpus: int = 0

    def plus(self, pod: dict[str, Any]) -> Usage:
        cpu, memory = requests(pod)
        return Usage(
            self.pods + 1, self.cpu + cpu, self.memory + memory, self.gpus + gpu_request(pod)
        )


def requests(pod: dict[str, Any]) -> tuple[float, float]:
    """A Pod's CPU (cores) and memory (bytes) requests: its containers' sum, or an init
    container's when larger; a limit stands for a missing request, as the API server defaults."""

    def of(container: dict[str, Any]) -> tuple[float, float]:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return quantity(wanted.get("cpu")) or 0.0, quantity(wanted.get("memory")) or 0.0

    spec = pod.get("spec") or {}
    main = [of(c) for c in spec.get("containers") or []]
    init = [of(c) for c in spec.get("initContainers") or []]
    cpu = max([sum(c for c, _ in main), *(c for c, _ in init)], default=0.0)
    memory = max([sum(m for _, m in main), *(m for _, m in init)], default=0.0)
    return cpu, memory


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        key = toleration.get("key")
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and toleration.get("value", "") == taint.get("value", "")
        ):
            return True
    return False


def term_matches(term: dict[str, Any], labels: dict[str, str], node_name: str) -> bool:
    for expression in term.get("matchExpressions") or []:
        if not expression_matches(expression, labels.get(expression.get("key", ""))):
            return False
    for expression in term.get("matchFields") or []:
        value = node_name if expression.get("key") == "metadata.name" else None
        if not expression_matches(expression, value):
            return False
    return bool(term.get("matchExpressions") or term.get("matchFields"))


def expression_matches(expression: dict[str, Any], value: str | None) -> bool:
    operator = expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and values:
        try:
            number, bound = int(value), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def unfit(pod: dict[str, Any], node: dict[str, Any], in_use: Usage) -> str | None:
    """Why `pod` cannot go on `node` (kube-scheduler's words), or None when it fits."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    node_spec = node.get("spec") or {}
    if node_spec.get("unschedulable") and not tolerates(
        spec.get("tolerations") or [], {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
    ):
        return "node(s) were unschedulable"
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return "node(s) didn't match Pod's node affinity/selector"
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required and not any(
        term_matches(term, labels, node["metadata"]["name"])
        for term in required.get("nodeSelectorTerms") or []
    ):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            spec.get("tolerations") or [], taint
        ):
            return (
                "node(s) had untolerated taint {"
                + f"{taint['key']}: {taint.get('value', '')}"
                + "}"
            )
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    pods = quantity(allocatable.get("pods"))
    if pods is not None and in_use.pods + 1 > pods:
        return "Too many pods"
    cpu, memory = requests(pod)
    have_cpu, have_memory = quantity(allocatable.get("cpu")), quantity(allocatable.get("memory"))
    if cpu and have_cpu is not None and in_use.cpu + cpu > have_cpu + 1e-9:
        return "Insufficient cpu"
    if memory and have_memory is not None and in_use.memory + memory > have_memory:
        return "Insufficient memory"
    wanted = gpu_request(pod)
    if wanted and wanted > int(allocatable.get(fleet.GPU_RESOURCE, 0)) - in_use.gpus:
        return f"Insufficient {fleet.GPU_RESOURCE}"
    return None
