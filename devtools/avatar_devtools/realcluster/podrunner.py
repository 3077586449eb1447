"""A Pod's containers run as processes of this machine, as a kubelet runs them (the node agent's
`kubelet.mode: process`).

For each Pod bound to one of its nodes, `ProcessPod`:

- **fetches what the Pod references through the API with the node's own credentials**: its
  Secrets and ConfigMaps (GET each; the Node authorizer lets a node read only those of Pods bound
  to it, so a 403 here is that authorizer's answer, reported as the container's
  CreateContainerConfigError) and a ServiceAccount token for every projected
  `serviceAccountToken` source (the TokenRequest API, `POST .../serviceaccounts/NAME/token`,
  bound to the Pod, with the source's audience — none: the API server's own — and
  `expirationSeconds`, as the kubelet asks; asked again once 80% of its life is gone, or daily,
  and the file replaced). Until all of it is there the Pod stays Pending with the reason,
  retried every `SETUP_RETRY_S`;
- writes the volumes under the Pod's folder with `localcluster.podfiles` (the emulator's code:
  Secret, ConfigMap, downwardAPI, projected — the API server's `kube-api-access-*` volume gives
  the token, `ca.crt` from `kube-root-ca.crt` and `namespace`, so in-cluster config works
  unchanged —, emptyDir, hostPath); an emptyDir with `medium: Memory` is a tmpfs mounted on the
  volume's folder (`sizeLimit` its size), as the kubelet mounts it, unmounted when the Pod ends;
- starts each container through `podlaunch` (its own mount namespace, each volume bound at its
  mountPath, Secret/ConfigMap/downwardAPI/projected ones always read-only as the kubelet mounts
  them, others when `readOnly`; the network's hosts and resolv.conf files bound over
  `/etc/hosts` and `/etc/resolv.conf`), with the container's env (the kubelet's: `HOSTNAME`,
  the `kubernetes` Service's `KUBERNETES_SERVICE_HOST/PORT`; then the Pod's own) and the command
  from `command`/`args` or the fleet's `kubelet.images`; a command word `python`/`python3` is
  this environment's interpreter. stdout and stderr go to `logs/<container>/<restart>.log`;
- reports what happens in the Pod's status: running, then terminated with the exit code and
  reason (`Completed` for 0, `Error` otherwise; a death by signal N is exit code 128+N with
  reason `Error`, also for SIGKILL: OOMKilled is what the kernel's memory cgroup reports, and
  limits are not enforced here, so it never appears); `restartPolicy` restarts a container
  (waiting `CrashLoopBackOff` meanwhile, back-off `RESTART_BACKOFF_S`, shorter than the
  kubelet's 10 s doubling to 5 min), counting `restartCount` and keeping `lastState`;
- probes (`startupProbe`, `readinessProbe`, `livenessProbe`; httpGet, tcpSocket, exec, with
  initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold, failureThreshold):
  readiness and liveness wait for the startup probe to pass (the container's `started`);
  readiness drives the container's `ready` and so the Pod's Ready condition; a failed liveness
  or startup probe kills the container (SIGTERM, its grace, SIGKILL) and `restartPolicy`
  decides;
- the securityContext (the container's over the Pod's; root and mount namespaces only, and
  `AgentConfig.security_context`): `runAsUser`/`runAsGroup`, `supplementalGroups` and `fsGroup`
  as the process's groups, `fsGroup` owning the API data and emptyDir volumes as the kubelet
  sets it, `readOnlyRootFilesystem` as the namespace's "/" remounted read-only (other mounts of
  the host, such as a separate /tmp, stay as they are), and `runAsNonRoot` without a user
  refused (CreateContainerConfigError). Where the command or this Python environment is not
  reachable by that user (an interpreter under /root, say), the user is not applied, and the
  agent's log and the container's say so;
- Events on the Pod, as the kubelet's (`kubectl describe pod`): Started, Killing, BackOff,
  Unhealthy (a probe reaching its failureThreshold), Failed (a setup or start error);
- a terminated container's message: what it wrote to its `terminationMessagePath` (bound
  there from the Pod's folder; not the default `/dev/termination-log`, since the host's `/dev`
  is not a container's), else with `FallbackToLogsOnError` and a failure its log's tail;
- stops the Pod gracefully when it is deleted: SIGTERM to each container's process group,
  `terminationGracePeriodSeconds` (from the deletion), then SIGKILL; the node agent then deletes
  the Pod object with grace 0, as the kubelet does.

**The network** is a `PodNetwork`: `attach(pod)` gives the Pod's address (`PodAddress`, or
anything with its fields: its IP, the network namespace to run in — by `ip netns` name —, the
hosts and resolv.conf files to bind, the address the `kubernetes` Service's variables name),
`detach(pod)` releases it after the Pod's last process. The node agent's `network_for` plugs
in `nodenetwork.NodeNetworks.node` (a network namespace per Pod, an IP from the node's Pod
CIDR, the Service proxy, so `KUBERNETES_SERVICE_HOST` is the `kubernetes` ClusterIP); without
one, or where `podnet.available()` says no, `HostNetwork` runs every Pod in the host's network
namespace with the node's IP as its podIP (as `hostNetwork: true` Pods), with
`KUBERNETES_SERVICE_HOST/PORT` naming the API server's own loopback address, and says so in
the agent's log and at the head of each container's log. Probes connect from the Pod's network
namespace (a thread that entered it makes the socket).

Where the machine forbids mount namespaces (not root), the volumes are where the emulator's path
rule puts them (`AVATAR_POD_ROOT`, paths in the spec rewritten), and the agent says so.

Left out: init containers (treated as done), preStop hooks, service links
(`<SVC>_SERVICE_HOST` of the namespace's other Services), Secret and ConfigMap volumes updated
after the Pod starts, resource limits, capabilities, seccomp and privilege escalation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from avatar_devtools import processgroups
from avatar_devtools.localcluster import clock, fleet, podfiles, podstatus
from avatar_devtools.realcluster import podlaunch, watchstream

logger = logging.getLogger("avatar_devtools.realcluster.podrunner")

LAUNCHER = Path(podlaunch.__file__).resolve()
SETUP_RETRY_S = 1.0
CONNECT_TIMEOUT_S = 5.0  # a probe's own timeoutSeconds ends it sooner
TOKEN_REFRESH_MAX_S = 24 * 3600.0  # a projected token is renewed at least daily
RESTART_BACKOFF_S = (0.2, 5.0)  # first restart delay, cap
MAX_LOG_BYTES = 10 * 1024 * 1024  # a log read at most this much (the tail)
API_DATA_VOLUMES = ("secret", "configMap", "downwardAPI", "projected")


APIError = watchstream.APIError  # what NodeApi.request raises


class NodeApi(Protocol):
    """The API server, as the node sees it (its own credentials)."""

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any: ...


@dataclasses.dataclass(frozen=True)
class PodAddress:
    """Where a Pod's processes live on the network."""

    pod_ip: str
    netns: str | None = None  # `ip netns` name: the processes run in /run/netns/<netns>
    hosts_file: Path | None = None  # bound over /etc/hosts
    resolv_file: Path | None = None  # bound over /etc/resolv.conf
    api_host: str = ""  # what KUBERNETES_SERVICE_HOST/PORT say
    api_port: int = 443
    note: str = ""  # said in the agent's log and at the head of each container's log


