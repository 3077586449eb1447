"""The node agent's side of the Pod network: one `podnet.PodNetwork` for all its nodes, the
`serviceproxy.ServiceProxy` on it, and every Pod's hosts file kept current from the proxy's
Service table (`podnames.HostsFiles`), wired together so the pod runner needs two calls.

    networks = await NodeNetworks(server, ca, proxy_cert, directory).start()
    pods = await networks.node("h100-0", node["spec"]["podCIDR"])   # once per node
    address = await pods.attach(pod)   # netns, IP, hosts and resolv.conf files, the API's address
    ...                                # run the containers in address.netns, files bound over /etc
    await pods.detach(pod)             # after the Pod's processes are gone
    await networks.aclose()

`attach()` returns a `PodAttachment` with the fields of the pod runner's `PodAddress`
(`PodAddress(**attachment._asdict())`); `KUBERNETES_SERVICE_HOST/PORT` are the `kubernetes`
Service's ClusterIP and port, which the proxy maps to the API server's loopback address.
`start()` raises `podnet.PodNetError` with the reason where `podnet.available()` says no: the
caller then falls back to the host's namespaces, and says so.

Credentials for the proxy: kube-proxy's. `cluster.py` passes them to the agent with
`*nodenetwork.agent_args(self)` in its arguments; the agent's parser takes them with
`add_arguments(parser)` and `from_args(args, server, ca, directory)` gives its `NodeNetworks`
(None without them: the agent then keeps Pods on the host's network, and says so).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from avatar_devtools.realcluster import podnames, podnet, serviceproxy
from avatar_devtools.realcluster.cluster import SERVICE_IP, Cluster

KUBERNETES_SERVICE = (SERVICE_IP, 443)


class PodAttachment(NamedTuple):
    """Where a Pod's processes live (the pod runner's `PodAddress`, field for field)."""

    pod_ip: str
    netns: str | None
    hosts_file: Path | None
    resolv_file: Path | None
    api_host: str
    api_port: int
    note: str = ""


def agent_args(cluster: Cluster) -> list[str]:
    """The node agent's command-line arguments for its Service proxy (`add_arguments`):
    kube-proxy's certificate, issued from the cluster's CA on first use."""
    crt, key = serviceproxy.kube_proxy_credentials(cluster)
    return [f"--proxy-cert={crt}", f"--proxy-key={key}"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--proxy-cert`/`--proxy-key`: what `agent_args` passes."""
    parser.add_argument("--proxy-cert", help="the Service proxy's client certificate")
    parser.add_argument("--proxy-key", help="its key (with --proxy-cert: Pods get networks)")


def from_args(
    args: argparse.Namespace, server: str, ca_file: str | Path, directory: str | Path
) -> NodeNetworks | None:
    """The agent's `NodeNetworks` (not started) when `--proxy-cert` and `--proxy-key` were
    given, else None."""
    if not (args.proxy_cert and args.proxy_key):
        return None
    return NodeNetworks(server, ca_file, (args.proxy_cert, args.proxy_key), directory)


class NodePods:
    """One node's Pods: `attach(pod)` / `detach(pod)` (the pod runner's `PodNetwork`)."""

    def __init__(self, networks: NodeNetworks, node: str) -> None:
        self.networks = networks
        self.node = node

    async def attach(self, pod: dict[str, Any]) -> PodAttachment:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        network = self.networks.network
        interface = await asyncio.to_thread(network.add_pod, self.node, meta["uid"])
        folder = self.networks.directory / meta["uid"]
        folder.mkdir(parents=True, exist_ok=True)
        resolv = folder / "resolv.conf"
        resolv.write_text(podnames.resolv_conf(meta["namespace"]))
        identity = podnames.PodIdentity(
            meta["namespace"],
            spec.get("hostname") or meta["name"],
            interface.ip,
            spec.get("subdomain") or "",
        )
        hosts = self.networks.hosts.add(folder / "hosts", identity)
        host, port = self.networks.kubernetes_service
        return PodAttachment(interface.ip, interface.netns, hosts.path, resolv, host, port)

    async def detach(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        folder = self.networks.directory / uid
        self.networks.hosts.remove(folder / "hosts")
        await asyncio.to_thread(self.networks.network.remove_pod, uid)
        shutil.rmtree(folder, ignore_errors=True)


class NodeNetworks:
    """The Pod network, Service proxy and hosts files of one node agent (see the docstring)."""

    def __init__(
        self,
        server: str,
        ca_file: str | Path,
        proxy_cert: tuple[str | Path, str | Path],
        directory: str | Path,
        *,
        kubernetes_service: serviceproxy.Address = KUBERNETES_SERVICE,
    ) -> None:
        self.server = server
        self.ca_file = Path(ca_file)
        self.proxy_cert = proxy_cert
        self.directory = Path(directory)
        self.kubernetes_service = kubernetes_service
        self.network = podnet.PodNetwork()
        self.hosts = podnames.HostsFiles()
        self.proxy: serviceproxy.ServiceProxy | None = None
        self.nodes: dict[str, NodePods] = {}

    async def start(self) -> NodeNetworks:
        """Removes what crashed agents left (`podnet.cleanup_all()`: networks whose owner is
        gone), then makes this one and starts its proxy (it returns once Services are served)."""
        await asyncio.to_thread(podnet.cleanup_all)
        await asyncio.to_thread(self.network.create)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.proxy = serviceproxy.kube_proxy(
                self.server, self.ca_file, self.proxy_cert, self.network
            )
            await self.proxy.start()
            self.proxy.add_listener(self.hosts.update)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def node(self, name: str, pod_cidr: str) -> NodePods:
        """The node's bridge (its `spec.podCIDR`, set by the controller-manager) and Pods."""
        if name not in self.nodes:
            await asyncio.to_thread(self.network.add_node, name, pod_cidr)
            self.nodes[name] = NodePods(self, name)
        return self.nodes[name]

    async def aclose(self) -> None:
        """The proxy first (its sockets hold the host namespace), then every namespace."""
        if self.proxy is not None:
            await self.proxy.aclose()
            self.proxy = None
        await asyncio.to_thread(self.network.close)
        self.nodes.clear()

    async def __aenter__(self) -> NodeNetworks:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
