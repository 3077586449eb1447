"""The coordinator: turns watch events, workers' reports and the sweep into API writes.

See the package's docstring for the life cycle and the order of writes. This module holds the
steps that need the API (admit → start → observe → end → collect); what they decide comes from
`statuses` (pure patches), `tokens` (join tokens) and `avatar_sdk.placement` (which GPU), and
what they remember lives in `memory`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import kopf

from avatar_operator import kube, manifests, metrics
from avatar_operator import settings as settings_mod
from avatar_operator.pools import controller as pool_controller
from avatar_operator.pools import manifests as pool_manifests
from avatar_operator.reconciler import (
    admission,
    background,
    memory,
    pods,
    statuses,
    sweeper,
    tokens,
)
from avatar_sdk import api, assignment, credentials, pools, reports, timestamps, workerenv
from avatar_sdk.objects import Obj, key_of, merge_patch
from avatar_sdk.placement import engine as placement_engine
from avatar_sdk.placement import ledger as placement_ledger
from avatar_sdk.placement import policy as placement_policy

logger = logging.getLogger(__name__)

PARTICIPANT_ENV = pods.PARTICIPANT_ENV
# While sessions wait to be started, work that can wait yields to them, for at most this long:
REPORT_MAX_DELAY = 2.0  # seconds; a worker's report (Joined, playback) is answered late
START_REPORT_MAX_DELAY = 3.0  # seconds; the status Starting of a session whose Pod exists
START_REPORTERS = 4  # Starting statuses written at once
WORKER_REPORT_MIN_INTERVAL = 0.5  # s between writes of one session's reports (workers send ≤ 1/s)


def placement_settings(settings: settings_mod.OperatorSettings) -> placement_engine.Settings:
    """The chart's placement settings, with the worker Pod's requests unless they set their
    own: a node then takes no more sessions than the scheduler would bind to it."""
    inventory = settings.placement.inventory
    inventory = inventory.model_copy(
        update={
            "worker_cpu": inventory.worker_cpu or settings.worker_cpu,
            "worker_memory": inventory.worker_memory or settings.worker_memory,
        }
    )
    return settings.placement.model_copy(update={"inventory": inventory})


class Reconciler:
    """Owns the operator's view of sessions, worker Pods and Nodes, and acts on it."""

    def __init__(
        self,
        kube_: kube.Kube,
        settings: settings_mod.OperatorSettings,
        *,
        metrics_: metrics.Metrics,
        relay_key: bytes,
        status_url: str | None,
        relay_ca: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube_
        self.settings = settings
        self.metrics = metrics_
        self.relay_key = relay_key
        self.status_url = status_url
        self.relay_ca = relay_ca  # the relay's CA certificate for workers (None: plain HTTP)
        self.clock = clock
        self.placement = placement_engine.Engine(placement_settings(settings), clock=clock)
        self.memory = memory.Memory()
        self.tokens = tokens.TokenSource(kube_, settings, clock=clock)
        self.tasks = background.Tasks(metrics_)
        self.admissions = admission.AdmissionQueue(self.tasks, self._admit_key)
        self.events = background.EventPoster(kube_, self.tasks, yield_to=self.yield_to_admissions)
        self.sweeper = sweeper.Sweeper(self)
        self.pods_watch = pods.Pods(self)
        self.pools = pool_controller.PoolController(self)
        self._start_reports: asyncio.Queue[str] = asyncio.Queue()

    def start(self) -> None:
        """Start the background loops: the sweep, admissions, Events, Starting statuses."""
        self.tasks.spawn(self.sweeper.run(), "sweeper")
        self.admissions.start()
        self.events.start()
        for index in range(START_REPORTERS):
            self.tasks.spawn(self._run_start_reporters(), f"start reports {index}")

    async def aclose(self) -> None:
        await self.tasks.aclose()

    # ---------------------------------------------------------------------------------------
    # views

    @property
    def sessions(self) -> memory.Bodies:
        """`namespace/name` → the latest body of every session the operator knows."""
        return self.memory.bodies

    def unreported_starts(self) -> set[str]:
        """Sessions started whose status Starting is not written yet."""
        return {record.key for record in self.memory if record.start_patch is not None}

    @property
    def pods(self) -> dict[str, Obj]:
        """Session uid → its worker Pod."""
        return self.memory.pods

    def session(self, namespace: str, name: str) -> Obj | None:
        return self.memory.body(f"{namespace}/{name}")

    def status_of(self, body: Obj) -> api.AvatarSessionStatus:
        return self.memory.status_of(body)

    def spec_of(self, body: Obj) -> api.AvatarSessionSpec:
        """The session's spec; one that names a pool gets the fields it leaves unset from the
        pool's template (`avatar_sdk.pools.apply_template`)."""
        spec = self.memory.spec_of(body)
        if spec.pool_ref is None:
            return spec
        template = self.pools.template_of(body["metadata"]["namespace"], spec)
        if template is None:
            return spec
        return pools.apply_template(spec, template)[0]

    def namespaces(self) -> list[str | None]:
        """The namespaces watched (None: all of them)."""
        return list(self.settings.namespaces) or [None]

    def arrival(self, body: Obj) -> float:
        """When the session was created (Unix seconds): its place in line, its wait."""
        created = timestamps.parse(body["metadata"].get("creationTimestamp"))
        return created.timestamp() if created is not None else self.clock()

    # ---------------------------------------------------------------------------------------
    # state from the API

    async def rebuild(self) -> None:
        """At start-up, before any handler runs: the ledger from statuses and worker pods."""
        nodes = await self.kube.list_nodes()
        namespaces = self.namespaces()
        sessions: list[Obj] = []
        pods: list[Obj] = []
        pool_bodies: list[Obj] = []
        for namespace in namespaces:
            sessions += await self.kube.list_sessions(namespace)
            pods += await self.kube.list_pods(manifests.SELECTOR, namespace)
            pool_bodies += await self.kube.list_pools(namespace)
        spares = self.pools.rebuild(pool_bodies, pods)
        for pod in pods:
            uid = pod["metadata"].get("labels", {}).get(manifests.LABEL_SESSION_UID)
            if uid:
                self.memory.pods[uid] = pod
        live_uids = set()
        records = []
        for body in sorted(sessions, key=lambda b: b["metadata"].get("creationTimestamp", "")):
            self.memory.observe(body)
            status = self.status_of(body)
            trusted = self.trusted_placement(body, status)
            if trusted != status.placement:
                status = status.model_copy(update={"placement": trusted})
            records.append(placement_ledger.SessionRecord(key_of(body), status))
            if status.phase is None or not status.phase.finished:
                live_uids.add(body["metadata"].get("uid"))
        for spare_key, spare in spares:  # idle warm workers hold their GPUs too
            records.append(
                placement_ledger.SessionRecord(
                    spare_key, api.AvatarSessionStatus(phase=api.Phase.STARTING, placement=spare)
                )
            )
        conflicts = self.placement.rebuild(records)
        if conflicts:
            logger.error("placements that overlap in the statuses", extra={"sessions": conflicts})
        for node in nodes:
            self.memory.nodes[node["metadata"]["name"]] = node
            self.placement.upsert_node(node)
        await self._collect_orphans(pods, live_uids, namespaces)
        self.pools.sweep()
        logger.info(
            "rebuilt state from the api",
            extra={
                "sessions": len(sessions),
                "pods": len(pods),
                "nodes": len(nodes),
                "pools": len(pool_bodies),
            },
        )

    def trusted_placement(self, body: Obj, status: api.AvatarSessionStatus) -> api.Placement | None:
        """The Pod's annotation (written by the operator only) wins over the status."""
        pod = self.memory.pods.get(body["metadata"].get("uid", ""))
        from_pod = manifests.placement_from_pod(pod) if pod else None
        return from_pod or status.placement

    async def _collect_orphans(
        self, pods: list[Obj], live_uids: set[Any], namespaces: list[str | None]
    ) -> None:
        """Worker Pods and Secrets whose session is gone or finished (GC missed them)."""
        secrets: list[Obj] = []
        for namespace in namespaces:
            secrets += await self.kube.list_secrets(manifests.SELECTOR, namespace)
        pod_names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
        for obj in pods + secrets:
            meta = obj["metadata"]
            if meta.get("labels", {}).get(manifests.LABEL_SESSION_UID) in live_uids:
                continue
            if pool_manifests.pool_of(obj) is not None:
                # a warm worker's Secret goes with its Pod; an idle worker is its pool's
                if obj not in pods and (meta["namespace"], meta["name"]) in pod_names:
                    continue
                if (
                    obj in pods
                    and pool_manifests.state_of(obj) is not pools.PoolWorkerState.CLAIMED
                ):
                    continue
            kind = "Pod" if obj in pods else "Secret"
            if await self.kube.delete(kind, meta["namespace"], meta["name"]):
                logger.info("deleted orphan", extra={"kind": kind, "object": meta["name"]})

    # ---------------------------------------------------------------------------------------
    # watch events

    def observe_session(self, event_type: str | None, body: Obj) -> None:
        """Every watch event of a session lands here first (kopf.on.event)."""
        key = key_of(body)
        if event_type == "DELETED":
            self._forget(key, body)
            return
        self.memory.observe(body)
        status = self.status_of(body)
        if status.phase is not None and status.phase.finished:
            self.tasks.spawn(self.collect(body), f"collect {key}")

    def needs_admission(self, event_type: str | None, body: Obj) -> bool:
        """Whether a session event calls for `admit()`: a new session, or, in the listing at
        start-up (event type None), one that may have stopped half-way when we last ran."""
        if event_type == "DELETED":
            return False
        phase = self.status_of(body).phase
        if phase is None:
            return True
        return event_type is None and phase in (
            api.Phase.PENDING,
            api.Phase.SCHEDULED,
            api.Phase.STARTING,
        )

    def _forget(self, key: str, body: Obj) -> None:
        """A deleted session: release at once; its children go by cascade (and by us)."""
        known = self.memory.get(key)
        if known is not None and known.uid != body["metadata"].get("uid", ""):
            # a late DELETED of a predecessor with the same name: the session known now is a
            # new one (its Pod and Secret have the same names); the API's garbage collector
            # removes the predecessor's children by their ownerReferences
            return
        record = self.memory.forget(key)
        self.admit_all(self.placement.release(key).admitted)
        if record is None or not record.collected:
            self.tasks.spawn(self._collect_children(body, record), f"collect {key}")

    def observe_pod(self, event_type: str | None, pod: Obj) -> None:
        if pool_manifests.state_of(pod) is not None:
            self.pools.observe_pod(event_type, pod)  # a claimed one is its session's as well
        uid = pod["metadata"].get("labels", {}).get(manifests.LABEL_SESSION_UID)
        if not uid:
            return
        current = self.memory.pods.get(uid)
        if event_type == "DELETED":
            if current is not None and current["metadata"]["name"] == pod["metadata"]["name"]:
                self.memory.pods.pop(uid, None)
        elif (
            current is None
            or current["metadata"]["name"] == pod["metadata"]["name"]
            or pods.restart_of(pod) > pods.restart_of(current)
        ):
            self.memory.pods[uid] = pod
        # check_pod acts on a Pod that is gone or finished; a starting or running one needs
        # nothing (four events per Pod in a normal start: no task for each)
        if event_type != "DELETED" and (pod.get("status") or {}).get("phase") not in (
            "Failed",
            "Succeeded",
        ):
            return
        record = self.memory.by_uid(uid)
        if record is not None:
            self.tasks.spawn(self.pods_watch.check(record.body), f"check pod of {record.key}")

    def observe_node(self, event_type: str | None, node: Obj) -> None:
        name = node["metadata"]["name"]
        if event_type == "DELETED":
            self.memory.nodes.pop(name, None)
            self.placement.remove_node(name)
            self.tasks.spawn(self.node_lost(name, "the node was removed"), f"node {name} lost")
        else:
            self.memory.nodes[name] = node
            self.admit_all(self.placement.upsert_node(node))

    # ---------------------------------------------------------------------------------------
    # admission: validate, place, start

    def admit_all(self, admissions: Iterable[placement_engine.Admission]) -> None:
        """Waiting sessions that the placement engine just gave a GPU: start them."""
        for admitted in admissions:
            self.request_admission(admitted.key)

    def request_admission(self, key: str) -> None:
        """Queue `admit()` for a session (at most once; it reads the latest body when served);
        one that a ready warm worker can serve goes first."""
        body = self.memory.body(key)
        first = body is not None and self.pools.promise(key, body)
        self.admissions.request(key, first=first)

    async def yield_to_admissions(self, max_wait: float) -> None:
        """Wait while sessions wait to be started (at most `max_wait` seconds): in a burst,
        the Pods that users wait for go first, and Events and reports follow."""
        await self.admissions.yield_to(max_wait)

    async def _admit_key(self, key: str) -> None:
        self.pools.keep_promise(key)
        body = self.memory.body(key)
        if body is None:
            return  # deleted while it waited
        try:
            await self.admit(body)
        except Exception as exc:
            record = self.memory.get(key)
            if record is not None:  # the sweep's watchdog says it when it gives up
                record.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise

    def lock(self, key: str) -> asyncio.Lock:
        record = self.memory.get(key)
        return record.lock if record is not None else asyncio.Lock()  # deleted: nothing shared

    async def admit(self, body: Obj) -> None:
        """Bring a new or resumed session forward as far as it can go now."""
        key = key_of(body)
        async with self.lock(key):
            body = self.memory.body(key) or body
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                return
            record = self.memory.get(key)
            if record is not None:
                record.last_attempt = self.clock()
                record.first_attempt = record.first_attempt or record.last_attempt
            try:
                spec = self.spec_of(body)
            except api.SpecError as exc:
                await self._fail_invalid(body, exc)
                return
            pod = self.memory.pods.get(body["metadata"].get("uid", ""))
            if pod is not None and pool_manifests.state_of(pod) is pools.PoolWorkerState.CLAIMED:
                await self._start_warm(body, spec, status, pod)  # resumed after a restart
                return
            placement = self.trusted_placement(body, status) or self.placement.placement_of(key)
            if (
                pod is not None
                and placement is not None
                and self.placement.placement_of(key) is None
            ):
                # its Pod was made by another replica after this one rebuilt: the GPU is taken
                try:
                    self.placement.adopt(key, placement)
                except placement_ledger.Conflict as exc:
                    logger.error("a worker's GPU is recorded twice", extra={"error": str(exc)})
            warm = placement is None and pod is None and spec.pool_ref is not None
            if warm and await self._claim(body, spec, status):
                return
            if placement is None:
                decision = self.placement.place(
                    key,
                    placement_policy.Request.from_spec(spec),
                    arrived_at=self.arrival(body),
                )
                if decision.outcome is placement_engine.Outcome.PENDING:
                    await self._mark_pending(body, status, decision.message)
                    return
                placement = decision.placement  # None: no GPU, the scheduler picks the node
                if decision.outcome is placement_engine.Outcome.PLACED:
                    waited = max(0.0, self.clock() - self.arrival(body))
                    self.metrics.time_to_scheduled.observe(waited)
            await self._start(body, spec, status, placement)

    async def _claim(
        self, body: Obj, spec: api.AvatarSessionSpec, status: api.AvatarSessionStatus
    ) -> bool:
        """A session that names a pool: a warm worker started for it (True), or it waits for
        one (True, `whenEmpty: Wait`), or it goes on cold (False), with an Event saying why."""
        started = time.perf_counter()
        first = status.phase is None
        pool, missing = self.pools.pool_for(body["metadata"]["namespace"], spec)
        why = missing
        if pool is not None:
            template = self.pools.template_of(body["metadata"]["namespace"], spec)
            differ = (
                pools.apply_template(self.memory.spec_of(body), template)[1]
                if template is not None
                else []
            )
            if differ:
                why = (
                    f"spec.{', spec.'.join(differ)} differ from AvatarPool "
                    f"{pool['metadata']['name']}'s template: a warm worker cannot serve it"
                )
            else:
                pod = await self.pools.claim(body, pool)
                if pod is not None:
                    self.metrics.claim_latency.observe(time.perf_counter() - started)
                    await self._start_warm(body, spec, status, pod, claimed=True)
                    return True
                name = pool["metadata"]["name"]
                if self.pools.when_empty(pool) is pools.PoolFallback.WAIT:
                    self.pools.wait_for_pool(pool, key_of(body))
                    message = f"waiting for a ready worker of AvatarPool {name} (whenEmpty: Wait)"
                    if status.phase is not api.Phase.PENDING or status.message != message:
                        generation = body["metadata"].get("generation")
                        await self.write_status(body, statuses.pending(status, generation, message))
                        self.events.post(body, "Normal", reason="WaitingForPool", message=message)
                    return True
                why = f"no ready worker in AvatarPool {name}"
        if first:
            self.metrics.pool_claims.labels(served="cold").inc()
            self.events.post(body, "Normal", reason="ColdStart", message=f"{why}: starting cold")
        return False

    async def _start_warm(
        self,
        body: Obj,
        spec: api.AvatarSessionSpec,
        status: api.AvatarSessionStatus,
        pod: Obj,
        *,
        claimed: bool = False,
    ) -> None:
        """Start a session on the warm worker it claimed: its GPU moves to the session, its
        Secret is written (the record of its join token), and the worker is handed its
        assignment over the relay. From here it is a session like any other."""
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        key = key_of(body)
        generation = meta.get("generation")
        if status.phase is api.Phase.JOINED:
            return  # it has its assignment: its reports drive it from here
        placement = manifests.placement_from_pod(pod)
        pod_name = pod["metadata"]["name"]
        moved = self.placement.transfer(pool_manifests.reservation_key(namespace, pod_name), key)
        if moved is None and placement is not None and self.placement.placement_of(key) is None:
            try:
                self.placement.adopt(key, placement)
            except placement_ledger.Conflict as exc:
                logger.error("claimed worker's GPU is placed twice", extra={"error": str(exc)})
        participant_id = status.participant_id or spec.participant_id or participant_id_for(uid)
        conditions = statuses.placed(status, placement, generation)
        secret_name = manifests.secret_name(name)
        token = await self._join_token(body, spec, status, conditions, placement, participant_id)
        if token is None:
            return
        join_token = token.token
        expires_at: int | None = token.expires_at
        secret, status_token = self._token_secret(body, join_token, self.relay_ca())
        if not await self.kube.ensure(secret):
            # written before a restart: the worker may hold that token already
            existing = await self.kube.read_secret(namespace, secret_name)
            join_token = manifests.secret_value(existing, workerenv.TOKEN_KEY) or join_token
            expires_at = None
        self.pools.assign(
            pod,
            assignment.Assignment(
                session_name=name,
                session_namespace=namespace,
                room_id=spec.room_id,
                participant_id=token.participant_id,
                agent_participant_id=spec.agent_participant_id,
                signaling_base_url=spec.signaling_base_url,
                local_room_url=manifests.local_room_url(
                    self.settings.worker_local_room_url, spec.room_id
                ),
                idle_timeout_seconds=spec.lifetime.idle_timeout_seconds,
                join_token=join_token,
                status_token=status_token,
            ),
        )
        if claimed:
            self.metrics.pool_claims.labels(served="warm").inc()
        patch = statuses.starting(
            conditions,
            status,
            generation,
            placement=placement,
            pod_name=pod_name,
            secret_name=secret_name,
            source=spec.credentials.token_source,
            participant_id=token.participant_id,
            token_expires_at=expires_at,
        )
        pool = pool_manifests.pool_of(pod)
        message = f"warm worker {pod_name} of AvatarPool {pool} on {statuses.describe(placement)}"
        await self._report_start(body, patch, ("Claimed", message) if claimed else None)

    async def _fail_invalid(self, body: Obj, exc: api.SpecError) -> None:
        message = f"invalid spec: {exc}"
        generation = body["metadata"].get("generation")
        await self.write_status(
            body, statuses.invalid_spec(self.status_of(body), generation, message)
        )
        self.events.post(body, "Warning", reason="InvalidSpec", message=message)
        self.metrics.sessions_ended.labels(reason=api.EndReason.INVALID_SPEC.value).inc()

    async def _mark_pending(self, body: Obj, status: api.AvatarSessionStatus, message: str) -> None:
        self.metrics.placement_failures.labels(reason="Unschedulable").inc()
        if status.phase is api.Phase.PENDING and status.message == message:
            return  # nothing new to say: no write
        generation = body["metadata"].get("generation")
        await self.write_status(body, statuses.pending(status, generation, message))
        if status.phase is not api.Phase.PENDING:
            self.events.post(body, "Warning", reason="Unschedulable", message=message)

    async def _start(
        self,
        body: Obj,
        spec: api.AvatarSessionSpec,
        status: api.AvatarSessionStatus,
        placement: api.Placement | None,
    ) -> None:
        meta = body["metadata"]
        uid = meta.get("uid", "")
        generation = meta.get("generation")
        pod = self.memory.pods.get(uid)
        if pod is not None and status.phase in (api.Phase.STARTING, api.Phase.JOINED):
            return  # already started; the Pod's own events drive it from here
        participant_id = (
            status.participant_id
            or spec.participant_id
            or (pods.participant_of(pod) if pod is not None else None)
            or participant_id_for(uid)
        )
        restart = pods.restart_of(pod) if pod is not None else 0
        pod_name = pod["metadata"]["name"] if pod is not None else manifests.pod_name(meta["name"])
        conditions = statuses.placed(status, placement, generation)
        source = spec.credentials.token_source
        expires_at: int | None = None
        if pod is None:
            # 2. the Secret: the worker's room-scoped join token and its status credential
            token = await self._join_token(
                body, spec, status, conditions, placement, participant_id
            )
            if token is None:
                return
            participant_id, expires_at = token.participant_id, token.expires_at
            relay_ca = self.relay_ca()
            secret, _ = self._token_secret(body, token.token, relay_ca)
            await self.kube.ensure(secret)

            # 3. the Pod, pinned to its node and GPU (its annotation keeps the placement)
            pod = manifests.worker_pod(
                body,
                spec,
                placement,
                participant_id=participant_id,
                settings=self.settings,
                status_url=self.status_url,
                status_ca=relay_ca is not None,
                restart=restart,
            )
            kopf.adopt(pod, owner=pods.owner_of(body))
            await self.kube.ensure(pod)
            pod = self.memory.pods.setdefault(uid, pod)

        # 4. the status: what was placed where, for users and for the ledger
        patch = statuses.starting(
            conditions,
            status,
            generation,
            placement=placement,
            pod_name=pod_name,
            secret_name=manifests.secret_name(meta["name"]),
            source=source,
            participant_id=participant_id,
            token_expires_at=expires_at,
        )
        # The Pod is what users wait for; its status can follow once the burst it came in is
        # started (the Pod's annotation already holds the placement for a restart).
        message = f"worker {pod_name} on {statuses.describe(placement)}"
        created = expires_at is not None  # just now
        await self._report_start(body, patch, ("Scheduled", message) if created else None)

    async def _join_token(
        self,
        body: Obj,
        spec: api.AvatarSessionSpec,
        status: api.AvatarSessionStatus,
        conditions: statuses.Conditions,
        placement: api.Placement | None,
        participant_id: str,
    ) -> tokens.JoinToken | None:
        """The session's room-scoped join token; None when its credentials are missing (the
        status then says what is missing, and an Event the first time)."""
        generation = body["metadata"].get("generation")
        try:
            return await self.tokens.join_token(
                spec,
                body["metadata"]["namespace"],
                participant_id=participant_id,
                requested_participant=status.participant_id or spec.participant_id,
            )
        except tokens.CredentialsMissing as exc:
            patch = statuses.waiting_for_credentials(
                conditions, placement, generation, reason=exc.reason, message=str(exc)
            )
            await self.write_status(body, patch)
            if status.phase is not api.Phase.SCHEDULED:
                self.events.post(body, "Warning", reason=exc.reason, message=str(exc))
            return None

    def _token_secret(self, body: Obj, join_token: str, relay_ca: str | None) -> tuple[Obj, str]:
        """The session's Secret (its worker's join token, status credential and the relay's
        CA), owned by the session, and the status credential in it."""
        meta = body["metadata"]
        status_token = reports.status_token(
            self.relay_key, meta["namespace"], meta["name"], meta.get("uid", "")
        )
        secret = manifests.token_secret(
            body, join_token=join_token, status_token=status_token, status_ca=relay_ca
        )
        kopf.adopt(secret, owner=pods.owner_of(body))
        return secret, status_token

    async def _report_start(self, body: Obj, patch: Obj, event: tuple[str, str] | None) -> None:
        """A started session's Starting status: with `event` (reason, message: it was started
        just now) posted and the status written soon, after the burst it came in; else now."""
        key = key_of(body)
        record = self.memory.get(key)
        if record is not None:
            record.start_patch = patch
        if event is None:
            await self._flush_start(key)
            return
        self.events.post(body, "Normal", reason=event[0], message=event[1])
        self.report_start_soon(key)

    def report_start_soon(self, key: str) -> None:
        """Queue the write of a started session's Starting status."""
        self._start_reports.put_nowait(key)

    async def _run_start_reporters(self) -> None:
        while True:
            key = await self._start_reports.get()
            await self.yield_to_admissions(START_REPORT_MAX_DELAY)
            async with self.lock(key):
                await self.tasks.guard(self._flush_start(key), f"report start {key}")

    async def _flush_start(self, key: str) -> None:
        """Write a started session's Starting status if it is still unwritten. Under the
        session's lock: everything that writes its status after a start calls this first."""
        record = self.memory.get(key)
        if record is None or record.start_patch is None:
            return
        patch, record.start_patch = record.start_patch, None
        body = record.body
        status = self.status_of(body)
        if status.phase not in (None, api.Phase.PENDING, api.Phase.SCHEDULED):
            return
        try:
            body = await self.write_status(body, patch)
        except kube.KubeError:
            if self.memory.get(key) is record and record.start_patch is None:
                record.start_patch = patch  # the next writer (or the sweep) retries
            raise
        uid = body["metadata"].get("uid", "")
        if (self.memory.pods.get(uid) or {}).get("status", {}).get("phase") in (
            "Failed",
            "Succeeded",
        ):
            # it ended before the status said Starting: check_pod ignored it then
            self.tasks.spawn(self.pods_watch.check(body), f"check pod of {key}")

    # ---------------------------------------------------------------------------------------
    # worker reports (through the relay) and Pod events

    async def apply_worker_report(self, body: Obj, report: Obj) -> Obj:
        """Turn a worker's report into the session's status (phase, conditions, metrics).

        Reports coalesce per session: at most one write every `WORKER_REPORT_MIN_INTERVAL`;
        what comes in between is merged (the latest state of every field kept) and written at
        the end of the interval. A change of phase (Joined, Ended) is written at once, with
        whatever was pending."""
        await self.yield_to_admissions(REPORT_MAX_DELAY)
        key = key_of(body)
        async with self.lock(key):
            live = await self._live(key, body)
            if live is None:
                raise reports.ReportError(409, "Conflict", "the session has already ended")
            body, _ = live
            record = self.memory.get(key)
            if record is None:
                return await self._write_report(body, report)
            if record.pending_report is not None:
                report = merge_patch(record.pending_report, report)
                record.pending_report = None
            wait = record.report_written_at + WORKER_REPORT_MIN_INTERVAL - self.clock()
            if "phase" in report or wait <= 0:
                record.report_written_at = self.clock()
                return await self._write_report(body, report)
            record.pending_report = report
            if record.report_flush is None or record.report_flush.done():
                record.report_flush = self.tasks.spawn(
                    self._flush_report(key, wait), f"report flush {key}"
                )
            return {**body, "status": merge_patch(body.get("status") or {}, report)}

    async def _flush_report(self, key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self.lock(key):
            record = self.memory.get(key)
            if record is None or record.pending_report is None:
                return
            report, record.pending_report = record.pending_report, None
            live = await self._live(key, record.body)
            if live is None:
                return  # it ended meanwhile: nothing a worker reports matters any more
            record.report_written_at = self.clock()
            await self._write_report(live[0], report)

    async def _write_report(self, body: Obj, report: Obj) -> Obj:
        status = self.status_of(body)
        generation = body["metadata"].get("generation")
        patch = statuses.worker_report(status, report, generation)
        if patch.get("phase") == api.Phase.JOINED.value:
            self.metrics.time_to_joined.observe(max(0.0, self.clock() - self.arrival(body)))
            self.events.post(body, "Normal", reason="Joined", message="the avatar joined the room")
        elif statuses.rejoins(status, report):
            message = f"the restarted worker {status.pod_name} joined the room again"
            self.events.post(body, "Normal", reason="Rejoined", message=message)
        if report.get("phase") == api.Phase.ENDED.value:
            reason = api.EndReason(report.get("endReason") or api.EndReason.ROOM_ENDED.value)
            # ended as the report leaves it (its last playback figures included)
            after = api.parse_status(merge_patch(body.get("status") or {}, patch))
            patch.update(self._ended(after, reason, report.get("message") or "", generation))
        return await self.write_status(body, patch)

    async def _live(
        self, key: str, body: Obj, *, ending: bool = False
    ) -> tuple[Obj, api.AvatarSessionStatus] | None:
        """Under the session's lock: its latest body and status (its Starting status written
        first), or None once it has ended. `ending`: a Starting status that cannot be written
        does not stop the end (the end's status supersedes it)."""
        try:
            await self._flush_start(key)
        except kube.KubeError:
            if not ending:
                raise
        body = self.memory.body(key) or body
        status = self.status_of(body)
        if status.phase is not None and status.phase.finished:
            return None
        return body, status

    def _ended(
        self, status: api.AvatarSessionStatus, reason: api.EndReason, message: str, generation: Any
    ) -> Obj:
        self.metrics.sessions_ended.labels(reason=reason.value).inc()
        return statuses.ended(status, reason, message, generation)

    async def end(self, body: Obj, reason: api.EndReason, message: str) -> None:
        """End a live session for `reason`, then collect its children."""
        key = key_of(body)
        async with self.lock(key):
            live = await self._live(key, body, ending=True)
            if live is None:
                return
            body, status = live
            generation = body["metadata"].get("generation")
            body = await self.write_status(body, self._ended(status, reason, message, generation))
            kind = "Warning" if reason in statuses.FAILED_REASONS else "Normal"
            self.events.post(body, kind, reason=reason.value, message=message or reason.value)
        await self.collect(body)

    async def collect(self, body: Obj) -> None:
        """Garbage collection of a finished session: delete its Pod and Secret, release its
        GPU (once)."""
        key = key_of(body)
        self.admit_all(self.placement.release(key).admitted)
        record = self.memory.get(key)
        if record is None or record.uid != body["metadata"].get("uid", "") or record.collected:
            return  # deleted (`_forget` collected it) or collected already
        await self._collect_children(body, record)

    async def _collect_children(self, body: Obj, record: memory.SessionRecord | None) -> None:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        if record is not None:
            record.collected = True
        pod = self.memory.pods.pop(uid, None)
        names = {manifests.pod_name(name)}
        if pod is not None:
            names.add(pod["metadata"]["name"])
        recorded = self.status_of(body).pod_name
        if recorded:
            names.add(recorded)  # a warm worker's own name
        try:
            for pod_name in names:
                await self.kube.delete("Pod", namespace, pod_name)
            await self.kube.delete("Secret", namespace, manifests.secret_name(name))
            try:
                ref = self.spec_of(body).credentials.token_secret_ref
            except api.SpecError:
                ref = None
            if ref is not None and ref.name == manifests.caller_token_secret_name(name):
                await self.kube.delete("Secret", namespace, ref.name)  # the dispatcher's copy
        except kube.KubeError as exc:
            if record is not None:
                record.collected = False  # the sweep tries again
            self.metrics.reconcile_errors.labels(step="collect").inc()
            logger.warning("could not delete children", extra={"session": name, "error": str(exc)})

    async def node_lost(self, node: str, why: str) -> None:
        for record in self.memory:
            body = record.body
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                continue
            placement = self.placement.placement_of(record.key) or status.placement
            if placement is not None and placement.node == node:
                await self.end(body, api.EndReason.NODE_LOST, f"node {node}: {why}")

    # ---------------------------------------------------------------------------------------
    # the sweep (`sweeper`)

    async def sweep(self) -> None:
        await self.sweeper.sweep()

    async def resync_pods(self) -> None:
        await self.sweeper.resync_pods()

    @property
    def pod_resync_seconds(self) -> float:
        return self.sweeper.pod_resync_seconds

    @pod_resync_seconds.setter
    def pod_resync_seconds(self, seconds: float) -> None:
        self.sweeper.pod_resync_seconds = seconds

    # ---------------------------------------------------------------------------------------
    # plumbing

    async def write_status(self, body: Obj, status: Obj) -> Obj:
        meta = body["metadata"]
        updated = await self.kube.patch_session_status(meta["namespace"], meta["name"], status)
        record = self.memory.get(key_of(body))
        if record is not None and record.uid == updated["metadata"].get("uid", record.uid):
            self.memory.observe(updated)
        return updated

    def publish_gauges(self) -> None:
        """Refresh the gauges from the session cache (at scrape time: O(sessions))."""
        counts = dict.fromkeys((p.value for p in api.Phase), 0)
        for record in self.memory:
            phase = self.status_of(record.body).phase
            if phase is not None:
                counts[phase.value] += 1
        for name, count in counts.items():
            self.metrics.sessions.labels(phase=name).set(count)
        self.metrics.gpu_vram_reserved.set(sum(r.vram_mib for r in self.placement.ledger))


def participant_id_for(uid: str) -> str:
    """The avatar's participant id when the spec names none: stable for the session, so every
    attempt to start it (before and after a restart) mints the token for the same id."""
    if not uid:
        return credentials.generate_participant_id()
    return f"avatar_{hashlib.sha256(uid.encode()).hexdigest()[:8]}"
