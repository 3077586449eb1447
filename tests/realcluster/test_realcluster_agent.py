"""The agent's side on the real API server, with nothing but the agent's Role from
`examples/agent-rbac.yaml` (applied verbatim): `AvatarSessionClient` and `avatarctl create
--wait / get / describe / capacity / delete`, against the operator running as the chart's
ServiceAccount. What the Role does not grant (`capacity` lists Nodes cluster-wide) is refused by
kube-apiserver, and avatarctl's answer names the rule to add; granted that rule, it works."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import relay_support

from avatar_devtools import relaytls
from avatar_devtools.localcluster.operatorrun import OperatorThread
from avatar_devtools.realcluster import Cluster, chartidentity
from avatar_devtools.realcluster.cluster import free_port
from avatar_devtools.realcluster.fixtures import ChartOperator
from avatar_devtools.realcluster.rest import RestClient
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api, workerenv
from avatar_sdk.client import AvatarSessionClient

REPO = Path(__file__).resolve().parents[2]
RELAY_KEY = "a" * 32
AVATARCTL = [sys.executable, "-c", "from avatar_sdk.cli import main; main()"]


@pytest.fixture(scope="module")
def agent_kubeconfig(
    realcluster: Cluster, chart_operator: ChartOperator, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    realcluster.kubectl("apply", "-f", str(REPO / "examples" / "agent-rbac.yaml"))
    return chartidentity.service_account_kubeconfig(
        realcluster,
        "agents",
        "voice-agent",
        tmp_path_factory.mktemp("agent") / "agent.kubeconfig",
        context_namespace="agents",
    )


@pytest.fixture
def operator(
    chart_operator: ChartOperator, realcluster: Cluster, relay_tls: relaytls.RelayTLS
) -> Iterator[OperatorThread]:
    settings = OperatorSettings(
        operator_namespace=chart_operator.namespace,
        http_port=free_port(),
        **relay_tls.operator_settings(free_port()),
        status_relay_key=RELAY_KEY,
        leader_election=False,
        sweep_interval_seconds=0.2,
    )
    running = OperatorThread(settings, chart_operator.kubeconfig)
    running.start()
    try:
        yield running
    finally:
        admin = realcluster.rest()
        ns = chart_operator.sessions_namespace
        for session in admin.list(api.PLURAL, ns):
            admin.delete(api.PLURAL, session["metadata"]["name"], ns)
        deadline = time.monotonic() + 30
        while admin.list(api.PLURAL, ns) and time.monotonic() < deadline:
            time.sleep(0.2)
        running.stop()


def _avatarctl(
    kubeconfig: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [*AVATARCTL, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _join_when_started(
    admin: RestClient, operator: OperatorThread, tls: relaytls.RelayTLS, name: str
) -> threading.Thread:
    """The worker's part: once the session is Starting, report Joined through the relay (in
    TLS, trusting the relay's CA)."""
    status_url = operator.settings.status_url
    assert status_url is not None

    def work() -> None:
        session = admin.wait_for(
            api.PLURAL,
            name,
            "agents",
            lambda o: (o.get("status") or {}).get("phase") == "Starting",
            within=60,
        )
        secret = admin.wait_for("secrets", session["status"]["secretName"], "agents")
        token = base64.b64decode(secret["data"][workerenv.STATUS_TOKEN_KEY]).decode()
        joined = {"phase": "Joined"}
        context = tls.client_context()
        assert relay_support.report(status_url, "agents", name, token, joined, context) == 200

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_avatarctl_with_only_the_agents_role(
    realcluster: Cluster,
    agent_kubeconfig: Path,
    operator: OperatorThread,
    relay_tls: relaytls.RelayTLS,
) -> None:
    admin = realcluster.rest()
    name = api.session_name_for_room("agent-room-1", None)
    worker = _join_when_started(admin, operator, relay_tls, name)
    created = _avatarctl(
        agent_kubeconfig, "create", "agent-room-1", "--wait", "--timeout", "60", "-o", "json"
    )
    worker.join(timeout=60)
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["metadata"]["name"] == name and body["status"]["phase"] == "Joined"

    listed = _avatarctl(agent_kubeconfig, "get")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and "Joined" in listed.stdout

    described = _avatarctl(agent_kubeconfig, "describe", name)
    assert described.returncode == 0, described.stderr
    assert "Joined" in described.stdout and "Scheduled" in described.stdout

    # capacity lists Nodes cluster-wide: the agent's Role does not grant it, and says so
    refused = _avatarctl(agent_kubeconfig, "capacity")
    assert refused.returncode == 5, (refused.stdout, refused.stderr)
    assert "nodes" in refused.stderr and "ClusterRole" in refused.stderr, refused.stderr

    # granted what the message asks for, it answers with the operator's own figures
    viewer = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "agent-capacity"},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["list"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "agent-capacity"},
        "subjects": [{"kind": "ServiceAccount", "name": "voice-agent", "namespace": "agents"}],
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "agent-capacity",
        },
    }
    realcluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": [viewer, binding]}),
    )
    try:
        deadline = time.monotonic() + 20  # RBAC changes reach the authorizer within moments
        while True:
            capacity = _avatarctl(agent_kubeconfig, "capacity", "-o", "json")
            if capacity.returncode != 5 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert capacity.returncode == 0, capacity.stderr
        figures = json.loads(capacity.stdout)
        used = {(g["node"], g["gpu"]) for g in _gpus(figures) if g["reservedMiB"] > 0}
        placement = admin.get(api.PLURAL, name, "agents")["status"]["placement"]  # type: ignore[index]
        assert used == {(placement["node"], placement["gpu"])}
    finally:
        realcluster.kubectl("delete", "clusterrolebinding,clusterrole", "agent-capacity")

    deleted = _avatarctl(agent_kubeconfig, "delete", name, "--wait")
    assert deleted.returncode == 0, deleted.stderr
    assert admin.get(api.PLURAL, name, "agents") is None
    assert admin.get("pods", f"{name}-worker", "agents") is None


def _gpus(figures: Any) -> list[dict[str, Any]]:
    return list(figures["gpus"])


def test_the_agent_client_with_only_the_agents_role(
    realcluster: Cluster,
    agent_kubeconfig: Path,
    operator: OperatorThread,
    relay_tls: relaytls.RelayTLS,
) -> None:
    admin = realcluster.rest()
    name = api.session_name_for_room("agent-room-2", None)

    async def agent() -> dict[str, Any]:
        async with await AvatarSessionClient.from_config(kubeconfig=agent_kubeconfig) as client:
            session, created = await client.ensure("agent-room-2")
            assert created and session.name == name
            again, created_again = await client.ensure("agent-room-2")
            assert not created_again and again.metadata["uid"] == session.metadata["uid"]
            joined = await client.wait_until_joined(name, timeout=60)
            assert joined.status.phase == "Joined"
            assert await client.delete(name, wait=True, timeout=60)
            return {"uid": session.metadata["uid"]}

    worker = _join_when_started(admin, operator, relay_tls, name)
    result = asyncio.run(agent())
    worker.join(timeout=60)
    assert result["uid"]
    assert admin.get(api.PLURAL, name, "agents") is None
    assert admin.get("secrets", f"{name}-token", "agents") is None
