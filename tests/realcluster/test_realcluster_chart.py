"""The chart and its RBAC on the real API server: the README's install block verbatim, then the
operator run with nothing but the chart's ServiceAccount token and the chart's own settings,
through one session's life — placed, Secret and Pod made, Joined and Ended through the relay,
its Pod and Secret collected — then upgrade and uninstall.

The operator runs as a local process, not as the chart's Pod: the node agent of this layer only
moves Pods through their phases (running their containers is `[realnodes]`). So the chart's
operator Pods are Running and Ready on paper, while the process that acts is this one, with the
chart's ServiceAccount token: every call it makes is authorized by kube-apiserver's RBAC against
the chart's Roles, not by a list in a test."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import relay_support
import yaml

from avatar_devtools import relaytls
from avatar_devtools.ports import free_port as _free_port
from avatar_devtools.realcluster import Cluster, chartidentity
from avatar_sdk import reports, workerenv

# a refusal by RBAC as the operator logs it (a uid may well contain "403")
FORBIDDEN = re.compile(r"\b403 Forbidden\b|\bforbidden\b", re.IGNORECASE)
REPO = Path(__file__).resolve().parents[2]
NS = "avatar-system"
SESSIONS_NS = "chart-sessions"  # its own: the namespace goes with the module
RELEASE = "avatar-operator"


def _readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after `heading` in the README."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(heading) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _run(cluster: Cluster, line: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **cluster.env(),
        "VIDEOSDK_API_KEY": "placeholder-key",
        "VIDEOSDK_SECRET_KEY": "placeholder-secret-" + "s" * 24,
    }
    done = subprocess.run(
        ["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    return done


def _wait(what: str, check: Callable[[], Any], within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _get(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture(scope="module")
def installed(realcluster: Cluster, crd: str) -> Iterator[Cluster]:
    for line in _readme_block("## Install on Kubernetes"):
        _run(realcluster, line)
    yield realcluster
    realcluster.kubectl("delete", "namespace", SESSIONS_NS, "--ignore-not-found", "--wait=false")


def _operator_env(
    cluster: Cluster, http_port: int, relay_port: int, tls: relaytls.RelayTLS
) -> dict[str, str]:
    """The chart's own settings for the operator, read from its Deployment; the relay's
    certificate is one for this machine's loopback, where this operator serves it."""
    deployment = _get(cluster, "-n", NS, "deployment", RELEASE)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif ref := (var.get("valueFrom") or {}).get("secretKeyRef"):
            secret = _get(cluster, "-n", NS, "secret", ref["name"])
            assert secret is not None
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert env["AVATAR_OPERATOR_STATUS_URL"].startswith("https://")  # the chart's default
    env.update(
        AVATAR_OPERATOR_IDENTITY="realcluster-test",
        AVATAR_OPERATOR_HTTP_PORT=str(http_port),
        **tls.operator_env(relay_port),
    )
    return env


