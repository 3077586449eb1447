"""The whole media path on a virtual clock: segments, acks, interrupts, positions, renderers."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from worker_support import Harness, LoudnessRenderer, loud_config, run_virtual, signal

from avatar_sdk import protocol
from avatar_worker.pipeline import PipelineConfig
from avatar_worker.renderers.compat import FrameRendererAvatar

FRAME = 1 / 30


def nonzero_runs(pcm: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of non-zero samples."""
    mask = np.concatenate([[False], pcm != 0, [False]])
    edges = np.flatnonzero(np.diff(mask.astype(np.int8)))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def test_each_segment_gets_one_ack_with_what_played() -> None:
    lengths = [24_000, 12_000, 18_000]

    async def main() -> Harness:
        async with Harness() as h:
            for i, n in enumerate(lengths):
                h.feed_segment(signal(n, 2000 + 5000 * i))
                await asyncio.sleep(n / 24_000 + 0.5)
        return h

    h = run_virtual(main())
    assert [a.interrupted for _, a in h.acks] == [False, False, False]
    assert [a.playback_position for _, a in h.acks] == [n / 24_000 for n in lengths]
    runs = nonzero_runs(h.pcm())
    assert [n for _, n in runs] == lengths
    pcm = h.pcm()
    for (start, n), i in zip(runs, range(3), strict=True):
        assert pcm[start : start + n].tobytes() == signal(n, 2000 + 5000 * i)


def test_audio_and_video_come_from_one_sample_counter() -> None:
    async def main() -> Harness:
        async with Harness() as h:
            await asyncio.sleep(0.2)
            h.feed_segment(signal(12_000))
            await asyncio.sleep(1.0)
        return h

    h = run_virtual(main())
    assert [pts for _, pts, _ in h.audio] == [480 * i for i in range(len(h.audio))]
    assert [pts for _, pts, _ in h.video] == [800 * i for i in range(len(h.video))]
    # every frame is handed out at its own pts, against one start time
    t0 = h.audio[0][0]
    assert all(abs(t - (t0 + pts / 24_000)) < 1e-6 for t, pts, _ in h.audio)
    assert all(abs(t - (t0 + pts / 24_000)) < 1e-6 for t, pts, _ in h.video)
    # the bright frames are exactly the frames whose window holds speech
    ((start, length),) = nonzero_runs(h.pcm())
    bright = [pts for _, pts, luma in h.video if luma > 0]
    assert bright[0] == start // 800 * 800
    assert bright[-1] == (start + length - 1) // 800 * 800


@pytest.mark.parametrize("framed", [False, True], ids=["stock", "framed"])
def test_interrupt_then_a_new_segment_50ms_later_plays_from_its_first_sample(framed: bool) -> None:
    first, second = signal(48_000, 1000), signal(12_000, 20_000)
    framer = protocol.SegmentFramer()

    def send(h: Harness, pcm: bytes) -> None:
        if framed:
            for chunk in framer.audio(pcm):
                h.feed(chunk)
        else:
            for chunk in protocol.pcm_chunks(pcm):
                h.feed(chunk)

    async def main() -> tuple[Harness, float]:
        loop = asyncio.get_running_loop()
        async with Harness() as h:
            send(h, first)
            await asyncio.sleep(0.5)
            interrupt_at = loop.time()
            h.feed(framer.interrupt() if framed else protocol.encode_interrupt(), protocol.RELIABLE)
            await asyncio.sleep(0.05)
            send(h, second)
            h.feed(
                framer.segment_end() if framed else protocol.encode_segment_end(),
                protocol.RELIABLE,
            )
            await asyncio.sleep(1.0)
        return h, interrupt_at

    h, _ = run_virtual(main())
    pcm = h.pcm()
    runs = nonzero_runs(pcm)
    assert len(runs) == 2
    (a_start, a_len), (b_start, b_len) = runs
    assert pcm[b_start : b_start + b_len].tobytes() == second  # whole, from its first sample
    assert pcm[a_start : a_start + a_len].tobytes() == first[: a_len * 2]
    (_, ack_a), (_, ack_b) = h.acks
    assert ack_a.interrupted and not ack_b.interrupted
    assert ack_a.playback_position == a_len / 24_000  # exactly what left the track
    assert ack_b.playback_position == 0.5
    assert abs(ack_a.playback_position - 0.5) <= 0.021  # ≈ the time it had been playing
    if framed:
        assert ack_a.segment_id == 1 and ack_b.segment_id == 2


