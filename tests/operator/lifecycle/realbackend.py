"""The lifecycle tests' real backend: the session's real control plane (kube-apiserver,
kube-controller-manager with its garbage collector, kube-scheduler, the node agent), with the
operator holding nothing but a token of the chart's ServiceAccount.

Set up once per test session (`RealSetup`): the CRD, the operator's namespace with the chart's
RBAC rendered by `helm template` (release `avatar-operator` in `lifecycle-system`, its own
ClusterRole name, so `helm install` of the chart tests does not collide), the default VideoSDK
credentials Secret and the sessions' namespace. After each test (`RealBackend.aclose`) whatever
it left is removed, so the next starts from the same cluster.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lifecycle_support import API_KEY, NS, SECRET, Backend, Refused

from avatar_devtools.localcluster import cluster as emulated
from avatar_devtools.realcluster import Cluster, chartidentity
from avatar_devtools.realcluster.rest import RestClient, RestError, plural_of
from avatar_sdk import api

OPERATOR_NS = "lifecycle-system"
RELEASE = "avatar-operator"


class RealSetup:
    """What every real-backend test shares (made once per test session)."""

    def __init__(self, cluster: Cluster, directory: Path) -> None:
        self.cluster = cluster
        self.admin = cluster.rest()
        self.prerequisites = emulated.operator_prerequisites(
            OPERATOR_NS, [NS], api_key=API_KEY, secret=SECRET
        )
        for obj in self.prerequisites:
            try:
                self.admin.create(obj)
            except RestError as error:
                if error.status != 409:
                    raise
        chartidentity.apply_chart_rbac(
            cluster,
            release=RELEASE,
            namespace=OPERATOR_NS,
            values={
                "videosdk.existingSecret": "videosdk-credentials",
                "dispatcher.enabled": "true",
                "dispatcher.namespace": NS,
            },
        )
        self.kubeconfig = chartidentity.service_account_kubeconfig(
            cluster, OPERATOR_NS, RELEASE, directory / "operator.kubeconfig"
        )
        self.nodes = tuple(
            n["metadata"]["name"]
            for n in self.admin.list("nodes")
            if n["metadata"].get("labels", {}).get("nvidia.com/gpu.present") == "true"
        )


class RealBackend(Backend):
    name = "real"
    operator_ns = OPERATOR_NS
    slack = 3.0

    def __init__(self, setup: RealSetup) -> None:
        self.setup = setup
        self.cluster = setup.cluster
        self.admin: RestClient = setup.admin
        self.kubeconfig = setup.kubeconfig
        self.nodes = setup.nodes
        self._silenced: set[str] = set()

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.admin.create(manifest)
        except RestError as error:
            body = error.body if isinstance(error.body, dict) else {}
            raise Refused(error.status, str(body.get("message", error))) from error

    def get(self, plural: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        return self.admin.get(plural, name, namespace)

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return self.admin.list(plural, namespace)

    def delete(self, plural: str, name: str, namespace: str | None) -> None:
        self.admin.delete(plural, name, namespace)

    def patch_status(self, plural: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.admin.patch(plural, name, {"status": status}, namespace, subresource="status")

    async def control(self, verb: str, **body: Any) -> None:
        await asyncio.to_thread(self.cluster.control, verb, **body)
        if verb == "remove-node":
            self._silenced.add(str(body["name"]))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._clean)

    # --- between tests --------------------------------------------------------------------

    def _clean(self) -> None:
        admin = self.admin
        for session in admin.list(api.PLURAL, NS):
            name = session["metadata"]["name"]
            if session["metadata"].get("finalizers"):
                # the operator that would have removed its finalizer is stopped
                admin.patch(api.PLURAL, name, {"metadata": {"finalizers": None}}, NS)
            admin.delete(api.PLURAL, name, NS)
        for plural in ("pods", "secrets", "events", "configmaps"):
            admin.request(
                "DELETE",
                admin.path(plural, NS),
                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                ok=(200, 404),
            )
        admin.delete("leases", "avatar-operator", OPERATOR_NS)
        for obj in self.setup.prerequisites:  # a test may have changed the credentials
            if obj["kind"] == "Secret":
                path = admin.path(plural_of(obj), OPERATOR_NS, obj["metadata"]["name"])
                try:
                    admin.request("PUT", path, obj)
                except RestError as error:
                    if error.status != 404:
                        raise
                    admin.create(obj)
        for secret in admin.list("secrets", OPERATOR_NS):
            if secret["metadata"]["name"] != "videosdk-credentials":
                admin.delete("secrets", secret["metadata"]["name"], OPERATOR_NS)
        for node in sorted(self._silenced):
            self.cluster.control("restore-node", name=node)
        deadline = time.monotonic() + 60
        while True:
            left = [
                f"{plural}/{o['metadata']['name']}"
                for plural in (api.PLURAL, "pods")
                for o in admin.list(plural, NS)
            ]
            not_ready = [n for n in self._silenced if not _ready(admin.get("nodes", n, None))]
            if not left and not not_ready:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"left behind by the test: {left}; not Ready: {not_ready}")
            time.sleep(0.1)


def _ready(node: dict[str, Any] | None) -> bool:
    for condition in ((node or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False
