"""The one clock a session's media is paced by.

Everything that waits in the worker (track pacing, the receiver's reorder window and idle gap,
status throttling) reads time from a `Clock`. The default is the running event loop's own
monotonic time, so on a virtual-time loop (`avatar_worker.virtualtime`) the whole pipeline runs
on virtual time without knowing it: that is how `avatar-worker render` runs faster than real
time and how tests play an hour-long session in seconds.

A clock other than the loop's must advance with it (an offset, or a late sleeper in tests):
the receiver's timeouts are loop timeouts computed from `now()`.

Comparing times. Float seconds carry noise: `t0 + 2880 / 24000` is 10.000000000000104 ms after
`now` where the arithmetic says 10 ms. On a real loop time moves on by itself and such noise
costs nothing; on the virtual-time loop time moves only when the loop would block, and asyncio
fires a timer due within its clock resolution (1 ns) without moving it — so code that re-checks
"is the deadline reached?" after a 1e-13 s wait would spin forever. Every such decision in the
worker goes through `ticks()`, `reached()` and `remaining()`: times are compared in whole
ticks of 1 µs (far above the float noise of any loop time a session sees, far below one sample
at 48 kHz), and a wait for a deadline not yet reached lasts at least one tick, so after it the
comparison agrees that the deadline has come.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

TICKS_PER_SECOND = 1_000_000  # times are compared in µs ticks
TICK = 1.0 / TICKS_PER_SECOND  # s


def ticks(seconds: float) -> int:
    """`seconds` in whole ticks (rounded to the nearest)."""
    return round(seconds * TICKS_PER_SECOND)


def reached(now: float, deadline: float) -> bool:
    """`deadline` has come at `now`, to the tick (an infinite deadline never / always has)."""
    left = deadline - now
    if not math.isfinite(left):
        return left < 0
    return ticks(left) <= 0


def remaining(now: float, deadline: float) -> float:
    """Seconds to wait for `deadline`: 0 when `reached()`, else a whole number of ticks ≥ 1."""
    left = deadline - now
    if not math.isfinite(left):
        return math.inf if left > 0 else 0.0
    return max(0, ticks(left)) / TICKS_PER_SECOND


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
