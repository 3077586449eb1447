"""Two sessions on one simulated GPU node: bin-packed onto the node in use, never overcommitting
a GPU, each worker process pinned to the node and GPU its session was given."""

from __future__ import annotations

import asyncio

from system_support import (
    AGENT_ID,
    CHEAP_SPEC,
    JOIN_TIMEOUT,
    phase_is,
    session_pods,
    status_of,
    wait_session,
    worker_env,
)

from avatar_devtools.demo import agent as demo_agent
from avatar_devtools.demo import system
from avatar_sdk.client import AvatarSessionClient

GPU_MIB = 81559  # system.FLEET's H100s
VRAM_MIB = 50_000  # two of these do not fit on one GPU


async def test_two_sessions_share_a_node_on_separate_gpus(
    demo_system: system.DemoSystem, sessions: AvatarSessionClient
) -> None:
    rooms = ["room-one", "room-two"]
    agents = []
    for room_id in rooms:
        agent = demo_agent.DemoAgent(demo_system.open_room(room_id), AGENT_ID)
        agent.join()
        agents.append(agent)
    spec = {**CHEAP_SPEC, "resources": {"vramMiB": VRAM_MIB}}
    created = [
        await sessions.create(room_id, agent_participant_id=AGENT_ID, spec=spec)
        for room_id in rooms
    ]
    joined = await asyncio.gather(
        *(sessions.wait_until_joined(s.name, timeout=JOIN_TIMEOUT) for s in created)
    )
    placements = [s.status.placement for s in joined]
    assert all(p is not None for p in placements)
    nodes = {p.node for p in placements if p is not None}
    gpus = sorted(p.gpu for p in placements if p is not None and p.gpu is not None)
    assert nodes == {"h100-0"}  # the node in use is filled before another is opened
    assert gpus == [0, 1]  # 2 × 50,000 MiB do not fit one 81,559 MiB GPU
    assert demo_system.reserved_vram_mib() == 2 * VRAM_MIB <= 2 * GPU_MIB
    for session in joined:
        placement = session.status.placement
        assert placement is not None
        (pod,) = session_pods(demo_system, session.name)
        assert pod["spec"]["nodeName"] == placement.node
        assert worker_env(pod)["NVIDIA_VISIBLE_DEVICES"] == str(placement.gpu)
        assert demo_system.worker_pid(pod["metadata"]["name"]) is not None
    # each worker is in its own room only, and plays its own agent's audio
    for agent, session in zip(agents, joined, strict=True):
        assert session.status.participant_id in agent.room.participants
        turn = await agent.speak(b"\x00\x10" * 9_600)  # 0.4 s
        assert turn.ack is not None and turn.ack.playback_position > 0.3

    for agent in agents:
        await agent.leave()
    for session in joined:
        ended = await wait_session(demo_system, session.name, phase_is("Ended", "Failed"))
        assert status_of(ended)["endReason"] == "AgentLeft"
        assert await demo_system.wait_collected(session.name) == []
    assert demo_system.reserved_vram_mib() == 0
