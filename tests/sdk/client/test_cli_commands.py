"""avatarctl against the emulated API: output snapshots, exit codes, progress while waiting."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from client_support import (
    NS,
    T0,
    OperatorEnv,
    condition,
    deny,
    run_cli,
    session_manifest,
    set_status,
    stored,
)

from avatar_devtools.localcluster import clock, cluster
from avatar_sdk import api, cli

NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # five minutes after T0
UNSCHEDULABLE = "waiting for 100000 MiB on one GPU: largest free block 79511 MiB on gpu-a/gpu0"


def now() -> datetime:
    return NOW


@pytest.fixture
def frozen_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects written from now on are stamped T0 by the emulated API server."""
    stamp = clock.timestamp
    monkeypatch.setattr(clock, "timestamp", lambda at=None: T0 if at is None else stamp(at))


@pytest.fixture
def fleet_of_sessions(cluster_with_crd: cluster.LocalCluster, frozen_timestamps: None) -> None:
    """Three sessions: joined and speaking, waiting for a GPU, just created (CPU only)."""
    cluster_with_crd.apply(session_manifest("alpha", "room-a", agentParticipantId="agent_1"))
    set_status(
        cluster_with_crd,
        "alpha",
        {
            "phase": "Joined",
            "participantId": "avatar_1",
            "placement": {
                "node": "gpu-a",
                "gpu": 0,
                "vramMiB": 2048,
                "product": "NVIDIA-H100-80GB-HBM3",
            },
            "podName": "alpha-worker",
            "joinedAt": T0,
            "playback": {"state": "Speaking", "segments": 3, "interrupts": 1, "position": 1.5},
            "fps": 29.9,
            "conditions": [
                condition("Scheduled", "True", "Placed", "gpu-a/gpu0"),
                condition("Joined", "True", "WorkerJoined"),
            ],
        },
    )
    cluster_with_crd.apply(session_manifest("beta", "room-b", resources={"vramMiB": 100_000}))
    set_status(
        cluster_with_crd,
        "beta",
        {
            "phase": "Pending",
            "message": UNSCHEDULABLE,
            "conditions": [condition("Scheduled", "False", "Unschedulable", UNSCHEDULABLE)],
        },
    )
    cluster_with_crd.apply(session_manifest("gamma", "room-c", resources={"gpu": "none"}))
    cluster_with_crd.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "alpha.1", "namespace": NS},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "alpha"},
            "type": "Normal",
            "reason": "Joined",
            "message": "the worker joined the room",
            "lastTimestamp": "2026-01-01T00:02:00Z",
            "count": 1,
            "source": {"component": "avatar-operator"},
        }
    )


GET_TABLE = """\
NAME    ROOM     PHASE     PLAYBACK   NODE     GPU      VRAM     AGE
alpha   room-a   Joined    Speaking   gpu-a    0        2048Mi   5m
beta    room-b   Pending   <none>     <none>   <none>   <none>   5m
gamma   room-c   <none>    <none>     <none>   <none>   <none>   5m
"""

DESCRIBE_ALPHA = """\
Name:              alpha
Namespace:         agents
Room:              room-a
Participant:       avatar_1
Agent Participant: agent_1
Created:           2026-01-01T00:00:00Z (5m ago)
Phase:             Joined
Message:           <none>
End Reason:        <none>
Avatar:            portrait, 512x512 @ 30 fps, audio 24000 Hz mono
Resources:         2048 MiB VRAM, GPU shared
Placement:         gpu-a GPU 0 (2048 MiB, NVIDIA-H100-80GB-HBM3)
Pod:               alpha-worker
Joined At:         2026-01-01T00:00:00Z
Playback:          Speaking, 3 segments, 1 interrupted, position 1.50s
Measured:          fps 29.9
Conditions:
  Type        Status   Reason         Age   Message
  Scheduled   True     Placed         5m    gpu-a/gpu0
  Joined      True     WorkerJoined   5m
Events:
  Type     Reason   Age   From              Message
  Normal   Joined   3m    avatar-operator   the worker joined the room
"""

CAPACITY = """\
NODE    GPU   PRODUCT                 VRAM      RESERVED   FREE      SESSIONS   FITS   STATUS
gpu-a   0     NVIDIA-H100-80GB-HBM3   81559Mi   2048Mi     79511Mi   1          9      Ready
gpu-a   1     NVIDIA-H100-80GB-HBM3   81559Mi   0Mi        81559Mi   0          10     Ready
gpu-b   0     NVIDIA-H100-80GB-HBM3   81559Mi   0Mi        81559Mi   0          10     Ready
29 more sessions of 8000 MiB fit; free 242629 MiB in all, largest free block 81559 MiB on one GPU
"""


