"""pytest fixtures: one real control plane for the whole test session (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, and the node agent with `examples/fleet.yaml`), shared by
every layer that runs on it (`tests/realcluster`, and the real backend of the lifecycle tests).

The binaries are built from Kubernetes' Go modules by `hack/kube/build.sh` (minutes when cold,
a cache hit afterwards). `skip_reason()` says why the cluster cannot run here (no Go and nothing
built, or `AVATAR_REALCLUSTER=0`), in one line that says how to get it; tests that need it are
skipped with that line, never silently.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from avatar_devtools.realcluster import binaries
from avatar_devtools.realcluster.cluster import Cluster

REPO_ROOT = Path(__file__).resolve().parents[3]
FLEET = REPO_ROOT / "examples" / "fleet.yaml"
CRD_DIR = REPO_ROOT / "crds"
# every CRD of the project (AvatarSession, AvatarPool, ...): all of crds/ is applied
CRDS = tuple(sorted(CRD_DIR.glob("*.yaml")))

SKIP_PREFIX = "real control plane skipped: "
startup_seconds: list[float] = []  # the session cluster's start-up, for the terminal summary


@functools.cache
def skip_reason() -> str | None:
    """Why the real control plane cannot run here, or None."""
    if os.environ.get("AVATAR_REALCLUSTER") == "0":
        return "AVATAR_REALCLUSTER=0"
    return binaries.unavailable_reason(REPO_ROOT)


@pytest.fixture(scope="session")
def realcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(SKIP_PREFIX + reason)
    bin_dir = binaries.bin_dir(REPO_ROOT)  # builds when needed (minutes when cold)
    cluster = Cluster(
        tmp_path_factory.mktemp("realcluster"),
        bin_dir=bin_dir,
        fleet=FLEET,
        die_with_parent=True,
    )
    cluster.start()
    assert cluster.startup_seconds is not None
    startup_seconds.append(cluster.startup_seconds)
    pids = [int(p["pid"]) for p in cluster.processes.values()]
    try:
        yield cluster
    finally:
        cluster.stop()
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not alive, f"processes left behind by the cluster: {alive}"


def wait_established(cluster: Cluster, crd: str, within: float = 60) -> None:
    """Until the CRD is Established (not `kubectl wait`, nor a jsonpath filter: both fail, not
    wait, until the server has written the CRD's first conditions)."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
    admin = cluster.rest()
    deadline = time.monotonic() + within
    while True:
        body = admin.request("GET", path)
        conditions = (body.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        assert time.monotonic() < deadline, f"the CRD {crd} was not Established in {within} s"
        time.sleep(0.2)


def crd_names(files: tuple[Path, ...] = CRDS) -> list[str]:
    """The names of the CRDs in `files` (`avatarsessions.avatar-operator.dev`, ...)."""
    return [
        str(doc["metadata"]["name"])
        for path in files
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]


def apply_crds(cluster: Cluster, files: tuple[Path, ...] = CRDS) -> str:
    """Every CRD in crds/, applied with the built kubectl, then each waited for until
    Established; kubectl's output."""
    args = [arg for path in files for arg in ("-f", str(path))]
    applied = cluster.kubectl("apply", *args)
    for name in crd_names(files):
        wait_established(cluster, name)
    return applied.stdout


@pytest.fixture(scope="session")
def realcluster_crd(realcluster: Cluster) -> str:
    """The project's CRDs (every file of crds/: AvatarSession, AvatarPool), applied with the
    built kubectl and Established; kubectl's output."""
    return apply_crds(realcluster)


@dataclasses.dataclass(frozen=True)
class ChartOperator:
    """What an operator needs to run on the session's cluster as the chart's ServiceAccount:
    its namespace (the chart's RBAC, release `avatar-operator`, applied there; the default
    VideoSDK credentials Secret), the sessions' namespace, a kubeconfig with only a token of
    that ServiceAccount, and the GPU nodes."""

    namespace: str
    sessions_namespace: str
    kubeconfig: Path
    nodes: tuple[str, ...]
    prerequisites: tuple[dict[str, Any], ...]  # the namespaces and the credentials Secret


CHART_OPERATOR_NS = "lifecycle-system"  # not the chart tests' avatar-system: helm owns that
SESSIONS_NS = "agents"  # the namespace of examples/agent-rbac.yaml
API_KEY = "test-api-key"
API_SECRET = "s" * 40


@pytest.fixture(scope="session")
def chart_operator(
    realcluster: Cluster, realcluster_crd: str, tmp_path_factory: pytest.TempPathFactory
) -> ChartOperator:
    from avatar_devtools.localcluster.cluster import operator_prerequisites
    from avatar_devtools.realcluster import chartidentity
    from avatar_devtools.realcluster.rest import RestError

    admin = realcluster.rest()
    prerequisites = operator_prerequisites(
        CHART_OPERATOR_NS, [SESSIONS_NS], api_key=API_KEY, secret=API_SECRET
    )
    for obj in prerequisites:
        try:
            admin.create(obj)
        except RestError as error:
            if error.status != 409:
                raise
    chartidentity.apply_chart_rbac(
        realcluster,
        release="avatar-operator",
        namespace=CHART_OPERATOR_NS,
        values={
            "videosdk.existingSecret": "videosdk-credentials",
            "dispatcher.enabled": "true",
            "dispatcher.namespace": SESSIONS_NS,
        },
    )
    kubeconfig = chartidentity.service_account_kubeconfig(
        realcluster,
        CHART_OPERATOR_NS,
        "avatar-operator",
        tmp_path_factory.mktemp("chart-operator") / "operator.kubeconfig",
    )
    nodes = tuple(
        n["metadata"]["name"]
        for n in admin.list("nodes")
        if n["metadata"].get("labels", {}).get("nvidia.com/gpu.present") == "true"
    )
    return ChartOperator(CHART_OPERATOR_NS, SESSIONS_NS, kubeconfig, nodes, tuple(prerequisites))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Every skip for want of the real control plane reported at one place, so `-ra` folds
    them into one line."""
    report = yield
    if (
        report.skipped
        and isinstance(report.longrepr, tuple)
        and SKIP_PREFIX in str(report.longrepr[2])
    ):
        location: Any = (__file__, None, report.longrepr[2])
        report.longrepr = location
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if startup_seconds:
        terminalreporter.write_line(
            f"realcluster: control plane and nodes ready in {startup_seconds[0]:.1f} s"
        )
