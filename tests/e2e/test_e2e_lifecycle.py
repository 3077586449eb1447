"""The whole life cycle on a real cluster: install (the README's commands), a session Joined,
playback reported, the meeting ended, everything garbage-collected, uninstall.

Two clusters run it, the same test:

- **kind**, with `pytest -m e2e` where Docker, kind, kubectl and helm are available (about 10
  minutes: it builds both images). The cluster is `kind-config.yaml` under a name of its own,
  deleted at the end.
- **The project's real control plane** (`avatar_devtools.realcluster`: kube-apiserver,
  kube-controller-manager, kube-scheduler v1.37 and the node agent in process mode, with
  `kind-config.yaml`'s nodes under kind's names), in every `make test` wherever Go (or the
  built binaries) and network namespaces are: every Pod — the operator's, the local room's,
  the workers', `helm test`'s — runs its container as a process of this machine's Python
  environment, in its own mount and network namespace, Services reached by name and ClusterIP.
  Only the image build and load (`make images`, `kind load`) is replaced: the images the chart
  names map to this environment (`real_fleet`).

Where neither can run, every test here is skipped with both reasons.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from e2e_support import (
    KIND_VALUES,
    MY_VALUES,
    REPO_ROOT,
    InstallCommands,
    install_commands,
    kind_unavailable_reason,
    real_control_plane_reason,
    real_fleet,
)

from avatar_sdk import protocol
from avatar_worker.transports.roomclient import LocalRoomClient

KIND_REASON = kind_unavailable_reason()
REAL_REASON = real_control_plane_reason() if KIND_REASON is not None else None
REASON = (
    None
    if KIND_REASON is None or REAL_REASON is None
    else f"kind: {KIND_REASON}; the real control plane: {REAL_REASON}"
)
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

    def __init__(
        self,
        name: str,
        kubeconfig: Path,
        env: dict[str, str] | None = None,
        kill_worker: Callable[[dict[str, Any]], None] | None = None,
        node_logs: tuple[Path, ...] = (),
    ) -> None:
        self.name = name
        self.node_logs = node_logs  # what runs the nodes, where it is not a Pod (the node agent)
        self._kill_worker = kill_worker or self._kill_on_kind
        self.env = {
            **(env or os.environ),
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

    def kill_worker(self, pod: dict[str, Any]) -> None:
        """SIGKILL the worker process of `pod` (a crash, the OOM killer): no SIGTERM, no
        clean exit, the container's exit code 137."""
        self._kill_worker(pod)

    def _kill_on_kind(self, pod: dict[str, Any]) -> None:
        node = pod["spec"]["nodeName"]  # a kind node is a Docker container of that name
        self.sh(f"docker exec {node} pkill -KILL -f 'avatar-worker run'")

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


DIAGNOSTICS = (
    "kubectl get nodes,pods,services,endpointslices -A -o wide",
    "kubectl get avatarsessions -A -o yaml",
    "kubectl get events -A --sort-by=.lastTimestamp",
    f"kubectl -n {NAMESPACE} logs -l app.kubernetes.io/instance=avatar-operator"
    " --all-containers --prefix --tail=200",
    f"kubectl -n {NAMESPACE} logs -l app.kubernetes.io/instance=avatar-operator"
    " --all-containers --prefix --tail=200 --previous",  # a container that restarted
    f"kubectl -n {SESSION_NAMESPACE} logs -l app.kubernetes.io/managed-by=avatar-operator"
    " --all-containers --prefix --tail=200",
)


def noted(line: str) -> bool:
    return " WARNING " in line or " ERROR " in line or "Traceback" in line


