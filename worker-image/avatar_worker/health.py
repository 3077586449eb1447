"""`/healthz` and `/readyz` for the worker Pod's probes (aiohttp, on `AVATAR_HEALTH_PORT`).

* `/healthz` — alive: the event loop answers, and once the tracks have started, the media loop
  is turning (a frame was handed to the sender within `stall_after` seconds). A wedged loop
  fails the liveness probe and the kubelet restarts the worker.
* `/readyz` — joined and publishing: the room was joined and video frames are flowing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

DEFAULT_STALL_AFTER = 10.0  # s without a frame handed out before the worker counts as wedged
READY_WINDOW = 2.0  # s: a frame within this long means "publishing"


class HealthServer:
    """Serves the two probes; `last_frame_at` is a monotonic time (or None before the first)."""

    def __init__(
        self,
        port: int,
        *,
        joined: Callable[[], bool],
        last_frame_at: Callable[[], float | None],
        host: str = "0.0.0.0",
        stall_after: float = DEFAULT_STALL_AFTER,
    ) -> None:
        self._port = port
        self._host = host
        self._joined = joined
        self._last_frame_at = last_frame_at
        self._stall_after = stall_after
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])

    async def aclose(self) -> None:
        await self._runner.cleanup()

    def _frame_age(self) -> float | None:
        last = self._last_frame_at()
        return None if last is None else time.monotonic() - last

    async def _healthz(self, request: web.Request) -> web.Response:
        age = self._frame_age()
        if age is not None and age > self._stall_after:
            return web.Response(status=503, text=f"media loop stalled for {age:.1f} s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        age = self._frame_age()
        if not self._joined():
            return web.Response(status=503, text="not joined\n")
        if age is None or age > READY_WINDOW:
            return web.Response(status=503, text="not publishing\n")
        return web.Response(text="ok\n")
