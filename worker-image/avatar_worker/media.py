"""Small media helpers shared by the pipeline: sample buffers, frame windows, conversions.

Audio inside the worker is int16 numpy arrays shaped [samples, channels] (interleaved s16le
on the wire). Video is planar I420 (`yuv420p`) numpy arrays shaped [height * 3 / 2, width]:
the format every WebRTC encoder wants, converted once, off the event loop, by the renderer
driver (with OpenCV: `yuv`, so that what only handles audio imports without it).
"""

from __future__ import annotations

import fractions
from collections import deque

import av
import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]  # [n, channels]
I420 = npt.NDArray[np.uint8]  # [h * 3 // 2, w]

AUDIO_PTIME = 0.020  # 20 ms audio frames, as WebRTC packetizes them
VIDEO_CLOCK_RATE = 90_000  # Hz, the RTP video clock
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


def layout_for(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def audio_frame_samples(sample_rate: int) -> int:
    """Samples in one 20 ms frame (whole for every rate the spec allows)."""
    return round(sample_rate * AUDIO_PTIME)


class FrameWindows:
    """Per-video-frame sample spans from one counter: frame k covers [k·r/f, (k+1)·r/f).

    Integer arithmetic, so any rate/fps pair (16 kHz at 30 fps gives 533, 533, 534, …) adds up
    exactly over any number of frames.
    """

    def __init__(self, sample_rate: int, fps: int) -> None:
        self.sample_rate = sample_rate
        self.fps = fps
        self.index = 0

    def length(self, index: int) -> int:
        return (index + 1) * self.sample_rate // self.fps - index * self.sample_rate // self.fps

    def next_length(self) -> int:
        return self.length(self.index)

    def advance(self) -> int:
        length = self.length(self.index)
        self.index += 1
        return length


class SampleBuffer:
    """A FIFO of int16 samples [n, channels] that appends and takes without re-copying all."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._chunks: deque[Samples] = deque()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, samples: Samples) -> None:
        if len(samples):
            self._chunks.append(samples)
            self._length += len(samples)

    def take(self, count: int) -> Samples:
        """The first `count` samples (fewer if the buffer holds fewer)."""
        count = min(count, self._length)
        parts: list[Samples] = []
        need = count
        while need > 0:
            head = self._chunks[0]
            if len(head) <= need:
                parts.append(self._chunks.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        self._length -= count
        if not parts:
            return np.zeros((0, self.channels), np.int16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._length = 0


def pcm_to_samples(pcm: bytes, channels: int) -> Samples:
    """s16le bytes to [n, channels]; a partial last sample frame is padded with zeros."""
    frame_bytes = 2 * channels
    if len(pcm) % frame_bytes:
        pcm = pcm + bytes(frame_bytes - len(pcm) % frame_bytes)
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16).reshape(-1, channels)


def convert_channels(samples: Samples, channels: int) -> Samples:
    if samples.shape[1] == channels:
        return samples
    if channels == 1:
        mixed = samples.mean(axis=1, dtype=np.float32).round()
        return np.asarray(mixed, np.int16).reshape(-1, 1)
    return np.repeat(samples[:, :1], channels, axis=1)


def frame_to_samples(frame: av.AudioFrame, channels: int) -> Samples:
    """An s16 (packed or planar) `AudioFrame` as [n, channels]."""
    if frame.format.name not in ("s16", "s16p"):
        frame = av.AudioResampler(format="s16", layout=frame.layout.name).resample(frame)[0]
    array = np.asarray(frame.to_ndarray(), np.int16)
    source_channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = np.ascontiguousarray(array.T)
    else:
        samples = array.reshape(-1, source_channels)
    return convert_channels(samples.astype(np.int16, copy=False), channels)


def samples_to_frame(samples: Samples, sample_rate: int) -> av.AudioFrame:
    """[n, channels] int16 to a packed s16 `AudioFrame` (pts left to the caller)."""
    channels = samples.shape[1]
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout=layout_for(channels)
    )
    frame.sample_rate = sample_rate
    return frame


def to_mono_float(samples: Samples) -> npt.NDArray[np.float32]:
    """[n, channels] int16 to mono float32 in [-1, 1]."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    return np.asarray(mono, np.float32) / 32768.0


def render_window(samples: Samples, samples_per_frame: int) -> npt.NDArray[np.float32]:
    """One renderer input row [1, samples_per_frame]: mono, zero-padded or cut to length."""
    window = np.zeros((1, samples_per_frame), np.float32)
    mono = to_mono_float(samples[:samples_per_frame])
    window[0, : len(mono)] = mono
    return window


def i420_to_frame(i420: I420) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(i420, format="yuv420p")