class AddressFields(Protocol):
    """A `PodAddress`, or anything with its fields (`nodenetwork.PodAttachment`)."""

    @property
    def pod_ip(self) -> str: ...
    @property
    def netns(self) -> str | None: ...
    @property
    def hosts_file(self) -> Path | None: ...
    @property
    def resolv_file(self) -> Path | None: ...
    @property
    def api_host(self) -> str: ...
    @property
    def api_port(self) -> int: ...
    @property
    def note(self) -> str: ...


class PodNetwork(Protocol):
    """A node's Pod network: `attach` before the Pod's first process, `detach` after its last."""

    async def attach(self, pod: dict[str, Any]) -> AddressFields: ...

    async def detach(self, pod: dict[str, Any]) -> None: ...


class HostNetwork:
    """Every Pod in the host's network namespace, with the node's IP (a `hostNetwork` Pod)."""

    def __init__(self, node_ip: str, api_host: str, api_port: int, *, asked: bool = False) -> None:
        self.node_ip = node_ip
        self.api_host = api_host
        self.api_port = api_port
        self.asked = asked  # the Pods asked for it (`hostNetwork: true`): nothing to say

    async def attach(self, pod: dict[str, Any]) -> PodAddress:
        note = (
            ""
            if self.asked
            else "host network namespace (no per-Pod network here): podIP is the node's "
            f"{self.node_ip}, the kubernetes Service is {self.api_host}:{self.api_port}"
        )
        return PodAddress(
            pod_ip=self.node_ip, api_host=self.api_host, api_port=self.api_port, note=note
        )

    async def detach(self, pod: dict[str, Any]) -> None:
        return None


