"""The demo on a real control plane (`make demo DEMO_ARGS=--real-cluster`): the same story as
`system.DemoSystem`, with the real parts a user's cluster has.

`RealDemoSystem` starts `avatar_devtools.realcluster.Cluster` — etcd, kube-apiserver,
kube-controller-manager, kube-scheduler (built from Kubernetes' own modules, `make
kube-binaries`) and the node agent running every Pod's containers as processes of this
environment, each Pod in its own mount and network namespace — with `FLEET`'s two nodes of two
H100s each. Then, as a user would: the namespaces and `helm install` of the chart with a
local room (so the chart makes placeholder VideoSDK credentials: the local room checks no
token), whose operator Pod, once Ready, serves the sessions of `agents`.

The meetings stay in the demo's own process (`rooms.DemoRooms`: the agent and the viewer join
them there, as in the emulated demo). The worker Pods reach them as a Pod reaches any server
outside the cluster: a Service without a selector, `demo-room`, whose EndpointSlice points at
`HOST_ADDRESS` (the machine as Pods see it; the node agent's Service proxy forwards it to this
machine's loopback), and the chart's `localRoom.url` names that Service.

What the demo reads back comes from the API server as an agent's tooling would: the Pods (a
poll every `POLL_S`, which also keeps each worker's exit code and log before its Pod goes),
Secrets, the operator's `avatar_gpu_vram_reserved_mib` through a NodePort Service of the demo's
(the operator keeps the ledger in its own Pod), and the worker processes under the node agent.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from avatar_devtools.demo.rooms import DemoRooms, SystemLifetime
from avatar_devtools.demo.system import FLEET, NAMESPACE, OPERATOR_NAMESPACE
from avatar_devtools.realcluster import binaries, podnet, processes
from avatar_devtools.realcluster.cluster import HOST_ADDRESS, Cluster
from avatar_devtools.realcluster.rest import RestClient, RestError
from avatar_operator import manifests

if TYPE_CHECKING:
    from avatar_worker.transports.localroom import LocalRoom
    from avatar_worker.transports.webviewer import WebViewer

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "avatar-operator"
RELEASE = "avatar-operator"
ROOM_SERVICE = "demo-room"
METRICS_SERVICE = "demo-operator-metrics"
POLL_S = 0.25
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/endpointslices"
# the images the chart names, as this environment's commands (no container images here)
IMAGES = {
    "ghcr.io/avatar-operator/operator": ["python", "-m", "avatar_operator"],
    "ghcr.io/avatar-operator/worker": ["python", "-m", "avatar_worker"],
}


def unavailable_reason() -> str | None:
    """Why this demo cannot run here (no binaries and no Go; no network namespaces), or None."""
    network = podnet.available()
    if not network.ok:
        return f"Pods need their own network namespaces: {network.reason}"
    return binaries.unavailable_reason(REPO_ROOT)


def fleet_document() -> dict[str, Any]:
    """`system.FLEET`'s nodes, the node agent running Pods as processes of this environment."""
    document = copy.deepcopy(FLEET)
    document["kubelet"] = {
        "mode": "process",
        "startSeconds": 0.05,
        "podGCSeconds": 5,
        "images": IMAGES,
    }
    return document


