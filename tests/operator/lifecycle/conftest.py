"""Fixtures: an operator environment on an in-process localcluster (see lifecycle_support)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lifecycle_support import Env, make_env, session_manifest


@pytest_asyncio.fixture
async def env(
    localcluster_factory: Any, avatarsession_crd: dict[str, Any], tmp_path: Path
) -> AsyncIterator[Env]:
    environment = await make_env(localcluster_factory, avatarsession_crd, tmp_path)
    yield environment
    await environment.aclose()


@pytest.fixture
def manifest() -> Callable[..., dict[str, Any]]:
    return session_manifest
