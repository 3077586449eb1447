"""The synchronizer's clock: no drift however long, bounded buffers, tracks that stop pulling."""

from __future__ import annotations

import asyncio
import random

import numpy as np
from worker_support import Harness, run_virtual, signal

from avatar_worker import clock as clocks
from avatar_worker.segments import SegmentTracker
from avatar_worker.synchronizer import Synchronizer, Unit


class LateClock(clocks.LoopClock):
    """A loaded machine: every sleep overshoots by up to `jitter` seconds, at random."""

    def __init__(self, jitter: float, seed: int = 1) -> None:
        self._jitter = jitter
        self._random = random.Random(seed)

    async def sleep_until(self, deadline: float) -> None:
        delay = max(0.0, deadline - self.now())
        await asyncio.sleep(delay + self._random.uniform(0.0, self._jitter))


def test_a_long_session_does_not_drift() -> None:
    """Three minutes through the whole pipeline on a clock whose every sleep is up to 8 ms late."""
    minutes, jitter = 3, 0.008
    beep_every = 20.0

    async def main() -> Harness:
        async with Harness(clock=LateClock(jitter)) as h:
            for i in range(int(minutes * 60 / beep_every)):
                h.feed_segment(signal(7_200, 4000 + i))
                await asyncio.sleep(beep_every)
        return h

    h = run_virtual(main())
    # 1. timestamps come from one counter: contiguous, no frame lost or doubled
    assert [pts for _, pts, _ in h.audio] == [480 * i for i in range(len(h.audio))]
    assert [pts for _, pts, _ in h.video] == [800 * i for i in range(len(h.video))]
    # 2. pacing is against one start time: lateness stays within one sleep's jitter, forever
    t0 = h.pipeline.synchronizer.t0
    assert t0 is not None
    late_audio = np.array([t - (t0 + pts / 24_000) for t, pts, _ in h.audio])
    late_video = np.array([t - (t0 + pts / 24_000) for t, pts, _ in h.video])
    assert late_audio.min() >= -1e-6 and late_video.min() >= -1e-6
    assert late_audio.max() <= jitter + 1e-6 and late_video.max() <= jitter + 1e-6
    minute = len(late_audio) // minutes
    assert abs(late_audio[-minute:].mean() - late_audio[:minute].mean()) < 0.001
    # 3. every beep's first bright frame is the frame its first sample falls in
    pcm = np.concatenate([s for _, _, s in h.audio])
    speech = np.concatenate([[0], (pcm != 0).astype(np.int8)])
    onsets = np.flatnonzero(np.diff(speech) == 1)
    bright = {pts for _, pts, luma in h.video if luma > 0}
    for onset in onsets:
        frame_start = onset // 800 * 800
        assert frame_start in bright and frame_start - 800 not in bright
    assert len(h.acks) == len(onsets) == minutes * 60 / beep_every
    assert all(a.playback_position == 0.3 for _, a in h.acks)


def test_a_quarter_hour_of_pacing_keeps_every_frame_on_its_deadline() -> None:
    """The synchronizer alone (no renderer) for 15 virtual minutes on a late clock."""
    minutes, jitter = 15, 0.008

    async def main() -> tuple[float, list[tuple[float, int]], list[tuple[float, int]]]:
        loop = asyncio.get_running_loop()
        sync = Synchronizer(
            sample_rate=24_000,
            channels=1,
            fps=30,
            width=32,
            height=32,
            tracker=SegmentTracker(24_000),
            clock=LateClock(jitter),
        )
        audio: list[tuple[float, int]] = []
        video: list[tuple[float, int]] = []

        async def pull_audio() -> None:
            for _ in range(minutes * 60 * 50):
                pts, _ = await sync.read_audio()
                audio.append((loop.time(), pts))

        async def pull_video() -> None:
            for _ in range(minutes * 60 * 30):
                pts, _ = await sync.read_video()
                video.append((loop.time(), pts))

        await asyncio.gather(pull_audio(), pull_video())
        assert sync.t0 is not None
        return sync.t0, audio, video

    t0, audio, video = run_virtual(main())
    assert [pts for _, pts in audio] == [480 * i for i in range(len(audio))]
    assert [pts for _, pts in video] == [800 * i for i in range(len(video))]
    late = np.array([t - (t0 + pts / 24_000) for t, pts in audio + video])
    assert late.min() >= -1e-6 and late.max() <= jitter + 1e-6
    # the last frame is as (un)late as the first: nothing accumulated in 15 minutes
    assert abs(audio[-1][0] - (t0 + audio[-1][1] / 24_000)) <= jitter + 1e-6


def _unit(samples: int = 800, value: int = 100) -> Unit:
    return Unit(np.full((samples, 1), value, np.int16), np.zeros((48, 32), np.uint8), None, 0)


def test_a_full_queue_makes_the_producer_wait() -> None:
    async def main() -> list[int]:
        sync = Synchronizer(
            sample_rate=24_000,
            channels=1,
            fps=30,
            width=32,
            height=32,
            tracker=SegmentTracker(24_000),
            max_ahead_units=4,
        )
        pushed: list[int] = []

        async def produce() -> None:
            for i in range(10):
                await sync.wait_for_room()
                sync.push(_unit(value=i + 1))
                pushed.append(i)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.1)
        stalled = len(pushed)
        for _ in range(3):
            await sync.read_video()
        await asyncio.sleep(0)
        after = len(pushed)
        producer.cancel()
        return [stalled, after]

    stalled, after = run_virtual(main())
    assert stalled == 4  # never more than max_ahead_units waiting
    assert after == 7  # each frame taken frees exactly one place


def test_a_track_nobody_pulls_does_not_grow_the_timeline() -> None:
    async def main() -> tuple[Synchronizer, int]:
        tracker = SegmentTracker(24_000)
        sync = Synchronizer(
            sample_rate=24_000, channels=1, fps=30, width=32, height=32, tracker=tracker
        )
        for _ in range(60 * 50):  # a minute of audio, video never pulled
            await sync.read_audio()
        return sync, len(sync._timeline)

    sync, kept = run_virtual(main())
    assert kept <= 4 * 30 + 1
    assert sync.stats.audio_frames == 3000
