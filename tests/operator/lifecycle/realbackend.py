"""The lifecycle tests' real backend: the session's real control plane (kube-apiserver,
kube-controller-manager with its garbage collector, kube-scheduler, the node agent), with the
operator holding nothing but a token of the chart's ServiceAccount.

Set up once per test session (the `chart_operator` fixture of `avatar_devtools.realcluster.
fixtures`): the CRD, the operator's namespace with the chart's RBAC rendered by `helm template`
(release `avatar-operator` in `lifecycle-system`, its own ClusterRole name, so `helm install` of
the chart tests does not collide), the default VideoSDK credentials Secret and the sessions'
namespace. Before and after each test (`RealBackend.aclose`) whatever is left is removed, so
each starts from the same cluster, whatever ran on it before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lifecycle_support import API_KEY, NS, SECRET, Backend, Refused

from avatar_devtools.realcluster import Cluster, fixtures
from avatar_devtools.realcluster.fixtures import ChartOperator
from avatar_devtools.realcluster.rest import RestClient, RestError, plural_of
from avatar_sdk import api, pools


class RealBackend(Backend):
    name = "real"
    slack = 3.0

    def __init__(self, cluster: Cluster, operator: ChartOperator) -> None:
        # the Secret the fixture made holds the credentials the tests verify tokens with
        assert (operator.sessions_namespace, API_KEY, SECRET) == (
            NS,
            fixtures.API_KEY,
            fixtures.API_SECRET,
        )
        self.cluster = cluster
        self.identity = operator
        self.operator_ns = operator.namespace
        self.admin: RestClient = cluster.rest()
        self.kubeconfig = operator.kubeconfig
        self.nodes = operator.nodes
        self._silenced: set[str] = set()
        # the cluster is the session's: what a test of another module left in the namespace
        # (run before this one in another order) would be in this test's ledger
        self._clean()

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
        for pool in admin.list(pools.POOL_PLURAL, NS):
            admin.delete(pools.POOL_PLURAL, pool["metadata"]["name"], NS)
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
        admin.delete("leases", "avatar-operator", self.operator_ns)
        for obj in self.identity.prerequisites:  # a test may have changed the credentials
            if obj["kind"] == "Secret":
                path = admin.path(plural_of(obj), self.operator_ns, obj["metadata"]["name"])
                try:
                    admin.request("PUT", path, obj)
                except RestError as error:
                    if error.status != 404:
                        raise
                    admin.create(obj)
        for secret in admin.list("secrets", self.operator_ns):
            if secret["metadata"]["name"] != "videosdk-credentials":
                admin.delete("secrets", secret["metadata"]["name"], self.operator_ns)
        for node in sorted(self._silenced):
            self.cluster.control("restore-node", name=node)
        deadline = time.monotonic() + 60
        while True:
            left = [
                f"{plural}/{o['metadata']['name']}"
                for plural in (api.PLURAL, pools.POOL_PLURAL, "pods")
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
