"""AudioReceiver: stock and framed audio, order, loss, segment ends, interrupts, garbage."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import av
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_support import AGENT, data, drain, reliable, run_virtual, signal

from avatar_sdk import protocol
from avatar_worker import AudioReceiver, AudioSegmentEnd
from avatar_worker.receiver import segment_of


def pcm_of(items: list[object]) -> np.ndarray:
    frames = [i.to_ndarray().reshape(-1) for i in items if isinstance(i, av.AudioFrame)]
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


def ends_of(items: list[object]) -> list[AudioSegmentEnd]:
    return [i for i in items if isinstance(i, AudioSegmentEnd)]


def test_package_exports_the_receiver() -> None:
    import avatar_worker

    assert avatar_worker.AudioReceiver is AudioReceiver


def test_the_receiver_imports_without_opencv() -> None:
    # Only the renderers and the video conversion need cv2; the audio side must not.
    code = "import sys; sys.modules['cv2'] = None; import avatar_worker.receiver"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_stock_pcm_arrives_in_order_with_its_segment_end() -> None:
    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        pcm = signal(20_000)
        for chunk in protocol.pcm_chunks(pcm):
            receiver.feed(data(chunk))
        receiver.feed(reliable(protocol.encode_segment_end()))
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    items = run_virtual(main())
    assert pcm_of(items).tobytes() == signal(20_000)
    (end,) = ends_of(items)
    assert end.segment is not None and end.segment.received_samples == 20_000
    assert isinstance(items[-1], AudioSegmentEnd)
    frame = items[0]
    assert isinstance(frame, av.AudioFrame) and frame.sample_rate == 24_000
    assert segment_of(frame) is end.segment


def test_utf8_decoded_silence_arrives_as_silence() -> None:
    """VideoSDK hands valid-UTF-8 binary (digital silence is) to listeners as str."""

    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        receiver.feed(data(bytes(4800).decode("utf-8")))  # 2,400 samples of silence, as str
        receiver.feed(data("\x00" * 3))  # odd length: padded to 2 samples
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    items = run_virtual(main())
    pcm = pcm_of(items)
    assert len(pcm) == 2_400 + 2
    assert not pcm.any()


def test_foreign_senders_are_ignored_once_the_agent_is_known() -> None:
    async def main() -> tuple[list[Any], AudioReceiver]:
        receiver = AudioReceiver()  # agent unknown: the first audio sender becomes the agent
        receiver.feed(data(signal(480), sender="agent-x"))
        receiver.feed(data(signal(480, 9000), sender="intruder"))
        receiver.feed(reliable(protocol.encode_interrupt(), sender="intruder"))
        receiver.feed(data(signal(480, start=480), sender="agent-x"))
        receiver.close()
        return await drain(receiver), receiver

    items, receiver = run_virtual(main())
    assert receiver.agent_participant_id == "agent-x"
    assert pcm_of(items).tobytes() == signal(960)
    assert receiver.stats.ignored == 2
    assert receiver.stats.interrupts == 0


def test_control_before_any_audio_does_not_pick_the_agent() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver()
        receiver.feed(reliable(protocol.encode_interrupt(), sender="somebody"))
        receiver.feed(data(signal(480), sender="agent-y"))
        receiver.close()
        await drain(receiver)
        return receiver

    receiver = run_virtual(main())
    assert receiver.agent_participant_id == "agent-y"
    assert receiver.stats.ignored == 1


def _framed(pcm: bytes, chunk_samples: int, segment: int = 7) -> tuple[list[bytes], bytes]:
    framer = protocol.SegmentFramer(24_000, 1, first_segment=segment)
    chunks = []
    for i in range(0, len(pcm), chunk_samples * 2):
        chunks += framer.audio(pcm[i : i + chunk_samples * 2])
    return chunks, framer.segment_end()


def test_reordered_framed_chunks_come_out_in_order() -> None:
    chunks, end = _framed(signal(24_000), 480)
    shuffled = list(chunks)
    rng = random.Random(4)
    for i in range(0, len(shuffled), 6):  # reorder within windows of 6 chunks
        window = shuffled[i : i + 6]
        rng.shuffle(window)
        shuffled[i : i + 6] = window

    async def main() -> tuple[list[Any], AudioReceiver]:
        receiver = AudioReceiver(AGENT)
        for chunk in shuffled:
            receiver.feed(data(chunk))
        receiver.feed(reliable(end))
        receiver.close()
        return await drain(receiver), receiver

    items, receiver = run_virtual(main())
    assert pcm_of(items).tobytes() == signal(24_000)
    assert receiver.stats.concealed == 0
    assert len(ends_of(items)) == 1


def test_a_lost_framed_chunk_is_concealed_with_silence_and_never_stalls() -> None:
    chunks, _ = _framed(signal(4_800), 480)
    lost = 3

    async def main() -> tuple[list[tuple[float, Any]], AudioReceiver]:
        loop = asyncio.get_running_loop()
        receiver = AudioReceiver(AGENT, reorder_window=0.05)
        for i, chunk in enumerate(chunks):
            if i != lost:
                receiver.feed(data(chunk))
        # no segment_end yet: the gap must be concealed by the reorder window alone
        out: list[tuple[float, Any]] = []
        start = loop.time()
        async for item in receiver:
            out.append((loop.time() - start, item))
            if sum(i.samples for _, i in out if isinstance(i, av.AudioFrame)) >= 4_800:
                break
        return out, receiver

    out, receiver = run_virtual(main())
    pcm = pcm_of([item for _, item in out])
    expected = np.frombuffer(signal(4_800), np.int16).copy()
    expected[lost * 480 : (lost + 1) * 480] = 0
    assert np.array_equal(pcm, expected)  # same length: the timeline did not shift
    assert receiver.stats.concealed == 1
    assert max(t for t, _ in out) <= 0.05 + 1e-6  # waited the reorder window, no longer


def test_lost_trailing_chunks_are_concealed_up_to_the_framed_chunk_count() -> None:
    chunks, end = _framed(signal(2_400), 480)

    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        for chunk in chunks[:-2]:
            receiver.feed(data(chunk))
        receiver.feed(reliable(end))
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    items = run_virtual(main())
    pcm = pcm_of(items)
    assert len(pcm) == 2_400 and not pcm[-960:].any()
    assert len(ends_of(items)) == 1


def test_a_segment_whose_segment_end_is_lost_ends_after_an_idle_gap() -> None:
    async def main() -> tuple[list[tuple[float, Any]], AudioReceiver]:
        loop = asyncio.get_running_loop()
        receiver = AudioReceiver(AGENT, idle_gap=0.8)
        receiver.feed(data(signal(2_400)))
        start = loop.time()
        out = []
        async for item in receiver:
            out.append((loop.time() - start, item))
            if isinstance(item, AudioSegmentEnd):
                break
        return out, receiver

    out, receiver = run_virtual(main())
    at, end = out[-1]
    assert isinstance(end, AudioSegmentEnd) and end.segment is not None
    assert end.segment.inferred_end
    assert abs(at - 0.8) < 1e-6
    assert receiver.stats.inferred_ends == 1


def test_framed_interrupt_discards_exactly_that_segment() -> None:
    first, first_end = _framed(signal(4_800, 1000), 480, segment=1)
    second, second_end = _framed(signal(2_400, 2000), 480, segment=2)
    interrupted: list[list[object]] = []

    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        receiver.add_interrupt_listener(lambda segments: interrupted.append(list(segments)))
        for chunk in first[:5]:
            receiver.feed(data(chunk))
        for chunk in second:
            receiver.feed(data(chunk))
        receiver.feed(reliable(protocol.encode_frame(protocol.KIND_INTERRUPT, segment_id=1)))
        for chunk in first[5:]:  # stragglers of the interrupted segment
            receiver.feed(data(chunk))
        receiver.feed(reliable(first_end))
        receiver.feed(reliable(second_end))
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    items = run_virtual(main())
    assert pcm_of(items).tobytes() == signal(2_400, 2000)
    (end,) = ends_of(items)
    assert end.segment is not None and end.segment.wire_id == 2
    assert len(interrupted) == 1 and len(interrupted[0]) == 1


def test_stock_interrupt_drops_what_came_before_and_keeps_what_comes_after() -> None:
    async def main() -> tuple[list[Any], AudioReceiver]:
        receiver = AudioReceiver(AGENT)
        receiver.feed(data(signal(7_500, 1000)))
        receiver.feed(reliable(protocol.encode_interrupt()))
        await asyncio.sleep(0.05)
        receiver.feed(data(signal(2_400, 5000)))  # the next turn, 50 ms later
        receiver.feed(reliable(protocol.encode_segment_end()))
        receiver.close()
        return await drain(receiver), receiver

    items, receiver = run_virtual(main())
    assert pcm_of(items).tobytes() == signal(2_400, 5000)
    (end,) = ends_of(items)
    assert end.segment is not None and end.segment.key == 2
    assert receiver.tracker.acks[0].interrupted  # the first segment was acknowledged at once


def test_framed_audio_in_a_foreign_format_is_refused() -> None:
    framer = protocol.SegmentFramer(48_000, 1)

    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT, sample_rate=24_000)
        for chunk in framer.audio(signal(960)):
            receiver.feed(data(chunk))
        receiver.close()
        await drain(receiver)
        return receiver

    receiver = run_virtual(main())
    assert receiver.stats.malformed == 1 and receiver.stats.accepted == 0


def test_stereo_framed_audio_is_mixed_to_a_mono_session() -> None:
    stereo = np.repeat(np.frombuffer(signal(480), np.int16)[:, None], 2, axis=1)
    framer = protocol.SegmentFramer(24_000, 2)

    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        for chunk in framer.audio(stereo.tobytes()):
            receiver.feed(data(chunk))
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    assert pcm_of(run_virtual(main())).tobytes() == signal(480)


def test_the_backlog_is_bounded_and_refused_audio_is_counted() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT, max_buffered_seconds=1.0)
        for _ in range(5):
            receiver.feed(data(signal(7_500)))  # 0.3125 s each
        return receiver

    receiver = run_virtual(main())
    assert receiver.stats.overflow == 2
    assert receiver.stats.overflow_samples == 15_000
    assert receiver.buffered_seconds() == 0.9375


# ---------------------------------------------------------------------------------------------
# fuzz

_garbage = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=15_361, max_size=15_400),
    st.text(max_size=40),
    st.sampled_from(
        [
            "INTERRUPT",
            '{"type": "segment_end"}',
            '{"type": "stream_ended", "data": {"playback_position": "x"}}',
            '{"type": 3}',
            "[1, 2]",
            "{" * 200,
            '{"type": "stream_ended", "data": {"playback_position": 1.5, "interrupted": true}}',
        ]
    ),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.builds(
        lambda sid, seq, n, corrupt: _corrupt(
            protocol.encode_frame(
                protocol.KIND_AUDIO,
                segment_id=sid,
                seq=seq,
                sample_rate=24_000,
                channels=1,
                payload=bytes(range(256))[: n * 2] or b"\x01\x00",
            ),
            corrupt,
        ),
        st.integers(0, 5),
        st.integers(0, 40),
        st.integers(1, 100),
        st.booleans(),
    ),
)


def _corrupt(frame: bytes, corrupt: bool) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF]) if corrupt else frame


_message = st.one_of(
    st.builds(
        lambda payload, sender, reliability: {
            "payload": payload,
            "from": sender,
            "timestamp": 1,
            "reliability": reliability,
        },
        _garbage,
        st.sampled_from([AGENT, "intruder", None, "", 5]),
        st.sampled_from([protocol.RELIABLE, protocol.UNRELIABLE, None, 3]),
    ),
    st.builds(lambda x: x, st.one_of(st.none(), st.integers(), st.text(max_size=5))),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)

_FOREIGN_VALUE = 31_000  # intruders send this value; the agent never does


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_fuzz_never_raises_and_never_accepts_foreign_audio(
    messages: list[object], rng: random.Random
) -> None:
    agent_chunk = signal(240, 1000)
    foreign_chunk = np.full(240, _FOREIGN_VALUE, "<i2").tobytes()
    mixed: list[object] = []
    for message in messages:
        mixed.append(message)
        roll = rng.random()
        if roll < 0.2:
            mixed.append(data(agent_chunk))
        elif roll < 0.4:
            mixed.append(data(foreign_chunk, sender="intruder"))

    async def main() -> tuple[list[Any], AudioReceiver]:
        receiver = AudioReceiver(AGENT)
        for message in mixed:
            receiver.feed(message)
        receiver.close()
        return await drain(receiver), receiver

    items, receiver = run_virtual(main())
    pcm = pcm_of(items)
    assert not np.any(pcm == _FOREIGN_VALUE)
    stats = receiver.stats
    fed = len(mixed)
    handled = stats.accepted + stats.ignored + stats.malformed + stats.discarded + stats.overflow
    assert handled <= fed
    for item in items:
        assert isinstance(item, av.AudioFrame | AudioSegmentEnd)


def test_a_stock_tail_reordered_behind_its_segment_end_stays_in_the_segment() -> None:
    """segment_end is RELIABLE, audio UNRELIABLE: they are unordered against each other."""

    async def main() -> list[Any]:
        receiver = AudioReceiver(AGENT)
        receiver.feed(data(signal(7_500)))
        receiver.feed(reliable(protocol.encode_segment_end()))
        await asyncio.sleep(0.01)
        receiver.feed(data(signal(1_500, start=7_500)))  # the last chunk, overtaken
        await asyncio.sleep(0.2)
        receiver.feed(data(signal(480, 9000)))  # the next turn, later
        receiver.close()
        items: list[Any] = await drain(receiver)
        return items

    items = run_virtual(main())
    first, second = ends_of(items)
    assert first.segment is not None and first.segment.received_samples == 9_000
    assert second.segment is not None and second.segment.received_samples == 480
    assert pcm_of(items).tobytes() == signal(9_000) + signal(480, 9000)


def test_a_stale_stock_chunk_right_behind_an_interrupt_is_dropped() -> None:
    async def main() -> tuple[list[Any], AudioReceiver]:
        receiver = AudioReceiver(AGENT)
        receiver.feed(data(signal(7_500, 1000)))
        receiver.feed(reliable(protocol.encode_interrupt()))
        await asyncio.sleep(0.005)
        receiver.feed(data(signal(7_500, 1000, start=7_500)))  # in flight before the INTERRUPT
        await asyncio.sleep(0.045)
        receiver.feed(data(signal(2_400, 5000)))  # the reply, 50 ms after the INTERRUPT
        receiver.close()
        return await drain(receiver), receiver

    items, receiver = run_virtual(main())
    assert pcm_of(items).tobytes() == signal(2_400, 5000)
    assert receiver.stats.discarded == 1
