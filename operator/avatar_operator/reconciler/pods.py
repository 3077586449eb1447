"""The worker Pods: what their phases mean for their sessions.

A Pod that fails, or is deleted, while its session is Starting or Joined is replaced — the same
placement, a `restart` count in its annotation — up to `max_pod_restarts`; then the session ends
with PodFailed. A Pod that exits 0 without the worker having reported an end is PodFailed too (a
worker always says why its session ended). A Pod's own annotations carry what the operator needs
after a restart: its placement, its restart count, its participant id (in its environment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import kopf

from avatar_operator import manifests
from avatar_operator.reconciler import statuses
from avatar_sdk import api, workerenv
from avatar_sdk.objects import Obj, key_of

if TYPE_CHECKING:
    from avatar_operator.reconciler.core import Reconciler

PARTICIPANT_ENV = f"{workerenv.ENV_PREFIX}PARTICIPANT_ID"


def owner_of(body: Obj) -> kopf.Body:
    """kopf's adoption helper takes its Body view of a plain object."""
    return kopf.Body(cast(kopf.RawBody, body))


class Pods:
    """Reacts to worker Pods that failed, finished or went away.

    Several events can report the same loss (the Pod Failed while being deleted, then its
    DELETED, then the periodic Pod list) and their checks run concurrently: each names the Pod
    it saw go, and under the session's lock only the first for the Pod the status still names
    replaces it. A check for a Pod already replaced does nothing, so one loss is one restart,
    and a healthy replacement is never taken for the Pod that went."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._r = reconciler

    async def check(self, body: Obj) -> None:
        """React to the worker Pod's phase: bounded restarts, then PodFailed."""
        r = self._r
        uid = body["metadata"].get("uid", "")
        status = r.status_of(body)
        if status.phase not in (api.Phase.STARTING, api.Phase.JOINED):
            return
        pod = r.memory.pods.get(uid)
        if pod is None:
            record = r.memory.get(key_of(body))
            collected = record is None or record.uid != uid or record.collected
            if status.pod_name and not collected:
                await self._gone(body, status.pod_name, None, "the worker pod was deleted")
            return
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        if phase in ("Failed", "Succeeded") and deleting:
            # stopped by someone else's delete (a drain, an eviction, a user), not by its own
            # end: a kubelet reports the container's exit before the Pod object goes
            await self._gone(body, name, pod, "the worker pod was deleted")
        elif phase == "Failed":
            await self._gone(body, name, pod, failure(pod))
        elif phase == "Succeeded" and status.pod_name in (None, name):
            await r.end(
                body,
                api.EndReason.POD_FAILED,
                "the worker exited without reporting why the session ended",
            )

    async def _gone(self, body: Obj, lost: str, lost_pod: Obj | None, why: str) -> None:
        """Replace the worker Pod named `lost` (its last state `lost_pod`, None when it is
        gone from memory), unless it has been replaced already."""
        r = self._r
        uid = body["metadata"].get("uid", "")
        session_name = body["metadata"]["name"]
        key = key_of(body)
        used_up = False
        async with r.lock(key):
            body = r.memory.body(key) or body
            status = r.status_of(body)
            if status.phase not in (api.Phase.STARTING, api.Phase.JOINED):
                return  # ended while this waited for the lock (its node was lost, say)
            if status.pod_name not in (None, lost):
                return  # replaced already, by a check of the same loss that came first
            current = r.memory.pods.get(uid)
            if current is not None and current["metadata"]["name"] != lost:
                return  # a newer Pod is there already
            if lost_pod is None and current is not None and not _finished(current):
                return  # the Pod came back into memory alive: it did not go
            if lost_pod is None:
                lost_pod = current
            done = (
                restart_of(lost_pod) if lost_pod else manifests.restart_in_name(session_name, lost)
            )
            restart = done + 1
            placement = r.trusted_placement(body, status)
            if restart > r.settings.max_pod_restarts:
                used_up = True
            elif placement is not None:
                await self._replace(body, status, placement, lost, restart, why)
        if used_up:
            await r.end(body, api.EndReason.POD_FAILED, f"{why} (restarts used up)")

    async def _replace(
        self,
        body: Obj,
        status: api.AvatarSessionStatus,
        placement: api.Placement,
        lost: str,
        restart: int,
        why: str,
    ) -> None:
        r = self._r
        uid = body["metadata"].get("uid", "")
        spec = r.spec_of(body)
        await r.kube.delete("Pod", body["metadata"]["namespace"], lost)
        new_pod = manifests.worker_pod(
            body,
            spec,
            placement,
            participant_id=status.participant_id or "",
            settings=r.settings,
            status_url=r.status_url,
            status_ca=r.relay_ca() is not None,
            restart=restart,
        )
        kopf.adopt(new_pod, owner=owner_of(body))
        generation = body["metadata"].get("generation")
        await r.write_status(
            body,
            statuses.restarting(status, generation, why=why, pod_name=new_pod["metadata"]["name"]),
        )
        await r.kube.ensure(new_pod)
        r.memory.pods[uid] = new_pod
        message = f"{why}; restart {restart}"
        r.events.post(body, "Warning", reason="WorkerRestarted", message=message)


def _finished(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Failed", "Succeeded") or bool(pod["metadata"].get("deletionTimestamp"))


def restart_of(pod: Obj) -> int:
    try:
        return int(pod["metadata"].get("annotations", {}).get(manifests.ANNOTATION_RESTARTS, 0))
    except ValueError:
        return 0


def failure(pod: Obj) -> str:
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            return (
                f"the worker exited with code {terminated.get('exitCode')}"
                f" ({terminated.get('reason') or 'Error'})"
            )
    return f"the worker pod failed: {status.get('reason') or status.get('message') or 'unknown'}"


def participant_of(pod: Obj) -> str | None:
    """The participant id a worker Pod was started with (its environment says)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for var in container.get("env") or []:
            if var.get("name") == PARTICIPANT_ENV:
                value = var.get("value")
                return str(value) if value else None
    return None
