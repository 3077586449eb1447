"""Fixtures for the localcluster tests.

The shipped plugin (`avatar_devtools.localcluster.fixtures`: `localcluster`, `kube_client`,
`kopf_operator`, `localcluster_process`, ...) is registered for every layer in tests/conftest.py;
what only these tests need is here.
"""

from __future__ import annotations

from typing import Any

import pytest
from localcluster_helpers import widget_crd

from avatar_devtools.localcluster import cluster


@pytest.fixture
async def with_widgets(localcluster: cluster.LocalCluster) -> cluster.LocalCluster:
    """`localcluster` with the test CRD (`widgets.test.localcluster.dev`) registered."""
    localcluster.apply(widget_crd())
    return localcluster


@pytest.fixture
def widgets_crd() -> dict[str, Any]:
    return widget_crd()
