"""The seam between the media pipeline and whatever draws the avatar.

The synchronizer owns time: it cuts the audio that will play into one window per video frame
(from a single sample counter, so audio and video can never drift) and asks a `FrameRenderer`
for the frames that go with those windows, a batch at a time. A renderer only draws; it never
sleeps, paces or touches the network, so the same renderer runs live, faster than real time
(`avatar-worker render`) and in tests.

Renderers run on torch (GPU when present, CPU otherwise) and return host-side uint8 RGB frames.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt


class RenderConfig(NamedTuple):
    """What every renderer is built with."""

    width: int
    height: int
    fps: int
    sample_rate: int
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"…
    seed: int = 0
    image: str | None = None  # reference portrait path (portrait renderer)
    model_path: str | None = None  # user's weights (model renderer)

    @property
    def samples_per_frame(self) -> int:
        """Length of each frame's audio window (rounded when rate/fps is not whole)."""
        return round(self.sample_rate / self.fps)


class FrameRenderer(abc.ABC):
    """Draws the video frames that go with the audio playing during them."""

    name: ClassVar[str]

    def __init__(self, config: RenderConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Frames for N windows of mono audio.

        `audio` is float32 [N, samples_per_frame] in [-1, 1], all zeros for silent frames;
        the result is uint8 [N, height, width, 3] RGB. Frames follow each other in time:
        a renderer may keep state (smoothing, blink timers) from one call to the next.
        """

    def reset(self) -> None:  # noqa: B027 (optional hook: stateless renderers need nothing)
        """Return to idle at once (the user interrupted): drop smoothing state."""

    @property
    def vram_used_mib(self) -> int | None:
        """VRAM this renderer holds, when it runs on a GPU."""
        return None

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release models and buffers."""
