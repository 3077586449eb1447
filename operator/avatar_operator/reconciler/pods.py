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
from avatar_sdk import api, workerenv
from avatar_sdk.objects import Obj, key_of

if TYPE_CHECKING:
    from avatar_operator.reconciler.core import Reconciler

PARTICIPANT_ENV = f"{workerenv.ENV_PREFIX}PARTICIPANT_ID"


def owner_of(body: Obj) -> kopf.Body:
    """kopf's adoption helper takes its Body view of a plain object."""
    return kopf.Body(cast(kopf.RawBody, body))


class Pods:
    """Reacts to worker Pods that failed, finished or went away."""

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
                await self._gone(body, status, "the worker pod was deleted")
            return
        phase = (pod.get("status") or {}).get("phase")
        deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        if phase in ("Failed", "Succeeded") and deleting:
            # stopped by someone else's delete (a drain, an eviction, a user), not by its own
            # end: a kubelet reports the container's exit before the Pod object goes
            await self._gone(body, status, "the worker pod was deleted")
        elif phase == "Failed":
            await self._gone(body, status, failure(pod))
        elif phase == "Succeeded":
            await r.end(
                body,
                api.EndReason.POD_FAILED,
                "the worker exited without reporting why the session ended",
            )

    async def _gone(self, body: Obj, status: api.AvatarSessionStatus, why: str) -> None:
        r = self._r
        uid = body["metadata"].get("uid", "")
        pod = r.memory.pods.get(uid)
        restart = (restart_of(pod) if pod else 0) + 1
        if restart > r.settings.max_pod_restarts:
            await r.end(body, api.EndReason.POD_FAILED, f"{why} (restarts used up)")
            return
        key = key_of(body)
        async with r.lock(key):
            body = r.memory.body(key) or body
            status = r.status_of(body)
            if status.phase not in (api.Phase.STARTING, api.Phase.JOINED):
                return  # ended while this waited for the lock (its node was lost, say)
            placement = r.trusted_placement(body, status)
            spec = r.spec_of(body)
            if placement is None:
                return
            if pod is not None:
                await r.kube.delete("Pod", body["metadata"]["namespace"], pod["metadata"]["name"])
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
            await r.write_status(
                body,
                {
                    "podName": new_pod["metadata"]["name"],
                    "message": f"{why}; restarting the worker",
                },
            )
            await r.kube.ensure(new_pod)
            r.memory.pods[uid] = new_pod
            message = f"{why}; restart {restart}"
            r.events.post(body, "Warning", reason="WorkerRestarted", message=message)


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