def test_interrupt_silences_audio_and_idles_video_within_one_frame() -> None:
    async def main() -> tuple[Harness, float]:
        loop = asyncio.get_running_loop()
        async with Harness() as h:
            h.feed_segment(signal(48_000, 8000))
            await asyncio.sleep(0.517)  # mid-frame on purpose
            interrupt_at = loop.time()
            h.feed(protocol.encode_interrupt(), protocol.RELIABLE)
            await asyncio.sleep(0.3)
        return h, interrupt_at

    h, t_i = run_virtual(main())
    after_audio = [(t, s) for t, _, s in h.audio if t > t_i]
    assert not after_audio[0][1].any()
    assert after_audio[0][0] - t_i <= 0.020 + 1e-9
    assert all(not s.any() for _, s in after_audio)
    after_video = [(t, luma) for t, _, luma in h.video if t > t_i]
    assert after_video[0][1] == 0  # the idle frame
    assert after_video[0][0] - t_i <= FRAME + 1e-9
    assert all(luma == 0 for _, luma in after_video)
    before = [luma for t, _, luma in h.video if t <= t_i]
    assert before[-1] > 0  # it was speaking right up to the interrupt


def test_a_lost_segment_end_is_inferred_after_an_idle_gap() -> None:
    async def main() -> Harness:
        async with Harness() as h:
            h.feed_segment(signal(12_000), end=False)
            await asyncio.sleep(3.0)
            h.feed_segment(signal(6_000, 9000))  # the next turn, properly ended
            await asyncio.sleep(1.0)
        return h

    h = run_virtual(main())
    assert [a.playback_position for _, a in h.acks] == [0.5, 0.25]
    assert [a.interrupted for _, a in h.acks] == [False, False]
    first_ack_at = h.acks[0][0]
    assert first_ack_at < 0.5 + 1.0 + 0.3 + h.audio[0][0]  # ~ playout + idle gap, not later


def test_an_underrun_delays_speech_but_never_drops_it() -> None:
    async def main() -> Harness:
        async with Harness() as h:
            h.feed(signal(4_800))
            await asyncio.sleep(0.5)  # the TTS stalls: the track plays idle meanwhile
            h.feed(signal(4_800, start=4_800))
            h.feed(protocol.encode_segment_end(), protocol.RELIABLE)
            await asyncio.sleep(0.5)
        return h

    h = run_virtual(main())
    pcm = h.pcm()
    speech = pcm[pcm != 0]
    assert speech.tobytes() == signal(9_600)
    assert h.acks[0][1].playback_position == 0.4
    assert len(nonzero_runs(pcm)) == 2  # idle in between, then the rest, whole


def test_back_pressure_keeps_rendering_just_ahead_of_playback() -> None:
    async def main() -> tuple[Harness, list[tuple[int, int]]]:
        async with Harness() as h:
            h.feed_segment(signal(24_000 * 20))  # 20 s of TTS arrive at once
            samples = []
            for _ in range(10):
                await asyncio.sleep(1.0)
                sync = h.pipeline.synchronizer
                samples.append((sync.pending_units(), len(h.video)))
        return h, samples

    h, samples = run_virtual(main())
    renderer = h.renderer
    assert isinstance(renderer, LoudnessRenderer)
    for pending, _ in samples:
        assert pending <= h.config.max_ahead_units
    rendered = sum(renderer.calls)
    assert rendered <= len(h.video) + h.config.max_ahead_units + h.config.max_batch + 2
    assert h.pipeline.receiver.stats.overflow == 0
    assert max(renderer.calls) == h.config.max_batch  # batches while the queue is healthy


