"""The data-channel protocol between a voice agent and its Avatar Server.

Two dialects share one channel:

* **Stock** — byte for byte what videosdk-agents' `AvatarAudioOut` sends and `AvatarAudioIn`
  expects: raw s16le PCM chunks of at most 15,000 bytes (UNRELIABLE), the text
  `{"type": "segment_end"}` and the bytes `INTERRUPT` (RELIABLE), and the worker's ack
  `{"type": "stream_ended", "data": {"playback_position": …, "interrupted": …}}`.
* **Framed** — this project's own agent-side sender wraps each PCM chunk in a 26-byte header
  (magic, version, kind, channels, sample rate, segment id, sequence number, payload length,
  CRC-32), so the receiver can restore order, conceal loss with silence and discard exactly the
  interrupted segment. Control messages have framed forms too (a segment end that also carries
  the segment's chunk count, so lost trailing chunks are noticed; an interrupt naming its segment).

Why a framed message can never be mistaken for anything else:
* its first byte, 0xA5, can never start valid UTF-8, so the VideoSDK client always hands it over
  as `bytes` and it is never JSON or the `INTERRUPT` text;
* a stock PCM chunk is taken for framed only if its first 4 bytes are the magic *and* the length
  field matches *and* the CRC-32 over header and payload matches (odds below 2^-64 for any
  audio). A chunk with the magic but a bad CRC is played as the stock PCM it is.

The VideoSDK client's trap: a binary message that happens to be valid UTF-8 (digital silence
is) arrives as `str`. `decode_payload` re-encodes such text and classifies the exact bytes.

This module is pure: no asyncio, no network, no numpy.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Final, NamedTuple

# ---------------------------------------------------------------------------------------------
# constants of the stock protocol

INTERRUPT: Final = b"INTERRUPT"
SEGMENT_END_TYPE: Final = "segment_end"
STREAM_ENDED_TYPE: Final = "stream_ended"
MAX_PCM_CHUNK_BYTES: Final = 15_000  # what AvatarAudioOut sends at most
MAX_MESSAGE_BYTES: Final = 15_360  # what VideoSDK's Meeting.send accepts at most
RELIABLE: Final = "RELIABLE"  # ordered, maxRetransmits=5
UNRELIABLE: Final = "UNRELIABLE"  # unordered, no retransmits
SAMPLE_BYTES: Final = 2  # s16le

# ---------------------------------------------------------------------------------------------
# the framed dialect

FRAME_MAGIC: Final = b"\xa5VAF"
FRAME_VERSION: Final = 1
# magic, version, kind, channels, reserved, sample rate, segment id, sequence, payload length
_HEADER: Final = struct.Struct("<4sBBBBIIIH")
_CRC: Final = struct.Struct("<I")
FRAME_HEADER_BYTES: Final = _HEADER.size + _CRC.size  # 26
MAX_FRAMED_PCM_BYTES: Final = MAX_PCM_CHUNK_BYTES  # header + 15,000 ≤ 15,360
MAX_SEGMENT_ID: Final = 0xFFFF_FFFF

KIND_AUDIO: Final = 1
KIND_SEGMENT_END: Final = 2
KIND_INTERRUPT: Final = 3


class AudioChunk(NamedTuple):
    """PCM s16le audio. Framed chunks carry their segment, sequence number and format."""

    pcm: bytes
    segment_id: int | None = None
    seq: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    padded: bool = False  # an odd-length stock chunk was padded with one zero byte

    @property
    def framed(self) -> bool:
        return self.segment_id is not None


class SegmentEnd(NamedTuple):
    """The agent finished a TTS turn. Framed: `chunks` audio chunks were sent in it."""

    segment_id: int | None = None
    chunks: int | None = None


class Interrupt(NamedTuple):
    """The user barged in: stop now. Framed: only `segment_id` is discarded."""

    segment_id: int | None = None


class StreamEnded(NamedTuple):
    """The worker's ack: a segment finished playing (or was cut short)."""

    playback_position: float
    interrupted: bool
    segment_id: int | None = None


class Malformed(NamedTuple):
    """Anything the protocol does not know; `reason` says what was wrong."""

    reason: str


Message = AudioChunk | SegmentEnd | Interrupt | StreamEnded | Malformed


