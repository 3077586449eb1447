"""The system under demonstration: emulated cluster, real operator, worker processes, rooms.

`DemoSystem` starts, in this event loop, a `localcluster.LocalCluster` whose simulated kubelet
runs each worker Pod as a local process (mode "process"), and a `LocalRoomServer` on loopback
that serves every session's room; and, in a thread with its own loop, the real operator
(`localcluster.operatorrun.OperatorThread`) configured as a cluster without VideoSDK would be:
local transport, the room server's URL template, its status relay in TLS on a free port (a CA
of the run's own, which workers get in their Secret, as with the chart).

What differs from a cluster, and why:

- Workers run as `python -m avatar_worker run --health-port 0`: local processes share one
  network (pods have one each), so two workers cannot both serve their probes on 8081, and the
  simulated kubelet does not probe.
- The GPU nodes are simulated (`FLEET`); each worker renders on the CPU with one torch thread.

With `viewer=True` the room server also serves the viewer page (`WebViewer`) on its port.

`leaks()` lists what a finished session must not leave behind: worker Pods, token Secrets,
running worker processes, GPU reservations in the operator's ledger.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatar_devtools import relaytls
from avatar_devtools.demo.rooms import DemoRooms, SystemLifetime
from avatar_devtools.localcluster import cluster, fleet, resources
from avatar_devtools.localcluster.operatorrun import OperatorThread
from avatar_devtools.ports import free_port
from avatar_operator import manifests
from avatar_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from avatar_worker.transports.localroom import LocalRoom
    from avatar_worker.transports.webviewer import WebViewer

logger = logging.getLogger(__name__)

NAMESPACE = "agents"
OPERATOR_NAMESPACE = "avatar-system"
CREDENTIALS_SECRET = "videosdk-credentials"
RELAY_KEY_BYTES = 32

# Two simulated nodes with two 80 GB H100s each: enough to show placement, small enough to read.
FLEET: dict[str, Any] = {
    "kubelet": {"mode": "process", "podGCSeconds": 1.0},
    "nodes": [
        {
            "name": "h100",
            "count": 2,
            "gpus": 2,
            "product": "NVIDIA-H100-80GB-HBM3",
            "memoryMiB": 81559,
            "cpu": "64",
            "memory": "512Gi",
        }
    ],
}


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def worker_command() -> list[str]:
    """The worker container's command as the kubelet runs it (`python`: its own interpreter)."""
    return ["python", "-m", "avatar_worker", "run", "--health-port", "0"]


