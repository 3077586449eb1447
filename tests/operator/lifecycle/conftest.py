"""Fixtures: an operator environment on an in-process localcluster (see lifecycle_support)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lifecycle_support import FLEET, NS, OPERATOR_NS, Env, session_manifest

from avatar_operator.localcluster import fleet


@pytest_asyncio.fixture
async def env(
    localcluster_factory: Any, avatarsession_crd: dict[str, Any], tmp_path: Path
) -> AsyncIterator[Env]:
    local = await localcluster_factory(fleet_spec=fleet.parse(FLEET))
    local.apply(avatarsession_crd)
    for namespace in (OPERATOR_NS, NS):
        local.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    local.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "videosdk-credentials", "namespace": OPERATOR_NS},
            "data": {
                "apiKey": base64.b64encode(b"test-api-key").decode(),
                "secret": base64.b64encode(b"s" * 40).decode(),
            },
        }
    )
    kubeconfig = local.write_kubeconfig(tmp_path / "kubeconfig")
    environment = Env(local, kubeconfig, tmp_path)
    yield environment
    await environment.aclose()


@pytest.fixture
def manifest() -> Callable[..., dict[str, Any]]:
    return session_manifest