def mount_namespaces_permitted() -> bool:
    """Whether this process may make mount namespaces (root, or CAP_SYS_ADMIN)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@dataclasses.dataclass
class _Container:
    spec: dict[str, Any]
    run: podstatus.ContainerRun
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    probes: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    user: dict[str, Any] | None = None  # {uid, gid, groups}; None: the agent's own
    killed_code: int | None = None  # an exit code we chose (fail-pod, complete-pod)


class ProcessPod:
    """One Pod's containers as processes (see the module's docstring)."""

    def __init__(
        self,
        pod: dict[str, Any],
        run: podstatus.PodRun,
        *,
        api: NodeApi,
        config: fleet.KubeletConfig,
        network: PodNetwork,
        directory: Path,
        report: Callable[[], Awaitable[None]],
        namespaces: bool = True,
        security: bool = True,
    ) -> None:
        self.pod = pod
        self.run = run
        self.api = api
        self.config = config
        self.network = network
        self.directory = directory
        self.report = report
        self.namespaces = namespaces
        # the securityContext's users and readOnlyRootFilesystem (root, mount namespaces only)
        self.security = security and namespaces and os.geteuid() == 0
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.address: AddressFields | None = None
        self.files: podfiles.PodFiles | None = None
        self.volumes: dict[str, Path] = {}
        self.tmpfs: list[Path] = []
        self.containers: dict[str, _Container] = {
            c["name"]: _Container(spec=c, run=run.containers[c["name"]])
            for c in pod["spec"].get("containers") or []
        }
        self.stopping = False
        self.done = asyncio.Event()  # every container terminated for good (or stopped)
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: set[asyncio.Task[None]] = set()  # not cancelled with the Pod: they finish
        self._torn_down = False
        self._token_due = 0.0  # loop time when the first projected token is due for renewal
        self.timings: dict[str, float] = {}  # seconds from start(): setup_s, started_s

    # --- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch, write the volumes, attach the network, start every container."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not self.stopping:
            try:
                objects = await self._fetch()
                self.files = podfiles.PodFiles(objects, self.config, None, self.directory)
                for container in self.containers.values():
                    container.env = self._environment(container.spec)  # may raise, as below
                    container.user = self._user(container.spec)
                self.volumes = self.files.write_volumes(self.pod, self.directory, self.run)
                break
            except podfiles.PodSetupError as error:
                if self.run.waiting != (error.reason, error.message):
                    logger.info("pod %s waits: %s", self.key, error.message)
                    self.run.waiting = (error.reason, error.message)
                    self.event("Failed", f"Error: {error.message}", warning=True)
                    await self.report()
                await asyncio.sleep(SETUP_RETRY_S)
            except (OSError, TimeoutError) as error:  # the API server unreachable: again
                logger.warning("pod %s: fetching what it references: %s", self.key, error)
                await asyncio.sleep(SETUP_RETRY_S)
        if self.stopping:
            return
        self.run.waiting = None
        self._mount_memory_volumes()
        self._own_volumes()
        self.address = await self._attach()
        if self.address is None:
            return
        if self.stopping:  # stopped (and torn down) while it attached
            await self.network.detach(self.pod)
            return
        if self.address.note:
            logger.warning("pod %s: %s", self.key, self.address.note)
        self.run.waiting = None
        self.run.pod_ip = self.address.pod_ip
        for container in self.containers.values():  # the Service's variables, now known
            container.env = self._environment(container.spec)
        self.timings["setup_s"] = loop.time() - began
        self.run.started = True
        self.run.running_at = 0.0
        self.run.start_time = clock.timestamp()
        for container in self.containers.values():
            if self.stopping:
                return
            await self._start_container(container)
        self.timings["started_s"] = loop.time() - began
        await self.report()
        if podfiles.token_sources(self.pod):
            self._spawn(self._refresh_tokens())

    async def _attach(self) -> AddressFields | None:
        """The Pod's network, tried again until it is made (the kubelet's sandbox retries);
        None when the Pod stops first."""
        while not self.stopping:
            try:
                return await self.network.attach(self.pod)
            except Exception as error:  # the network's own failure, whatever it is: said
                message = f"failed to set up the Pod's network: {error}"
                logger.warning("pod %s: %s", self.key, message)
                if self.run.waiting != ("ContainerCreating", message):
                    self.run.waiting = ("ContainerCreating", message)
                    self.event("FailedCreatePodSandBox", message, warning=True)
                    await self.report()
                await asyncio.sleep(SETUP_RETRY_S)
        return None

    async def _refresh_tokens(self) -> None:
        """Each projected token requested again when due, its file replaced (a rename in its
        volume's folder, which the containers see through their bind mounts)."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(max(0.0, self._token_due - loop.time()))
            self._token_due = 0.0
            try:
                fresh: dict[tuple[str, int], str] = {}
                for volume in self.pod["spec"].get("volumes") or []:
                    for item in (volume.get("projected") or {}).get("sources") or []:
                        source = item.get("serviceAccountToken")
                        if source is None:
                            continue
                        key = podfiles.token_key(source)
                        if key not in fresh:
                            fresh[key] = await self._request_token(source)
                        self._replace(
                            self.volumes[volume["name"]] / source.get("path", "token"), fresh[key]
                        )
            except Exception as error:  # a background loop: logged, and tried again soon
                logger.warning("pod %s: token refresh failed: %s", self.key, error)
                self._token_due = loop.time() + SETUP_RETRY_S * 10
            else:
                logger.info("pod %s: service account tokens refreshed", self.key)

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        stat = path.stat()
        new = path.with_name(f".{path.name}.new")
        new.write_text(text, encoding="utf-8")
        os.chown(new, stat.st_uid, stat.st_gid)
        new.chmod(stat.st_mode & 0o7777)
        os.replace(new, path)

    async def stop(self, grace: float) -> None:
        """SIGTERM to every container's process group; SIGKILL after `grace` seconds."""
        self.stopping = True
        for container in self.containers.values():
            self._cancel(container.probes)

        async def stop_one(container: _Container, process: asyncio.subprocess.Process) -> None:
            name = container.spec["name"]
            self.event("Killing", f"Stopping container {name}", container=name)
            await processgroups.terminate(process, grace)
            if container.run.process is process:  # recorded here, not by its waiter
                self._record_exit(container, process)

        await asyncio.gather(
            *(
                stop_one(c, c.run.process)
                for c in self.containers.values()
                if c.run.process is not None
            )
        )
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        await self.teardown()

    async def fail(self, reason: str, message: str, exit_code: int) -> None:
        """The containers die at once with `exit_code`; the Pod is Failed whatever its policy."""
        self.run.failed = (reason, message)
        for container in self.containers.values():
            container.killed_code = exit_code
            container.run.reason = reason
        await self.stop(0.0)
        now = clock.timestamp()
        for container in self.containers.values():
            if container.run.exit_code is None:
                container.run.exit_code = exit_code
                container.run.started_at = container.run.started_at or now
                container.run.finished_at = now
        await self.report()

    async def complete(self, exit_code: int) -> None:
        """Every container exits with `exit_code` (killed); restartPolicy decides what follows."""
        for container in self.containers.values():
            if container.run.process is not None:
                container.killed_code = exit_code
                await processgroups.terminate(container.run.process, 0.0)

    async def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for path in self.tmpfs:
            with contextlib.suppress(OSError):
                podlaunch.umount(str(path))
        self.tmpfs = []
        if self.address is not None:
            try:
                await self.network.detach(self.pod)
            except Exception:  # the network's own failure: logged, the Pod still ends
                logger.exception("pod %s: network detach failed", self.key)
        self.done.set()

    def pids(self) -> list[int]:
        return [
            c.run.process.pid
            for c in self.containers.values()
            if c.run.process is not None and c.run.process.returncode is None
        ]

    def _spawn(self, coro: Any, bucket: set[asyncio.Task[None]] | None = None) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        for tasks in (self._tasks, bucket):
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_failure)

    @staticmethod
    def _cancel(tasks: set[asyncio.Task[None]]) -> None:
        for task in list(tasks):
            if task is not asyncio.current_task():
                task.cancel()

    # --- events ---------------------------------------------------------------------------

    def event(
        self, reason: str, message: str, *, warning: bool = False, container: str | None = None
    ) -> None:
        """An Event on the Pod, as the kubelet reports it (`kubectl describe pod`), sent in the
        background: a lost event is logged, never in the Pod's way."""
        meta = self.pod["metadata"]
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container is not None:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        now = clock.timestamp()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self.run.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.run.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        async def send() -> None:
            try:
                await self.api.request(
                    "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body
                )
            except (APIError, OSError, TimeoutError) as error:
                logger.info("pod %s: event %s not recorded: %s", self.key, reason, error)

        task: asyncio.Task[None] = asyncio.ensure_future(send())
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    # --- what the Pod references --------------------------------------------------------------

    async def _fetch(self) -> podfiles.FetchedObjects:
        secrets_wanted, configmaps_wanted = podfiles.references(self.pod)
        secrets = {k: v for k in secrets_wanted if (v := await self._get("secrets", k))}
        configmaps = {k: v for k in configmaps_wanted if (v := await self._get("configmaps", k))}
        tokens = {}
        for source in podfiles.token_sources(self.pod):
            key = podfiles.token_key(source)
            if key not in tokens:
                tokens[key] = await self._request_token(source)
        return podfiles.FetchedObjects(secrets, configmaps, tokens)

    async def _get(self, plural: str, key: podfiles.ObjectKey) -> dict[str, Any] | None:
        namespace, name = key
        path = f"/api/v1/namespaces/{namespace}/{plural}/{quote(name)}"
        try:
            obj: dict[str, Any] = await self.api.request("GET", path)
        except APIError as error:
            if error.status == 404:
                return None
            message = error.body.get("message") if isinstance(error.body, dict) else error.body
            raise podfiles.PodSetupError("CreateContainerConfigError", str(message)) from None
        return obj

    async def _request_token(self, source: dict[str, Any]) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        audience, expiration = podfiles.token_key(source)
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            answer = await self.api.request("POST", path, body)
        except APIError as error:
            message = error.body.get("message") if isinstance(error.body, dict) else error.body
            raise podfiles.PodSetupError(
                "ContainerCreating",
                f"MountVolume.SetUp failed: failed to fetch token: {message}",
            ) from None
        ttl = float(expiration)
        expires = (answer.get("status") or {}).get("expirationTimestamp")
        if expires:
            moment = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
            ttl = (moment - datetime.datetime.now(datetime.UTC)).total_seconds()
        # the kubelet's rule: a new token once 80% of this one's life is gone, or after 24 h
        due = asyncio.get_running_loop().time() + min(0.8 * max(ttl, 1.0), TOKEN_REFRESH_MAX_S)
        self._token_due = min(self._token_due, due) if self._token_due else due
        return str(answer["status"]["token"])

    def _environment(self, spec: dict[str, Any]) -> dict[str, str]:
        assert self.files is not None
        extra = {}
        if self.address is not None and self.address.api_host:
            host, port = self.address.api_host, str(self.address.api_port)
            extra = {
                "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
            }
        base, own = self.files.environment_parts(self.pod, spec, self.run, extra)
        base.pop(podfiles.POD_ROOT_ENV, None)
        base.pop("KUBECONFIG", None)  # the agent's, never the Pod's
        if not self.namespaces:
            base[podfiles.POD_ROOT_ENV] = str(self.directory / "root")
        return {**base, **own}

    def _own_volumes(self) -> None:
        """`fsGroup`, as the kubelet applies it: the group owns the Pod's Secret, ConfigMap,
        downwardAPI, projected and emptyDir volumes (directories setgid), readable by it; an
        emptyDir is writable by all (0777), as the kubelet makes it."""
        context = self.pod["spec"].get("securityContext") or {}
        group = context.get("fsGroup") if self.security else None
        for volume in self.pod["spec"].get("volumes") or []:
            kind = next((k for k in (*API_DATA_VOLUMES, "emptyDir") if k in volume), None)
            path = self.volumes.get(volume["name"])
            if kind is None or path is None:
                continue
            if kind == "emptyDir":
                path.chmod(0o2777 if group is not None else 0o777)
            if group is None:
                continue
            for folder, _dirs, files in os.walk(path):
                os.chown(folder, -1, int(group))
                if kind != "emptyDir":
                    os.chmod(folder, os.stat(folder).st_mode | 0o2050)
                for name in files:
                    file = os.path.join(folder, name)
                    os.chown(file, -1, int(group))
                    os.chmod(file, os.stat(file).st_mode | 0o040)

    def _user(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The container's {uid, gid, groups} from the Pod's and its own securityContext (the
        container's wins), or None: the agent's own user. PodSetupError for a runAsNonRoot
        container that would run as root, as the kubelet refuses it."""
        pod_context = self.pod["spec"].get("securityContext") or {}
        context = {**pod_context, **(spec.get("securityContext") or {})}
        uid, gid = context.get("runAsUser"), context.get("runAsGroup")
        if context.get("runAsNonRoot") and not uid:
            meta = self.pod["metadata"]
            raise podfiles.PodSetupError(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root (pod: "
                f'"{meta["name"]}_{meta["namespace"]}({meta["uid"]})", container: {spec["name"]})',
            )
        if uid is None or not self.security:
            return None
        groups = [int(g) for g in pod_context.get("supplementalGroups") or []]
        if pod_context.get("fsGroup") is not None:
            groups.append(int(pod_context["fsGroup"]))
        return {"uid": int(uid), "gid": int(gid) if gid is not None else 0, "groups": groups}

    def _mount_memory_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            empty_dir = volume.get("emptyDir")
            if empty_dir is None or empty_dir.get("medium") != "Memory":
                continue
            path = self.volumes[volume["name"]]
            size = _quantity_bytes(str(empty_dir["sizeLimit"])) if "sizeLimit" in empty_dir else 0
            try:
                podlaunch.mount_tmpfs(str(path), size or None)
            except OSError as error:
                logger.warning(
                    "pod %s: volume %s: no tmpfs (%s); a directory on disk instead",
                    self.key,
                    volume["name"],
                    error,
                )
                continue
            self.tmpfs.append(path)

    # --- containers ---------------------------------------------------------------------------

    def _mounts(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        kinds = {
            v["name"]: next((k for k in API_DATA_VOLUMES if k in v), "")
            for v in self.pod["spec"].get("volumes") or []
        }
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            source = self.volumes.get(mount["name"])
            if source is None:
                continue
            if mount.get("subPath"):
                source = source / mount["subPath"]
            read_only = bool(mount.get("readOnly")) or bool(kinds.get(mount["name"]))
            mounts.append(
                {"source": str(source), "target": mount["mountPath"], "readOnly": read_only}
            )
        assert self.address is not None
        target = str(spec.get("terminationMessagePath") or "/dev/termination-log")
        if not target.startswith("/dev/"):  # the host's /dev gets no files of ours
            termination = self.directory / "termination" / str(spec["name"])
            termination.parent.mkdir(parents=True, exist_ok=True)
            termination.write_bytes(b"")
            termination.chmod(0o666)
            mounts.append({"source": str(termination), "target": target, "readOnly": False})
        targets = {m["target"] for m in mounts}
        for path, target in (
            (self.address.hosts_file, "/etc/hosts"),
            (self.address.resolv_file, "/etc/resolv.conf"),
        ):
            if path is not None and target not in targets:
                mounts.append({"source": str(path), "target": target, "readOnly": True})
        return mounts

    async def _start_container(self, container: _Container) -> None:
        assert self.files is not None and self.address is not None
        spec, state = container.spec, container.run
        name = spec["name"]
        env = container.env
        argv = self.files.argv(spec, env)
        state.started_at = clock.timestamp()
        state.waiting = None
        if not argv:
            self._exited(
                container,
                podlaunch.LAUNCH_FAILED,
                "ContainerCannotRun",
                f"container {name} has no command, and image {state.image!r} has no entry "
                "in the kubelet's images",
            )
            return
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        cwd = spec.get("workingDir") or ""
        host_cwd = "" if cwd else str(self.directory / "cwd")
        mounts = self._mounts(spec)
        if not self.namespaces:  # the path rule: volumes under the root, paths rewritten
            mounts_at = self.files.materialise_volumes(self.pod, self.directory)
            rewrite = podfiles.path_rewriter(mounts_at, self.directory / "root")
            argv = [argv[0], *(rewrite(a) for a in argv[1:])]
            own = {item["name"] for item in spec.get("env") or []}
            env = {k: rewrite(v) if k in own else v for k, v in env.items()}
            cwd = rewrite(cwd) if cwd else ""
        hidden = _hides_environment(m["target"] for m in mounts) if self.namespaces else None
        user = container.user
        if user is not None and not _runnable_by(argv[0], env.get("PATH", ""), user):
            hidden = (hidden + "; " if hidden else "") + (
                f"runAsUser {user['uid']} not applied: {argv[0]} (or its environment) is not "
                "readable by that user on this machine, so the container runs as the agent's"
            )
            user = None
        launch_dir = self.directory / "launch"
        launch_dir.mkdir(parents=True, exist_ok=True)
        error_file = launch_dir / f"{name}.error"
        error_file.unlink(missing_ok=True)
        spec_file = launch_dir / f"{name}.json"
        launch = {
            "argv": argv,
            "cwd": cwd,
            "host_cwd": host_cwd,
            "netns": self.address.netns,
            "namespaces": self.namespaces,
            "mounts": mounts,
            "image": image_paths(),
            "error_file": str(error_file),
            "user": user,
            "read_only_root": bool(
                self.security and (spec.get("securityContext") or {}).get("readOnlyRootFilesystem")
            ),
        }
        spec_file.write_text(json.dumps(launch))
        log_path = log_file(self.directory, name, state.restart_count)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        (self.directory / "cwd").mkdir(exist_ok=True)
        with log_path.open("ab") as log:
            if self.address.note:
                log.write(f"nodeagent: {self.address.note}\n".encode())
            if hidden:
                logger.warning("pod %s: container %s: %s", self.key, name, hidden)
                log.write(f"nodeagent: {hidden}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                str(LAUNCHER),
                str(spec_file),
                env=env,
                cwd=str(self.directory),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        if self.stopping:  # deleted while it started: it never runs
            await processgroups.terminate(process, 0.0)
            return
        state.process = process
        state.exit_code = None
        state.finished_at = None
        state.reason = ""
        state.message = ""
        state.ready = False if spec.get("readinessProbe") or spec.get("startupProbe") else None
        state.started = False if spec.get("startupProbe") else None
        logger.info("pod %s: container %s started, pid %d", self.key, name, process.pid)
        self.event("Started", f"Started container {name}", container=name)
        self._spawn(self._wait(container, process))
        self._spawn(self._probes(container), container.probes)

    async def _wait(self, container: _Container, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        if container.run.process is not process:
            return
        code = self._record_exit(container, process)
        self._cancel(container.probes)
        if self.stopping or self.run.failed is not None:
            return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            delay = min(RESTART_BACKOFF_S[0] * 2**container.run.restart_count, RESTART_BACKOFF_S[1])
            meta = self.pod["metadata"]
            container.run.waiting = (
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={container.spec['name']} "
                f"pod={meta['name']}_{meta['namespace']}({meta['uid']})",
            )
            await self.report()
            name = container.spec["name"]
            self.event(
                "BackOff",
                f"Back-off restarting failed container {name} in pod {meta['name']}_"
                f"{meta['namespace']}({meta['uid']})",
                warning=True,
                container=name,
            )
            await asyncio.sleep(delay)
            if self.stopping or self.run.failed is not None:
                return
            state = container.run
            state.last_state = {"terminated": podstatus.terminated(state)}
            state.restart_count += 1
            await self._start_container(container)
            await self.report()
            return
        await self.report()
        if all(c.run.exit_code is not None for c in self.containers.values()):
            await self.teardown()  # the Pod is done: its network and tmpfs go, its logs stay

    def _record_exit(self, container: _Container, process: asyncio.subprocess.Process) -> int:
        container.run.process = None
        code = process.returncode if process.returncode is not None else 0
        code = code if code >= 0 else 128 - code
        if container.killed_code is not None:
            code, container.killed_code = container.killed_code, None
        error_file = self.directory / "launch" / f"{container.spec['name']}.error"
        if error_file.exists() and error_file.stat().st_size:
            self._exited(container, code, "StartError", error_file.read_text())
            name = container.spec["name"]
            self.event("Failed", f"Error: {error_file.read_text()}", warning=True, container=name)
            return code
        message = self._termination_message(container, code)
        if container.run.reason and self.run.failed is not None:
            self._exited(container, code, container.run.reason, message)
        else:
            self._exited(container, code, "Completed" if code == 0 else "Error", message)
        logger.info("pod %s: container %s exited %d", self.key, container.spec["name"], code)
        return code

    def _termination_message(self, container: _Container, code: int) -> str:
        """What the container wrote to its terminationMessagePath (bound at /dev/termination-log
        by default) or, with `FallbackToLogsOnError` and a failure, its log's last lines (80
        lines, 2 KB at most, as the kubelet takes them)."""
        written = self.directory / "termination" / str(container.spec["name"])
        with contextlib.suppress(OSError):
            text = written.read_text(errors="replace")[:4096]
            if text:
                return text
        policy = container.spec.get("terminationMessagePolicy", "File")
        if policy != "FallbackToLogsOnError" or code == 0:
            return ""
        log = read_log(self.directory, container.spec["name"]) or b""
        tail = b"".join(log.splitlines(keepends=True)[-80:])[-2048:]
        return tail.decode(errors="replace")

    def _exited(self, container: _Container, code: int, reason: str, message: str) -> None:
        state = container.run
        state.exit_code = code
        state.reason = reason
        state.message = message
        state.finished_at = clock.timestamp()
        state.ready = None

    # --- probes -------------------------------------------------------------------------------

    async def _probes(self, container: _Container) -> None:
        """The startup probe until it passes (readiness and liveness wait for it, as the
        kubelet's do), then the readiness and liveness probes side by side."""
        spec = container.spec
        if spec.get("startupProbe"):
            if not await self._probe_loop(container, "startupProbe", spec["startupProbe"]):
                return
            container.run.started = True
            if not spec.get("readinessProbe"):
                container.run.ready = None  # ready once started
            await self.report()
        for kind in ("readinessProbe", "livenessProbe"):
            if spec.get(kind):
                self._spawn(self._probe_loop(container, kind, spec[kind]), container.probes)

    async def _probe_loop(self, container: _Container, kind: str, probe: dict[str, Any]) -> bool:
        """Probes every periodSeconds; a startup probe returns True once it passes. A failed
        liveness or startup probe kills the container (restartPolicy decides what follows)."""
        period = float(probe.get("periodSeconds", 10))
        failure_threshold = int(probe.get("failureThreshold", 3))
        success_threshold = int(probe.get("successThreshold", 1))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while container.run.process is not None:
            ok = await self._probe(container, probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if failures == failure_threshold:
                self.event(
                    "Unhealthy",
                    f"{kind.removesuffix('Probe').capitalize()} probe failed {failures} times",
                    warning=True,
                    container=container.spec["name"],
                )
            if kind == "startupProbe" and ok:
                return True
            if kind == "readinessProbe":
                if successes >= success_threshold and container.run.ready is not True:
                    container.run.ready = True
                    await self.report()
                elif failures >= failure_threshold and container.run.ready is not False:
                    container.run.ready = False
                    await self.report()
            elif failures >= failure_threshold and container.run.process is not None:
                name, what = container.spec["name"], kind.removesuffix("Probe")
                logger.info(
                    "pod %s: container %s failed its %s probe, will be restarted",
                    self.key,
                    name,
                    what,
                )
                self.event(
                    "Killing",
                    f"Container {name} failed {what} probe, will be restarted",
                    container=name,
                )
                grace = probe.get(
                    "terminationGracePeriodSeconds",
                    self.pod["spec"].get("terminationGracePeriodSeconds", 30),
                )
                await processgroups.terminate(container.run.process, float(grace))
                return False
            await asyncio.sleep(period)
        return False

    async def _probe(self, container: _Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        assert self.address is not None
        try:
            async with asyncio.timeout(timeout):
                if "exec" in probe:
                    return await self._probe_exec(container, probe["exec"])
                if "httpGet" in probe:
                    return await self._probe_http(container, probe["httpGet"])
                if "tcpSocket" in probe:
                    action = probe["tcpSocket"]
                    port = _port(container.spec, action["port"])
                    host = action.get("host") or self.address.pod_ip
                    _, writer = await open_connection(self.address.netns, host, port)
                    writer.close()
                    return True
        except (OSError, TimeoutError, ValueError):
            return False
        return False

    async def _probe_http(self, container: _Container, action: dict[str, Any]) -> bool:
        assert self.address is not None
        host = action.get("host") or self.address.pod_ip
        port = _port(container.spec, action["port"])
        context = None
        if str(action.get("scheme", "HTTP")).upper() == "HTTPS":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify either
        reader, writer = await open_connection(self.address.netns, host, port, context)
        try:
            headers = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/1.37", "Accept": "*/*"}
            headers.update({h["name"]: h["value"] for h in action.get("httpHeaders") or []})
            path = action.get("path") or "/"
            lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
            writer.write(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            return len(parts) >= 2 and 200 <= int(parts[1]) < 400
        finally:
            writer.close()

    async def _probe_exec(self, container: _Container, action: dict[str, Any]) -> bool:
        process = container.run.process
        assert self.address is not None
        if process is None:
            return False
        argv = [str(a) for a in action.get("command") or []]
        if not argv:
            return False
        if self.namespaces:  # inside the container's mount (and network) namespace
            user = container.user
            identity = [f"--setuid={user['uid']}", f"--setgid={user['gid']}"] if user else []
            argv = [
                "nsenter",
                f"--target={process.pid}",
                "--mount",
                "--net",
                *identity,
                "--",
                *argv,
            ]
        probe = await asyncio.create_subprocess_exec(
            *argv,
            env=container.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return await probe.wait() == 0
        finally:
            if probe.returncode is None:
                await processgroups.terminate(probe, 0.0)


# --- helpers ----------------------------------------------------------------------------------


def log_file(directory: Path, container: str, restart: int) -> Path:
    """The log of a container's `restart`-th run (0: its first)."""
    return directory / "logs" / container / f"{restart}.log"


def read_log(directory: Path, container: str, *, previous: bool = False) -> bytes | None:
    """The container's current log (or, with `previous`, the run before it), as `kubectl
    logs` shows it; None when there is none."""
    folder = directory / "logs" / container
    runs = sorted((int(p.stem) for p in folder.glob("*.log")), reverse=True)
    index = 1 if previous else 0
    if len(runs) <= index:
        return None
    path = log_file(directory, container, runs[index])
    with path.open("rb") as handle:
        size = path.stat().st_size
        handle.seek(max(0, size - MAX_LOG_BYTES))
        return handle.read()


def image_paths() -> list[str]:
    """What stands for a container's image here: this Python environment and the checkout its
    packages are installed from (editable), outermost first, none inside another."""
    candidates = sorted(
        {
            os.path.realpath(p)
            for p in (sys.prefix, sys.base_prefix, Path(__file__).resolve().parents[3])
        },
        key=len,
    )
    kept: list[str] = []
    for path in candidates:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _hides_environment(targets: Any) -> str | None:
    """What a mountPath covers of the image (this Python environment and checkout: a
    container's own image would have its own root; these processes share this machine's), or
    None. The launcher binds what it covers back on top, read-only, as an image's files."""
    for target in targets:
        for path in image_paths():
            if path == str(target) or Path(target) in Path(path).parents:
                return (
                    f"mountPath {target} covers {path}, this node's Python environment: bound "
                    "back over it, read-only"
                )
    return None


def _shebang(path: Path) -> str | None:
    """The interpreter a `#!` script names, or None."""
    try:
        with path.open("rb") as script:
            first = script.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def _runnable_by(command: str, path: str, user: dict[str, Any]) -> bool:
    """Whether `user` ({uid, gid, groups}) may run `command` (found on `path`) and, for this
    interpreter, read its environment: every directory on the way searchable by it."""
    found = shutil.which(command, path=path) if "/" not in command else command
    if found is None:
        return True  # the exec will say so
    targets = [Path(os.path.realpath(found))]
    interpreter = _shebang(targets[0])  # a script (avatar-worker): its interpreter runs too
    if interpreter is not None:
        targets.append(Path(os.path.realpath(interpreter)))
    if Path(os.path.realpath(sys.executable)) in targets:
        targets += [Path(os.path.realpath(sys.prefix)), Path(os.path.realpath(sys.base_prefix))]
    uid, groups = int(user["uid"]), {int(user["gid"]), *(int(g) for g in user["groups"])}

    def allowed(item: Path, bit: int) -> bool:
        try:
            stat = item.stat()
        except OSError:
            return False
        if stat.st_uid == uid:
            return bool(stat.st_mode & (bit << 6))
        if stat.st_gid in groups:
            return bool(stat.st_mode & (bit << 3))
        return bool(stat.st_mode & bit)

    for target in targets:
        if not all(allowed(folder, 1) for folder in target.parents):
            return False
        if not allowed(target, 1 if target.is_dir() else 5):
            return False
    return True


def _port(spec: dict[str, Any], port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in spec.get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def _socket_in(netns: str) -> socket.socket:
    """A TCP socket of `netns`: setns(2) moves only the calling thread, so a thread of its own
    makes the socket, and the socket keeps the namespace. Only the making is on a thread: the
    connect is the loop's, so a peer that never answers holds no thread (probes come every few
    seconds per Pod; blocking connects of 5 s each once filled the loop's executor, and every
    Pod start waiting on it)."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            podlaunch.join_netns(netns)
            result.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as error:  # handed to the caller
            result.append(error)

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _close_made(made: asyncio.Future[socket.socket]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result().close()


async def open_connection(
    netns: str | None,
    host: str,
    port: int,
    context: ssl.SSLContext | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `host:port` made from `netns` (None: this process's namespace)."""
    if netns is None:
        async with asyncio.timeout(timeout_s):
            return await asyncio.open_connection(host, port, ssl=context)
    made = asyncio.get_running_loop().run_in_executor(None, _socket_in, netns)
    try:
        sock = await asyncio.shield(made)
    except asyncio.CancelledError:  # a probe's timeout: the socket, once made, is closed
        made.add_done_callback(_close_made)
        raise
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            return await asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=host if context else None
            )
    except BaseException:
        sock.close()
        raise


_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def _quantity_bytes(quantity: str) -> int:
    for suffix, factor in _SUFFIXES.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pod runner task failed", exc_info=task.exception())
