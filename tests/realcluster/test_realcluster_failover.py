"""Two operator processes, one Lease, on the real API server: the leader killed with SIGKILL
(no release of its Lease, no goodbye), the standby takes over within the Lease's duration, the
session it inherits keeps its one Pod, and a new session gets exactly one.

Both processes hold only a token of the chart's ServiceAccount, so the Lease create/get/update
they race on is decided by the chart's Role, by kube-apiserver."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import relay_support

from avatar_devtools import relaytls
from avatar_devtools.ports import free_port as _free_port
from avatar_devtools.realcluster import Cluster
from avatar_devtools.realcluster.fixtures import ChartOperator
from avatar_devtools.realcluster.rest import RestClient
from avatar_sdk import api, workerenv

# a refusal by RBAC as the operator logs it (a uid may well contain "403")
FORBIDDEN = re.compile(r"\b403 Forbidden\b|\bforbidden\b", re.IGNORECASE)
RELAY_KEY = "f" * 32
LEASE_SECONDS = 6


def _wait(what: str, check: Callable[[], Any], within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


class Replica:
    """`python -m avatar_operator` as one replica of the chart's Deployment would run it."""

    def __init__(
        self, identity: str, operator: ChartOperator, directory: Path, tls: relaytls.RelayTLS
    ) -> None:
        self.identity = identity
        self.port = _free_port()
        self.tls = tls
        relay = tls.operator_env(_free_port())
        self.status_url = relay["AVATAR_OPERATOR_STATUS_URL"]
        env = {
            **os.environ,
            "AVATAR_OPERATOR_OPERATOR_NAMESPACE": operator.namespace,
            "AVATAR_OPERATOR_IDENTITY": identity,
            "AVATAR_OPERATOR_HTTP_PORT": str(self.port),
            **relay,
            "AVATAR_OPERATOR_STATUS_RELAY_KEY": RELAY_KEY,
            "AVATAR_OPERATOR_LEADER_ELECTION": "true",
            "AVATAR_OPERATOR_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
            "AVATAR_OPERATOR_LEASE_RENEW_SECONDS": "1",
        }
        self.log_path = directory / f"{identity}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avatar_operator", "--kubeconfig", str(operator.kubeconfig)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def active(self) -> bool:
        return _get(f"http://127.0.0.1:{self.port}/readyz") == 200

    def alive(self) -> bool:
        return _get(f"http://127.0.0.1:{self.port}/healthz") == 200

    def report(self, namespace: str, name: str, token: str, status: dict[str, Any]) -> int:
        context = self.tls.client_context()
        return relay_support.report(self.status_url, namespace, name, token, status, context)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def replicas(
    realcluster: Cluster, chart_operator: ChartOperator, tmp_path: Path
) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    admin = realcluster.rest()
    ns = chart_operator.sessions_namespace
    for name in ("kill-1", "kill-2"):  # deleted while a leader still runs: it collects them
        admin.delete(api.PLURAL, name, ns)
    ours = ("kill-1", "kill-2", "kill-1-worker", "kill-2-worker")

    def left() -> list[str]:
        return [
            f"{p}/{o['metadata']['name']}"
            for p in (api.PLURAL, "pods")
            for o in admin.list(p, ns)
            if o["metadata"]["name"] in ours
        ]

    gone = lambda: not left()  # noqa: E731
    deadline = time.monotonic() + 30
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.2)
    for replica in made:
        replica.stop()
    for name in ("kill-1", "kill-2"):  # no leader left to remove a finalizer
        if admin.get(api.PLURAL, name, ns) is not None:
            admin.patch(api.PLURAL, name, {"metadata": {"finalizers": None}}, ns)
    admin.delete("leases", "avatar-operator", chart_operator.namespace)
    try:
        _wait("the sessions and their Pods gone", gone)
    except AssertionError:
        raise AssertionError(f"left behind: {left()}") from None


def _session(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"roomId": f"room-{name}", "avatar": {"renderer": "waveform"}},
    }


def _holder(admin: RestClient, namespace: str) -> str | None:
    lease = admin.get("leases", "avatar-operator", namespace)
    return None if lease is None else lease["spec"].get("holderIdentity")


def test_the_standby_takes_over_from_a_sigkilled_leader_without_a_second_pod(
    realcluster: Cluster,
    chart_operator: ChartOperator,
    replicas: list[Replica],
    tmp_path: Path,
    relay_tls: relaytls.RelayTLS,
) -> None:
    admin = realcluster.rest()
    ns = chart_operator.sessions_namespace
    first = Replica("replica-a", chart_operator, tmp_path, relay_tls)
    replicas.append(first)
    _wait("replica-a to lead", first.active)
    second = Replica("replica-b", chart_operator, tmp_path, relay_tls)
    replicas.append(second)
    _wait("replica-b to serve", second.alive)
    assert not second.active()
    assert _holder(admin, chart_operator.namespace) == "replica-a"

    admin.create(_session("kill-1", ns))
    admin.wait_for(
        api.PLURAL, "kill-1", ns, lambda o: o.get("status", {}).get("phase") == "Starting"
    )
    pod = admin.wait_for("pods", "kill-1-worker", ns)
    secret = admin.get("secrets", "kill-1-token", ns)
    assert secret is not None
    token = base64.b64decode(secret["data"][workerenv.STATUS_TOKEN_KEY]).decode()

    first.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    first.process.wait(timeout=10)
    _wait("replica-b to take the Lease", second.active, within=3 * LEASE_SECONDS)
    failover = time.monotonic() - killed_at
    assert failover <= 2 * LEASE_SECONDS, failover
    assert _holder(admin, chart_operator.namespace) == "replica-b"

    # the new leader serves the relay for the session it inherited, and never made a 2nd Pod
    assert second.report(ns, "kill-1", token, {"phase": "Joined"}) == 200
    admin.wait_for(api.PLURAL, "kill-1", ns, lambda o: o["status"].get("phase") == "Joined")
    pods = [
        p["metadata"]["name"]
        for p in admin.list("pods", ns)
        if p["metadata"]["name"].startswith("kill-")
    ]
    assert pods == ["kill-1-worker"], pods
    assert admin.get("pods", "kill-1-worker", ns)["metadata"]["uid"] == pod["metadata"]["uid"]  # type: ignore[index]

    # and admits new sessions: one Pod each
    admin.create(_session("kill-2", ns))
    admin.wait_for(
        api.PLURAL, "kill-2", ns, lambda o: o.get("status", {}).get("phase") == "Starting"
    )
    admin.wait_for("pods", "kill-2-worker", ns)
    time.sleep(1.0)  # a duplicate would show by now
    pods = sorted(
        p["metadata"]["name"]
        for p in admin.list("pods", ns)
        if p["metadata"]["name"].startswith("kill-")
    )
    assert pods == ["kill-1-worker", "kill-2-worker"], pods
    denied = [
        line
        for replica in replicas
        for line in replica.log_path.read_text().splitlines()
        if FORBIDDEN.search(line)
    ]
    assert not denied, denied
