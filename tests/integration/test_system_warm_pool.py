"""A warm pool with real worker processes: the worker prepares its renderer before any session,
a session that names the pool joins on it (no process started for it), plays its agent's audio,
ends, leaves nothing behind, and the pool has started a fresh worker for the next one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from system_support import AGENT_ID, CHEAP_SPEC, JOIN_TIMEOUT, phase_is, status_of, wait_session

from avatar_devtools.demo import agent as demo_agent
from avatar_devtools.demo import system
from avatar_sdk import api, pools
from avatar_sdk.client import AvatarSessionClient


def pool_manifest(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": pools.POOL_KIND,
        "metadata": {"name": name, "namespace": system.NAMESPACE},
        "spec": {"replicas": replicas, "template": CHEAP_SPEC},
    }


def pool_workers(demo: system.DemoSystem, pool: str, state: str) -> list[dict[str, Any]]:
    return [
        pod
        for pod in demo.pods()
        if (pod["metadata"].get("labels") or {}).get(pools.POOL_LABEL) == pool
        and pod["metadata"]["labels"].get(pools.POOL_STATE_LABEL) == state
        and not pod["metadata"].get("deletionTimestamp")
    ]


async def wait_ready(demo: system.DemoSystem, pool: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(JOIN_TIMEOUT):
        while len(found := pool_workers(demo, pool, "ready")) < count:
            await asyncio.sleep(0.05)
    return found


async def test_a_warm_worker_serves_one_session_then_the_pool_starts_a_fresh_one(
    demo_system: system.DemoSystem, sessions: AvatarSessionClient
) -> None:
    assert demo_system.cluster is not None
    demo_system.cluster.apply(pool_manifest("warm", 1))
    (warm,) = await wait_ready(demo_system, "warm", 1)
    warm_name = warm["metadata"]["name"]
    warm_pid = demo_system.worker_pid(warm_name)
    assert warm_pid is not None
    assert "warm worker ready" in demo_system.worker_log(warm_name)

    agent = demo_agent.DemoAgent(demo_system.open_room("room-warm"), AGENT_ID)
    agent.join()
    started = time.monotonic()
    created = await sessions.create(
        "room-warm", agent_participant_id=AGENT_ID, spec={"poolRef": {"name": "warm"}}
    )
    joined = await sessions.wait_until_joined(created.name, timeout=JOIN_TIMEOUT)
    took = time.monotonic() - started
    assert joined.status.pod_name == warm_name
    assert demo_system.worker_pid(warm_name) == warm_pid  # the same prepared process
    assert joined.status.participant_id in agent.room.participants
    # the warm join skips the process start and the renderer's preparation: well under the
    # seconds a cold one takes here (a generous bound: these machines are shared)
    assert took < 10.0, f"warm join took {took:.2f} s"

    turn = await agent.speak(b"\x00\x10" * 9_600)  # 0.4 s
    assert turn.ack is not None and turn.ack.playback_position > 0.3

    # the pool refilled while the session ran
    (fresh,) = await wait_ready(demo_system, "warm", 1)
    assert fresh["metadata"]["name"] != warm_name

    await agent.leave()
    ended = await wait_session(demo_system, created.name, phase_is("Ended", "Failed"))
    assert status_of(ended)["endReason"] == "AgentLeft"
    assert await demo_system.wait_collected(created.name) == []
    assert demo_system.worker_pid(warm_name) is None  # one session, then the process is gone
    # only the fresh worker's GPU is held now
    assert demo_system.reserved_vram_mib() == api.DEFAULT_VRAM_MIB
