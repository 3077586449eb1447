"""Shared builders for the worker's tests: a tiny renderer, audio signals, data messages.

Imported by the tests as `worker_support` (a unique name: test folders have no __init__.py).

Most tests run on `avatar_worker.virtualtime` (a loop whose clock jumps to the next timer), so
seconds of media take milliseconds and timing assertions are exact, not flaky.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from avatar_sdk import protocol
from avatar_worker import virtualtime
from avatar_worker.renderers.contract import FrameRenderer, RenderConfig

T = TypeVar("T")
AGENT = "agent-1"
RATE = 24_000


class LoudnessRenderer(FrameRenderer):
    """Brightness = loudness: a frame shows how loud its audio window is (0 when silent)."""

    name = "test-loudness"

    def __init__(self, config: RenderConfig) -> None:
        super().__init__(config)
        self.resets = 0
        self.calls: list[int] = []  # batch sizes

    def render(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        self.calls.append(len(audio))
        level = np.abs(audio).max(axis=1)
        out = np.empty((len(audio), self.config.height, self.config.width, 3), np.uint8)
        out[:] = np.clip(level * 255 * 4, 0, 255).astype(np.uint8)[:, None, None, None]
        return out

    def reset(self) -> None:
        self.resets += 1


def loud_config(width: int = 32, height: int = 32, fps: int = 30, rate: int = RATE) -> RenderConfig:
    return RenderConfig(width=width, height=height, fps=fps, sample_rate=rate)


def signal(samples: int, value: int = 3000, *, start: int = 0) -> bytes:
    """A recognisable never-zero signal: value + position, so order and offsets can be read back."""
    ramp = (np.arange(start, start + samples) % 1000).astype(np.int32)
    return (value + ramp).astype("<i2").tobytes()


def data(
    payload: object,
    sender: str | None = AGENT,
    reliability: str = protocol.UNRELIABLE,
) -> dict[str, Any]:
    return {"payload": payload, "from": sender, "timestamp": 0, "reliability": reliability}


def reliable(payload: object, sender: str | None = AGENT) -> dict[str, Any]:
    return data(payload, sender, protocol.RELIABLE)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    return virtualtime.run(main)


async def drain(aiter: Any, limit: float = 5.0) -> list[Any]:
    """Everything an async iterator yields until it ends or is idle for `limit` (virtual) s."""
    out: list[Any] = []
    iterator = aiter.__aiter__()
    while True:
        try:
            out.append(await asyncio.wait_for(iterator.__anext__(), limit))
        except (StopAsyncIteration, TimeoutError):
            return out


class Harness:
    """A pipeline with both tracks pulled as a sender would, recording what left them.

    `audio`: (time, pts, samples); `video`: (time, pts in samples, mean luma); `acks`: (time,
    decoded StreamEnded). Use inside a virtual-time loop: `async with Harness(...) as h:`.
    """

    def __init__(
        self,
        renderer: Any = None,
        *,
        config: Any = None,
        clock: Any = None,
        agent: str | None = AGENT,
    ) -> None:
        from avatar_worker.pipeline import AvatarPipeline, PipelineConfig

        self.config = config or PipelineConfig(width=32, height=32)
        if renderer is None:
            renderer = LoudnessRenderer(
                loud_config(
                    self.config.width, self.config.height, self.config.fps, self.config.sample_rate
                )
            )
        self.renderer = renderer
        self.pipeline = AvatarPipeline(
            renderer, config=self.config, agent_participant_id=agent, clock=clock
        )
        self.audio: list[tuple[float, int, npt.NDArray[np.int16]]] = []
        self.video: list[tuple[float, int, float]] = []
        self.acks: list[tuple[float, protocol.StreamEnded]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Harness:
        loop = asyncio.get_running_loop()

        async def send(payload: str | bytes, reliability: str) -> None:
            assert reliability == protocol.RELIABLE
            message = protocol.decode_payload(payload)
            assert isinstance(message, protocol.StreamEnded)
            self.acks.append((loop.time(), message))

        self.pipeline.set_send(send)
        await self.pipeline.start()
        self._tasks = [
            asyncio.create_task(self._pull_audio()),
            asyncio.create_task(self._pull_video()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.aclose()

    async def _pull_audio(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await self.pipeline.audio_track.recv()
            samples = np.asarray(frame.to_ndarray(), np.int16).reshape(-1)
            self.audio.append((loop.time(), frame.pts or 0, samples))

    async def _pull_video(self) -> None:
        loop = asyncio.get_running_loop()
        rate = self.config.sample_rate
        while True:
            frame = await self.pipeline.video_track.recv()
            # The Y plane of yuv420p, less video black (16): 0 for the idle (black) frame.
            luma = max(0.0, float(frame.to_ndarray()[: frame.height].mean()) - 16.0)
            start = -(-(frame.pts or 0) * rate // 90_000)  # pts was floored from samples
            self.video.append((loop.time(), start, luma))

    def feed(self, payload: object, reliability: str = protocol.UNRELIABLE) -> None:
        self.pipeline.feed(data(payload, AGENT, reliability))

    def feed_segment(self, pcm: bytes, *, end: bool = True) -> None:
        for chunk in protocol.pcm_chunks(pcm):
            self.feed(chunk)
        if end:
            self.feed(protocol.encode_segment_end(), protocol.RELIABLE)

    def pcm(self) -> npt.NDArray[np.int16]:
        return (
            np.concatenate([s for _, _, s in self.audio]) if self.audio else np.zeros(0, np.int16)
        )
