"""A worker process is killed (an OOM kill, a crash): the operator restarts it within its
budget, then ends the session with reason PodFailed, and everything is collected."""

from __future__ import annotations

import os
import signal

import pytest
from system_support import (
    JOIN_TIMEOUT,
    joined_session,
    phase_is,
    session_pods,
    status_of,
    wait_session,
)

from avatar_devtools.demo import system
from avatar_sdk.client import AvatarSessionClient


def kill_worker(demo: system.DemoSystem, pod_name: str) -> None:
    pid = demo.worker_pid(pod_name)
    assert pid is not None, f"no worker process for {pod_name}"
    os.kill(pid, signal.SIGKILL)


@pytest.mark.operator_settings(max_pod_restarts=1)
async def test_a_killed_worker_is_restarted_then_the_session_fails_and_is_collected(
    demo_system: system.DemoSystem, sessions: AvatarSessionClient
) -> None:
    agent, joined = await joined_session(demo_system, sessions, "crash-room")
    name, first_pod = joined.name, joined.status.pod_name
    assert first_pod == f"{name}-worker"
    avatar = joined.status.participant_id

    kill_worker(demo_system, first_pod)
    # one restart: a new Pod, the same participant back in the room
    restarted = await wait_session(
        demo_system, name, lambda obj: status_of(obj).get("podName") == f"{name}-worker-1"
    )
    assert status_of(restarted)["phase"] == "Joined"
    await wait_session(
        demo_system,
        name,
        lambda _: (
            avatar in agent.room.participants
            and demo_system.worker_pid(f"{name}-worker-1") is not None
        ),
        within=JOIN_TIMEOUT,
    )
    assert [p["metadata"]["name"] for p in session_pods(demo_system, name)] == [f"{name}-worker-1"]
    turn = await agent.speak(b"\x10\x20" * 12_000)  # 0.5 s: the new worker plays it
    assert turn.ack is not None and turn.ack.playback_position > 0.4

    kill_worker(demo_system, f"{name}-worker-1")
    failed = await wait_session(demo_system, name, phase_is("Ended", "Failed"))
    status = status_of(failed)
    assert (status["phase"], status["endReason"]) == ("Failed", "PodFailed")
    assert "137" in status["message"] and "restarts used up" in status["message"]
    assert await demo_system.wait_collected(name) == []
    assert avatar not in agent.room.participants
    await agent.leave()
