"""A node agent: simulated GPU nodes on any Kubernetes API server, over HTTPS.

It reads the same fleet files as the emulator (`avatar_devtools.localcluster.fleet`; e.g.
`examples/fleet.yaml`) and, for each node, with that node's own kubelet credentials (a client
certificate CN=system:node:<name>, O=system:nodes, so the Node authorizer and NodeRestriction
admit it and nothing more):

- registers the Node: GPU Feature Discovery labels (`nvidia.com/gpu.count`, `.memory`,
  `.product`, `.present`), capacity and allocatable (cpu, memory, pods, `nvidia.com/gpu`),
  taints, `unschedulable`; addresses on loopback (127.0.1.x); the Pod CIDR is left to the
  controller-manager's node IPAM;
- keeps its Lease in `kube-node-lease` renewed and its Ready condition heartbeating;
- moves the Pods the scheduler binds to it through their phases: Pending (ContainerCreating,
  hostIP, startTime) → Running after the fleet's `kubelet.startSeconds` (Ready and
  ContainersReady conditions, running containerStatuses, a podIP from the node's podCIDR);
  with the emulator's annotation `localcluster.avatar-operator.dev/run-seconds: "N"` (and
  `.../exit-code`) the containers exit after N seconds and `restartPolicy` decides between a
  restart and Succeeded/Failed; a Pod marked for deletion is deleted with grace 0;
- or, with the fleet's `kubelet.mode: process`, runs each bound Pod's containers as processes of
  this machine, as a kubelet would (`avatar_devtools.realcluster.podrunner`: its own mount
  namespace with the volumes at their mountPaths, Secrets, ConfigMaps and a TokenRequest token
  read with the node's credentials, probes, restartPolicy, exit codes, graceful deletion), and
  serves the kubelet's `containerLogs` endpoint on the node's address, port 10250, over TLS,
  when given a serving certificate, so `kubectl logs` works through the API server.

Controls, for tests (the emulator's verbs and bodies, `POST /localcluster/v1/{verb}` with a JSON
body, served on 127.0.0.1 only with `--control-port`): `fail-pod` (namespace, name, reason,
message, exitCode: the containers die and the Pod is Failed, whatever its restartPolicy),
`complete-pod` (namespace, name, exitCode), `remove-node` (name: the node goes silent — no
Lease renewal, no status heartbeat — so the controller-manager marks it NotReady, which is what
losing a node is on a real cluster; the emulator also fails its Pods and deletes the Node) and
`restore-node` (name: heartbeats resume).

`python -m avatar_devtools.realcluster.nodeagent --server URL --ca CA --credentials DIR --fleet
FLEET` (DIR holds `<node>.crt`/`<node>.key`; process mode also takes `--workdir`, and
`--serving-certificates DIR2` with `<node>-serving.crt`/`.key` for the log endpoint, and
`--proxy-cert`/`--proxy-key` for per-Pod networks: `process_mode_args(cluster, fleet)` makes
and names them all); `realcluster up --fleet` starts it for you (phases: the cluster's start-up
passes none of the process-mode arguments today).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import shutil
import signal
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web

from avatar_devtools.localcluster import clock, fleet, podstatus
from avatar_devtools.realcluster import podrunner, watchstream

logger = logging.getLogger("avatar_devtools.realcluster.nodeagent")

ANNOTATION_PREFIX = "localcluster.avatar-operator.dev/"
ANNOTATION_RUN_SECONDS = ANNOTATION_PREFIX + "run-seconds"
ANNOTATION_EXIT_CODE = ANNOTATION_PREFIX + "exit-code"
LEASE_NAMESPACE = "kube-node-lease"
MERGE_PATCH = "application/merge-patch+json"
RESTART_DELAY_S = 0.2
KUBELET_PORT = 10250
LOG_FOLLOW_POLL_S = 0.2

Credentials = Callable[[str], tuple[Path, Path]]
ServingCertificate = Callable[[str, str], tuple[Path, Path]]  # (node, its IP) → (crt, key)
# (node, its spec.podCIDR) → its Pod network: `nodenetwork.NodeNetworks.node` is one
NetworkFor = Callable[[str, str], Awaitable[podrunner.PodNetwork]]


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def loopback_address(index: int) -> str:
    """The node's InternalIP: 127.0.1.<index+1>, loopback, so nothing ever leaves the host."""
    return str(ipaddress.IPv4Address("127.0.1.1") + index)


