"""A whole emulated cluster in one object: store, API server, simulated kubelet.

`LocalCluster` runs in the caller's event loop (tests, `make demo`); `ClusterProcess` runs the
same thing as `python -m avatar_devtools.localcluster` in a child process, for clients that
block (the `kubernetes` client on the main thread) or for measurements where the client must
not share the server's CPU.

```python
async with cluster.LocalCluster(crds=[crd.custom_resource_definition()],
                                fleet=fleet.load("examples/fleet.yaml")) as lc:
    lc.write_kubeconfig(tmp_path / "kubeconfig")
    await lc.kubelet.fail_pod("default", "worker-1", reason="OOMKilled")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from avatar_devtools.localcluster import (
    apiserver,
    errors,
    fleet,
    kubeconfig,
    kubelet,
    resources,
    store,
    watching,
)

logger = logging.getLogger(__name__)


def resource_for(the_store: store.Store, manifest: dict[str, Any]) -> resources.ResourceInfo:
    """The served resource of a manifest, by its apiVersion and kind."""
    api_version = str(manifest.get("apiVersion", ""))
    kind = manifest.get("kind")
    group, _, version = api_version.rpartition("/")
    for info in the_store.resources:
        if info.group == group and info.version == version and info.kind == kind:
            return info
    raise errors.bad_request(f"no resource serves {kind} in {api_version or 'no apiVersion'}")


def apply(the_store: store.Store, manifest: dict[str, Any]) -> watching.Record:
    """Create the object, or replace the existing one (status apart) by its manifest."""
    info = resource_for(the_store, manifest)
    meta = manifest.get("metadata") or {}
    namespace = meta.get("namespace") or ("default" if info.namespaced else None)
    existing = the_store.find(info, namespace, str(meta.get("name", "")))
    body = json.loads(json.dumps(manifest))
    if existing is None:
        return the_store.create(info, namespace, body)
    return the_store.update(info, namespace, existing.name, body)


def operator_prerequisites(
    operator_namespace: str,
    session_namespaces: Iterable[str],
    *,
    api_key: str,
    secret: str,
    credentials_secret: str = "videosdk-credentials",
) -> list[dict[str, Any]]:
    """What the chart and the user provide before the operator runs: the operator's and the
    sessions' Namespaces, and the default VideoSDK credentials Secret in the operator's."""
    names = dict.fromkeys([operator_namespace, *session_namespaces])
    return [
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": credentials_secret, "namespace": operator_namespace},
            "stringData": {"apiKey": api_key, "secret": secret},
        },
    ]


def load_manifests(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every object of a (multi-document) YAML file; `kind: List` items are flattened."""
    found: list[dict[str, Any]] = []
    for document in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")):
        if not document:
            continue
        if document.get("kind") == "List":
            found.extend(document.get("items") or [])
        else:
            found.append(document)
    return found


def load_manifest_files(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """`load_manifests` of a file, or of every `*.yaml`/`*.yml` of a directory in name order
    (`crds/`: all the project's CRDs)."""
    directory = Path(path)
    if not directory.is_dir():
        return load_manifests(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    return [m for file in files for m in load_manifests(file)]


class LocalCluster:
    """Store + API server on 127.0.0.1 + (with a fleet) a simulated kubelet, in this loop."""

    def __init__(
        self,
        *,
        port: int = 0,
        crds: Iterable[dict[str, Any]] = (),
        objects: Iterable[dict[str, Any]] = (),
        fleet_spec: fleet.Fleet | None = None,
        kubelet_mode: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        history: int = 4096,
        bookmark_interval: float = 10.0,
        strict_crd_schemas: bool = True,
    ) -> None:
        self.store = store.Store(history=history, strict_crd_schemas=strict_crd_schemas)
        self.server = apiserver.ApiServer(
            self.store, port=port, bookmark_interval=bookmark_interval
        )
        self.kubelet: kubelet.Kubelet | None = None
        self._crds = list(crds)
        self._objects = list(objects)
        self._fleet = fleet_spec
        self._kubelet_mode = kubelet_mode
        self._workdir = workdir

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()
        for crd in self._crds:
            apply(self.store, crd)
        for manifest in self._objects:
            apply(self.store, manifest)
        if self._fleet is not None:
            config = self._fleet.kubelet
            if self._kubelet_mode is not None:
                config = fleet.KubeletConfig(
                    mode=self._kubelet_mode,
                    start_seconds=config.start_seconds,
                    pod_gc_seconds=config.pod_gc_seconds,
                    images=config.images,
                )
            self.kubelet = kubelet.Kubelet(
                self.store, config=config, workdir=self._workdir, api_url=self.url
            )
            self.kubelet.add_fleet(self._fleet)
            self.kubelet.register_controls(self.server)
            await self.kubelet.start()
        self.store.collect_garbage()

    async def aclose(self) -> None:
        if self.kubelet is not None:
            await self.kubelet.aclose()
        await self.server.stop()

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def write_kubeconfig(self, path: str | os.PathLike[str], *, namespace: str = "default") -> Path:
        return kubeconfig.write(path, self.url, namespace=namespace)

    def apply(self, manifest: dict[str, Any]) -> watching.Record:
        return apply(self.store, manifest)

    async def wait_for(
        self,
        manifest_or_info: dict[str, Any] | resources.ResourceInfo,
        namespace: str | None,
        name: str,
        predicate: Any = None,
        *,
        within: float = 10.0,
    ) -> dict[str, Any]:
        """Poll until the object exists (and `predicate(obj)` holds); returns it."""
        info = (
            manifest_or_info
            if isinstance(manifest_or_info, resources.ResourceInfo)
            else resource_for(self.store, manifest_or_info)
        )
        async with asyncio.timeout(within):
            while True:
                record = self.store.find(info, namespace, name)
                if record is not None and (predicate is None or predicate(record.obj)):
                    return record.obj
                await asyncio.sleep(0.02)


class ClusterProcess:
    """`python -m avatar_devtools.localcluster` in a child process, until closed.

    Ready once the kubeconfig file appears (the CLI writes it, atomically, after binding).
    """

    def __init__(
        self,
        kubeconfig_path: str | os.PathLike[str],
        *,
        port: int = 0,
        crds: Iterable[str | os.PathLike[str]] = (),
        fleet_path: str | os.PathLike[str] | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.kubeconfig_path = Path(kubeconfig_path)
        self._args = [sys.executable, "-m", "avatar_devtools.localcluster", "--port", str(port)]
        self._args += ["--kubeconfig", str(self.kubeconfig_path)]
        for crd in crds:
            self._args += ["--crd", str(crd)]
        if fleet_path is not None:
            self._args += ["--fleet", str(fleet_path)]
        self._args += list(extra_args)
        self._startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.kubeconfig_path.unlink()
        self.process = subprocess.Popen(self._args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self._startup_timeout
        while not self.kubeconfig_path.exists():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"localcluster exited with {self.process.returncode} before it was ready"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("localcluster did not write its kubeconfig in time")
            time.sleep(0.02)
        self.url = kubeconfig.server_of(self.kubeconfig_path)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the cluster process is not started")
        return self.process.pid

    def control(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a control endpoint (`fail-pod`, `remove-node`, `watches`, ...); blocking."""
        request = urllib.request.Request(
            f"{self.url}/localcluster/v1/{name}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def __enter__(self) -> ClusterProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
