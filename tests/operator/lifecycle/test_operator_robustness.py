"""Bad input, restarts, bursts, waiting for capacity: the operator converges and stays up."""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
from typing import Any

import pytest
from lifecycle_support import NS, Env, phase_is

from avatar_sdk import api, crd

# Specs only the operator's models can refuse: a CRD installed without its schema (an old
# chart, --skip-crds with a hand-made CRD) lets them through, and the operator must not trust it.
INVALID_FOR_THE_OPERATOR: list[tuple[dict[str, Any], str]] = [
    ({}, "spec.roomId"),
    ({"roomId": ""}, "spec.roomId"),
    ({"roomId": "a b"}, "spec.roomId"),
    ({"roomId": "r", "video": {"fps": 0}}, "spec.video.fps"),
    ({"roomId": "r", "video": {"fps": 1000}}, "spec.video.fps"),
    ({"roomId": "r", "video": {"width": 513}}, "spec.video.width"),
    ({"roomId": "r", "video": {"width": 1920, "height": 1920}}, "spec.video.height"),
    ({"roomId": "r", "audio": {"sampleRate": 44_000}}, "spec.audio.sampleRate"),
    ({"roomId": "r", "audio": {"channels": 3}}, "spec.audio.channels"),
    ({"roomId": "r", "resources": {"vramMiB": -1}}, "spec.resources.vramMiB"),
    ({"roomId": "r", "resources": {"gpu": "mig"}}, "spec.resources.gpu"),
    ({"roomId": "r", "resources": {"gpu": "none", "vramMiB": 1024}}, "spec.resources.vramMiB"),
    ({"roomId": "r", "avatar": {"renderer": "model"}}, "spec.avatar.modelPath"),
    ({"roomId": "r", "lifetime": {"joinTimeoutSeconds": -5}}, "spec.lifetime.joinTimeoutSeconds"),
    ({"roomId": "r", "credentials": {"tokenTtlSeconds": 5}}, "spec.credentials.tokenTtlSeconds"),
    ({"roomId": "r", "unknownField": 1}, "spec.unknownField"),
]


def permissive_crd() -> dict[str, Any]:
    body = copy.deepcopy(crd.custom_resource_definition())
    schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema["required"] = []
    return body


async def test_invalid_specs_fail_with_the_field_named_and_the_operator_stays_up(
    env: Env, manifest: Any
) -> None:
    env.local.apply(permissive_crd())
    operator = await env.start_operator()
    for i, (spec, _) in enumerate(INVALID_FOR_THE_OPERATOR):
        env.create({**manifest(f"bad-{i}"), "spec": spec})
    for i, (_, field) in enumerate(INVALID_FOR_THE_OPERATOR):
        session = await env.wait_session(f"bad-{i}", phase_is("Failed"))
        assert session["status"]["endReason"] == "InvalidSpec"
        assert field in session["status"]["message"], (field, session["status"]["message"])
        condition = next(c for c in session["status"]["conditions"] if c["type"] == "Ended")
        assert condition["reason"] == "InvalidSpec"
    assert not env.list("pods")
    events = await env.wait_events("InvalidSpec", len(INVALID_FOR_THE_OPERATOR))
    assert len(events) == len(INVALID_FOR_THE_OPERATOR)
    # still serving: a valid session goes through
    env.create(manifest("good"))
    await env.wait_session("good", phase_is("Starting"))
    assert operator.is_active()


async def test_unschedulable_waits_then_is_placed_when_capacity_frees(
    env: Env, manifest: Any
) -> None:
    operator = await env.start_operator()
    # the fleet: 2 nodes × 2 GPUs of 81,559 MiB; each of these takes a whole GPU's worth
    big = {"resources": {"vramMiB": 78 * 1024}}
    for i in range(4):
        env.create(manifest(f"big-{i}", **big))
    for i in range(4):
        await env.wait_session(f"big-{i}", phase_is("Starting"))
    env.create(manifest("late", **big))
    session = await env.wait_session("late", phase_is("Pending"))
    message = session["status"]["message"]
    assert "79872" in message  # the VRAM asked is named
    condition = next(c for c in session["status"]["conditions"] if c["type"] == "Scheduled")
    assert condition["status"] == "False" and condition["reason"] == "Unschedulable"
    assert len(await env.wait_events("Unschedulable", 1)) == 1
    await env.report(operator, "big-0", {"phase": "Joined"})
    await env.report(operator, "big-0", {"phase": "Ended", "endReason": "RoomEnded"})
    session = await env.wait_session("late", phase_is("Starting"))
    freed = env.get(api.PLURAL, "big-0")
    assert freed is not None
    assert session["status"]["placement"]["node"] == freed["status"]["placement"]["node"]
    assert session["status"]["placement"]["gpu"] == freed["status"]["placement"]["gpu"]


