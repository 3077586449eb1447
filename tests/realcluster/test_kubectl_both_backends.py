"""Real kubectl against both backends: the emulated API (`localcluster`, as `make demo` and the
fast layer run it) and the real kube-apiserver. What a new user tries first — apply the CRD
and the examples, be refused an invalid session with the field named, explain a field, get
the printer columns — must work, and read the same, on both.

The emulator side is `python -m avatar_devtools.localcluster` on a loopback port with the
fleet of `examples/fleet.yaml`; the real side is this layer's session cluster."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from test_realcluster_api import EXAMPLE_FILES, INVALID, _kubernetes_objects, _session

from avatar_devtools.localcluster import cluster
from avatar_devtools.realcluster import Cluster, binaries, fixtures

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD = REPO_ROOT / "crds" / "avatarsessions.yaml"
FLEET = REPO_ROOT / "examples" / "fleet.yaml"
BACKENDS = ("emulator", "real")


class Kubectl:
    """The built kubectl with one backend's kubeconfig (and a discovery cache of its own)."""

    def __init__(self, name: str, binary: Path, kubeconfig: Path, cache: Path) -> None:
        self.name = name
        self.binary = binary
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        self.env.update({"KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(cache)})

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"{self.name}: kubectl {' '.join(args)}: {result.stderr}"
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.binary), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _wait_established(kubectl: Kubectl, name: str = "avatarsessions.avatar-operator.dev") -> None:
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + 60
    while True:
        got = kubectl("get", f"crd/{name}", "-o", f"jsonpath={jsonpath}")
        if got.stdout == "True":
            return
        assert time.monotonic() < deadline, f"{kubectl.name}: the CRD {name} was not Established"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    """A localcluster process with the example fleet; the CRDs (all of crds/) applied by
    kubectl."""
    directory = tmp_path_factory.mktemp("kubectl-emulator")
    process = cluster.ClusterProcess(
        directory / "kubeconfig",
        fleet_path=FLEET,
        extra_args=["--workdir", str(directory / "kubelet"), "--log-level", "WARNING"],
    )
    with process:
        kubectl = Kubectl(
            "emulator",
            binaries.bin_dir(REPO_ROOT) / "kubectl",
            process.kubeconfig_path,
            directory / "kubectl-cache",
        )
        applied = kubectl("apply", *(arg for path in fixtures.CRDS for arg in ("-f", str(path))))
        for name in fixtures.crd_names():
            assert f"{name} created" in applied.stdout
            _wait_established(kubectl, name)
        yield kubectl


@pytest.fixture(scope="module")
def real(realcluster: Cluster, crd: str) -> Iterator[Kubectl]:
    """The session's real control plane, the CRD applied by kubectl (the `crd` fixture).
    Afterwards every AvatarSession and AvatarPool on it is deleted, without waiting (no
    operator runs here to release a finalizer): the cluster is the session's, and an operator
    tested on it later would count what these tests left."""
    assert "avatarsessions.avatar-operator.dev" in crd
    kubectl = Kubectl(
        "real", realcluster.kubectl_path, realcluster.kubeconfig, realcluster.run_dir / "kb-cache"
    )
    # kube-apiserver publishes a new CRD's OpenAPI document a moment after it is Established
    # (explain answers "couldn't find resource" until then); the emulator at once
    deadline = time.monotonic() + 60
    while "apis/avatar-operator.dev/v1alpha1" not in kubectl("get", "--raw", "/openapi/v3").stdout:
        assert time.monotonic() < deadline, "the CRD's OpenAPI document was not published in 60 s"
        time.sleep(0.2)
    yield kubectl
    kubectl("delete", "avatarsessions,avatarpools", "--all", "--all-namespaces", "--wait=false")


@pytest.fixture(params=BACKENDS)
def kubectl(request: pytest.FixtureRequest) -> Kubectl:
    found: Kubectl = request.getfixturevalue(request.param)
    return found


def _columns(output: str) -> list[str]:
    """The header of kubectl's table, as column names (`NOMINATED NODE` is one)."""
    return re.split(r"\s{2,}", output.splitlines()[0].strip())


def _row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.split()[:1] == [name])
    return re.split(r"\s{2,}", line.strip())


