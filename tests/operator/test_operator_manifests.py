"""The worker's children, built without a cluster and checked against Kubernetes' schemas."""

from __future__ import annotations

import base64
import json
from typing import Any

import kubernetes_validate
import pytest

from avatar_operator import manifests
from avatar_operator.settings import OperatorSettings
from avatar_sdk import api, workerenv

# The oldest and newest Kubernetes the chart supports.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
SESSION: dict[str, Any] = {
    "apiVersion": api.API_VERSION,
    "kind": api.KIND,
    "metadata": {"name": "room-1", "namespace": "agents", "uid": "u-1", "generation": 1},
    "spec": {"roomId": "abcd-efgh-ijkl", "agentParticipantId": "agent-1"},
}
PLACEMENT = api.Placement(node="gpu-node-a", gpu=3, vram_mib=2048, product="NVIDIA-H100")


def build_pod(**spec_patch: Any) -> dict[str, Any]:
    spec = api.parse_spec({**SESSION["spec"], **spec_patch})
    return manifests.worker_pod(
        SESSION,
        spec,
        PLACEMENT,
        participant_id="avatar_1",
        settings=OperatorSettings(),
        status_url="http://avatar-operator.avatar-system.svc:8080",
    )


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_children_validate_against_kubernetes_schemas(version: str) -> None:
    secret = manifests.token_secret(SESSION, join_token="j", status_token="s")
    for obj in (build_pod(), build_pod(avatar={"volume": {"configMap": "face"}}), secret):
        kubernetes_validate.validate(obj, version, strict=True)


def test_pod_is_hardened() -> None:
    pod = build_pod()
    spec = pod["spec"]
    container = spec["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert container["resources"]["requests"]["cpu"]
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container)


def test_pod_is_pinned_to_its_node_and_gpu() -> None:
    pod = build_pod()
    affinity = pod["spec"]["affinity"]["nodeAffinity"]
    term = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-node-a"]}
    ]
    env = env_of(pod)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    placement = manifests.placement_from_pod(pod)
    assert placement == PLACEMENT


def test_device_plugin_mode_requests_a_gpu_instead() -> None:
    spec = api.parse_spec(SESSION["spec"])
    pod = manifests.worker_pod(
        SESSION,
        spec,
        PLACEMENT,
        participant_id="avatar_1",
        settings=OperatorSettings(gpu_pinning="resource"),
        status_url=None,
    )
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(pod)


def test_cpu_only_session_sees_no_gpu() -> None:
    spec = api.parse_spec({**SESSION["spec"], "resources": {"gpu": "none"}})
    pod = manifests.worker_pod(
        SESSION,
        spec,
        api.Placement(node="cpu-1", gpu=None, vram_mib=0),
        participant_id="avatar_1",
        settings=OperatorSettings(),
        status_url=None,
    )
    assert env_of(pod)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert (
        "limits" not in pod["spec"]["containers"][0]["resources"]
        or "nvidia.com/gpu" not in (pod["spec"]["containers"][0]["resources"]["limits"])
    )


def test_worker_settings_reach_the_env_and_read_back() -> None:
    env = env_of(build_pod(video={"fps": 25}))
    settings = workerenv.WorkerSettings.from_env(env)
    assert settings.room_id == "abcd-efgh-ijkl"
    assert settings.agent_participant_id == "agent-1"
    assert settings.video_fps == 25
    assert settings.session_name == "room-1" and settings.session_namespace == "agents"
    assert settings.status_url == "http://avatar-operator.avatar-system.svc:8080"


def test_local_transport_gets_its_rooms_url() -> None:
    """One local room server serves every session's room: `{roomId}` is filled in."""
    spec = api.parse_spec(SESSION["spec"])
    settings = OperatorSettings(
        worker_transport="local", worker_local_room_url="ws://127.0.0.1:9/rooms/{roomId}"
    )
    pod = manifests.worker_pod(
        SESSION, spec, PLACEMENT, participant_id="avatar_1", settings=settings, status_url=None
    )
    env = env_of(pod)
    assert env["AVATAR_TRANSPORT"] == "local"
    assert env["AVATAR_LOCAL_ROOM_URL"] == "ws://127.0.0.1:9/rooms/abcd-efgh-ijkl"
    assert manifests.local_room_url("ws://h/rooms/one", "x") == "ws://h/rooms/one"
    assert manifests.local_room_url(None, "x") is None


def test_tokens_are_files_never_env() -> None:
    pod = build_pod()
    secret = manifests.token_secret(SESSION, join_token="eyJ.secret.token", status_token="st")
    assert base64.b64decode(secret["data"]["token"]) == b"eyJ.secret.token"
    rendered = json.dumps(pod)
    assert "eyJ.secret.token" not in rendered and "valueFrom" not in rendered
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")
    assert volume["secret"]["secretName"] == "room-1-token"
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "token")
    assert mount["readOnly"] and mount["mountPath"] == workerenv.TOKEN_DIR


def test_the_relays_ca_goes_beside_the_tokens_and_the_worker_is_told_where() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    secret = manifests.token_secret(SESSION, join_token="j", status_token="s", status_ca=pem)
    assert base64.b64decode(secret["data"][workerenv.STATUS_CA_KEY]).decode() == pem
    spec = api.parse_spec(SESSION["spec"])
    url = "https://avatar-operator.avatar-system.svc:8443"
    pod = manifests.worker_pod(
        SESSION,
        spec,
        PLACEMENT,
        participant_id="avatar_1",
        settings=OperatorSettings(),
        status_url=url,
        status_ca=True,
    )
    settings = workerenv.WorkerSettings.from_env(env_of(pod))
    assert settings.status_url == url
    assert settings.status_ca_file == f"{workerenv.TOKEN_DIR}/{workerenv.STATUS_CA_KEY}"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")
    assert [item["key"] for item in volume["secret"]["items"]] == [
        workerenv.TOKEN_KEY,
        workerenv.STATUS_TOKEN_KEY,
        workerenv.STATUS_CA_KEY,
    ]
    # without TLS, neither the key nor the file: a Secret volume item must exist
    plain = build_pod()
    assert workerenv.WorkerSettings.from_env(env_of(plain)).status_ca_file is None
    assert workerenv.STATUS_CA_KEY not in json.dumps(plain)
    assert (
        workerenv.STATUS_CA_KEY
        not in manifests.token_secret(SESSION, join_token="j", status_token="s")["data"]
    )


def test_assets_volume_is_read_only() -> None:
    pod = build_pod(avatar={"volume": {"persistentVolumeClaim": "faces", "mountPath": "/faces"}})
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "assets")
    assert volume["persistentVolumeClaim"] == {"claimName": "faces", "readOnly": True}
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "assets")
    assert mount == {"name": "assets", "mountPath": "/faces", "readOnly": True}


def test_labels_fit_and_select_the_workers() -> None:
    long_session = {**SESSION, "metadata": {**SESSION["metadata"], "name": "x" * 200}}
    labels = manifests.labels(long_session)
    assert all(len(v) <= 63 for v in labels.values())
    selector = dict(part.split("=") for part in manifests.SELECTOR.split(","))
    assert selector.items() <= labels.items()


def test_restarted_pods_get_new_names() -> None:
    assert manifests.pod_name("s") == "s-worker"
    assert manifests.pod_name("s", 2) == "s-worker-2"