class DataMessage(NamedTuple):
    """One VideoSDK `on_data` event, decoded."""

    sender: str | None
    timestamp: Any
    reliability: str | None
    message: Message


# ---------------------------------------------------------------------------------------------
# encoding


def pcm_chunks(pcm: bytes, max_bytes: int = MAX_PCM_CHUNK_BYTES) -> list[bytes]:
    """Split PCM the way `AvatarAudioOut.handle_audio_input` does (odd tails padded)."""
    if max_bytes <= 0 or max_bytes % SAMPLE_BYTES:
        raise ValueError(f"max_bytes must be a positive even number, got {max_bytes}")
    chunks = [pcm[i : i + max_bytes] for i in range(0, len(pcm), max_bytes)]
    return [c + b"\x00" if len(c) % 2 else c for c in chunks if c]


def encode_interrupt() -> bytes:
    return INTERRUPT


def encode_segment_end() -> str:
    # json.dumps' default separators, exactly as AvatarAudioOut writes it
    return json.dumps({"type": SEGMENT_END_TYPE})


def encode_stream_ended(
    playback_position: float, interrupted: bool, segment_id: int | None = None
) -> str:
    data: dict[str, Any] = {"playback_position": playback_position, "interrupted": interrupted}
    if segment_id is not None:
        data["segment_id"] = segment_id  # extra key: the stock agent ignores it
    return json.dumps({"type": STREAM_ENDED_TYPE, "data": data})


def encode_frame(
    kind: int,
    *,
    segment_id: int,
    seq: int = 0,
    sample_rate: int = 0,
    channels: int = 0,
    payload: bytes = b"",
) -> bytes:
    """One framed message. Prefer `SegmentFramer`, which numbers chunks for you."""
    if kind not in (KIND_AUDIO, KIND_SEGMENT_END, KIND_INTERRUPT):
        raise ValueError(f"unknown frame kind {kind}")
    if not 0 <= segment_id <= MAX_SEGMENT_ID or not 0 <= seq <= 0xFFFF_FFFF:
        raise ValueError("segment_id and seq must fit in 32 bits")
    if len(payload) > MAX_FRAMED_PCM_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_FRAMED_PCM_BYTES}")
    if kind == KIND_AUDIO and (channels not in (1, 2) or len(payload) % (2 * channels)):
        raise ValueError("audio payload must hold whole s16le samples for 1 or 2 channels")
    header = _HEADER.pack(
        FRAME_MAGIC, FRAME_VERSION, kind, channels, 0, sample_rate, segment_id, seq, len(payload)
    )
    crc = zlib.crc32(payload, zlib.crc32(header))
    return header + _CRC.pack(crc) + payload


class SegmentFramer:
    """Agent-side numbering of framed audio: one segment id per TTS turn, seq per chunk."""

    def __init__(self, sample_rate: int = 24_000, channels: int = 1, first_segment: int = 1):
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_id = first_segment
        self._seq = 0
        self._remainder = b""

    def audio(self, pcm: bytes) -> list[bytes]:
        """Frame PCM; a partial sample frame is kept back for the next call."""
        frame_bytes = SAMPLE_BYTES * self.channels
        data = self._remainder + pcm
        whole = len(data) - len(data) % frame_bytes
        self._remainder = data[whole:]
        step = MAX_FRAMED_PCM_BYTES - MAX_FRAMED_PCM_BYTES % frame_bytes
        out = []
        for i in range(0, whole, step):
            out.append(
                encode_frame(
                    KIND_AUDIO,
                    segment_id=self.segment_id,
                    seq=self._seq,
                    sample_rate=self.sample_rate,
                    channels=self.channels,
                    payload=data[i : min(i + step, whole)],
                )
            )
            self._seq += 1
        return out

    def segment_end(self) -> bytes:
        """Close the current segment (its chunk count goes along) and start the next one."""
        message = encode_frame(KIND_SEGMENT_END, segment_id=self.segment_id, seq=self._seq)
        self._next_segment()
        return message

    def interrupt(self) -> bytes:
        """Interrupt the current segment and start the next one."""
        message = encode_frame(KIND_INTERRUPT, segment_id=self.segment_id)
        self._next_segment()
        return message

    def _next_segment(self) -> None:
        self.segment_id = self.segment_id + 1 if self.segment_id < MAX_SEGMENT_ID else 1
        self._seq = 0
        self._remainder = b""