def test_the_crd_applies_again_unchanged(kubectl: Kubectl) -> None:
    again = kubectl("apply", "-f", str(CRD))
    assert "avatarsessions.avatar-operator.dev unchanged" in again.stdout, again.stdout


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_applies(kubectl: Kubectl, path: Path) -> None:
    objects = _kubernetes_objects(path)
    for namespace in {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]}:
        manifest = kubectl("create", "namespace", namespace, "--dry-run=client", "-o=yaml")
        kubectl("apply", "-f", "-", input=manifest.stdout)
    applied = kubectl("apply", "-f", str(path))
    assert applied.stderr == "", applied.stderr
    again = kubectl("apply", "-f", str(path))  # the update path: a patch that changes nothing
    assert all(line.endswith("unchanged") for line in again.stdout.splitlines()), again.stdout
    for obj in objects:
        namespace = obj["metadata"].get("namespace", "default")
        kind = obj["kind"].lower()
        if obj["apiVersion"].startswith("avatar-operator.dev/"):
            kind = f"{kind}.avatar-operator.dev"
        got = kubectl("get", kind, obj["metadata"]["name"], "-n", namespace, "-o=json")
        assert json.loads(got.stdout)["metadata"]["uid"]


@pytest.mark.parametrize(("case", "spec", "field", "says"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_sessions_are_refused_naming_the_field(
    kubectl: Kubectl, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    name = f"kb-invalid-{case}"
    created = kubectl("create", "-f", "-", input=_session(name, **spec), check=False)
    assert created.returncode != 0, f"{case} was admitted"
    assert "is invalid" in created.stderr, created.stderr
    assert f"{field}:" in created.stderr or f"{field} " in created.stderr, created.stderr
    assert says in created.stderr, created.stderr
    assert "NotFound" in kubectl("get", "avs", name, check=False).stderr


def test_a_1920x1920_session_is_refused_by_apply_naming_spec_video(kubectl: Kubectl) -> None:
    body = _session("kb-huge", video={"width": 1920, "height": 1920})
    applied = kubectl("apply", "-f", "-", input=body, check=False)
    assert applied.returncode != 0
    assert (
        "spec.video: Invalid value: width × height must be at most 2073600 pixels (1920×1080)"
        in applied.stderr
    ), applied.stderr


def test_room_id_is_immutable(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=_session("kb-immutable"))
    patched = kubectl(
        "patch", "avs", "kb-immutable", "--type=merge", "-p", '{"spec":{"roomId":"b"}}', check=False
    )
    assert patched.returncode != 0
    assert "spec: Invalid value: roomId is immutable" in patched.stderr, patched.stderr
    kubectl("patch", "avs", "kb-immutable", "--type=merge", "-p", '{"spec":{"video":{"fps":25}}}')


def test_server_side_apply_creates_then_updates(kubectl: Kubectl) -> None:
    body = json.loads(_session("kb-ssa"))
    first = kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    assert "serverside-applied" in first.stdout
    body["spec"]["video"] = {"fps": 24}
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(body))
    fps = kubectl("get", "avs", "kb-ssa", "-o=jsonpath={.spec.video.fps}").stdout
    assert fps == "24"


def test_the_install_steps_typed_create_commands_work(kubectl: Kubectl) -> None:
    """The README's first two install lines (kubectl sends these bodies as protobuf)."""
    kubectl("create", "namespace", "kb-avatar-system")
    kubectl(
        "-n",
        "kb-avatar-system",
        "create",
        "secret",
        "generic",
        "videosdk-credentials",
        "--from-literal=apiKey=key-1",
        "--from-literal=secret=secret-1",
    )
    got = kubectl("-n", "kb-avatar-system", "get", "secret", "videosdk-credentials", "-o=json")
    secret = json.loads(got.stdout)
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["apiKey"]) == b"key-1"
    table = kubectl("-n", "kb-avatar-system", "get", "secret", "videosdk-credentials").stdout
    assert _columns(table) == ["NAME", "TYPE", "DATA", "AGE"]
    assert _row(table, "videosdk-credentials")[1:3] == ["Opaque", "2"]


def test_explain_documents_the_video_fields(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "avatarsession.spec.video").stdout
    assert "The video track the avatar publishes." in explained
    for field, description in (
        ("width", "Frame width in pixels"),
        ("height", "Frame height in pixels"),
        ("fps", "Frames per second."),
    ):
        assert field in explained
        assert description in explained


def _with_status(kubectl: Kubectl, name: str) -> None:
    kubectl("apply", "-f", "-", input=_session(name))
    status = {
        "status": {
            "phase": "Joined",
            "playback": {"state": "Speaking"},
            "placement": {"node": "h100-0", "gpu": 3, "vramMiB": 2048},
        }
    }
    kubectl("patch", "avs", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def test_get_avs_shows_the_printer_columns_with_values(kubectl: Kubectl) -> None:
    _with_status(kubectl, "kb-columns")
    table = kubectl("get", "avs", "kb-columns").stdout
    assert _columns(table) == ["NAME", "PHASE", "PLAYBACK", "NODE", "GPU", "VRAM", "AGE"]
    assert _row(table, "kb-columns")[:6] == [
        "kb-columns",
        "Joined",
        "Speaking",
        "h100-0",
        "3",
        "2048",
    ]
    wide = kubectl("get", "avs", "kb-columns", "-o", "wide").stdout
    assert _columns(wide) == [
        "NAME",
        "PHASE",
        "PLAYBACK",
        "ROOM",
        "NODE",
        "GPU",
        "VRAM",
        "REASON",
        "AGE",
    ]
    assert _row(wide, "kb-columns")[3] == "room-1"


def test_get_nodes_shows_status_roles_age_version(kubectl: Kubectl) -> None:
    table = kubectl("get", "nodes").stdout
    assert _columns(table) == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    names = [line.split()[0] for line in table.splitlines()[1:]]
    assert names == ["cpu", "h100-0", "h100-1", "h200"]
    row = _row(table, "h100-0")
    assert row[1:3] == ["Ready", "<none>"]
    assert row[4].startswith("v1.37.")
    wide = kubectl("get", "nodes", "-o", "wide").stdout
    assert _columns(wide)[5:] == [
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", _row(wide, "h100-0")[5])


def _lines(stream: IO[str], within: float = 30.0) -> Iterator[str]:
    """The lines of a running command's output, each within `within` seconds (or fail); read
    from the file descriptor, so that no line waits in a buffer that select cannot see."""
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            while b"\n" not in pending:
                assert selector.select(timeout=within), f"no line from the watch in {within} s"
                chunk = os.read(stream.fileno(), 65536)
                assert chunk, "the watch ended"
                pending += chunk
            line, pending = pending.split(b"\n", 1)
            yield line.decode()


def test_get_watch_prints_the_columns_once_then_rows(kubectl: Kubectl) -> None:
    _with_status(kubectl, "kb-watched")
    watch = kubectl.popen("get", "avs", "kb-watched", "-w")
    try:
        assert watch.stdout is not None
        lines = _lines(watch.stdout)
        header = next(lines)
        assert _columns(header) == ["NAME", "PHASE", "PLAYBACK", "NODE", "GPU", "VRAM", "AGE"]
        assert next(lines).split()[:2] == ["kb-watched", "Joined"]
        patch = '{"status":{"phase":"Ended","endReason":"RoomEnded"}}'
        kubectl("patch", "avs", "kb-watched", "--subresource=status", "--type=merge", "-p", patch)
        assert next(lines).split()[:2] == ["kb-watched", "Ended"]
    finally:
        watch.terminate()
        watch.wait(timeout=10)


# --- side by side: the same command reads the same on both ---------------------------------


def _same(emulator: Kubectl, real: Kubectl, *args: str, input: str | None = None) -> str:
    outputs = [k(*args, input=input, check=False) for k in (emulator, real)]
    texts = [(o.returncode, o.stdout, o.stderr) for o in outputs]
    assert texts[0] == texts[1], f"kubectl {' '.join(args)}:\nemulator {texts[0]}\nreal {texts[1]}"
    return outputs[1].stdout + outputs[1].stderr


def test_explain_reads_the_same_on_both(emulator: Kubectl, real: Kubectl) -> None:
    for field in (
        "avatarsession",
        "avatarsession.spec.video",
        "avs.spec.resources.gpu",
        "pods.spec.containers.resources",
        "deployment.spec.strategy",
        "node.status.addresses",
    ):
        _same(emulator, real, "explain", field)
    _same(emulator, real, "explain", "avatarsession.spec.nope")


@pytest.mark.parametrize(("case", "spec", "field", "says"), INVALID, ids=[c[0] for c in INVALID])
def test_refusals_read_the_same_on_both(
    emulator: Kubectl, real: Kubectl, case: str, spec: dict[str, Any], field: str, says: str
) -> None:
    _same(emulator, real, "create", "-f", "-", input=_session(f"kb-same-{case}", **spec))


def _cells(output: str) -> list[list[str]]:
    """A table as cells, cut where the header's columns start (an empty cell stays one), ages
    blanked (the two clusters were not created at the same time)."""
    header, *rows = output.splitlines()
    names = _columns(header)
    starts: list[int] = []
    for name in names:  # left to right, so that a name inside another is not taken
        starts.append(header.index(name, starts[-1] + 1 if starts else 0))
    bounds = [*starts[1:], None]
    table = [names]
    for row in rows:
        cells = [row[start:end].strip() for start, end in zip(starts, bounds, strict=True)]
        cells[names.index("AGE")] = ""
        table.append(cells)
    return table


def test_tables_read_the_same_on_both(emulator: Kubectl, real: Kubectl) -> None:
    for kubectl in (emulator, real):
        _with_status(kubectl, "kb-same-columns")
    for args in (("get", "avs", "kb-same-columns"), ("get", "avs", "kb-same-columns", "-o=wide")):
        emulated, served = (_cells(k(*args).stdout) for k in (emulator, real))
        assert emulated == served
    headers = [_columns(k("get", "nodes", "-o=wide").stdout) for k in (emulator, real)]
    assert headers[0] == headers[1]


# Changes to a valid spec, combined at random (a fixed seed): schema keywords, CEL rules,
# blocking errors, unknown fields, and valid values, alone and together.
MUTATIONS: list[tuple[str, Any]] = [
    ("video", {"width": 1920, "height": 1920}),
    ("video", {"fps": 0}),
    ("video", {"fps": 61}),
    ("video", {"width": 63}),
    ("video", {"width": "wide"}),
    ("video", {"height": 4097}),
    ("video", None),
    ("audio", {"sampleRate": 8000}),
    ("audio", {"channels": 3}),
    ("audio", {"channels": 2, "sampleRate": 48000}),
    ("resources", {"gpu": "none", "vramMiB": 1024}),
    ("resources", {"gpu": "mig"}),
    ("resources", {"vramMiB": -5}),
    ("resources", {"gpu": "exclusive"}),
    ("avatar", {"renderer": "model"}),
    ("avatar", {"renderer": "model", "modelPath": "/m"}),
    ("avatar", {"renderer": "x"}),
    ("avatar", {"volume": {"configMap": "a"}}),
    ("avatar", {"volume": {"configMap": "a", "persistentVolumeClaim": "b"}}),
    ("avatar", {"volume": {}}),
    ("credentials", {"secretRef": {"name": "a"}, "tokenSecretRef": {"name": "b"}}),
    ("credentials", {"tokenTtlSeconds": 5}),
    ("credentials", {"secretRef": {}}),
    ("nodeSelector", {"ok/key": "v", "bad key": "v"}),
    ("nodeSelector", {"a": "b"}),
    ("tolerations", [{"operator": "Sometimes"}]),
    ("tolerations", [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]),
    ("lifetime", {"joinTimeoutSeconds": -1}),
    ("lifetime", {"maxDurationSeconds": 10**9}),
    ("roomId", "-bad"),
    ("roomId", ""),
    ("participantId", "p" * 200),
    ("unknownField", 1),
    ("agentParticipantId", 5),
]


def test_random_specs_are_judged_the_same_on_both(emulator: Kubectl, real: Kubectl) -> None:
    """Admitted or refused, with the same causes in the same words (server-side dry runs)."""
    rng = random.Random(20261202)
    for i in range(40):
        spec: dict[str, Any] = {}
        for field, value in rng.sample(MUTATIONS, rng.choice([1, 2, 3])):
            spec[field] = value
        body = _session(f"kb-random-{i}", **spec)
        outputs = [
            k("create", "--dry-run=server", "-o=name", "-f", "-", input=body, check=False)
            for k in (emulator, real)
        ]
        # kubectl prints several causes in the server's order: compare them as a set
        judged = [(o.returncode, o.stdout, sorted(o.stderr.splitlines())) for o in outputs]
        assert judged[0] == judged[1], f"{spec}:\nemulator {judged[0]}\nreal {judged[1]}"


def test_a_typo_in_a_built_in_manifest_is_refused_the_same_on_both(
    emulator: Kubectl, real: Kubectl
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kb-typo", "namespace": "default"},
        "spec": {
            "containers": [{"name": "main", "image": "x:1", "imagePolicy": "Always"}],
            "restartPolcy": "Never",
        },
    }
    said = _same(emulator, real, "apply", "-f", "-", input=json.dumps(pod))
    assert 'strict decoding error: unknown field "spec.containers[0].imagePolicy"' in said


def test_auth_can_i_and_whoami_answer(kubectl: Kubectl) -> None:
    """The admin may do anything on both (the emulator allows every request to anyone)."""
    assert kubectl("auth", "can-i", "create", "avatarsessions", "-n", "agents").stdout == "yes\n"
    assert _columns(kubectl("auth", "whoami").stdout) == ["ATTRIBUTE", "VALUE"]


def _pool(name: str, replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "avatar-operator.dev/v1alpha1",
            "kind": "AvatarPool",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "template": {"avatar": {"renderer": "waveform"}}},
        }
    )


def test_explain_documents_the_pool(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "avatarpool.spec").stdout
    for field in ("replicas", "template", "whenEmpty"):
        assert field in explained
    template = kubectl("explain", "avp.spec.template").stdout
    for field in ("avatar", "video", "resources", "nodeSelector", "tolerations"):
        assert field in template
    assert "poolRef" in kubectl("explain", "avatarsession.spec").stdout


def test_get_and_scale_a_pool(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=_pool("kb-pool"))
    status = {"status": {"replicas": 2, "readyReplicas": 1, "starting": 1, "claimed": 3}}
    kubectl(
        "patch", "avp", "kb-pool", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    table = kubectl("get", "avp", "kb-pool").stdout
    assert _columns(table) == ["NAME", "DESIRED", "READY", "CLAIMED", "STARTING", "AGE"]
    assert _row(table, "kb-pool")[:5] == ["kb-pool", "2", "1", "3", "1"]
    scaled = kubectl("scale", "avp/kb-pool", "--replicas=4")
    assert "scaled" in scaled.stdout
    replicas = kubectl("get", "avp", "kb-pool", "-o", "jsonpath={.spec.replicas}").stdout
    assert replicas == "4"
    refused = kubectl("scale", "avp/kb-pool", "--replicas=501", check=False)
    assert refused.returncode != 0 and "spec.replicas" in refused.stderr


def test_pools_read_the_same_on_both(emulator: Kubectl, real: Kubectl) -> None:
    for field in ("avatarpool", "avatarpool.spec.whenEmpty", "avp.status", "avs.spec.poolRef"):
        _same(emulator, real, "explain", field)
    for kubectl in (emulator, real):
        kubectl("apply", "-f", "-", input=_pool("kb-same-pool", 3))
    for args in (("get", "avp", "kb-same-pool"), ("get", "avp", "kb-same-pool", "-o=wide")):
        emulated, served = (_cells(k(*args).stdout) for k in (emulator, real))
        assert emulated == served
    _same(emulator, real, "scale", "avp/kb-same-pool", "--replicas=-1")
    _same(emulator, real, "scale", "avp/kb-same-pool", "--replicas=1")