async def test_get_and_list_print_the_kubectl_like_table(
    kubeconfig: Path, fleet_of_sessions: None
) -> None:
    for argv in (["get"], ["list"], ["-n", NS, "get"], ["get", "--namespace", NS]):
        assert await run_cli(*argv, kubeconfig=kubeconfig, clock=now) == (0, GET_TABLE, "")
    code, out, _ = await run_cli("get", "-A", kubeconfig=kubeconfig, clock=now)
    assert out.splitlines()[0].split() == ["NAMESPACE", *cli.SESSION_COLUMNS]
    assert out.splitlines()[1].startswith("agents      alpha")
    code, out, _ = await run_cli("get", "beta", kubeconfig=kubeconfig, clock=now)
    assert out == (
        "NAME   ROOM     PHASE     PLAYBACK   NODE     GPU      VRAM     AGE\n"
        "beta   room-b   Pending   <none>     <none>   <none>   <none>   5m\n"
    )
    code, out, _ = await run_cli("get", "--room", "room-c", "-o", "name", kubeconfig=kubeconfig)
    assert (code, out) == (0, f"{cli.KIND_NAME}/gamma\n")
    code, out, _ = await run_cli("get", "-n", "default", kubeconfig=kubeconfig)
    assert (code, out) == (0, "No avatar sessions found in namespace default.\n")


async def test_get_prints_json_and_yaml_as_the_api_returns_them(
    kubeconfig: Path, fleet_of_sessions: None, cluster_with_crd: cluster.LocalCluster
) -> None:
    code, out, _ = await run_cli("get", "alpha", "-o", "json", kubeconfig=kubeconfig)
    assert code == 0 and json.loads(out) == stored(cluster_with_crd, "alpha")
    code, out, _ = await run_cli("get", "-o", "yaml", kubeconfig=kubeconfig)
    document = yaml.safe_load(out)
    assert document["kind"] == "List"
    assert [i["metadata"]["name"] for i in document["items"]] == ["alpha", "beta", "gamma"]
    assert document["items"][0]["apiVersion"] == api.API_VERSION


async def test_describe_shows_conditions_and_events(
    kubeconfig: Path, fleet_of_sessions: None, cluster_with_crd: cluster.LocalCluster
) -> None:
    assert await run_cli("describe", "alpha", kubeconfig=kubeconfig, clock=now) == (
        0,
        DESCRIBE_ALPHA,
        "",
    )
    code, out, _ = await run_cli("describe", "alpha", "-o", "json", kubeconfig=kubeconfig)
    body = json.loads(out)
    assert body["session"]["metadata"]["name"] == "alpha"
    assert [e["reason"] for e in body["events"]] == ["Joined"]
    # without the right to list events, describe still describes, and says what is missing
    deny(cluster_with_crd, "list", plural="events", group="")
    code, out, _ = await run_cli("describe", "beta", kubeconfig=kubeconfig, clock=now)
    assert code == 0
    assert f"Message:           {UNSCHEDULABLE}" in out
    assert f"  Scheduled   False    Unschedulable   5m    {UNSCHEDULABLE}" in out
    assert "Events:\n  <cannot list events: grant the ServiceAccount `list` on events>" in out


async def test_capacity_shows_free_vram_per_gpu_and_what_fits(
    kubeconfig: Path, fleet_of_sessions: None, tmp_path: Path
) -> None:
    result = await run_cli("capacity", "--vram-mib", "8000", kubeconfig=kubeconfig)
    assert result == (0, CAPACITY, "")
    code, out, _ = await run_cli("capacity", "--exclusive", "-o", "json", kubeconfig=kubeconfig)
    view = json.loads(out)
    assert (view["fits"], view["exclusive"]) == (2, True)  # the two GPUs nobody uses
    assert [g["fits"] for g in view["gpus"]] == [0, 1, 1]
    settings = tmp_path / "placement.yaml"
    settings.write_text("inventory:\n  headroomMiB: 1559\n")
    code, out, _ = await run_cli(
        "capacity", "--placement-config", str(settings), "-o", "yaml", kubeconfig=kubeconfig
    )
    assert [g["capacityMiB"] for g in yaml.safe_load(out)["gpus"]] == [80000, 80000, 80000]
    settings.write_text("inventory:\n  headroom: lots\n")
    code, _, err = await run_cli(
        "capacity", "--placement-config", str(settings), kubeconfig=kubeconfig
    )
    assert code == cli.EXIT_USAGE and "not placement settings" in err


async def test_capacity_counts_what_a_nodes_cpu_holds(
    kubeconfig: Path, fleet_of_sessions: None
) -> None:
    """As the operator's placement: a node fits no more sessions than its allocatable CPU holds
    worker Pods (the fixture's node has 32 CPUs), whatever VRAM is free."""
    code, out, _ = await run_cli("capacity", "-o", "json", kubeconfig=kubeconfig)
    roomy = json.loads(out)["fits"]
    code, out, _ = await run_cli(
        "capacity", "--worker-cpu", "16", "-o", "json", kubeconfig=kubeconfig
    )
    assert code == 0 and json.loads(out)["fits"] < roomy
    code, _, err = await run_cli("capacity", "--worker-cpu", "lots", kubeconfig=kubeconfig)
    assert code == cli.EXIT_USAGE and "--worker-cpu 'lots': not a Kubernetes quantity" in err


