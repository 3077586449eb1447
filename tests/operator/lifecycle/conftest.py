"""Fixtures: an operator environment on a backend (see lifecycle_support).

Every test runs on the emulator; those marked `realcluster` also run on the real control plane
(`[real]`), with the operator holding only a token of the chart's ServiceAccount. Where the real
control plane cannot run, their `[real]` instances are skipped with the reason, in one line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lifecycle_support import Env, make_env, session_manifest

from avatar_devtools.realcluster import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realcluster: also run on the real control plane, as the [real] instance"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        names = ["emulator"]
        if metafunc.definition.get_closest_marker("realcluster"):
            names.append("real")
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def env(
    backend: str,
    request: pytest.FixtureRequest,
    localcluster_factory: Any,
    avatarsession_crd: dict[str, Any],
    tmp_path: Path,
) -> AsyncIterator[Env]:
    if backend == "real":
        from realbackend import RealBackend

        cluster: Cluster = request.getfixturevalue("realcluster")
        operator = request.getfixturevalue("chart_operator")
        environment = Env(RealBackend(cluster, operator), tmp_path)
    else:
        environment = await make_env(localcluster_factory, avatarsession_crd, tmp_path)
    yield environment
    await environment.aclose()


@pytest.fixture
def manifest() -> Callable[..., dict[str, Any]]:
    return session_manifest
