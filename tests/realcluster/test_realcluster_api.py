"""The CRD, the examples and the nodes against a real kube-apiserver (CEL, OpenAPI, printer
columns, RBAC and the Node authorizer are the server's own, not the emulator's)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from avatar_devtools.realcluster import Cluster
from avatar_devtools.realcluster.cluster import CLUSTER_CIDR, kubeconfig

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
GROUP = "avatar-operator.dev/v1alpha1"


def _kubernetes_objects(path: Path) -> list[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError:
        return []
    return [d for d in documents if isinstance(d, dict) and "apiVersion" in d and "kind" in d]


EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if _kubernetes_objects(p))


def _session(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": GROUP,
        "kind": "AvatarSession",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"roomId": "room-1", **spec},
    }
    return json.dumps(body)


def test_crd_applies_and_is_established(realcluster: Cluster, crd: str) -> None:
    assert "avatarsessions.avatar-operator.dev" in crd
    got = json.loads(
        realcluster.kubectl("get", "crd", "avatarsessions.avatar-operator.dev", "-o", "json").stdout
    )
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "NonStructuralSchema" not in conditions


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_applies(realcluster: Cluster, crd: str, path: Path) -> None:
    namespaces = {
        o["metadata"]["namespace"]
        for o in _kubernetes_objects(path)
        if o.get("metadata", {}).get("namespace")
    }
    for namespace in namespaces:  # the examples' own namespaces (agents), as a user makes them
        manifest = realcluster.kubectl(
            "create", "namespace", namespace, "--dry-run=client", "-o=yaml"
        )
        realcluster.kubectl("apply", "-f", "-", input=manifest.stdout)
    applied = realcluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    for obj in _kubernetes_objects(path):
        namespace = obj["metadata"].get("namespace", "default")
        kind = obj["kind"].lower()
        if obj["apiVersion"] == GROUP:
            kind = f"{kind}.avatar-operator.dev"
        got = realcluster.kubectl("get", kind, obj["metadata"]["name"], "-n", namespace, "-o=json")
        assert json.loads(got.stdout)["metadata"]["uid"]


INVALID = [
    # (case, spec, the field the server names, what it says)
    (
        "video-1920x1920",
        {"video": {"width": 1920, "height": 1920}},
        "spec.video",
        "at most 2073600 pixels",
    ),
    ("fps-1000", {"video": {"fps": 1000}}, "spec.video.fps", "less than or equal to 60"),
    ("odd-width", {"video": {"width": 513}}, "spec.video.width", "multiple of 2"),
    (
        "gpu-none-with-vram",
        {"resources": {"gpu": "none", "vramMiB": 1024}},
        "spec.resources",
        "vramMiB must be empty when gpu is none",
    ),
    (
        "model-without-modelPath",
        {"avatar": {"renderer": "model"}},
        "spec.avatar",
        "modelPath is required when renderer is model",
    ),
    ("unknown-renderer", {"avatar": {"renderer": "hologram"}}, "spec.avatar.renderer", "hologram"),
    ("sample-rate-8000", {"audio": {"sampleRate": 8000}}, "spec.audio.sampleRate", "8000"),
    (
        "volume-both-sources",
        {"avatar": {"volume": {"persistentVolumeClaim": "a", "configMap": "b"}}},
        "spec.avatar.volume",
        "set exactly one of persistentVolumeClaim or configMap",
    ),
    (
        "two-secret-refs",
        {"credentials": {"secretRef": {"name": "a"}, "tokenSecretRef": {"name": "b"}}},
        "spec.credentials",
        "set secretRef or tokenSecretRef, not both",
    ),
    ("vram-too-small", {"resources": {"vramMiB": 100}}, "spec.resources.vramMiB", "512"),
    (
        "bad-node-selector-key",
        {"nodeSelector": {"not a key!": "x"}},
        "spec.nodeSelector",
        "keys must be Kubernetes label keys",
    ),
    ("bad-room-id", {"roomId": "-room"}, "spec.roomId", "should match"),
]


@pytest.mark.parametrize(("case", "spec", "field", "says"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_sessions_are_refused_naming_the_field(
    realcluster: Cluster, crd: str, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    name = f"invalid-{case}"
    created = realcluster.kubectl("create", "-f", "-", input=_session(name, **spec), check=False)
    assert created.returncode != 0, f"{case} was admitted"
    assert "is invalid" in created.stderr, created.stderr
    assert f"{field}:" in created.stderr or f"{field} " in created.stderr, created.stderr
    assert says in created.stderr, created.stderr
    missing = realcluster.kubectl("get", "avs", name, check=False)
    assert "NotFound" in missing.stderr


def test_missing_room_id_is_refused(realcluster: Cluster, crd: str) -> None:
    body = {"apiVersion": GROUP, "kind": "AvatarSession", "metadata": {"name": "no-room"}}
    body["spec"] = {"video": {"fps": 25}}
    created = realcluster.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert created.returncode != 0
    assert "spec.roomId: Required value" in created.stderr, created.stderr


def test_room_id_is_immutable(realcluster: Cluster, crd: str) -> None:
    realcluster.kubectl("create", "-f", "-", input=_session("immutable-room"))
    patched = realcluster.kubectl(
        "patch",
        "avs",
        "immutable-room",
        "--type=merge",
        "-p",
        '{"spec": {"roomId": "another-room"}}',
        check=False,
    )
    assert patched.returncode != 0
    assert "spec: Invalid value" in patched.stderr, patched.stderr
    assert "roomId is immutable" in patched.stderr, patched.stderr
    # Other fields may change.
    realcluster.kubectl(
        "patch", "avs", "immutable-room", "--type=merge", "-p", '{"spec": {"video": {"fps": 25}}}'
    )


def test_explain_documents_the_video_fields(realcluster: Cluster, crd: str) -> None:
    explained = realcluster.kubectl("explain", "avatarsession.spec.video").stdout
    assert "The video track the avatar publishes." in explained
    for field, description in (
        ("width", "Frame width in pixels"),
        ("height", "Frame height in pixels"),
        ("fps", "Frames per second."),
    ):
        assert field in explained
        assert description in explained


def test_get_avs_shows_the_printer_columns(realcluster: Cluster, crd: str) -> None:
    realcluster.kubectl("create", "-f", "-", input=_session("columns"))
    status = {
        "status": {
            "phase": "Joined",
            "playback": {"state": "Speaking"},
            "placement": {"node": "h100-0", "gpu": 3, "vramMiB": 2048},
            "endReason": None,
        }
    }
    realcluster.kubectl(
        "patch", "avs", "columns", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    table = realcluster.kubectl("get", "avs", "columns").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PLAYBACK", "NODE", "GPU", "VRAM", "AGE"]
    assert table[1].split()[:6] == ["columns", "Joined", "Speaking", "h100-0", "3", "2048"]
    wide = realcluster.kubectl("get", "avs", "columns", "-o", "wide").stdout.splitlines()
    assert "ROOM" in wide[0].split() and "REASON" in wide[0].split()
    assert "room-1" in wide[1].split()
    # The status subresource: a status write through the main resource changes nothing.
    realcluster.kubectl(
        "patch", "avs", "columns", "--type=merge", "-p", '{"status": {"phase": "Failed"}}'
    )
    phase = realcluster.kubectl("get", "avs", "columns", "-o=jsonpath={.status.phase}").stdout
    assert phase == "Joined"


def _nodes(realcluster: Cluster) -> dict[str, dict[str, Any]]:
    listing = json.loads(realcluster.kubectl("get", "nodes", "-o", "json").stdout)
    return {n["metadata"]["name"]: n for n in listing["items"]}


def test_fleet_nodes_are_ready_with_gpu_labels_and_leases(realcluster: Cluster) -> None:
    import ipaddress

    nodes = _nodes(realcluster)
    assert set(nodes) == {"h100-0", "h100-1", "h200", "cpu"}
    for name, node in nodes.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", name
        cidr = ipaddress.IPv4Network(node["spec"]["podCIDR"])
        assert cidr.subnet_of(ipaddress.IPv4Network(CLUSTER_CIDR)), cidr
        for address in node["status"]["addresses"]:
            if address["type"] == "InternalIP":
                assert ipaddress.ip_address(address["address"]).is_loopback
    h100 = nodes["h100-0"]
    assert h100["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.memory"] == "81559"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert h100["status"]["capacity"]["cpu"] == "96"
    assert "nvidia.com/gpu" not in nodes["cpu"]["status"]["allocatable"]
    assert "nvidia.com/gpu.count" not in nodes["cpu"]["metadata"]["labels"]
    h200_taints = {t["key"] for t in nodes["h200"]["spec"].get("taints") or []}
    assert "nvidia.com/gpu" in h200_taints
    leases = json.loads(
        realcluster.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json").stdout
    )
    holders = {lease["spec"]["holderIdentity"] for lease in leases["items"]}
    assert set(nodes) <= holders


def test_nodes_have_only_a_nodes_rights(realcluster: Cluster, tmp_path: Path) -> None:
    """The node agent's credentials are a kubelet's: the Node authorizer refuses it Secrets."""
    cert, key = realcluster.pki.node_credentials("h100-0")
    config = kubeconfig(
        realcluster.server, realcluster.pki.path("ca.crt"), cert, key, user="h100-0"
    )
    path = tmp_path / "node.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    kubectl = [str(realcluster.kubectl_path), f"--kubeconfig={path}"]
    env = realcluster.env()
    own = subprocess.run(
        [*kubectl, "get", "node", "h100-0"], env=env, capture_output=True, text=True
    )
    assert own.returncode == 0, own.stderr
    secrets = subprocess.run(
        [*kubectl, "get", "secrets", "-A"], env=env, capture_output=True, text=True
    )
    assert secrets.returncode != 0
    assert 'User "system:node:h100-0" cannot list resource "secrets"' in secrets.stderr


def _pod(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "avatar-worker:test",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
            "terminationGracePeriodSeconds": 5,
            **spec,
        },
    }
    return json.dumps(body)


def test_a_pod_is_scheduled_onto_a_gpu_node_and_runs(realcluster: Cluster) -> None:
    import ipaddress

    realcluster.kubectl("create", "-f", "-", input=_pod("gpu-pod"))
    realcluster.kubectl("wait", "pod/gpu-pod", "--for=condition=Ready", "--timeout=60s")
    pod = json.loads(realcluster.kubectl("get", "pod", "gpu-pod", "-o", "json").stdout)
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"] in ("h100-0", "h100-1")  # untolerated taint keeps h200 out
    (container,) = pod["status"]["containerStatuses"]
    assert container["ready"] and "running" in container["state"]
    node = _nodes(realcluster)[pod["spec"]["nodeName"]]
    pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network(node["spec"]["podCIDR"])
    started = time.monotonic()
    realcluster.kubectl("delete", "pod", "gpu-pod", "--timeout=30s")
    assert time.monotonic() - started < 30
    gone = realcluster.kubectl("get", "pod", "gpu-pod", check=False)
    assert "NotFound" in gone.stderr


def test_a_pod_tolerating_the_taint_lands_on_h200(realcluster: Cluster) -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
        "tolerations": [toleration],
    }
    realcluster.kubectl("create", "-f", "-", input=_pod("h200-pod", **spec))
    realcluster.kubectl("wait", "pod/h200-pod", "--for=condition=Ready", "--timeout=60s")
    node = realcluster.kubectl("get", "pod", "h200-pod", "-o=jsonpath={.spec.nodeName}").stdout
    assert node == "h200"
    realcluster.kubectl("delete", "pod", "h200-pod", "--timeout=30s")


def test_a_pod_that_fits_nowhere_stays_pending(realcluster: Cluster) -> None:
    spec = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-B200"}}
    realcluster.kubectl("create", "-f", "-", input=_pod("nowhere", **spec))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pod = json.loads(realcluster.kubectl("get", "pod", "nowhere", "-o", "json").stdout)
        scheduled = [
            c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"
        ]
        if scheduled and scheduled[0].get("reason") == "Unschedulable":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the scheduler never reported the pod Unschedulable")
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"
    realcluster.kubectl("delete", "pod", "nowhere", "--timeout=30s")


def test_status_command_reports_ready(realcluster: Cluster) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avatar_devtools.realcluster",
            "status",
            f"--dir={realcluster.directory}",
        ],
        capture_output=True,
        text=True,
        env={**realcluster.env()},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ready"] is True
    assert all(report["components"].values())
