"""The AvatarSession life cycle: admit, start, observe, end, collect.

Level-triggered: every entry point looks at what the API says now (the session's status is the
ledger) and does what is missing, so a handler replayed after a restart, a queue retry and a
watch event that arrives twice all converge on the same state. kopf's handlers
(`avatar_operator.handlers`) and the operator's own loops only call in here.

Order of writes when a session starts, chosen so that a crash between any two leaves something
the next attempt can finish without placing twice:

1. reserve a GPU in the in-memory ledger (synchronous: no other coroutine runs in between);
2. create the Secret (join token + status credential) — independent of the GPU chosen;
3. create the Pod, pinned to the node and GPU — it carries the placement in an annotation,
   and a restart rebuilds the ledger from Pod annotations before statuses, so from here the
   placement survives a restart (and a worker tampering with its status cannot move it);
4. write the status: phase Starting, placement, pod/secret names. A restart that finds the
   Pod but not this status writes it then.

The participant id, when the spec names none, is derived from the session's uid, so a
Secret (its token names the participant) and a Pod made by different attempts always agree.

What users wait for goes first. Admission runs in a FIFO queue served by a few workers
(`ADMISSION_WORKERS`), not in kopf's per-object handlers: in a burst of hundreds of creates,
sessions are started in the order they came and each one quickly, instead of all of them
advancing together a request at a time (which made every session wait for nearly the whole
burst). A session is in the queue at most once. While the queue is not empty, the work that can
wait yields to it for a bounded time (`yield_to_admissions`): the status Starting of a session
whose Pod exists (step 4), Events, and the workers' reports. Whatever writes a session's status
first writes its pending Starting status (`_flush_start`), under the session's lock, so the
phases never go backwards.

Ending a session: write phase Ended/Failed with its end reason, delete the Pod and the Secret,
release the reservation (exactly once: the ledger ignores a second release), and delete the
session `ttlSecondsAfterFinished` later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from avatar_operator import kube, manifests, metrics, relay
from avatar_operator import settings as settings_mod
from avatar_sdk import api, credentials, workerenv
from avatar_sdk.placement import engine as placement_engine
from avatar_sdk.placement import ledger as placement_ledger
from avatar_sdk.placement import policy as placement_policy

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

FAILED_REASONS = frozenset(
    {
        api.EndReason.JOIN_TIMEOUT,
        api.EndReason.POD_FAILED,
        api.EndReason.NODE_LOST,
        api.EndReason.INVALID_SPEC,
        api.EndReason.ERROR,
    }
)
CREDENTIALS_CACHE_SECONDS = 10.0
RETRY_SCHEDULED_SECONDS = 5.0  # a placed session waiting for its credentials tries again
NODE_LOST_GRACE_SECONDS = 20.0  # NotReady this long: its sessions end with NodeLost
PARTICIPANT_ENV = f"{workerenv.ENV_PREFIX}PARTICIPANT_ID"
WORKER_REPORT_MIN_INTERVAL = 0.5  # seconds; workers send ≤ 1/s, this guards against floods
ADMISSION_WORKERS = 16  # sessions being started at once (each is 3 sequential API calls)
EVENT_POSTERS = 4  # Events posted at once
# While sessions wait to be started, work that can wait yields to them, for at most this long:
EVENT_MAX_DELAY = 10.0  # seconds; an Event keeps the time it was made at
REPORT_MAX_DELAY = 2.0  # seconds; a worker's report (Joined, playback) is answered late
START_REPORT_MAX_DELAY = 3.0  # seconds; the status Starting of a session whose Pod exists
START_REPORTERS = 4  # Starting statuses written at once
POD_RESYNC_SECONDS = 30.0  # how often the worker Pods are listed (see `resync_pods`)


def key_of(body: Obj) -> str:
    meta = body["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _rv(body: Obj) -> int:
    try:
        return int(body["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CredentialsMissing(Exception):
    """No usable join token: the VideoSDK credentials Secret (or a caller's token Secret) is
    missing, incomplete or refused. The message says how to fix it; `reason` names the case."""

    def __init__(self, message: str, reason: str = "CredentialsNotFound") -> None:
        super().__init__(message)
        self.reason = reason


class Reconciler:
    """Owns the operator's view of sessions, worker Pods and Nodes, and acts on it."""

    def __init__(
        self,
        api_: kube.Kube,
        settings: settings_mod.OperatorSettings,
        *,
        metrics_: metrics.Metrics,
        relay_key: bytes,
        status_url: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api_
        self.settings = settings
        self.metrics = metrics_
        self.relay_key = relay_key
        self.status_url = status_url
        self.clock = clock
        self.placement = placement_engine.Engine(settings.placement, clock=clock)
        self.sessions: dict[str, Obj] = {}  # key → latest body seen or written
        self._key_by_uid: dict[str, str] = {}
        self.pods: dict[str, Obj] = {}  # session uid → latest worker pod
        self.nodes: dict[str, Obj] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._cleaned: set[str] = set()  # session uids whose children were deleted
        self._not_ready_since: dict[str, float] = {}
        self._last_attempt: dict[str, float] = {}
        self._last_report: dict[str, float] = {}
        self.pod_resync_seconds = POD_RESYNC_SECONDS
        self._last_pod_resync = clock()
        self._credentials_cache: dict[
            tuple[str, str], tuple[float, credentials.VideoSDKCredentials]
        ] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # parsed once per resourceVersion (statuses) and generation (specs): the sweep reads
        # every session every second, and each event is read by several steps
        self._status_cache: dict[str, tuple[str, api.AvatarSessionStatus]] = {}
        self._spec_cache: dict[str, tuple[int, api.AvatarSessionSpec | api.SpecError]] = {}
        self._admission_queue: asyncio.Queue[str] = asyncio.Queue()
        self._admission_queued: set[str] = set()
        self._admissions_pending = 0  # queued or being started
        self._admissions_idle = asyncio.Event()
        self._admissions_idle.set()
        self._event_queue: asyncio.Queue[Obj] = asyncio.Queue()
        # started sessions whose status Starting is not written yet: key → the status patch
        self._unreported: dict[str, Obj] = {}
        self._start_reports: asyncio.Queue[str] = asyncio.Queue()

    def start(self) -> None:
        """Start the background loops: the sweep and the admission workers."""
        self.spawn_forever(self.run_sweeper(), "sweeper")
        for index in range(ADMISSION_WORKERS):
            self.spawn_forever(self._run_admissions(), f"admission {index}")
        for index in range(EVENT_POSTERS):
            self.spawn_forever(self._run_event_poster(), f"events {index}")
        for index in range(START_REPORTERS):
            self.spawn_forever(self._run_start_reporters(), f"start reports {index}")

    # ---------------------------------------------------------------------------------------
    # parsed views of a session body

    def status_of(self, body: Obj) -> api.AvatarSessionStatus:
        """The session's status, parsed once per resourceVersion."""
        meta = body["metadata"]
        version = meta.get("resourceVersion")
        uid = meta.get("uid", "")
        if version:
            cached = self._status_cache.get(uid)
            if cached is not None and cached[0] == version:
                return cached[1]
        status = api.parse_status(body.get("status"))
        if version:
            self._status_cache[uid] = (version, status)
        return status

    def spec_of(self, body: Obj) -> api.AvatarSessionSpec:
        """The session's spec, parsed once per generation; raises api.SpecError."""
        meta = body["metadata"]
        generation = meta.get("generation")
        uid = meta.get("uid", "")
        if isinstance(generation, int):
            cached = self._spec_cache.get(uid)
            if cached is not None and cached[0] == generation:
                if isinstance(cached[1], api.SpecError):
                    raise api.SpecError(cached[1].problems)  # a fresh one: no traceback piles up
                return cached[1]
        try:
            spec = api.parse_spec(body.get("spec"))
        except api.SpecError as exc:
            if isinstance(generation, int):
                self._spec_cache[uid] = (generation, exc)
            raise
        if isinstance(generation, int):
            self._spec_cache[uid] = (generation, spec)
        return spec

    # ---------------------------------------------------------------------------------------
    # state from the API

    async def rebuild(self) -> None:
        """At start-up, before any handler runs: the ledger from statuses and worker pods."""
        nodes = await self.api.list_nodes()
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        sessions: list[Obj] = []
        pods: list[Obj] = []
        for namespace in namespaces:
            sessions += await self.api.list_sessions(namespace)
            pods += await self.api.list_pods(manifests.SELECTOR, namespace)
        for pod in pods:
            uid = pod["metadata"].get("labels", {}).get(manifests.LABEL_SESSION_UID)
            if uid:
                self.pods[uid] = pod
        live_uids = set()
        records = []
        for body in sorted(sessions, key=lambda b: b["metadata"].get("creationTimestamp", "")):
            self.sessions[key_of(body)] = body
            self._key_by_uid[body["metadata"].get("uid", "")] = key_of(body)
            status = self.status_of(body)
            trusted = self._trusted_placement(body, status)
            if trusted != status.placement:
                status = status.model_copy(update={"placement": trusted})
            records.append(placement_ledger.SessionRecord(key_of(body), status))
            if status.phase is None or not status.phase.finished:
                live_uids.add(body["metadata"].get("uid"))
        conflicts = self.placement.rebuild(records)
        if conflicts:
            logger.error("placements that overlap in the statuses", extra={"sessions": conflicts})
        for node in nodes:
            self.nodes[node["metadata"]["name"]] = node
            self.placement.upsert_node(node)
        await self._sweep_orphans(pods, live_uids, namespaces)
        logger.info(
            "rebuilt state from the api",
            extra={"sessions": len(sessions), "pods": len(pods), "nodes": len(nodes)},
        )

    def _trusted_placement(
        self, body: Obj, status: api.AvatarSessionStatus
    ) -> api.Placement | None:
        """The Pod's annotation (written by the operator only) wins over the status."""
        pod = self.pods.get(body["metadata"].get("uid", ""))
        from_pod = manifests.placement_from_pod(pod) if pod else None
        return from_pod or status.placement

    async def _sweep_orphans(
        self, pods: list[Obj], live_uids: set[Any], namespaces: list[str | None]
    ) -> None:
        """Worker Pods and Secrets whose session is gone or finished (GC missed them)."""
        secrets: list[Obj] = []
        for namespace in namespaces:
            secrets += await self.api.list_secrets(manifests.SELECTOR, namespace)
        for obj in pods + secrets:
            meta = obj["metadata"]
            if meta.get("labels", {}).get(manifests.LABEL_SESSION_UID) in live_uids:
                continue
            kind = "Pod" if obj in pods else "Secret"
            if await self.api.delete(kind, meta["namespace"], meta["name"]):
                logger.info("deleted orphan", extra={"kind": kind, "name": meta["name"]})

    def observe_session(self, event_type: str | None, body: Obj) -> None:
        """Every watch event of a session lands here first (kopf.on.event)."""
        key = key_of(body)
        if event_type == "DELETED":
            uid = body["metadata"].get("uid", "")
            self.sessions.pop(key, None)
            self._key_by_uid.pop(uid, None)
            self._status_cache.pop(uid, None)
            self._spec_cache.pop(uid, None)
            self._forget(key, body)
            return
        self._key_by_uid[body["metadata"].get("uid", "")] = key
        known = self.sessions.get(key)
        if (
            known is None
            or _rv(body) >= _rv(known)
            or known["metadata"].get("uid") != body["metadata"].get("uid")
        ):
            self.sessions[key] = body
        status = self.status_of(body)
        if status.phase is not None and status.phase.finished:
            self._spawn(self.collect(body), f"collect {key}")

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
        uid = body["metadata"].get("uid", "")
        self._admit_all(self.placement.release(key).admitted)
        self._locks.pop(key, None)
        self._unreported.pop(key, None)
        self._last_attempt.pop(key, None)
        self._last_report.pop(key, None)
        if uid not in self._cleaned:
            self._cleaned.add(uid)
            self._spawn(self._delete_children(body), f"delete children of {key}")

    def observe_pod(self, event_type: str | None, pod: Obj) -> None:
        uid = pod["metadata"].get("labels", {}).get(manifests.LABEL_SESSION_UID)
        if not uid:
            return
        current = self.pods.get(uid)
        if event_type == "DELETED":
            if current is not None and current["metadata"]["name"] == pod["metadata"]["name"]:
                self.pods.pop(uid, None)
        elif (
            current is None
            or current["metadata"]["name"] == pod["metadata"]["name"]
            or self._restart_of(pod) > self._restart_of(current)
        ):
            self.pods[uid] = pod
        # check_pod acts on a Pod that is gone or finished; a starting or running one needs
        # nothing (four events per Pod in a normal start: no task for each)
        if event_type != "DELETED" and (pod.get("status") or {}).get("phase") not in (
            "Failed",
            "Succeeded",
        ):
            return
        body = self._session_by_uid(uid)
        if body is not None:
            self._spawn(self.check_pod(body), f"check pod of {key_of(body)}")

    def observe_node(self, event_type: str | None, node: Obj) -> None:
        name = node["metadata"]["name"]
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            self.placement.remove_node(name)
            self._spawn(self._node_lost(name, "the node was removed"), f"node {name} lost")
        else:
            self.nodes[name] = node
            self._admit_all(self.placement.upsert_node(node))

    def _admit_all(self, admissions: Any) -> None:
        """Waiting sessions that the placement engine just gave a GPU: start them."""
        for admission in admissions:
            self.request_admission(admission.key)

    def request_admission(self, key: str) -> None:
        """Queue `admit()` for a session (at most once; it reads the latest body when served)."""
        if key in self._admission_queued:
            return
        self._admission_queued.add(key)
        self._admission_queue.put_nowait(key)
        self._admissions_pending += 1
        self._admissions_idle.clear()

    async def _run_admissions(self) -> None:
        while True:
            key = await self._admission_queue.get()
            self._admission_queued.discard(key)  # an event from now on queues it again
            try:
                body = self.sessions.get(key)
                if body is not None:  # else deleted while it waited
                    await self._guard(self.admit(body), f"admit {key}")
            finally:
                self._admissions_pending -= 1
                if self._admissions_pending == 0:
                    self._admissions_idle.set()

    async def yield_to_admissions(self, max_wait: float) -> None:
        """Wait while sessions wait to be started (at most `max_wait` seconds): in a burst,
        the Pods that users wait for go first, and Events and reports follow."""
        if self._admissions_idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._admissions_idle.wait(), max_wait)

    def _session_by_uid(self, uid: str) -> Obj | None:
        key = self._key_by_uid.get(uid)
        return self.sessions.get(key) if key is not None else None

    @staticmethod
    def _restart_of(pod: Obj) -> int:
        try:
            return int(pod["metadata"].get("annotations", {}).get(manifests.ANNOTATION_RESTARTS, 0))
        except ValueError:
            return 0

    # ---------------------------------------------------------------------------------------
    # admission: validate, place, start

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def admit(self, body: Obj) -> None:
        """Bring a new or resumed session forward as far as it can go now."""
        key = key_of(body)
        async with self._lock(key):
            body = self.sessions.get(key, body)
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                return
            self._last_attempt[key] = self.clock()
            try:
                spec = self.spec_of(body)
            except api.SpecError as exc:
                await self._fail_invalid(body, exc)
                return
            placement = self._trusted_placement(body, status) or self.placement.placement_of(key)
            if placement is None:
                decision = self.placement.place(
                    key,
                    placement_policy.Request.from_spec(spec),
                    arrived_at=self._arrival(body),
                )
                if decision.outcome is placement_engine.Outcome.PENDING:
                    await self._mark_pending(body, status, decision.message)
                    return
                placement = decision.placement  # None: no GPU, the scheduler picks the node
                if decision.outcome is placement_engine.Outcome.PLACED:
                    waited = max(0.0, self.clock() - self._arrival(body))
                    self.metrics.time_to_scheduled.observe(waited)
            await self._start(body, spec, status, placement)

    def _arrival(self, body: Obj) -> float:
        created = _timestamp(body["metadata"].get("creationTimestamp"))
        return created if created is not None else self.clock()

    async def _fail_invalid(self, body: Obj, exc: api.SpecError) -> None:
        status = self.status_of(body)
        generation = body["metadata"].get("generation")
        message = f"invalid spec: {exc}"
        conditions = api.set_condition(
            status.conditions,
            api.ConditionType.ENDED,
            True,
            "InvalidSpec",
            message,
            generation=generation,
        )
        await self._write_status(
            body,
            {
                "phase": api.Phase.FAILED.value,
                "endReason": api.EndReason.INVALID_SPEC.value,
                "message": message,
                "endedAt": _now_rfc3339(),
                "observedGeneration": generation,
                "conditions": [c.to_wire() for c in conditions],
            },
        )
        self._event(body, "Warning", reason="InvalidSpec", message=message)
        self.metrics.sessions_ended.labels(reason=api.EndReason.INVALID_SPEC.value).inc()

    async def _mark_pending(self, body: Obj, status: api.AvatarSessionStatus, message: str) -> None:
        self.metrics.placement_failures.labels(reason="Unschedulable").inc()
        if status.phase is api.Phase.PENDING and status.message == message:
            return  # nothing new to say: no write
        generation = body["metadata"].get("generation")
        conditions = api.set_condition(
            status.conditions,
            api.ConditionType.SCHEDULED,
            False,
            "Unschedulable",
            message,
            generation=generation,
        )
        await self._write_status(
            body,
            {
                "phase": api.Phase.PENDING.value,
                "message": message,
                "observedGeneration": generation,
                "conditions": [c.to_wire() for c in conditions],
            },
        )
        if status.phase is not api.Phase.PENDING:
            self._event(body, "Warning", reason="Unschedulable", message=message)

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
        pod = self.pods.get(uid)
        if pod is not None and status.phase in (api.Phase.STARTING, api.Phase.JOINED):
            return  # already started; the Pod's own events drive it from here
        created = pod is None
        participant_id = (
            status.participant_id
            or spec.participant_id
            or (_participant_of(pod) if pod is not None else None)
            or participant_id_for(uid)
        )
        restart = self._restart_of(pod) if pod is not None else 0
        pod_name = pod["metadata"]["name"] if pod is not None else manifests.pod_name(meta["name"])
        conditions = api.set_condition(
            status.conditions,
            api.ConditionType.SCHEDULED,
            True,
            "Placed",
            _describe(placement),
            generation=generation,
        )

        source = spec.credentials.token_source
        if pod is None:
            # 2. the Secret: the worker's room-scoped join token and its status credential
            try:
                if source is api.TokenSource.CALLER:
                    join_token, participant_id, expires = await self._caller_token(
                        spec, meta["namespace"], status.participant_id or spec.participant_id
                    )
                else:
                    creds = await self._credentials(spec, meta["namespace"])
                    minted = credentials.mint_join_token(
                        creds,
                        room_id=spec.room_id,
                        participant_id=participant_id,
                        ttl_seconds=spec.credentials.token_ttl_seconds,
                    )
                    join_token, expires = minted.token, minted.expires_at
            except CredentialsMissing as exc:
                await self._write_status(
                    body,
                    {
                        "phase": api.Phase.SCHEDULED.value,
                        "placement": placement.to_wire() if placement else None,
                        "message": str(exc),
                        "observedGeneration": generation,
                        "conditions": [
                            c.to_wire()
                            for c in api.set_condition(
                                conditions,
                                api.ConditionType.TOKEN_ISSUED,
                                False,
                                exc.reason,
                                str(exc),
                                generation=generation,
                            )
                        ],
                    },
                )
                if status.phase is not api.Phase.SCHEDULED:
                    self._event(body, "Warning", reason=exc.reason, message=str(exc))
                return
            secret = manifests.token_secret(
                body,
                join_token=join_token,
                status_token=relay.status_token(
                    self.relay_key, meta["namespace"], meta["name"], uid
                ),
            )
            owner = _kopf_body(body)
            kopf.adopt(secret, owner=owner)
            await self.api.ensure(secret)

            # 3. the Pod, pinned to its node and GPU (its annotation keeps the placement)
            pod = manifests.worker_pod(
                body,
                spec,
                placement,
                participant_id=participant_id,
                settings=self.settings,
                status_url=self.status_url,
                restart=restart,
            )
            kopf.adopt(pod, owner=owner)
            await self.api.ensure(pod)
            pod = self.pods.setdefault(uid, pod)

        # 4. the status: what was placed where, for users and for the ledger
        if source is api.TokenSource.CALLER:
            token_reason, token_message = "CallerToken", "signed by the session's creator"
        else:
            token_reason, token_message = "Minted", "minted from the VideoSDK key"
        if created:
            token_message += f", expires {_rfc3339(expires)}"
        conditions = api.set_condition(
            conditions,
            api.ConditionType.TOKEN_ISSUED,
            True,
            token_reason,
            token_message,
            generation=generation,
        )
        conditions = api.set_condition(
            conditions, api.ConditionType.POD_READY, False, "Creating", "", generation=generation
        )
        conditions = api.set_condition(
            conditions, api.ConditionType.JOINED, False, "Starting", "", generation=generation
        )
        key = key_of(body)
        self._unreported[key] = {
            "phase": api.Phase.STARTING.value,
            "placement": placement.to_wire() if placement else None,
            "podName": pod_name,
            "secretName": manifests.secret_name(meta["name"]),
            "tokenSource": source.value,
            "participantId": participant_id,
            "scheduledAt": status.scheduled_at.isoformat().replace("+00:00", "Z")
            if status.scheduled_at
            else _now_rfc3339(),
            "message": f"starting the worker on {_describe(placement)}",
            "observedGeneration": generation,
            "conditions": [c.to_wire() for c in conditions],
        }
        if created:
            where = _describe(placement)
            message = f"worker {pod_name} on {where}"
            self._event(body, "Normal", reason="Scheduled", message=message)
            # The Pod is what users wait for; its status can follow once the burst it came in
            # is started (the Pod's annotation already holds the placement for a restart).
            self._start_reports.put_nowait(key)
        else:
            await self._flush_start(key)

    async def _run_start_reporters(self) -> None:
        while True:
            key = await self._start_reports.get()
            await self.yield_to_admissions(START_REPORT_MAX_DELAY)
            async with self._lock(key):
                await self._guard(self._flush_start(key), f"report start {key}")

    async def _flush_start(self, key: str) -> None:
        """Write a started session's Starting status if it is still unwritten. Under the
        session's lock: everything that writes its status after a start calls this first."""
        patch = self._unreported.pop(key, None)
        body = self.sessions.get(key)
        if patch is None or body is None:
            return
        status = self.status_of(body)
        if status.phase not in (None, api.Phase.PENDING, api.Phase.SCHEDULED):
            return
        try:
            body = await self._write_status(body, patch)
        except kube.KubeError:
            if key in self.sessions:
                self._unreported.setdefault(key, patch)  # the next writer (or the sweep) retries
            raise
        uid = body["metadata"].get("uid", "")
        if (self.pods.get(uid) or {}).get("status", {}).get("phase") in ("Failed", "Succeeded"):
            # it ended before the status said Starting: check_pod ignored it then
            self._spawn(self.check_pod(body), f"check pod of {key}")

    async def _caller_token(
        self, spec: api.AvatarSessionSpec, namespace: str, participant_id: str | None
    ) -> tuple[str, str, int]:
        """The join token its creator signed (credentials.tokenSecretRef), checked for what a
        token says about itself; returns it with its participant id and expiry."""
        ref = spec.credentials.token_secret_ref
        assert ref is not None
        where = f"Secret {namespace}/{ref.name} (credentials.tokenSecretRef)"
        try:
            secret = await self.api.read_secret(namespace, ref.name)
        except kube.NotFound:
            raise CredentialsMissing(
                f"{where} not found: it holds the join token the session's creator signed",
                "TokenSecretNotFound",
            ) from None
        except kube.Forbidden:
            raise CredentialsMissing(
                f"the operator may not read {where}: grant it get on secrets in {namespace}",
                "TokenSecretNotFound",
            ) from None
        try:
            token = base64.b64decode((secret.get("data") or {})[ref.key]).decode().strip()
        except (KeyError, ValueError, UnicodeDecodeError):
            token = ""
        if not token:
            raise CredentialsMissing(
                f"{where} has no non-empty key {ref.key!r}", "TokenSecretNotFound"
            )
        try:
            claims = credentials.check_caller_token(
                token, room_id=spec.room_id, participant_id=participant_id, now=time.time()
            )
        except credentials.CredentialsError as exc:
            raise CredentialsMissing(
                f"the join token in {where} is refused: {exc}", "CallerTokenRefused"
            ) from None
        assert claims.participant_id is not None and claims.expires_at is not None
        return token, claims.participant_id, claims.expires_at

    async def _credentials(
        self, spec: api.AvatarSessionSpec, namespace: str
    ) -> credentials.VideoSDKCredentials:
        ref = spec.credentials.secret_ref
        if ref is None:
            where = (self.settings.operator_namespace, self.settings.default_credentials_secret)
            keys = (self.settings.default_api_key_key, self.settings.default_secret_key)
        else:
            where = (namespace, ref.name)
            keys = (ref.api_key_key, ref.secret_key)
        cached = self._credentials_cache.get(where)
        if cached and self.clock() - cached[0] < CREDENTIALS_CACHE_SECONDS:
            return cached[1]
        hint = (
            f"create it: kubectl -n {where[0]} create secret generic {where[1]} "
            f"--from-literal={keys[0]}=<VideoSDK API key> --from-literal={keys[1]}=<secret>"
        )
        try:
            secret = await self.api.read_secret(*where)
        except kube.NotFound:
            raise CredentialsMissing(f"Secret {where[0]}/{where[1]} not found; {hint}") from None
        except kube.Forbidden:
            raise CredentialsMissing(
                f"the operator may not read Secret {where[0]}/{where[1]}: grant it get on "
                "secrets there (the chart does for its own namespace)"
            ) from None
        data = secret.get("data") or {}
        try:
            values = [base64.b64decode(data[k]).decode() for k in keys]
        except UnicodeDecodeError as exc:
            raise CredentialsMissing(
                f"Secret {where[0]}/{where[1]}: {keys[0]!r} and {keys[1]!r} must be text "
                "(the VideoSDK dashboard shows both as text)"
            ) from exc
        except (KeyError, ValueError):
            values = []
        try:
            creds = credentials.VideoSDKCredentials(*values)
        except (TypeError, ValueError) as exc:
            raise CredentialsMissing(
                f"Secret {where[0]}/{where[1]} lacks a non-empty {keys[0]!r} and "
                f"{keys[1]!r}; {hint}"
            ) from exc
        self._credentials_cache[where] = (self.clock(), creds)
        return creds

    # ---------------------------------------------------------------------------------------
    # worker reports (through the relay) and Pod events

    async def apply_worker_report(self, body: Obj, report: Obj) -> Obj:
        """Turn a worker's report into the session's status (phase, conditions, metrics)."""
        await self.yield_to_admissions(REPORT_MAX_DELAY)
        key = key_of(body)
        async with self._lock(key):
            await self._flush_start(key)
            body = self.sessions.get(key, body)
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                raise relay.ReportError(409, "Conflict", "the session has already ended")
            generation = body["metadata"].get("generation")
            patch: Obj = {k: v for k, v in report.items() if k != "phase"}
            conditions = status.conditions
            phase = report.get("phase")
            if phase == api.Phase.JOINED.value and status.phase is not api.Phase.JOINED:
                conditions = api.set_condition(
                    conditions,
                    api.ConditionType.POD_READY,
                    True,
                    "Running",
                    "",
                    generation=generation,
                )
                conditions = api.set_condition(
                    conditions,
                    api.ConditionType.JOINED,
                    True,
                    "InRoom",
                    "the worker joined the room and is publishing audio and video",
                    generation=generation,
                )
                patch["phase"] = api.Phase.JOINED.value
                patch.setdefault("joinedAt", _now_rfc3339())
                patch["message"] = "in the room"
                self.metrics.time_to_joined.observe(max(0.0, self.clock() - self._arrival(body)))
                self._event(body, "Normal", reason="Joined", message="the avatar joined the room")
            playback = report.get("playback")
            if isinstance(playback, dict) and "state" in playback:
                speaking = playback["state"] == api.PlaybackState.SPEAKING.value
                conditions = api.set_condition(
                    conditions,
                    api.ConditionType.SPEAKING,
                    speaking,
                    "Speaking" if speaking else "Idle",
                    "",
                    generation=generation,
                )
            if conditions is not status.conditions:
                patch["conditions"] = [c.to_wire() for c in conditions]
            if phase == api.Phase.ENDED.value:
                reason = api.EndReason(report.get("endReason") or api.EndReason.ROOM_ENDED.value)
                patch.update(
                    self._end_patch(status, reason, report.get("message") or "", generation)
                )
            updated = await self._write_status(body, patch)
        return updated

    def _end_patch(
        self, status: api.AvatarSessionStatus, reason: api.EndReason, message: str, generation: Any
    ) -> Obj:
        failed = reason in FAILED_REASONS
        conditions = api.set_condition(
            status.conditions,
            api.ConditionType.ENDED,
            True,
            reason.value,
            message,
            generation=generation,
        )
        conditions = api.set_condition(
            conditions, api.ConditionType.SPEAKING, False, "Ended", "", generation=generation
        )
        playback = (status.playback or api.Playback()).model_copy(
            update={"state": api.PlaybackState.IDLE}
        )
        self.metrics.sessions_ended.labels(reason=reason.value).inc()
        return {
            "phase": (api.Phase.FAILED if failed else api.Phase.ENDED).value,
            "endReason": reason.value,
            "endedAt": _now_rfc3339(),
            "message": message or f"ended: {reason.value}",
            "playback": playback.to_wire(),
            "conditions": [c.to_wire() for c in conditions],
        }

    async def end(self, body: Obj, reason: api.EndReason, message: str) -> None:
        """End a live session for `reason`, then collect its children."""
        key = key_of(body)
        async with self._lock(key):
            await self._flush_start(key)
            body = self.sessions.get(key, body)
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                return
            generation = body["metadata"].get("generation")
            body = await self._write_status(
                body, self._end_patch(status, reason, message, generation)
            )
            kind = "Warning" if reason in FAILED_REASONS else "Normal"
            self._event(body, kind, reason=reason.value, message=message or reason.value)
        await self.collect(body)

    async def collect(self, body: Obj) -> None:
        """A finished session: delete its Pod and Secret, release its GPU (once)."""
        uid = body["metadata"].get("uid", "")
        self._admit_all(self.placement.release(key_of(body)).admitted)
        if uid in self._cleaned:
            return
        self._cleaned.add(uid)
        await self._delete_children(body)

    async def _delete_children(self, body: Obj) -> None:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        pod = self.pods.pop(uid, None)
        names = {manifests.pod_name(name)}
        if pod is not None:
            names.add(pod["metadata"]["name"])
        try:
            for pod_name in names:
                await self.api.delete("Pod", namespace, pod_name)
            await self.api.delete("Secret", namespace, manifests.secret_name(name))
            try:
                ref = self.spec_of(body).credentials.token_secret_ref
            except api.SpecError:
                ref = None
            if ref is not None and ref.name == manifests.caller_token_secret_name(name):
                await self.api.delete("Secret", namespace, ref.name)  # the dispatcher's copy
        except kube.KubeError as exc:
            self._cleaned.discard(uid)  # the sweep tries again
            self.metrics.reconcile_errors.labels(step="collect").inc()
            logger.warning("could not delete children", extra={"session": name, "error": str(exc)})

    async def check_pod(self, body: Obj) -> None:
        """React to the worker Pod's phase: bounded restarts, then PodFailed."""
        uid = body["metadata"].get("uid", "")
        status = self.status_of(body)
        if status.phase not in (api.Phase.STARTING, api.Phase.JOINED):
            return
        pod = self.pods.get(uid)
        if pod is None:
            if status.pod_name and uid not in self._cleaned:
                await self._pod_gone(body, status, "the worker pod was deleted")
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Failed":
            await self._pod_gone(body, status, _pod_failure(pod))
        elif phase == "Succeeded":
            await self.end(
                body,
                api.EndReason.POD_FAILED,
                "the worker exited without reporting why the session ended",
            )

    async def _pod_gone(self, body: Obj, status: api.AvatarSessionStatus, why: str) -> None:
        uid = body["metadata"].get("uid", "")
        pod = self.pods.get(uid)
        restart = (self._restart_of(pod) if pod else 0) + 1
        if restart > self.settings.max_pod_restarts:
            await self.end(body, api.EndReason.POD_FAILED, f"{why} (restarts used up)")
            return
        key = key_of(body)
        async with self._lock(key):
            body = self.sessions.get(key, body)
            status = self.status_of(body)
            if status.phase not in (api.Phase.STARTING, api.Phase.JOINED):
                return  # ended while this waited for the lock (its node was lost, say)
            placement = self._trusted_placement(body, status)
            spec = self.spec_of(body)
            if placement is None:
                return
            if pod is not None:
                await self.api.delete("Pod", body["metadata"]["namespace"], pod["metadata"]["name"])
            new_pod = manifests.worker_pod(
                body,
                spec,
                placement,
                participant_id=status.participant_id or "",
                settings=self.settings,
                status_url=self.status_url,
                restart=restart,
            )
            kopf.adopt(new_pod, owner=_kopf_body(body))
            await self._write_status(
                body,
                {
                    "podName": new_pod["metadata"]["name"],
                    "message": f"{why}; restarting the worker",
                },
            )
            await self.api.ensure(new_pod)
            self.pods[uid] = new_pod
            message = f"{why}; restart {restart}"
            self._event(body, "Warning", reason="WorkerRestarted", message=message)

    async def _node_lost(self, node: str, why: str) -> None:
        for body in list(self.sessions.values()):
            status = self.status_of(body)
            if status.phase is not None and status.phase.finished:
                continue
            placement = self.placement.placement_of(key_of(body)) or status.placement
            if placement is not None and placement.node == node:
                await self.end(body, api.EndReason.NODE_LOST, f"node {node}: {why}")

    # ---------------------------------------------------------------------------------------
    # the sweep: timeouts, TTLs, retries, lost nodes

    async def sweep(self) -> None:
        now = self.clock()
        # the queue's anti-starvation hold is time-based: give it its chance every sweep
        self._admit_all(self.placement.reevaluate())
        if now - self._last_pod_resync >= self.pod_resync_seconds:
            self._last_pod_resync = now
            try:
                await self.resync_pods()
            except kube.KubeError as exc:
                self.metrics.reconcile_errors.labels(step="resync").inc()
                logger.warning("could not list the worker pods", extra={"error": str(exc)})
        for body in list(self.sessions.values()):
            try:
                await self._sweep_one(body, now)
            except kube.KubeError as exc:
                self.metrics.reconcile_errors.labels(step="sweep").inc()
                logger.warning(
                    "sweep step failed", extra={"session": key_of(body), "error": str(exc)}
                )
        for name, node in list(self.nodes.items()):
            if _node_ready(node):
                self._not_ready_since.pop(name, None)
                continue
            since = self._not_ready_since.setdefault(name, now)
            if now - since >= NODE_LOST_GRACE_SECONDS:
                await self._node_lost(name, f"NotReady for {int(now - since)} s")

    async def _sweep_one(self, body: Obj, now: float) -> None:
        status = self.status_of(body)
        try:
            spec = self.spec_of(body)
        except api.SpecError:
            return
        lifetime = spec.lifetime
        phase = status.phase
        key = key_of(body)
        if phase is not None and phase.finished:
            ended = _timestamp(status.ended_at)
            if body["metadata"].get("uid") not in self._cleaned:
                await self.collect(body)
            expired = ended is not None and now - ended >= lifetime.ttl_seconds_after_finished
            meta = body["metadata"]
            if expired and await self.api.delete_session(meta["namespace"], meta["name"]):
                logger.info("deleted finished session", extra={"session": key})
            return
        if phase is None:
            if now - self._last_attempt.get(key, 0) < RETRY_SCHEDULED_SECONDS:
                return
            self._last_attempt[key] = now
            if key in self._unreported:
                self._start_reports.put_nowait(key)  # started; its status write failed or waits
            else:
                self.request_admission(key)  # an admit that failed on the API, or still queued
            return
        if phase in (api.Phase.SCHEDULED, api.Phase.STARTING):
            started = _timestamp(status.scheduled_at) or self._arrival(body)
            if now - started >= lifetime.join_timeout_seconds:
                await self.end(
                    body,
                    api.EndReason.JOIN_TIMEOUT,
                    f"the worker did not join within {lifetime.join_timeout_seconds} s",
                )
                return
            if (
                phase is api.Phase.SCHEDULED
                and now - self._last_attempt.get(key, 0) >= RETRY_SCHEDULED_SECONDS
            ):
                self.request_admission(key)
        elif phase is api.Phase.JOINED:
            joined = _timestamp(status.joined_at) or now
            if now - joined >= lifetime.max_duration_seconds:
                await self.end(
                    body,
                    api.EndReason.MAX_DURATION,
                    f"the session reached its maximum duration ({lifetime.max_duration_seconds} s)",
                )
                return
            if lifetime.idle_timeout_seconds:
                activity = _timestamp(status.playback.last_activity_at if status.playback else None)
                last = max(joined, activity or 0)
                if now - last >= lifetime.idle_timeout_seconds:
                    await self.end(
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
        known = dict(self.pods)
        present: set[tuple[str, str]] = set()
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        for namespace in namespaces:
            for pod in await self.api.list_pods(manifests.SELECTOR, namespace):
                meta = pod["metadata"]
                present.add((meta["namespace"], meta["name"]))
        for uid, pod in known.items():
            meta = pod["metadata"]
            if self.pods.get(uid) is pod and (meta["namespace"], meta["name"]) not in present:
                logger.info("worker pod gone while pending", extra={"pod": meta["name"]})
                self.observe_pod("DELETED", pod)

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweep failed")

    # ---------------------------------------------------------------------------------------
    # plumbing

    async def _write_status(self, body: Obj, status: Obj) -> Obj:
        meta = body["metadata"]
        updated = await self.api.patch_session_status(meta["namespace"], meta["name"], status)
        key = key_of(body)
        known = self.sessions.get(key)
        if known is None or _rv(updated) >= _rv(known):
            self.sessions[key] = updated
        return updated

    def _event(self, body: Obj, type_: str, *, reason: str, message: str) -> None:
        """Post an Event in the background: a lost Event must never hold up a session."""
        obj = manifests.event(body, type_=type_, reason=reason, message=message, now=_now_rfc3339())
        self._event_queue.put_nowait(obj)

    async def _run_event_poster(self) -> None:
        while True:
            obj = await self._event_queue.get()
            await self.yield_to_admissions(EVENT_MAX_DELAY)
            await self._guard(self.api.create(obj, answer=False), f"event {obj['reason']}")

    def spawn_forever(self, coro: Any, name: str) -> asyncio.Task[None]:
        """A background loop that lives until `aclose()`; a crash is logged, not swallowed."""
        task = asyncio.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except kube.KubeError as exc:
            self.metrics.reconcile_errors.labels(step=name.split()[0]).inc()
            logger.warning("background step failed", extra={"step": name, "error": str(exc)})
        except Exception:
            self.metrics.reconcile_errors.labels(step=name.split()[0]).inc()
            logger.exception("background step crashed", extra={"step": name})

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def publish_gauges(self) -> None:
        """Refresh the gauges from the session cache (at scrape time: O(sessions))."""
        counts = dict.fromkeys((p.value for p in api.Phase), 0)
        for body in self.sessions.values():
            phase = self.status_of(body).phase
            if phase is not None:
                counts[phase.value] += 1
        for name, count in counts.items():
            self.metrics.sessions.labels(phase=name).set(count)
        self.metrics.gpu_vram_reserved.set(sum(r.vram_mib for r in self.placement.ledger))


def _kopf_body(body: Obj) -> kopf.Body:
    """kopf's event and adoption helpers take its Body view of a plain object."""
    return kopf.Body(cast(kopf.RawBody, body))


def _describe(placement: api.Placement | None) -> str:
    if placement is None:
        return "a node the scheduler picks (no GPU)"
    if placement.gpu is None:
        return f"node {placement.node} (no GPU)"
    return f"node {placement.node} GPU {placement.gpu} ({placement.vram_mib} MiB)"


def _now_rfc3339() -> str:
    return api.now().isoformat().replace("+00:00", "Z")


def _rfc3339(unix_seconds: float) -> str:
    return datetime.fromtimestamp(int(unix_seconds), UTC).isoformat().replace("+00:00", "Z")


def _node_ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return True  # a node without conditions (a fresh simulated node) counts as ready


def _pod_failure(pod: Obj) -> str:
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            return (
                f"the worker exited with code {terminated.get('exitCode')}"
                f" ({terminated.get('reason') or 'Error'})"
            )
    return f"the worker pod failed: {status.get('reason') or status.get('message') or 'unknown'}"


def participant_id_for(uid: str) -> str:
    """The avatar's participant id when the spec names none: stable for the session, so every
    attempt to start it (before and after a restart) mints the token for the same id."""
    if not uid:
        return credentials.generate_participant_id()
    return f"avatar_{hashlib.sha256(uid.encode()).hexdigest()[:8]}"


def _participant_of(pod: Obj) -> str | None:
    """The participant id a worker Pod was started with (its environment says)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for var in container.get("env") or []:
            if var.get("name") == PARTICIPANT_ENV:
                value = var.get("value")
                return str(value) if value else None
    return None
