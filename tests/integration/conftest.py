"""Fixtures: the whole system of `make demo` (`avatar_devtools.demo.system`) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from avatar_devtools.demo import system
from avatar_sdk.client import AvatarSessionClient


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "operator_settings(**values): the demo system's operator settings"
    )
    config.addinivalue_line(
        "markers", "operator_process: run the demo system's operator as its own process"
    )


@pytest_asyncio.fixture
async def demo_system(tmp_path: Path, request: Any) -> AsyncIterator[system.DemoSystem]:
    """Emulated API + process kubelet + the real operator + room server; operator settings
    from the test's marker: `@pytest.mark.operator_settings(max_pod_restarts=1)`."""
    marker = request.node.get_closest_marker("operator_settings")
    overrides = dict(marker.kwargs) if marker is not None else {}
    in_process = request.node.get_closest_marker("operator_process") is not None
    async with system.DemoSystem(
        tmp_path / "system", operator_settings=overrides, operator_process=in_process
    ) as demo:
        yield demo


@pytest_asyncio.fixture
async def sessions(demo_system: system.DemoSystem) -> AsyncIterator[AvatarSessionClient]:
    """The agent's client, against the emulated API through its kubeconfig."""
    client = await AvatarSessionClient.from_config(
        system.NAMESPACE, kubeconfig=demo_system.kubeconfig
    )
    async with client:
        yield client
