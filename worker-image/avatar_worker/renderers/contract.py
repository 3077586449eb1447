"""The two renderer shapes the worker runs, and the sentinel that closes a segment.

The synchronizer owns time: it cuts the audio that will play into one window per video frame
(from a single sample counter, so audio and video can never drift) and a driver
(`renderers.driver`) asks the renderer for the frames that go with those windows. A renderer
only draws; it never sleeps, paces or touches the network, so the same renderer runs live,
faster than real time (`avatar-worker render`) and in tests.

* `FrameRenderer` is this project's shape: float32 audio windows in, uint8 RGB frames out, a
  batch at a time, on torch (GPU when present, CPU otherwise). The built-ins and users' models
  implement it.
* `AvatarRenderer` is videosdk-agents' shape, without importing videosdk-agents (on Python
  3.11 `videosdk.agents.avatar` cannot be imported: it needs 3.12 syntax): `push_stream_chunk`
  takes `av.AudioFrame`s and `AudioSegmentEnd`, `reset_stream` drops what is buffered, and
  async iteration yields `av.VideoFrame`s, `av.AudioFrame`s and `AudioSegmentEnd`. A user's
  subclass of VideoSDK's own class is accepted too: the driver only calls the three methods.
* `AudioSegmentEnd` is constructed without arguments like VideoSDK's; ours also carries the
  segment it closes. When VideoSDK's class is already loaded (a user's renderer on 3.12
  imported it), `segment_end_for_foreign()` hands the renderer an instance of *that* class so
  its `isinstance` checks keep working, and `is_segment_end()` recognises either class.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import av
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from avatar_worker.segments import Segment

_VIDEOSDK_SCHEMA_MODULE = "videosdk.agents.avatar.avatar_schema"


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
    """Draws the video frames that go with the audio playing during them.

    Silent windows are all zeros. Frames follow each other in time: a renderer may keep state
    (smoothing, blink timers) from one `render` call to the next.
    """

    name: ClassVar[str]

    def __init__(self, config: RenderConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """uint8 RGB [N, height, width, 3] for float32 mono [N, samples_per_frame] in [-1, 1]."""

    def reset(self) -> None:  # noqa: B027 (optional hook: stateless renderers need nothing)
        """Return to idle at once (the user interrupted): drop smoothing state."""

    @property
    def vram_used_mib(self) -> int | None:
        """VRAM this renderer holds, when it runs on a GPU."""
        return None

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release models and buffers."""


class AudioSegmentEnd:
    """Sentinel: the TTS segment before it is complete (pushed, or fully rendered)."""

    __slots__ = ("segment",)

    def __init__(self, segment: Segment | None = None) -> None:
        self.segment = segment

    def __repr__(self) -> str:
        return f"AudioSegmentEnd({self.segment!r})"


class AvatarRenderer(abc.ABC):
    """Receives audio, yields interleaved video and audio frames (videosdk-agents' shape)."""

    @abc.abstractmethod
    async def push_stream_chunk(self, frame: av.AudioFrame | AudioSegmentEnd) -> None:
        """Take one audio frame, or the end-of-segment sentinel."""

    @abc.abstractmethod
    def reset_stream(self) -> Coroutine[Any, Any, None] | None:
        """Drop buffered audio at once (the user interrupted)."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[av.VideoFrame | av.AudioFrame | AudioSegmentEnd]:
        """Yield video and audio frames, then `AudioSegmentEnd` when a segment is rendered."""


def is_segment_end(item: object) -> bool:
    """Ours, or VideoSDK's sentinel (recognised by name: its module is never imported)."""
    return isinstance(item, AudioSegmentEnd) or type(item).__name__ == "AudioSegmentEnd"


def segment_end_for_foreign() -> object:
    """A sentinel a VideoSDK-written renderer recognises with its own `isinstance`."""
    module = sys.modules.get(_VIDEOSDK_SCHEMA_MODULE)
    foreign = getattr(module, "AudioSegmentEnd", None) if module is not None else None
    return foreign() if isinstance(foreign, type) else AudioSegmentEnd()
