"""Names for Pods without a DNS server: a per-Pod hosts file with every Service's names, kept
current in place, and the resolv.conf that goes with it.

A Pod's `/etc/hosts` lists, as the kubelet's does, localhost and the Pod's own hostname (and
`HOSTNAME.SUBDOMAIN.NAMESPACE.svc.cluster.local` with a subdomain), then, for every Service with
a ClusterIP, `NAME.NAMESPACE.svc.cluster.local`, `NAME.NAMESPACE.svc` and `NAME.NAMESPACE` —
and the short `NAME` for the Services of the Pod's own namespace. Those are exactly the names
cluster DNS answers through the Pod's search path, written out, because glibc applies search
domains to DNS queries only, never to the hosts file.

`resolv_conf()` gives the search path (`NAMESPACE.svc.cluster.local svc.cluster.local
cluster.local`, `ndots:5`) and no nameserver: every name a Pod may look up is in its hosts file,
and a name that is not falls through to glibc's default nameserver, 127.0.0.1 inside the Pod's
own network namespace, where nothing listens — refused at once, so a lookup fails fast instead
of waiting for a timeout. (Nothing outside 198.18.0.0/15 is reachable from a Pod anyway.)

`HostsFile.update()` rewrites its file in place — same inode, written then truncated, never
replaced by a rename — because the file is bind-mounted at `/etc/hosts` in the Pod's mount
namespace, and a bind mount holds the inode, not the name. `HostsFiles` keeps every Pod's file
current from one Service table (the Service proxy's listener: `proxy.add_listener(files.update)`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

CLUSTER_DOMAIN = "cluster.local"
HEADER = "# Kubernetes-managed hosts file (avatar-devtools node agent).\n"
LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


class ServiceName(NamedTuple):
    """A Service with a ClusterIP, as a hosts file needs it."""

    namespace: str
    name: str
    cluster_ip: str


class PodIdentity(NamedTuple):
    """The Pod whose hosts file it is: its namespace, hostname (`spec.hostname` or the Pod's
    name), `spec.subdomain` if any, and its IP."""

    namespace: str
    hostname: str
    ip: str
    subdomain: str = ""


def service_hostnames(
    service: ServiceName, pod_namespace: str, domain: str = CLUSTER_DOMAIN
) -> list[str]:
    names = [
        f"{service.name}.{service.namespace}.svc.{domain}",
        f"{service.name}.{service.namespace}.svc",
        f"{service.name}.{service.namespace}",
    ]
    if service.namespace == pod_namespace:
        names.append(service.name)
    return names


def hosts(pod: PodIdentity, services: Iterable[ServiceName], domain: str = CLUSTER_DOMAIN) -> str:
    """The hosts file of `pod`, with `services` sorted (the same table gives the same bytes)."""
    own = [pod.hostname]
    if pod.subdomain:
        own.insert(0, f"{pod.hostname}.{pod.subdomain}.{pod.namespace}.svc.{domain}")
    lines = [HEADER, LOCALHOST, f"{pod.ip}\t{' '.join(own)}\n"]
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        if service.cluster_ip and service.cluster_ip != "None":
            names = " ".join(service_hostnames(service, pod.namespace, domain))
            lines.append(f"{service.cluster_ip}\t{names}\n")
    return "".join(lines)


def resolv_conf(namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """The Pod's resolv.conf: the cluster's search path, no nameserver (see the docstring)."""
    return (
        "# every cluster name is in /etc/hosts: no nameserver (glibc then tries 127.0.0.1,\n"
        "# where nothing listens in the Pod's network namespace, and fails at once)\n"
        f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
        "options ndots:5\n"
    )


def rewrite_in_place(path: Path, content: str) -> bool:
    """Writes `content` into the existing inode of `path` (created if missing); False when it
    already held exactly that. Written first, then truncated: a reader never sees it empty."""
    data = content.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        current = b""
        while chunk := os.read(fd, 65536):
            current += chunk
        if current == data:
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True


class HostsFile:
    """One Pod's hosts file at `path`, rewritten in place by `update(services)`."""

    def __init__(self, path: str | os.PathLike[str], pod: PodIdentity) -> None:
        self.path = Path(path)
        self.pod = pod

    def update(self, services: Iterable[ServiceName]) -> bool:
        """True when the file changed."""
        return rewrite_in_place(self.path, hosts(self.pod, services))


class HostsFiles:
    """Every Pod's hosts file, kept current from one Service table: `update(services)` is the
    Service proxy's listener; `add()` writes a new Pod's file at once from the last table."""

    def __init__(self) -> None:
        self._files: dict[Path, HostsFile] = {}
        self._services: tuple[ServiceName, ...] = ()

    def add(self, path: str | os.PathLike[str], pod: PodIdentity) -> HostsFile:
        hosts_file = HostsFile(path, pod)
        self._files[hosts_file.path] = hosts_file
        hosts_file.update(self._services)
        return hosts_file

    def remove(self, path: str | os.PathLike[str]) -> None:
        self._files.pop(Path(path), None)

    def update(self, services: Iterable[ServiceName]) -> None:
        self._services = tuple(services)
        for hosts_file in list(self._files.values()):
            with contextlib.suppress(FileNotFoundError):  # its Pod's folder already gone
                hosts_file.update(self._services)

    @property
    def services(self) -> tuple[ServiceName, ...]:
        return self._services
