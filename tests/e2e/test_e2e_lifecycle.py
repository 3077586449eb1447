"""The whole life cycle on kind: install (the README's commands), a session Joined, playback
reported, the meeting ended, everything garbage-collected, uninstall.

Run with `pytest -m e2e` where Docker, kind, kubectl and helm are available (about 10 minutes:
it builds both images). Elsewhere every test here is skipped with the reason. The cluster is
`kind-config.yaml` under a name of its own, deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from e2e_support import KIND_VALUES, MY_VALUES, REPO_ROOT, install_commands, unavailable_reason

from avatar_sdk import protocol
from avatar_worker.transports.roomclient import LocalRoomClient

REASON = unavailable_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

NAMESPACE = "avatar-system"
SESSION = yaml.safe_load((REPO_ROOT / "examples" / "session.yaml").read_text())
SESSION_NAME = SESSION["metadata"]["name"]
SESSION_NAMESPACE = SESSION["metadata"]["namespace"]
ROOM_ID = SESSION["spec"]["roomId"]
AGENT = SESSION["spec"]["agentParticipantId"]
ROOM_HTTP = "http://127.0.0.1:30765"  # kind-config.yaml maps the local room's node port here


class Cluster:
    """A kind cluster of its own, with its own kubeconfig, and commands run against it."""

    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name = name
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            # placeholders: the local room accepts any token, and VideoSDK is never called
            "VIDEOSDK_API_KEY": "e2e-placeholder-key",
            "VIDEOSDK_SECRET_KEY": "e2e-placeholder-secret",
        }

    def sh(self, command: str, timeout: float = 600) -> str:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"`{command}` failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def get(self, what: str, namespace: str = SESSION_NAMESPACE) -> dict[str, Any] | None:
        result = subprocess.run(
            ["kubectl", "-n", namespace, "get", what, "-o", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if "e2e" not in (request.config.option.markexpr or ""):
        pytest.skip("builds both images and a kind cluster (~10 min): run with `pytest -m e2e`")
    name = f"avatar-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    this = Cluster(name, kubeconfig)
    this.sh(f"kind create cluster --name {name} --config kind-config.yaml --wait 120s", 900)
    try:
        this.sh("make images WORKER_FLAVOR=cpu", 3600)
        tag = this.sh(
            "sed -n 's/^appVersion: \"\\(.*\\)\"/\\1/p' charts/avatar-operator/Chart.yaml"
        )
        images = " ".join(
            f"ghcr.io/avatar-operator/{i}:{tag.strip()}" for i in ("operator", "worker")
        )
        this.sh(f"kind load docker-image --name {name} {images}", 900)
        yield this
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], timeout=300, check=False)


async def speak_as_the_agent() -> list[protocol.StreamEnded]:
    """One second of tone and a segment_end, as videosdk-agents' AvatarAudioOut sends them."""
    acks: list[protocol.StreamEnded] = []
    agent = LocalRoomClient(f"ws://127.0.0.1:30765/rooms/{ROOM_ID}", AGENT, lambda: None)

    def on_data(message: dict[str, Any]) -> None:
        decoded = protocol.decode_payload(message["payload"])
        if isinstance(decoded, protocol.StreamEnded):
            acks.append(decoded)

    agent.add_data_listener(on_data)
    await agent.connect()
    try:
        t = np.arange(24_000) / 24_000
        pcm = (np.sin(2 * np.pi * 220 * t) * 10_000).astype("<i2").tobytes()
        for chunk in protocol.pcm_chunks(pcm):
            await agent.send(chunk, protocol.UNRELIABLE)
            await asyncio.sleep(0.02)
        await agent.send(protocol.encode_segment_end(), protocol.RELIABLE)
        deadline = time.monotonic() + 30
        while not acks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return acks
    finally:
        await agent.aclose()


