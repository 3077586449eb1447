"""Test support: the real operator (kopf + reconciler + relay) against a localcluster."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from avatar_devtools.localcluster import cluster, fleet
from avatar_devtools.localcluster.operatorrun import OperatorThread
from avatar_operator import runner
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api

OPERATOR_NS = "avatar-system"
NS = "agents"
RELAY_KEY = "r" * 32
# the default VideoSDK credentials the environment holds (tokens signed with them verify)
API_KEY = "test-api-key"
SECRET = "s" * 40
FLEET = {
    "kubelet": {"mode": "phases", "startSeconds": 0.02, "podGCSeconds": 0.2},
    "nodes": [
        {"name": "gpu-a", "gpus": 2, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559},
        {"name": "gpu-b", "gpus": 2, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559},
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def session_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"roomId": f"room-{name}", **spec},
    }


class Env:
    """A running operator and its cluster, with the verbs tests need."""

    def __init__(self, local: cluster.LocalCluster, kubeconfig: Path, tmp: Path) -> None:
        self.local = local
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.operators: list[OperatorThread] = []
        self.http = aiohttp.ClientSession()

    @property
    def store(self) -> Any:
        return self.local.store

    def settings(self, **overrides: Any) -> OperatorSettings:
        port = free_port()
        values: dict[str, Any] = {
            "operator_namespace": OPERATOR_NS,
            "http_port": port,
            "status_url": f"http://127.0.0.1:{port}",
            "status_relay_key": RELAY_KEY,
            "leader_election": False,
            "sweep_interval_seconds": 0.1,
            "watch_server_timeout_seconds": 60,
            "watch_client_timeout_seconds": 70,
        }
        values.update(overrides)
        return OperatorSettings(**values)

    async def start_operator(self, **overrides: Any) -> runner.Operator:
        """The operator in a thread with its own loop, as in its own process: kopf cancels
        every task created in its loop while it ran when it stops, and the API server's loop
        must never wait on the operator."""
        running = OperatorThread(self.settings(**overrides), self.kubeconfig)
        await asyncio.to_thread(running.start)
        self.operators.append(running)
        await self.local.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}")
        await self.local.server.wait_for_watches("pods")
        await self.local.server.wait_for_watches("nodes")
        assert running.operator is not None
        return running.operator

    async def stop_operator(self, operator: runner.Operator) -> None:
        for running in list(self.operators):
            if running.operator is operator:
                await asyncio.to_thread(running.stop)
                self.operators.remove(running)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return dict(self.local.apply(manifest).obj)

    def get(self, plural: str, name: str, namespace: str | None = NS) -> dict[str, Any] | None:
        info = self.info(plural)
        record = self.store.find(info, namespace, name)
        return None if record is None else record.obj

    def list(self, plural: str, namespace: str | None = NS) -> list[dict[str, Any]]:
        info = self.info(plural)
        return [r.obj for r in self.store.list(info, namespace).records]

    def info(self, plural: str) -> Any:
        if plural == api.PLURAL:
            return self.store.lookup(api.GROUP, api.VERSION, api.PLURAL)
        return self.store.lookup("", "v1", plural)

    async def wait_session(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        return await self.local.wait_for(self.info(api.PLURAL), NS, name, predicate, within=within)

    async def wait_gone(self, plural: str, name: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while self.get(plural, name) is not None:
                await asyncio.sleep(0.02)

    async def wait_events(self, reason: str, count: int, within: float = 10.0) -> list[Any]:
        """Events are posted in the background, after the status write they describe."""
        async with asyncio.timeout(within):
            while True:
                found = [e for e in self.list("events") if e["reason"] == reason]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.05)

    def status_token(self, name: str) -> str:
        secret = self.get("secrets", f"{name}-token")
        assert secret is not None, "no token secret"
        return base64.b64decode(secret["data"]["status-token"]).decode()

    async def report(
        self, operator: runner.Operator, name: str, status: dict[str, Any], token: str | None = None
    ) -> aiohttp.ClientResponse:
        """What the worker sends: a merge patch of its status through the relay."""
        url = (
            f"http://127.0.0.1:{operator.settings.http_port}/apis/{api.GROUP}/{api.VERSION}"
            f"/namespaces/{NS}/{api.PLURAL}/{name}/status"
        )
        headers = {"Authorization": f"Bearer {token or self.status_token(name)}"}
        async with self.http.patch(url, json={"status": status}, headers=headers) as response:
            await response.read()
            return response

    async def aclose(self) -> None:
        await self.http.close()  # first: an open keep-alive connection holds a server's stop
        for running in list(self.operators):
            await asyncio.to_thread(running.stop)


async def make_env(
    localcluster_factory: Any,
    crd: dict[str, Any],
    tmp: Path,
    fleet_document: dict[str, Any] | None = None,
) -> Env:
    """A localcluster with the CRD, the operator's and the sessions' namespaces and the
    default VideoSDK credentials Secret; the operator is started by the test."""
    local = await localcluster_factory(fleet_spec=fleet.parse(fleet_document or FLEET))
    local.apply(crd)
    for obj in cluster.operator_prerequisites(OPERATOR_NS, [NS], api_key=API_KEY, secret=SECRET):
        local.apply(obj)
    return Env(local, local.write_kubeconfig(tmp / "kubeconfig"), tmp)


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases
