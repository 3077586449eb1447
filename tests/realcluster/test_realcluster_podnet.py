"""The Pod network on the session's real control plane: Pods in their own network namespaces on
two nodes' bridges (addresses from the podCIDRs the controller-manager gave the nodes), the
userspace Service proxy following Services and EndpointSlices by watch, and names from a
per-Pod hosts file bind-mounted at /etc/hosts.

The "Pods" are `python -m http.server` processes started with `ip netns exec`: no Pod objects,
so the Service is selector-less with a hand-made EndpointSlice (what the endpoint-slice
controller would write for a selector). Without network namespaces here (not root, or `ip netns
add` refused), every test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest

from avatar_devtools.realcluster import nodenetwork, podnames, podnet, serviceproxy
from avatar_devtools.realcluster.cluster import HOST_ADDRESS, SERVICE_IP, Cluster
from avatar_devtools.realcluster.rest import RestClient

_available = podnet.available()
pytestmark = pytest.mark.skipif(
    not _available.ok, reason=f"pod network namespaces unavailable: {_available.reason}"
)

T = TypeVar("T")
NAMESPACE = "podnet"
NODES = ("h100-0", "h100-1")
PORT = 8080  # both Pods listen on it
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"

# Runs inside a Pod's namespace: each request of argv[1] (JSON), one result each, as JSON.
CLIENT = r"""
import errno, json, socket, ssl, sys, time, urllib.request
results = []
for url, cafile in json.loads(sys.argv[1]):
    started = time.monotonic()
    try:
        if url.startswith("tcp://"):
            host, port = url[6:].rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=5).close()
            results.append({"ok": True, "body": ""})
            continue
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            results.append({"ok": True, "body": response.read().decode()})
    except Exception as error:
        reason = getattr(error, "reason", error)
        code = getattr(reason, "errno", None)
        results.append({"ok": False, "error": str(error),
                        "errno": errno.errorcode.get(code, code) if code else None,
                        "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


class LoopThread:
    """An asyncio loop on a thread of its own, for the proxy (the tests are synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class FakePod(NamedTuple):
    name: str
    interface: podnet.PodInterface
    hosts: Path
    resolv: Path
    process: subprocess.Popen[bytes]


class Net(NamedTuple):
    cluster: Cluster
    admin: RestClient
    network: podnet.PodNetwork
    proxy: serviceproxy.ServiceProxy
    loop: LoopThread
    hosts: podnames.HostsFiles
    pods: dict[str, FakePod]


def _pod_cidr(admin: RestClient, node: str) -> str:
    found = admin.wait_for("nodes", node, predicate=lambda n: bool(n["spec"].get("podCIDR")))
    return str(found["spec"]["podCIDR"])


def _start_pod(net: podnet.PodNetwork, directory: Path, name: str, node: str) -> FakePod:
    interface = net.add_pod(node, f"uid-{name}")
    root = directory / name
    (root / "www").mkdir(parents=True)
    (root / "www" / "who").write_text(name)
    process = subprocess.Popen(
        [
            *("ip", "netns", "exec", interface.netns, sys.executable, "-m", "http.server"),
            *(str(PORT), "--bind", interface.ip, "--directory", str(root / "www")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resolv = root / "resolv.conf"
    resolv.write_text(podnames.resolv_conf(NAMESPACE))
    return FakePod(name, interface, root / "hosts", resolv, process)


def _wait_listening(net: podnet.PodNetwork, pod: FakePod, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.closing(net.socket()) as sock:
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                sock.connect((pod.interface.ip, PORT))
                return
        assert pod.process.poll() is None, f"pod {pod.name}'s server exited"
        assert time.monotonic() < deadline, f"pod {pod.name} not listening in {within} s"
        time.sleep(0.1)


def fetch(pod: FakePod, *urls: str, cafile: str | None = None) -> list[dict[str, Any]]:
    return fetch_in(pod.interface.netns, pod.hosts, pod.resolv, *urls, cafile=cafile)


def fetch_in(
    netns: str, hosts: Path, resolv: Path, *urls: str, cafile: str | None = None
) -> list[dict[str, Any]]:
    """Each URL from inside `netns`, with `hosts` and `resolv` bind-mounted over /etc/ in a
    mount namespace of its own, as the pod runner will."""
    requests = json.dumps([[url, cafile] for url in urls])
    script = (
        f'mount --bind "{hosts}" /etc/hosts && mount --bind "{resolv}" /etc/resolv.conf'
        ' && exec "$0" -c "$1" "$2"'
    )
    result = subprocess.run(
        [
            *("ip", "netns", "exec", netns, "unshare", "-m", "sh", "-c", script),
            *(sys.executable, CLIENT, requests),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def _bodies(results: list[dict[str, Any]]) -> list[str]:
    assert all(r["ok"] for r in results), results
    return [r["body"] for r in results]


def _wait(predicate: Callable[[], bool], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)


def _leftovers(tag: str) -> list[str]:
    """This network's namespaces, and any link or address of it in the machine's namespace."""
    found = [n for n in podnet.netns_names() if podnet.tag_of(n) == tag]
    links = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    found += [line for line in links.splitlines() if podnet.PREFIX in line or "198.18." in line]
    return found


@pytest.fixture(scope="module")
def net(realcluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    podnet.cleanup_all()  # what a crashed run left
    admin = realcluster.rest()
    network = podnet.PodNetwork().create()
    loop = LoopThread()
    pods: dict[str, FakePod] = {}
    proxy = serviceproxy.for_cluster(realcluster, network)
    hosts = podnames.HostsFiles()
    try:
        for node in NODES:
            network.add_node(node, _pod_cidr(admin, node))
        directory = tmp_path_factory.mktemp("podnet")
        for name, node in (("alpha", NODES[0]), ("beta", NODES[1]), ("gamma", NODES[0])):
            pods[name] = _start_pod(network, directory, name, node)
            hosts.add(
                pods[name].hosts, podnames.PodIdentity(NAMESPACE, name, pods[name].interface.ip)
            )
        loop.run(proxy.start())
        loop.call(lambda: proxy.add_listener(hosts.update))  # called on the loop's thread
        for pod in pods.values():
            _wait_listening(network, pod)
        with contextlib.suppress(Exception):
            admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield Net(realcluster, admin, network, proxy, loop, hosts, pods)
    finally:
        for pod in pods.values():
            pod.process.terminate()
            pod.process.wait(10)
        loop.run(proxy.aclose())
        loop.close()
        tag = network.tag
        network.close()
        admin.delete("namespaces", NAMESPACE)
        assert not _leftovers(tag), _leftovers(tag)


def _service(net: Net, name: str, port: int = 80) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": PORT}]},
    }
    return net.admin.create(body)


def _slice(net: Net, service: str, pods: list[FakePod], ready: bool = True) -> dict[str, Any]:
    return _slice_of(net, service, [p.interface.ip for p in pods], PORT, ready)


def _slice_of(
    net: Net, service: str, addresses: list[str], port: int, ready: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": NAMESPACE,
            "labels": {serviceproxy.SERVICE_NAME_LABEL: service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
    }
    found = net.admin.request("GET", f"{SLICES}/{service}-1", ok=(200, 404))
    if found and found.get("kind") == "EndpointSlice":
        body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
        return dict(net.admin.request("PUT", f"{SLICES}/{service}-1", body))
    return dict(net.admin.request("POST", SLICES, body))


def _serving(net: Net, address: tuple[str, int]) -> bool:
    return address in net.loop.call(net.proxy.listening)


def test_pods_on_one_and_two_nodes_listen_on_the_same_port_and_reach_each_other(net: Net) -> None:
    alpha, beta = net.pods["alpha"], net.pods["beta"]
    assert alpha.interface.node != beta.interface.node
    assert alpha.interface.ip.rsplit(".", 1)[0] != beta.interface.ip.rsplit(".", 1)[0]
    gamma = net.pods["gamma"]  # on alpha's node: that too goes through the host's routing
    urls = [f"http://{p.interface.ip}:{PORT}/who" for p in (beta, gamma)]
    assert _bodies(fetch(alpha, *urls)) == ["beta", "gamma"]
    assert _bodies(fetch(beta, f"http://{alpha.interface.ip}:{PORT}/who")) == ["alpha"]
    routes = subprocess.run(
        ["ip", "-n", alpha.interface.netns, "route"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert routes == [f"198.18.0.0/15 via {alpha.interface.gateway} dev eth0 onlink "]


def test_nothing_outside_the_pod_range_is_reachable(net: Net) -> None:
    apiserver = net.cluster.ports["kube-apiserver"]
    outside, machine_loopback = fetch(
        net.pods["alpha"], "tcp://192.0.2.1:80", f"tcp://127.0.0.1:{apiserver}"
    )
    assert outside["errno"] == "ENETUNREACH" and outside["seconds"] < 1, outside
    assert machine_loopback["errno"] == "ECONNREFUSED", machine_loopback  # the Pod's own lo


def test_service_is_reached_by_cluster_ip_and_by_name_round_robin(net: Net) -> None:
    service = _service(net, "web")
    cluster_ip = service["spec"]["clusterIP"]
    _slice(net, "web", [net.pods["alpha"], net.pods["beta"]])
    _wait(lambda: _serving(net, (cluster_ip, 80)), "the proxy listens on web's ClusterIP")
    _wait(lambda: "web.podnet.svc" in net.pods["alpha"].hosts.read_text(), "hosts has web")
    _wait(
        lambda: len(net.loop.call(lambda: net.proxy.endpoints(NAMESPACE, "web", "http"))) == 2,
        "2 endpoints",
    )
    alpha = net.pods["alpha"]
    by_ip = _bodies(fetch(alpha, *[f"http://{cluster_ip}/who"] * 4))
    assert sorted(by_ip) == ["alpha", "alpha", "beta", "beta"]  # round-robin over both
    names = ["web", "web.podnet", "web.podnet.svc", "web.podnet.svc.cluster.local"]
    assert set(_bodies(fetch(alpha, *[f"http://{n}/who" for n in names]))) <= {"alpha", "beta"}
    hosts = alpha.hosts.read_text()
    assert f"{cluster_ip}\tweb.podnet.svc.cluster.local web.podnet.svc web.podnet web\n" in hosts
    assert f"{alpha.interface.ip}\talpha\n" in hosts


def test_kubernetes_service_reaches_the_api_server(net: Net) -> None:
    ca = str(net.cluster.pki.path("ca.crt"))
    results = fetch(
        net.pods["beta"],
        "https://kubernetes.default.svc/readyz",
        f"https://{SERVICE_IP}:443/readyz",
        cafile=ca,
    )
    assert _bodies(results) == ["ok", "ok"]


def test_a_service_pointed_at_the_host_address_reaches_this_machines_loopback(net: Net) -> None:
    """What `make demo DEMO_ARGS=--real-cluster` does for its room server: a selector-less
    Service whose EndpointSlice names HOST_ADDRESS:port reaches 127.0.0.1:port of the machine;
    the machine's loopback stays unreachable otherwise."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        service = _service(net, "machine", port=port)
        _slice_of(net, "machine", [HOST_ADDRESS], port)
        cluster_ip = service["spec"]["clusterIP"]
        _wait(lambda: _serving(net, (cluster_ip, port)), "machine served")
        by_name, direct = fetch(
            net.pods["gamma"], f"tcp://machine.podnet.svc:{port}", f"tcp://127.0.0.1:{port}"
        )
        assert by_name["ok"], by_name
        assert direct["errno"] == "ECONNREFUSED", direct  # the Pod's own loopback


def test_services_changing_and_disappearing_are_followed(net: Net) -> None:
    alpha, beta = net.pods["alpha"], net.pods["beta"]
    service = _service(net, "moving")
    cluster_ip = service["spec"]["clusterIP"]
    _slice(net, "moving", [alpha, beta])
    _wait(lambda: _serving(net, (cluster_ip, 80)), "moving served on :80")
    inode = os.stat(alpha.hosts).st_ino

    spec = {"ports": [{"name": "http", "port": 81, "targetPort": PORT}]}
    net.admin.patch("services", "moving", {"spec": spec}, NAMESPACE)
    _wait(lambda: _serving(net, (cluster_ip, 81)), "moving served on :81")
    assert not _serving(net, (cluster_ip, 80))
    moved, old = fetch(alpha, f"http://{cluster_ip}:81/who", f"tcp://{cluster_ip}:80")
    assert moved["ok"] and old["errno"] == "ECONNREFUSED", (moved, old)

    _slice(net, "moving", [beta])  # alpha's endpoint goes
    _wait(
        lambda: len(net.loop.call(lambda: net.proxy.endpoints(NAMESPACE, "moving", "http"))) == 1,
        "1 endpoint",
    )
    assert _bodies(fetch(alpha, *[f"http://{cluster_ip}:81/who"] * 3)) == ["beta"] * 3
    _slice(net, "moving", [beta], ready=False)  # no ready endpoint: the connection is reset
    _wait(
        lambda: not net.loop.call(lambda: net.proxy.endpoints(NAMESPACE, "moving", "http")),
        "0 endpoints",
    )
    (none_ready,) = fetch(alpha, f"http://{cluster_ip}:81/who")
    assert not none_ready["ok"], none_ready

    net.admin.delete("services", "moving", NAMESPACE)
    _wait(lambda: not _serving(net, (cluster_ip, 81)), "moving no longer served")
    _wait(lambda: "moving." not in alpha.hosts.read_text(), "moving gone from hosts")
    assert os.stat(alpha.hosts).st_ino == inode  # rewritten in place: the bind mount holds it
    (gone,) = fetch(alpha, f"tcp://{cluster_ip}:81")
    assert gone["errno"] == "ECONNREFUSED" and gone["seconds"] < 1, gone  # reset, at once


def test_teardown_and_cleanup_leave_nothing(tmp_path: Path) -> None:
    network = podnet.PodNetwork().create()
    network.add_node("node-with-a-long-name-for-a-bridge", "198.18.100.0/24")
    pods = [network.add_pod("node-with-a-long-name-for-a-bridge", f"u{i}") for i in range(3)]
    network.add_address("198.18.140.1")
    assert {p.ip for p in pods} == {"198.18.100.2", "198.18.100.3", "198.18.100.4"}
    network.close()
    assert not _leftovers(network.tag), _leftovers(network.tag)

    # a crashed run: its owner is gone, its namespaces stay until cleanup_all()
    crashed = podnet.PodNetwork().create()
    crashed.add_node("h", "198.18.101.0/24")
    crashed.add_pod("h", "u")
    assert crashed._host_thread is not None
    crashed._host_thread.shutdown()
    crashed.state_file.write_text(json.dumps({"pid": 0, "start": None}))
    assert crashed.host_netns in podnet.netns_names()
    removed = podnet.cleanup_all()
    assert crashed.host_netns in removed and podnet.pod_netns_name(crashed.tag, "u") in removed
    assert not _leftovers(crashed.tag), _leftovers(crashed.tag)


def test_node_networks_attach_and_detach_a_pod_as_the_pod_runner_will(
    realcluster: Cluster, tmp_path: Path
) -> None:
    loop = LoopThread()
    networks = nodenetwork.NodeNetworks(
        realcluster.server,
        realcluster.pki.path("ca.crt"),
        serviceproxy.kube_proxy_credentials(realcluster),
        tmp_path / "net",
    )
    pod = {"metadata": {"uid": "uid-w0", "name": "worker-0", "namespace": "default"}, "spec": {}}
    try:
        loop.run(networks.start())
        pods = loop.run(networks.node(NODES[0], _pod_cidr(realcluster.rest(), NODES[0])))
        address = loop.run(pods.attach(pod))
        assert (address.api_host, address.api_port) == (SERVICE_IP, 443)
        assert address.netns in podnet.netns_names() and address.hosts_file is not None
        assert address.resolv_file is not None
        hosts = address.hosts_file.read_text()
        assert f"{address.pod_ip}\tworker-0\n" in hosts
        assert f"{SERVICE_IP}\tkubernetes.default.svc.cluster.local" in hosts
        (ready,) = fetch_in(
            address.netns,
            address.hosts_file,
            address.resolv_file,
            "https://kubernetes/readyz",  # the short name: the Pod is in `default`
            cafile=str(realcluster.pki.path("ca.crt")),
        )
        assert ready == {"ok": True, "body": "ok"}, ready
        loop.run(pods.detach(pod))
        assert address.netns not in podnet.netns_names()
        assert not address.hosts_file.exists()
    finally:
        loop.run(networks.aclose())
        loop.close()
    assert not _leftovers(networks.network.tag), _leftovers(networks.network.tag)


def test_proxy_resumes_its_watches_when_the_server_ends_them(
    realcluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serviceproxy, "WATCH_TIMEOUT_S", 1)  # the server ends each in 1 s
    admin = realcluster.rest()
    loop = LoopThread()
    with podnet.PodNetwork() as network:
        proxy = serviceproxy.for_cluster(realcluster, network)
        try:
            loop.run(proxy.start())
            time.sleep(2.5)  # two watches of each kind ended and were made again
            service = admin.create(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "after-resume", "namespace": "default"},
                    "spec": {"ports": [{"port": 80, "targetPort": PORT}]},
                }
            )
            address = (service["spec"]["clusterIP"], 80)
            _wait(lambda: address in loop.call(proxy.listening), "served after the watches ended")
        finally:
            admin.delete("services", "after-resume", "default")
            loop.run(proxy.aclose())
            loop.close()


