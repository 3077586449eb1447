"""Benchmark: the Pod network and the userspace Service proxy, on a real API server.

What it measures, and how (it starts and stops its own control plane, without nodes: the
network's two nodes take podCIDRs of their own; root and network namespaces are needed, else
it prints why and exits 0):

- `pod_setup_ms` / `pod_teardown_ms` (p50, p95, max): `PodNetwork.add_pod` (its namespace,
  veth into its node's bridge, address, route) and `remove_pod`, for `--pods` Pods over two
  nodes.
- `proxy`: a Pod serving TCP, a Service on it (selector-less, a hand-made EndpointSlice), and a
  client in another Pod of the other node, so the direct path crosses the host namespace's
  forwarding and the proxied one the proxy's two sockets:
  - `rtt_direct_p50_ms` / `rtt_proxied_p50_ms` (and p95): connect, a 5-byte request, the
    answer, close — `--requests` times, to the Pod's IP and to the ClusterIP;
  - `throughput_direct_mb_s` / `throughput_proxied_mb_s`: `--megabytes` MB on one connection;
  - `service_to_listening_ms`: from the Service's create answer to the proxy listening.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from avatar_devtools.realcluster import Cluster, binaries, podnet, serviceproxy

REPO = Path(__file__).resolve().parents[1]
NS = "default"
PORT = 9000
T = TypeVar("T")

SERVER = r"""
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen(128)
while True:
    conn, _ = listener.accept()
    with conn:
        request = conn.recv(5)
        if request == b"sink\n":
            total = 0
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
            conn.sendall(str(total).encode())
        else:
            conn.sendall(b"pong\n")
"""

CLIENT = r"""
import json, socket, sys, time
targets, requests, megabytes = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {}
for label, (host, port) in targets.items():
    rtts = []
    for _ in range(requests):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"ping\n")
            assert sock.recv(5) == b"pong\n"
        rtts.append((time.perf_counter() - started) * 1000)
    block = b"x" * (1 << 20)
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"sink\n")
        for _ in range(megabytes):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        assert int(sock.recv(64)) == megabytes << 20
    seconds = time.perf_counter() - started
    out[label] = {"rtts": rtts, "mb_s": megabytes * 1.048576 / seconds}
print(json.dumps(out))
"""


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


def pod_times(network: podnet.PodNetwork, pods: int) -> dict[str, Any]:
    setup, teardown = [], []
    for i in range(pods):
        started = time.perf_counter()
        network.add_pod(("a", "b")[i % 2], f"bench-{i}")
        setup.append((time.perf_counter() - started) * 1000)
    for i in range(pods):
        started = time.perf_counter()
        network.remove_pod(f"bench-{i}")
        teardown.append((time.perf_counter() - started) * 1000)
    return {"pods": pods, "pod_setup_ms": _ms(setup), "pod_teardown_ms": _ms(teardown)}


def proxy_figures(
    cluster: Cluster, network: podnet.PodNetwork, requests: int, megabytes: int
) -> dict[str, Any]:
    admin = cluster.rest()
    server_pod = network.add_pod("a", "bench-server")
    client_pod = network.add_pod("b", "bench-client")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server_pod.netns,
            sys.executable,
            "-c",
            SERVER,
            server_pod.ip,
            str(PORT),
        ]
    )
    loop = LoopThread()
    proxy = serviceproxy.for_cluster(cluster, network)
    try:
        loop.run(proxy.start())
        started = time.perf_counter()
        service = admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "bench", "namespace": NS},
                "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": PORT}]},
            }
        )
        cluster_ip = service["spec"]["clusterIP"]
        admin.request(
            "POST",
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "bench-1",
                    "namespace": NS,
                    "labels": {serviceproxy.SERVICE_NAME_LABEL: "bench"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "tcp", "port": PORT}],
                "endpoints": [{"addresses": [server_pod.ip]}],
            },
        )
        while (cluster_ip, 80) not in proxy.listening():
            time.sleep(0.005)
        listening_ms = (time.perf_counter() - started) * 1000
        targets = {"direct": [server_pod.ip, PORT], "proxied": [cluster_ip, 80]}
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                client_pod.netns,
                sys.executable,
                "-c",
                CLIENT,
                json.dumps(targets),
                str(requests),
                str(megabytes),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        measured = json.loads(result.stdout)
    finally:
        loop.run(proxy.aclose())
        loop.close()
        server.terminate()
        server.wait(10)
    direct, proxied = _ms(measured["direct"]["rtts"]), _ms(measured["proxied"]["rtts"])
    return {
        "requests": requests,
        "megabytes": megabytes,
        "service_to_listening_ms": round(listening_ms, 1),
        "rtt_direct_p50_ms": direct["p50"],
        "rtt_direct_p95_ms": direct["p95"],
        "rtt_proxied_p50_ms": proxied["p50"],
        "rtt_proxied_p95_ms": proxied["p95"],
        "throughput_direct_mb_s": round(measured["direct"]["mb_s"], 1),
        "throughput_proxied_mb_s": round(measured["proxied"]["mb_s"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=40)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    available = podnet.available()
    if not available.ok:
        print(json.dumps({"skipped": available.reason}))
        return
    report: dict[str, Any] = {"benchmark": "podnet"}
    with tempfile.TemporaryDirectory(prefix="podnet-bench-") as directory:
        cluster = Cluster(directory, bin_dir=binaries.bin_dir(REPO), die_with_parent=True)
        with cluster, podnet.PodNetwork() as network:
            network.add_node("a", "198.18.0.0/24")
            network.add_node("b", "198.18.1.0/24")
            report.update(pod_times(network, args.pods))
            report["proxy"] = proxy_figures(cluster, network, args.requests, args.megabytes)
        report["leaked_namespaces"] = [
            n for n in podnet.netns_names() if podnet.tag_of(n) == network.tag
        ]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
