"""Pods run as processes on the real control plane: a node agent of the node agent's process mode
(`kubelet.mode: process`), started here beside the session cluster's own (which only plays Pod
phases) with one node of its own, `processes-0`, tainted so that only these tests' Pods, which
tolerate the taint and select the node, land there.

Where this machine allows network namespaces (`podnet.available()`), each Pod has its own
(`nodenetwork`: an IP from the node's Pod CIDR, the Service proxy, hosts and resolv.conf
files), and in-cluster config reaches the API server through the `kubernetes` Service's
ClusterIP; elsewhere the Pods run in the host's network namespace with the node's address as
their podIP, `KUBERNETES_SERVICE_HOST/PORT` name the API server's loopback address, and the
agent says so in its log and at the head of each container's log. The logs are read from the
Pod's folder and through the API server (`kubectl logs`, proxied to the node's log endpoint on
127.0.1.x:10250).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import os
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_devtools.localcluster import fleet
from avatar_devtools.ports import free_port as _free_port
from avatar_devtools.realcluster import nodeagent, nodenetwork, podnet, podrunner, serviceproxy
from avatar_devtools.realcluster.cluster import SERVICE_IP, Cluster
from avatar_devtools.realcluster.rest import RestClient, RestError

NODE = "processes-0"
# mountPaths under /mnt: a mountPath is made on the host as an empty directory when missing, and
# one over the directories this Python environment lives in would hide it (as over a container
# image's /usr); the module removes the empty ones it made when its Pods are gone
MOUNT_ROOT = "/run/avatar-pod-test"
MOUNT_POINTS = (
    "/run/avatar-pod-test/app-secret",
    "/run/avatar-pod-test/scratch",
    "/run/avatar-pod-test/work",
    "/run/avatar-pod-test/state",
)
NAMESPACE = "processes"
TAINT = "avatar-operator.dev/processes"


class ProcessNode:
    """The process-mode node agent, on an event loop of its own thread."""

    def __init__(
        self, cluster: Cluster, workdir: Path, networks: nodenetwork.NodeNetworks | None
    ) -> None:
        the_fleet = fleet.parse(
            {
                "kubelet": {"mode": "process"},
                "nodes": [
                    {
                        "name": NODE,
                        "gpus": 0,
                        "cpu": "8",
                        "memory": "16Gi",
                        "labels": {TAINT: "true"},
                        "taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}],
                    }
                ],
            }
        )
        assert cluster.fleet is not None
        first = len(fleet.load(cluster.fleet).nodes)  # past the cluster's own nodes' addresses
        self.address = nodeagent.loopback_address(first)
        pki = cluster.pki

        config = nodeagent.AgentConfig(
            lease_renew_s=2.0, workdir=workdir, keep_pod_dirs=True, start_seconds=0.0
        )
        self.agent = nodeagent.NodeAgent(
            cluster.server,
            pki.path("ca.crt"),
            lambda node: pki.node_credentials(node),
            the_fleet,
            config=config,
            first_address=first,
            serving=pki.node_serving,
            network_for=networks.node if networks is not None else None,
        )
        self.runner = self.agent.runners[0]
        self.loop = asyncio.new_event_loop()
        self.networks = networks
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.pids: set[int] = set()  # every container process seen, to check none is left

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        if self.networks is not None:
            self.call(self.networks.start())
        self.call(self.agent.start())

    def stop(self) -> None:
        for process_pod in list(self.runner.process_pods.values()):
            self.pids.update(process_pod.pids())
        try:
            self.call(self.agent.aclose())
            if self.networks is not None:
                self.call(self.networks.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def pod(self, name: str) -> podrunner.ProcessPod:
        for process_pod in list(self.runner.process_pods.values()):
            if process_pod.pod["metadata"]["name"] == name:
                return process_pod
        raise LookupError(name)

    def pids_of(self, name: str) -> list[int]:
        pids = self.pod(name).pids()
        self.pids.update(pids)
        return pids


@pytest.fixture(scope="module")
def node(realcluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessNode]:
    admin = realcluster.rest()
    with_ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    try:
        admin.create(with_ns)
    except RestError as error:
        if error.status != 409:
            raise
    workdir = tmp_path_factory.mktemp("processes")
    existing = {path for path in MOUNT_POINTS if os.path.exists(path)}
    networks = None
    if podnet.available().ok:
        networks = nodenetwork.NodeNetworks(
            realcluster.server,
            realcluster.pki.path("ca.crt"),
            serviceproxy.kube_proxy_credentials(realcluster),
            workdir / "network",
        )
    process_node = ProcessNode(realcluster, workdir, networks)
    process_node.start()
    admin.wait_for("serviceaccounts", "default", NAMESPACE, within=60)
    try:
        yield process_node
    finally:
        process_node.stop()
        admin.delete("namespaces", NAMESPACE)
        admin.delete("nodes", NODE)
        alive = [pid for pid in process_node.pids if Path(f"/proc/{pid}").exists()]
        assert not alive, f"container processes left behind: {alive}"
        mounts = Path("/proc/self/mounts").read_text()
        assert str(workdir) not in mounts, "a Pod's tmpfs is still mounted"
        made = [path for path in MOUNT_POINTS if path not in existing]
        for path in [*made, MOUNT_ROOT]:
            with contextlib.suppress(OSError):  # not empty, or not made: left alone
                os.rmdir(path)


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python",
        "command": ["python", "-c", textwrap.dedent(script)],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeSelector": {TAINT: "true"},
            "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def _phase(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def _log(node: ProcessNode, name: str, restart: int = 0) -> str:
    path = podrunner.log_file(node.pod(name).directory, "main", restart)
    return path.read_text()


def _eventually(check: Callable[[], bool], within: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.1)


def _says_up(node: ProcessNode, name: str) -> bool:
    return "up" in _log(node, name)


def _gone(admin: RestClient, name: str) -> bool:
    return admin.get("pods", name, NAMESPACE) is None


READER = """
    import json, os, ssl, urllib.request
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(f"{sa}/token").read()
    namespace = open(f"{sa}/namespace").read()
    context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/configmaps",
        headers={"Authorization": f"Bearer {token}"},
    )
    listing = json.load(urllib.request.urlopen(request, context=context))
    try:
        open("/run/avatar-pod-test/app-secret/extra", "w")
        read_only = False
    except OSError:
        read_only = True
    open("/run/avatar-pod-test/scratch/note", "w").write("written")
    mounts = [line.split() for line in open("/proc/self/mounts").read().splitlines()]
    print(json.dumps({
        "env": os.environ["GREETING"],
        "pod": os.environ["POD_NAME"],
        "node": os.environ["NODE_NAME"],
        "file": open("/run/avatar-pod-test/app-secret/greeting").read(),
        "read_only": read_only,
        "scratch_tmpfs": ["/run/avatar-pod-test/scratch", "tmpfs"] in [m[1:3] for m in mounts],
        "namespace": namespace,
        "configmaps": sorted(item["metadata"]["name"] for item in listing["items"]),
        "api": f"{host}:{port}",
    }))
