"""A simulated kubelet (and just enough scheduler) for the simulated GPU nodes.

It subscribes to the store in-process (no HTTP), and for every Pod on a node it runs:

- **Scheduling**: a Pod without `spec.nodeName` is bound (pods/binding) to the first node, by
  name, that is Ready, not cordoned, matches `nodeSelector` and the required node affinity
  (`matchExpressions` In/NotIn/Exists/DoesNotExist/Gt/Lt on labels, `matchFields` on
  metadata.name, so pinning with `kubernetes.io/hostname` works), tolerates its NoSchedule and
  NoExecute taints, and has `nvidia.com/gpu` left for the Pod's limits. Otherwise the Pod gets
  `PodScheduled=False, reason Unschedulable` and is retried whenever a node or pod changes.
- **Phases** (mode "phases", the default): Pending (ContainerCreating) → Running after
  `start_seconds`, with `Ready`/`ContainersReady` conditions, `podIP`, `hostIP` and running
  `containerStatuses`. A pod runs until deleted, failed on command, or, when annotated with
  `localcluster.avatar-operator.dev/run-seconds: "N"` (and optionally `.../exit-code`), until
  its containers exit after N seconds; `restartPolicy` then decides between a restart and
  Succeeded/Failed.
- **Processes** (mode "process", or the annotation `localcluster.avatar-operator.dev/mode:
  process` on one pod): each container's `command` + `args` runs as a local subprocess (an image
  with no command takes it from `images`), with `$(VAR)` expansion, its env (`value`,
  `valueFrom` secretKeyRef/configMapKeyRef/fieldRef, `envFrom`), and its volumes materialised on
  disk. The exit code decides the container's and the pod's fate as above; deleting the pod
  sends SIGTERM to the process group, then SIGKILL after the grace period (capped by
  `max_grace_seconds`). stdout and stderr go to a file served at `pods/{name}/log`.

**Where a process finds its files (the path rule).** Each pod gets a root directory, exported
as `AVATAR_POD_ROOT`. A volume mounted at an absolute `mountPath` M lives at
`$AVATAR_POD_ROOT/M` (a symlink to the volume's directory). Any command word, argument or env
value that is a path under a mountPath (`/var/run/avatar/token`), or `name=path` with such a
path after the `=` (`--token-file=/var/run/avatar/token`), is rewritten to the path under the
root, so a worker run as a process reads its mounted Secret without knowing it is not in a
container. Only what the pod's spec says is rewritten: the kubelet's own environment, its
interpreter and the pod's directory may lie under a mountPath such as `/tmp` and are left alone.
Volumes: secret, configMap, emptyDir, projected (secret, configMap,
serviceAccountToken), persistentVolumeClaim (a directory per claim that outlives pods) and
hostPath (a symlink to the real path). The service account token directory is materialised
too, and `KUBECONFIG` points at a kubeconfig for this API server, so an in-pod client that
calls `kubernetes.config.load_config()` or kopf reaches it. The process inherits the kubelet's
own environment (PATH, the virtualenv) under the pod's env; a command word `python` or
`python3` runs the kubelet's own interpreter.

**On command** (Python API, and `POST /localcluster/v1/{fail-pod,complete-pod,remove-node,
cordon-node,uncordon-node}` when registered on a server): fail a pod (phase Failed with a
reason), let its containers exit with a code, cordon/uncordon a node (spec.unschedulable and
the `node.kubernetes.io/unschedulable` taint), and remove a node: its pods are marked Failed
with reason `NodeLost` (and a `DisruptionTarget` condition), their processes killed, the Node
deleted, and the pods force-deleted `pod_gc_seconds` later, as the pod garbage collector does.

Left out: probes, init containers (they are treated as already done), resource limits
enforcement, image pulls, NoExecute eviction of running pods, multiple kubelets' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from avatar_devtools import processgroups
from avatar_devtools.localcluster import (
    clock,
    errors,
    fleet,
    podfiles,
    podstatus,
    resources,
    scheduling,
    selectors,
    store,
    watching,
)

logger = logging.getLogger(__name__)

ANNOTATION_PREFIX = "localcluster.avatar-operator.dev/"
ANNOTATION_MODE = ANNOTATION_PREFIX + "mode"
ANNOTATION_RUN_SECONDS = ANNOTATION_PREFIX + "run-seconds"
ANNOTATION_EXIT_CODE = ANNOTATION_PREFIX + "exit-code"
UNSCHEDULABLE_TAINT = scheduling.UNSCHEDULABLE_TAINT
SERVICE_ACCOUNT_DIR = podfiles.SERVICE_ACCOUNT_DIR
POD_ROOT_ENV = podfiles.POD_ROOT_ENV
RESTART_BACKOFF_S = (0.2, 5.0)  # first restart delay, cap

PodKey = tuple[str, str]


class Kubelet:
    """Runs the pods bound to its nodes; one instance serves every simulated node."""

    def __init__(
        self,
        the_store: store.Store,
        *,
        config: fleet.KubeletConfig | None = None,
        workdir: str | os.PathLike[str] | None = None,
        api_url: str | None = None,
        max_grace_seconds: float = 5.0,
        keep_pod_dirs: bool = False,
    ) -> None:
        self.store = the_store
        self.config = config or fleet.KubeletConfig()
        self.api_url = api_url
        self.max_grace_seconds = max_grace_seconds
        self.keep_pod_dirs = keep_pod_dirs
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="localcluster-"))
        self.files = podfiles.PodFiles(
            podfiles.StoreObjects(self.store), self.config, api_url, self.workdir
        )
        self._nodes: dict[str, fleet.NodeSpec] = {}
        self._runs: dict[PodKey, podstatus.PodRun] = {}
        self._mounts: dict[str, list[str]] = {}  # pod uid → its mountPaths (the path rule)
        self._active: set[PodKey] = set()
        self._dirty: set[PodKey] = set()
        self._unscheduled: set[PodKey] = set()
        self._next_ip: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.add_listener(resources.PODS, self._on_pod_event)
        self.store.add_listener(resources.NODES, self._on_node_event)
        self.store.add_listener(resources.SECRETS, self._on_config_event)
        self.store.add_listener(resources.CONFIGMAPS, self._on_config_event)
        self._started = True
        for record in self.store.list(resources.PODS, None).records:
            self._kick((record.namespace, record.name))
        logger.info("kubelet started", extra={"mode": self.config.mode, "nodes": len(self._nodes)})

    async def aclose(self) -> None:
        self._closing = True
        self.store.remove_listener(resources.PODS, self._on_pod_event)
        self.store.remove_listener(resources.NODES, self._on_node_event)
        self.store.remove_listener(resources.SECRETS, self._on_config_event)
        self.store.remove_listener(resources.CONFIGMAPS, self._on_config_event)
        for run in list(self._runs.values()):
            await self._stop_containers(run, grace=0.0)
            self._cancel_run_tasks(run)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for name in self._nodes:
            self.store.graceful_nodes.discard(name)
        if self._own_workdir and not self.keep_pod_dirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        logger.info("kubelet stopped")

    def _spawn(self, coro: Any, run: podstatus.PodRun | None = None) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        bucket = run.tasks if run is not None else self._tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        task.add_done_callback(_log_task_failure)

    # --- nodes ----------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def add_node(self, spec: fleet.NodeSpec) -> watching.Record:
        """Create the Node (if absent) and run its pods from now on."""
        record = self.store.find(resources.NODES, None, spec.name)
        if record is None:
            record = self.store.create(resources.NODES, None, spec.manifest())
        self._nodes[spec.name] = spec
        self.store.graceful_nodes.add(spec.name)
        self._rescan_unscheduled()
        logger.info("node added", extra={"node": spec.name, "gpus": spec.gpus})
        return record

    def add_fleet(self, the_fleet: fleet.Fleet) -> None:
        for spec in the_fleet.nodes:
            self.add_node(spec)

    def cordon_node(self, name: str, cordoned: bool = True) -> watching.Record:
        def change(node: dict[str, Any]) -> None:
            spec = node.setdefault("spec", {})
            taints = [t for t in spec.get("taints") or [] if t.get("key") != UNSCHEDULABLE_TAINT]
            if cordoned:
                spec["unschedulable"] = True
                taints.append(
                    {
                        "key": UNSCHEDULABLE_TAINT,
                        "effect": "NoSchedule",
                        "timeAdded": clock.timestamp(),
                    }
                )
            else:
                spec.pop("unschedulable", None)
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)

        logger.info("node cordon", extra={"node": name, "cordoned": cordoned})
        return self.store.mutate(resources.NODES, None, name, change)

    def uncordon_node(self, name: str) -> watching.Record:
        return self.cordon_node(name, cordoned=False)

    async def remove_node(self, name: str) -> None:
        """The node is lost: its pods fail with reason NodeLost, then the Node is deleted."""
        await self._node_lost(name)
        with contextlib.suppress(errors.ApiError):
            self.store.delete(resources.NODES, None, name)

    async def _node_lost(self, name: str) -> None:
        self._nodes.pop(name, None)
        self.store.graceful_nodes.discard(name)
        on_node = selectors.parse_fields(f"spec.nodeName={name}", resources.PODS.field_labels)
        lost = self.store.list(resources.PODS, None, fields=on_node).records
        message = f"Node {name} which was running the pod is unresponsive"
        for record in lost:
            key = (record.namespace, record.name)
            run = self._runs.get(key)
            if run is not None:
                run.failed = ("NodeLost", message)
                await self._stop_containers(run, grace=0.0)
            if record.obj.get("status", {}).get("phase") not in store.TERMINAL_POD_PHASES:
                self._write_status(key, podstatus.lost_status(record.obj, message))
        logger.info("node lost", extra={"node": name, "pods": len(lost)})
        if lost:
            self._spawn(self._collect_orphans([(r.namespace, r.name) for r in lost]))

    async def _collect_orphans(self, keys: list[PodKey]) -> None:
        await asyncio.sleep(self.config.pod_gc_seconds)
        for namespace, name in keys:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(resources.PODS, namespace, name, grace_period=0)

    # --- pods on command ------------------------------------------------------------------

    async def fail_pod(
        self,
        namespace: str,
        name: str,
        *,
        reason: str = "Error",
        message: str = "failed on command",
        exit_code: int = 1,
    ) -> None:
        """Kill the pod's containers and mark it Failed, whatever its restartPolicy."""
        key = (namespace, name)
        record = self.store.get(resources.PODS, namespace, name)
        run = self._runs.get(key)
        if run is None:
            run = self._new_run(record.obj)
            self._runs[key] = run
        run.failed = (reason, message)
        now = clock.timestamp()
        processes = []
        for container in run.containers.values():
            if container.process is not None:
                processes.append(container.process)
                container.process = None  # its exit is ours to report, not the waiter's
            if container.exit_code is None:
                container.exit_code = exit_code
                container.reason = reason
                container.finished_at = now
                container.started_at = container.started_at or now
        await asyncio.gather(*(processgroups.terminate(p, 0.0) for p in processes))
        self._write_status(key, podstatus.pod_status(record.obj, run, self._nodes.get(run.node)))
        self._kick(key)
        logger.info("pod failed on command", extra={"pod": f"{namespace}/{name}", "reason": reason})

    async def complete_pod(
        self, namespace: str, name: str, *, exit_code: int = 0, container: str | None = None
    ) -> None:
        """Let the pod's containers (or one) exit with `exit_code`; restartPolicy decides."""
        key = (namespace, name)
        run = self._runs.get(key)
        if run is None or not run.started:
            raise errors.bad_request(f'pod "{name}" is not running on a simulated node')
        for run_container in run.containers.values():
            if container is not None and run_container.name != container:
                continue
            process, run_container.process = run_container.process, None
            if process is not None:
                await processgroups.terminate(process, 0.0)
            run_container.exit_code = exit_code
            run_container.reason = "Completed" if exit_code == 0 else "Error"
            run_container.finished_at = clock.timestamp()
        self._kick(key)

    def register_controls(self, server: Any) -> None:
        """Serve the commands as `POST /localcluster/v1/{name}` on an `ApiServer`."""

        async def fail_pod(body: dict[str, Any]) -> dict[str, Any]:
            await self.fail_pod(
                body.get("namespace", "default"),
                body["name"],
                reason=body.get("reason", "Error"),
                message=body.get("message", "failed on command"),
                exit_code=int(body.get("exitCode", 1)),
            )
            return {"ok": True}

        async def complete_pod(body: dict[str, Any]) -> dict[str, Any]:
            await self.complete_pod(
                body.get("namespace", "default"),
                body["name"],
                exit_code=int(body.get("exitCode", 0)),
                container=body.get("container"),
            )
            return {"ok": True}

        async def remove_node(body: dict[str, Any]) -> dict[str, Any]:
            await self.remove_node(body["name"])
            return {"ok": True}

        async def cordon_node(body: dict[str, Any]) -> dict[str, Any]:
            self.cordon_node(body["name"])
            return {"ok": True}

        async def uncordon_node(body: dict[str, Any]) -> dict[str, Any]:
            self.uncordon_node(body["name"])
            return {"ok": True}

        server.add_control("fail-pod", fail_pod)
        server.add_control("complete-pod", complete_pod)
        server.add_control("remove-node", remove_node)
        server.add_control("cordon-node", cordon_node)
        server.add_control("uncordon-node", uncordon_node)
        server.log_reader = self.read_log

    def read_log(self, namespace: str, name: str, container: str | None) -> str | None:
        run = self._runs.get((namespace, name))
        if run is None or run.directory is None:
            return None
        names = [container] if container else list(run.containers)[:1]
        path = run.directory / "logs" / f"{names[0]}.log"
        if not path.exists():
            return None
        return path.read_text(encoding="utf-8", errors="replace")

    def pod_root(self, namespace: str, name: str) -> Path | None:
        """The `AVATAR_POD_ROOT` of a pod run as processes."""
        run = self._runs.get((namespace, name))
        return run.directory / "root" if run and run.directory else None

    def container_pid(self, namespace: str, name: str, container: str | None = None) -> int | None:
        """The process id of a running container (its first, unless named); None otherwise.

        For tests and demos that kill a worker from outside, as an OOM kill or a crash would.
        """
        run = self._runs.get((namespace, name))
        if run is None:
            return None
        runs = [run.containers[container]] if container in run.containers else []
        if container is None:
            runs = list(run.containers.values())[:1]
        process = runs[0].process if runs else None
        return process.pid if process is not None and process.returncode is None else None

    # --- events ---------------------------------------------------------------------------

    def _on_pod_event(self, event: watching.WatchEvent) -> None:
        key = (event.record.namespace, event.record.name)
        self._kick(key)
        if event.kind == watching.DELETED or (
            event.record.obj.get("status", {}).get("phase") in store.TERMINAL_POD_PHASES
        ):
            self._rescan_unscheduled()  # capacity may have freed up

    def _on_node_event(self, event: watching.WatchEvent) -> None:
        name = event.record.name
        if event.kind == watching.DELETED and name in self._nodes:
            self._spawn(self._node_lost(name))
        else:
            self._rescan_unscheduled()

    def _on_config_event(self, event: watching.WatchEvent) -> None:
        namespace = event.record.namespace
        for key, run in self._runs.items():
            if key[0] == namespace and run.waiting is not None:
                self._kick(key)

    def _rescan_unscheduled(self) -> None:
        for key in list(self._unscheduled):
            self._kick(key)

    def _kick(self, key: PodKey) -> None:
        if self._closing or not self._started:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        self._active.add(key)
        self._spawn(self._reconcile_loop(key))

    async def _reconcile_loop(self, key: PodKey) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await self._reconcile(key)
                except errors.ApiError as e:
                    if e.code not in (404, 409):
                        logger.warning(
                            "pod sync failed", extra={"pod": "/".join(key), "error": e.message}
                        )
                if key not in self._dirty or self._closing:
                    break
        finally:
            self._active.discard(key)

    # --- the pod state machine ------------------------------------------------------------

    async def _reconcile(self, key: PodKey) -> None:
        record = self.store.find(resources.PODS, key[0], key[1])
        run = self._runs.get(key)
        if record is None:
            self._unscheduled.discard(key)
            if run is not None:
                await self._forget(key, run)
            return
        pod = record.obj
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if run is not None and run.uid != meta["uid"]:
            await self._forget(key, run)
            run = None
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                self._schedule(key, pod)
            return
        self._unscheduled.discard(key)
        if node not in self._nodes:
            return
        if meta.get("deletionTimestamp"):
            if run is not None:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                await self._stop_containers(run, grace=grace)
            with contextlib.suppress(errors.ApiError):
                self.store.delete(resources.PODS, key[0], key[1], grace_period=0)
            return
        phase = (pod.get("status") or {}).get("phase")
        if run is None:
            if phase in store.TERMINAL_POD_PHASES:
                return
            run = self._runs[key] = self._new_run(pod)
        if phase in store.TERMINAL_POD_PHASES:
            await self._stop_containers(run, grace=0.0)
            return
        if run.failed is None:
            await self._advance(key, pod, run)
        self._write_status(key, podstatus.pod_status(pod, run, self._nodes.get(run.node)))

    def _new_run(self, pod: dict[str, Any]) -> podstatus.PodRun:
        spec = pod.get("spec") or {}
        annotations = pod["metadata"].get("annotations") or {}
        node = spec.get("nodeName") or ""
        mode = annotations.get(ANNOTATION_MODE, self.config.mode)
        containers = {
            c["name"]: podstatus.ContainerRun(name=c["name"], image=str(c.get("image", "")))
            for c in spec.get("containers") or []
        }
        return podstatus.PodRun(
            uid=pod["metadata"]["uid"],
            mode=mode if mode in ("phases", "process") else self.config.mode,
            node=node,
            pod_ip=self._allocate_ip(node),
            containers=containers,
        )

    def _allocate_ip(self, node: str) -> str:
        spec = self._nodes.get(node)
        subnet = int(spec.address.rsplit(".", 1)[1]) if spec else 0
        host = self._next_ip.get(node, 1) + 1
        self._next_ip[node] = host if host < 254 else 1
        return f"10.244.{subnet}.{host}"

    async def _advance(self, key: PodKey, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        """Start the containers, restart the ones that exited, as the restartPolicy says."""
        loop = asyncio.get_running_loop()
        if not run.started:
            gpu_problem = self._admission_problem(pod, run.node)
            if gpu_problem is not None:
                run.failed = ("UnexpectedAdmissionError", gpu_problem)
                return
            try:
                if run.mode == "process":
                    await self._start_processes(key, pod, run)
                else:
                    self._start_phases(key, pod, run)
            except podfiles.PodSetupError as e:
                run.waiting = (e.reason, e.message)
                return
            run.waiting = None
            run.started = True
            run.start_time = clock.timestamp()
            return
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        for container in run.containers.values():
            if container.exit_code is None:
                continue
            restart = policy == "Always" or (policy == "OnFailure" and container.exit_code != 0)
            if not restart:
                continue
            if container.restart_at is None:
                delay = min(RESTART_BACKOFF_S[0] * 2**container.restart_count, RESTART_BACKOFF_S[1])
                container.restart_at = loop.time() + delay
                self._spawn(self._kick_later(key, delay), run)
            elif loop.time() >= container.restart_at:
                container.last_state = {"terminated": podstatus.terminated(container)}
                container.restart_count += 1
                container.exit_code = None
                container.finished_at = None
                container.restart_at = None
                container.started_at = clock.timestamp()
                if run.mode == "process":
                    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container.name)
                    await self._spawn_process(key, pod, run, spec)
                else:
                    self._schedule_phase_exit(key, pod, run, container)

    async def _kick_later(self, key: PodKey, delay: float) -> None:
        await asyncio.sleep(delay)
        self._kick(key)

    def _admission_problem(self, pod: dict[str, Any], node: str) -> str | None:
        spec = self._nodes.get(node)
        wanted = scheduling.gpu_request(pod)
        if not wanted:
            return None
        free = (spec.gpus if spec else 0) - self._gpus_in_use(node, exclude=pod["metadata"]["uid"])
        if wanted > free:
            return (
                "Allocate failed due to requested number of devices unavailable for "
                f"{fleet.GPU_RESOURCE}. Requested: {wanted}, Available: {max(free, 0)}"
            )
        return None

    def _in_use(self, node: str, exclude: str = "") -> scheduling.Usage:
        on_node = selectors.parse_fields(f"spec.nodeName={node}", resources.PODS.field_labels)
        used = scheduling.Usage()
        for record in self.store.list(resources.PODS, None, fields=on_node).records:
            obj = record.obj
            if obj["metadata"]["uid"] == exclude:
                continue
            if (obj.get("status") or {}).get("phase") in store.TERMINAL_POD_PHASES:
                continue
            used = used.plus(obj)
        return used

    def _gpus_in_use(self, node: str, exclude: str = "") -> int:
        return self._in_use(node, exclude).gpus

    # --- phases mode ----------------------------------------------------------------------

    def _start_phases(self, key: PodKey, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        loop = asyncio.get_running_loop()
        run.running_at = loop.time() + self.config.start_seconds
        if self.config.start_seconds > 0:
            self._spawn(self._kick_later(key, self.config.start_seconds), run)
        started = clock.timestamp(time.time() + self.config.start_seconds)
        for container in run.containers.values():
            container.started_at = started
            self._schedule_phase_exit(key, pod, run, container)

    def _schedule_phase_exit(
        self,
        key: PodKey,
        pod: dict[str, Any],
        run: podstatus.PodRun,
        container: podstatus.ContainerRun,
    ) -> None:
        annotations = pod["metadata"].get("annotations") or {}
        if ANNOTATION_RUN_SECONDS not in annotations:
            return
        seconds = float(annotations[ANNOTATION_RUN_SECONDS]) + self.config.start_seconds
        code = int(annotations.get(ANNOTATION_EXIT_CODE, "0"))

        async def exit_later() -> None:
            await asyncio.sleep(seconds)
            if container.exit_code is None:
                container.exit_code = code
                container.reason = "Completed" if code == 0 else "Error"
                container.finished_at = clock.timestamp()
                self._kick(key)

        self._spawn(exit_later(), run)

    # --- process mode ---------------------------------------------------------------------

    async def _start_processes(
        self, key: PodKey, pod: dict[str, Any], run: podstatus.PodRun
    ) -> None:
        directory = self.workdir / "pods" / f"{key[0]}_{key[1]}_{run.uid[:8]}"
        run.directory = directory
        mounts = self.files.materialise_volumes(pod, directory)
        run.running_at = 0.0
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        self._mounts[run.uid] = mounts
        now = clock.timestamp()
        for spec in pod["spec"]["containers"]:
            self.files.environment(
                pod, spec, run
            )  # raises podfiles.PodSetupError before anything runs
        for spec in pod["spec"]["containers"]:
            run.containers[spec["name"]].started_at = now
            await self._spawn_process(key, pod, run, spec)

    async def _spawn_process(
        self, key: PodKey, pod: dict[str, Any], run: podstatus.PodRun, spec: dict[str, Any]
    ) -> None:
        container = run.containers[spec["name"]]
        assert run.directory is not None
        root = run.directory / "root"
        base, own = self.files.environment_parts(pod, spec, run)
        argv = self.files.argv(spec, {**base, **own})
        if not argv:
            container.exit_code = 128
            container.reason = "ContainerCannotRun"
            container.message = (
                f"localcluster: container {spec['name']} has no command, and image "
                f"{container.image!r} has no entry in the kubelet's images"
            )
            container.finished_at = clock.timestamp()
            self._kick(key)
            return
        # The path rule applies to what the pod's spec says, never to the kubelet's own paths
        # (its interpreter, its environment, the pod's directory): with a mountPath such as
        # /tmp, those may lie under it too.
        rewrite = podfiles.path_rewriter(self._mounts.get(run.uid, []), root)
        argv = [rewrite(a) for a in argv]
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {**base, **{k: rewrite(v) for k, v in own.items()}}
        cwd = root / spec["workingDir"].lstrip("/") if spec.get("workingDir") else root
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = run.directory / "logs" / f"{spec['name']}.log"
        with log_path.open("ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=str(cwd),
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                container.exit_code = 128
                container.reason = "StartError"
                container.message = f"failed to start {argv[0]!r}: {e}"
                container.finished_at = clock.timestamp()
                self._kick(key)
                return
        container.process = process
        logger.info(
            "container started",
            extra={"pod": "/".join(key), "container": spec["name"], "pid": process.pid},
        )
        self._spawn(self._wait_process(key, container, process), run)

    async def _wait_process(
        self, key: PodKey, container: podstatus.ContainerRun, process: asyncio.subprocess.Process
    ) -> None:
        code = await process.wait()
        if container.process is not process:
            return
        container.process = None
        if container.exit_code is None:
            container.exit_code = code if code >= 0 else 128 - code
            container.reason = "Completed" if code == 0 else "Error"
            container.finished_at = clock.timestamp()
        logger.info(
            "container exited",
            extra={"pod": "/".join(key), "container": container.name, "exit_code": code},
        )
        self._kick(key)

    async def _stop_containers(self, run: podstatus.PodRun, *, grace: float) -> None:
        grace = min(grace, self.max_grace_seconds)
        processes = [c.process for c in run.containers.values() if c.process is not None]
        await asyncio.gather(*(processgroups.terminate(p, grace) for p in processes))

    def _cancel_run_tasks(self, run: podstatus.PodRun) -> None:
        for task in list(run.tasks):
            if task is not asyncio.current_task():
                task.cancel()

    async def _forget(self, key: PodKey, run: podstatus.PodRun) -> None:
        await self._stop_containers(run, grace=0.0)
        self._cancel_run_tasks(run)
        self._runs.pop(key, None)
        self._mounts.pop(run.uid, None)
        if run.directory is not None and not self.keep_pod_dirs:
            shutil.rmtree(run.directory, ignore_errors=True)

    # --- scheduling -----------------------------------------------------------------------

    def _schedule(self, key: PodKey, pod: dict[str, Any]) -> None:
        reasons: dict[str, int] = {}
        for name in sorted(self._nodes):
            record = self.store.find(resources.NODES, None, name)
            if record is None:
                continue
            why = self._unfit_on(pod, record.obj)
            if why is None:
                self._unscheduled.discard(key)
                self.store.bind(key[0], key[1], name)
                logger.info("pod scheduled", extra={"pod": "/".join(key), "node": name})
                return
            reasons[why] = reasons.get(why, 0) + 1
        self._unscheduled.add(key)
        summary = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
        message = f"0/{len(self._nodes)} nodes are available" + (
            f": {summary}." if summary else "."
        )
        condition: dict[str, Any] = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
        }
        current = next(
            (
                c
                for c in (pod.get("status") or {}).get("conditions") or []
                if c.get("type") == "PodScheduled"
            ),
            None,
        )
        if current is not None and current.get("message") == message:
            return
        condition["lastTransitionTime"] = clock.timestamp()
        condition["lastProbeTime"] = None

        def change(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            others = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            status["conditions"] = [*others, condition]

        with contextlib.suppress(errors.ApiError):
            self.store.mutate(resources.PODS, key[0], key[1], change, subresource="status")

    def _unfit_on(self, pod: dict[str, Any], node: dict[str, Any]) -> str | None:
        return scheduling.unfit(pod, node, self._in_use(node["metadata"]["name"]))

    # --- status ---------------------------------------------------------------------------

    def _write_status(self, key: PodKey, status: dict[str, Any]) -> None:
        def change(obj: dict[str, Any]) -> None:
            obj["status"] = status

        with contextlib.suppress(errors.ApiError):
            self.store.mutate(resources.PODS, key[0], key[1], change, subresource="status")


# --- helpers ----------------------------------------------------------------------------------


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("kubelet task failed", exc_info=task.exception())
