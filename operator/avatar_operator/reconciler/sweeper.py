"""The sweep: what no watch event announces — time passing, and events that never came.

Every `sweep_interval_seconds` it looks at every session: join timeouts, maximum durations and
idle timeouts end live ones; finished ones are collected and deleted `ttlSecondsAfterFinished`
after they ended; sessions whose admission failed on the API are queued again. Nodes NotReady
for `node_lost_grace_seconds` end their sessions with NodeLost. Every `POD_RESYNC_SECONDS` the
worker Pods are listed, to find one deleted while still Pending (the Pod watch does not stream
Pending Pods, so its DELETED event never comes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from avatar_operator import kube, manifests
from avatar_sdk import api, timestamps
from avatar_sdk.objects import Obj, key_of

if TYPE_CHECKING:
    from avatar_operator.reconciler.core import Reconciler

logger = logging.getLogger(__name__)

RETRY_SCHEDULED_SECONDS = 5.0  # a placed session waiting for its credentials tries again
POD_RESYNC_SECONDS = 30.0  # how often the worker Pods are listed (see `resync_pods`)


def _seconds(value: object) -> float | None:
    moment = timestamps.parse(value)
    return moment.timestamp() if moment is not None else None


def node_ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return True  # a node without conditions (a fresh simulated node) counts as ready


class Sweeper:
    """The periodic pass over sessions, Nodes and worker Pods."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._r = reconciler
        self._not_ready_since: dict[str, float] = {}  # node name → when it was first NotReady
        self.pod_resync_seconds = POD_RESYNC_SECONDS
        self._last_pod_resync = reconciler.clock()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._r.settings.sweep_interval_seconds)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweep failed")

    async def sweep(self) -> None:
        r = self._r
        now = r.clock()
        # the queue's anti-starvation hold is time-based: give it its chance every sweep
        r.admit_all(r.placement.reevaluate())
        r.pools.sweep()
        if now - self._last_pod_resync >= self.pod_resync_seconds:
            self._last_pod_resync = now
            try:
                await self.resync_pods()
            except kube.KubeError as exc:
                r.metrics.reconcile_errors.labels(step="resync").inc()
                logger.warning("could not list the worker pods", extra={"error": str(exc)})
        for record in r.memory:
            try:
                await self._sweep_one(record.body, now)
            except kube.KubeError as exc:
                r.metrics.reconcile_errors.labels(step="sweep").inc()
                logger.warning(
                    "sweep step failed", extra={"session": record.key, "error": str(exc)}
                )
        for name, node in list(r.memory.nodes.items()):
            if node_ready(node):
                self._not_ready_since.pop(name, None)
                continue
            since = self._not_ready_since.setdefault(name, now)
            if now - since >= self._r.settings.node_lost_grace_seconds:
                await r.node_lost(name, f"NotReady for {int(now - since)} s")

    async def _sweep_one(self, body: Obj, now: float) -> None:
        r = self._r
        status = r.memory.status_of(body)
        try:
            spec = r.memory.spec_of(body)
        except api.SpecError:
            return
        lifetime = spec.lifetime
        phase = status.phase
        key = key_of(body)
        record = r.memory.get(key)
        if record is None:
            return
        if phase is not None and phase.finished:
            ended = _seconds(status.ended_at)
            if not record.collected:
                await r.collect(body)
            expired = ended is not None and now - ended >= lifetime.ttl_seconds_after_finished
            meta = body["metadata"]
            if expired and await r.kube.delete_session(meta["namespace"], meta["name"]):
                logger.info("deleted finished session", extra={"session": key})
            return
        if phase is None:
            # The watchdog: whatever failed while admitting it (the API, a bug), a session
            # never stays without a phase past its join timeout.
            if record.first_attempt and now - record.first_attempt >= lifetime.join_timeout_seconds:
                why = record.last_error or "its status could not be written"
                await r.end(
                    body,
                    api.EndReason.JOIN_TIMEOUT,
                    f"the operator could not start it within {lifetime.join_timeout_seconds} s "
                    f"({why})",
                )
                return
            if now - record.last_attempt < RETRY_SCHEDULED_SECONDS:
                return
            record.last_attempt = now
            if record.start_patch is not None:
                r.report_start_soon(key)  # started; its status write failed or waits
            else:
                r.request_admission(key)  # an admit that failed on the API, or still queued
            return
        if phase in (api.Phase.SCHEDULED, api.Phase.STARTING):
            started = _seconds(status.scheduled_at) or r.arrival(body)
            if now - started >= lifetime.join_timeout_seconds:
                await r.end(
                    body,
                    api.EndReason.JOIN_TIMEOUT,
                    f"the worker did not join within {lifetime.join_timeout_seconds} s",
                )
                return
            if (
                phase is api.Phase.SCHEDULED
                and now - record.last_attempt >= RETRY_SCHEDULED_SECONDS
            ):
                r.request_admission(key)
        elif phase is api.Phase.JOINED:
            joined = _seconds(status.joined_at) or now
            if now - joined >= lifetime.max_duration_seconds:
                await r.end(
                    body,
                    api.EndReason.MAX_DURATION,
                    f"the session reached its maximum duration ({lifetime.max_duration_seconds} s)",
                )
                return
            if lifetime.idle_timeout_seconds:
                activity = _seconds(status.playback.last_activity_at if status.playback else None)
                last = max(joined, activity or 0)
                if now - last >= lifetime.idle_timeout_seconds:
                    await r.end(
                        body,
                        api.EndReason.IDLE_TIMEOUT,
                        f"no audio from the agent for {lifetime.idle_timeout_seconds} s",
                    )

    async def resync_pods(self) -> None:
        """Find worker Pods that are gone without a DELETED event, and act as if it came.

        The Pod watch streams only Pods that have left Pending (`handlers.py`: three of a Pod's
        four events in a normal start are Pending ones that nothing here acts on). A Pod that is
        deleted while still Pending therefore never arrives as DELETED; this periodic list of
        the worker Pods finds it. Only Pods known before the list was asked for, and not seen
        since, count as gone: one created while the list was on its way is not missing.
        """
        r = self._r
        known = dict(r.memory.pods)
        known_spares = dict(r.pools.workers)
        present: set[tuple[str, str]] = set()
        for namespace in r.namespaces():
            for pod in await r.kube.list_pods(manifests.SELECTOR, namespace):
                meta = pod["metadata"]
                present.add((meta["namespace"], meta["name"]))
        for uid, pod in known.items():
            meta = pod["metadata"]
            if r.memory.pods.get(uid) is pod and (meta["namespace"], meta["name"]) not in present:
                logger.info("worker pod gone while pending", extra={"pod": meta["name"]})
                r.observe_pod("DELETED", pod)
        for key, pod in known_spares.items():
            meta = pod["metadata"]
            if r.pools.workers.get(key) is pod and (meta["namespace"], meta["name"]) not in present:
                logger.info("warm worker gone while pending", extra={"pod": meta["name"]})
                r.observe_pod("DELETED", pod)