class DemoSystem(SystemLifetime):
    """The emulated cluster, the operator and the room server; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        *,
        fleet_document: dict[str, Any] | None = None,
        operator_settings: dict[str, Any] | None = None,
        operator_process: bool = False,
        viewer: bool = False,
        room_port: int = 0,
        agent_id: str = "agent",
    ) -> None:
        self.workdir = workdir
        self._rooms = DemoRooms(port=room_port, viewer=viewer, agent_id=agent_id)
        self._operator_as_process = operator_process
        self.operator_process: subprocess.Popen[bytes] | None = None
        self._fleet_document = fleet_document or FLEET
        self._operator_overrides = dict(operator_settings or {})
        self.cluster: cluster.LocalCluster | None = None
        self.operator: OperatorThread | None = None
        self.kubeconfig = workdir / "kubeconfig"
        self.settings: OperatorSettings | None = None
        self.pod_exits: dict[str, int] = {}  # pod name → its container's exit code

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        from avatar_sdk import crd

        self.workdir.mkdir(parents=True, exist_ok=True)
        rooms = await self._rooms.start()
        self.cluster = cluster.LocalCluster(
            crds=crd.custom_resource_definitions(),  # AvatarSession and AvatarPool
            objects=self._objects(),
            fleet_spec=fleet.parse(self._fleet_document),
            workdir=self.workdir / "kubelet",
            bookmark_interval=1.0,
        )
        await self.cluster.start()
        self.cluster.store.add_listener(resources.PODS, self._on_pod_event)
        self.cluster.write_kubeconfig(self.kubeconfig, namespace=NAMESPACE)
        port, relay_port = free_port(), free_port()
        tls = relaytls.make(self.workdir / "relay-tls")  # workers verify the relay's CA
        values: dict[str, Any] = {
            "namespaces": [NAMESPACE],
            "operator_namespace": OPERATOR_NAMESPACE,
            "worker_image": "avatar-worker:local",
            "worker_command": worker_command(),
            "worker_transport": "local",
            "worker_local_room_url": rooms.url_template,
            "http_port": port,
            **tls.operator_settings(relay_port),
            "status_relay_key": base64.b64encode(os.urandom(RELAY_KEY_BYTES)).decode(),
            "identity": "avatar-operator-0",
            "sweep_interval_seconds": 0.5,
            "lease_duration_seconds": 4.0,
            "lease_renew_seconds": 1.0,
        }
        values.update(self._operator_overrides)
        self.settings = OperatorSettings(**values)
        if self._operator_as_process:
            await self.start_operator_process()
        else:
            await self.start_operator()

    async def start_operator(self, identity: str | None = None) -> None:
        """Start the operator (again, after `stop_operator`): the same settings, so the same
        relay port and key that running workers report to; `identity`: another replica's name
        (it then waits out the Lease of a replica that died holding it)."""
        assert self.settings is not None and self.cluster is not None
        settings = self.settings
        if identity is not None:
            settings = settings.model_copy(update={"identity": identity})
        running = OperatorThread(settings, self.kubeconfig)
        await asyncio.to_thread(running.start, 30.0)
        self.operator = running
        for watched in ("avatarsessions.avatar-operator.dev", "pods"):
            await self.cluster.server.wait_for_watches(watched)

    async def stop_operator(self) -> None:
        if self.operator is not None:
            running, self.operator = self.operator, None
            await asyncio.to_thread(running.stop)

    async def start_operator_process(self, within: float = 60.0) -> None:
        """The operator as its own process (`python -m avatar_operator`), as in a Pod: the same
        settings, given as its environment. Returns once it is the active replica."""
        assert self.settings is not None and self.cluster is not None
        env = {**os.environ, **self.settings.to_env()}
        log = (self.workdir / "operator.log").open("ab")
        command = [sys.executable, "-m", "avatar_operator", "--kubeconfig", str(self.kubeconfig)]
        self.operator_process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        url = f"http://127.0.0.1:{self.settings.http_port}/readyz"
        async with asyncio.timeout(within):
            while not await asyncio.to_thread(_answers_200, url):
                if self.operator_process.poll() is not None:
                    raise RuntimeError(
                        f"the operator exited with {self.operator_process.returncode}: "
                        f"see {self.workdir / 'operator.log'}"
                    )
                await asyncio.sleep(0.1)
        await self.cluster.server.wait_for_watches("avatarsessions.avatar-operator.dev")

    def kill_operator_process(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a node's loss would: no clean shutdown, the
        Lease is not released."""
        if self.operator_process is not None:
            self.operator_process.kill()
            self.operator_process.wait()
            self.operator_process = None

    async def aclose(self) -> None:
        await self.stop_operator()
        self.kill_operator_process()
        if self.cluster is not None:
            await self.cluster.aclose()
        await self._rooms.aclose()

    def _objects(self) -> list[dict[str, Any]]:
        # The VideoSDK key the operator signs room tokens with; the local room checks none.
        return cluster.operator_prerequisites(
            OPERATOR_NAMESPACE,
            [NAMESPACE],
            api_key="local-demo-key",
            secret=os.urandom(24).hex(),
            credentials_secret=CREDENTIALS_SECRET,
        )

    def _on_pod_event(self, event: Any) -> None:
        obj = event.record.obj
        for container in (obj.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated and terminated.get("exitCode") is not None:
                self.pod_exits[obj["metadata"]["name"]] = int(terminated["exitCode"])

    # --- rooms ----------------------------------------------------------------------------

    @property
    def viewer(self) -> WebViewer | None:
        return self._rooms.viewer

    def open_room(self, room_id: str) -> LocalRoom:
        """A room on the room server (the meeting the agent and users are in)."""
        return self._rooms.open_room(room_id)

    # --- what is there --------------------------------------------------------------------

    @property
    def store(self) -> Any:
        assert self.cluster is not None
        return self.cluster.store

    def sessions_info(self) -> resources.ResourceInfo:
        info: resources.ResourceInfo = self.store.lookup(
            "avatar-operator.dev", "v1alpha1", "avatarsessions"
        )
        return info

    def session(self, name: str) -> dict[str, Any] | None:
        record = self.store.find(self.sessions_info(), NAMESPACE, name)
        return None if record is None else dict(record.obj)

    def pods(self) -> list[dict[str, Any]]:
        return [r.obj for r in self.store.list(resources.PODS, NAMESPACE).records]

    def secrets(self) -> list[dict[str, Any]]:
        return [r.obj for r in self.store.list(resources.SECRETS, NAMESPACE).records]

    def pod(self, name: str) -> dict[str, Any] | None:
        record = self.store.find(resources.PODS, NAMESPACE, name)
        return None if record is None else dict(record.obj)

    def worker_pid(self, pod_name: str) -> int | None:
        assert self.cluster is not None and self.cluster.kubelet is not None
        return self.cluster.kubelet.container_pid(NAMESPACE, pod_name)

    def worker_log(self, pod_name: str) -> str:
        assert self.cluster is not None and self.cluster.kubelet is not None
        return self.cluster.kubelet.read_log(NAMESPACE, pod_name, None) or ""

    def reserved_vram_mib(self, session_name: str | None = None) -> int:
        """VRAM the operator's ledger holds (for one session, or in all)."""
        if self.operator is None or self.operator.operator is None:
            return 0
        ledger = self.operator.operator.reconciler.placement.ledger
        key = f"{NAMESPACE}/{session_name}" if session_name else None
        return sum(r.vram_mib for r in list(ledger) if key is None or r.key == key)

    def leaks(self, session_name: str) -> list[str]:
        """What the finished session `session_name` left behind (empty: nothing)."""
        found: list[str] = []
        label = manifests.LABEL_SESSION
        for pod in self.pods():
            if (pod["metadata"].get("labels") or {}).get(label) == session_name:
                phase = (pod.get("status") or {}).get("phase")
                found.append(f"pod {pod['metadata']['name']} ({phase})")
                pid = self.worker_pid(pod["metadata"]["name"])
                if pid is not None:
                    found.append(f"worker process {pid}")
        for secret in self.secrets():
            if (secret["metadata"].get("labels") or {}).get(label) == session_name:
                found.append(f"secret {secret['metadata']['name']}")
        reserved = self.reserved_vram_mib(session_name)
        if reserved:
            found.append(f"GPU reservation of {reserved} MiB")
        return found

    async def wait_collected(self, session_name: str, within: float = 20.0) -> list[str]:
        """Wait until the session left nothing behind; returns what is left at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # several owners (operator, kubelet, garbage collector) each remove a part: poll
        while (left := self.leaks(session_name)) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return left
