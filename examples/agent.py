"""A voice agent with a lip-synced avatar from avatar-operator (videosdk-agents 1.0.30).

The only avatar-specific line is `avatar=KubernetesAvatar(...)` in the RoomOptions: when the
agent connects to the room, it creates an AvatarSession in its own namespace and waits until the
avatar's worker has joined the room; when the agent shuts down, the session is deleted (its Pod
and Secret go with it). The agent's TTS audio reaches the avatar over the room's data channel.

Run it in a Pod whose ServiceAccount may create/get/list/watch/delete `avatarsessions` in its
namespace (README: "The agent side"), or anywhere with a kubeconfig.

    pip install "avatar-operator[agent]" videosdk-agents==1.0.30 \\
        videosdk-plugins-deepgram==1.0.30 videosdk-plugins-openai==1.0.30 \\
        videosdk-plugins-elevenlabs==1.0.30 videosdk-plugins-silero==1.0.30
    ROOM_ID=abcd-efgh-ijkl python examples/agent.py

Python 3.12 or newer: videosdk-agents' avatar support imports a module that does not parse on
3.11. Environment: VIDEOSDK_AUTH_TOKEN (the agent joins with it), VIDEOSDK_API_KEY and
VIDEOSDK_SECRET_KEY (the framework signs an avatar token with them before it calls the avatar;
KubernetesAvatar does not use that token — the operator gives the worker its own), the
plugins' DEEPGRAM_API_KEY, OPENAI_API_KEY and ELEVENLABS_API_KEY, and ROOM_ID.
AVATAR_FRAMED_AUDIO=1 sends the audio in the project's framed format (lost packets concealed,
interrupts exact) instead of the framework's raw PCM.
"""

from __future__ import annotations

import asyncio
import logging
import os

from videosdk.agents import Agent, AgentSession, JobContext, Pipeline, RoomOptions, WorkerJob
from videosdk.plugins.deepgram import DeepgramSTT
from videosdk.plugins.elevenlabs import ElevenLabsTTS
from videosdk.plugins.openai import OpenAILLM
from videosdk.plugins.silero import SileroVAD

from avatar_sdk.agents import KubernetesAvatar
from avatar_sdk.client import AvatarError

logger = logging.getLogger("agent")

AGENT_PARTICIPANT_ID = "support-agent"  # the avatar listens to this participant only


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(
            instructions="You are a friendly support assistant. Answer in one or two sentences."
        )

    async def on_enter(self) -> None:
        await self.session.say("Hi! I'm here to help. What can I do for you?")

    async def on_exit(self) -> None:
        await self.session.say("Goodbye!")


def make_context() -> JobContext:
    avatar = KubernetesAvatar(
        agent_participant_id=AGENT_PARTICIPANT_ID,
        # Anything of the AvatarSession spec but the room (which comes from the room options):
        spec={
            "avatar": {"renderer": "portrait"},
            "video": {"width": 512, "height": 512, "fps": 30},
            "audio": {"sampleRate": 24_000},  # what ElevenLabs' pcm_24000 produces
            "resources": {"vramMiB": 2048},
            "lifetime": {"joinTimeoutSeconds": 60, "idleTimeoutSeconds": 600},
        },
        join_timeout=90,  # includes waiting for a GPU when the cluster is full
    )
    room_options = RoomOptions(
        room_id=os.environ["ROOM_ID"],
        name="Support Agent",
        agent_participant_id=AGENT_PARTICIPANT_ID,
        avatar=avatar,
        playground=False,
    )
    return JobContext(room_options=room_options)


async def entrypoint(ctx: JobContext) -> None:
    pipeline = Pipeline(
        stt=DeepgramSTT(model="nova-2", language="en-US"),
        llm=OpenAILLM(model="gpt-4o-mini"),
        tts=ElevenLabsTTS(),
        vad=SileroVAD(),
    )
    session = AgentSession(agent=Assistant(), pipeline=pipeline)
    avatar: KubernetesAvatar = ctx.room_options.avatar
    try:
        try:
            await ctx.connect()  # creates the AvatarSession; returns once the avatar has joined
        except AvatarError as exc:  # no GPU free in time, RBAC, no CRD, ...: the message says
            logger.error("no avatar for room %s: %s", ctx.room_options.room_id, exc)
            raise
        if os.environ.get("AVATAR_FRAMED_AUDIO") == "1":
            avatar.framed_audio(ctx.room, pipeline)
        logger.info("avatar %s joined", avatar.participant_id)
        await ctx.room.wait_for_participant()
        await session.start()
        await asyncio.Event().wait()  # until the job is cancelled (the room ends)
    finally:
        await session.close()
        await ctx.shutdown()  # deletes the AvatarSession


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    WorkerJob(entrypoint=entrypoint, jobctx=make_context).start()
