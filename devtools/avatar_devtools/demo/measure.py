"""Figures from what a viewer of the room received, and when (the room's clock).

A viewer plays each frame as it arrives, so what it sees and hears is the arrival times:

- **A/V offset**: for every video frame, its arrival minus the arrival of the audio sample at
  the frame's media time (the frame's first sample: its audio frame's arrival plus the sample's
  place in it). Positive: the picture is late against the sound. Median and the 95th percentile
  of its magnitude over the session.
- **Interrupt → silence**: from the agent sending `INTERRUPT` to the end of the last non-silent
  sample the viewer got before the next turn started. The worker sends digital silence between
  turns, so that is when the viewer's audio went quiet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from avatar_worker.transports.viewer import ViewerLog

VIDEO_CLOCK = 90_000  # video pts are in the 90 kHz RTP clock


class Offset(NamedTuple):
    median_ms: float
    p95_abs_ms: float
    frames: int


class _Audio(NamedTuple):
    pts: np.ndarray  # first sample of each frame
    arrivals: np.ndarray
    sizes: np.ndarray
    samples: np.ndarray  # every sample, in pts order (mono)


def _audio(log: ViewerLog) -> _Audio | None:
    frames = sorted(log.audio, key=lambda a: a[0])
    if not frames:
        return None
    return _Audio(
        np.array([f[0] for f in frames], dtype=np.int64),
        np.array([f[1] for f in frames], dtype=np.float64),
        np.array([len(f[2]) for f in frames], dtype=np.int64),
        np.concatenate([f[2][:, 0] for f in frames]),
    )


def av_offset(log: ViewerLog, sample_rate: int) -> Offset | None:
    """The viewer's A/V offset over the session; None before any audio and video arrived."""
    audio = _audio(log)
    if audio is None or not log.video:
        return None
    video = sorted(log.video, key=lambda v: v[0])
    # back to samples, rounding up as the synchronizer floors samples to the 90 kHz clock
    video_pts = np.array([-(-v[0] * sample_rate // VIDEO_CLOCK) for v in video], dtype=np.int64)
    video_at = np.array([v[1] for v in video], dtype=np.float64)
    frame_of = np.searchsorted(audio.pts, video_pts, side="right") - 1
    inside = frame_of >= 0
    inside[inside] &= (video_pts[inside] - audio.pts[frame_of[inside]]) < audio.sizes[
        frame_of[inside]
    ]
    if not inside.any():
        return None
    index = frame_of[inside]
    audio_at = audio.arrivals[index] + (video_pts[inside] - audio.pts[index]) / sample_rate
    offsets = (video_at[inside] - audio_at) * 1000.0
    return Offset(
        round(float(np.median(offsets)), 2),
        round(float(np.percentile(np.abs(offsets), 95)), 2),
        int(inside.sum()),
    )


def silence_after(log: ViewerLog, sample_rate: int, since: float, until: float) -> float | None:
    """Seconds from `since` to the end of the last non-silent sample the viewer got before
    `until` (0 when it was already silent); None without audio."""
    audio = _audio(log)
    if audio is None:
        return None
    starts = np.repeat(audio.arrivals, audio.sizes)
    within = np.concatenate([np.arange(n) for n in audio.sizes]) / sample_rate
    played_at = starts + within
    heard = (audio.samples != 0) & (played_at > since) & (played_at < until)
    if not heard.any():
        return 0.0
    last = float(played_at[np.flatnonzero(heard)[-1]]) + 1.0 / sample_rate
    return max(0.0, last - since)


def received_seconds(log: ViewerLog, sample_rate: int) -> float:
    return sum(len(f[2]) for f in log.audio) / sample_rate
