"""Writes what a track produced (or a viewer received) to MP4: H.264 video, AAC audio.

Timestamps go in as the tracks made them — video pts in the 90 kHz clock, audio pts in samples —
so the file keeps the pipeline's own A/V alignment. Audio frames keep their explicit `pts` and
`time_base` all the way into the AAC encoder: then the encoder's 1,024 priming samples are
covered by an edit list. Without them the priming lands in the file as real audio and the sound
plays ~43 ms (at 24 kHz) late against the picture.
"""

from __future__ import annotations

import fractions
import logging
from pathlib import Path

import av

from avatar_worker import media

logger = logging.getLogger(__name__)


class Mp4Recorder:
    """An MP4 file fed with `av.VideoFrame`s and `av.AudioFrame`s as they come."""

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: int,
        sample_rate: int,
        channels: int = 1,
        preset: str = "veryfast",
        crf: int = 20,
    ) -> None:
        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._video = self._container.add_stream(
            "libx264", rate=fps, options={"preset": preset, "crf": str(crf)}
        )
        self._video.width = width
        self._video.height = height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = media.VIDEO_TIME_BASE
        self._video.codec_context.time_base = media.VIDEO_TIME_BASE
        self._audio = self._container.add_stream(
            "aac", rate=sample_rate, layout=media.layout_for(channels)
        )
        self._audio.time_base = fractions.Fraction(1, sample_rate)
        self._audio_time_base = fractions.Fraction(1, sample_rate)
        self._last_video_pts = -1
        self.video_frames = 0
        self.audio_samples = 0
        self._closed = False

    def add_video(self, frame: av.VideoFrame) -> None:
        if frame.pts is None or frame.pts <= self._last_video_pts:
            return  # a repeated timestamp cannot be muxed; the frame is a duplicate anyway
        self._last_video_pts = frame.pts
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != (
            self._video.width,
            self._video.height,
        ):
            converted = frame.reformat(self._video.width, self._video.height, format="yuv420p")
            converted.pts, converted.time_base = frame.pts, frame.time_base
            frame = converted
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.video_frames += 1

    def add_audio(self, frame: av.AudioFrame) -> None:
        if frame.time_base is None:
            frame.time_base = self._audio_time_base
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self.audio_samples += frame.samples

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for packet in self._video.encode(None):
            self._container.mux(packet)
        for packet in self._audio.encode(None):
            self._container.mux(packet)
        self._container.close()