@pytest.mark.realcluster
async def test_missing_credentials_hold_the_gpu_and_say_how_to_fix(env: Env, manifest: Any) -> None:
    await env.start_operator()
    env.create(manifest("nocreds", credentials={"secretRef": {"name": "absent"}}))
    session = await env.wait_session("nocreds", phase_is("Scheduled"))
    assert "kubectl -n agents create secret generic absent" in session["status"]["message"]
    assert env.get("pods", "nocreds-worker") is None
    env.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "absent", "namespace": NS},
            "data": {
                "apiKey": base64.b64encode(b"k").decode(),
                "secret": base64.b64encode(b"s" * 32).decode(),
            },
        }
    )
    await env.wait_session("nocreds", phase_is("Starting"), within=15)


@pytest.mark.realcluster
async def test_restart_mid_lifecycle_converges_without_duplicates(env: Env, manifest: Any) -> None:
    first = await env.start_operator()
    for name in ("r1", "r2", "r3"):
        env.create(manifest(name))
    for name in ("r1", "r2", "r3"):
        await env.wait_session(name, phase_is("Starting"))
    await env.report(first, "r1", {"phase": "Joined"})
    await env.wait_session("r1", phase_is("Joined"))
    placements = {n: env.get(api.PLURAL, n)["status"]["placement"] for n in ("r1", "r2", "r3")}  # type: ignore[index]
    await env.stop_operator(first)

    env.create(manifest("r4"))  # created while no operator runs
    second = await env.start_operator()
    await env.wait_session("r4", phase_is("Starting"))
    await env.report(second, "r2", {"phase": "Joined"})  # the new leader takes reports
    await env.wait_session("r2", phase_is("Joined"))
    for name, placement in placements.items():
        assert env.get(api.PLURAL, name)["status"]["placement"] == placement  # type: ignore[index]
    pods = [p["metadata"]["name"] for p in env.list("pods")]
    assert sorted(pods) == ["r1-worker", "r2-worker", "r3-worker", "r4-worker"]
    ledger = second.reconciler.placement.ledger
    slots = [(r.node, r.gpu) for r in ledger]
    assert len(ledger) == 4, sorted(r.key for r in ledger)
    r4 = env.get(api.PLURAL, "r4")["status"]["placement"]  # type: ignore[index]
    assert (r4["node"], r4["gpu"]) in slots


@pytest.mark.realcluster
async def test_restart_mid_burst_places_nothing_twice(env: Env, manifest: Any) -> None:
    first = await env.start_operator()
    for i in range(40):
        env.create(manifest(f"b-{i}", resources={"vramMiB": 4096}))
    await asyncio.sleep(0.3)  # some placed, some not yet
    await env.stop_operator(first)
    second = await env.start_operator()
    for i in range(40):
        await env.wait_session(f"b-{i}", phase_is("Starting"), within=30)
    pods = env.list("pods")
    assert len(pods) == 40
    per_gpu: dict[tuple[str, int], int] = {}
    for i in range(40):
        placement = env.get(api.PLURAL, f"b-{i}")["status"]["placement"]  # type: ignore[index]
        key = (placement["node"], placement["gpu"])
        per_gpu[key] = per_gpu.get(key, 0) + placement["vramMiB"]
    for (node, _), used in per_gpu.items():
        labels = env.get("nodes", node, None)["metadata"]["labels"]  # type: ignore[index]
        assert used <= int(labels["nvidia.com/gpu.memory"]), (node, used)
    assert sum(r.vram_mib for r in second.reconciler.placement.ledger) == 40 * 4096


@pytest.mark.slow
async def test_a_hundred_sessions_at_once(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    for i in range(100):
        env.create(manifest(f"h-{i}", resources={"vramMiB": 1024}))
    for i in range(100):
        await env.wait_session(f"h-{i}", phase_is("Starting"), within=60)
    await asyncio.gather(*(env.report(operator, f"h-{i}", {"phase": "Joined"}) for i in range(100)))
    for i in range(100):
        await env.wait_session(f"h-{i}", phase_is("Joined"), within=30)
    assert len(env.list("pods")) == 100
    assert len(env.list("secrets")) == 100


@pytest.mark.realcluster
async def test_orphans_of_a_vanished_session_are_swept_at_start_up(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # at INFO, as the chart runs it: the sweep's log line once broke the operator's start-up
    caplog.set_level(logging.INFO, logger="avatar_operator")
    labels = {
        "app.kubernetes.io/name": "avatar-worker",
        "app.kubernetes.io/managed-by": "avatar-operator",
        f"{api.GROUP}/session-uid": "gone-uid",
    }
    env.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ghost-token", "namespace": NS, "labels": labels},
        }
    )
    env.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ghost-worker", "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "worker", "image": "x"}]},
        }
    )
    unrelated = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keep", "namespace": env.operator_ns},
    }
    env.create(unrelated)
    await env.start_operator()
    await env.wait_gone("secrets", "ghost-token")
    await env.wait_gone("pods", "ghost-worker")
    assert env.get("secrets", "keep", env.operator_ns) is not None
    if env.backend.name == "emulator":  # the operator's log is this process's
        assert any(r.getMessage() == "deleted orphan" for r in caplog.records)
