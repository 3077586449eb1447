"""The viewer page's controls: speaking into a local room as the agent would.

The worker takes audio and control messages from its agent participant only, so
`AgentVoice` speaks as that participant: through the agent already in the room (the demo's,
in this process) or, when none is, by joining as the agent itself. What it sends is what
videosdk-agents' stock `AvatarAudioOut` sends, byte for byte: raw s16le PCM chunks
(UNRELIABLE), `{"type": "segment_end"}` and `INTERRUPT` (RELIABLE) — so what a user tries on
the page is what a production agent would do.

`speak` streams a turn the way a TTS engine delivers it: 40 ms chunks paced against one start
time, 200 ms ahead of playback, then `segment_end` (unless the turn is left open for "end
turn"). A new turn, `interrupt` or `end_turn` stops the one streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import av

from avatar_sdk import protocol
from avatar_worker import media
from avatar_worker.transports.localroom import LocalParticipant, LocalRoom

logger = logging.getLogger(__name__)

CHUNK_SECONDS = 0.040  # 40 ms of audio per data message
LEAD_SECONDS = 0.200  # sent this far ahead of playback, as TTS delivers it


class AudioFileError(ValueError):
    """The audio to speak cannot be read, or holds none."""


def read_pcm(path: str | Path, sample_rate: int, channels: int) -> bytes:
    """Any audio file PyAV decodes, as s16le PCM in the session's rate and channels."""
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise AudioFileError(f"cannot open the audio: {exc}") from exc
    parts: list[bytes] = []
    with container:
        if not container.streams.audio:
            raise AudioFileError("the file has no audio stream")
        resampler = av.AudioResampler(
            format="s16", layout=media.layout_for(channels), rate=sample_rate
        )
        try:
            for frame in [*container.decode(container.streams.audio[0]), None]:
                for out in resampler.resample(frame):
                    parts.append(media.frame_to_samples(out, channels).tobytes())
        except av.FFmpegError as exc:
            raise AudioFileError(f"cannot decode the audio: {exc}") from exc
    if not parts:
        raise AudioFileError("the file holds no audio")
    return b"".join(parts)


class AgentVoice:
    """Speaks into `room` as the participant `agent_id`; see the module docstring."""

    def __init__(self, room: LocalRoom, agent_id: str) -> None:
        self._room = room
        self.agent_id = agent_id
        self._own: LocalParticipant | None = None  # joined by us when no agent was there
        self._stream_atask: asyncio.Task[None] | None = None

    @property
    def own_participant(self) -> str | None:
        """The agent participant this voice joined itself (None: it spoke through another)."""
        return self._own.id if self._own is not None and not self._own.left else None

    @property
    def streaming(self) -> bool:
        return self._stream_atask is not None and not self._stream_atask.done()

    async def speak(
        self, pcm: bytes, *, sample_rate: int, channels: int = 1, end_turn: bool = True
    ) -> float:
        """Start streaming one turn of s16le PCM; returns its length in seconds."""
        await self._stop_streaming()
        participant = self._participant()
        self._stream_atask = asyncio.create_task(
            self._stream(participant, pcm, sample_rate * channels * 2, end_turn),
            name=f"agent-voice-{self._room.room_id}",
        )
        return len(pcm) / (sample_rate * channels * 2)

    async def interrupt(self) -> None:
        """Barge in: stop streaming and send `INTERRUPT`."""
        await self._stop_streaming()
        await self._participant().send(protocol.encode_interrupt(), protocol.RELIABLE)

    async def end_turn(self) -> None:
        """Stop streaming and send `segment_end`: the avatar plays what it has, then acks."""
        await self._stop_streaming()
        await self._participant().send(protocol.encode_segment_end(), protocol.RELIABLE)

    async def aclose(self) -> None:
        await self._stop_streaming()
        if self._own is not None:
            await self._own.leave()

    def _participant(self) -> LocalParticipant:
        present = self._room.participant(self.agent_id)
        if present is not None:
            return present
        self._own = self._room.join(self.agent_id)
        logger.info("viewer joined as the agent", extra={"room": self._room.room_id})
        return self._own

    async def _stream(
        self, participant: LocalParticipant, pcm: bytes, bytes_per_second: int, end_turn: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        chunk = int(CHUNK_SECONDS * bytes_per_second) // 4 * 4
        start = loop.time()
        try:
            for offset in range(0, len(pcm), chunk):
                delay = start + offset / bytes_per_second - LEAD_SECONDS - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await participant.send(pcm[offset : offset + chunk], protocol.UNRELIABLE)
            if end_turn:
                await participant.send(protocol.encode_segment_end(), protocol.RELIABLE)
        except ConnectionError as exc:  # the agent left, or the room ended
            logger.info("agent voice stopped", extra={"error": repr(exc)})

    async def _stop_streaming(self) -> None:
        task, self._stream_atask = self._stream_atask, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
