"""The demo's warm join: the same avatar again, from an AvatarPool, beside the cold one.

After the first (cold) session has gone, the agent's side creates an AvatarPool `demo` of one
worker with the first session's settings and waits until that worker is ready (its process
started, renderer prepared, a first frame drawn, its assignment asked for). A second agent in a
second room then creates a session naming the pool: the ready worker is claimed and joins at
once (create → Joined is measured as for the cold one), the agent speaks the reply to its end,
leaves, and the session goes like any other. The pool is deleted last, and what it kept is
checked gone too: its refilled worker, its Pod and Secret, its GPU reservation.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from avatar_devtools.demo import agent as demo_agent
from avatar_devtools.demo import board as demo_board
from avatar_devtools.demo import speech
from avatar_sdk import api, pools

if TYPE_CHECKING:
    from avatar_devtools.demo.scenario import Demo, Options
    from avatar_sdk.client import AvatarSessionClient

POOL_NAME = "demo"
END_TIMEOUT_SECONDS = 20.0


@dataclasses.dataclass
class WarmJoin:
    pool_ready_s: float | None = None  # pool created → its worker ready
    time_to_joined_s: float | None = None  # session created → Joined, on the warm worker
    pod_name: str = ""
    served_warm: bool = False
    played: bool = False  # the turn was acknowledged as played to its end
    leaks: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)


def _finished(session: api.AvatarSession) -> bool:
    phase = session.status.phase
    return phase is not None and phase.finished


def pool_leftovers(demo: Demo) -> list[str]:
    """What the deleted pool left: its Pods, and any VRAM still reserved (the first session,
    the warm one and the pool are all gone by then: nothing may be held)."""
    found = []
    for pod in demo.pods():
        labels = pod["metadata"].get("labels") or {}
        if labels.get(pools.POOL_LABEL) == POOL_NAME:
            found.append(f"pool worker {pod['metadata']['name']}")
    reserved = demo.reserved_vram_mib()
    if reserved:
        found.append(f"GPU reservations of {reserved} MiB")
    return found


async def run(
    demo: Demo,
    options: Options,
    sessions: AvatarSessionClient,
    board: demo_board.StatusBoard,
    words: speech.Speech,
    agent_id: str,
) -> WarmJoin:
    loop = asyncio.get_running_loop()
    result = WarmJoin()
    template: dict[str, Any] = {
        "avatar": {"renderer": options.renderer},
        "video": {"width": options.width, "height": options.height, "fps": options.fps},
        "audio": {"sampleRate": options.sample_rate},
        "resources": {"vramMiB": options.vram_mib},
    }
    started = loop.time()
    await sessions.create_pool(POOL_NAME, replicas=1, template=template)
    board.event(f"AvatarPool {POOL_NAME} created: 1 warm worker with the same settings")
    agent: demo_agent.DemoAgent | None = None
    session_name = ""
    try:
        try:
            await sessions.wait_until_pool_ready(POOL_NAME, timeout=options.join_timeout)
        except TimeoutError as exc:
            result.problems.append(str(exc))
            return result
        result.pool_ready_s = loop.time() - started
        board.event(f"warm worker ready after {result.pool_ready_s:.2f} s (renderer prepared)")
        room_id = f"{options.room_id}-warm"
        agent = demo_agent.DemoAgent(
            demo.open_room(room_id), agent_id, sample_rate=options.sample_rate
        )
        agent.join()
        created_at = loop.time()
        session = await sessions.create(
            room_id, agent_participant_id=agent_id, spec={"poolRef": {"name": POOL_NAME}}
        )
        session_name = session.name
        joined = await sessions.wait_until_joined(session.name, timeout=options.join_timeout)
        result.time_to_joined_s = loop.time() - created_at
        result.pod_name = joined.status.pod_name or ""
        pod = demo.pod(result.pod_name) or {}
        labels = (pod.get("metadata") or {}).get("labels") or {}
        result.served_warm = labels.get(pools.POOL_LABEL) == POOL_NAME
        board.event(
            f"warm session {session.name} joined after {result.time_to_joined_s:.2f} s on "
            f"{result.pod_name} ({'warm' if result.served_warm else 'cold'})"
        )
        if not result.served_warm:
            result.problems.append(f"the warm session was served cold by {result.pod_name}")
        try:
            turn = await agent.speak(words.reply)
        except TimeoutError:
            result.problems.append("the warm session's turn got no stream_ended ack in time")
        else:
            result.played = turn.ack is not None and not turn.ack.interrupted
        if not result.played and not result.problems:
            result.problems.append("the warm session's turn was not acknowledged as played")
        await agent.leave()
        agent = None
        try:
            async with asyncio.timeout(END_TIMEOUT_SECONDS):
                while True:
                    if _finished(await sessions.get(session.name)):
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            result.problems.append(f"the warm session did not end in {END_TIMEOUT_SECONDS:.0f} s")
        await sessions.delete(session.name, uid=session.metadata.get("uid"), wait=True)
    finally:
        if agent is not None:
            await agent.leave()
        await sessions.delete_pool(POOL_NAME)
    # with the pool gone too (its fresh worker holds a process and a GPU, which the real
    # system's checks, made for the whole system, would count against the session)
    if session_name:
        result.leaks = await demo.wait_collected(session_name)
    try:
        async with asyncio.timeout(END_TIMEOUT_SECONDS):
            while True:
                if not pool_leftovers(demo):
                    break
                await asyncio.sleep(0.1)
    except TimeoutError:
        result.leaks.extend(left for left in pool_leftovers(demo) if left not in result.leaks)
    if not result.leaks:
        board.event(f"AvatarPool {POOL_NAME} deleted: its worker, Secret and GPU are gone")
    return result
