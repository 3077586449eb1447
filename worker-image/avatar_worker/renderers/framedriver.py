"""`FrameRendererDriver`: drives a `FrameRenderer` from the receiver's audio.

It cuts the audio into one window per video frame from a sample counter (a window never spans
two segments; a segment's last window is padded with silence, and so is a window the audio has
not filled when the timeline is about to need it — a few ms of silence instead of a whole idle
frame, or of waiting for an end that may come late), renders them a batch at a time in a
single worker thread (the event loop keeps pacing the tracks meanwhile), converts the frames to
I420 there too, and renders idle frames between turns. Batches start at one frame after
silence, for a quick first frame, and grow while the queue is healthy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatar_worker import clock as clocks
from avatar_worker import media, yuv
from avatar_worker.receiver import AudioReceiver, segment_of
from avatar_worker.renderers.contract import AudioSegmentEnd, FrameRenderer
from avatar_worker.renderers.driver import RendererDriver
from avatar_worker.segments import Segment
from avatar_worker.synchronizer import Synchronizer, Unit

DEFAULT_MAX_BATCH = 4  # frames rendered per call at most (GPU renderers gain from more)
PARTIAL_MARGIN = 0.010  # s before the timeline needs a unit: render a partial window then


@dataclass(eq=False)
class _Run:
    """Accumulated audio of one segment, waiting to be cut into windows."""

    segment: Segment
    pcm: media.SampleBuffer
    ended: bool = False


@dataclass
class _Window:
    segment: Segment | None
    samples: media.Samples  # exactly the frame's span (padded)
    speech: int
    ends: list[Segment] = field(default_factory=list)


class FrameRendererDriver(RendererDriver):
    """Drives a `FrameRenderer`: windows from a sample counter, batched renders in a thread."""

    def __init__(
        self,
        renderer: FrameRenderer,
        receiver: AudioReceiver,
        synchronizer: Synchronizer,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        super().__init__(receiver, synchronizer)
        self._renderer = renderer
        self._max_batch = max(1, max_batch)
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="avatar-render"
        )
        self._spf = renderer.config.samples_per_frame
        self._windows = media.FrameWindows(synchronizer.sample_rate, synchronizer.fps)
        self._runs: deque[_Run] = deque()
        self._reset_pending = False
        self._space = asyncio.Event()  # the render loop took audio: the reader may read on
        self._render_seconds = 0.0  # the last render call's duration (sizes the partial margin)
        self._read_audio_atask: asyncio.Task[None] | None = None
        self._render_atask: asyncio.Task[None] | None = None

    @property
    def vram_used_mib(self) -> int | None:
        return self._renderer.vram_used_mib

    async def prime(self) -> None:
        frames = await self._render([np.zeros((self._spf,), np.float32)])
        self._sync.idle_frame = frames[0]

    def start(self) -> None:
        self._read_audio_atask = self._spawn(self._read_audio(), "read-audio")
        self._render_atask = self._spawn(self._render_loop(), "render")

    def interrupt(self, segments: list[Segment]) -> None:
        targets = set(segments)
        self._runs = deque(r for r in self._runs if r.segment not in targets)
        self._reset_pending = True
        self._wake.set()
        self._space.set()

    async def aclose(self) -> None:
        await super().aclose()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -----------------------------------------------------------------------------------------

    def _buffered_windows(self) -> int:
        return sum(len(r.pcm) for r in self._runs) // max(1, self._spf)

    async def _read_audio(self) -> None:
        async for item in self._receiver:
            if isinstance(item, AudioSegmentEnd):
                segment = item.segment
                if segment is None or segment.finished:
                    continue
                run = next((r for r in self._runs if r.segment is segment), None)
                if run is None:
                    self._sync.end_segment(segment)  # an empty segment
                else:
                    run.ended = True
            else:
                segment = segment_of(item)
                if segment is None or segment.finished:
                    continue
                if not self._runs or self._runs[-1].segment is not segment:
                    self._runs.append(_Run(segment, media.SampleBuffer(self._sync.channels)))
                self._runs[-1].pcm.append(media.frame_to_samples(item, self._sync.channels))
            self._wake.set()
            # Back-pressure: read on only while little is waiting to be rendered.
            while self._buffered_windows() >= 2 * self._max_batch:
                self._space.clear()
                await self._space.wait()

    def _take_windows(self, limit: int, *, partial: bool = False) -> list[_Window]:
        """Up to `limit` windows; `partial`: the first may be short (padded) though not ended."""
        windows: list[_Window] = []
        while len(windows) < limit and self._runs:
            run = self._runs[0]
            length = self._windows.next_length()
            if len(run.pcm) < length and not run.ended:
                if partial and len(run.pcm) and not windows:
                    samples = run.pcm.take(length)
                    pad = np.zeros((length - len(samples), self._sync.channels), np.int16)
                    windows.append(
                        _Window(run.segment, np.concatenate([samples, pad]), len(samples))
                    )
                    self._windows.advance()
                break
            samples = run.pcm.take(length)
            speech = len(samples)
            if speech < length:
                samples = np.concatenate(
                    [samples, np.zeros((length - speech, self._sync.channels), np.int16)]
                )
            window = _Window(run.segment, samples, speech)
            if run.ended and len(run.pcm) == 0:
                window.ends.append(run.segment)
                self._runs.popleft()
            if speech:
                self._windows.advance()
                windows.append(window)
            elif window.ends:
                self._sync.end_segment(run.segment)
        return windows

    async def _render_loop(self) -> None:
        while True:
            if self._reset_pending:
                self._reset_pending = False
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._renderer.reset
                )
            # A full queue waits for room for a whole batch (a GPU renders 4 frames for little
            # more than 1); a short queue renders at once, one frame after silence, then
            # growing, so the first frame of a reply is not held back by batching.
            await self._sync.wait_for_room(self._max_batch)
            speech_pending = self._sync.pending_units()
            limit = min(self._max_batch, self._sync.room(), 1 + speech_pending)
            due_in = self._sync.until_next_commit()
            # Due within the margin, to the tick: float noise above it must not stall the loop.
            starving = speech_pending == 0 and clocks.reached(self._partial_margin(), due_in)
            windows = self._take_windows(limit, partial=starving)
            if windows:
                self._space.set()
                frames = await self._render(
                    [media.render_window(w.samples, self._spf)[0] for w in windows]
                )
                for window, frame in zip(windows, frames, strict=True):
                    if window.segment is not None and window.segment.finished:
                        continue  # interrupted while it was rendering
                    unit = Unit(window.samples, frame, window.segment, window.speech)
                    unit.ends = [(window.speech, s) for s in window.ends]
                    self._sync.push(unit)
                continue
            if self._sync.wants_idle() and not self._runs_ready():
                length = self._windows.next_length()
                frames = await self._render([np.zeros((self._spf,), np.float32)])
                self._windows.advance()
                idle = Unit(np.zeros((length, self._sync.channels), np.int16), frames[0])
                idle.soft = True
                self._sync.push(idle)
                continue
            self._wake.clear()
            if self._runs_ready() or self._reset_pending:
                continue
            timeout = None
            if (
                self._runs
                and len(self._runs[0].pcm)
                and not speech_pending
                and not math.isinf(due_in)
            ):
                # A partial window waits for more audio only until the timeline needs it.
                timeout = clocks.remaining(self._partial_margin(), due_in)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _partial_margin(self) -> float:
        return max(PARTIAL_MARGIN, 1.5 * self._render_seconds)

    def _runs_ready(self) -> bool:
        if not self._runs:
            return False
        run = self._runs[0]
        return run.ended or len(run.pcm) >= self._windows.next_length()

    async def _render(self, windows: list[np.ndarray[Any, Any]]) -> list[media.I420]:
        audio = np.stack(windows).astype(np.float32, copy=False)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        frames = await loop.run_in_executor(self._executor, self._render_sync, audio)
        self._render_seconds = time.perf_counter() - started
        self.frames_rendered += len(frames)
        return frames

    def _render_sync(self, audio: np.ndarray[Any, Any]) -> list[media.I420]:
        rgb = self._renderer.render(audio)
        width, height = self._sync.width, self._sync.height
        out = []
        for frame in rgb:
            if frame.shape[0] != height or frame.shape[1] != width:
                frame = yuv.resize_rgb(frame, width, height)
            out.append(yuv.rgb_to_i420(frame))
        return out
