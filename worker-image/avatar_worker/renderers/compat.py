"""A `FrameRenderer` in VideoSDK's `AvatarRenderer` shape (`FrameRendererAvatar`).

For use inside VideoSDK's own `AvatarController`, and to test the compatibility path (the
worker's `AvatarRendererDriver`) against the native one (`FrameRendererDriver`) with the same
renderer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import av
import numpy as np

from avatar_worker import clock as clocks
from avatar_worker import media
from avatar_worker.renderers.contract import (
    AudioSegmentEnd,
    AvatarRenderer,
    FrameRenderer,
    is_segment_end,
)


class FrameRendererAvatar(AvatarRenderer):
    """A `FrameRenderer` in the `AvatarRenderer` shape.

    Audio is cut into one window per video frame from a sample counter; each window yields its
    `VideoFrame` followed by the window's `AudioFrame`. With no audio queued it yields idle
    frames paced at `fps` against one start time, so a consumer that paces by video (as
    VideoSDK's `AvatarController` does) keeps getting frames between turns.
    """

    def __init__(self, renderer: FrameRenderer, *, channels: int = 1) -> None:
        self._renderer = renderer
        config = renderer.config
        self._rate = config.sample_rate
        self._fps = config.fps
        self._channels = channels
        self._spf = config.samples_per_frame
        self._windows = media.FrameWindows(config.sample_rate, config.fps)
        self._pcm = media.SampleBuffer(channels)
        self._ends: deque[tuple[int, object]] = deque()  # (sample offset in _pcm, sentinel)
        self._data_ev = asyncio.Event()
        self._idle_start: float | None = None
        self._idle_frames = 0

    async def push_stream_chunk(self, frame: av.AudioFrame | AudioSegmentEnd) -> None:
        if is_segment_end(frame):
            self._ends.append((len(self._pcm), frame))
        elif isinstance(frame, av.AudioFrame):
            self._pcm.append(media.frame_to_samples(frame, self._channels))
        self._data_ev.set()

    def reset_stream(self) -> None:
        self._pcm.clear()
        self._ends.clear()
        self._renderer.reset()

    def __aiter__(self) -> AsyncIterator[av.VideoFrame | av.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[av.VideoFrame | av.AudioFrame | AudioSegmentEnd]:
        loop = asyncio.get_running_loop()
        while True:
            length = self._windows.next_length()
            end_at = self._ends[0][0] if self._ends else None
            if end_at is not None and end_at <= 0:
                yield self._ends.popleft()[1]  # type: ignore[misc]
                continue
            have = len(self._pcm) if end_at is None else min(len(self._pcm), end_at)
            if have >= length or (end_at is not None and have > 0):
                take = min(length, have)
                samples = self._pcm.take(take)
                self._ends = deque((at - take, s) for at, s in self._ends)
                rgb = self._renderer.render(media.render_window(samples, self._spf))[0]
                self._windows.advance()
                self._idle_start = None
                yield av.VideoFrame.from_ndarray(rgb, format="rgb24")
                yield media.samples_to_frame(samples, self._rate)
                continue
            # Idle: one frame per 1/fps against a fixed start, unless audio comes first.
            now = loop.time()
            if self._idle_start is None:
                self._idle_start, self._idle_frames = now, 0
            due = self._idle_start + self._idle_frames / self._fps
            if not clocks.reached(now, due):
                self._data_ev.clear()
                try:
                    await asyncio.wait_for(self._data_ev.wait(), clocks.remaining(now, due))
                    continue
                except TimeoutError:
                    pass
            self._idle_frames += 1
            rgb = self._renderer.render(np.zeros((1, self._spf), np.float32))[0]
            self._windows.advance()
            yield av.VideoFrame.from_ndarray(rgb, format="rgb24")
