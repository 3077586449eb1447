"""RGB to the planar I420 the video track sends, with OpenCV.

Renderers draw uint8 RGB [height, width, 3]; WebRTC encoders want I420 (`media.I420`). The
frame driver converts each frame here, in its render thread, and the synchronizer draws its
default idle frame. This is the one module of the pipeline that imports cv2, so that the
receiver and the transports import without it (an agent-side process that only handles audio
need not install OpenCV).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from avatar_worker import media


def rgb_to_i420(rgb: npt.NDArray[np.uint8]) -> media.I420:
    """uint8 [h, w, 3] RGB to planar I420 (what `VideoFrame(format="yuv420p")` holds)."""
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420), np.uint8)


def resize_rgb(frame: np.ndarray[Any, Any], width: int, height: int) -> np.ndarray[Any, Any]:
    """A frame of another size scaled to `width` × `height` (area interpolation)."""
    return np.asarray(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))


def solid_i420(width: int, height: int, rgb: tuple[int, int, int] = (24, 24, 28)) -> media.I420:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = rgb
    return rgb_to_i420(frame)
