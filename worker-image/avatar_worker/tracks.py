"""The avatar's two published tracks, pulled by `recv()` like any WebRTC sender pulls them.

Both tracks read the synchronizer's one timeline: `recv()` waits until its frame is due (the
synchronizer paces against one start time), then returns an `av.AudioFrame` of 20 ms (pts in
samples, time base 1/rate) or an `av.VideoFrame` in yuv420p (pts in the 90 kHz RTP video
clock, converted from the same sample counter). An ended track raises `TrackEndedError`.

These classes depend on nothing but PyAV; the VideoSDK transport subclasses the SDK's
`CustomAudioTrack`/`CustomVideoTrack` and delegates `recv()` here, the local room pulls them
as they are.
"""

from __future__ import annotations

import fractions
import time
from collections import deque

import av

from avatar_worker import media
from avatar_worker.synchronizer import Synchronizer, TrackEndedError

__all__ = ["AvatarAudioTrack", "AvatarVideoTrack", "FpsMeter", "TrackEndedError"]


class FpsMeter:
    """Frames per second over the last `window` seconds of wall time."""

    def __init__(self, window: float = 5.0) -> None:
        self._window = window
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()

    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class AvatarAudioTrack:
    """20 ms audio frames from the synchronizer's timeline."""

    kind = "audio"

    def __init__(self, synchronizer: Synchronizer) -> None:
        self._sync = synchronizer
        self._time_base = fractions.Fraction(1, synchronizer.sample_rate)
        self._ended = False

    @property
    def readyState(self) -> str:
        return "ended" if self._ended else "live"

    async def recv(self) -> av.AudioFrame:
        if self._ended:
            raise TrackEndedError("the audio track has ended")
        pts, samples = await self._sync.read_audio()
        frame = media.samples_to_frame(samples, self._sync.sample_rate)
        frame.pts = pts
        frame.time_base = self._time_base
        return frame

    def stop(self) -> None:
        self._ended = True


class AvatarVideoTrack:
    """Video frames from the synchronizer's timeline, one per unit."""

    kind = "video"

    def __init__(self, synchronizer: Synchronizer) -> None:
        self._sync = synchronizer
        self._ended = False
        self.fps_meter = FpsMeter()
        self.last_sent_at: float | None = None  # time.monotonic() of the last frame handed out

    @property
    def readyState(self) -> str:
        return "ended" if self._ended else "live"

    async def recv(self) -> av.VideoFrame:
        if self._ended:
            raise TrackEndedError("the video track has ended")
        start, i420 = await self._sync.read_video()
        frame = media.i420_to_frame(i420)
        # Exact for every rate in the spec that divides 90 kHz; otherwise < 1/90000 s, never
        # accumulated, since each pts is converted from the sample counter afresh.
        frame.pts = start * media.VIDEO_CLOCK_RATE // self._sync.sample_rate
        frame.time_base = media.VIDEO_TIME_BASE
        self.last_sent_at = time.monotonic()
        self.fps_meter.tick(self.last_sent_at)
        return frame

    def stop(self) -> None:
        self._ended = True
