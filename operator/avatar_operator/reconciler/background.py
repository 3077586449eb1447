"""The reconciler's background work: tasks it starts, and the Events it posts.

Every task is referenced until it ends (`Tasks`), logs what it raised (a Kubernetes error as a
warning, anything else with its traceback, each counted in `reconcile_errors` by step), and is
cancelled and awaited by `aclose()`.

Events are posted from a queue by a few posters (`EventPoster`, after kopf's
`_core/engines/posting.py`): making one never waits on the API, a lost one never holds up a
session, and while sessions wait to be started the posters yield to them for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from avatar_operator import kube, manifests, metrics
from avatar_sdk import timestamps
from avatar_sdk.objects import Obj

logger = logging.getLogger(__name__)

EVENT_POSTERS = 4  # Events posted at once
EVENT_MAX_DELAY = 10.0  # seconds an Event may wait for a burst of admissions; it keeps its time


class Tasks:
    """Background tasks that live until `aclose()`; a crash is logged, not swallowed."""

    def __init__(self, metrics_: metrics.Metrics) -> None:
        self._metrics = metrics_
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self.guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: coro.close())  # cancelled before it ran: no warning
        return task

    async def guard(self, coro: Awaitable[Any], name: str) -> None:
        """Run `coro`, logging and counting what it raises under the step `name` names."""
        try:
            await coro
        except kube.KubeError as exc:
            self._metrics.reconcile_errors.labels(step=name.split()[0]).inc()
            logger.warning("background step failed", extra={"step": name, "error": str(exc)})
        except Exception:
            self._metrics.reconcile_errors.labels(step=name.split()[0]).inc()
            logger.exception("background step crashed", extra={"step": name})

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class EventPoster:
    """Kubernetes Events about sessions, posted in the background."""

    def __init__(
        self,
        kube_: kube.Kube,
        tasks: Tasks,
        *,
        yield_to: Callable[[float], Awaitable[None]],
    ) -> None:
        self._kube = kube_
        self._tasks = tasks
        self._yield_to = yield_to
        self._queue: asyncio.Queue[Obj] = asyncio.Queue()

    def start(self) -> None:
        for index in range(EVENT_POSTERS):
            self._tasks.spawn(self._run(), f"events {index}")

    def post(self, body: Obj, type_: str, *, reason: str, message: str) -> None:
        """Queue an Event about `body` (made now, posted soon)."""
        event = manifests.event(
            body, type_=type_, reason=reason, message=message, now=timestamps.now_rfc3339()
        )
        self._queue.put_nowait(event)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            await self._yield_to(EVENT_MAX_DELAY)
            await self._tasks.guard(
                self._kube.create(event, answer=False), f"event {event['reason']}"
            )
