"""The voice agent's side of the demo: in the room, streaming TTS audio to its avatar.

A videosdk-agents agent hands its TTS audio to an avatar sender, which puts it on the room's
data channel. Here the agent is a participant of the local room, and the sender is the
project's own `FramedAudioSender` (what `KubernetesAvatar.framed_audio` gives a real agent),
talking to the room through `RoomMeeting` — the two methods of videosdk's `Meeting` it uses.

`DemoAgent.speak` streams one TTS turn the way a TTS engine delivers it: agent-sized chunks
(40 ms), paced against one start time a little ahead of real time, then `segment_end`; with
`interrupt_after` it barges in at that point of the turn instead (`INTERRUPT`, as when the
user talks over the avatar). Either way it waits for the worker's `stream_ended` ack and keeps
when things were sent and acknowledged (the room's clock: the event loop's).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar_sdk import protocol
    from avatar_sdk.sender import FramedAudioSender
    from avatar_worker.transports.localroom import LocalParticipant, LocalRoom

CHUNK_SECONDS = 0.040  # 40 ms of TTS audio per chunk
LEAD_SECONDS = 0.200  # TTS runs this far ahead of playback
ACK_TIMEOUT_SECONDS = 15.0


class RoomMeeting:
    """videosdk's `Meeting` as the sender uses it (`send`, event listeners), over a local room
    participant: data messages reach listeners as `handle_event("data", message)`."""

    def __init__(self, participant: LocalParticipant) -> None:
        self._participant = participant
        self._listeners: list[Any] = []
        participant.add_data_listener(self._on_data)

    async def send(self, payload: bytes | str, options: dict[str, str]) -> None:
        await self._participant.send(payload, options.get("reliability", "RELIABLE"))

    def add_event_listener(self, event_listener: Any) -> None:
        self._listeners.append(event_listener)

    def remove_event_listener(self, event_listener: Any) -> None:
        if event_listener in self._listeners:
            self._listeners.remove(event_listener)

    def _on_data(self, message: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            listener.handle_event("data", message)


@dataclasses.dataclass
class Turn:
    """One TTS turn as the agent sent it."""

    seconds: float  # audio in the turn
    started_at: float = 0.0  # first chunk sent (room clock)
    interrupted_at: float | None = None  # INTERRUPT sent
    finished_at: float = 0.0  # segment_end or INTERRUPT sent
    ack: protocol.StreamEnded | None = None
    acked_at: float | None = None
    chunks: int = 0


class DemoAgent:
    """The agent participant and its avatar sender."""

    def __init__(
        self,
        room: LocalRoom,
        participant_id: str = "agent",
        *,
        sample_rate: int = 24_000,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.room = room
        self.participant_id = participant_id
        self.sample_rate = sample_rate
        self._on_event = on_event
        self.participant: LocalParticipant | None = None
        self.sender: FramedAudioSender | None = None
        self.turns: list[Turn] = []

    def join(self) -> None:
        from avatar_sdk.sender import FramedAudioSender

        self.participant = self.room.join(self.participant_id)
        self.sender = FramedAudioSender(RoomMeeting(self.participant), sample_rate=self.sample_rate)
        self._say(f"agent joined room {self.room.room_id} as {self.participant_id}")

    async def speak(self, pcm: bytes, *, interrupt_after: float | None = None) -> Turn:
        """Stream one turn of s16le mono PCM; barge in `interrupt_after` seconds into it."""
        assert self.sender is not None
        loop = asyncio.get_running_loop()
        bytes_per_chunk = int(CHUNK_SECONDS * self.sample_rate) * 2
        turn = Turn(seconds=len(pcm) / 2 / self.sample_rate)
        self.turns.append(turn)
        start = loop.time()
        turn.started_at = start
        self._say(f"agent speaks turn {len(self.turns)} ({turn.seconds:.1f} s of audio)")
        for offset in range(0, len(pcm), bytes_per_chunk):
            media_time = offset / 2 / self.sample_rate
            if interrupt_after is not None and media_time >= interrupt_after:
                await self.sender.interrupt()
                turn.interrupted_at = turn.finished_at = loop.time()
                self._say(f"agent barges in: INTERRUPT at {media_time:.2f} s of the turn")
                break
            # paced from one start time, a little ahead of playback, as TTS delivers audio
            delay = start + media_time - LEAD_SECONDS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.sender.handle_audio_input(pcm[offset : offset + bytes_per_chunk])
            turn.chunks += 1
        else:
            await self.sender.send_segment_end()
            turn.finished_at = loop.time()
            self._say(f"agent sent segment_end after {turn.chunks} chunks")
        async with asyncio.timeout(ACK_TIMEOUT_SECONDS):
            turn.ack = await self.sender.wait_stream_ended()
        turn.acked_at = loop.time()
        self._say(
            f"avatar acked: stream_ended position {turn.ack.playback_position:.2f} s, "
            f"interrupted {str(turn.ack.interrupted).lower()}"
        )
        return turn

    async def leave(self) -> None:
        if self.sender is not None:
            await self.sender.aclose()
        if self.participant is not None and not self.participant.left:
            await self.participant.leave()
            self._say("agent left the room")

    def _say(self, text: str) -> None:
        if self._on_event is not None:
            self._on_event(text)
