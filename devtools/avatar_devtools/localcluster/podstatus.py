"""What the simulated kubelet knows about a Pod it runs (`PodRun`, `ContainerRun`), and the Pod
status it reports from that: phase, conditions (their lastTransitionTime kept while their status
holds), container states with exit codes and reasons, and the status of a Pod whose node was
lost. The same inputs give the same status, so writing it again changes nothing in the store."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from avatar_devtools.localcluster import clock, fleet


@dataclasses.dataclass
class ContainerRun:
    name: str
    image: str
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    restart_count: int = 0
    last_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    restart_at: float | None = None
    ready: bool | None = None  # a readiness probe's verdict; None: ready while running
    started: bool | None = None  # a startup probe's verdict; None: started while running
    waiting: tuple[str, str] | None = None  # (reason, message) while it waits to restart


@dataclasses.dataclass
class PodRun:
    """What the kubelet knows about a pod it runs: its containers and its directory."""

    uid: str
    mode: str
    node: str
    pod_ip: str
    containers: dict[str, ContainerRun]
    directory: Path | None = None
    started: bool = False
    running_at: float = 0.0
    start_time: str = ""
    failed: tuple[str, str] | None = None  # (reason, message) of a failure on command
    waiting: tuple[str, str] | None = None  # why the containers have not started
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    host_ip: str = ""


def pod_status(pod: dict[str, Any], run: PodRun, node: fleet.NodeSpec | None) -> dict[str, Any]:
    """The pod status the kubelet reports now; the same inputs give the same status, so
    writing it again is a no-op in the store (no new resourceVersion, no event)."""
    old = pod.get("status") or {}
    spec = pod.get("spec") or {}
    host_ip = node.address if node else ""
    running = run.started and asyncio.get_running_loop().time() >= run.running_at
    policy = spec.get("restartPolicy", "Always")
    containers = [
        run.containers[c["name"]]
        for c in spec.get("containers") or []
        if c["name"] in run.containers
    ]
    entries = [container_status(run, c, running) for c in containers]
    exited = [c for c in containers if c.exit_code is not None]
    restarting = run.failed is None and any(
        policy == "Always" or (policy == "OnFailure" and c.exit_code != 0) for c in exited
    )
    if run.failed is not None:
        phase, reason, message = "Failed", run.failed[0], run.failed[1]
    elif containers and len(exited) == len(containers) and not restarting:
        failed = any(c.exit_code != 0 for c in exited)
        phase, reason, message = ("Failed" if failed else "Succeeded"), "", ""
    else:
        phase, reason, message = ("Running" if running else "Pending"), "", ""
    ready = phase == "Running" and all(e["ready"] for e in entries)
    if phase == "Succeeded":
        not_ready = "PodCompleted"
    elif phase == "Failed":
        not_ready = "PodFailed"
    else:
        not_ready = "ContainersNotReady"
    wanted = {
        "PodReadyToStartContainers": run.started,
        "Initialized": True,
        "Ready": ready,
        "ContainersReady": ready,
        "PodScheduled": True,
    }
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(old, wanted, not_ready),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "qosClass": old.get("qosClass", "BestEffort"),
        "containerStatuses": entries,
    }
    if run.start_time:
        status["startTime"] = run.start_time
    if run.started:
        status["podIP"] = run.pod_ip
        status["podIPs"] = [{"ip": run.pod_ip}]
    if reason:
        status["reason"] = reason
        status["message"] = message
    return status


def container_status(run: PodRun, container: ContainerRun, running: bool) -> dict[str, Any]:
    state: dict[str, Any]
    if run.failed is None and run.waiting is not None:
        state = {"waiting": {"reason": run.waiting[0], "message": run.waiting[1]}}
    elif run.failed is None and container.waiting is not None:
        state = {"waiting": {"reason": container.waiting[0], "message": container.waiting[1]}}
    elif container.exit_code is not None:
        state = {"terminated": terminated(container)}
    elif not running:
        state = {"waiting": {"reason": "ContainerCreating"}}
    else:
        state = {"running": {"startedAt": container.started_at or clock.timestamp()}}
    entry: dict[str, Any] = {
        "name": container.name,
        "image": container.image,
        "imageID": f"localcluster://{container.image}",
        "ready": "running" in state and container.ready is not False,
        "started": "running" in state and container.started is not False,
        "restartCount": container.restart_count,
        "state": state,
        "lastState": container.last_state,
    }
    if "waiting" not in state:
        entry["containerID"] = f"localcluster://{run.uid[:8]}-{container.name}"
    return entry


def terminated(container: ContainerRun) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": container.exit_code,
        "reason": container.reason or ("Completed" if container.exit_code == 0 else "Error"),
        "startedAt": container.started_at,
        "finishedAt": container.finished_at,
    }
    if container.message:
        terminated["message"] = container.message
    return terminated


def conditions(
    old: dict[str, Any], wanted: dict[str, bool], not_ready_reason: str
) -> list[dict[str, Any]]:
    """Pod conditions, keeping lastTransitionTime when a condition's status did not change."""
    previous = {c.get("type"): c for c in old.get("conditions") or []}
    conditions = []
    for kind, value in wanted.items():
        status = "True" if value else "False"
        before = previous.get(kind)
        condition: dict[str, Any] = {"type": kind, "status": status, "lastProbeTime": None}
        if before is not None and before.get("status") == status:
            condition["lastTransitionTime"] = before.get("lastTransitionTime")
        else:
            condition["lastTransitionTime"] = clock.timestamp()
        if not value and kind in ("Ready", "ContainersReady"):
            condition["reason"] = not_ready_reason
        conditions.append(condition)
    for kind, condition in previous.items():
        if kind not in wanted:
            conditions.append(condition)
    return conditions


def lost_status(pod: dict[str, Any], message: str) -> dict[str, Any]:
    status = dict(pod.get("status") or {})
    now = clock.timestamp()
    conditions = [
        c
        for c in status.get("conditions") or []
        if c.get("type") not in ("Ready", "DisruptionTarget")
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "False",
            "reason": "NodeLost",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
    )
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByPodGC",
            "message": "PodGC: node no longer exists",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
    )
    containers = []
    for entry in status.get("containerStatuses") or []:
        entry = dict(entry)
        started = (entry.get("state") or {}).get("running", {}).get("startedAt")
        entry["state"] = {
            "terminated": {
                "exitCode": 137,
                "reason": "NodeLost",
                "startedAt": started,
                "finishedAt": now,
            }
        }
        entry["ready"] = False
        entry["started"] = False
        containers.append(entry)
    status.update(
        {
            "phase": "Failed",
            "reason": "NodeLost",
            "message": message,
            "conditions": conditions,
            "containerStatuses": containers,
        }
    )
    return status
