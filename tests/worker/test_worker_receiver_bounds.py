"""AudioReceiver bounds: concealment counts against the buffer cap and is justified by the
stream's own sequence numbers; held segments and the ack history are fixed-size."""

from __future__ import annotations

import asyncio

from worker_support import AGENT, data, drain, reliable, run_virtual, signal

from avatar_sdk import protocol
from avatar_worker import AudioReceiver
from avatar_worker import segments as segments_mod


def _segment_end(segment_id: int, chunks: int) -> bytes:
    return protocol.encode_frame(protocol.KIND_SEGMENT_END, segment_id=segment_id, seq=chunks)


def _chunk(segment_id: int, seq: int, samples: int = 480) -> bytes:
    return protocol.encode_frame(
        protocol.KIND_AUDIO,
        segment_id=segment_id,
        seq=seq,
        sample_rate=24_000,
        channels=1,
        payload=signal(samples),
    )


def test_segment_ends_for_unseen_segments_conceal_nothing_and_do_not_fill_the_buffer() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT, max_buffered_seconds=10.0)
        for segment_id in range(1, 301):  # each claims 50 chunks (1 s at 20 ms) were sent
            receiver.feed(reliable(_segment_end(segment_id, 50)))
            if segment_id % 20 == 0:
                await asyncio.sleep(0.1)  # past the reorder window: the gaps are due
                await receiver.__anext__()  # a consumer that takes one item now and then
            assert receiver.buffered_seconds() <= 10.0
        receiver.feed(data(signal(7_500)))  # real audio still fits
        return receiver

    receiver = run_virtual(main())
    assert receiver.stats.concealed == 0
    assert receiver.stats.concealed_samples == 0
    assert receiver.stats.accepted_samples == 7_500  # the real audio was not refused
    assert receiver.stats.overflow_samples == 0


def test_every_unseen_segment_still_gets_its_one_stream_ended() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT)
        for segment_id in (5, 6, 7):
            receiver.feed(reliable(_segment_end(segment_id, 2**32 - 1)))
        await drain(receiver, limit=0.5)
        for segment in list(receiver.tracker.live):
            receiver.tracker.finish(segment, interrupted=False)  # what the pipeline does
        return receiver

    receiver = run_virtual(main())
    assert [a.segment_id for a in receiver.tracker.acks] == [5, 6, 7]
    assert [a.playback_position for a in receiver.tracker.acks] == [0.0, 0.0, 0.0]
    assert receiver.stats.concealed == 0


def test_concealment_counts_against_the_buffer_cap() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT, max_buffered_seconds=0.5)
        receiver.feed(data(_chunk(1, 0, 7_500)))
        receiver.feed(reliable(_segment_end(1, 2**32 - 1)))  # "four billion chunks were lost"
        for _ in range(2):
            await asyncio.sleep(0.1)  # past the reorder window: the trailing gap is due
            await receiver.__anext__()
            assert receiver.buffered_seconds() <= 0.5
        return receiver

    receiver = run_virtual(main())
    assert 0 < receiver.stats.concealed_samples <= 12_000


def test_the_concealed_counter_counts_only_chunks_replaced_by_silence() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT)
        receiver.feed(data(_chunk(1, 0, 480)))
        receiver.feed(reliable(_segment_end(1, 2**32 - 1)))
        receiver.feed(reliable(_segment_end(2, 2**32 - 1)))  # never seen: conceals nothing
        receiver.close()
        await drain(receiver)
        return receiver

    receiver = run_virtual(main())
    # One second of silence at most for the one gap: 50 chunks of 480 samples.
    assert receiver.stats.concealed_samples == 24_000
    assert receiver.stats.concealed == 50


def test_a_gap_conceals_exactly_its_missing_chunks() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT)
        for seq in (0, 1, 4):
            receiver.feed(data(_chunk(1, seq, 480)))
        receiver.feed(reliable(_segment_end(1, 5)))
        receiver.close()
        await drain(receiver)
        return receiver

    receiver = run_virtual(main())
    assert receiver.stats.concealed == 2 and receiver.stats.concealed_samples == 960


def test_segments_held_by_the_receiver_are_bounded() -> None:
    async def main() -> AudioReceiver:
        receiver = AudioReceiver(AGENT)
        for segment_id in range(1, 2_001):  # fresh ids, nobody consuming
            receiver.feed(data(_chunk(segment_id, 0, 2)))
            receiver.feed(reliable(_segment_end(10_000 + segment_id, 3)))
        return receiver

    receiver = run_virtual(main())
    assert len(receiver.tracker.live) <= receiver.max_segments
    assert receiver.stats.overflow > 0


def test_the_ack_history_is_fixed_size() -> None:
    tracker = segments_mod.SegmentTracker(24_000)
    for _ in range(segments_mod.ACK_HISTORY + 500):
        tracker.finish(tracker.open(), interrupted=False)
    assert len(tracker.acks) == segments_mod.ACK_HISTORY
    assert tracker.counters.segments == segments_mod.ACK_HISTORY + 500
