"""Test support for the agent client: a localcluster, status writes, RBAC refusals, the operator.

The operator parts are the minimal bits of `tests/operator/lifecycle/lifecycle_support.py`
(that folder is not importable from here): the real operator in a thread of its own, and the
worker's status report through the operator's relay, in TLS with a CA of the test's own.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import aiohttp

from avatar_devtools import relaytls
from avatar_devtools.localcluster import cluster, errors
from avatar_devtools.localcluster.operatorrun import OperatorThread
from avatar_devtools.ports import free_port as _free_port
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api, cli

NS = "agents"
OPERATOR_NS = "avatar-system"
RELAY_KEY = "r" * 32
FLEET = {
    "kubelet": {"mode": "phases", "startSeconds": 0.02, "podGCSeconds": 0.2},
    "nodes": [
        {"name": "gpu-a", "gpus": 2, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559},
        {"name": "gpu-b", "gpus": 1, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559},
    ],
}
MERGE_PATCH = "application/merge-patch+json"
T0 = "2026-01-01T00:00:00Z"


def prepare(local: cluster.LocalCluster, crd: dict[str, Any] | None) -> None:
    """Namespaces, the chart's credentials Secret and (unless None) the CRD."""
    if crd is not None:
        local.apply(crd)
    for obj in cluster.operator_prerequisites(
        OPERATOR_NS, [NS], api_key="test-api-key", secret="s" * 40
    ):
        local.apply(obj)


def sessions_info(local: cluster.LocalCluster) -> Any:
    return local.store.lookup(api.GROUP, api.VERSION, api.PLURAL)


def stored(local: cluster.LocalCluster, name: str, namespace: str = NS) -> dict[str, Any] | None:
    record = local.store.find(sessions_info(local), namespace, name)
    return None if record is None else record.obj


def stored_sessions(local: cluster.LocalCluster, namespace: str = NS) -> list[dict[str, Any]]:
    return [r.obj for r in local.store.list(sessions_info(local), namespace).records]


def set_status(
    local: cluster.LocalCluster, name: str, status: dict[str, Any], namespace: str = NS
) -> dict[str, Any]:
    """Write a status as the operator would (a merge patch of the status subresource)."""
    record = local.store.patch(
        sessions_info(local),
        namespace,
        name,
        MERGE_PATCH,
        {"status": status},
        subresource="status",
    )
    return dict(record.obj)


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": T0,
    }


def session_manifest(name: str, room: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"roomId": room, **spec},
    }


def request_verb(method: str, path: str, query: Any, plural: str) -> str | None:
    """The RBAC verb of a request on `plural` (None when it is about something else)."""
    parts = [p for p in path.split("/") if p]
    if plural not in parts:
        return None
    named = parts.index(plural) < len(parts) - 1
    if method == "GET":
        if str(query.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if named else "list"
    return {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}.get(method)


def deny(
    local: cluster.LocalCluster,
    verb: str,
    plural: str = api.PLURAL,
    group: str = api.GROUP,
    user: str = "system:serviceaccount:agents:agent",
) -> None:
    """Answer 403 to every `verb` on `plural`, in the API server's words, as RBAC would."""
    server = local.server
    dispatch = server._dispatch

    async def guarded(request: Any) -> Any:
        if request_verb(request.method, request.path, request.query, plural) == verb:
            raise errors.forbidden_request(
                plural,
                group,
                "",
                f'User "{user}" cannot {verb} resource "{plural}" in API group "{group}" '
                f'in the namespace "{NS}"',
            )
        return await dispatch(request)

    server._dispatch = guarded  # type: ignore[method-assign]


async def run_cli(
    *argv: str, kubeconfig: Path, clock: Any = None, within: float = 20.0
) -> tuple[int, str, str]:
    """avatarctl in a thread (it runs its own loop, as in its own process)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.wait_for(
        asyncio.to_thread(
            cli.run,
            ["--kubeconfig", str(kubeconfig), *argv],
            stdout=out,
            stderr=err,
            clock=clock,
        ),
        within,
    )
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# the real operator


class OperatorEnv:
    """The real operator against a localcluster, and the worker's side of the relay."""

    def __init__(self, local: cluster.LocalCluster, kubeconfig: Path) -> None:
        self.local = local
        self.kubeconfig = kubeconfig
        self.running: OperatorThread | None = None
        self.http: aiohttp.ClientSession | None = None
        self.relay_tls = relaytls.make(kubeconfig.parent / "relay-tls")

    async def start(self) -> None:
        settings = OperatorSettings(
            operator_namespace=OPERATOR_NS,
            http_port=_free_port(),
            **self.relay_tls.operator_settings(_free_port()),
            status_relay_key=RELAY_KEY,
            leader_election=False,
            sweep_interval_seconds=0.1,
            watch_server_timeout_seconds=60,
            watch_client_timeout_seconds=70,
        )
        self.running = OperatorThread(settings, self.kubeconfig)
        await asyncio.to_thread(self.running.start)
        for resource in (f"{api.PLURAL}.{api.GROUP}", "pods", "nodes"):
            await self.local.server.wait_for_watches(resource)

    def status_token(self, name: str) -> str:
        secrets = self.local.store.lookup("", "v1", "secrets")
        record = self.local.store.find(secrets, NS, f"{name}-token")
        assert record is not None, "no token secret"
        return base64.b64decode(record.obj["data"]["status-token"]).decode()

    async def report(self, name: str, status: dict[str, Any]) -> int:
        """What the worker sends: a merge patch of its status through the relay."""
        assert self.running is not None and self.running.operator is not None
        if self.http is None:
            self.http = aiohttp.ClientSession()
        url = (
            f"{self.running.operator.settings.status_url}/apis/{api.GROUP}/{api.VERSION}"
            f"/namespaces/{NS}/{api.PLURAL}/{name}/status"
        )
        headers = {"Authorization": f"Bearer {self.status_token(name)}"}
        async with self.http.patch(
            url,
            json={"status": status},
            headers=headers,
            ssl=self.relay_tls.client_context(),
        ) as response:
            await response.read()
            return response.status

    async def aclose(self) -> None:
        if self.http is not None:  # first: an open keep-alive connection slows the stop
            await self.http.close()
        if self.running is not None:
            await asyncio.to_thread(self.running.stop)