async def test_create_is_idempotent_and_says_so(
    kubeconfig: Path, cluster_with_crd: cluster.LocalCluster, tmp_path: Path
) -> None:
    name = api.session_name_for_room("room-x")
    code, out, _ = await run_cli("create", "room-x", "--vram-mib", "4096", kubeconfig=kubeconfig)
    assert (code, out) == (0, f"{cli.KIND_NAME}/{name} created\n")
    code, out, _ = await run_cli("create", "room-x", kubeconfig=kubeconfig)
    assert (code, out) == (0, f"{cli.KIND_NAME}/{name} unchanged (it exists for this room)\n")
    obj = stored(cluster_with_crd, name)
    assert obj is not None and obj["spec"]["resources"]["vramMiB"] == 4096

    manifest = tmp_path / "session.yaml"
    manifest.write_text(yaml.safe_dump(session_manifest("from-file", "room-y", video={"fps": 24})))
    code, out, _ = await run_cli(
        "create", "room-y", "-f", str(manifest), "--fps", "25", "-o", "json", kubeconfig=kubeconfig
    )
    created = json.loads(out)
    assert (code, created["metadata"]["name"], created["spec"]["video"]["fps"]) == (
        0,
        "from-file",
        25,
    )
    code, _, err = await run_cli("create", "room-z", "-f", str(manifest), kubeconfig=kubeconfig)
    assert code == cli.EXIT_USAGE and "roomId 'room-y' is not 'room-z'" in err
    code, _, err = await run_cli("create", "room-z", "--width", "99", kubeconfig=kubeconfig)
    assert code == cli.EXIT_INVALID and "spec.video.width" in err
    code, _, err = await run_cli("create", "room-z", "--name", "from-file", kubeconfig=kubeconfig)
    assert code == cli.EXIT_CONFLICT and "exists for room 'room-y'" in err


async def test_create_wait_shows_progress_until_joined(
    kubeconfig: Path, cluster_with_crd: cluster.LocalCluster
) -> None:
    name = api.session_name_for_room("room-w")

    async def operator() -> None:
        await cluster_with_crd.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}")
        placement = {"node": "gpu-b", "gpu": 0, "vramMiB": 2048}
        for step in (
            {"phase": "Scheduled", "placement": placement},
            {"phase": "Starting", "podName": f"{name}-worker"},
            {"phase": "Joined"},
        ):
            await asyncio.sleep(0.05)
            set_status(cluster_with_crd, name, step)

    task = asyncio.create_task(operator())
    code, out, err = await run_cli(
        "create", "room-w", "--wait", "--timeout", "10", kubeconfig=kubeconfig
    )
    await task
    assert (code, out) == (0, f"{cli.KIND_NAME}/{name} created, joined\n")
    progress = [line.split("] ", 1)[1] for line in err.splitlines()[1:]]
    assert progress == [
        f"{name}: Created",
        f"{name}: Scheduled - on gpu-b GPU 0",
        f"{name}: Starting - pod {name}-worker",
        f"{name}: Joined",
    ]
    assert err.splitlines()[0] == f"waiting up to 10s for {name} to join"


async def test_wait_exit_codes_say_how_the_wait_ended(
    kubeconfig: Path, cluster_with_crd: cluster.LocalCluster
) -> None:
    for room in ("r-failed", "r-timeout", "r-pending"):
        await run_cli("create", room, kubeconfig=kubeconfig)
    name = api.session_name_for_room
    set_status(cluster_with_crd, name("r-failed"), {"phase": "Failed", "endReason": "PodFailed"})
    set_status(
        cluster_with_crd,
        name("r-pending"),
        {
            "phase": "Pending",
            "conditions": [condition("Scheduled", "False", "Unschedulable", UNSCHEDULABLE)],
        },
    )
    cases = [
        (["wait", name("r-failed")], cli.EXIT_FAILED, "failed before joining: PodFailed"),
        (["wait", name("r-timeout"), "--timeout", "0.3"], cli.EXIT_TIMEOUT, "did not join"),
        (["wait", name("r-pending"), "--timeout", "0.3"], cli.EXIT_UNSCHEDULABLE, UNSCHEDULABLE),
        (["wait", name("r-pending"), "--fail-if-unschedulable"], cli.EXIT_UNSCHEDULABLE, "waiting"),
        (["wait", "nope"], cli.EXIT_NOT_FOUND, 'avatar session "nope" not found'),
    ]
    for argv, expected, text in cases:
        code, _, err = await run_cli(*argv, kubeconfig=kubeconfig)
        assert (code, text in err) == (expected, True), (argv, err)


