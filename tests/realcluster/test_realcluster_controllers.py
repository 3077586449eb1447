"""What only the real kube-controller-manager and kube-apiserver do: the garbage collector, the
namespace controller, ServiceAccount tokens (authentication) with RBAC, and EndpointSlices for
the Pods the node agent runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from avatar_devtools.realcluster import Cluster


def _eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _gone(cluster: Cluster, *args: str) -> Callable[[], bool]:
    return lambda: "NotFound" in cluster.kubectl("get", *args, check=False).stderr


def test_the_garbage_collector_deletes_dependents(realcluster: Cluster) -> None:
    realcluster.kubectl("create", "configmap", "gc-owner")
    uid = realcluster.kubectl("get", "cm", "gc-owner", "-o=jsonpath={.metadata.uid}").stdout
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "gc-child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-owner", "uid": uid}
            ],
        },
    }
    realcluster.kubectl("create", "-f", "-", input=json.dumps(child))
    realcluster.kubectl("delete", "cm", "gc-owner")
    _eventually(_gone(realcluster, "cm", "gc-child"), what="the dependent collected")


def test_a_deleted_namespace_is_emptied_and_removed(realcluster: Cluster) -> None:
    realcluster.kubectl("create", "namespace", "doomed")
    realcluster.kubectl("create", "configmap", "inside", "-n", "doomed")
    realcluster.kubectl("delete", "namespace", "doomed", "--wait=false")
    _eventually(_gone(realcluster, "namespace", "doomed"), what="the namespace finalized")


def test_a_service_account_token_authenticates_and_rbac_decides(
    realcluster: Cluster, tmp_path: Path
) -> None:
    realcluster.kubectl("create", "serviceaccount", "reader")
    token = realcluster.kubectl("create", "token", "reader", "--duration=10m").stdout.strip()
    config = yaml.safe_load(realcluster.kubeconfig.read_text())
    config["users"] = [{"name": "reader", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "reader"
    path = tmp_path / "reader.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    as_reader = ("--kubeconfig", str(path))
    whoami = realcluster.kubectl(*as_reader, "auth", "whoami", "-o=jsonpath={.status.userInfo}")
    assert json.loads(whoami.stdout)["username"] == "system:serviceaccount:default:reader"
    denied = realcluster.kubectl(*as_reader, "get", "configmaps", check=False)
    assert "cannot list resource" in denied.stderr, denied.stderr
    realcluster.kubectl(
        "create",
        "rolebinding",
        "reader-view",
        "--clusterrole=view",
        "--serviceaccount=default:reader",
    )
    _eventually(
        lambda: realcluster.kubectl(*as_reader, "get", "configmaps", check=False).returncode == 0,
        what="RBAC grants the bound role",
    )


def test_a_service_gets_the_running_pods_address(realcluster: Cluster) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "cpu"},
            "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}],
        },
    }
    realcluster.kubectl("create", "-f", "-", input=json.dumps(pod))
    realcluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
    realcluster.kubectl("wait", "pod/web", "--for=condition=Ready", "--timeout=60s")
    pod_ip = realcluster.kubectl("get", "pod", "web", "-o=jsonpath={.status.podIP}").stdout

    def sliced() -> bool:
        slices = json.loads(
            realcluster.kubectl(
                "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o=json"
            ).stdout
        )
        addresses = [
            address
            for item in slices["items"]
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint["addresses"]
        ]
        return addresses == [pod_ip]

    _eventually(sliced, what=f"the EndpointSlice of service web lists {pod_ip}")
    cluster_ip = realcluster.kubectl("get", "svc", "web", "-o=jsonpath={.spec.clusterIP}").stdout
    assert cluster_ip.startswith("198.18.")
    realcluster.kubectl("delete", "service", "web")
    realcluster.kubectl("delete", "pod", "web", "--timeout=30s")
