"""Renderer drivers: audio from the receiver in, rendered units out to the synchronizer.

A driver produces `synchronizer.Unit`s — one video frame plus its audio — from one of the two
renderer shapes of `renderers.contract`:

* `framedriver.FrameRendererDriver` runs this project's `FrameRenderer`s (the built-ins and
  users' models): windows cut from a sample counter, rendered a batch at a time in a thread.
* `avatardriver.AvatarRendererDriver` runs a renderer written for VideoSDK's `AvatarRenderer`
  shape unchanged, and re-times what it yields on the same sample clock.

Both read the receiver in their own task, only as far as the synchronizer has room: the
backlog stays in the receiver, rendered frames never pile up. `RendererDriver` is what the
pipeline sees of either, and owns their tasks.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Any

from avatar_worker.receiver import AudioReceiver
from avatar_worker.segments import Segment
from avatar_worker.synchronizer import Synchronizer

logger = logging.getLogger(__name__)


class RendererDriver(abc.ABC):
    """Feeds a renderer from the receiver and the synchronizer from the renderer."""

    def __init__(self, receiver: AudioReceiver, synchronizer: Synchronizer) -> None:
        self._receiver = receiver
        self._sync = synchronizer
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self.frames_rendered = 0
        synchronizer.add_commit_listener(self._wake.set)

    @abc.abstractmethod
    async def prime(self) -> None:
        """Render the idle frame before the tracks start."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the driver's tasks."""

    @abc.abstractmethod
    def interrupt(self, segments: list[Segment]) -> None:
        """Drop what is buffered for `segments` and reset the renderer."""

    @property
    def vram_used_mib(self) -> int | None:
        return None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "renderer driver task failed",
                exc_info=task.exception(),
                extra={"task": task.get_name()},
            )

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