async def test_delete_and_its_exit_codes(
    kubeconfig: Path, fleet_of_sessions: None, cluster_with_crd: cluster.LocalCluster
) -> None:
    code, out, err = await run_cli("delete", "alpha", "beta", "--wait", kubeconfig=kubeconfig)
    assert code == 0
    assert out == f'{cli.KIND_NAME} "alpha" deleted\n{cli.KIND_NAME} "beta" deleted\n'
    assert stored(cluster_with_crd, "alpha") is None
    code, out, err = await run_cli("delete", "alpha", "gamma", kubeconfig=kubeconfig)
    assert code == cli.EXIT_NOT_FOUND
    assert out == f'{cli.KIND_NAME} "gamma" deleted\n'
    assert f'error: {cli.KIND_NAME} "alpha" not found in namespace agents' in err
    code, out, err = await run_cli("delete", "alpha", "--ignore-not-found", kubeconfig=kubeconfig)
    assert (code, out, err) == (0, "", "")


async def test_watch_prints_rows_as_sessions_change(
    kubeconfig: Path, fleet_of_sessions: None, cluster_with_crd: cluster.LocalCluster
) -> None:
    async def changes() -> None:
        await cluster_with_crd.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}")
        set_status(cluster_with_crd, "gamma", {"phase": "Joined"})
        cluster_with_crd.store.delete(
            cluster_with_crd.store.lookup(api.GROUP, api.VERSION, api.PLURAL), NS, "beta"
        )

    task = asyncio.create_task(changes())
    code, out, _ = await run_cli("watch", "--timeout", "1.5", kubeconfig=kubeconfig, clock=now)
    await task
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["NAME", "ROOM", "PHASE"],
        ["alpha", "room-a", "Joined"],
        ["beta", "room-b", "Pending"],
        ["gamma", "room-c", "<none>"],
        ["gamma", "room-c", "Joined"],
        ["beta", "room-b", "Deleted"],
    ]
    code, out, _ = await run_cli(
        "watch", "alpha", "--timeout", "0.5", "-o", "json", kubeconfig=kubeconfig
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "alpha")]


async def test_errors_have_their_exit_codes_and_say_what_to_do(
    kubeconfig: Path,
    cluster_with_crd: cluster.LocalCluster,
    localcluster_factory: Any,
    tmp_path: Path,
) -> None:
    bare: cluster.LocalCluster = await localcluster_factory()
    no_crd = bare.write_kubeconfig(tmp_path / "bare")
    code, _, err = await run_cli("get", kubeconfig=no_crd)
    assert code == cli.EXIT_NO_CRD and "install the chart: helm install" in err
    deny(cluster_with_crd, "list")
    code, _, err = await run_cli("get", kubeconfig=kubeconfig)
    assert (
        code == cli.EXIT_FORBIDDEN and 'verbs: ["create", "get", "list", "watch", "delete"]' in err
    )
    code, _, err = await run_cli("get", "-A", kubeconfig=kubeconfig)
    assert code == cli.EXIT_FORBIDDEN and "ClusterRole" in err
    dead = bare.write_kubeconfig(tmp_path / "dead")
    dead.write_text(dead.read_text().replace(bare.url, "http://127.0.0.1:9"))
    code, _, err = await run_cli("get", kubeconfig=dead)
    assert code == cli.EXIT_UNAVAILABLE and "cannot reach the Kubernetes API" in err
    assert (await run_cli("get", "a", "b", kubeconfig=kubeconfig))[0] == cli.EXIT_USAGE
    assert (await run_cli("--help", kubeconfig=kubeconfig))[0] == 0


async def test_create_wait_against_the_operator_reports_unschedulable_and_describe_shows_it(
    operator_env: OperatorEnv, kubeconfig: Path
) -> None:
    name = api.session_name_for_room("room-big")
    code, out, err = await run_cli(
        "create",
        "room-big",
        "--vram-mib",
        "100000",
        "--wait",
        "--fail-if-unschedulable",
        kubeconfig=kubeconfig,
    )
    expected = "no eligible GPU can ever hold 100000 MiB: the largest takes 81559 MiB"
    assert code == cli.EXIT_UNSCHEDULABLE
    assert f"{name}: Pending - {expected}" in err  # progress, from the operator's status
    assert f"cannot be scheduled: {expected}" in err
    for _ in range(50):  # the operator posts its Event in the background
        code, out, _ = await run_cli("describe", name, kubeconfig=kubeconfig)
        if "Unschedulable" in out.split("Events:", 1)[1]:
            break
        await asyncio.sleep(0.1)
    events = out.split("Events:", 1)[1]
    assert "Warning" in events and expected in events
