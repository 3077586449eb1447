"""Every way out of a session has its own end reason, and nothing is left behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lifecycle_support import NS, Env, phase_is

from avatar_sdk import api

pytestmark = pytest.mark.realcluster


async def started(env: Env, manifest: Any, name: str, **spec: Any) -> dict[str, Any]:
    env.create(manifest(name, **spec))
    await env.wait_for("pods", f"{name}-worker")
    return await env.wait_session(name, phase_is("Starting"))


async def joined(env: Env, operator: Any, manifest: Any, name: str, **spec: Any) -> None:
    await started(env, manifest, name, **spec)
    response = await env.report(operator, name, {"phase": "Joined"})
    assert response.status == 200
    await env.wait_session(name, phase_is("Joined"))


async def assert_collected(env: Env, operator: Any, name: str) -> None:
    await env.wait_gone("pods", f"{name}-worker")
    await env.wait_gone("secrets", f"{name}-token")
    engine = operator.reconciler.placement
    async with asyncio.timeout(5):
        while engine.placement_of(f"{NS}/{name}") is not None or any(
            p.key == f"{NS}/{name}" for p in engine.pending()
        ):
            await asyncio.sleep(0.02)


def end_reason(session: dict[str, Any]) -> str:
    return str(session["status"]["endReason"])


@pytest.mark.parametrize("reason", ["RoomEnded", "AgentLeft"])
async def test_the_worker_ends_the_session(env: Env, manifest: Any, reason: str) -> None:
    operator = await env.start_operator()
    await joined(env, operator, manifest, "w")
    token = env.status_token("w")
    await env.report(operator, "w", {"phase": "Ended", "endReason": reason})
    session = await env.wait_session("w", phase_is("Ended"))
    assert end_reason(session) == reason
    conditions = {c["type"]: c for c in session["status"]["conditions"]}
    assert conditions["Ended"]["status"] == "True" and conditions["Ended"]["reason"] == reason
    await assert_collected(env, operator, "w")
    # a late report from the dying worker changes nothing
    late = await env.report(operator, "w", {"fps": 30.0}, token=token)
    assert late.status in (401, 409)


async def test_join_timeout(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    await started(env, manifest, "jt", lifetime={"joinTimeoutSeconds": 5})
    session = await env.wait_session("jt", phase_is("Failed"), within=10)
    assert end_reason(session) == "JoinTimeout"
    await assert_collected(env, operator, "jt")


async def test_max_duration(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    await joined(env, operator, manifest, "md", lifetime={"maxDurationSeconds": 60})
    # joinedAt is the operator's record (written when the worker said Joined): moved an hour
    # back through the status subresource, as an administrator could, the session is overdue
    env.patch_status(api.PLURAL, "md", {"joinedAt": "2020-01-01T00:00:00Z"})
    session = await env.wait_session("md", phase_is("Ended"))
    assert end_reason(session) == "MaxDuration"
    await assert_collected(env, operator, "md")


@pytest.mark.parametrize(
    ("joined_at", "status"),
    [
        ("2020-01-01T00:00:00Z", 200),  # accepted, and ignored: the operator's time counts
        ("2999-01-01T00:00:00Z", 422),  # in the future beyond any clock skew
        (None, 403),  # never cleared
        ("yesterday", 422),
    ],
)
async def test_a_worker_cannot_move_its_own_lifetime(
    env: Env, manifest: Any, joined_at: Any, status: int
) -> None:
    """The relay checks the times a worker reports, and every lifetime limit counts from the
    operator's own record: a worker that claims to have joined in 2020, in 2999 or never keeps
    neither its session nor its GPU past maxDurationSeconds, nor ends it early."""
    operator = await env.start_operator()
    await joined(env, operator, manifest, "mdw", lifetime={"maxDurationSeconds": 60})
    recorded = env.get(api.PLURAL, "mdw")["status"]["joinedAt"]
    response = await env.report(operator, "mdw", {"joinedAt": joined_at})
    assert response.status == status, await response.text()
    await env.report(operator, "mdw", {"phase": "Joined", "joinedAt": "2020-01-01T00:00:00Z"})
    await asyncio.sleep(1.5)  # a sweep or more
    session = env.get(api.PLURAL, "mdw")
    assert session["status"]["phase"] == "Joined"
    assert session["status"]["joinedAt"] == recorded


async def test_idle_timeout(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    await joined(env, operator, manifest, "idle", lifetime={"idleTimeoutSeconds": 1})
    session = await env.wait_session("idle", phase_is("Ended"), within=10)
    assert end_reason(session) == "IdleTimeout"
    await assert_collected(env, operator, "idle")


async def test_activity_keeps_a_session_alive(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    await joined(env, operator, manifest, "busy", lifetime={"idleTimeoutSeconds": 2})
    for _ in range(6):
        await asyncio.sleep(0.5)
        now = api.now().isoformat().replace("+00:00", "Z")
        await env.report(
            operator, "busy", {"playback": {"state": "Speaking", "lastActivityAt": now}}
        )
    session = env.get(api.PLURAL, "busy")
    assert session is not None and session["status"]["phase"] == "Joined"


async def test_pod_failure_restarts_then_fails(env: Env, manifest: Any) -> None:
    operator = await env.start_operator(max_pod_restarts=1)
    await joined(env, operator, manifest, "pf")
    await env.control("fail-pod", namespace=NS, name="pf-worker", reason="Error", exitCode=3)
    restarted = await env.wait_for("pods", "pf-worker-1")
    assert restarted["metadata"]["annotations"][f"{api.GROUP}/restart"] == "1"
    session = await env.wait_session("pf", lambda o: o["status"].get("podName") == "pf-worker-1")
    assert session["status"]["placement"]  # the same reservation, not a second one
    first_join = session["status"]["joinedAt"]
    # out of the room until the new worker says otherwise: the phase stays, the conditions say
    conditions = {c["type"]: c for c in session["status"]["conditions"]}
    assert session["status"]["phase"] == "Joined"
    assert (conditions["Joined"]["status"], conditions["Joined"]["reason"]) == (
        "False",
        "Restarting",
    )
    assert "pf-worker-1" in conditions["Joined"]["message"]
    assert conditions["PodReady"]["status"] == "False"
    await env.wait_for(
        "pods", "pf-worker-1", lambda p: p.get("status", {}).get("phase") == "Running"
    )
    await env.report(operator, "pf", {"phase": "Joined"})
    session = await env.wait_session(
        "pf", lambda o: o["status"].get("message") == "in the room again, with a new worker"
    )
    conditions = {c["type"]: c for c in session["status"]["conditions"]}
    assert conditions["Joined"]["status"] == "True" and conditions["PodReady"]["status"] == "True"
    assert session["status"]["joinedAt"] == first_join  # the lifetime counts from the first
    await env.control(
        "fail-pod", namespace=NS, name="pf-worker-1", reason="OOMKilled", exitCode=137
    )
    session = await env.wait_session("pf", phase_is("Failed"))
    assert end_reason(session) == "PodFailed"
    assert "137" in session["status"]["message"]
    await env.wait_gone("pods", "pf-worker-1")
    await assert_collected(env, operator, "pf")


async def test_node_lost(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    await joined(env, operator, manifest, "nl")
    node = env.get(api.PLURAL, "nl")["status"]["placement"]["node"]  # type: ignore[index]
    # the emulator fails the node's Pods and deletes the Node; on the real control plane the
    # node goes silent and the controller-manager marks it NotReady
    await env.control("remove-node", name=node)
    session = await env.wait_session("nl", phase_is("Failed"), within=20)
    assert end_reason(session) == "NodeLost"
    assert node in session["status"]["message"]
    await assert_collected(env, operator, "nl")


@pytest.mark.parametrize("when", ["Pending", "Starting", "Joined", "Ended"])
async def test_deleting_a_session_releases_everything(env: Env, manifest: Any, when: str) -> None:
    operator = await env.start_operator()
    if when == "Pending":
        # 200 GiB fits on no GPU of this fleet
        env.create(manifest("d", resources={"vramMiB": 200 * 1024}))
        await env.wait_session("d", phase_is("Pending"))
    elif when == "Starting":
        await started(env, manifest, "d")
    else:
        await joined(env, operator, manifest, "d")
        if when == "Ended":
            await env.report(operator, "d", {"phase": "Ended", "endReason": "RoomEnded"})
            await env.wait_session("d", phase_is("Ended"))
    env.delete(api.PLURAL, "d")
    await env.wait_gone(api.PLURAL, "d")
    await assert_collected(env, operator, "d")
