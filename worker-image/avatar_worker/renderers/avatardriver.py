"""`AvatarRendererDriver`: drives a VideoSDK-shaped `AvatarRenderer` unchanged.

It pushes the receiver's frames into the renderer and pairs what it yields — each video frame
with the next frame's worth of audio — back into units on the synchronizer's sample clock. The
shape knows one reset for everything buffered, so an interrupt drops all of it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any

import av
import numpy as np

from avatar_worker import media
from avatar_worker.receiver import AudioReceiver, segment_of
from avatar_worker.renderers.contract import (
    AudioSegmentEnd,
    AvatarRenderer,
    is_segment_end,
    segment_end_for_foreign,
)
from avatar_worker.renderers.driver import RendererDriver
from avatar_worker.segments import Segment
from avatar_worker.synchronizer import Synchronizer, Unit


class AvatarRendererDriver(RendererDriver):
    """Drives a VideoSDK-shaped `AvatarRenderer` unchanged and re-times what it yields."""

    def __init__(
        self, renderer: AvatarRenderer, receiver: AudioReceiver, synchronizer: Synchronizer
    ) -> None:
        super().__init__(receiver, synchronizer)
        self._renderer = renderer
        self._windows = media.FrameWindows(synchronizer.sample_rate, synchronizer.fps)
        self._pushed: deque[Segment] = deque()  # segments pushed in, not yet ended by it
        self._video: deque[media.I420] = deque()
        self._audio = media.SampleBuffer(synchronizer.channels)
        # (segment, samples) runs of `_audio`, and pending ends at audio offsets
        self._audio_runs: deque[list[Any]] = deque()
        self._ends: deque[tuple[int, Segment]] = deque()
        self._last_frame: media.I420 | None = None
        self._read_audio_atask: asyncio.Task[None] | None = None
        self._forward_video_atask: asyncio.Task[None] | None = None

    async def prime(self) -> None:
        """Nothing to render ahead: the renderer yields its own idle frames."""

    def start(self) -> None:
        self._read_audio_atask = self._spawn(self._read_audio(), "read-audio")
        self._forward_video_atask = self._spawn(self._forward_video(), "forward-video")

    def interrupt(self, segments: list[Segment]) -> None:
        # The shape only knows one reset for everything buffered.
        self._pushed.clear()
        self._video.clear()
        self._audio.clear()
        self._audio_runs.clear()
        self._ends.clear()
        result = self._renderer.reset_stream()
        if inspect.isawaitable(result):
            self._spawn(_await(result), "reset-stream")

    async def _read_audio(self) -> None:
        async for item in self._receiver:
            await self._sync.wait_for_room()
            if isinstance(item, AudioSegmentEnd):
                if item.segment is None or item.segment.finished:
                    continue
                if not self._pushed or self._pushed[-1] is not item.segment:
                    self._sync.end_segment(item.segment)  # nothing of it was pushed
                    continue
                await self._renderer.push_stream_chunk(segment_end_for_foreign())  # type: ignore[arg-type]
            else:
                segment = segment_of(item)
                if segment is None or segment.finished:
                    continue
                if not self._pushed or self._pushed[-1] is not segment:
                    self._pushed.append(segment)
                await self._renderer.push_stream_chunk(item)

    async def _forward_video(self) -> None:
        window = self._windows.next_length
        async for out in self._renderer:
            if isinstance(out, av.VideoFrame):
                self._video.append(self._to_i420(out))
            elif isinstance(out, av.AudioFrame):
                samples = media.frame_to_samples(out, self._sync.channels)
                segment = self._pushed[0] if self._pushed else None
                if self._audio_runs and self._audio_runs[-1][0] is segment:
                    self._audio_runs[-1][1] += len(samples)
                else:
                    self._audio_runs.append([segment, len(samples)])
                self._audio.append(samples)
            elif is_segment_end(out) and self._pushed:
                self._ends.append((len(self._audio), self._pushed.popleft()))
            # Pair video frames with audio, a frame's worth each.
            while True:
                length = window()
                while self._ends and self._ends[0][0] <= 0 and not len(self._audio):
                    self._sync.end_segment(self._ends.popleft()[1])  # ended on a boundary
                ended = bool(self._ends) and self._ends[0][0] <= len(self._audio)
                if self._video and (len(self._audio) >= length or ended):
                    self._emit(self._video.popleft(), length)
                elif len(self._video) >= 2:
                    self._emit(self._video.popleft(), length)  # audio-less: idle
                elif not self._video and (len(self._audio) >= 2 * length or ended):
                    self._emit(self._last_frame, length)  # audio ahead of video
                else:
                    break
                await self._sync.wait_for_room()

    def _emit(self, frame: media.I420 | None, length: int) -> None:
        take = min(length, len(self._audio))
        if self._ends and self._ends[0][0] > 0:
            take = min(take, self._ends[0][0])
        samples = self._audio.take(take)
        segment: Segment | None = None
        speech = 0
        if take:
            run = self._audio_runs[0]
            segment, speech = run[0], min(take, run[1])
            run[1] -= speech
            if run[1] <= 0:
                self._audio_runs.popleft()
            rest = take - speech  # crossed into the next run: played, but not attributed
            while rest > 0 and self._audio_runs:
                step = min(rest, self._audio_runs[0][1])
                self._audio_runs[0][1] -= step
                rest -= step
                if self._audio_runs[0][1] <= 0:
                    self._audio_runs.popleft()
        if len(samples) < length:
            pad = np.zeros((length - len(samples), self._sync.channels), np.int16)
            samples = np.concatenate([samples, pad])
        unit = Unit(samples, frame, segment, speech if segment is not None else 0)
        unit.soft = segment is None
        self._ends = deque((offset - take, s) for offset, s in self._ends)
        while self._ends and self._ends[0][0] <= 0:
            unit.ends.append((take, self._ends.popleft()[1]))
        self._windows.advance()
        if frame is not None:
            self._last_frame = frame
        self._sync.push(unit)

    def _to_i420(self, frame: av.VideoFrame) -> media.I420:
        if frame.width != self._sync.width or frame.height != self._sync.height:
            frame = frame.reformat(self._sync.width, self._sync.height, format="yuv420p")
        return np.asarray(frame.to_ndarray(format="yuv420p"), np.uint8)


async def _await(awaitable: Any) -> None:
    await awaitable
