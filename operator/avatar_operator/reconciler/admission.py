"""The admission queue: sessions are started first come, first served, by a few workers —
except that a session a ready warm worker can serve goes first (`request(first=True)`).

In a burst of hundreds of creates, each session is started in the order it came and quickly,
instead of all of them advancing together a request at a time (which made every session wait for
nearly the whole burst). A session is in the queue at most once; it is read afresh when served.
While the queue is not empty, work that can wait (Events, workers' reports, the status Starting
of a session whose Pod exists) yields to it for a bounded time (`yield_to`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

from avatar_operator.reconciler import background

ADMISSION_WORKERS = 16  # sessions being started at once (each is 3 sequential API calls)


class AdmissionQueue:
    """Keys of sessions to admit, served by `ADMISSION_WORKERS` tasks calling `admit(key)`."""

    def __init__(self, tasks: background.Tasks, admit: Callable[[str], Awaitable[None]]) -> None:
        self._tasks = tasks
        self._admit = admit
        # (0 first | 1 in line, arrival, key): a session a ready warm worker can take goes
        # before the cold starts queued ahead of it (its start is one patch; theirs, several
        # writes that would delay it)
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._queued: set[str] = set()
        self._pending = 0  # queued or being started
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        for index in range(ADMISSION_WORKERS):
            self._tasks.spawn(self._run(), f"admission {index}")

    def request(self, key: str, *, first: bool = False) -> None:
        """Queue the session (at most once); `first`: before those in line."""
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait((0 if first else 1, next(self._arrivals), key))
        self._pending += 1
        self._idle.clear()

    async def yield_to(self, max_wait: float) -> None:
        """Wait while sessions wait to be started, at most `max_wait` seconds."""
        if self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max_wait)

    async def _run(self) -> None:
        while True:
            _, _, key = await self._queue.get()
            self._queued.discard(key)  # an event from now on queues it again
            try:
                await self._tasks.guard(self._admit(key), f"admit {key}")
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