def print_diagnostics(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    """What a user would look at when a step timed out: the objects, the Events and the logs
    of the operator and the worker Pods, printed past pytest's capture (CI shows them)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    lines = [f"\n===== e2e diagnostics ({cluster.name}) ====="]
    for command in DIAGNOSTICS:
        result = subprocess.run(
            ["bash", "-c", command], env=cluster.env, capture_output=True, text=True, timeout=60
        )
        lines += [f"----- $ {command}", result.stdout + result.stderr]
    for log in cluster.node_logs:
        if log.exists():
            said = [line for line in log.read_text(errors="replace").splitlines() if noted(line)]
            lines += [f"----- {log.name}: its warnings and errors (the last 200)", *said[-200:]]
    with capture.global_and_fixture_disabled():
        sys.stderr.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    name = f"avatar-e2e-{uuid.uuid4().hex[:6]}"
    if KIND_REASON is not None:  # the real control plane, Pods as processes
        yield from _with_diagnostics(
            request, _real_control_plane(name, tmp_path_factory.mktemp("real"))
        )
        return
    if "e2e" not in (request.config.option.markexpr or ""):
        pytest.skip("builds both images and a kind cluster (~10 min): run with `pytest -m e2e`")
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
        yield from _with_diagnostics(request, iter([this]))
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], timeout=300, check=False)


def _with_diagnostics(
    request: pytest.FixtureRequest, clusters: Iterator[Cluster]
) -> Iterator[Cluster]:
    """Yields the one cluster of `clusters`; diagnostics printed if a test failed on it."""
    failed = request.session.testsfailed
    for this in clusters:
        yield this
        if request.session.testsfailed > failed:
            print_diagnostics(request, this)


def _real_control_plane(name: str, directory: Path) -> Iterator[Cluster]:
    from avatar_devtools.realcluster import Cluster as RealCluster
    from avatar_devtools.realcluster import binaries, processes

    fleet = directory / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(real_fleet(name)))
    real = RealCluster(
        directory / "cluster",
        bin_dir=binaries.bin_dir(REPO_ROOT),
        fleet=fleet,
        die_with_parent=True,
    )
    real.start()

    def kill_worker(pod: dict[str, Any]) -> None:
        agent = int(real.processes["nodeagent"]["pid"])
        pids = processes.workers_of_pod(agent, pod["metadata"]["name"])
        assert pids, f"no worker process of {pod['metadata']['name']} under the node agent"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    try:
        yield Cluster(
            name,
            real.kubeconfig,
            env=real.env(),
            kill_worker=kill_worker,
            node_logs=(real.run_dir / "logs" / "nodeagent.log",),
        )
    finally:
        real.stop()


async def speak_as_the_agent(
    while_in_the_room: Callable[[list[protocol.StreamEnded]], None],
) -> list[protocol.StreamEnded]:
    """One second of tone and a segment_end, as videosdk-agents' AvatarAudioOut sends them;
    then `while_in_the_room(acks)` (in a thread) before the agent leaves — an agent that left
    ends its avatar's session (AgentLeft), so what must happen first happens in there."""
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
        await asyncio.to_thread(while_in_the_room, acks)
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

    # 4. the agent speaks: the worker acknowledges the segment and reports playback;
    # 5. the meeting ends (the agent still in it): Ended/RoomEnded, the Pod and Secret go, then
    # the session itself
    def playback_then_the_meeting_ends(acks: list[protocol.StreamEnded]) -> None:
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
        request = urllib.request.Request(f"{ROOM_HTTP}/rooms/{ROOM_ID}/end", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    acks = asyncio.run(speak_as_the_agent(playback_then_the_meeting_ends))
    assert len(acks) == 1
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
    # the operator's Pods end gracefully (SIGTERM, then their grace period): wait for them
    wait_for(
        "nothing of the release left",
        lambda: (
            not cluster.sh(
                f"kubectl -n {NAMESPACE} get deployments,services,pods,secrets,roles,rolebindings "
                "-l app.kubernetes.io/instance=avatar-operator -o name"
            ).strip()
        ),
        120,
    )
    assert "avatar" not in cluster.sh("kubectl get clusterroles,clusterrolebindings -o name")
    assert "avatarsessions" not in cluster.sh("kubectl get crds -o name")


def wait_for_a_new_worker(cluster: Cluster, old_pod: str) -> str:
    """After the worker Pod `old_pod` went or failed: the name of the Pod that replaced it,
    once it is Running, its worker reported Joined again (the condition's new transition
    after that Pod was created) and it is in the local room."""
    session = wait_for(
        "a new worker Pod",
        lambda: (
            (s := cluster.get(f"avatarsession/{SESSION_NAME}"))
            and s["status"].get("podName") not in (None, old_pod)
            and s
        ),
        120,
    )
    assert session["status"]["phase"] in ("Starting", "Joined"), session["status"]
    name = str(session["status"]["podName"])

    def rejoined() -> bool:
        pod = cluster.get(f"pod/{name}")
        status = (cluster.get(f"avatarsession/{SESSION_NAME}") or {}).get("status") or {}
        if pod is None or (pod.get("status") or {}).get("phase") != "Running":
            return False
        created = pod["metadata"]["creationTimestamp"]
        joined = [c for c in status.get("conditions") or [] if c["type"] == "Joined"]
        return bool(
            joined
            and joined[0]["status"] == "True"
            and joined[0]["lastTransitionTime"] >= created
            and status.get("podName") == name
        )

    wait_for(f"{name} to report Joined", rejoined, 180)

    def in_the_room() -> bool:
        with urllib.request.urlopen(f"{ROOM_HTTP}/rooms", timeout=10) as response:
            rooms = json.loads(response.read())["rooms"]
        return any(r["roomId"] == ROOM_ID and r["participants"] for r in rooms)

    wait_for(f"{name} in the room", in_the_room, 60)
    return name


def install_with_the_local_room(cluster: Cluster) -> InstallCommands:
    """The README's install with the kind values (a local room), after the tests before it
    or alone; returns the README's commands (for the uninstall)."""
    commands = install_commands()
    namespace, credentials, install = commands.install
    if cluster.get(f"namespace/{NAMESPACE}", NAMESPACE) is None:  # run alone
        cluster.sh(namespace)
    if cluster.get("secret/videosdk-credentials", NAMESPACE) is None:
        cluster.sh(credentials)
    cluster.sh(install.replace("--wait", f"--values {KIND_VALUES} --wait"), 600)
    return commands


def test_the_standby_takes_over_and_a_deleted_worker_is_replaced(cluster: Cluster) -> None:
    """Installed with the local room (after the life cycle above, or alone), a session Joined;
    the leading operator Pod deleted — the standby takes the Lease, the session stays Joined on
    its own worker Pod; then that worker Pod deleted — the operator starts another, which joins
    the room (found here: a real worker's exit on SIGTERM had ended the session); then the new
    worker's process SIGKILLed — its Pod Failed (exit 137), another joins; the meeting ends,
    the last worker Pod goes, the session is deleted, the release is uninstalled."""
    commands = install_with_the_local_room(cluster)
    cluster.sh("kubectl apply -f examples/session.yaml")
    joined = (
        f"kubectl -n {SESSION_NAMESPACE} wait avatarsession/{SESSION_NAME} "
        "--for=jsonpath='{.status.phase}'=Joined --timeout=300s"
    )
    cluster.sh(joined, 330)
    session = cluster.get(f"avatarsession/{SESSION_NAME}")
    assert session is not None
    worker = cluster.get(f"pod/{session['status']['podName']}")
    assert worker is not None

    def leader() -> str:
        lease = cluster.get("lease/avatar-operator", NAMESPACE)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    first = wait_for("a leader", leader, 60)
    cluster.sh(f"kubectl -n {NAMESPACE} delete pod {first} --wait=false")
    second = wait_for("the standby to lead", lambda: (h := leader()) and h != first and h, 60)
    assert second != first
    session = cluster.get(f"avatarsession/{SESSION_NAME}")
    assert session is not None and session["status"]["phase"] == "Joined"
    still = cluster.get(f"pod/{worker['metadata']['name']}")
    assert still is not None and still["metadata"]["uid"] == worker["metadata"]["uid"]

    # the worker Pod deleted (a drain, an eviction, a user): a new one joins in its place
    cluster.sh(f"kubectl -n {SESSION_NAMESPACE} delete pod {worker['metadata']['name']}")
    replaced = wait_for_a_new_worker(cluster, worker["metadata"]["name"])
    # then that worker's process killed (a crash, the OOM killer): exit 137, the Pod Failed,
    # and again a new one joins
    cluster.kill_worker(cluster.get(f"pod/{replaced}") or {})
    again = wait_for_a_new_worker(cluster, replaced)
    events = cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} get events --field-selector "
        f"involvedObject.name={SESSION_NAME},reason=WorkerRestarted -o json"
    )
    messages = sorted(e["message"] for e in json.loads(events)["items"])
    assert any("deleted; restart 1" in m for m in messages), messages
    assert any("exited with code 137" in m and "restart 2" in m for m in messages), messages

    request = urllib.request.Request(f"{ROOM_HTTP}/rooms/{ROOM_ID}/end", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    ended = wait_for(
        "phase Ended",
        lambda: (
            (s := cluster.get(f"avatarsession/{SESSION_NAME}"))
            and s["status"].get("phase") == "Ended"
            and s["status"]
        ),
        120,
    )
    assert ended["endReason"] == "RoomEnded", ended
    wait_for("the last worker Pod to go", lambda: cluster.get(f"pod/{again}") is None, 120)
    wait_for(
        "the session's deletion",
        lambda: cluster.get(f"avatarsession/{SESSION_NAME}") is None,
        SESSION["spec"]["lifetime"]["ttlSecondsAfterFinished"] + 60,
    )
    for command in commands.uninstall:
        cluster.sh(command, 600)


POOL_DOCUMENTS = list(yaml.safe_load_all((REPO_ROOT / "examples" / "pool.yaml").read_text()))
POOL = next(d for d in POOL_DOCUMENTS if d["kind"] == "AvatarPool")
POOLED = next(d for d in POOL_DOCUMENTS if d["kind"] == "AvatarSession")


def test_a_warm_pool_serves_a_session_on_its_prepared_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Installed with the local room, `examples/pool.yaml`'s pool: its workers started and
    ready (each asked the relay, over TLS, for a session); then the example's session that
    names it: claimed, Joined on a warm worker's Pod (no Pod started for it), owned by the
    session; the pool refills; the meeting ends and the worker goes with its session; the pool
    deleted, its idle workers go too."""
    commands = install_with_the_local_room(cluster)
    pool_name, replicas = POOL["metadata"]["name"], POOL["spec"]["replicas"]
    pool_file, session_file = tmp_path / "pool.json", tmp_path / "session.json"
    # in the namespace of the other tests' session (examples/pool.yaml's is "agents")
    for document, file in ((POOL, pool_file), (POOLED, session_file)):
        placed = {**document, "metadata": {**document["metadata"], "namespace": SESSION_NAMESPACE}}
        file.write_text(json.dumps(placed))
    cluster.sh(f"kubectl apply -f {pool_file}")
    cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} wait avatarpool/{pool_name} "
        f"--for=jsonpath='{{.status.readyReplicas}}'={replicas} --timeout=300s",
        330,
    )
    table = cluster.sh(f"kubectl -n {SESSION_NAMESPACE} get avp {pool_name}")
    assert table.split()[:6] == ["NAME", "DESIRED", "READY", "CLAIMED", "STARTING", "AGE"]

    cluster.sh(f"kubectl apply -f {session_file}")
    name, room = POOLED["metadata"]["name"], POOLED["spec"]["roomId"]
    cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} wait avatarsession/{name} "
        "--for=jsonpath='{.status.phase}'=Joined --timeout=120s",
        150,
    )
    session = cluster.get(f"avatarsession/{name}")
    assert session is not None
    pod = cluster.get(f"pod/{session['status']['podName']}")
    assert pod is not None
    labels = pod["metadata"]["labels"]
    if labels.get("avatar-operator.dev/pool") != pool_name:  # served cold: say why
        said = cluster.sh(
            f"kubectl -n {SESSION_NAMESPACE} get events --sort-by=.lastTimestamp "
            f"--field-selector involvedObject.name={name}"
        )
        raise AssertionError(
            f"{name} runs on {pod['metadata']['name']}, not a warm worker:\n{said}"
        )
    assert labels["avatar-operator.dev/pool-state"] == "claimed"
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("AvatarSession", session["metadata"]["uid"])
    events = cluster.sh(
        f"kubectl -n {SESSION_NAMESPACE} get events --field-selector "
        f"involvedObject.name={name},reason=Claimed -o json"
    )
    assert json.loads(events)["items"], "no Claimed event"
    wait_for(
        "the pool to refill",
        lambda: (
            (cluster.get(f"avatarpool/{pool_name}") or {}).get("status", {}).get("claimed") == 1
            and (cluster.get(f"avatarpool/{pool_name}") or {}).get("status", {}).get("replicas")
            == replicas
        ),
        120,
    )

    request = urllib.request.Request(f"{ROOM_HTTP}/rooms/{room}/end", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_for(
        "phase Ended",
        lambda: (
            ((cluster.get(f"avatarsession/{name}") or {}).get("status") or {}).get("phase")
            == "Ended"
        ),
        120,
    )
    wait_for(
        "the warm worker to go", lambda: cluster.get(f"pod/{pod['metadata']['name']}") is None, 120
    )
    cluster.sh(f"kubectl -n {SESSION_NAMESPACE} delete avatarsession {name} --wait=true")
    cluster.sh(f"kubectl -n {SESSION_NAMESPACE} delete avatarpool {pool_name} --wait=true")
    wait_for(
        "the pool's workers and Secrets to go",
        lambda: (
            not cluster.sh(
                f"kubectl -n {SESSION_NAMESPACE} get pods,secrets "
                "-l app.kubernetes.io/managed-by=avatar-operator -o name"
            ).strip()
        ),
        120,
    )
    for command in commands.uninstall:
        cluster.sh(command, 600)
