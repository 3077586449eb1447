"""The data-channel protocol: byte compatibility with videosdk-agents, and the framed format."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from avatar_sdk import protocol as p

# What videosdk-agents 1.0.30 puts on the wire (avatar_audio_io.py), byte for byte.
STOCK_SEGMENT_END = '{"type": "segment_end"}'
STOCK_INTERRUPT = b"INTERRUPT"


def stock_stream_ended(position: float, interrupted: bool) -> str:
    return json.dumps(
        {
            "type": "stream_ended",
            "data": {"playback_position": position, "interrupted": interrupted},
        }
    )


def test_stock_control_messages_are_byte_identical() -> None:
    assert p.encode_segment_end() == STOCK_SEGMENT_END
    assert p.encode_interrupt() == STOCK_INTERRUPT
    assert p.encode_stream_ended(1.25, False) == stock_stream_ended(1.25, False)
    assert p.MAX_PCM_CHUNK_BYTES == 15_000


def test_stock_chunking_matches_avatar_audio_out() -> None:
    pcm = bytes(range(256)) * 120 + b"\x01"  # 30,721 bytes: two full chunks and an odd tail
    chunks = p.pcm_chunks(pcm)
    assert [len(c) for c in chunks] == [15_000, 15_000, 722]
    assert b"".join(chunks) == pcm + b"\x00"


def test_stock_messages_decode() -> None:
    assert p.decode_payload(STOCK_INTERRUPT) == p.Interrupt()
    assert p.decode_payload("INTERRUPT") == p.Interrupt()
    assert p.decode_payload(STOCK_SEGMENT_END) == p.SegmentEnd()
    assert p.decode_payload(STOCK_SEGMENT_END.encode()) == p.SegmentEnd()
    assert p.decode_payload(stock_stream_ended(2.5, True)) == p.StreamEnded(2.5, True)
    assert p.decode_payload(b"\x01\x00\x02\x00") == p.AudioChunk(b"\x01\x00\x02\x00")


def test_silence_delivered_as_text_is_recovered_as_silence() -> None:
    """The VideoSDK client hands valid-UTF-8 binary (digital silence is) over as str."""
    silence = bytes(4800)
    decoded = p.decode_payload(silence.decode("utf-8"))
    assert decoded == p.AudioChunk(silence)


def test_memoryview_and_bytearray_payloads() -> None:
    assert p.decode_payload(memoryview(b"\x01\x02")) == p.AudioChunk(b"\x01\x02")
    assert p.decode_payload(bytearray(b"INTERRUPT")) == p.Interrupt()


def test_odd_stock_pcm_is_padded() -> None:
    chunk = p.decode_payload(b"\x01\x02\x03")
    assert isinstance(chunk, p.AudioChunk)
    assert chunk.pcm == b"\x01\x02\x03\x00" and chunk.padded


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (None, "NoneType"),
        (12, "int"),
        (b"\x00" * (p.MAX_MESSAGE_BYTES + 2), "larger than a data-channel message"),
        ('{"type": "dance"}', "unknown control message"),
        (b'{"type": "dance"}', "unknown control message"),
        ('{"type": "stream_ended"}', "without a data object"),
        ('{"type": "stream_ended", "data": {"playback_position": "x"}}', "non-numeric"),
        ("\ud800", "surrogates"),
    ],
)
def test_garbage_is_malformed_with_a_reason(payload: object, reason: str) -> None:
    decoded = p.decode_payload(payload)
    assert isinstance(decoded, p.Malformed)
    assert reason in decoded.reason


def test_decode_data_reads_the_on_data_envelope() -> None:
    event = {"payload": b"INTERRUPT", "from": "agent-1", "timestamp": 5, "reliability": "RELIABLE"}
    assert p.decode_data(event) == p.DataMessage("agent-1", 5, "RELIABLE", p.Interrupt())
    assert isinstance(p.decode_data("nope").message, p.Malformed)
    assert p.decode_data({"payload": b"\x00\x00", "from": 7}).sender is None


def test_framer_round_trip() -> None:
    framer = p.SegmentFramer(sample_rate=24_000, channels=1, first_segment=7)
    pcm = bytes(range(200)) * 200  # 40,000 bytes
    messages = framer.audio(pcm)
    assert all(len(m) <= p.MAX_MESSAGE_BYTES for m in messages)
    decoded = [p.decode_payload(m) for m in messages]
    assert all(isinstance(d, p.AudioChunk) and d.framed for d in decoded)
    assert [d.seq for d in decoded if isinstance(d, p.AudioChunk)] == [0, 1, 2]
    assert b"".join(d.pcm for d in decoded if isinstance(d, p.AudioChunk)) == pcm
    assert p.decode_payload(framer.segment_end()) == p.SegmentEnd(7, 3)
    assert framer.segment_id == 8
    assert p.decode_payload(framer.interrupt()) == p.Interrupt(8)
    assert framer.segment_id == 9


def test_framer_keeps_partial_samples_for_the_next_call() -> None:
    framer = p.SegmentFramer(channels=2)
    first = framer.audio(b"\x01\x02\x03")  # less than one stereo frame (4 bytes)
    assert first == []
    second = [p.decode_payload(m) for m in framer.audio(b"\x04\x05\x06\x07\x08")]
    assert second == [p.AudioChunk(b"\x01\x02\x03\x04\x05\x06\x07\x08", 1, 0, 24_000, 2)]


def test_framed_messages_are_never_valid_utf8() -> None:
    """So the VideoSDK client never turns one into text."""
    message = p.SegmentFramer().audio(b"\x00" * 100)[0]
    with pytest.raises(UnicodeDecodeError):
        message.decode("utf-8")


def test_framed_with_unknown_version_or_kind_is_malformed_not_audio() -> None:
    message = bytearray(p.encode_frame(p.KIND_INTERRUPT, segment_id=1))
    message[4] = 9  # version byte
    fixed = _with_fresh_crc(bytes(message))
    decoded = p.decode_payload(fixed)
    assert isinstance(decoded, p.Malformed) and "version 9" in decoded.reason
    message = bytearray(p.encode_frame(p.KIND_INTERRUPT, segment_id=1))
    message[5] = 77  # kind byte
    decoded = p.decode_payload(_with_fresh_crc(bytes(message)))
    assert isinstance(decoded, p.Malformed) and "kind 77" in decoded.reason


def _with_fresh_crc(message: bytes) -> bytes:
    import zlib

    header, payload = message[:22], message[26:]
    return header + struct.pack("<I", zlib.crc32(payload, zlib.crc32(header))) + payload


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": 9, "segment_id": 1},
        {"kind": p.KIND_AUDIO, "segment_id": -1, "channels": 1, "payload": b"\x00\x00"},
        {"kind": p.KIND_AUDIO, "segment_id": 1, "channels": 3, "payload": b"\x00" * 6},
        {"kind": p.KIND_AUDIO, "segment_id": 1, "channels": 1, "payload": b"\x00"},
        {"kind": p.KIND_AUDIO, "segment_id": 1, "channels": 1, "payload": b"\x00" * 15_002},
    ],
)
def test_encoder_refuses_what_it_cannot_frame(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        p.encode_frame(**kwargs)  # deliberately wrong input


# --- property tests ----------------------------------------------------------------------------

pcm_bytes = st.binary(min_size=2, max_size=p.MAX_PCM_CHUNK_BYTES).map(
    lambda b: b[: len(b) - len(b) % 2]
)


@settings(max_examples=500)
@given(pcm_bytes)
def test_stock_pcm_is_never_mistaken_for_framed_or_control(pcm: bytes) -> None:
    assume(pcm and pcm != STOCK_INTERRUPT and not pcm.startswith(b"{"))
    assert p.decode_payload(pcm) == p.AudioChunk(pcm)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=p.MAX_PCM_CHUNK_BYTES - 8))
def test_pcm_that_starts_with_the_magic_is_still_pcm(tail: bytes) -> None:
    """Audio whose first samples happen to spell the magic is played, not dropped."""
    pcm = p.FRAME_MAGIC + tail
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    assert p.decode_payload(pcm) == p.AudioChunk(pcm)


@settings(max_examples=300)
@given(
    segment=st.integers(0, p.MAX_SEGMENT_ID),
    seq=st.integers(0, 2**32 - 1),
    channels=st.sampled_from([1, 2]),
    rate=st.sampled_from([16_000, 24_000, 48_000]),
    frames=st.integers(1, 3750),
    data=st.data(),
)
def test_framed_audio_round_trips_and_is_never_stock(
    segment: int, seq: int, channels: int, rate: int, frames: int, data: st.DataObject
) -> None:
    payload = data.draw(st.binary(min_size=frames * 2 * channels, max_size=frames * 2 * channels))
    message = p.encode_frame(
        p.KIND_AUDIO,
        segment_id=segment,
        seq=seq,
        sample_rate=rate,
        channels=channels,
        payload=payload,
    )
    decoded = p.decode_payload(message)
    assert decoded == p.AudioChunk(payload, segment, seq, rate, channels)
    # as text it can never arrive (not UTF-8), so it is never JSON or INTERRUPT either
    with pytest.raises(UnicodeDecodeError):
        message.decode("utf-8")


@settings(max_examples=300)
@given(st.binary(min_size=p.FRAME_HEADER_BYTES, max_size=2000), st.integers(0, 1999))
def test_a_corrupted_frame_is_never_played_as_framed_audio(raw: bytes, flip: int) -> None:
    message = p.encode_frame(
        p.KIND_AUDIO, segment_id=3, seq=1, sample_rate=24_000, channels=1, payload=b"\x10\x00" * 50
    )
    index = flip % len(message)
    corrupted = message[:index] + bytes([message[index] ^ 0x5A]) + message[index + 1 :]
    decoded = p.decode_payload(corrupted)
    assert not (isinstance(decoded, p.AudioChunk) and decoded.framed)


@settings(max_examples=1000)
@given(
    st.one_of(
        st.binary(max_size=20_000),
        st.text(max_size=2000),
        st.none(),
        st.integers(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    )
)
def test_decode_never_raises(payload: object) -> None:
    decoded = p.decode_payload(payload)
    assert isinstance(
        decoded, p.AudioChunk | p.SegmentEnd | p.Interrupt | p.StreamEnded | p.Malformed
    )
    if isinstance(decoded, p.AudioChunk):
        assert len(decoded.pcm) % 2 == 0 and decoded.pcm


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_binary_recovered_from_text_is_exact(raw: bytes) -> None:
    """Whatever survives as UTF-8 text decodes exactly as the original bytes would."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert p.decode_payload(text) == p.decode_payload(raw) or text.lstrip().startswith("{")