def test_status_snapshot_follows_playback() -> None:
    async def main() -> list[Any]:
        async with Harness() as h:
            snaps = [h.pipeline.snapshot()]
            h.feed_segment(signal(12_000))
            await asyncio.sleep(0.3)
            snaps.append(h.pipeline.snapshot())
            await asyncio.sleep(0.5)
            snaps.append(h.pipeline.snapshot())
        return snaps

    idle, speaking, done = run_virtual(main())
    assert not idle.speaking and idle.segments == 0
    assert speaking.speaking and 0.2 < speaking.position < 0.35
    assert speaking.last_activity_at is not None
    assert not done.speaking and done.segments == 1 and done.position == 0.5


# ---------------------------------------------------------------------------------------------
# renderers written for VideoSDK run unchanged


class _VideoSdkAudioSegmentEnd:
    """Stands in for `videosdk.agents.avatar.AudioSegmentEnd` (that module needs Python 3.12)."""


_VideoSdkAudioSegmentEnd.__name__ = "AudioSegmentEnd"


class UserRenderer:
    """Written against videosdk-agents' AvatarRenderer: it knows nothing of this project."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.resets = 0

    async def push_stream_chunk(self, frame: Any) -> None:
        await self._queue.put(frame)

    def reset_stream(self) -> None:
        self.resets += 1
        while not self._queue.empty():
            self._queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _VideoSdkAudioSegmentEnd):  # its own class, as on 3.12
                yield item
                continue
            picture = np.full((32, 32, 3), 200, np.uint8)
            yield av.VideoFrame.from_ndarray(picture, format="rgb24")
            yield item  # the audio, echoed


@pytest.fixture
def videosdk_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("videosdk.agents.avatar.avatar_schema")
    module.AudioSegmentEnd = _VideoSdkAudioSegmentEnd  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)


@pytest.mark.usefixtures("videosdk_schema")
def test_a_renderer_written_for_videosdk_runs_unchanged() -> None:
    user = UserRenderer()

    async def main() -> Harness:
        async with Harness(user) as h:
            h.feed_segment(signal(12_000))
            await asyncio.sleep(1.0)
            h.feed_segment(signal(24_000, 9000))
            await asyncio.sleep(0.3)
            h.feed(protocol.encode_interrupt(), protocol.RELIABLE)
            await asyncio.sleep(0.5)
        return h

    h = run_virtual(main())
    (first_start, first_len), *_ = nonzero_runs(h.pcm())
    assert h.pcm()[first_start : first_start + first_len].tobytes() == signal(12_000)
    (_, a), (_, b) = h.acks
    assert (a.playback_position, a.interrupted) == (0.5, False)
    assert b.interrupted and 0.2 < b.playback_position < 0.35
    assert user.resets == 1
    assert max(luma for _, _, luma in h.video) > 150  # the user's own frames went out


def test_frame_renderer_avatar_matches_the_native_path() -> None:
    def run(adapter: bool) -> Harness:
        async def main() -> Harness:
            inner = LoudnessRenderer(loud_config())
            renderer = FrameRendererAvatar(inner) if adapter else inner
            async with Harness(renderer) as h:
                h.feed_segment(signal(12_000))
                await asyncio.sleep(1.0)
            return h

        return run_virtual(main())

    native, adapted = run(False), run(True)
    assert adapted.pcm()[adapted.pcm() != 0].tobytes() == signal(12_000)
    assert [a for _, a in adapted.acks] == [a for _, a in native.acks]


def test_rates_and_frame_rates_that_do_not_divide_add_up_exactly() -> None:
    config = PipelineConfig(sample_rate=16_000, fps=30, width=32, height=32)

    async def main() -> Harness:
        async with Harness(config=config) as h:
            h.feed_segment(signal(16_000))
            await asyncio.sleep(2.0)
        return h

    h = run_virtual(main())
    starts = [pts for _, pts, _ in h.video]
    assert starts == [k * 16_000 // 30 for k in range(len(starts))]
    assert [pts for _, pts, _ in h.audio] == [320 * i for i in range(len(h.audio))]
    assert h.acks[0][1].playback_position == 1.0
