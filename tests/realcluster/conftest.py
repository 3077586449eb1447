"""The real control plane layer, on the session's one cluster (`realcluster`, from
`avatar_devtools.realcluster.fixtures`). Without Go, and nothing built, the whole layer is
skipped with one line that says why and how to get it (`AVATAR_REALCLUSTER=0` skips it on
purpose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_devtools import relaytls
from avatar_devtools.realcluster import fixtures

HERE = Path(__file__).resolve().parent
_reason = fixtures.skip_reason()


def _in_layer(item: pytest.Item) -> bool:
    return Path(item.path).resolve().is_relative_to(HERE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _reason is None:
        return
    marker = pytest.mark.skip(reason=fixtures.SKIP_PREFIX + _reason)
    for item in items:
        if _in_layer(item):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def crd(realcluster_crd: str) -> str:
    """The AvatarSession CRD, applied with the built kubectl and Established."""
    return realcluster_crd


@pytest.fixture(scope="session")
def relay_tls(tmp_path_factory: pytest.TempPathFactory) -> relaytls.RelayTLS:
    """The certificate the operators of this layer serve their status relay with (one CA,
    shared by every replica, as the chart's Secret is)."""
    return relaytls.make(tmp_path_factory.mktemp("relay-tls"))
