"""Warm pools, the operator's side: keep each pool's idle workers, claim one for a session.

What is true lives in the API, as for sessions: a worker's state is its Pod's label
(`starting` → `ready` when it first asks for its session → `claimed`), its GPU is its Pod's
placement annotation, its session is its Pod's owner. A restart or failover rebuilds all of this
from the Pods (`rebuild`); the memory here only makes each step cheap.

* `reconcile(pool)`: idle workers (starting + ready) are brought to `spec.replicas`: new ones
  get a GPU only where one is free and no session waits for one (`Engine.reserve_spare`: a
  spare never takes a session's place), surplus ones go (starting first, then the newest); a
  finished idle worker is deleted and replaced. Then the pool's status, when it changed.
* `claim(session)`: the oldest ready worker of the session's pool, by a conditional patch of
  its Pod (`manifests.claim_patch`: the API server lets one claimer win, 409 for the others,
  who try the next worker). The reservation moves to the session (`Engine.transfer`).
* `assign` / `wait_assignment`: the claimed worker's long-poll (`relay.AssignmentRelay`) gets
  its session's room, ids and tokens.

Events: `Claimed` on the session, `Refill` and `Unschedulable` on the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING

from avatar_operator import kube, manifests
from avatar_operator.pools import manifests as pool_manifests
from avatar_sdk import api, assignment, pools, timestamps
from avatar_sdk.objects import Obj, key_of, resource_version
from avatar_sdk.placement import ledger as placement_ledger
from avatar_sdk.placement import policy as placement_policy

if TYPE_CHECKING:
    from avatar_operator.reconciler.core import Reconciler

logger = logging.getLogger(__name__)

State = pools.PoolWorkerState
CREATE_BATCH = 8  # workers created at once by one pass (a big scale-up goes in steps)
CLAIM_ATTEMPTS = 3  # conditional patches of one worker (each conflict reads it again)
VERSIONS_KEPT = 4096  # workers whose newest resourceVersion is remembered (stale events)


def request_of(template: pools.AvatarPoolTemplate) -> placement_policy.Request:
    """What placement needs to know about a pool's worker (as `Request.from_spec`)."""
    return placement_policy.Request(
        vram_mib=template.resources.effective_vram_mib,
        mode=template.resources.gpu,
        node_selector=tuple(sorted(template.node_selector.items())),
        tolerations=tuple(template.tolerations),
    )