# ---------------------------------------------------------------------------------------------
# decoding


def _decode_frame(raw: bytes) -> Message | None:
    """A framed message, or None when `raw` is not one (then it is stock PCM)."""
    if len(raw) < FRAME_HEADER_BYTES or not raw.startswith(FRAME_MAGIC):
        return None
    _, version, kind, channels, _, rate, segment_id, seq, length = _HEADER.unpack_from(raw)
    if length != len(raw) - FRAME_HEADER_BYTES:
        return None
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    payload = raw[FRAME_HEADER_BYTES:]
    if zlib.crc32(payload, zlib.crc32(raw[: _HEADER.size])) != crc:
        return None
    # From here on it is certainly framed: problems are malformed, never audio.
    if version != FRAME_VERSION:
        return Malformed(f"framed message of unsupported version {version}")
    if kind == KIND_AUDIO:
        if channels not in (1, 2) or not payload or len(payload) % (SAMPLE_BYTES * channels):
            return Malformed("framed audio with a partial sample or bad channel count")
        if rate == 0:
            return Malformed("framed audio without a sample rate")
        return AudioChunk(payload, segment_id, seq, rate, channels)
    if kind == KIND_SEGMENT_END:
        return SegmentEnd(segment_id, seq)
    if kind == KIND_INTERRUPT:
        return Interrupt(segment_id)
    return Malformed(f"framed message of unknown kind {kind}")


def _decode_control(text: str) -> Message | None:
    """A JSON control message, or None when the text is not JSON at all."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):  # only text starting with "{" gets here
        return None
    kind = message.get("type")
    if kind == SEGMENT_END_TYPE:
        return SegmentEnd()
    if kind == STREAM_ENDED_TYPE:
        data = message.get("data")
        if not isinstance(data, dict):
            return Malformed("stream_ended without a data object")
        position = data.get("playback_position", 0.0)
        segment = data.get("segment_id")
        if not isinstance(position, int | float) or isinstance(position, bool):
            return Malformed("stream_ended with a non-numeric playback_position")
        return StreamEnded(
            float(position),
            bool(data.get("interrupted", False)),
            segment if isinstance(segment, int) and not isinstance(segment, bool) else None,
        )
    return Malformed(f"unknown control message type {kind!r}")


def _stock_pcm(raw: bytes) -> Message:
    if not raw:
        return Malformed("empty payload")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Malformed(f"payload of {len(raw)} bytes is larger than a data-channel message")
    if len(raw) % SAMPLE_BYTES:
        return AudioChunk(raw + b"\x00", padded=True)
    return AudioChunk(raw)


def decode_payload(payload: object) -> Message:
    """Classify one data-channel payload; never raises."""
    if isinstance(payload, memoryview | bytearray):
        payload = bytes(payload)
    if isinstance(payload, str):
        if payload == "INTERRUPT":
            return Interrupt()
        if payload.lstrip().startswith("{"):
            control = _decode_control(payload)
            if control is not None:
                return control
        # The UTF-8 trap: binary that happened to be valid UTF-8 arrived as text.
        try:
            raw = payload.encode("utf-8")
        except UnicodeEncodeError:
            return Malformed("text payload that is not UTF-8 (lone surrogates)")
        return _stock_pcm(raw)
    if not isinstance(payload, bytes):
        return Malformed(f"payload of type {type(payload).__name__}")
    if payload == INTERRUPT:
        return Interrupt()
    framed = _decode_frame(payload)
    if framed is not None:
        return framed
    if payload[:1] == b"{":
        try:
            control = _decode_control(payload.decode("utf-8"))
        except UnicodeDecodeError:
            control = None
        if control is not None:
            return control  # JSON is never audio, even JSON we do not know
    return _stock_pcm(payload)


def decode_data(data: object) -> DataMessage:
    """Decode a VideoSDK `on_data` dict: {"payload", "from", "timestamp", "reliability"}."""
    if not isinstance(data, dict):
        return DataMessage(None, None, None, Malformed(f"event of type {type(data).__name__}"))
    sender = data.get("from")
    reliability = data.get("reliability")
    return DataMessage(
        sender if isinstance(sender, str) else None,
        data.get("timestamp"),
        reliability if isinstance(reliability, str) else None,
        decode_payload(data.get("payload")),
    )
