"""The real control plane layer: one cluster (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and the node agent with `examples/fleet.yaml`) for the whole test session.

The binaries are built from Kubernetes' Go modules by `hack/kube/build.sh` (minutes when cold,
a cache hit afterwards). Without Go, and nothing built, the whole layer is skipped with one
line that says why and how to get it (`AVATAR_REALCLUSTER=0` skips it on purpose)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_devtools.realcluster import BinariesUnavailable, Cluster, binaries

REPO_ROOT = Path(__file__).resolve().parents[2]
FLEET = REPO_ROOT / "examples" / "fleet.yaml"
CRD = REPO_ROOT / "crds" / "avatarsessions.yaml"

_startup: list[float] = []


def _skip_reason() -> str | None:
    """Why the layer cannot run here (decided before collecting it: one line in the summary)."""
    if os.environ.get("AVATAR_REALCLUSTER") == "0":
        return "AVATAR_REALCLUSTER=0"
    if os.environ.get("AVATAR_KUBE_BIN") or shutil.which("go"):
        return None
    try:
        binaries.bin_dir(REPO_ROOT, build=False)  # built before, on a machine with Go
    except (BinariesUnavailable, OSError, subprocess.CalledProcessError, IndexError):
        return binaries.GO_MISSING
    return None


HERE = Path(__file__).resolve().parent
_reason = _skip_reason()


def _in_layer(item: pytest.Item) -> bool:
    return Path(item.path).resolve().is_relative_to(HERE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _reason is None:
        return
    marker = pytest.mark.skip(reason=f"real control plane layer skipped: {_reason}")
    for item in items:
        if _in_layer(item):
            item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Every skip of the layer reported at one place, so `-ra` folds them into one line."""
    report = yield
    if _reason is not None and report.skipped and isinstance(report.longrepr, tuple):
        location: Any = (str(Path(__file__)), None, report.longrepr[2])
        report.longrepr = location
    return report


@pytest.fixture(scope="session")
def realcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = binaries.bin_dir(REPO_ROOT)  # builds when needed (minutes when cold)
    cluster = Cluster(
        tmp_path_factory.mktemp("realcluster"),
        bin_dir=bin_dir,
        fleet=FLEET,
        die_with_parent=True,
    )
    cluster.start()
    assert cluster.startup_seconds is not None
    _startup.append(cluster.startup_seconds)
    pids = [int(p["pid"]) for p in cluster.processes.values()]
    try:
        yield cluster
    finally:
        cluster.stop()
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not alive, f"processes left behind by the cluster: {alive}"


@pytest.fixture(scope="session")
def crd(realcluster: Cluster) -> str:
    """The AvatarSession CRD, applied with the built kubectl and Established."""
    applied = realcluster.kubectl("apply", "-f", str(CRD))
    # not `kubectl wait` at once: until the server has written the CRD's first conditions, it
    # fails with ".status.conditions accessor error: <nil>" instead of waiting
    deadline = time.monotonic() + 60
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    while True:
        established = realcluster.kubectl(
            "get", "crd/avatarsessions.avatar-operator.dev", "-o", f"jsonpath={jsonpath}"
        ).stdout
        if established == "True":
            return applied.stdout
        assert time.monotonic() < deadline, "the AvatarSession CRD was not Established in 60 s"
        time.sleep(0.2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup:
        terminalreporter.write_line(
            f"realcluster: control plane and nodes ready in {_startup[0]:.1f} s"
        )
