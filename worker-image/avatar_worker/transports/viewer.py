"""A user's browser in a local room: subscribes to the avatar and keeps what arrives.

`LocalViewer` listens to a `LocalParticipant`'s frames (one sender's, when told) and keeps
them small, in a `ViewerLog`: each audio frame's samples and each picture's mean luma, stamped
with the room clock at arrival, which is what the tests and the demo measure sync and latency
from. It can also record what it received to MP4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av

from avatar_worker import media, recorder
from avatar_worker.transports.localroom import LocalParticipant, ReceivedFrame


@dataclass
class ViewerLog:
    """Arrival-stamped frames, kept small: audio samples, and the mean luma of each picture."""

    audio: list[tuple[int, float, media.Samples]] = field(default_factory=list)  # pts, at, pcm
    video: list[tuple[int, float, float]] = field(default_factory=list)  # pts(90k), at, luma


class LocalViewer:
    """A user's browser in the room: subscribes to the avatar and keeps what arrives."""

    def __init__(
        self,
        participant: LocalParticipant,
        *,
        source: str | None = None,
        record_to: str | Path | None = None,
        width: int = 512,
        height: int = 512,
        fps: int = 30,
        sample_rate: int = 24_000,
        channels: int = 1,
    ) -> None:
        self.participant = participant
        self._source = source
        self.log = ViewerLog()
        self.last_video: av.VideoFrame | None = None
        self._recorder = (
            recorder.Mp4Recorder(
                record_to,
                width=width,
                height=height,
                fps=fps,
                sample_rate=sample_rate,
                channels=channels,
            )
            if record_to is not None
            else None
        )
        self._channels = channels
        participant.add_frame_listener(self._on_frame)

    def _on_frame(self, received: ReceivedFrame) -> None:
        if self._source is not None and received.sender != self._source:
            return
        frame = received.frame
        if isinstance(frame, av.AudioFrame):
            samples = media.frame_to_samples(frame, self._channels)
            self.log.audio.append((int(frame.pts or 0), received.arrived_at, samples))
            if self._recorder is not None:
                self._recorder.add_audio(frame)
        elif isinstance(frame, av.VideoFrame):
            luma = frame.to_ndarray(format="yuv420p")[: frame.height]
            self.log.video.append((int(frame.pts or 0), received.arrived_at, float(luma.mean())))
            self.last_video = frame
            if self._recorder is not None:
                self._recorder.add_video(frame)

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
