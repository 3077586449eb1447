"""Helpers for the whole-system tests: a cheap session spec, waiting on the emulated API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from avatar_devtools.demo import agent as demo_agent
from avatar_devtools.demo import system
from avatar_operator import manifests
from avatar_sdk import api
from avatar_sdk.client import AvatarSessionClient

# Workers render with the CPU-only waveform renderer at a small size: two may run at once.
CHEAP_SPEC: dict[str, Any] = {
    "avatar": {"renderer": "waveform"},
    "video": {"width": 128, "height": 128, "fps": 15},
}
AGENT_ID = "agent"
JOIN_TIMEOUT = 60.0
RATE = 24_000


def tone(seconds: float, level: int = 6000) -> bytes:
    """A loud square-ish tone of s16le mono PCM (never digital silence)."""
    samples = int(seconds * RATE)
    period = RATE // 200
    return b"".join(
        (level if (i // (period // 2)) % 2 else -level).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )


def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status") or {}


async def wait_session(
    demo: system.DemoSystem,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 30.0,
) -> dict[str, Any]:
    """Until the stored session satisfies `predicate`; returns it."""
    async with asyncio.timeout(within):
        while True:
            obj = demo.session(name)
            if obj is not None and predicate(obj):
                return obj
            await asyncio.sleep(0.05)


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: status_of(obj).get("phase") in phases


def session_pods(demo: system.DemoSystem, name: str) -> list[dict[str, Any]]:
    label = manifests.LABEL_SESSION
    return [p for p in demo.pods() if (p["metadata"].get("labels") or {}).get(label) == name]


def session_secrets(demo: system.DemoSystem, name: str) -> list[dict[str, Any]]:
    label = manifests.LABEL_SESSION
    return [s for s in demo.secrets() if (s["metadata"].get("labels") or {}).get(label) == name]


def session_events(demo: system.DemoSystem, name: str, reason: str) -> list[dict[str, Any]]:
    info = demo.store.lookup("", "v1", "events")
    return [
        e.obj
        for e in demo.store.list(info, system.NAMESPACE).records
        if e.obj["involvedObject"]["name"] == name and e.obj["reason"] == reason
    ]


def worker_env(pod: dict[str, Any]) -> dict[str, str]:
    container = pod["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


async def joined_session(
    demo: system.DemoSystem, sessions: AvatarSessionClient, room_id: str
) -> tuple[demo_agent.DemoAgent, api.AvatarSession]:
    """The agent in a fresh room, and its avatar's session once Joined (cheap spec)."""
    agent = demo_agent.DemoAgent(demo.open_room(room_id), AGENT_ID)
    agent.join()
    session = await sessions.create(room_id, agent_participant_id=AGENT_ID, spec=CHEAP_SPEC)
    return agent, await sessions.wait_until_joined(session.name, timeout=JOIN_TIMEOUT)
