"""Property tests: warm pools under random interleavings, against an in-memory API server.

A hypothesis state machine drives real `Reconciler`s (with their `PoolController`) against
`Cluster`, a small kube-apiserver of our own: create answers 409 on an existing name and assigns
uid, resourceVersion and creationTimestamp; a merge patch that carries
`metadata.resourceVersion` is a precondition (409 when the object changed); Pods are deleted
gracefully (a `deletionTimestamp` first, gone when the kubelet has stopped them); the garbage
collector is a rule. Every write is a watch event, delivered in order to every live operator
replica, as kopf's handlers deliver them.

Rules: pools created, scaled (0..4) and deleted; workers become ready (as the relay marks them
on their first poll); sessions naming a pool created (two at once sometimes, racing the claim),
ended and deleted; worker Pods fail; the kubelet and the garbage collector catch up; the operator
restarts, cleanly or crashed right after one write (the claim patch, a Pod create, the ready
patch...); and two replicas across a failover claim at once on the same API.

Invariants, checked after every step with the background work drained:
1. a claimed worker has one owner, a session; no two sessions name the same Pod; no live
   session is served by two live Pods;
2. the placement ledger holds exactly one reservation per live idle pool worker with a GPU and
   per live session placed on a GPU, nothing for what is gone, and agrees with the fleet index;
3. (rule `converge`) after the pool's pass its idle workers are `spec.replicas` where the fleet
   has room, and its status says what the API holds;
4. a clean restart rebuilds the same idle workers, claims and reservations.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from avatar_devtools.localcluster import fleet
from avatar_operator import kube, manifests, metrics, reconciler
from avatar_operator.pools import manifests as pool_manifests
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api, pools
from avatar_sdk.objects import Obj

NS = "agents"
FLEET = {"nodes": [{"name": "gpu-a", "gpus": 2, "memoryMiB": 81559}]}
VRAM = 24_000  # three workers or sessions per GPU: the fleet fills up now and then
POOLS = {"p-cold": pools.PoolFallback.COLD.value, "p-wait": pools.PoolFallback.WAIT.value}
SESSION_KIND = api.KIND
POOL_KIND = pools.POOL_KIND
CLAIMED = pools.PoolWorkerState.CLAIMED.value
IDLE_STATES = (pools.PoolWorkerState.STARTING.value, pools.PoolWorkerState.READY.value)

# The reconciler logs every failure it survives (an injected crash among them): not news here.
logging.getLogger("avatar_operator").setLevel(logging.CRITICAL)


class Crash(Exception):
    """The operator process died (injected): every later call of that replica fails too."""


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as kube-apiserver applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def selected(obj: Obj, selector: str | None) -> bool:
    """An equality-based label selector (`a=b,c=d`), all the reconciler uses."""
    labels = obj["metadata"].get("labels") or {}
    for term in (selector or "").split(","):
        if term:
            name, _, value = term.partition("=")
            if labels.get(name) != value:
                return False
    return True


def finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def state(pod: Obj) -> str | None:
    labels = pod["metadata"].get("labels") or {}
    return labels.get(pools.POOL_STATE_LABEL) if pools.POOL_LABEL in labels else None


class Cluster:
    """The API server's store, and its watch stream (every change, in order)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}  # (kind, name) → the object (one NS)
        self.version = 100
        self.serial = 0
        self.events: list[tuple[str, str, Obj]] = []  # (kind, type, object)

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def timestamp(self) -> str:
        self.serial += 1  # strictly increasing: "newest" is well defined
        minutes, seconds = divmod(self.serial, 60)
        return f"2026-01-01T{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}Z"

    def emit(self, kind: str, type_: str, obj: Obj) -> None:
        self.events.append((kind, type_, copy.deepcopy(obj)))

    def of(self, kind: str) -> list[Obj]:
        return [obj for (k, _), obj in self.objects.items() if k == kind]

    def uids(self) -> set[str]:
        return {obj["metadata"]["uid"] for obj in self.objects.values()}

    def add(self, obj: Obj) -> Obj:
        kind, meta = obj["kind"], obj["metadata"]
        if (kind, meta["name"]) in self.objects:
            raise kube.Conflict(409, "AlreadyExists", f'{kind} "{meta["name"]}" already exists')
        stored = copy.deepcopy(obj)
        stored["metadata"] = {
            **stored["metadata"],
            "namespace": NS,
            "uid": f"uid-{self.next_version()}",
            "resourceVersion": self.next_version(),
            "creationTimestamp": self.timestamp(),
        }
        stored["metadata"].pop("deletionTimestamp", None)
        if kind in (SESSION_KIND, POOL_KIND):
            stored["metadata"]["generation"] = 1
        if kind == "Pod":
            stored["status"] = {"phase": "Pending"}
        self.objects[(kind, meta["name"])] = stored
        self.emit(kind, "ADDED", stored)
        return copy.deepcopy(stored)

    def change(self, kind: str, name: str, patch: Obj) -> Obj:
        """A merge patch (a resourceVersion in it is a precondition)."""
        current = self.objects.get((kind, name))
        if current is None:
            raise kube.NotFound(404, "NotFound", f'{kind} "{name}" not found')
        patch = copy.deepcopy(patch)
        wanted = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise kube.Conflict(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        updated = merge(current, patch)
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in current["metadata"]:
                updated["metadata"][field] = current["metadata"][field]
        if updated == current:
            return copy.deepcopy(current)  # a no-op patch writes nothing
        if kind in (SESSION_KIND, POOL_KIND) and updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        updated["metadata"]["resourceVersion"] = self.next_version()
        self.objects[(kind, name)] = updated
        self.emit(kind, "MODIFIED", updated)
        return copy.deepcopy(updated)

    def remove(self, kind: str, name: str) -> bool:
        """DELETE: a Pod is marked (the kubelet stops it, then it goes); the rest go at once."""
        current = self.objects.get((kind, name))
        if current is None:
            return False
        if kind == "Pod":
            if not deleting(current):
                current = copy.deepcopy(current)
                current["metadata"]["deletionTimestamp"] = self.timestamp()
                current["metadata"]["resourceVersion"] = self.next_version()
                self.objects[(kind, name)] = current
                self.emit(kind, "MODIFIED", current)
            return True
        del self.objects[(kind, name)]
        self.emit(kind, "DELETED", current)
        return True

    def reap(self) -> None:
        """The kubelet: Pods being deleted are gone once stopped."""
        for pod in self.of("Pod"):
            if deleting(pod):
                del self.objects[("Pod", pod["metadata"]["name"])]
                deleted = copy.deepcopy(pod)
                deleted["metadata"]["resourceVersion"] = self.next_version()
                self.emit("Pod", "DELETED", deleted)

    def collect_garbage(self) -> None:
        """The garbage collector: what has owners, none of which exists, is deleted."""
        while True:
            uids = self.uids()
            orphans = [
                (kind, name)
                for (kind, name), obj in self.objects.items()
                if obj["metadata"].get("ownerReferences")
                and not any(o["uid"] in uids for o in obj["metadata"]["ownerReferences"])
                and not deleting(obj)
            ]
            if not orphans:
                return
            for kind, name in orphans:
                self.remove(kind, name)


class Client:
    """One operator replica's connection to the `Cluster` (`avatar_operator.kube.Kube`'s
    signatures). `crash_when(op, result)` after a write: the process dies right after it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.dead = False
        self.crash_when: Callable[[str, Obj], bool] | None = None

    async def _call(self) -> None:
        if self.dead:
            raise Crash("this replica is dead")
        await asyncio.sleep(0)  # a request is a suspension point: concurrent callers interleave
        if self.dead:
            raise Crash("this replica is dead")

    def _wrote(self, op: str, result: Obj) -> None:
        if self.crash_when is not None and self.crash_when(op, result):
            self.crash_when = None
            self.dead = True
            raise Crash(f"injected: the operator died right after {op}")

    async def create(self, obj: Obj, *, answer: bool = True) -> Obj:
        await self._call()
        if obj["kind"] == "Event":
            return {}
        created = self.cluster.add(obj)
        self._wrote(f"create {obj['kind']}", created)
        return created if answer else {}

    async def ensure(self, obj: Obj) -> bool:
        try:
            await self.create(obj, answer=False)
        except kube.Conflict:
            return False
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        await self._call()
        return self.cluster.remove(kind, name)

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        await self._call()
        patched = self.cluster.change(kind, name, patch)
        self._wrote(f"patch {kind}", patched)
        return patched

    async def patch_pool_status(self, namespace: str, name: str, status: Obj) -> Obj:
        await self._call()
        return self.cluster.change(POOL_KIND, name, {"status": status})

    async def patch_session_status(self, namespace: str, name: str, status: Obj) -> Obj:
        await self._call()
        patched = self.cluster.change(SESSION_KIND, name, {"status": status})
        self._wrote("patch status", patched)
        return patched

    async def read_secret(self, namespace: str, name: str) -> Obj:
        await self._call()
        found = self.cluster.objects.get(("Secret", name))
        if found is not None:
            return copy.deepcopy(found)
        # the VideoSDK credentials the sessions' tokens are minted from
        data = {"apiKey": b"key", "secret": b"s" * 32}
        return {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    async def read_pod(self, namespace: str, name: str) -> Obj:
        await self._call()
        found = self.cluster.objects.get(("Pod", name))
        if found is None:
            raise kube.NotFound(404, "NotFound", f'pods "{name}" not found')
        return copy.deepcopy(found)

    async def list_nodes(self) -> list[Obj]:
        await self._call()
        return [node.manifest() for node in fleet.parse(FLEET).nodes]

    def _list(self, kind: str, selector: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.cluster.of(kind) if selected(o, selector)]

    async def list_sessions(
        self, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        await self._call()
        return self._list(SESSION_KIND, label_selector)

    async def list_pods(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        await self._call()
        return self._list("Pod", label_selector)

    async def list_secrets(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        await self._call()
        return self._list("Secret", label_selector)

    async def list_pools(self, namespace: str | None = None) -> list[Obj]:
        await self._call()
        return self._list(POOL_KIND)


class Replica:
    """One operator process: its Reconciler, its connection, how far it has read the watch."""

    def __init__(self, cluster: Cluster) -> None:
        self.client = Client(cluster)
        settings_ = OperatorSettings(
            status_relay_key="r" * 32, status_url="https://relay:8443", namespaces=[NS]
        )
        self.r = reconciler.Reconciler(
            cast(kube.Kube, self.client),
            settings_,
            metrics_=metrics.Metrics(),
            relay_key=b"r" * 32,
            status_url=settings_.status_url,
        )
        self.cursor = len(cluster.events)

    async def start(self, cluster: Cluster) -> None:
        await self.r.rebuild()
        self.listen(cluster)

    def listen(self, cluster: Cluster) -> None:
        """After `rebuild`, kopf's watches begin with a listing (events of type None)."""
        self.cursor = len(cluster.events)
        for pool in cluster.of(POOL_KIND):
            self.r.pools.observe_pool(None, copy.deepcopy(pool))
        for pod in cluster.of("Pod"):
            if selected(pod, manifests.SELECTOR):
                self.r.observe_pod(None, copy.deepcopy(pod))
        for body in cluster.of(SESSION_KIND):
            self.session_event(None, copy.deepcopy(body))

    def session_event(self, type_: str | None, body: Obj) -> None:
        """`handlers.session_event`."""
        self.r.observe_session(type_, body)
        if self.r.needs_admission(type_, body):
            self.r.request_admission(reconciler.key_of(body))

    def deliver(self, cluster: Cluster) -> bool:
        """The watch events this replica has not seen yet; False if there were none."""
        events = cluster.events[self.cursor :]
        self.cursor = len(cluster.events)
        for kind, type_, obj in events:
            obj = copy.deepcopy(obj)
            if kind == "Pod" and selected(obj, manifests.SELECTOR):
                self.r.observe_pod(type_, obj)
            elif kind == POOL_KIND:
                self.r.pools.observe_pool(type_, obj)
            elif kind == SESSION_KIND:
                self.session_event(type_, obj)
        return bool(events)

    def serve_queues(self) -> bool:
        """What the admission workers and the Starting reporters would pick up (as tasks, so
        that several admissions run at once)."""
        r, served = self.r, False
        admissions = r.admissions
        while not admissions._queue.empty():
            _, _, key = admissions._queue.get_nowait()  # (first or in line, arrival, key)
            admissions._queued.discard(key)
            r.tasks.spawn(self._admit(key), f"admit {key}")
            served = True
        while not r._start_reports.empty():
            key = r._start_reports.get_nowait()
            r.tasks.spawn(self._report_start(key), f"report start {key}")
            served = True
        return served

    async def _admit(self, key: str) -> None:
        admissions = self.r.admissions
        try:
            await self.r._admit_key(key)
        finally:
            admissions._pending -= 1
            if admissions._pending == 0:
                admissions._idle.set()

    async def _report_start(self, key: str) -> None:
        async with self.r.lock(key):
            await self.r._flush_start(key)

    async def busy(self) -> bool:
        """Await the background tasks running now; False if there were none."""
        running = [t for t in self.r.tasks._tasks if not t.done()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        return bool(running)


def pool_body(name: str, replicas: int) -> Obj:
    return {
        "apiVersion": api.API_VERSION,
        "kind": POOL_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "whenEmpty": POOLS[name],
            "template": {"resources": {"vramMiB": VRAM}},
        },
    }


def session_body(name: str, pool: str | None) -> Obj:
    spec: Obj = {"roomId": f"room-{name}"}
    if pool is None:
        spec["resources"] = {"vramMiB": VRAM}
    else:
        spec["poolRef"] = {"name": pool}
    return {
        "apiVersion": api.API_VERSION,
        "kind": SESSION_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def is_finished_session(body: Obj) -> bool:
    phase = (body.get("status") or {}).get("phase")
    return phase is not None and api.Phase(phase).finished


CRASH_POINTS: dict[str, Callable[[str, Obj], bool]] = {
    "claim patch": lambda op, obj: op == "patch Pod" and state(obj) == CLAIMED,
    "ready patch": lambda op, obj: op == "patch Pod" and state(obj) == "ready",
    "worker Pod": lambda op, obj: op == "create Pod" and state(obj) is not None,
    "session Secret": lambda op, obj: (
        op == "create Secret" and pools.POOL_LABEL not in obj["metadata"]["labels"]
    ),
    "Starting status": lambda op, obj: (
        op == "patch status" and (obj.get("status") or {}).get("phase") == "Starting"
    ),
}


@settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.cluster = Cluster()
        # workers' names as `generateName` makes them, but reproducible (hypothesis replays)
        names = itertools.count()
        self._worker_name = pool_manifests.worker_name
        pool_manifests.worker_name = lambda pool_name: f"{pool_name}-{next(names):05d}"
        self.replica = Replica(self.cluster)
        self.others: list[Replica] = []  # a second replica, during a failover step
        self.serial = 0
        self.restarts = 0
        self.run(self.replica.start(self.cluster))
        self.run(self.settle())

    def teardown(self) -> None:
        pool_manifests.worker_name = self._worker_name
        for replica in [self.replica, *self.others]:
            self.loop.run_until_complete(replica.r.aclose())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def r(self) -> reconciler.Reconciler:
        return self.replica.r

    # -- the machinery ------------------------------------------------------------------------

    async def settle(self) -> None:
        """Deliver every watch event and finish all background work, until nothing moves; a
        replica that died (an injected crash) is restarted."""
        for _ in range(500):
            moved = False
            for replica in [self.replica, *self.others]:
                if replica.client.dead:
                    continue
                moved |= replica.deliver(self.cluster)
                moved |= replica.serve_queues()
                moved |= await replica.busy()
            if self.replica.client.dead:
                await self.restart(crashed=True)
                moved = True
            if not moved:
                return
        raise AssertionError("the operator never settled")

    async def restart(self, *, crashed: bool) -> None:
        old = self.replica
        before = None if crashed else self.snapshot(old.r)
        await old.r.aclose()
        self.replica = Replica(self.cluster)
        await self.replica.r.rebuild()
        if before is not None:
            assert self.snapshot(self.replica.r) == before  # 4.
        self.replica.listen(self.cluster)
        self.restarts += 1

    def snapshot(self, r: reconciler.Reconciler) -> tuple[Any, ...]:
        """What a restart must rebuild: idle workers, claims, reservations."""
        idle = sorted(
            key for key, pod in r.pools.workers.items() if not deleting(pod) and not finished(pod)
        )
        claims = sorted(
            (key, pod["metadata"]["labels"].get(manifests.LABEL_SESSION_UID))
            for key, pod in r.pools.claimed.items()
            if not deleting(pod)
        )
        ledger = sorted((res.key, res.node, res.gpu, res.vram_mib) for res in r.placement.ledger)
        return idle, claims, ledger

    def pods(self) -> list[Obj]:
        return self.cluster.of("Pod")

    def sessions(self) -> list[Obj]:
        return self.cluster.of(SESSION_KIND)

    def new_session_name(self) -> str:
        self.serial += 1
        return f"s{self.serial}"

    def create_session(self, pool: str | None) -> Obj:
        return self.cluster.add(session_body(self.new_session_name(), pool))

    def idle_pods(self, pool: str) -> list[Obj]:
        return [
            p
            for p in self.pods()
            if pool_manifests.pool_of(p) == pool
            and state(p) in IDLE_STATES
            and not deleting(p)
            and not finished(p)
        ]

    # -- rules: pools ---------------------------------------------------------------------------

    @initialize(replicas=st.lists(st.integers(0, 4), min_size=2, max_size=2), ready=st.booleans())
    def pools_exist(self, replicas: list[int], ready: bool) -> None:
        """Most runs start with both pools, their workers ready or starting."""
        for name, count in zip(sorted(POOLS), replicas, strict=True):
            self.cluster.add(pool_body(name, count))
        self.run(self.settle())
        if ready:
            self.run(self.make_ready(sorted(self.starting())))

    @rule(name=st.sampled_from(sorted(POOLS)), replicas=st.integers(0, 4))
    def create_or_scale_pool(self, name: str, replicas: int) -> None:
        if (POOL_KIND, name) in self.cluster.objects:
            self.cluster.change(POOL_KIND, name, {"spec": {"replicas": replicas}})
        else:
            self.cluster.add(pool_body(name, replicas))
        self.run(self.settle())

    @rule(name=st.sampled_from(sorted(POOLS)))
    def delete_pool(self, name: str) -> None:
        self.cluster.remove(POOL_KIND, name)
        self.run(self.settle())

    def starting(self) -> list[str]:
        return sorted(
            key
            for key, pod in self.r.pools.workers.items()
            if state(pod) == "starting" and not deleting(pod) and not finished(pod)
        )

    async def make_ready(self, keys: list[str]) -> None:
        """Starting workers' first polls: the relay marks each ready (what the controller
        knows of it, as the relay reads it), concurrently."""

        async def ready(key: str) -> None:
            pod = self.r.pools.workers.get(key)
            if pod is not None:
                await self.r.pools.mark_ready(pod)

        await asyncio.gather(*(ready(key) for key in keys), return_exceptions=True)
        await self.settle()

    @rule(data=st.data(), every=st.booleans())
    def workers_become_ready(self, data: st.DataObject, every: bool) -> None:
        starting = self.starting()
        if not starting:
            return
        keys = starting if every else [data.draw(st.sampled_from(starting))]
        self.run(self.make_ready(keys))

    @rule(data=st.data(), phase=st.sampled_from(["Failed", "Succeeded"]))
    def worker_pod_stops(self, data: st.DataObject, phase: str) -> None:
        """The kubelet reports a pool worker's (idle or claimed) container as exited."""
        live = sorted(
            p["metadata"]["name"]
            for p in self.pods()
            if state(p) is not None and not finished(p) and not deleting(p)
        )
        if not live:
            return
        name = data.draw(st.sampled_from(live))
        self.cluster.change("Pod", name, {"status": {"phase": phase}})
        self.run(self.settle())

    @rule()
    def kubelet_starts_pods(self) -> None:
        for pod in self.pods():
            if (pod.get("status") or {}).get("phase") == "Pending":
                self.cluster.change(
                    "Pod", pod["metadata"]["name"], {"status": {"phase": "Running"}}
                )
        self.run(self.settle())

    @rule()
    def kubelet_reaps_and_gc_collects(self) -> None:
        self.cluster.collect_garbage()
        self.cluster.reap()
        self.run(self.settle())

    # -- rules: sessions --------------------------------------------------------------------------

    @rule(
        pool=st.sampled_from([*sorted(POOLS), None]),
        together=st.integers(1, 2),
        direct=st.booleans(),
    )
    def sessions_arrive(self, pool: str | None, together: int, direct: bool) -> None:
        """One or two sessions; `direct`: admitted at once, concurrently (racing the claim),
        before their watch events arrive."""
        bodies = [self.create_session(pool) for _ in range(together)]

        async def arrive() -> None:
            if direct:
                for body in bodies:
                    self.r.observe_session("ADDED", copy.deepcopy(body))
                await asyncio.gather(
                    *(self.r.admit(copy.deepcopy(b)) for b in bodies), return_exceptions=True
                )
            await self.settle()

        self.run(arrive())

    @rule(data=st.data(), how=st.sampled_from(["end", "delete"]))
    def session_goes(self, data: st.DataObject, how: str) -> None:
        names = sorted(b["metadata"]["name"] for b in self.sessions())
        if not names:
            return
        name = data.draw(st.sampled_from(names))

        async def go() -> None:
            if how == "delete":
                self.cluster.remove(SESSION_KIND, name)
            else:
                body = self.r.session(NS, name)
                if body is not None:
                    await self.r.end(body, api.EndReason.ROOM_ENDED, "the room ended")
            await self.settle()

        self.run(go())

    # -- rules: the operator ----------------------------------------------------------------------

    @rule()
    def operator_restarts(self) -> None:
        async def restart() -> None:
            await self.restart(crashed=False)
            await self.settle()

        self.run(restart())

    @rule(point=st.sampled_from(sorted(CRASH_POINTS)), pool=st.sampled_from(sorted(POOLS)))
    def crash_after_a_write(self, point: str, pool: str) -> None:
        """The process dies right after one write (the next that matches `point`) of what
        comes next: a worker made ready, a pool scaled up, or a session naming `pool`; a new
        process starts from the API."""
        self.replica.client.crash_when = CRASH_POINTS[point]

        async def crash() -> None:
            restarts = self.restarts
            if point == "ready patch":
                await self.make_ready(self.starting()[:1])
            elif point == "worker Pod":
                known = self.cluster.objects.get((POOL_KIND, pool))
                if known is None:
                    self.cluster.add(pool_body(pool, 1))
                else:
                    replicas = known["spec"]["replicas"]
                    self.cluster.change(POOL_KIND, pool, {"spec": {"replicas": replicas + 1}})
            else:
                self.create_session(pool)
            await self.settle()  # restarts it if it died
            self.replica.client.crash_when = None
            event(f"crashed after the {point}: {self.restarts > restarts}")

        self.run(crash())

    @rule(pool=st.sampled_from(sorted(POOLS)))
    def failover_race(self, pool: str) -> None:
        """Two replicas across a failover: the old leader's claim for one session is still in
        flight while the new one (rebuilt from the API) claims for another; then the old one
        has stopped (the Lease: it acts no more), and the new one carries on from the API."""
        first, second = self.create_session(pool), self.create_session(pool)

        async def race() -> None:
            old = self.replica
            new = Replica(self.cluster)
            await new.start(self.cluster)
            new.r.observe_session("ADDED", copy.deepcopy(second))
            # its Lease is gone, but what it had sent still lands: the claim, and the refill
            # the claim starts (a worker Pod the new replica first sees in an event)
            pool_body_ = old.r.pools.pools.get(f"{NS}/{pool}")
            claims: list[Any] = [new.r.admit(copy.deepcopy(second))]
            if pool_body_ is not None:
                claims.append(old.r.pools.claim(copy.deepcopy(first), pool_body_))
            await asyncio.gather(*claims, return_exceptions=True)
            await old.r.aclose()
            self.replica = new
            await self.settle()

        self.run(race())

    @rule()
    def converge(self) -> None:
        """3. after the pool's pass: its idle workers are what it wants where the fleet has
        room, and its status says what the API holds."""

        async def converge() -> None:
            for body in self.cluster.of(POOL_KIND):
                await self.r.pools.reconcile(f"{NS}/{body['metadata']['name']}")
            await self.settle()

        self.run(converge())
        pending = self.r.placement.pending()
        room = self.r.placement.capacity(VRAM).fits
        event(f"converged with room: {bool(room and not pending)}")
        for body in self.cluster.of(POOL_KIND):
            name = body["metadata"]["name"]
            wanted = body["spec"]["replicas"]
            idle = self.idle_pods(name)
            if room and not pending:
                assert len(idle) == wanted, (name, len(idle), wanted)
            else:
                assert len(idle) <= wanted, (name, len(idle), wanted)
            ready = sum(1 for p in idle if state(p) == "ready")
            claimed = [
                p
                for p in self.pods()
                if pool_manifests.pool_of(p) == name and state(p) == CLAIMED and not finished(p)
            ]
            status = body.get("status") or {}
            held = {
                "replicas": len(idle),
                "readyReplicas": ready,
                "starting": len(idle) - ready,
                "claimed": len(claimed),
            }
            assert {k: status.get(k, 0) for k in held} == held, (name, status, held)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def a_worker_is_claimed_once(self) -> None:
        sessions_by_uid = {b["metadata"]["uid"]: b for b in self.sessions()}
        serving: dict[str, list[str]] = {}
        for pod in self.pods():
            meta = pod["metadata"]
            if state(pod) == CLAIMED:
                owners = meta.get("ownerReferences") or []
                assert len(owners) == 1 and owners[0]["kind"] == SESSION_KIND, meta
                assert owners[0]["uid"] == meta["labels"][manifests.LABEL_SESSION_UID], meta
            uid = str((meta.get("labels") or {}).get(manifests.LABEL_SESSION_UID, ""))
            if uid in sessions_by_uid and not deleting(pod) and not finished(pod):
                serving.setdefault(uid, []).append(meta["name"])
        if any(state(p) == CLAIMED for p in self.pods()):
            event("a worker was claimed")
        for uid, names in serving.items():
            if not is_finished_session(sessions_by_uid[uid]):
                assert len(names) == 1, (sessions_by_uid[uid]["metadata"]["name"], names)
        named = [
            b["status"]["podName"]
            for b in self.sessions()
            if (b.get("status") or {}).get("podName")
        ]
        assert len(named) == len(set(named)), named

    @invariant()
    def every_reservation_is_held_once(self) -> None:
        expected: dict[str, tuple[str, int | None]] = {}
        for pod in self.pods():
            placement = manifests.placement_from_pod(pod)
            if state(pod) in IDLE_STATES and not deleting(pod) and not finished(pod) and placement:
                key = pool_manifests.reservation_key(NS, pod["metadata"]["name"])
                expected[key] = (placement.node, placement.gpu)
        pods_by_uid = {
            (p["metadata"].get("labels") or {}).get(manifests.LABEL_SESSION_UID): p
            for p in self.pods()
        }
        for body in self.sessions():
            if is_finished_session(body):
                continue
            status = api.parse_status(body.get("status"))
            own = pods_by_uid.get(body["metadata"]["uid"])
            placement = status.placement or (manifests.placement_from_pod(own) if own else None)
            if placement is not None:
                expected[f"{NS}/{body['metadata']['name']}"] = (placement.node, placement.gpu)
        held = {res.key: (res.node, res.gpu) for res in self.r.placement.ledger}
        for pod in self.pods():
            # a worker claimed by another replica holds its GPU until its session takes it over
            placement = manifests.placement_from_pod(pod)
            owners = pod["metadata"].get("ownerReferences") or [{}]
            session_key = f"{NS}/{owners[0].get('name')}"
            key = pool_manifests.reservation_key(NS, pod["metadata"]["name"])
            live = state(pod) == CLAIMED and not deleting(pod) and not finished(pod)
            if live and placement and key in held and session_key not in held:
                expected[key] = (placement.node, placement.gpu)
        assert held == expected
        assert self.r.placement.audit() == []

    @invariant()
    def no_gpu_over_capacity(self) -> None:
        for gpu in self.r.placement.capacity(VRAM).gpus:
            assert gpu.free_mib >= 0, gpu


TestPools = PoolMachine.TestCase