def test_available_says_why_not_when_not_root() -> None:
    code = "from avatar_devtools.realcluster import podnet; print(podnet.available().reason)"
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("not root"), result.stdout


def _free_node_port() -> int:
    for port in random.sample(range(30000, 32768), 200):
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise AssertionError("no free port in the node port range")


def test_node_port_is_served_on_the_machines_loopback_once_it_is_free(net: Net) -> None:
    port = _free_node_port()
    holder = socket.socket()  # another process's listener on that port, for now
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        net.admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "room", "namespace": NAMESPACE},
                "spec": {
                    "type": "NodePort",
                    "ports": [{"name": "http", "port": 80, "targetPort": PORT, "nodePort": port}],
                },
            }
        )
        _slice(net, "room", [net.pods["beta"]])
        _wait(lambda: ("127.0.0.1", port) in net.loop.call(net.proxy.failed), "bind refused")
    finally:
        holder.close()
    _wait(lambda: _serving(net, ("127.0.0.1", port)), "the node port served once free")
    assert not net.loop.call(net.proxy.failed)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP proxy
    with direct.open(f"http://127.0.0.1:{port}/who", timeout=5) as response:
        assert response.read() == b"beta"  # from the machine's namespace, as kind maps it
    net.admin.delete("services", "room", NAMESPACE)
    _wait(lambda: not _serving(net, ("127.0.0.1", port)), "the node port closed")
