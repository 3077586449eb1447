"""A seeded fuzz of the AudioReceiver: 20,000 messages, framed and stock mixed, on virtual time.

Each message is drawn from one seeded `random.Random`, so a failure replays exactly: stock PCM
(bytes, odd lengths, str-typed silence as VideoSDK hands it over), stock `segment_end` and
`INTERRUPT`, framed chunks with sequence numbers in order, duplicated, reordered, skipped and
absurd, framed segment ends and interrupts for known and unknown ids, framed audio in a
foreign rate, CRC-broken frames, acks, foreign senders and garbage. A consumer plays what the
receiver yields (counting it on the tracker, acknowledging each segment end, as the
synchronizer does), pausing now and then so the backlog builds up against the caps.

After every message: the held samples stay within the buffer cap, the held segments within
theirs, the ack history fixed-size, and `concealed` within what was concealed. Afterwards a
clean stock segment must come out bit-exact, with exactly one `stream_ended`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import av
import numpy as np
from worker_support import AGENT, data, reliable, run_virtual, signal

from avatar_sdk import protocol
from avatar_worker import AudioReceiver, AudioSegmentEnd
from avatar_worker import segments as segments_mod
from avatar_worker.receiver import segment_of

MESSAGES = 20_000
SEED = 20
RATE = 24_000
MAX_BUFFERED = 3.0  # s: small, so the fuzz runs into the cap often
MAX_SEGMENTS = 24


class _Fuzzer:
    """Draws one data-channel message at a time from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ids = [1, 2, 3, 4, 5]  # the framed segment ids in play
        self.seqs = {i: 0 for i in self.ids}

    def message(self) -> dict[str, Any] | object:
        rng = self.rng
        kind = rng.choices(
            ["stock", "silence", "end", "interrupt", "framed", "fend", "fint", "junk"],
            weights=[14, 3, 4, 2, 40, 8, 3, 6],
        )[0]
        if kind == "stock":
            n = rng.choice([1, 2, 3, 480, 960, rng.randrange(2, protocol.MAX_PCM_CHUNK_BYTES)])
            return data(rng.randbytes(n))
        if kind == "silence":
            return data(bytes(rng.randrange(1, 15_000)).decode("utf-8"))
        if kind == "end":
            return reliable(protocol.encode_segment_end())
        if kind == "interrupt":
            return reliable(protocol.encode_interrupt())
        if kind == "framed":
            return data(self._framed_chunk())
        if kind == "fend":
            return reliable(self._framed_end())
        if kind == "fint":
            segment_id = self._some_id()
            return reliable(protocol.encode_frame(protocol.KIND_INTERRUPT, segment_id=segment_id))
        return self._junk()

    def _some_id(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.8:
            return rng.choice(self.ids)
        if roll < 0.9:
            return rng.randrange(protocol.MAX_SEGMENT_ID + 1)
        self.ids[rng.randrange(len(self.ids))] = new = rng.randrange(1, 1_000_000)
        self.seqs[new] = 0
        return new

    def _framed_chunk(self, sample_rate: int = RATE) -> bytes:
        rng = self.rng
        segment_id = self._some_id()
        nxt = self.seqs.get(segment_id, 0)
        roll = rng.random()
        if roll < 0.6:
            seq = nxt  # in order
        elif roll < 0.7:
            seq = max(0, nxt - rng.randrange(1, 4))  # a duplicate or a late one
        elif roll < 0.85:
            seq = nxt + rng.randrange(1, 6)  # a gap (lost chunks) or reordered ahead
        else:
            seq = rng.randrange(2**32)  # absurd
        self.seqs[segment_id] = max(nxt, seq + 1) if seq < 2**31 else nxt
        channels = rng.choice([1, 1, 1, 2])
        frames = rng.choice([1, 240, 480, rng.randrange(1, protocol.MAX_FRAMED_PCM_BYTES // 4)])
        return protocol.encode_frame(
            protocol.KIND_AUDIO,
            segment_id=segment_id,
            seq=seq,
            sample_rate=sample_rate,
            channels=channels,
            payload=rng.randbytes(frames * 2 * channels),
        )

    def _framed_end(self) -> bytes:
        rng = self.rng
        segment_id = self._some_id()
        roll = rng.random()
        if roll < 0.5:
            chunks = self.seqs.get(segment_id, 0)
        elif roll < 0.8:
            chunks = self.seqs.get(segment_id, 0) + rng.randrange(1, 50)  # trailing chunks lost
        else:
            chunks = rng.choice([0, 2**32 - 1, rng.randrange(2**32)])
        self.seqs[segment_id] = 0  # the sender moves on; the id may come back (wrapped)
        return protocol.encode_frame(protocol.KIND_SEGMENT_END, segment_id=segment_id, seq=chunks)

    def _junk(self) -> object:
        rng = self.rng
        choice = rng.randrange(10)
        if choice == 0:
            frame = bytearray(self._framed_chunk())
            frame[-1] ^= 0xFF  # CRC no longer matches: taken for stock PCM
            return data(bytes(frame))
        if choice == 1:
            return data(self._framed_chunk(sample_rate=48_000))  # a foreign format
        if choice == 2:
            return reliable(protocol.encode_stream_ended(1.5, False))  # acks are ours to send
        if choice == 3:
            return data(rng.randbytes(protocol.MAX_FRAMED_PCM_BYTES), sender="intruder")
        if choice == 4:
            return reliable(rng.choice(['{"type": 3}', "[1, 2]", "{" * 300, '{"type":"x"}']))
        if choice == 5:
            return reliable(json.dumps({"type": "segment_end", "data": rng.random()}))
        if choice == 6:
            return rng.choice([None, 5, "x", [1], {"payload": None}, {}])
        if choice == 7:
            return {"payload": rng.randbytes(8), "from": rng.choice([None, 7, ""]), "x": 1}
        if choice == 8:
            return data(rng.randbytes(rng.randrange(0, 40)))
        return data(self._framed_chunk()[:-3])  # truncated: its length field no longer fits


def _check_bounds(receiver: AudioReceiver) -> None:
    stats = receiver.stats
    assert receiver.buffered_seconds() <= MAX_BUFFERED
    assert receiver.held_segments() <= MAX_SEGMENTS
    assert len(receiver.tracker.live) <= MAX_SEGMENTS
    assert len(receiver.tracker.acks) <= segments_mod.ACK_HISTORY
    assert stats.concealed <= stats.concealed_samples
    assert len(stats.reasons) <= 32


def test_fuzzed_traffic_keeps_every_bound_and_a_clean_segment_plays_exactly_after() -> None:
    rng = random.Random(SEED)
    fuzzer = _Fuzzer(rng)
    acks: list[tuple[segments_mod.Segment, protocol.StreamEnded]] = []
    tracker = segments_mod.SegmentTracker(RATE, lambda segment, ack: acks.append((segment, ack)))
    items: list[Any] = []
    calm = asyncio.Event()

    async def consume(receiver: AudioReceiver) -> None:
        pauses = random.Random(SEED + 1)
        async for item in receiver:
            items.append(item)
            if isinstance(item, AudioSegmentEnd):
                if item.segment is not None:
                    tracker.finish(item.segment, interrupted=False)  # its last sample played
            else:
                segment = segment_of(item)
                if segment is not None:
                    tracker.played(segment, item.samples)
            if not calm.is_set() and pauses.random() < 0.03:
                await asyncio.sleep(pauses.choice([0.05, 0.5, 2.0]))  # a renderer falling behind

    async def main() -> tuple[AudioReceiver, int, bytes]:
        receiver = AudioReceiver(
            AGENT,
            RATE,
            tracker=tracker,
            max_buffered_seconds=MAX_BUFFERED,
            max_segments=MAX_SEGMENTS,
        )
        consumer = asyncio.create_task(consume(receiver))
        try:
            return await feed(receiver)
        finally:
            receiver.close()  # ends the consumer's iteration, whatever happened
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    async def feed(receiver: AudioReceiver) -> tuple[AudioReceiver, int, bytes]:
        for _ in range(MESSAGES):
            receiver.feed(fuzzer.message())
            _check_bounds(receiver)
            roll = rng.random()
            if roll < 0.3:
                await asyncio.sleep(rng.choice([0.0, 0.001, 0.005, 0.015, 0.03, 0.07]))
            elif roll < 0.302:
                await asyncio.sleep(1.5)  # an idle gap: open segments end
        calm.set()  # the consumer keeps up from now on
        for _ in range(120):  # whatever the fuzz left open ends on its idle gap and drains
            await asyncio.sleep(0.5)
            _check_bounds(receiver)
            if receiver.held_segments() == 0 and receiver.buffered_seconds() == 0:
                break
        assert receiver.held_segments() == 0 and receiver.buffered_seconds() == 0
        await asyncio.sleep(0.5)  # no INTERRUPT guard or stray segment_end still in effect
        mark = len(items)
        clean = signal(20_000, 1000)
        for chunk in protocol.pcm_chunks(clean):
            receiver.feed(data(chunk))
        receiver.feed(reliable(protocol.encode_segment_end()))
        await asyncio.sleep(2.0)
        receiver.close()
        await asyncio.sleep(0.1)
        return receiver, mark, clean

    started = time.perf_counter()
    receiver, mark, clean = run_virtual(main())
    elapsed = time.perf_counter() - started
    stats = receiver.stats
    assert "internal error" not in stats.reasons  # nothing raised inside feed()
    assert stats.overflow > 0 and stats.concealed > 0 and stats.interrupts > 0  # it was hostile
    after = items[mark:]
    ends = [i for i in after if isinstance(i, AudioSegmentEnd)]
    assert len(ends) == 1 and ends[0].segment is not None
    pcm = np.concatenate(
        [i.to_ndarray().reshape(-1) for i in after if isinstance(i, av.AudioFrame)]
    )
    assert pcm.tobytes() == clean  # bit-exact
    assert all(segment_of(i) is ends[0].segment for i in after if isinstance(i, av.AudioFrame))
    final = [ack for segment, ack in acks if segment is ends[0].segment]
    assert final == [protocol.StreamEnded(20_000 / RATE, False, None)]  # exactly one ack
    assert elapsed < 30.0, f"the fuzz took {elapsed:.1f} s"
