"""An asyncio event loop whose clock jumps instead of waiting.

`VirtualTimeLoop.time()` returns virtual seconds. Whenever the loop would block with timers
pending and no I/O ready, it advances virtual time straight to the next timer instead of
sleeping. Work still runs in the same order as on a real loop, so a pipeline paced against
`loop.time()` produces exactly what it would live — only as fast as the CPU allows.

Executor jobs (`run_in_executor`, `asyncio.to_thread`) run inline: on a real loop they overlap
with waiting, on a virtual one they must not let time run away while they compute.

Use it only where nothing waits on real I/O: a socket that takes real milliseconds to answer
would see virtual seconds fly by. `avatar-worker render`, the benchmarks' offline parts and
the tests use it through `run()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; turns a timed wait into a jump of virtual time."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            return super().select(None)  # nothing scheduled: wait for real I/O (or forever)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time, starting at `start` seconds."""

    def __init__(self, start: float = 1000.0) -> None:
        self._virtual_now = start
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            # Always move forward, even by less than the float resolution at this magnitude:
            # a loop re-arming a tiny timeout must not spin at a standstill.
            self._virtual_now = max(
                self._virtual_now + seconds, math.nextafter(self._virtual_now, math.inf)
            )

    def run_in_executor(  # type: ignore[override]
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[..., T],
        *args: Any,
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # delivered to the awaiting coroutine, as an executor would
            future.set_exception(exc)
        return future


def run(main: Coroutine[Any, Any, T], *, start: float = 1000.0) -> T:
    """Run `main` to completion on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
