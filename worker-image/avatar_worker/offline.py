"""`avatar-worker render`: a WAV through the live pipeline, faster than real time, to MP4.

Nothing here is a second implementation of the media path. The file's audio is converted to
the session format (any rate, mono or stereo in), chunked exactly as the agent's sender chunks
it (stock 15 KB PCM chunks and a `segment_end`, or the framed dialect), fed to the same
receiver → renderer driver → synchronizer → tracks as a live session, and the two tracks are
pulled with `recv()` like a WebRTC sender pulls them. The only difference is the clock: the
whole run happens on a virtual-time event loop (`avatar_worker.virtualtime`), so pacing costs
nothing and the renderer sets the speed.

The report: `frames` written, `audio_seconds` and `video_seconds` in the file, `fps` of the
file's video, `realtime_factor` (audio seconds per wall-clock second of the run) and
`first_frame_ms` (wall-clock ms from the first chunk fed to the first speaking frame out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from avatar_sdk import protocol
from avatar_worker import media, virtualtime
from avatar_worker.pipeline import AvatarPipeline, PipelineConfig
from avatar_worker.recorder import Mp4Recorder
from avatar_worker.renderers.contract import AvatarRenderer, FrameRenderer

logger = logging.getLogger(__name__)

AGENT_ID = "agent"
FEED_AHEAD = 20.0  # s of audio the feeder keeps queued ahead of playback (a TTS running ahead)
FEED_POLL = 0.5  # s (virtual) between checks while the receiver holds FEED_AHEAD


@dataclass
class RenderReport:
    frames: int
    audio_seconds: float
    video_seconds: float
    fps: float
    realtime_factor: float
    first_frame_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AudioFileError(ValueError):
    """The input audio cannot be read, or holds no audio."""


def read_audio(path: str | Path, sample_rate: int, channels: int) -> bytes:
    """Decode any audio file PyAV reads into s16le PCM at `sample_rate` with `channels`."""
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise AudioFileError(f"cannot open {path}: {exc}") from exc
    with container:
        if not container.streams.audio:
            raise AudioFileError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(
            format="s16", layout=media.layout_for(channels), rate=sample_rate
        )
        parts: list[bytes] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(media.frame_to_samples(out, channels).tobytes())
            for out in resampler.resample(None):
                parts.append(media.frame_to_samples(out, channels).tobytes())
        except av.FFmpegError as exc:
            raise AudioFileError(f"cannot decode {path}: {exc}") from exc
    pcm = b"".join(parts)
    if not pcm:
        raise AudioFileError(f"{path} holds no audio")
    return pcm


def agent_messages(
    pcm: bytes, *, framed: bool, sample_rate: int, channels: int
) -> list[tuple[str | bytes, str]]:
    """What the agent's sender puts on the data channel for one TTS segment of `pcm`."""
    if framed:
        framer = protocol.SegmentFramer(sample_rate, channels)
        frames: list[tuple[str | bytes, str]] = [
            (chunk, protocol.UNRELIABLE) for chunk in framer.audio(pcm)
        ]
        return [*frames, (framer.segment_end(), protocol.RELIABLE)]
    step = protocol.MAX_PCM_CHUNK_BYTES - protocol.MAX_PCM_CHUNK_BYTES % (2 * channels)
    chunks: list[tuple[str | bytes, str]] = [
        (chunk, protocol.UNRELIABLE) for chunk in protocol.pcm_chunks(pcm, step)
    ]
    return [*chunks, (protocol.encode_segment_end(), protocol.RELIABLE)]


async def render_pcm(
    pcm: bytes,
    renderer: FrameRenderer | AvatarRenderer,
    out: str | Path,
    config: PipelineConfig,
    *,
    framed: bool = False,
) -> RenderReport:
    """Play `pcm` (s16le in the session format) through a pipeline into `out`."""
    wall_start = time.perf_counter()
    pipeline = AvatarPipeline(renderer, config=config, agent_participant_id=AGENT_ID)
    acks: list[str | bytes] = []

    async def send(payload: str | bytes, reliability: str) -> None:
        acks.append(payload)

    pipeline.set_send(send)
    await pipeline.start()
    messages = agent_messages(
        pcm, framed=framed, sample_rate=config.sample_rate, channels=config.channels
    )
    recorder = Mp4Recorder(
        out,
        width=config.width,
        height=config.height,
        fps=config.fps,
        sample_rate=config.sample_rate,
        channels=config.channels,
    )
    end_sample: int | None = None
    first_frame_wall: float | None = None
    feed_wall = time.perf_counter()
    rate = config.sample_rate

    async def feed() -> None:
        for payload, reliability in messages:
            while True:  # a TTS that runs ahead of playback, but not without bound
                if pipeline.receiver.buffered_seconds() <= FEED_AHEAD:
                    break
                await asyncio.sleep(FEED_POLL)
            pipeline.feed({"payload": payload, "from": AGENT_ID, "reliability": reliability})

    async def pull_audio() -> None:
        nonlocal end_sample
        while True:
            frame = await pipeline.audio_track.recv()
            recorder.add_audio(frame)
            if pipeline.tracker.counters.segments >= 1:
                end_sample = (frame.pts or 0) + frame.samples
                return

    async def pull_video() -> None:
        nonlocal first_frame_wall
        while True:
            frame = await pipeline.video_track.recv()
            start = (frame.pts or 0) * rate // media.VIDEO_CLOCK_RATE
            if end_sample is not None and start >= end_sample:
                return
            recorder.add_video(frame)
            if first_frame_wall is None and pipeline.tracker.counters.speaking:
                first_frame_wall = time.perf_counter()

    feeder = asyncio.create_task(feed(), name="feed")
    try:
        # Start the clock on the first rendered frame of speech, not on idle frames before it.
        while True:
            if pipeline.synchronizer.pending_units() or feeder.done():
                break
            await asyncio.sleep(FEED_POLL / 100)
        await asyncio.gather(pull_audio(), pull_video())
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await pipeline.aclose()
        recorder.close()
    wall = time.perf_counter() - wall_start
    audio_seconds = recorder.audio_samples / rate
    video_seconds = recorder.video_frames / config.fps
    first = (first_frame_wall - feed_wall) * 1000.0 if first_frame_wall is not None else -1.0
    return RenderReport(
        frames=recorder.video_frames,
        audio_seconds=round(audio_seconds, 3),
        video_seconds=round(video_seconds, 3),
        fps=round(recorder.video_frames / video_seconds, 3) if video_seconds else 0.0,
        realtime_factor=round(audio_seconds / wall, 2) if wall > 0 else 0.0,
        first_frame_ms=round(first, 1),
    )


def render_file(
    audio: str | Path,
    out: str | Path,
    renderer: FrameRenderer | AvatarRenderer,
    config: PipelineConfig,
    *,
    framed: bool = False,
) -> RenderReport:
    """Read `audio`, render it into `out` on a virtual-time loop, report."""
    pcm = read_audio(audio, config.sample_rate, config.channels)
    if not np.frombuffer(pcm, np.int16).size:
        raise AudioFileError(f"{audio} holds no audio")
    return virtualtime.run(render_pcm(pcm, renderer, out, config, framed=framed))