def test_whole_lifecycle_on_kind(cluster: Cluster) -> None:
    commands = install_commands()

    # 1. install: the README's block, verbatim
    for command in commands.install:
        cluster.sh(command, 600)
    cluster.sh(f"kubectl -n {NAMESPACE} rollout status deployment/avatar-operator --timeout=300s")
    cluster.sh(f"helm test avatar-operator -n {NAMESPACE} --timeout 5m")

    # 2. upgrade: the README's block, with the kind values as "my values" (a local room)
    for command in commands.upgrade:
        cluster.sh(command.replace(MY_VALUES, KIND_VALUES), 600)
    cluster.sh(f"kubectl -n {NAMESPACE} rollout status deployment/avatar-operator-room")
    cluster.sh(f"helm test avatar-operator -n {NAMESPACE} --timeout 5m")

    # 3. a session: placed on a kind worker's (labelled) GPU, Joined in the local room
    cluster.sh("kubectl apply -f examples/session.yaml")
    cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} wait avatarsession/{SESSION_NAME} "
        "--for=jsonpath='{.status.phase}'=Joined --timeout=300s",
        330,
    )
    session = cluster.get(f"avatarsession/{SESSION_NAME}")
    assert session is not None
    status = session["status"]
    assert status["placement"]["node"].startswith(cluster.name + "-worker")
    assert status["placement"]["gpu"] in (0, 1)
    pod = cluster.get(f"pod/{status['podName']}")
    secret = cluster.get(f"secret/{status['secretName']}")
    assert pod is not None and secret is not None
    for child in (pod, secret):
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("AvatarSession", session["metadata"]["uid"])
    assert pod["spec"]["automountServiceAccountToken"] is False
    env = {v["name"]: v.get("value") for v in pod["spec"]["containers"][0]["env"]}
    assert env["AVATAR_LOCAL_ROOM_URL"].endswith(f"/rooms/{ROOM_ID}")
    # the VideoSDK credentials stay with the operator: the worker has its own token only
    assert "videosdk" not in json.dumps(pod["spec"]["volumes"])

    # 4. the agent speaks: the worker acknowledges the segment and reports playback
    acks = asyncio.run(speak_as_the_agent())
    assert len(acks) == 1 and not acks[0].interrupted and acks[0].playback_position > 0.5
    wait_for(
        "playback in the status",
        lambda: (
            ((cluster.get(f"avatarsession/{SESSION_NAME}") or {}).get("status", {}))
            .get("playback", {})
            .get("segments", 0)
            >= 1
        ),
        60,
    )

    # 5. the meeting ends: Ended/RoomEnded, the Pod and Secret go, then the session itself
    request = urllib.request.Request(f"{ROOM_HTTP}/rooms/{ROOM_ID}/end", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    ended = wait_for(
        "phase Ended",
        lambda: (
            (s := cluster.get(f"avatarsession/{SESSION_NAME}"))
            and s.get("status", {}).get("phase") == "Ended"
            and s["status"]
        ),
        120,
    )
    assert ended["endReason"] == "RoomEnded"
    wait_for("the worker Pod to go", lambda: cluster.get(f"pod/{status['podName']}") is None, 120)
    wait_for(
        "the token Secret to go", lambda: cluster.get(f"secret/{status['secretName']}") is None, 60
    )
    ttl = SESSION["spec"]["lifetime"]["ttlSecondsAfterFinished"]
    wait_for(
        "the session's deletion",
        lambda: cluster.get(f"avatarsession/{SESSION_NAME}") is None,
        ttl + 60,
    )
    leftovers = cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} get pods,secrets "
        "-l app.kubernetes.io/managed-by=avatar-operator -o name"
    )
    assert leftovers.strip() == ""

    # 6. uninstall: the README's block; nothing of the release is left
    for command in commands.uninstall:
        cluster.sh(command, 600)
    left = cluster.sh(
        f"kubectl -n {NAMESPACE} get deployments,services,pods,secrets,roles,rolebindings "
        "-l app.kubernetes.io/instance=avatar-operator -o name"
    )
    assert left.strip() == ""
    assert "avatar" not in cluster.sh("kubectl get clusterroles,clusterrolebindings -o name")
    assert "avatarsessions" not in cluster.sh("kubectl get crds -o name")