def chart_values(room_port: int) -> dict[str, Any]:
    """The chart's values for this demo: one operator replica, the local transport pointed at
    the demo's room server, the demo namespace watched, workers sized for a laptop."""
    return {
        "replicaCount": 1,
        "watchNamespaces": [NAMESPACE],
        "image": {"pullPolicy": "Never"},
        "localRoom": {
            "enabled": True,
            "url": f"ws://{ROOM_SERVICE}.{OPERATOR_NAMESPACE}.svc:{room_port}/rooms/{{roomId}}",
        },
        "worker": {
            "image": {"pullPolicy": "Never"},
            "resources": {
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": "", "memory": "2Gi"},
            },
        },
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


class RealDemoSystem(SystemLifetime):
    """The real control plane, the chart's operator and the demo's rooms; see the docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        viewer: bool = False,
        room_port: int = 0,
        agent_id: str = "agent",
        bin_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self._rooms = DemoRooms(port=room_port, viewer=viewer, agent_id=agent_id)
        self._bin_dir = bin_dir
        self.cluster: Cluster | None = None
        self.admin: RestClient | None = None
        self.kubeconfig = workdir / "cluster" / "kubeconfig"
        self.pod_exits: dict[str, int] = {}  # pod name → its container's exit code
        self.install_seconds: float | None = None
        self._pods: dict[str, dict[str, Any]] = {}
        self._logs: dict[str, str] = {}
        self._workers: dict[int, str] = {}  # worker processes seen: pid → start time
        self._metrics_port: int | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rooms = await self._rooms.start()
        bin_dir = self._bin_dir or await asyncio.to_thread(binaries.bin_dir, REPO_ROOT)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_document()))
        self.cluster = Cluster(
            self.workdir / "cluster", bin_dir=bin_dir, fleet=fleet, die_with_parent=True
        )
        await asyncio.to_thread(self.cluster.start)
        self.admin = self.cluster.rest()
        began = time.monotonic()
        await asyncio.to_thread(self._install, rooms.port)
        self.install_seconds = time.monotonic() - began
        self._poller = threading.Thread(target=self._poll, name="demo pods", daemon=True)
        self._poller.start()

    def _install(self, room_port: int) -> None:
        assert self.cluster is not None and self.admin is not None
        for namespace in (OPERATOR_NAMESPACE, NAMESPACE):
            self.admin.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
        self._room_service(room_port)
        values = self.workdir / "values.yaml"
        values.write_text(yaml.safe_dump(chart_values(room_port)))
        self.cluster.helm(
            *("install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE),
            *("--values", str(values), "--wait", "--timeout", "5m"),
            timeout=330,
        )
        self._metrics_port = self._metrics_service()

    def _room_service(self, room_port: int) -> None:
        """`demo-room`: the demo's room server, as Pods reach it (see the module docstring)."""
        assert self.admin is not None
        self.admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": ROOM_SERVICE, "namespace": OPERATOR_NAMESPACE},
                "spec": {"ports": [{"name": "ws", "port": room_port, "protocol": "TCP"}]},
            }
        )
        self.admin.request(
            "POST",
            SLICES,
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{ROOM_SERVICE}-host",
                    "namespace": OPERATOR_NAMESPACE,
                    "labels": {"kubernetes.io/service-name": ROOM_SERVICE},
                },
                "addressType": "IPv4",
                "ports": [{"name": "ws", "port": room_port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [HOST_ADDRESS], "conditions": {"ready": True}}],
            },
        )

    def _metrics_service(self) -> int:
        """A NodePort Service of the operator's /metrics (the chart's is ClusterIP): its port."""
        assert self.admin is not None
        created = self.admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": METRICS_SERVICE, "namespace": OPERATOR_NAMESPACE},
                "spec": {
                    "type": "NodePort",
                    "selector": {
                        "app.kubernetes.io/name": "avatar-operator",
                        "app.kubernetes.io/instance": RELEASE,
                        "app.kubernetes.io/component": "operator",
                    },
                    "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
                },
            }
        )
        return int(created["spec"]["ports"][0]["nodePort"])

    async def aclose(self) -> None:
        self._stop.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 10)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        await self._rooms.aclose()

    # --- rooms ----------------------------------------------------------------------------

    @property
    def viewer(self) -> WebViewer | None:
        return self._rooms.viewer

    def open_room(self, room_id: str) -> LocalRoom:
        return self._rooms.open_room(room_id)

    # --- what is there --------------------------------------------------------------------

    def _poll(self) -> None:
        """The demo namespace's Pods every POLL_S: exit codes and logs kept before a Pod goes,
        the worker processes under the node agent noted."""
        assert self.admin is not None and self.cluster is not None
        agent = int(self.cluster.processes["nodeagent"]["pid"])
        while not self._stop.wait(POLL_S):
            try:
                pods = self.admin.list("pods", NAMESPACE)
            except (OSError, RestError) as error:
                logger.debug("pod poll failed", extra={"error": str(error)})
                continue
            self._pods = {p["metadata"]["name"]: p for p in pods}
            for pod in pods:
                self._note_exit(pod)
            self._workers.update(processes.workers_under(agent))

    def _note_exit(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated and terminated.get("exitCode") is not None and name not in self.pod_exits:
                self.pod_exits[name] = int(terminated["exitCode"])
                self._logs[name] = log = self._read_log(name)
                # kept for a post-mortem: the Pod (and the agent's copy) go with their session
                exits = self.workdir / "exits"
                exits.mkdir(exist_ok=True)
                (exits / f"{name}.{self.pod_exits[name]}.log").write_text(log)

    def _read_log(self, pod_name: str) -> str:
        assert self.admin is not None
        try:
            text = self.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod_name}/log")
        except (OSError, RestError):
            return ""
        return text if isinstance(text, str) else ""

    def session(self, name: str) -> dict[str, Any] | None:
        assert self.admin is not None
        return self.admin.get("avatarsessions", name, NAMESPACE)

    def pod(self, name: str) -> dict[str, Any] | None:
        return self._pods.get(name)

    def pods(self) -> list[dict[str, Any]]:
        """The demo namespace's Pods, as last polled."""
        return list(self._pods.values())

    def worker_log(self, pod_name: str) -> str:
        return self._logs.get(pod_name) or self._read_log(pod_name)

    def reserved_vram_mib(self) -> int:
        """VRAM the operator's ledger holds, from its `avatar_gpu_vram_reserved_mib`."""
        url = f"http://127.0.0.1:{self._metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("avatar_gpu_vram_reserved_mib "):
                return int(float(line.split()[1]))
        raise ValueError(f"{url}: no avatar_gpu_vram_reserved_mib")

    def leaks(self, session_name: str) -> list[str]:
        """What the finished session `session_name` left behind (empty: nothing)."""
        assert self.admin is not None
        selector = {"labelSelector": f"{manifests.LABEL_SESSION}={session_name}"}
        pods = {p["metadata"]["name"]: p for p in self.admin.list("pods", NAMESPACE, **selector)}
        found = [f"pod {name} ({(p.get('status') or {}).get('phase')})" for name, p in pods.items()]
        self._pods = {  # what is gone is gone now, not at the next poll
            name: pod
            for name, pod in self._pods.items()
            if name in pods
            or (pod["metadata"].get("labels") or {}).get(manifests.LABEL_SESSION) != session_name
        }
        found += [
            f"secret {s['metadata']['name']}"
            for s in self.admin.list("secrets", NAMESPACE, **selector)
        ]
        found += [f"worker process {pid}" for pid in processes.alive(self._workers)]
        try:
            reserved = self.reserved_vram_mib()
        except (OSError, ValueError) as error:
            found.append(
                f"GPU reservation unknown: the operator's metrics did not answer ({error})"
            )
        else:
            if reserved:
                found.append(f"GPU reservation of {reserved} MiB")
        return found

    async def wait_collected(self, session_name: str, within: float = 30.0) -> list[str]:
        """Wait until the session left nothing behind; returns what is left at the deadline."""
        deadline = time.monotonic() + within
        # several owners (operator, node agent, garbage collector) each remove a part: poll
        while (left := await asyncio.to_thread(self.leaks, session_name)) and (  # noqa: ASYNC110
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.2)
        return left
