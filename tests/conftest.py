"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest

# The localcluster's fixtures (a Kubernetes API in memory, kopf, clients) for every layer.
pytest_plugins = ["avatar_devtools.localcluster.fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
