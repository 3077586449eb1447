"""The operator stops (cleanly, or killed with SIGKILL as its own process) and another starts
while a session is live: the session survives the outage (the worker keeps playing what the
agent sends), the new operator picks up the worker's reports, and nothing is created twice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from system_support import (
    joined_session,
    phase_is,
    session_events,
    session_pods,
    session_secrets,
    status_of,
    tone,
    wait_session,
)

from avatar_devtools.demo import system
from avatar_sdk.client import AvatarSessionClient


async def _survives_an_outage(
    demo: system.DemoSystem,
    sessions: AvatarSessionClient,
    room: str,
    outage: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
) -> None:
    """A joined session lives through `outage` (no operator) and `recover` (another one)."""
    agent, joined = await joined_session(demo, sessions, room)
    name = joined.name
    (pod_before,) = session_pods(demo, name)
    (secret_before,) = session_secrets(demo, name)
    placement = joined.status.placement
    assert placement is not None

    await outage()
    # the data plane does not need the operator: the agent's turn plays and is acknowledged
    turn = await agent.speak(tone(0.6))
    assert turn.ack is not None and not turn.ack.interrupted
    assert turn.ack.playback_position > 0.5
    await recover()

    # the worker's reports reach the new operator (it retried while the relay was down)
    reported = await wait_session(
        demo,
        name,
        lambda obj: (status_of(obj).get("playback") or {}).get("segments", 0) >= 1,
    )
    assert status_of(reported)["phase"] == "Joined"
    # nothing was placed, minted or started twice
    (pod_after,) = session_pods(demo, name)
    (secret_after,) = session_secrets(demo, name)
    assert pod_after["metadata"]["uid"] == pod_before["metadata"]["uid"]
    assert secret_after["metadata"]["uid"] == secret_before["metadata"]["uid"]
    assert status_of(reported)["placement"] == placement.to_wire()
    assert demo.reserved_vram_mib(name) == placement.vram_mib  # rebuilt, not re-placed
    assert demo.reserved_vram_mib() == placement.vram_mib
    assert demo.worker_pid(pod_after["metadata"]["name"]) is not None
    assert len(session_events(demo, name, "Scheduled")) == 1

    await agent.leave()
    ended = await wait_session(demo, name, phase_is("Ended", "Failed"))
    assert status_of(ended)["endReason"] == "AgentLeft"
    assert await demo.wait_collected(name) == []


async def test_a_session_survives_an_operator_restart(
    demo_system: system.DemoSystem, sessions: AvatarSessionClient
) -> None:
    await _survives_an_outage(
        demo_system,
        sessions,
        "restart-room",
        outage=demo_system.stop_operator,
        recover=demo_system.start_operator,
    )


@pytest.mark.operator_process
async def test_a_session_survives_its_operator_being_killed(
    demo_system: system.DemoSystem, sessions: AvatarSessionClient
) -> None:
    """SIGKILL, not a clean stop: the Lease is still held by the dead replica, nothing was
    flushed. Another replica waits the Lease out, rebuilds from the API and carries on."""
    assert demo_system.operator_process is not None and demo_system.operator is None

    async def kill() -> None:
        demo_system.kill_operator_process()

    await _survives_an_outage(
        demo_system,
        sessions,
        "killed-room",
        outage=kill,
        recover=lambda: demo_system.start_operator(identity="avatar-operator-1"),
    )
