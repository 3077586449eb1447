"""Run the real kopf operator against a localcluster, in a thread with its own event loop.

```python
async with kopfrun.KopfOperator(cluster.url, modules=["avatar_operator.handlers"],
                                watching=["avatarsessions.avatar-operator.dev"]) as op:
    ...  # the operator's watches are open here
```

What it does, and why:

- **Its own thread and loop.** When kopf stops it cancels every task its loop started after
  it did, "because there is no way to trace who spawned what" (kopf's `run_tasks`): in the
  test's loop that would be the API server's connections, the kubelet and the test itself. In
  a thread, kopf owns its loop, a handler that blocks (the `kubernetes` client in an async
  handler) blocks kopf and not the API server, and the server can run in the test's loop.
- Handlers are registered into a fresh `kopf.OperatorRegistry`: the given modules are imported
  (re-imported if a previous test imported them) while that registry is kopf's default, so
  two operators in two tests never share handlers. A registry can be passed instead.
- A `@kopf.on.login` handler in that registry returns a `kopf.ConnectionInfo` for the
  cluster's URL, so kopf never looks at the environment's kubeconfig.
- `standalone=True`: no peering objects (localcluster does not serve kopf's peering CRDs).
- Entering waits for kopf's ready flag (startup handlers done) and then for its watch streams
  to be open on the server (`watching`, the resource names it must watch, such as `pods` or
  `avatarsessions.avatar-operator.dev`; without it, until the set of open watches has been
  stable for `settle_seconds`), asking the server's `/localcluster/v1/watches`, so it works
  for a `ClusterProcess` too. Exiting sets kopf's stop flag, joins the thread, and re-raises
  what the operator raised.

Settings default to `fast_settings()`: short server-side watch timeouts and a fast reconnect,
so a test that drops connections sees kopf resume quickly. `status` writes of handler results
and kopf's progress are pruned by a CRD schema that does not declare them, exactly as on a real
cluster: give kopf's storages annotations (`kopf.AnnotationsProgressStorage`) in the settings,
or declare `x-kubernetes-preserve-unknown-fields` where kopf writes.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import threading
from collections.abc import Collection, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import kopf

logger = logging.getLogger(__name__)


def connection_info(url: str, *, namespace: str = "default") -> kopf.ConnectionInfo:
    """kopf's credentials for a localcluster: plain HTTP, a placeholder token."""
    return kopf.ConnectionInfo(
        server=url,
        scheme="Bearer",
        token="localcluster",
        insecure=True,
        default_namespace=namespace,
    )


def fast_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 30
    settings.watching.client_timeout = 40
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 0.05
    settings.networking.request_timeout = 10
    settings.networking.connect_timeout = 5
    return settings


async def open_watches(url: str) -> list[dict[str, Any]]:
    """The watches open on a localcluster (in-process or another process)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/localcluster/v1/watches", json={}) as response,
    ):
        body = json.loads(await response.read())
        watches: list[dict[str, Any]] = body["watches"]
        return watches


class KopfOperator:
    """kopf.operator() against a localcluster, in a thread, as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        modules: Sequence[str] = (),
        registry: kopf.OperatorRegistry | None = None,
        settings: kopf.OperatorSettings | None = None,
        namespaces: Collection[str] = (),
        watching: Collection[str] | None = None,
        memo: Any = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 15.0,
        settle_seconds: float = 0.3,
    ) -> None:
        self.url = url
        self.registry = registry or kopf.OperatorRegistry()
        self.settings = settings or fast_settings()
        self.namespaces = list(namespaces)
        self.watching = list(watching) if watching is not None else None
        self.memo = memo
        self._modules = list(modules)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._settle_seconds = settle_seconds
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _register(self) -> None:
        previous = kopf.get_default_registry()
        kopf.set_default_registry(self.registry)
        try:
            for name in self._modules:
                if name in sys.modules:
                    importlib.reload(sys.modules[name])
                else:
                    importlib.import_module(name)
        finally:
            kopf.set_default_registry(previous)
        info = connection_info(self.url)

        @kopf.on.login(registry=self.registry)
        def _login_to_localcluster(**_: Any) -> kopf.ConnectionInfo:
            return info

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    settings=self.settings,
                    standalone=True,
                    clusterwide=not self.namespaces,
                    namespaces=self.namespaces,
                    ready_flag=self._ready,
                    stop_flag=self._stop,
                    memo=self.memo,
                )
            )
        except BaseException as e:  # reported by stop(), from the caller's thread
            self._failure = e
        finally:
            self._ready.set()  # never leave start() waiting on an operator that is gone

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        self._register()
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self._thread.start()
        try:
            if not await asyncio.to_thread(self._ready.wait, self._start_timeout):
                raise TimeoutError("the kopf operator did not get ready in time")
            self._raise_if_gone()
            async with asyncio.timeout(self._start_timeout):
                await self._wait_for_watches()
        except BaseException:
            await self.stop()
            raise
        logger.info("kopf operator running", extra={"url": self.url})

    def _raise_if_gone(self) -> None:
        if not self.running:
            if self._failure is not None:
                raise RuntimeError("the kopf operator failed while starting") from self._failure
            raise RuntimeError("the kopf operator exited while starting")

    async def _wait_for_watches(self) -> None:
        loop = asyncio.get_running_loop()
        last: list[tuple[str, str]] = []
        stable_since = loop.time()
        while True:
            self._raise_if_gone()
            opened = sorted(
                (w["resource"], w.get("namespace") or "") for w in await open_watches(self.url)
            )
            resources = {r for r, _ in opened}
            if self.watching is not None:
                if all(r in resources for r in self.watching):
                    return
            elif opened != last:
                last, stable_since = opened, loop.time()
            elif opened and loop.time() - stable_since >= self._settle_seconds:
                return
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop kopf and wait for its thread; re-raise what the operator raised, if anything."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        await asyncio.to_thread(thread.join, self._stop_timeout)
        if thread.is_alive():
            logger.warning("kopf operator did not stop in time", extra={"url": self.url})
        failure, self._failure = self._failure, None
        if failure is not None and not isinstance(failure, asyncio.CancelledError):
            raise RuntimeError("the kopf operator failed") from failure

    async def __aenter__(self) -> KopfOperator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