def test_a_session_lives_and_is_collected_under_the_charts_rbac(
    installed: Cluster, tmp_path: Path, relay_tls: relaytls.RelayTLS
) -> None:
    cluster = installed
    # what the chart made, as the API server holds it
    for kind in ("serviceaccount", "deployment", "service", "secret"):
        listed = _get(cluster, "-n", NS, kind, "-l", "app.kubernetes.io/instance=" + RELEASE)
        assert listed is not None and listed["items"], kind
    operator_env = _operator_env(cluster, _free_port(), _free_port(), relay_tls)
    status_url = operator_env["AVATAR_OPERATOR_STATUS_URL"]

    def report(name: str, token: str, status: dict[str, Any]) -> int:
        context = relay_tls.client_context()
        return relay_support.report(status_url, SESSIONS_NS, name, token, status, context)

    kubeconfig = chartidentity.service_account_kubeconfig(
        cluster, NS, RELEASE, tmp_path / "chart-sa.kubeconfig", duration="1h"
    )
    env = {**os.environ, **operator_env}
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "avatar_operator", "--kubeconfig", str(kubeconfig)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        cluster.kubectl("create", "namespace", SESSIONS_NS)
        session = yaml.safe_load((REPO / "examples" / "session-minimal.yaml").read_text())
        session["metadata"] = {"name": "chart-rbac", "namespace": SESSIONS_NS}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(session))

        def started() -> dict[str, Any] | None:
            found = _get(cluster, "-n", SESSIONS_NS, "avs", "chart-rbac")
            phase = ((found or {}).get("status") or {}).get("phase")
            return found if phase in ("Starting", "Joined") else None

        body = _wait("the session to start", started, within=90)
        assert body["status"]["placement"]["node"]
        pod = _wait(
            "its Pod on a node",
            lambda: (
                (_get(cluster, "-n", SESSIONS_NS, "pod", "chart-rbac-worker") or {})
                .get("spec", {})
                .get("nodeName")
            ),
        )
        assert pod == body["status"]["placement"]["node"]  # pinned where it was placed
        secret = _get(cluster, "-n", SESSIONS_NS, "secret", "chart-rbac-token")
        assert secret is not None
        token = base64.b64decode(secret["data"][workerenv.STATUS_TOKEN_KEY]).decode()
        ca = base64.b64decode(secret["data"][workerenv.STATUS_CA_KEY]).decode()
        assert ca == relay_tls.ca_file.read_text()  # what the worker will trust
        assert token == reports.status_token(
            operator_env["AVATAR_OPERATOR_STATUS_RELAY_KEY"].encode(),
            SESSIONS_NS,
            "chart-rbac",
            body["metadata"]["uid"],
        )
        _wait("the relay to answer", lambda: report("chart-rbac", token, {"fps": 30.0}) == 200)
        assert report("chart-rbac", token, {"phase": "Joined"}) == 200
        _wait(
            "Joined",
            lambda: (
                (
                    (_get(cluster, "-n", SESSIONS_NS, "avs", "chart-rbac") or {}).get("status")
                    or {}
                ).get("phase")
                == "Joined"
            ),
        )
        assert report("chart-rbac", token, {"phase": "Ended", "endReason": "RoomEnded"}) == 200
        _wait(
            "the Pod collected",
            lambda: _get(cluster, "-n", SESSIONS_NS, "pod", "chart-rbac-worker") is None,
        )
        _wait(
            "the Secret collected",
            lambda: _get(cluster, "-n", SESSIONS_NS, "secret", "chart-rbac-token") is None,
        )
        ended = _get(cluster, "-n", SESSIONS_NS, "avs", "chart-rbac")
        assert ended is not None and ended["status"]["endReason"] == "RoomEnded"
        denied = [
            line
            for line in (tmp_path / "operator.log").read_text().splitlines()
            if FORBIDDEN.search(line)
        ]
        assert not denied, denied
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        log.close()


@pytest.mark.parametrize(("exit_code", "passes"), [(1, False), (0, True)])
def test_helm_test_runs_the_charts_test_pod(
    installed: Cluster, exit_code: int, passes: bool
) -> None:
    """`helm test` as the README says it, against kube-apiserver: helm creates the chart's test
    hook Pod, the API server admits it (its hardened security context, the hook annotations)
    and the scheduler binds it, and helm follows it to its end and cleans it up by the hook's
    delete policy. Here the node agent plays the container's exit (`complete-pod`): the test
    script's own checks run when Pods run for real (`[realnodes]`). Both outcomes: a failing
    test Pod fails `helm test` naming it, a passing one passes."""
    pod_name = f"{RELEASE}-test"
    command = [str(installed.helm_path), "test", RELEASE, "--namespace", NS, "--timeout", "90s"]
    running = subprocess.Popen(
        command, env=installed.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        pod = _wait(
            "the test Pod to run",
            lambda: (
                found
                if (found := _get(installed, "-n", NS, "pod", pod_name))
                and (found.get("status") or {}).get("phase") == "Running"
                else None
            ),
            within=60,
        )
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["automountServiceAccountToken"] is False
        installed.control("complete-pod", namespace=NS, name=pod_name, exitCode=exit_code)
        output, _ = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert (running.returncode == 0) is passes, output
    assert pod_name in output
    phase = "Succeeded" if passes else "Failed"
    assert f"Phase:          {phase}" in output, output
    if passes:  # hook-delete-policy: hook-succeeded
        _wait("the test Pod deleted", lambda: _get(installed, "-n", NS, "pod", pod_name) is None)
    else:  # kept for `kubectl logs`; the next run's before-hook-creation deletes it
        assert _get(installed, "-n", NS, "pod", pod_name) is not None


def test_upgrade_and_uninstall_as_the_readme_says(installed: Cluster) -> None:
    cluster = installed
    tls = _get(cluster, "-n", NS, "secret", f"{RELEASE}-relay-tls")
    assert tls is not None and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    for line in _readme_block("Upgrade, with your overrides"):
        _run(cluster, line.replace("my-values.yaml", "charts/avatar-operator/ci/kind-values.yaml"))
    revision = json.loads(_run(cluster, f"helm status {RELEASE} --namespace {NS} -o json").stdout)[
        "version"
    ]
    assert revision == 2
    # the relay's CA and certificate survive the upgrade: running workers keep trusting it
    kept = _get(cluster, "-n", NS, "secret", f"{RELEASE}-relay-tls")
    assert kept is not None and kept["data"] == tls["data"]
    uninstall = _readme_block("Uninstall (the CRD")
    _run(cluster, uninstall[0])  # the CRD stays: the other tests of this layer use it
    assert _get(cluster, "-n", NS, "deployment", RELEASE) is None