"""


def test_a_container_reads_its_secret_env_and_file_and_lists_with_its_token(
    realcluster: Cluster, node: ProcessNode
) -> None:
    admin = realcluster.rest()
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "app-secret", "namespace": NAMESPACE},
            "stringData": {"greeting": "hello from the secret"},
        }
    )
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "unreferenced", "namespace": NAMESPACE},
            "stringData": {"x": "y"},
        }
    )
    realcluster.kubectl(
        "create", "role", "cm-reader", "-n", NAMESPACE, "--verb=list", "--resource=configmaps"
    )
    realcluster.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        NAMESPACE,
        "--role=cm-reader",
        f"--serviceaccount={NAMESPACE}:default",
    )
    pod = _pod(
        "reader",
        READER,
        container={
            "env": [
                {
                    "name": "GREETING",
                    "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "greeting"}},
                },
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "volumeMounts": [
                {"name": "secret", "mountPath": "/run/avatar-pod-test/app-secret"},
                {"name": "scratch", "mountPath": "/run/avatar-pod-test/scratch"},
            ],
        },
        volumes=[
            {"name": "secret", "secret": {"secretName": "app-secret"}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        ],
    )
    created = time.monotonic()
    admin.create(pod)
    done = admin.wait_for("pods", "reader", NAMESPACE, _phase("Succeeded", "Failed"), within=60)
    finished = time.monotonic() - created
    log = _log(node, "reader")
    assert done["status"]["phase"] == "Succeeded", log
    terminated = _container(done)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    report = json.loads(log.strip().splitlines()[-1])
    api = report.pop("api")
    assert report == {
        "env": "hello from the secret",
        "pod": "reader",
        "node": NODE,
        "file": "hello from the secret",
        "read_only": True,
        "scratch_tmpfs": True,
        "namespace": NAMESPACE,
        "configmaps": ["kube-root-ca.crt"],
    }
    pod_ip = done["status"]["podIP"]
    if node.networks is not None:  # its own network namespace, an address of the node's CIDR
        assert ipaddress.ip_address(pod_ip) in node.call(node.runner.pod_cidr())
        assert api == f"{SERVICE_IP}:443"  # through the Service proxy
    else:
        assert log.startswith("nodeagent: host network namespace"), log  # said, never silently
        assert pod_ip == node.address
    # the same log through the API server, proxied to the node's log endpoint
    proxied = realcluster.kubectl("logs", "-n", NAMESPACE, "reader").stdout
    assert proxied == log
    # the node's own credentials read the Secrets of its Pods, and no other
    as_node = RestClient(
        realcluster.server,
        realcluster.pki.path("ca.crt"),
        cert=realcluster.pki.node_credentials(NODE),
    )
    assert as_node.get("secrets", "app-secret", NAMESPACE) is not None
    with pytest.raises(RestError) as refused:
        as_node.get("secrets", "unreferenced", NAMESPACE)
    assert refused.value.status == 403
    assert finished < 30


def test_the_exit_code_decides_failed_and_a_missing_secret_waits(
    realcluster: Cluster, node: ProcessNode
) -> None:
    admin = realcluster.rest()
    admin.create(_pod("exits-3", "import sys; print('bye'); sys.exit(3)", hostNetwork=True))
    failed = admin.wait_for("pods", "exits-3", NAMESPACE, _phase("Failed"), within=60)
    terminated = _container(failed)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert failed["status"]["podIP"] == node.address  # hostNetwork: the node's own address

    missing = _pod(
        "no-secret",
        "print('never')",
        container={
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x"}}}]
        },
    )
    admin.create(missing)

    def waiting(pod: dict[str, Any]) -> bool:
        state = _container(pod).get("state") or {}
        return bool(state.get("waiting", {}).get("reason") == "CreateContainerConfigError")

    pending = admin.wait_for("pods", "no-secret", NAMESPACE, waiting, within=30)
    assert pending["status"]["phase"] == "Pending"
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "absent", "namespace": NAMESPACE},
            "stringData": {"x": "here now"},
        }
    )
    admin.wait_for("pods", "no-secret", NAMESPACE, _phase("Succeeded"), within=30)
    for name in ("exits-3", "no-secret"):
        admin.delete("pods", name, NAMESPACE)


def test_on_failure_restarts_until_the_container_succeeds(
    realcluster: Cluster, node: ProcessNode
) -> None:
    admin = realcluster.rest()
    work = f"{MOUNT_ROOT}/work"  # the emptyDir, at its mountPath inside the Pod
    script = f"""
        import os, sys
        runs = len(os.listdir({work!r}))
        open(os.path.join({work!r}, "run-%d" % runs), "w").close()
        print("run", runs)
        sys.exit(0 if runs >= 2 else 7)
    """
    pod = _pod(
        "flaky",
        script,
        restartPolicy="OnFailure",
        container={"volumeMounts": [{"name": "work", "mountPath": work}]},
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    admin.create(pod)
    done = admin.wait_for("pods", "flaky", NAMESPACE, _phase("Succeeded", "Failed"), within=60)
    status = _container(done)
    assert done["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 7
    lasts = [_log(node, "flaky", n).strip().splitlines()[-1] for n in range(3)]
    assert lasts == ["run 0", "run 1", "run 2"]
    previous = realcluster.kubectl("logs", "-n", NAMESPACE, "flaky", "--previous").stdout
    assert previous.strip().splitlines()[-1] == "run 1"
    admin.delete("pods", "flaky", NAMESPACE)


def test_a_readiness_probe_drives_ready_and_a_liveness_probe_restarts(
    realcluster: Cluster, node: ProcessNode
) -> None:
    admin = realcluster.rest()
    port = _free_port()
    script = f"""
        import http.server, os, time
        started = time.monotonic()
        open("/run/avatar-pod-test/state/alive", "w").close()
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ready = time.monotonic() - started > 1.5
                self.send_response(200 if ready else 503)
                self.end_headers()
                if ready and not os.path.exists("/run/avatar-pod-test/state/ready-seen"):
                    open("/run/avatar-pod-test/state/ready-seen", "w").close()
                elif os.path.exists("/run/avatar-pod-test/state/ready-seen"):
                    # ready once: now fail the liveness probe
                    os.remove("/run/avatar-pod-test/state/alive")
            def log_message(self, *args):
                pass
        http.server.HTTPServer(("0.0.0.0", {port}), Handler).serve_forever()
    """
    probe = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1}
    pod = _pod(
        "probed",
        script,
        restartPolicy="Always",
        terminationGracePeriodSeconds=1,
        container={
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, **probe},
            "livenessProbe": {
                "exec": {"command": ["test", "-f", "/run/avatar-pod-test/state/alive"]},
                "initialDelaySeconds": 1,
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
            "volumeMounts": [{"name": "state", "mountPath": "/run/avatar-pod-test/state"}],
        },
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    admin.create(pod)

    def ready(pod: dict[str, Any]) -> bool:
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    running = admin.wait_for("pods", "probed", NAMESPACE, _phase("Running"), within=60)
    assert not ready(running)  # the probe says 503 for the first 1.5 s
    admin.wait_for("pods", "probed", NAMESPACE, ready, within=30)
    restarted = admin.wait_for(
        "pods", "probed", NAMESPACE, lambda p: _container(p).get("restartCount", 0) >= 1, within=30
    )
    assert restarted["status"]["phase"] == "Running"
    node.pids_of("probed")
    admin.delete("pods", "probed", NAMESPACE)
    _eventually(lambda: admin.get("pods", "probed", NAMESPACE) is None, 30, "probed deleted")


def test_graceful_deletion_terms_then_kills_after_the_grace_period(
    realcluster: Cluster, node: ProcessNode
) -> None:
    admin = realcluster.rest()
    stubborn = """
        import signal, sys, time
        def on_term(signum, frame):
            print("got SIGTERM, ignoring it", flush=True)
        signal.signal(signal.SIGTERM, on_term)
        print("up", flush=True)
        while True:
            time.sleep(0.1)
    """
    polite = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("up", flush=True)
        while True:
            time.sleep(0.1)
    """
    admin.create(_pod("stubborn", stubborn, terminationGracePeriodSeconds=2))
    admin.create(_pod("polite", polite, terminationGracePeriodSeconds=30))
    for name in ("stubborn", "polite"):
        admin.wait_for("pods", name, NAMESPACE, _phase("Running"), within=60)
        _eventually(functools.partial(_says_up, node, name), 10, f"{name} up")
    pids = {name: node.pids_of(name) for name in ("stubborn", "polite")}
    follow = subprocess.Popen(
        [str(realcluster.kubectl_path), "logs", "-f", "-n", NAMESPACE, "polite"],
        env=realcluster.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    directory = node.pod("stubborn").directory
    timings = {}
    for name in ("stubborn", "polite"):
        began = time.monotonic()
        admin.delete("pods", name, NAMESPACE)
        _eventually(functools.partial(_gone, admin, name), 30, f"{name} deleted")
        timings[name] = time.monotonic() - began
        assert not [pid for pid in pids[name] if Path(f"/proc/{pid}").exists()]
    assert 2.0 <= timings["stubborn"] < 6.0, timings
    assert timings["polite"] < 2.0, timings
    followed, _ = follow.communicate(timeout=30)  # `kubectl logs -f` ends with the container
    assert "up" in followed
    events = admin.list("events", NAMESPACE, fieldSelector="involvedObject.name=stubborn")
    seen = {(e["reason"], e["source"].get("component")) for e in events}
    assert {("Started", "kubelet"), ("Killing", "kubelet")} <= seen, seen
    log = (podrunner.log_file(directory, "main", 0)).read_text()
    assert "got SIGTERM, ignoring it" in log
    assert os.path.isdir(directory)  # keep_pod_dirs: the folder outlives the Pod here
