"""The one clock a session's media is paced by.

Everything that waits in the worker (track pacing, the receiver's reorder window and idle gap,
status throttling) reads time from a `Clock`. The default is the running event loop's own
monotonic time, so on a virtual-time loop (`avatar_worker.virtualtime`) the whole pipeline runs
on virtual time without knowing it: that is how `avatar-worker render` runs faster than real
time and how tests play an hour-long session in seconds.

A clock other than the loop's must advance with it (an offset, or a late sleeper in tests):
the receiver's timeouts are loop timeouts computed from `now()`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds, and a way to wait until a given moment."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class LoopClock:
    """The running event loop's clock (`loop.time()`)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        # Sleep even for a non-positive delay: a track that is behind still yields to the loop.
        await asyncio.sleep(max(0.0, delay))
