"""The local room's wire format between `roomserver` and `roomclient`.

JSON text messages carry control (join, events, leave). Binary messages are
`b"AVLR" | kind | header length | JSON header | body`: a data message (kind 1, the payload as
the body), audio (2: int16 samples) and video (3: a raw I420 picture). Frames travel raw, over
loopback, so a worker in another process is timed as it would be in the room's own.
"""

from __future__ import annotations

import fractions
import json
import struct
from typing import Any

import numpy as np

from avatar_worker import media

_MAGIC = b"AVLR"
KIND_DATA, KIND_AUDIO, KIND_VIDEO = 1, 2, 3
_ENVELOPE = struct.Struct("<4sBI")


def envelope(kind: int, header: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _ENVELOPE.pack(_MAGIC, kind, len(head)) + head + body


def open_envelope(message: bytes) -> tuple[int, dict[str, Any], bytes]:
    magic, kind, head_len = _ENVELOPE.unpack_from(message)
    if magic != _MAGIC:
        raise ValueError("not a local-room envelope")
    start = _ENVELOPE.size
    header = json.loads(message[start : start + head_len])
    return kind, header, message[start + head_len :]


def encode_frame(kind: str, frame: Any) -> bytes:
    if kind == "audio":
        samples = media.frame_to_samples(frame, len(frame.layout.channels))
        header = {"pts": frame.pts, "rate": frame.sample_rate, "channels": samples.shape[1]}
        return envelope(KIND_AUDIO, header, samples.tobytes())
    i420 = frame.to_ndarray(format="yuv420p")
    tb = frame.time_base or media.VIDEO_TIME_BASE
    header = {
        "pts": frame.pts,
        "tb": [tb.numerator, tb.denominator],
        "width": frame.width,
        "height": frame.height,
    }
    return envelope(KIND_VIDEO, header, i420.tobytes())


def decode_frame(kind: int, header: dict[str, Any], body: bytes) -> tuple[str, Any]:
    if kind == KIND_AUDIO:
        samples = np.frombuffer(body, np.int16).reshape(-1, int(header["channels"]))
        audio = media.samples_to_frame(samples, int(header["rate"]))
        audio.pts = header["pts"]
        audio.time_base = fractions.Fraction(1, int(header["rate"]))
        return "audio", audio
    width, height = int(header["width"]), int(header["height"])
    i420 = np.frombuffer(body, np.uint8).reshape(height * 3 // 2, width)
    video = media.i420_to_frame(i420)
    video.pts = header["pts"]
    video.time_base = fractions.Fraction(*header["tb"])
    return "video", video
