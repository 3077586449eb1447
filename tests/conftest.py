"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest

# The localcluster's fixtures (a Kubernetes API in memory, kopf, clients) for every layer, and
# the real control plane's (one cluster per session, started by the first test that needs it).
pytest_plugins = ["avatar_devtools.localcluster.fixtures", "avatar_devtools.realcluster.fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
