"""KubernetesAvatar: a drop-in avatar for videosdk-agents whose worker runs in your cluster.

```python
from avatar_sdk.agents import KubernetesAvatar

room_options = RoomOptions(room_id=room_id, avatar=KubernetesAvatar())  # nothing else changes
```

What videosdk-agents 1.0.30's `JobContext.connect()` does with an avatar that has a
`participant_id` and is not its own `AvatarAudioOut` (a "cloud avatar"), and what this class
does at each step:

1. reads `avatar.participant_id` and signs a token for it with `VIDEOSDK_API_KEY` /
   `VIDEOSDK_SECRET_KEY` — the id is chosen here, before any session exists;
2. `await avatar.connect(room_id, token)` — this creates the room's AvatarSession with that
   `spec.participantId` and returns once its worker has joined the room, or raises a clear
   `avatar_sdk.client.AvatarError`. The framework's token is not used and never leaves the
   agent: the operator mints the worker's own short-lived, room-scoped token;
3. streams the agent's TTS audio to the avatar through its stock `AvatarAudioOut` over the
   room's data channel, which the worker speaks (for framed audio see `framed_audio`);
4. reads `avatar.participant_id` again for the room (`avatar_participant_id`), so that the
   avatar is not taken for a user — after an adopted session (below) it is that session's id;
5. at shutdown, `await avatar.aclose()` — this deletes the session (its Pod and Secret go with
   it).

One room, one avatar: the session is named after the room, so a retried `connect` or a second
agent process for the same room adopts the existing session (and its participant id) instead of
starting a second worker. A `connect` that fails deletes the session it created.

Nothing here imports videosdk-agents: `videosdk.agents.avatar` does not import on Python 3.11
(TOOLCHAIN.md), and the framework's own avatar path needs Python 3.12 or newer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from avatar_sdk import api, credentials, sender
from avatar_sdk import client as avatar_client

logger = logging.getLogger(__name__)


class KubernetesAvatar:
    """A videosdk-agents cloud avatar backed by an AvatarSession; see the module docstring."""

    video_track: None = None  # the worker publishes its own tracks into the room
    audio_track: None = None

    def __init__(
        self,
        *,
        participant_id: str | None = None,
        agent_participant_id: str | None = None,
        spec: api.AvatarSessionSpec | Mapping[str, Any] | None = None,
        name: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        join_timeout: float = 120.0,
        wait_for_gpu: bool = True,
        client: avatar_client.AvatarSessionClient | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """
        `spec`: the rest of the AvatarSession spec (renderer, video, resources, lifetime, ...;
        a model or a camelCase mapping); its `roomId` comes from `connect`.
        `agent_participant_id`: the agent's own participant id (RoomOptions'
        `agent_participant_id`); the worker then takes audio from nobody else.
        `join_timeout`: how long `connect` waits for the worker to join, seconds.
        `wait_for_gpu`: while no GPU has room the session waits in the operator's queue, up to
        `join_timeout`; False fails `connect` at once with `Unschedulable` instead.
        `client`: an existing client (its namespace wins over `namespace`); by default one is
        made from in-cluster config or the kubeconfig and closed by `aclose`.
        """
        self.participant_id: str = participant_id or credentials.generate_participant_id()
        self.agent_participant_id = agent_participant_id
        self.spec = spec
        self.name = name
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.join_timeout = join_timeout
        self.wait_for_gpu = wait_for_gpu
        self.labels = dict(labels or {})
        self.session: api.AvatarSession | None = None  # the session once connected
        self.room_id: str | None = None
        self._client = client
        self._owns_client = client is None
        self._sender: sender.FramedAudioSender | None = None

    async def connect(self, room_id: str, token: str | None = None) -> None:
        """Create (or adopt) the room's session and wait until its worker has joined.

        `token` is the framework's avatar token: accepted for its call shape, never used.
        Raises `avatar_sdk.client.AvatarError` subclasses with messages a user can act on.
        """
        del token  # the operator mints the worker's own room-scoped token
        if self.session is not None and self.room_id == room_id:
            return
        sessions = await self._sessions()
        session, created = await sessions.ensure(
            room_id,
            name=self.name,
            participant_id=self.participant_id,
            agent_participant_id=self.agent_participant_id,
            spec=self.spec,
            labels=self.labels,
        )
        self._adopt_participant(session)
        uid = str(session.metadata.get("uid", ""))
        try:
            joined = await sessions.wait_until_joined(
                session.name, self.join_timeout, fail_if_unschedulable=not self.wait_for_gpu
            )
        except BaseException:
            if created:  # nobody else waits for it: do not leave a worker behind
                with contextlib.suppress(Exception):
                    await sessions.delete(session.name, uid=uid)
            raise
        self._adopt_participant(joined)
        self.session, self.room_id = joined, room_id
        placement = joined.status.placement
        logger.info(
            "avatar joined",
            extra={
                "session": joined.name,
                "room": room_id,
                "participant": self.participant_id,
                "node": placement.node if placement else None,
                "adopted": not created,
            },
        )

    async def aclose(self) -> None:
        """Delete the session (only the one connected: never a newer one for the room)."""
        session, self.session = self.session, None
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        try:
            if session is not None and self._client is not None:
                await self._client.delete(
                    session.name, uid=str(session.metadata.get("uid", "")) or None
                )
        finally:
            if self._owns_client and self._client is not None:
                await self._client.aclose()
                self._client = None

    def framed_audio(self, room: Any, pipeline: Any = None) -> sender.FramedAudioSender:
        """Send the agent's audio in the framed dialect (loss concealment, exact interrupts).

        One line after `await ctx.connect()`: `avatar.framed_audio(ctx.room, pipeline)`.
        """
        audio = self.session.spec.audio if self.session is not None else api.AudioSpec()
        if self._sender is None:
            self._sender = sender.FramedAudioSender(
                sample_rate=audio.sample_rate,
                channels=audio.channels,
                participant_id=self.participant_id,
            )
        return self._sender.attach(room, pipeline)

    async def _sessions(self) -> avatar_client.AvatarSessionClient:
        if self._client is None:
            self._client = await avatar_client.AvatarSessionClient.from_config(
                self.namespace, kubeconfig=self.kubeconfig, context=self.context
            )
            self._owns_client = True
        return self._client

    def _adopt_participant(self, session: api.AvatarSession) -> None:
        """The session's participant id is the avatar's (another agent may have made it)."""
        actual = session.status.participant_id or session.spec.participant_id
        if actual and actual != self.participant_id:
            logger.info(
                "using the existing session's participant id",
                extra={"session": session.name, "participant": actual},
            )
            self.participant_id = actual