class PoolController:
    """The pools of the namespaces served, and their workers."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._r = reconciler
        self.pools: dict[str, Obj] = {}  # namespace/name → the latest body
        self.workers: dict[str, Obj] = {}  # namespace/pod → an idle worker (starting, ready)
        self.claimed: dict[str, Obj] = {}  # namespace/pod → a claimed worker, while it lives
        self.assignments: dict[str, assignment.Assignment] = {}  # namespace/pod → published
        self.waiting: dict[str, set[str]] = {}  # pool key → sessions waiting (whenEmpty: Wait)
        self._changed: dict[str, asyncio.Event] = {}  # namespace/pod → wakes its long-poll
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._running: set[str] = set()
        self._reported: dict[str, Obj] = {}  # pool key → the status last written
        self._versions: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._claiming: set[str] = set()  # workers a claim of this replica is patching now
        self._promises: dict[str, str] = {}  # session → pool: queued first, not yet admitted
        self._promised: collections.Counter[str] = collections.Counter()  # pool → promises

    # ---------------------------------------------------------------------------------------
    # state from the API

    def rebuild(self, pool_bodies: list[Obj], pods: list[Obj]) -> list[tuple[str, api.Placement]]:
        """At start-up: pools and their workers; returns the idle workers' reservations."""
        for body in pool_bodies:
            self.pools[key_of(body)] = body
        reservations = []
        for pod in pods:
            state = pool_manifests.state_of(pod)
            if state is None or pool_manifests.is_deleting(pod):
                continue
            key = key_of(pod)
            if state is State.CLAIMED:
                self.claimed[key] = pod
                continue
            self.workers[key] = pod
            placement = manifests.placement_from_pod(pod)
            if placement is not None and not pool_manifests.has_finished(pod):
                meta = pod["metadata"]
                reservations.append(
                    (pool_manifests.reservation_key(meta["namespace"], meta["name"]), placement)
                )
        return reservations

    def observe_pool(self, event_type: str | None, body: Obj) -> None:
        key = key_of(body)
        if event_type == "DELETED":
            self.pools.pop(key, None)
            self._reported.pop(key, None)
            for worker_key, pod in list(self.workers.items()):
                if pool_manifests.pool_of(pod) == body["metadata"][
                    "name"
                ] and worker_key.startswith(f"{body['metadata']['namespace']}/"):
                    self._drop_idle(worker_key, pod)
                    self._r.tasks.spawn(self._delete_worker(pod), f"delete {worker_key}")
            return
        known = self.pools.get(key)
        if known is None or resource_version(body) >= resource_version(known):
            self.pools[key] = body
        self.request(key)

    def observe_pod(self, event_type: str | None, pod: Obj) -> None:
        """A pool worker's event (the Reconciler hands a claimed one to its session too)."""
        state = pool_manifests.state_of(pod)
        if state is None:
            return
        key = key_of(pod)
        meta = pod["metadata"]
        pool_key = f"{meta['namespace']}/{pool_manifests.pool_of(pod)}"
        gone = event_type == "DELETED"
        if not self._newest(key, pod, gone):
            return  # older than what is known (a claim's answer comes before its event)
        if state is State.CLAIMED:
            # Claimed by someone else (another replica's claim, seen in its event): no longer
            # idle, but its GPU stays taken, under the worker's key until its session takes it
            # over (`Reconciler._start_warm`), or until the worker goes. (Released here, a new
            # spare could be placed on that GPU before the session adopts it: over-committed.)
            self.workers.pop(key, None)
            if gone or pool_manifests.has_finished(pod) or pool_manifests.is_deleting(pod):
                self._release_spare(pod)
            if gone or pool_manifests.has_finished(pod):
                if self.claimed.pop(key, None) is not None or gone:
                    self._r.tasks.spawn(self._delete_secret(pod), f"delete secret {key}")
                self.assignments.pop(key, None)
            else:
                self.claimed[key] = pod
            self._wake(key)
            self.request(pool_key)
            return
        if gone or pool_manifests.has_finished(pod):
            self._drop_idle(key, self.workers.get(key) or pod)
            if not gone:
                self._r.tasks.spawn(self._delete_worker(pod), f"delete finished {key}")
            else:
                self._r.tasks.spawn(self._delete_secret(pod), f"delete secret {key}")
            self._wake(key)
        else:
            known = self.workers.get(key)
            if known is None and not pool_manifests.is_deleting(pod):
                self._adopt_spare(pod)  # made by another replica (a failover): its GPU is taken
            if known is None or resource_version(pod) >= resource_version(known):
                self.workers[key] = pod
        self.request(pool_key)

    def _newest(self, key: str, pod: Obj, gone: bool) -> bool:
        """Whether `pod` is the newest copy of its worker seen (by resourceVersion). A stale
        event must not bring back as idle a worker claimed or let go since: counted again, it
        could be deleted as surplus under its session."""
        version = resource_version(pod)
        if version and version < self._versions.get(key, 0):
            return False
        if gone:
            self._versions.pop(key, None)
        else:
            self._versions[key] = max(version, self._versions.get(key, 0))
            self._versions.move_to_end(key)
            while len(self._versions) > VERSIONS_KEPT:
                self._versions.popitem(last=False)
        return True

    def _drop_idle(self, key: str, pod: Obj | None) -> None:
        """An idle worker is no longer the pool's to count: its GPU goes back."""
        if self.workers.pop(key, None) is None or pod is None:
            return
        self._release_spare(pod)

    def _adopt_spare(self, pod: Obj) -> None:
        """An idle worker first seen in an event: the GPU its Pod was placed on is recorded
        (idempotent: the worker's own creation recorded it already)."""
        placement = manifests.placement_from_pod(pod)
        if placement is None:
            return
        meta = pod["metadata"]
        key = pool_manifests.reservation_key(meta["namespace"], meta["name"])
        try:
            self._r.placement.adopt(key, placement)
        except placement_ledger.Conflict as exc:
            logger.error("a warm worker's GPU is recorded twice", extra={"error": str(exc)})

    def _release_spare(self, pod: Obj) -> None:
        """The worker's own reservation, if it still holds one, goes back."""
        meta = pod["metadata"]
        released = self._r.placement.release(
            pool_manifests.reservation_key(meta["namespace"], meta["name"])
        )
        self._r.admit_all(released.admitted)

    def _wake(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    # ---------------------------------------------------------------------------------------
    # keeping the pool

    def request(self, pool_key: str) -> None:
        """Reconcile a pool soon (coalesced: one pass at a time per pool, then one more if
        something changed meanwhile)."""
        if pool_key not in self.pools:
            return
        self._dirty.add(pool_key)
        if pool_key not in self._running:
            self._running.add(pool_key)
            self._r.tasks.spawn(self._run(pool_key), f"pool {pool_key}")

    async def _run(self, pool_key: str) -> None:
        try:
            while pool_key in self._dirty:
                self._dirty.discard(pool_key)
                try:
                    await self.reconcile(pool_key)
                except kube.NotFound as exc:
                    if pool_key in self.pools:  # not the pool deleted under the pass: say it
                        self._r.metrics.reconcile_errors.labels(step="pool").inc()
                        logger.warning("pool pass failed: %s", exc, extra={"pool": pool_key})
                except kube.KubeError as exc:
                    self._r.metrics.reconcile_errors.labels(step="pool").inc()
                    logger.warning("pool pass failed: %s", exc, extra={"pool": pool_key})
        finally:
            self._running.discard(pool_key)

    def sweep(self) -> None:
        for pool_key in list(self.pools):
            self.request(pool_key)

    def lock(self, pool_key: str) -> asyncio.Lock:
        return self._locks.setdefault(pool_key, asyncio.Lock())

    def idle_of(self, pool_key: str) -> list[Obj]:
        namespace, name = pool_key.split("/", 1)
        return [
            pod
            for key, pod in self.workers.items()
            if key.startswith(f"{namespace}/")
            and pool_manifests.pool_of(pod) == name
            and not pool_manifests.is_deleting(pod)
            and not pool_manifests.has_finished(pod)
        ]

    def claimed_of(self, pool_key: str) -> int:
        namespace, name = pool_key.split("/", 1)
        return sum(
            1
            for key, pod in self.claimed.items()
            if key.startswith(f"{namespace}/") and pool_manifests.pool_of(pod) == name
        )

    async def reconcile(self, pool_key: str) -> None:
        body = self.pools.get(pool_key)
        if body is None:
            return
        r = self._r
        async with self.lock(pool_key):
            generation = body["metadata"].get("generation")
            try:
                spec = pools.parse_pool_spec(body.get("spec"))
            except api.SpecError as exc:
                await self._write_status(body, generation, unschedulable=f"invalid spec: {exc}")
                return
            idle = self.idle_of(pool_key)
            unschedulable = ""
            missing = spec.replicas - len(idle)
            if missing > 0 and not (r.status_url or "").startswith("https://"):
                unschedulable = (
                    "warm workers get their join tokens from the status relay, which serves "
                    "them over TLS only: configure the relay's certificate (statusRelay.tls)"
                )
            elif missing > 0:
                created = 0
                for _ in range(min(missing, CREATE_BATCH)):
                    why = await self._create_worker(body, spec)
                    if why:
                        unschedulable = why
                        break
                    created += 1
                if created:
                    r.events.post(
                        body,
                        "Normal",
                        reason="Refill",
                        message=f"started {created} warm worker(s) "
                        f"({len(idle) + created}/{spec.replicas} idle)",
                    )
                if created == CREATE_BATCH and missing > created:
                    self._dirty.add(pool_key)  # the rest in the next pass
            elif missing < 0:
                # surplus: the starting ones first (nothing prepared yet), then the newest
                newest_first = sorted(
                    idle, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True
                )
                surplus = sorted(
                    (p for p in newest_first if key_of(p) not in self._claiming),
                    key=lambda p: pool_manifests.state_of(p) is State.READY,
                )[:-missing]
                for pod in surplus:
                    self._drop_idle(key_of(pod), pod)
                    await self._delete_worker(pod)
            await self._write_status(body, generation, unschedulable=unschedulable)

    async def _create_worker(self, body: Obj, spec: pools.AvatarPoolSpec) -> str:
        """One more warm worker: its GPU, its Secret, its Pod. '' or why it could not be."""
        r = self._r
        meta = body["metadata"]
        namespace = meta["namespace"]
        worker = pool_manifests.worker_name(meta["name"])
        key = pool_manifests.reservation_key(namespace, worker)
        request = request_of(spec.template)
        placement: api.Placement | None = None
        if request.needs_gpu:
            placement = r.placement.reserve_spare(key, request)
            if placement is None:
                return (
                    f"no GPU has {request.vram_mib} MiB free for another warm worker "
                    "(or sessions are waiting for one: they go first)"
                )
        ca = r.relay_ca()
        try:
            secret = pool_manifests.worker_secret(
                body,
                worker,
                token=assignment.worker_token(r.relay_key, namespace, worker),
                status_ca=ca,
            )
            await r.kube.create(secret, answer=False)
            pod = pool_manifests.worker_pod(
                body,
                spec,
                worker,
                placement,
                settings=r.settings,
                status_url=r.status_url or "",
                status_ca=ca is not None,
            )
            created = await r.kube.create(pod)
        except BaseException:
            r.admit_all(r.placement.release(key).admitted)
            with contextlib.suppress(kube.KubeError):
                await r.kube.delete("Secret", namespace, worker)
            raise
        if key_of(body) not in self.pools:  # the pool was deleted meanwhile
            r.admit_all(r.placement.release(key).admitted)
            await self._delete_worker(created)
            return "the pool was deleted"
        self.workers[key_of(created)] = created
        self._newest(key_of(created), created, False)
        return ""

    async def _delete_worker(self, pod: Obj) -> None:
        meta = pod["metadata"]
        await self._r.kube.delete("Pod", meta["namespace"], meta["name"])
        await self._delete_secret(pod)

    async def _delete_secret(self, pod: Obj) -> None:
        meta = pod["metadata"]
        await self._r.kube.delete("Secret", meta["namespace"], meta["name"])

    async def _write_status(self, body: Obj, generation: object, *, unschedulable: str) -> None:
        pool_key = key_of(body)
        idle = self.idle_of(pool_key)
        ready = sum(1 for pod in idle if pool_manifests.state_of(pod) is State.READY)
        starting = len(idle) - ready
        claimed = self.claimed_of(pool_key)
        try:
            wanted = pools.parse_pool_spec(body.get("spec")).replicas
        except api.SpecError:
            wanted = 0
        namespace, name = pool_key.split("/", 1)
        gauge = self._r.metrics.pool_workers
        for state, count in (("starting", starting), ("ready", ready), ("claimed", claimed)):
            gauge.labels(namespace=namespace, pool=name, state=state).set(count)
        current = pools.parse_pool_status(body.get("status"))
        gen = generation if isinstance(generation, int) else None
        conditions = pools.set_pool_condition(
            current.conditions,
            pools.PoolConditionType.READY,
            ready >= wanted,
            "WorkersReady" if ready >= wanted else "WorkersStarting",
            f"{ready}/{wanted} idle workers ready",
            generation=gen,
        )
        progressing = not unschedulable
        conditions = pools.set_pool_condition(
            conditions,
            pools.PoolConditionType.PROGRESSING,
            progressing,
            "Scaled" if progressing else "Unschedulable",
            unschedulable or f"{len(idle)} idle, {claimed} serving sessions",
            generation=gen,
        )
        status = pools.AvatarPoolStatus(
            replicas=len(idle),
            ready_replicas=ready,
            starting=starting,
            claimed=claimed,
            selector=pools.idle_selector(name),
            observed_generation=gen,
            conditions=conditions,
        ).to_wire()
        if status == self._reported.get(pool_key) or status == body.get("status"):
            return
        if unschedulable and current.conditions != conditions:
            self._r.events.post(body, "Warning", reason="Unschedulable", message=unschedulable)
        updated = await self._r.kube.patch_pool_status(namespace, name, status)
        self._reported[pool_key] = status
        if updated and resource_version(updated) >= resource_version(
            self.pools.get(pool_key) or {}
        ):
            self.pools[pool_key] = updated

    # ---------------------------------------------------------------------------------------
    # claiming

    def pool_for(self, namespace: str, spec: api.AvatarSessionSpec) -> tuple[Obj | None, str]:
        """The pool a session names (None and why when there is none)."""
        if spec.pool_ref is None:
            return None, ""
        body = self.pools.get(f"{namespace}/{spec.pool_ref.name}")
        if body is None:
            return None, f'AvatarPool "{spec.pool_ref.name}" does not exist in {namespace}'
        return body, ""

    def template_of(
        self, namespace: str, spec: api.AvatarSessionSpec
    ) -> pools.AvatarPoolTemplate | None:
        body, _ = self.pool_for(namespace, spec)
        if body is None:
            return None
        try:
            return pools.parse_pool_spec(body.get("spec")).template
        except api.SpecError:
            return None

    def when_empty(self, pool: Obj) -> pools.PoolFallback:
        try:
            return pools.parse_pool_spec(pool.get("spec")).when_empty
        except api.SpecError:
            return pools.PoolFallback.COLD

    async def claim(self, session: Obj, pool: Obj) -> Obj | None:
        """Claim a ready worker of `pool` for `session`: the claimed Pod, or None if none was
        ready (or every one was claimed by someone else first).

        No lock is held across the API call: each claimer takes the oldest ready worker that no
        other claim of this replica is trying (chosen and marked with no await between), so a
        burst's claims go out together instead of one after the other; the conditional patch
        still decides between replicas."""
        pool_key = key_of(pool)
        tried: set[str] = set()
        while True:
            candidates = [
                pod
                for pod in self.idle_of(pool_key)
                if pool_manifests.state_of(pod) is State.READY
                and key_of(pod) not in self._claiming
                and key_of(pod) not in tried
            ]
            if not candidates:
                return None
            pod = min(
                candidates,
                key=lambda p: (
                    (p["metadata"].get("annotations") or {}).get(
                        pool_manifests.ANNOTATION_READY_AT, ""
                    ),
                    p["metadata"]["name"],
                ),
            )
            key = key_of(pod)
            tried.add(key)
            self._claiming.add(key)
            try:
                claimed = await self._claim_one(session, pod)
            finally:
                self._claiming.discard(key)
            if claimed is None:
                continue
            self.workers.pop(key, None)  # the reservation moves with it (`transfer`)
            self.claimed[key] = claimed
            self._newest(key, claimed, False)  # the watch's older copies are stale now
            self.request(pool_key)  # refill
            return claimed

    async def _claim_one(self, session: Obj, pod: Obj) -> Obj | None:
        """The conditional claim patch; on a conflict the Pod is read again, and claimed if it
        is still ready (its status changed, say), else left to whoever changed it."""
        meta = pod["metadata"]
        for _ in range(CLAIM_ATTEMPTS):
            try:
                return await self._r.kube.patch(
                    "Pod", meta["namespace"], meta["name"], pool_manifests.claim_patch(pod, session)
                )
            except kube.NotFound:
                return None
            except kube.Conflict:
                try:
                    pod = await self._r.kube.read_pod(meta["namespace"], meta["name"])
                except kube.NotFound:
                    return None
                if pool_manifests.state_of(pod) is not State.READY or pool_manifests.is_gone(pod):
                    logger.info("worker taken first", extra={"worker": meta["name"]})
                    return None
        return None

    def promise(self, session_key: str, session: Obj) -> bool:
        """Whether a session about to be queued for admission names a pool with a ready worker
        that no session queued before it was promised: it is then admitted first. (A guess
        that decides order only: the claim still decides who gets a worker.)"""
        if session_key in self._promises:
            return True
        if (session.get("status") or {}).get("phase"):
            return False  # resumed or in progress: its place in line is not a new claim's
        ref = ((session.get("spec") or {}).get("poolRef") or {}).get("name")
        if not isinstance(ref, str):
            return False
        pool_key = f"{session['metadata']['namespace']}/{ref}"
        ready = sum(
            1
            for pod in self.idle_of(pool_key)
            if pool_manifests.state_of(pod) is State.READY and key_of(pod) not in self._claiming
        )
        if self._promised[pool_key] >= ready:
            return False
        self._promises[session_key] = pool_key
        self._promised[pool_key] += 1
        return True

    def keep_promise(self, session_key: str) -> None:
        """The session's admission has started: its promise is no longer outstanding."""
        pool_key = self._promises.pop(session_key, None)
        if pool_key is not None:
            self._promised[pool_key] -= 1
            if self._promised[pool_key] <= 0:
                del self._promised[pool_key]

    def wait_for_pool(self, pool: Obj, session_key: str) -> None:
        """A session waits for a ready worker (`whenEmpty: Wait`)."""
        self.waiting.setdefault(key_of(pool), set()).add(session_key)

    # ---------------------------------------------------------------------------------------
    # assignments

    def worker(self, namespace: str, name: str) -> Obj | None:
        key = f"{namespace}/{name}"
        return self.workers.get(key) or self.claimed.get(key)

    def assign(self, pod: Obj, given: assignment.Assignment) -> None:
        key = key_of(pod)
        self.assignments[key] = given
        self._wake(key)

    def changed(self, namespace: str, name: str) -> asyncio.Event:
        return self._changed.setdefault(f"{namespace}/{name}", asyncio.Event())

    async def mark_ready(self, pod: Obj) -> None:
        """The worker asked for its session: it is prepared. starting → ready (conditional:
        a Pod changed meanwhile is read again), then sessions waiting for the pool go."""
        r = self._r
        meta = pod["metadata"]
        for _ in range(3):
            if pool_manifests.state_of(pod) is not State.STARTING:
                break
            try:
                pod = await r.kube.patch(
                    "Pod",
                    meta["namespace"],
                    meta["name"],
                    pool_manifests.ready_patch(pod, timestamps.format_micro(api.now())),
                )
            except kube.Conflict:
                try:
                    pod = await r.kube.read_pod(meta["namespace"], meta["name"])
                except kube.NotFound:
                    return
                continue
            except kube.NotFound:
                return
            break
        if pool_manifests.state_of(pod) is State.READY:
            key = key_of(pod)
            self._newest(key, pod, False)
            if key in self.workers:
                self.workers[key] = pod
            pool_key = f"{meta['namespace']}/{pool_manifests.pool_of(pod)}"
            for session_key in sorted(self.waiting.pop(pool_key, set())):
                r.request_admission(session_key)
            self.request(pool_key)
