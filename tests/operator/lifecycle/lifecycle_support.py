"""Test support: the real operator (kopf + reconciler + relay) against a backend — the
emulator (`localcluster`, in this loop) or the real control plane (`realbackend`). The relay
serves TLS, as the chart's does, with a CA of the test's own (`avatar_devtools.relaytls`)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from avatar_devtools import relaytls
from avatar_devtools.localcluster import cluster, errors, fleet
from avatar_devtools.localcluster.operatorrun import OperatorThread
from avatar_devtools.ports import free_port
from avatar_operator import runner
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api, pools
from avatar_sdk import crd as crd_module

OPERATOR_NS = "avatar-system"
NS = "agents"
RELAY_KEY = "r" * 32
# the default VideoSDK credentials the environment holds (tokens signed with them verify)
API_KEY = "test-api-key"
SECRET = "s" * 40
# CPU and memory for 100 workers (1 CPU, 2Gi each): placement counts them as the scheduler does
_NODE = {"gpus": 2, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "cpu": "64"}
FLEET = {
    "kubelet": {"mode": "phases", "startSeconds": 0.02, "podGCSeconds": 0.2},
    "nodes": [{"name": "gpu-a", **_NODE}, {"name": "gpu-b", **_NODE}],
}


def session_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {"roomId": f"room-{name}", **spec},
    }


class Refused(Exception):
    """The API server refused a write: `code` and its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Backend:
    """Where the operator's API is: the emulator in this loop, or a real control plane.

    The verbs are synchronous (the emulator's store is in this loop; the real server is one
    HTTPS call away); waiting is the Env's."""

    name = ""
    operator_ns = OPERATOR_NS
    kubeconfig: Path  # the operator's
    nodes: tuple[str, ...] = ()
    slack = 1.0  # how much longer than the emulator things may take

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def get(self, plural: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        raise NotImplementedError

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def delete(self, plural: str, name: str, namespace: str | None) -> None:
        raise NotImplementedError

    def patch_status(self, plural: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        raise NotImplementedError

    async def control(self, verb: str, **body: Any) -> None:
        """The node side's test controls (`fail-pod`, `remove-node`, …), as both serve them."""
        raise NotImplementedError

    async def operator_started(self) -> None:
        """Returns when a started operator's watches are open (where that can be known)."""

    def lease_holder(self) -> str | None:
        lease = self.get("leases", "avatar-operator", self.operator_ns)
        return None if lease is None else lease["spec"].get("holderIdentity")

    async def aclose(self) -> None:
        """After each test: nothing of it is left for the next."""


class EmulatorBackend(Backend):
    name = "emulator"
    nodes = ("gpu-a", "gpu-b")

    def __init__(self, local: cluster.LocalCluster, kubeconfig: Path) -> None:
        self.local = local
        self.kubeconfig = kubeconfig

    def info(self, plural: str) -> Any:
        if plural in (api.PLURAL, pools.POOL_PLURAL):
            return self.local.store.lookup(api.GROUP, api.VERSION, plural)
        if plural == "leases":
            return self.local.store.lookup("coordination.k8s.io", "v1", "leases")
        return self.local.store.lookup("", "v1", plural)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(self.local.apply(manifest).obj)
        except errors.ApiError as error:
            raise Refused(error.code, error.message) from error

    def get(self, plural: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        record = self.local.store.find(self.info(plural), namespace, name)
        return None if record is None else record.obj

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return [r.obj for r in self.local.store.list(self.info(plural), namespace).records]

    def delete(self, plural: str, name: str, namespace: str | None) -> None:
        self.local.store.delete(self.info(plural), namespace, name)

    def patch_status(self, plural: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.local.store.mutate(
            self.info(plural),
            namespace,
            name,
            lambda o: o.setdefault("status", {}).update(status),
            subresource="status",
        )

    async def control(self, verb: str, **body: Any) -> None:
        url = f"{self.local.server.url}/localcluster/v1/{verb}"
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
            assert response.status == 200, await response.text()

    async def operator_started(self) -> None:
        await self.local.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}")
        await self.local.server.wait_for_watches("pods")
        await self.local.server.wait_for_watches("nodes")


class Env:
    """A running operator and its cluster, with the verbs tests need, on either backend."""

    def __init__(self, backend: Backend, tmp: Path) -> None:
        self.backend = backend
        self.kubeconfig = backend.kubeconfig
        self.operator_ns = backend.operator_ns
        self.tmp = tmp
        self.operators: list[OperatorThread] = []
        self.http = aiohttp.ClientSession()
        self.relay_tls = relaytls.make(tmp / "relay-tls")
        self._relay_ssl = self.relay_tls.client_context()  # what a worker trusts

    @property
    def local(self) -> cluster.LocalCluster:
        """The emulator itself, for tests of what only it exposes."""
        assert isinstance(self.backend, EmulatorBackend), "an emulator-only test"
        return self.backend.local

    @property
    def store(self) -> Any:
        return self.local.store

    def info(self, plural: str) -> Any:
        assert isinstance(self.backend, EmulatorBackend), "an emulator-only test"
        return self.backend.info(plural)

    def settings(self, **overrides: Any) -> OperatorSettings:
        values: dict[str, Any] = {
            "operator_namespace": self.operator_ns,
            "http_port": free_port(),
            **self.relay_tls.operator_settings(free_port()),
            "status_relay_key": RELAY_KEY,
            "leader_election": False,
            "sweep_interval_seconds": 0.1,
            "node_lost_grace_seconds": 2.0,
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
        await self.backend.operator_started()
        assert running.operator is not None
        return running.operator

    async def stop_operator(self, operator: runner.Operator) -> None:
        for running in list(self.operators):
            if running.operator is operator:
                await asyncio.to_thread(running.stop)
                self.operators.remove(running)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.backend.create(manifest)

    def get(self, plural: str, name: str, namespace: str | None = NS) -> dict[str, Any] | None:
        return self.backend.get(plural, name, namespace)

    def list(self, plural: str, namespace: str | None = NS) -> list[dict[str, Any]]:
        return self.backend.list(plural, namespace)

    def delete(self, plural: str, name: str, namespace: str | None = NS) -> None:
        self.backend.delete(plural, name, namespace)

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        """A write to the status subresource as an administrator (not the operator) makes."""
        self.backend.patch_status(plural, name, NS, status)

    async def control(self, verb: str, **body: Any) -> None:
        await self.backend.control(verb, **body)

    async def wait_for(
        self,
        plural: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
        within: float = 10.0,
        namespace: str | None = NS,
    ) -> dict[str, Any]:
        found: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(within * self.backend.slack):
                while True:
                    found = self.get(plural, name, namespace)
                    if found is not None and predicate(found):
                        return found
                    await asyncio.sleep(0.02)
        except TimeoutError:
            last = (found or {}).get("status")
            raise AssertionError(f"{plural} {name} not as expected in time; last: {last}") from None

    async def wait_session(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        return await self.wait_for(api.PLURAL, name, predicate, within)

    async def wait_gone(self, plural: str, name: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within * self.backend.slack):
            while self.get(plural, name) is not None:
                await asyncio.sleep(0.02)

    async def wait_events(self, reason: str, count: int, within: float = 10.0) -> list[Any]:
        """Events are posted in the background, after the status write they describe."""
        async with asyncio.timeout(within * self.backend.slack):
            while True:
                found = [e for e in self.list("events") if e["reason"] == reason]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.05)

    def lease_holder(self) -> str | None:
        return self.backend.lease_holder()

    def status_token(self, name: str) -> str:
        secret = self.get("secrets", f"{name}-token")
        assert secret is not None, "no token secret"
        return base64.b64decode(secret["data"]["status-token"]).decode()

    async def report(
        self, operator: runner.Operator, name: str, status: dict[str, Any], token: str | None = None
    ) -> aiohttp.ClientResponse:
        """What the worker sends: a merge patch of its status through the relay, in TLS."""
        url = (
            f"{operator.settings.status_url}/apis/{api.GROUP}/{api.VERSION}"
            f"/namespaces/{NS}/{api.PLURAL}/{name}/status"
        )
        headers = {"Authorization": f"Bearer {token or self.status_token(name)}"}
        async with self.http.patch(
            url, json={"status": status}, headers=headers, ssl=self._relay_ssl
        ) as response:
            await response.read()
            return response

    async def aclose(self) -> None:
        await self.http.close()  # first: an open keep-alive connection holds a server's stop
        for running in list(self.operators):
            await asyncio.to_thread(running.stop)
        await self.backend.aclose()


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
    local.apply(crd_module.pool_custom_resource_definition())
    for obj in cluster.operator_prerequisites(OPERATOR_NS, [NS], api_key=API_KEY, secret=SECRET):
        local.apply(obj)
    backend = EmulatorBackend(local, local.write_kubeconfig(tmp / "kubeconfig"))
    return Env(backend, tmp)


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases
