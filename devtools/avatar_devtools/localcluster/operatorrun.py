"""The real operator (`avatar_operator.runner.Operator`) in a thread with its own event loop.

For tests and demos against a localcluster: the operator runs as in its own process. It needs
its own loop because kopf, when it stops, cancels every task created in its loop while it ran,
and the API server's loop must never wait on the operator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from avatar_operator import kube, runner
from avatar_operator.settings import OperatorSettings


class OperatorThread:
    """`runner.Operator.run()` in a thread of its own."""

    def __init__(self, settings: OperatorSettings, kubeconfig: Path) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.operator: runner.Operator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)
        self._failure: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            client = await kube.load_api_client(str(self.kubeconfig))
            self.operator = runner.Operator(self.settings, kube.Kube(client))
            try:
                await self.operator.run(self._stop)
            finally:
                await self.operator.api.aclose()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._failure = exc

    def start(self, within: float = 20.0, *, wait_active: bool = True) -> None:
        self._thread.start()
        deadline = time.monotonic() + within
        while self.operator is None or (wait_active and not self.operator.is_active()):
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator died: {self._failure!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the operator did not become active")
            time.sleep(0.02)

    def stop(self, within: float = 20.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(within)
        if self._thread.is_alive():
            raise TimeoutError("the operator did not stop")
