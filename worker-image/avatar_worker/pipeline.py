"""One session's media pipeline: receiver → renderer driver → synchronizer → tracks.

`AvatarPipeline` wires the parts on one asyncio loop and owns their lifetime. A transport
feeds it data messages (`feed`, the VideoSDK `on_data` dict) and publishes its two tracks;
the pipeline sends each `stream_ended` ack back through the transport's `send`, in order, from
one task, so a slow or failing send never blocks the media.

An interrupt is handled synchronously inside `feed`: the synchronizer cuts the segment at the
audio cursor, the driver drops its buffered audio and resets the renderer, and the tracker
acknowledges the segment — all before the next frame is due.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from avatar_sdk import protocol
from avatar_worker import clock as clocks
from avatar_worker import receiver as receivers
from avatar_worker import synchronizer as synchronizers
from avatar_worker import tracks
from avatar_worker.renderers import avatardriver, framedriver
from avatar_worker.renderers import driver as drivers
from avatar_worker.renderers.contract import AvatarRenderer, FrameRenderer
from avatar_worker.segments import Segment, SegmentTracker

logger = logging.getLogger(__name__)

SendFn = Callable[[str | bytes, str], Awaitable[Any]]


@dataclass(frozen=True)
class PipelineConfig:
    """Media format and the pipeline's buffer sizes."""

    sample_rate: int = 24_000
    channels: int = 1
    width: int = 512
    height: int = 512
    fps: int = 30
    max_ahead_units: int = synchronizers.DEFAULT_MAX_AHEAD_UNITS
    max_batch: int = framedriver.DEFAULT_MAX_BATCH
    reorder_window: float = receivers.DEFAULT_REORDER_WINDOW
    idle_gap: float = receivers.DEFAULT_IDLE_GAP
    max_buffered_seconds: float = receivers.DEFAULT_MAX_BUFFERED


@dataclass
class PlaybackSnapshot:
    """What the status reporter needs, read without awaiting anything."""

    speaking: bool
    segments: int
    interrupts: int
    position: float
    last_activity_at: datetime | None
    fps: float
    vram_used_mib: int | None
    sync_error_ms: float


class AvatarPipeline:
    """The Avatar Server's media path for one session."""

    def __init__(
        self,
        renderer: FrameRenderer | AvatarRenderer,
        *,
        config: PipelineConfig | None = None,
        agent_participant_id: str | None = None,
        send: SendFn | None = None,
        clock: clocks.Clock | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        cfg = self.config
        self.clock = clock if clock is not None else clocks.LoopClock()
        self._send = send
        self.tracker = SegmentTracker(cfg.sample_rate, self._on_stream_ended)
        self.receiver = receivers.AudioReceiver(
            agent_participant_id,
            cfg.sample_rate,
            cfg.channels,
            tracker=self.tracker,
            clock=self.clock,
            reorder_window=cfg.reorder_window,
            idle_gap=cfg.idle_gap,
            max_buffered_seconds=cfg.max_buffered_seconds,
        )
        self.synchronizer = synchronizers.Synchronizer(
            sample_rate=cfg.sample_rate,
            channels=cfg.channels,
            fps=cfg.fps,
            width=cfg.width,
            height=cfg.height,
            tracker=self.tracker,
            clock=self.clock,
            max_ahead_units=cfg.max_ahead_units,
        )
        self.driver: drivers.RendererDriver
        if isinstance(renderer, FrameRenderer):
            self.driver = framedriver.FrameRendererDriver(
                renderer,
                self.receiver,
                self.synchronizer,
                max_batch=cfg.max_batch,
                executor=executor,
            )
        else:
            self.driver = avatardriver.AvatarRendererDriver(
                renderer, self.receiver, self.synchronizer
            )
        self.audio_track = tracks.AvatarAudioTrack(self.synchronizer)
        self.video_track = tracks.AvatarVideoTrack(self.synchronizer)
        self.receiver.add_interrupt_listener(self._on_interrupt)
        self._acks: asyncio.Queue[str] = asyncio.Queue()
        self._send_atask: asyncio.Task[None] | None = None
        self._last_activity_wall: datetime | None = None
        self._started = False

    # -----------------------------------------------------------------------------------------

    def set_send(self, send: SendFn | None) -> None:
        self._send = send

    def feed(self, message: object) -> None:
        """A data-channel message (VideoSDK `on_data` dict); never raises."""
        before = self.receiver.stats.accepted_samples
        self.receiver.feed(message)
        if self.receiver.stats.accepted_samples != before:
            self._last_activity_wall = datetime.now(UTC)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.driver.prime()
        self.driver.start()
        self._send_atask = asyncio.create_task(self._send_acks(), name="send-acks")

    async def aclose(self) -> None:
        self.receiver.close()
        self.synchronizer.close()
        self.audio_track.stop()
        self.video_track.stop()
        await self.driver.aclose()
        if self._send_atask is not None:
            # Let queued acks go out (briefly) before the transport closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks.join(), timeout=1.0)
            self._send_atask.cancel()
            await asyncio.gather(self._send_atask, return_exceptions=True)

    @property
    def last_audio_at(self) -> float | None:
        """Clock time of the last audio accepted from the agent."""
        return self.receiver.last_audio_at

    def snapshot(self) -> PlaybackSnapshot:
        counters = self.tracker.counters
        lateness = self.synchronizer.last_video_lateness - self.synchronizer.last_audio_lateness
        return PlaybackSnapshot(
            speaking=counters.speaking,
            segments=counters.segments,
            interrupts=counters.interrupts,
            position=round(counters.position, 3),
            last_activity_at=self._last_activity_wall,
            fps=round(self.video_track.fps_meter.fps(), 2),
            vram_used_mib=self.driver.vram_used_mib,
            sync_error_ms=round(lateness * 1000.0, 2),
        )

    # -----------------------------------------------------------------------------------------

    def _on_interrupt(self, segments: list[Segment]) -> None:
        self.synchronizer.interrupt(segments)
        self.driver.interrupt(segments)

    def _on_stream_ended(self, segment: Segment, ack: protocol.StreamEnded) -> None:
        payload = protocol.encode_stream_ended(
            ack.playback_position, ack.interrupted, ack.segment_id
        )
        self._acks.put_nowait(payload)

    async def _send_acks(self) -> None:
        while True:
            payload = await self._acks.get()
            try:
                if self._send is not None:
                    await self._send(payload, protocol.RELIABLE)
            except Exception as exc:
                logger.warning("stream_ended not sent", extra={"error": repr(exc)})
            finally:
                self._acks.task_done()
