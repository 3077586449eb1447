"""Fixtures for the agent client, avatarctl and KubernetesAvatar: a localcluster with the CRD,
the agent's namespace and a kubeconfig for it, a client, and the real operator on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from client_support import FLEET, NS, OperatorEnv, prepare

from avatar_devtools.localcluster import cluster, fleet
from avatar_sdk import client as avatar_client


@pytest_asyncio.fixture
async def cluster_with_crd(
    localcluster_factory: Any, avatarsession_crd: dict[str, Any]
) -> cluster.LocalCluster:
    local: cluster.LocalCluster = await localcluster_factory(fleet_spec=fleet.parse(FLEET))
    prepare(local, avatarsession_crd)
    return local


@pytest.fixture
def kubeconfig(cluster_with_crd: cluster.LocalCluster, tmp_path: Path) -> Path:
    """A kubeconfig whose context names the agent's namespace."""
    return cluster_with_crd.write_kubeconfig(tmp_path / "agent-kubeconfig", namespace=NS)


@pytest_asyncio.fixture
async def sessions(kubeconfig: Path) -> AsyncIterator[avatar_client.AvatarSessionClient]:
    client = await avatar_client.AvatarSessionClient.from_config(kubeconfig=kubeconfig)
    yield client
    await client.aclose()


ClientFactory = Callable[[], Awaitable[avatar_client.AvatarSessionClient]]


@pytest_asyncio.fixture
async def client_factory(kubeconfig: Path) -> AsyncIterator[ClientFactory]:
    """More clients of their own (as separate agent processes would have)."""
    made: list[avatar_client.AvatarSessionClient] = []

    async def make() -> avatar_client.AvatarSessionClient:
        client = await avatar_client.AvatarSessionClient.from_config(kubeconfig=kubeconfig)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest_asyncio.fixture
async def operator_env(
    cluster_with_crd: cluster.LocalCluster, kubeconfig: Path
) -> AsyncIterator[OperatorEnv]:
    """The real operator (kopf, reconciler, relay) running against the cluster."""
    env = OperatorEnv(cluster_with_crd, kubeconfig)
    await env.start()
    yield env
    await env.aclose()