APIError = podrunner.APIError


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    start_seconds: float = 0.05
    lease_duration_s: int = 40
    lease_renew_s: float = 10.0
    status_heartbeat_s: float = 20.0
    workdir: Path | None = None  # process mode: the Pods' folders (default: a temporary one)
    keep_pod_dirs: bool = False  # process mode: keep a Pod's folder after its object is gone
    # the log endpoint refuses a caller without a client certificate of the cluster CA (give
    # kube-apiserver `PKI.kubelet_client_args()` first); otherwise one is checked when given
    logs_require_client_certificate: bool = False
    # process mode: the securityContext's runAsUser/runAsGroup/fsGroup/supplementalGroups and
    # readOnlyRootFilesystem honoured (False: every container runs as the agent's user)
    security_context: bool = True


class NodeRunner:
    """One node: its registration, Lease, heartbeat, and the Pods bound to it."""

    def __init__(
        self,
        server: str,
        ca_file: Path,
        cert: Path,
        key: Path,
        spec: fleet.NodeSpec,
        config: AgentConfig,
        *,
        kubelet: fleet.KubeletConfig | None = None,
        network_for: NetworkFor | None = None,
        workdir: Path | None = None,
        serving: tuple[Path, Path] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.spec = spec
        self.name = spec.name
        self.config = config
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(cert), str(key))
        self._ssl = context
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None
        self._runs: dict[str, podstatus.PodRun] = {}  # pod uid → what this node runs
        self._deleting: set[str] = set()
        self._used_ips: dict[str, str] = {}  # pod uid → its IP
        self._pod_cidr: ipaddress.IPv4Network | None = None
        self._node_uid = ""
        self._kubelet_version = "v0.0.0"
        self._tasks: set[asyncio.Task[None]] = set()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) → the Pod
        self.registered = asyncio.Event()
        self.silent = False  # `remove-node`: no Lease renewal, no status heartbeat
        self.kubelet = kubelet or fleet.KubeletConfig()
        self.process_mode = self.kubelet.mode == "process"
        self.network: podrunner.PodNetwork = _NodePodNetwork(self, network_for)
        self.workdir = workdir or Path(tempfile.gettempdir())
        self.serving = serving
        self.namespaces = podrunner.mount_namespaces_permitted()
        self.process_pods: dict[str, podrunner.ProcessPod] = {}  # pod uid → its processes
        self._status_locks: dict[str, asyncio.Lock] = {}
        self._log_server: web.AppRunner | None = None

    # --- HTTP -----------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=None),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            text = await response.text()
            try:
                decoded: Any = json.loads(text) if text else None
            except ValueError:
                decoded = text
            if response.status not in ok:
                raise APIError(response.status, decoded)
            return decoded

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        if self.process_mode and self.serving is not None:
            self._log_server = await self._serve_logs(self.serving)
        if self.process_mode and not self.namespaces:
            logger.warning(
                "node %s: no mount namespaces here (not root): volumes by the path rule "
                "(AVATAR_POD_ROOT), not at their mountPaths",
                self.name,
            )
        await self._register()
        self.registered.set()
        self._spawn(self._lease_loop())
        self._spawn(self._status_loop())
        await self._pods_loop()

    async def aclose(self) -> None:
        for uid, process_pod in list(self.process_pods.items()):
            await process_pod.stop(0.0)
            self._remove_pod_dir(uid)
        if self._log_server is not None:
            await self._log_server.cleanup()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("node %s: task failed", self.name, exc_info=task.exception())

    # --- the Node -------------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        manifest = self.spec.manifest()
        manifest["spec"].pop("podCIDR", None)  # the controller-manager's node IPAM assigns it
        endpoint = manifest["status"].setdefault("daemonEndpoints", {})
        endpoint["kubeletEndpoint"] = {"Port": KUBELET_PORT}
        info = manifest["status"]["nodeInfo"]
        info.update(
            {
                "osImage": "avatar-devtools node agent",
                "containerRuntimeVersion": "nodeagent://0.1",
                "kubeletVersion": self._kubelet_version,
            }
        )
        info.pop("kubeProxyVersion", None)
        return manifest

    def _node_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._manifest()["status"]
        now = clock.timestamp()
        for condition in status["conditions"]:
            condition["lastHeartbeatTime"] = now
        return status

    async def _register(self) -> None:
        version = await self.request("GET", "/version")
        self._kubelet_version = str(version.get("gitVersion", "v0.0.0"))
        manifest = self._manifest()
        body = {k: manifest[k] for k in ("apiVersion", "kind", "metadata", "spec")}
        body["status"] = manifest["status"]
        try:
            node = await self.request("POST", "/api/v1/nodes", body)
        except APIError as error:
            if error.status != 409:
                raise
            node = await self.request(
                "PATCH",
                f"/api/v1/nodes/{self.name}",
                {"metadata": {"labels": manifest["metadata"]["labels"]}},
                content_type=MERGE_PATCH,
            )
        self._node_uid = node["metadata"]["uid"]
        await self._write_node_status()
        logger.info("node %s registered", self.name)

    async def _write_node_status(self) -> None:
        node = await self.request(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            {"status": self._node_status()},
            content_type=MERGE_PATCH,
        )
        cidr = (node.get("spec") or {}).get("podCIDR")
        if cidr:
            self._pod_cidr = ipaddress.IPv4Network(cidr)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_heartbeat_s)
            if self.silent:
                continue
            try:
                await self._write_node_status()
            except (APIError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("node %s: status heartbeat failed: %s", self.name, error)

    async def _lease_loop(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        while True:
            try:
                if not self.silent:
                    await self._renew_lease(path)
            except (APIError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("node %s: lease renewal failed: %s", self.name, error)
            await asyncio.sleep(self.config.lease_renew_s)

    async def _renew_lease(self, path: str) -> None:
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": self.config.lease_duration_s,
            "renewTime": _micro_time(),
        }
        try:
            await self.request("PATCH", path, {"spec": spec}, content_type=MERGE_PATCH)
        except APIError as error:
            if error.status != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.name,
                            "uid": self._node_uid,
                        }
                    ],
                },
                "spec": spec,
            }
            await self.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", lease
            )

    # --- Pods -----------------------------------------------------------------------------

    async def _pods_loop(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while True:
            try:
                listing = await self.request(
                    "GET", "/api/v1/pods", params={"fieldSelector": selector}
                )
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    await self._on_pod(pod)
                for uid in set(self._runs) - seen:
                    self._forget(uid)
                await self._watch(selector, listing["metadata"]["resourceVersion"])
            except asyncio.CancelledError:
                raise
            except (APIError, aiohttp.ClientError, TimeoutError, ValueError) as error:
                logger.warning("node %s: pod watch: %s; listing again", self.name, error)
                await asyncio.sleep(1.0)

    async def _watch(self, selector: str, resource_version: str) -> None:
        while True:
            params = {
                "fieldSelector": selector,
                "watch": "1",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "240",
            }
            async with self.session.get(
                self.server + "/api/v1/pods",
                params=params,
                timeout=aiohttp.ClientTimeout(total=300, sock_read=300),
            ) as response:
                async for kind, obj in watchstream.events(response):
                    resource_version = obj.get("metadata", {}).get("resourceVersion", "")
                    if kind in ("ADDED", "MODIFIED"):
                        await self._on_pod(obj)
                    elif kind == "DELETED":
                        self._forget(obj["metadata"]["uid"])

    def _forget(self, uid: str) -> None:
        for key, pod in list(self._pods.items()):
            if pod["metadata"]["uid"] == uid:
                del self._pods[key]
        run = self._runs.pop(uid, None)
        if run is not None:
            for task in list(run.tasks):
                task.cancel()
        self._used_ips.pop(uid, None)
        self._deleting.discard(uid)
        self._status_locks.pop(uid, None)
        process_pod = self.process_pods.pop(uid, None)
        if process_pod is not None:  # deleted with grace 0 by someone else: kill at once
            self._spawn(self._stop_forgotten(uid, process_pod))

    async def _stop_forgotten(self, uid: str, process_pod: podrunner.ProcessPod) -> None:
        await process_pod.stop(0.0)
        self._remove_pod_dir(uid, process_pod.directory)

    def _remove_pod_dir(self, uid: str, directory: Path | None = None) -> None:
        if directory is None:
            process_pod = self.process_pods.get(uid)
            directory = process_pod.directory if process_pod is not None else None
        if directory is not None and not self.config.keep_pod_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    async def _on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        self._pods[(meta["namespace"], meta["name"])] = pod
        if meta.get("deletionTimestamp"):
            if uid not in self._deleting:
                self._deleting.add(uid)
                self._spawn(self._delete(pod))
            return
        phase = (pod.get("status") or {}).get("phase")
        if uid in self._runs or phase in ("Succeeded", "Failed"):
            return
        if self.process_mode:
            self._start_processes(pod)
            return
        if phase == "Running":
            self._adopt(pod)
            return
        run = podstatus.PodRun(
            uid=uid,
            mode="phases",
            node=self.name,
            pod_ip="",
            containers={
                c["name"]: podstatus.ContainerRun(name=c["name"], image=c.get("image", ""))
                for c in pod["spec"].get("containers") or []
            },
            started=True,
            running_at=asyncio.get_running_loop().time() + self.config.start_seconds,
            start_time=clock.timestamp(),
        )
        self._runs[uid] = run
        self._start(pod, run)

    def _start_processes(self, pod: dict[str, Any]) -> None:
        """Process mode: the Pod's containers as processes (`podrunner`). A Pod found Running
        when the agent starts has no processes of ours: its containers start again."""
        meta = pod["metadata"]
        uid = meta["uid"]
        run = podstatus.PodRun(
            uid=uid,
            mode="process",
            node=self.name,
            pod_ip="",
            containers={
                c["name"]: podstatus.ContainerRun(name=c["name"], image=c.get("image", ""))
                for c in pod["spec"].get("containers") or []
            },
            start_time=clock.timestamp(),
            host_ip=self.spec.address,
        )
        directory = self.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
        run.directory = directory
        self._runs[uid] = run

        async def report() -> None:
            await self._write_pod_status(pod, run)

        process_pod = podrunner.ProcessPod(
            pod,
            run,
            api=self,
            config=self.kubelet,
            network=self.network,
            directory=directory,
            report=report,
            namespaces=self.namespaces,
            security=self.config.security_context,
        )
        self.process_pods[uid] = process_pod

        async def start() -> None:
            await report()  # Pending, ContainerCreating
            await process_pod.start()

        self._spawn_for(run, start())

    def _adopt(self, pod: dict[str, Any]) -> None:
        """A Pod already Running (the agent restarted): keep it as it is."""
        status = pod.get("status") or {}
        uid = pod["metadata"]["uid"]
        containers = {}
        for entry in status.get("containerStatuses") or []:
            started = ((entry.get("state") or {}).get("running") or {}).get("startedAt")
            containers[entry["name"]] = podstatus.ContainerRun(
                name=entry["name"],
                image=entry.get("image", ""),
                started_at=started,
                restart_count=int(entry.get("restartCount", 0)),
            )
        self._runs[uid] = podstatus.PodRun(
            uid=uid,
            mode="phases",
            node=self.name,
            pod_ip=status.get("podIP", ""),
            containers=containers,
            started=True,
            running_at=0.0,
            start_time=status.get("startTime", ""),
        )
        if status.get("podIP"):
            self._used_ips[uid] = status["podIP"]

    def _start(self, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        async def advance() -> None:
            await self._write_pod_status(pod, run)  # Pending, ContainerCreating
            run.pod_ip = await self._allocate_ip(run.uid)
            await asyncio.sleep(max(0.0, run.running_at - asyncio.get_running_loop().time()))
            for container in run.containers.values():
                container.started_at = clock.timestamp()
            await self._write_pod_status(pod, run)  # Running
            await self._run_containers(pod, run)

        self._spawn_for(run, advance())

    def _spawn_for(self, run: podstatus.PodRun, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        run.tasks.add(task)
        self._tasks.add(task)
        task.add_done_callback(run.tasks.discard)
        task.add_done_callback(self._task_done)

    async def _run_containers(self, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        """With the run-seconds annotation: containers exit after N s; restartPolicy decides."""
        annotations = pod["metadata"].get("annotations") or {}
        if ANNOTATION_RUN_SECONDS not in annotations:
            return
        seconds = float(annotations[ANNOTATION_RUN_SECONDS])
        code = int(annotations.get(ANNOTATION_EXIT_CODE, "0"))
        policy = pod["spec"].get("restartPolicy", "Always")
        while True:
            await asyncio.sleep(seconds)
            for container in run.containers.values():
                container.exit_code = code
                container.finished_at = clock.timestamp()
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                await self._write_pod_status(pod, run)  # Succeeded / Failed
                return
            for container in run.containers.values():
                container.last_state = {"terminated": podstatus.terminated(container)}
                container.restart_count += 1
                container.exit_code = None
                container.finished_at = None
                container.started_at = clock.timestamp()
            await asyncio.sleep(RESTART_DELAY_S)
            await self._write_pod_status(pod, run)

    async def pod_cidr(self) -> ipaddress.IPv4Network:
        """The node's `spec.podCIDR`, once the controller-manager's node IPAM has set it."""
        while self._pod_cidr is None:
            node = await self.request("GET", f"/api/v1/nodes/{self.name}")
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr:
                self._pod_cidr = ipaddress.IPv4Network(cidr)
            else:
                await asyncio.sleep(0.2)
        return self._pod_cidr

    async def _allocate_ip(self, uid: str) -> str:
        await self.pod_cidr()
        assert self._pod_cidr is not None
        used = set(self._used_ips.values())
        for address in list(self._pod_cidr.hosts())[1:]:  # .1 is the node's bridge
            if str(address) not in used:
                self._used_ips[uid] = str(address)
                return str(address)
        raise RuntimeError(f"node {self.name}: no Pod address left in {self._pod_cidr}")

    async def _write_pod_status(self, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        # one write at a time per Pod, each computed when it is sent: the last one is the truth
        lock = self._status_locks.setdefault(run.uid, asyncio.Lock())
        async with lock:
            await self._write_pod_status_now(pod, run)

    async def _write_pod_status_now(self, pod: dict[str, Any], run: podstatus.PodRun) -> None:
        if run.uid not in self._runs:
            return
        status = podstatus.pod_status(pod, run, self.spec)
        if not run.pod_ip:
            status.pop("podIP", None)
            status.pop("podIPs", None)
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{quote(meta['name'])}/status"
        try:
            updated = await self.request(
                "PATCH",
                path,
                {"metadata": {"uid": run.uid}, "status": status},
                content_type=MERGE_PATCH,
            )
        except APIError as error:
            if error.status in (404, 409):
                return  # gone, or replaced by a new Pod of the same name
            raise
        pod["status"] = updated.get("status") or status

    # --- the kubelet's log endpoint --------------------------------------------------------

    def _process_pod(self, namespace: str, name: str) -> podrunner.ProcessPod | None:
        pod = self._pods.get((namespace, name))
        return self.process_pods.get(pod["metadata"]["uid"]) if pod is not None else None

    async def _serve_logs(self, serving: tuple[Path, Path]) -> web.AppRunner:
        """`GET /containerLogs/{namespace}/{pod}/{container}` (`previous`, `tailLines`,
        `limitBytes`, `follow`), as the API server's pods/log proxies it, on the node's
        address, port 10250, TLS with `serving`. A client certificate is checked against the
        cluster CA when given, and required with `logs_require_client_certificate`: the
        cluster gives kube-apiserver none today (`PKI.kubelet_client_args()` has the flags),
        so until then anything on this machine that reaches the address may read the logs,
        as it may read the files themselves."""

        async def container_logs(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            process_pod = self._process_pod(info["namespace"], info["pod"])
            container = info["container"]
            if process_pod is None or container not in process_pod.containers:
                raise web.HTTPNotFound(text=f"no container {container} of {info['pod']} here")
            query = request.query
            previous = query.get("previous") in ("true", "1")
            data = podrunner.read_log(process_pod.directory, container, previous=previous)
            if data is None:
                raise web.HTTPBadRequest(
                    text=f'previous terminated container "{container}" not found'
                    if previous
                    else f'container "{container}" has not started'
                )
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"]) :]) if query["tailLines"] else b""
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"])]
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            await response.write(data)
            if query.get("follow") in ("true", "1") and not previous:
                await self._follow(process_pod, container, response)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self._ca_file))
        context.load_cert_chain(str(serving[0]), str(serving[1]))
        context.verify_mode = (
            ssl.CERT_REQUIRED if self.config.logs_require_client_certificate else ssl.CERT_OPTIONAL
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.spec.address, KUBELET_PORT, ssl_context=context).start()
        return runner

    async def _follow(
        self, process_pod: podrunner.ProcessPod, container: str, response: web.StreamResponse
    ) -> None:
        state = process_pod.containers[container].run
        restart = state.restart_count
        path = podrunner.log_file(process_pod.directory, container, restart)
        offset = path.stat().st_size if path.exists() else 0
        while True:
            await asyncio.sleep(LOG_FOLLOW_POLL_S)
            with contextlib.suppress(OSError):
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                if chunk:
                    offset += len(chunk)
                    await response.write(chunk)
            if state.process is None or state.restart_count != restart:
                return  # the container ended: so does `kubectl logs -f`

    # --- controls ---------------------------------------------------------------------------

    def _running(self, namespace: str, name: str) -> tuple[dict[str, Any], podstatus.PodRun]:
        pod = self._pods.get((namespace, name))
        run = self._runs.get(pod["metadata"]["uid"]) if pod is not None else None
        if pod is None or run is None:
            raise LookupError(f'pod "{namespace}/{name}" is not running on node {self.name}')
        return pod, run

    def holds(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._pods

    async def fail_pod(
        self, namespace: str, name: str, *, reason: str, message: str, exit_code: int
    ) -> None:
        """The containers die (`reason`, `exit_code`) and the Pod is Failed."""
        pod, run = self._running(namespace, name)
        process_pod = self.process_pods.get(run.uid)
        if process_pod is not None:
            await process_pod.fail(reason, message, exit_code)
            return
        for task in list(run.tasks):
            task.cancel()  # no restart, no later phase from the run-seconds loop
        now = clock.timestamp()
        for container in run.containers.values():
            container.started_at = container.started_at or now
            container.exit_code = exit_code
            container.reason = reason
            container.finished_at = now
        run.failed = (reason, message)
        await self._write_pod_status(pod, run)

    async def complete_pod(self, namespace: str, name: str, *, exit_code: int) -> None:
        """Every container exits with `exit_code`; restartPolicy decides what follows."""
        pod, run = self._running(namespace, name)
        process_pod = self.process_pods.get(run.uid)
        if process_pod is not None:
            await process_pod.complete(exit_code)
            return
        for task in list(run.tasks):
            task.cancel()
        now = clock.timestamp()
        for container in run.containers.values():
            container.exit_code = exit_code
            container.reason = "Completed" if exit_code == 0 else "Error"
            container.finished_at = now
        await self._write_pod_status(pod, run)

    async def _delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{quote(meta['name'])}"
        process_pod = self.process_pods.get(meta["uid"])
        run = self._runs.get(meta["uid"])
        if process_pod is not None and run is not None:
            # SIGTERM, the deletion's grace, SIGKILL; the containers' last states written
            await process_pod.stop(float(meta.get("deletionGracePeriodSeconds") or 0))
            with contextlib.suppress(APIError, aiohttp.ClientError, TimeoutError):
                await self._write_pod_status(pod, run)
            self._remove_pod_dir(meta["uid"])
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            await self.request("DELETE", path, body, ok=(200, 202, 404, 409))
        finally:
            self._forget(meta["uid"])


class _NodePodNetwork:
    """A node's Pod network from `network_for`, made on the first Pod's attach, once the node
    has its Pod CIDR; the host's for `hostNetwork` Pods, and for all without `network_for`
    (then said so)."""

    def __init__(self, runner: NodeRunner, network_for: NetworkFor | None) -> None:
        self.runner = runner
        self.network_for = network_for
        self._network: podrunner.PodNetwork | None = None
        self._lock = asyncio.Lock()

    async def attach(self, pod: dict[str, Any]) -> podrunner.AddressFields:
        asked = bool((pod.get("spec") or {}).get("hostNetwork"))
        if asked or self.network_for is None:
            return await self._host(asked).attach(pod)
        async with self._lock:
            if self._network is None:
                cidr = await self.runner.pod_cidr()
                self._network = await self.network_for(self.runner.name, str(cidr))
        return await self._network.attach(pod)

    async def detach(self, pod: dict[str, Any]) -> None:
        if self._network is not None and not (pod.get("spec") or {}).get("hostNetwork"):
            await self._network.detach(pod)

    def _host(self, asked: bool) -> podrunner.HostNetwork:
        api = urlsplit(self.runner.server)
        return podrunner.HostNetwork(
            self.runner.spec.address, api.hostname or "127.0.0.1", api.port or 443, asked=asked
        )


class NodeAgent:
    """Every node of a fleet, each with its own credentials, on one asyncio loop."""

    def runner(self, name: str) -> NodeRunner:
        for runner in self.runners:
            if runner.name == name:
                return runner
        raise LookupError(f'node "{name}" is not one of this agent\'s')

    def _holding(self, namespace: str, name: str) -> NodeRunner:
        for runner in self.runners:
            if runner.holds(namespace, name):
                return runner
        raise LookupError(f'pod "{namespace}/{name}" is on none of this agent\'s nodes')

    async def control(self, verb: str, body: dict[str, Any]) -> None:
        """One of the controls of the module's docstring; LookupError/KeyError/ValueError for
        a bad verb or body."""
        if verb in ("fail-pod", "complete-pod"):
            namespace, name = str(body.get("namespace", "default")), str(body["name"])
            runner = self._holding(namespace, name)
            if verb == "fail-pod":
                await runner.fail_pod(
                    namespace,
                    name,
                    reason=str(body.get("reason", "Error")),
                    message=str(body.get("message", "failed on command")),
                    exit_code=int(body.get("exitCode", 1)),
                )
            else:
                await runner.complete_pod(namespace, name, exit_code=int(body.get("exitCode", 0)))
        elif verb == "remove-node":
            self.runner(str(body["name"])).silent = True
            logger.info("node %s: silent (no Lease renewal, no heartbeat)", body["name"])
        elif verb == "restore-node":
            runner = self.runner(str(body["name"]))
            runner.silent = False
            await runner._write_node_status()
            logger.info("node %s: heartbeating again", body["name"])
        else:
            raise LookupError(f"unknown control {verb!r}")

    async def serve_controls(self, port: int) -> web.AppRunner:
        """`POST /localcluster/v1/{verb}` on 127.0.0.1:`port`."""

        async def handle(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                await self.control(request.match_info["verb"], body)
            except (LookupError, ValueError, TypeError) as error:
                message = error.args[0] if isinstance(error, KeyError) else str(error)
                if isinstance(error, KeyError):
                    message = f"missing field {message!r}"
                return web.json_response({"ok": False, "message": str(message)}, status=400)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/localcluster/v1/{verb}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def __init__(
        self,
        server: str,
        ca_file: str | Path,
        credentials: Credentials,
        the_fleet: fleet.Fleet,
        *,
        config: AgentConfig | None = None,
        first_address: int = 0,
        network_for: NetworkFor | None = None,
        serving: ServingCertificate | None = None,
    ) -> None:
        """`first_address`: the index of the first node's loopback address (a second agent
        beside the cluster's own starts past its nodes); `network_for`: each node's
        Pod network, given its name and Pod CIDR (`nodenetwork.NodeNetworks.node`; default:
        the host's namespace, `podrunner.HostNetwork`); `serving`: a serving certificate for
        each node's address, for the log endpoint (process mode)."""
        self.config = config or AgentConfig(start_seconds=the_fleet.kubelet.start_seconds)
        self._workdir: Path | None = None
        if the_fleet.kubelet.mode == "process" and self.config.workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nodeagent-"))
        workdir = self.config.workdir or self._workdir
        self.runners = []
        for index, spec in enumerate(the_fleet.nodes):
            cert, key = credentials(spec.name)
            spec = dataclasses.replace(spec, address=loopback_address(first_address + index))
            self.runners.append(
                NodeRunner(
                    server,
                    Path(ca_file),
                    cert,
                    key,
                    spec,
                    self.config,
                    kubelet=the_fleet.kubelet,
                    network_for=network_for,
                    workdir=workdir,
                    serving=serving(spec.name, spec.address) if serving is not None else None,
                )
            )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Starts every node; returns once all are registered."""
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.runners]

        async def all_registered() -> None:
            for runner in self.runners:
                await runner.registered.wait()

        registered = asyncio.ensure_future(all_registered())
        done, _ = await asyncio.wait(
            [*self._tasks, registered], return_when=asyncio.FIRST_COMPLETED
        )
        for task in self._tasks:
            if task in done:
                registered.cancel()
                task.result()  # a node failed to register: raise its error
                raise RuntimeError("a node agent task ended during registration")

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for runner in self.runners:
            await runner.aclose()
        if self._workdir is not None and not self.config.keep_pod_dirs:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def credentials_in(directory: str | Path) -> Credentials:
    """Node credentials from `<directory>/<node>.crt` and `.key`."""
    base = Path(directory)

    def lookup(node: str) -> tuple[Path, Path]:
        cert, key = base / f"{node}.crt", base / f"{node}.key"
        if not (cert.exists() and key.exists()):
            raise FileNotFoundError(f"no credentials for node {node} in {base}")
        return cert, key

    return lookup


def process_mode_args(
    cluster: Any, the_fleet: fleet.Fleet, *, first_address: int = 0, workdir: Path | None = None
) -> list[str]:
    """The command-line arguments a process-mode agent of `cluster` (a `Cluster`) needs beyond
    the phase-playing one's: each node's serving certificate (issued now, for the log
    endpoint), the Pods' folder (default: the cluster's `run/pods`), and, where
    `podnet.available()`, the Service proxy's credentials (per-Pod network namespaces)."""
    from avatar_devtools.realcluster import nodenetwork, podnet

    for index, node in enumerate(the_fleet.nodes):
        cluster.pki.node_serving(node.name, loopback_address(first_address + index))
    args = [
        f"--serving-certificates={cluster.pki.path('nodes')}",
        f"--workdir={workdir or cluster.run_dir / 'pods'}",
    ]
    if podnet.available().ok:
        args += nodenetwork.agent_args(cluster)
    return args


def serving_certificates_in(directory: str | Path) -> ServingCertificate:
    """Nodes' serving certificates from `<directory>/<node>-serving.crt` and `.key`."""
    base = Path(directory)

    def lookup(node: str, address: str) -> tuple[Path, Path]:
        cert, key = base / f"{node}-serving.crt", base / f"{node}-serving.key"
        if not (cert.exists() and key.exists()):
            raise FileNotFoundError(f"no serving certificate for node {node} in {base}")
        return cert, key

    return lookup


async def _pod_networks(args: argparse.Namespace) -> Any:
    """Per-Pod network namespaces and the Service proxy (`nodenetwork`), or None where this
    machine forbids them: then Pods share the host's, and the agent says so."""
    from avatar_devtools.realcluster import nodenetwork, podnet

    directory = Path(args.workdir or tempfile.gettempdir()) / "network"
    networks = nodenetwork.from_args(args, args.server, args.ca, directory)
    if networks is None:
        return None
    try:
        return await networks.start()
    except podnet.PodNetError as error:
        logger.warning("no per-Pod network namespaces (%s): Pods share the host's", error)
        return None


LAG_CHECK_S = 0.5
LAG_WARN_S = 1.0


async def watch_loop_lag(check_s: float = LAG_CHECK_S, warn_s: float = LAG_WARN_S) -> None:
    """Logs when the agent's event loop was held (by something blocking in it) for more than
    `warn_s`: every probe, Pod start and proxied connection of every node waits meanwhile."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(check_s)
        late = loop.time() - before - check_s
        if late > warn_s:
            logger.warning("node agent: its event loop was held for %.1f s", late)


async def _main(args: argparse.Namespace) -> None:
    credentials = credentials_in(args.credentials)
    the_fleet = fleet.load(args.fleet)
    config = AgentConfig(
        start_seconds=the_fleet.kubelet.start_seconds,
        lease_renew_s=args.lease_renew_seconds,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    serving = (
        serving_certificates_in(args.serving_certificates) if args.serving_certificates else None
    )
    networks = None
    if the_fleet.kubelet.mode == "process" and args.proxy_cert:
        networks = await _pod_networks(args)
    agent = NodeAgent(
        args.server,
        args.ca,
        credentials,
        the_fleet,
        config=config,
        first_address=args.first_address,
        serving=serving,
        network_for=networks.node if networks is not None else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog = asyncio.ensure_future(watch_loop_lag())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await agent.start()
    controls = await agent.serve_controls(args.control_port) if args.control_port else None
    logger.info("nodes registered: %s", ", ".join(r.name for r in agent.runners))
    waiting = asyncio.ensure_future(agent.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    watchdog.cancel()
    if controls is not None:
        await controls.cleanup()
    await agent.aclose()
    if networks is not None:
        await networks.aclose()
    if waiting.done() and not waiting.cancelled():
        waiting.result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m avatar_devtools.realcluster.nodeagent")
    parser.add_argument("--server", required=True, help="the API server, https://host:port")
    parser.add_argument("--ca", required=True, help="the CA bundle that signed its certificate")
    parser.add_argument("--credentials", required=True, help="a directory with <node>.crt/.key")
    parser.add_argument("--fleet", required=True, help="a fleet file (examples/fleet.yaml)")
    parser.add_argument(
        "--control-port", type=int, default=0, help="serve the test controls on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--lease-renew-seconds",
        type=float,
        default=AgentConfig.lease_renew_s,
        help="how often each node renews its Lease",
    )
    parser.add_argument(
        "--first-address",
        type=int,
        default=0,
        help="the first node's loopback address is 127.0.1.(1+N): a second agent starts past "
        "the first one's nodes",
    )
    parser.add_argument("--workdir", help="process mode: the Pods' folders (default: temporary)")
    parser.add_argument(
        "--serving-certificates",
        help="process mode: a directory with <node>-serving.crt/.key, for the log endpoint",
    )
    from avatar_devtools.realcluster import nodenetwork

    nodenetwork.add_arguments(parser)  # process mode: per-Pod networks and the Service proxy
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
