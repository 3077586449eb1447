"""pytest fixtures for tests that need a Kubernetes API: a localcluster, clients, kopf.

Use them as a plugin (`pytest_plugins = ["avatar_devtools.localcluster.fixtures"]` in the root
`conftest.py`), or import the ones a folder needs into its `conftest.py`.

| fixture                  | what it gives                                                       |
|--------------------------|---------------------------------------------------------------------|
| `localcluster`           | a started `LocalCluster` in the test's loop, with `DEFAULT_FLEET`     |
| `localcluster_factory`   | `await make(**LocalCluster kwargs)`: more clusters, other fleets/CRDs |
| `localcluster_kubeconfig`| a kubeconfig file for `localcluster`                                 |
| `kopf_connection`        | a `kopf.ConnectionInfo` for `localcluster`                           |
| `kube_client`            | a `kubernetes.client.ApiClient` for `localcluster` (blocking: call it |
|                          | through `asyncio.to_thread`, never on the loop that serves the API)   |
| `kopf_operator`          | `await start(modules=[...], watching=[...])`: the real kopf operator  |
|                          | against `localcluster`, stopped at teardown                           |
| `localcluster_process`   | the CLI in a child process (`ClusterProcess`: `.url`, `.control()`) |
|                          | with `DEFAULT_FLEET`; for blocking clients and separate processes     |
| `avatarsession_crd`      | the project's AvatarSession CRD, as `avatar_sdk.crd` renders it       |

```python
async def test_session_gets_a_pod(localcluster, kopf_operator, avatarsession_crd):
    localcluster.apply(avatarsession_crd)
    await kopf_operator(modules=["avatar_operator.handlers"],
                        watching=["avatarsessions.avatar-operator.dev"])
    ...
```
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import pytest_asyncio
import yaml

from avatar_devtools.localcluster import cluster, fleet, kopfrun, kubeconfig
from avatar_sdk import crd as sdk_crd

FLEET_DOCUMENT: dict[str, Any] = {
    "kubelet": {"mode": "phases", "startSeconds": 0.02, "podGCSeconds": 0.3},
    "nodes": [
        {
            "name": "gpu-node",
            "count": 2,
            "gpus": 2,
            "product": "NVIDIA-H100-80GB-HBM3",
            "memoryMiB": 81559,
        }
    ],
}
DEFAULT_FLEET = fleet.parse(FLEET_DOCUMENT)

ClusterFactory = Callable[..., Awaitable[cluster.LocalCluster]]
OperatorFactory = Callable[..., Awaitable[kopfrun.KopfOperator]]


@pytest_asyncio.fixture
async def localcluster_factory(tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    started: list[cluster.LocalCluster] = []

    async def make(**kwargs: Any) -> cluster.LocalCluster:
        kwargs.setdefault("workdir", tmp_path / f"kubelet-{len(started)}")
        kwargs.setdefault("bookmark_interval", 1.0)
        local = cluster.LocalCluster(**kwargs)
        await local.start()
        started.append(local)
        return local

    yield make
    for local in reversed(started):
        await local.aclose()


@pytest_asyncio.fixture
async def localcluster(localcluster_factory: ClusterFactory) -> cluster.LocalCluster:
    return await localcluster_factory(fleet_spec=DEFAULT_FLEET)


@pytest.fixture
def localcluster_kubeconfig(localcluster: cluster.LocalCluster, tmp_path: Path) -> Path:
    return localcluster.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kopf_connection(localcluster: cluster.LocalCluster) -> kopf.ConnectionInfo:
    return kopfrun.connection_info(localcluster.url)


@pytest.fixture
def kube_client(localcluster_kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    configuration = kubernetes.client.Configuration(
        host=kubeconfig.server_of(localcluster_kubeconfig),
        api_key={"BearerToken": kubeconfig.TOKEN},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


@pytest_asyncio.fixture
async def kopf_operator(localcluster: cluster.LocalCluster) -> AsyncIterator[OperatorFactory]:
    running: list[kopfrun.KopfOperator] = []

    async def start(**kwargs: Any) -> kopfrun.KopfOperator:
        operator = kopfrun.KopfOperator(localcluster.url, **kwargs)
        await operator.start()
        running.append(operator)
        return operator

    yield start
    for operator in reversed(running):
        await operator.stop()


@pytest.fixture
def localcluster_process(tmp_path: Path) -> Iterator[cluster.ClusterProcess]:
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump(FLEET_DOCUMENT), encoding="utf-8")
    process = cluster.ClusterProcess(
        tmp_path / "process-kubeconfig",
        fleet_path=fleet_path,
        extra_args=["--workdir", os.fspath(tmp_path / "process-kubelet"), "--log-level", "WARNING"],
    )
    with process:
        yield process


@pytest.fixture
def avatarsession_crd() -> dict[str, Any]:
    return sdk_crd.custom_resource_definition()
