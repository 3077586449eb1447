"""Pod networking for the node agent: a network namespace per Pod, an IP from its Node's Pod CIDR,
and a bridge per Node, so that two Pods can listen on the same port as on a real node.

Layout (one `PodNetwork` per cluster):

- a **host namespace** `avpn-<tag>` of the network's own, standing for the nodes' root namespace:
  the clusters of one machine all use the same fixed ranges (Pod CIDRs 198.18.x.0/24, the
  `kubernetes` ClusterIP 198.18.128.1), so two of them in the machine's own namespace would
  clash; and IP forwarding (`net.ipv4.ip_forward`, per namespace) is switched on there, never on
  the machine. It holds, per Node, a Linux bridge (`avpnb-<node>`, or a hash of the node's name
  when that is longer than 15 characters) whose address is the first host of the Node's
  `spec.podCIDR`, the host ends of the Pods' veth pairs, and the ClusterIPs (as /32s on its
  `lo`: the machine has no `dummy` driver, and a local address on `lo` is what a dummy interface
  would give). The whole Service range is local there too (`ip route add local
  198.18.128.0/20 dev lo`), so a connect to a ClusterIP:port nobody serves — a Service just
  deleted — is refused at once by a TCP reset, as kube-proxy's REJECT does, instead of waiting
  on ICMP unreachables, which the kernel rate-limits per source (after a burst of five, one a
  second: a connect then times out). Nothing in it routes anywhere but to those bridges: it has
  no default route and no link to the machine's namespace.
- a **Pod namespace** `avpn-<tag>-<pod uid>` per Pod: `lo` up, `eth0` (the veth's other end)
  with the Pod's address, and ONE route, 198.18.0.0/15 via the bridge's address (`onlink`; the
  address is added with `noprefixroute`, so there is not even a connected /24). There is no
  default route: a connect to anything outside 198.18.0.0/15 and loopback fails at once with
  ENETUNREACH. Pods of one node and of two nodes alike reach each other through the host
  namespace, which routes between its bridges — that is forwarding, hence `ip_forward=1` in
  the host namespace (and only there). It is needed: with 0, a Pod's connect to a Pod of
  another node times out, and so does one to a Pod of its own node (no connected /24, so that
  too goes through the bridge's address).

Everything is made with iproute2 (`ip`, a handful of processes per Pod; no extra dependency).
Sockets in the host namespace — the Service proxy's listeners and its connections to Pods, or a
probe of a Pod's IP — come from `PodNetwork.socket()`, made on a thread that has entered that
namespace (`setns(2)` changes one thread's network namespace only, and a socket stays in the
namespace it was made in), so the process itself stays in the machine's namespace, where the
API server listens on 127.0.0.1.

Each network records its owner (pid and start time) in `/run/avatar-podnet/<tag>.json`, beside
the kernel's own `/run/netns/`: `cleanup_all()` removes whatever this module made for networks
whose owner is gone (a crashed run), and with `everything=True` all of it. Every name starts
with `PREFIX`; deleting the host namespace deletes its bridges and veth ends with it.

`available()` says whether this machine allows it (root, iproute2, a namespace, a bridge and a
veth pair made and removed), with the reason when not: where it is not, Pods share the
machine's namespaces and their ports must not clash — the caller says so, never silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from avatar_devtools.realcluster.cluster import SERVICE_CIDR

logger = logging.getLogger("avatar_devtools.realcluster.podnet")

PREFIX = "avpn"
POD_ROUTE = ipaddress.IPv4Network("198.18.0.0/15")  # Pods and Services; reserved for tests
NETNS_DIR = Path("/run/netns")  # where `ip netns` names namespaces
STATE_DIR = Path("/run/avatar-podnet")  # tmpfs, gone at reboot like the namespaces themselves
POD_INTERFACE = "eth0"
IFNAMSIZ = 15  # the kernel's limit on an interface name, without the NUL
IP_TIMEOUT_S = 30.0
_CLONE_NEWNET = 0x40000000


class PodNetError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


class Availability(NamedTuple):
    ok: bool
    reason: str  # why not (empty when ok)


class PodInterface(NamedTuple):
    """What a Pod got: its namespace (enter it with `ip netns exec NETNS …` or
    `nsenter --net=PATH`), address, gateway (its node's bridge) and the host end of its veth."""

    uid: str
    node: str
    netns: str
    ip: str
    gateway: str
    host_veth: str

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


@dataclasses.dataclass
class NodeNetwork:
    """One node's bridge and Pod addresses (the first host is the bridge's)."""

    name: str
    cidr: ipaddress.IPv4Network
    bridge: str
    used: dict[str, str] = dataclasses.field(default_factory=dict)  # pod uid → its IP
    last: str | None = None  # the address handed out last

    @property
    def gateway(self) -> str:
        return str(self.cidr.network_address + 1)

    def allocate(self, uid: str) -> str:
        """The next free address after the one handed out last, round the range (the same uid
        gets the same one), as the CNI host-local IPAM does: an address freed just now is the
        last to be used again, so a new Pod does not take the address whose old MAC the host
        namespace still has in its neighbor cache."""
        if uid in self.used:
            return self.used[uid]
        hosts = [str(a) for a in self.cidr.hosts() if str(a) != self.gateway]
        start = hosts.index(self.last) + 1 if self.last in hosts else 0
        taken = set(self.used.values())
        for candidate in hosts[start:] + hosts[:start]:
            if candidate not in taken:
                self.used[uid] = self.last = candidate
                return candidate
        raise PodNetError(f"node {self.name}: no Pod address left in {self.cidr}")


# --- names --------------------------------------------------------------------------------


def _digest(text: str, length: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def bridge_name(node: str) -> str:
    """`avpnb-<node>`, or `avpnb-<hash>` when the node's name does not fit in 15 characters."""
    stem = f"{PREFIX}b-"
    fits = len(stem) + len(node) <= IFNAMSIZ and all(c.isalnum() or c in "-_." for c in node)
    return stem + (node if fits else _digest(node, IFNAMSIZ - len(stem)))


def bridge_mac(node: str) -> str:
    """A fixed, locally administered unicast MAC for the node's bridge. Without one, a Linux
    bridge takes the lowest MAC of its ports, so its MAC (every Pod's gateway) changes whenever
    a Pod with a lower one is plugged in or unplugged, and each Pod then depends on one
    gratuitous ARP to learn it; Docker and the CNI bridge plugin fix the MAC the same way."""
    digest = hashlib.sha1(f"bridge/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def veth_name(uid: str) -> str:
    """The host end of a Pod's veth pair."""
    stem = f"{PREFIX}v"
    return stem + _digest(uid, IFNAMSIZ - len(stem))


def pod_netns_name(tag: str, uid: str) -> str:
    return f"{PREFIX}-{tag}-{uid}"


def tag_of(netns: str) -> str | None:
    """The network a namespace of this module belongs to, or None when it is not one."""
    if not netns.startswith(PREFIX + "-"):
        return None
    return netns[len(PREFIX) + 1 :].split("-", 1)[0] or None


# --- the machine --------------------------------------------------------------------------


def _ip(*args: str, batch: list[str] | None = None, check: bool = True) -> str:
    command = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    try:
        result = subprocess.run(
            command,
            input="\n".join(batch) + "\n" if batch is not None else None,
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PodNetError(f"{' '.join(command)}: {error}") from error
    if check and result.returncode != 0:
        shown = " ".join(command) + (f" <<< {'; '.join(batch)}" if batch else "")
        raise PodNetError(f"{shown}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@functools.cache
def available() -> Availability:
    """Whether Pods can have their own network namespaces here, and why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return Availability(False, "not root: network namespaces, bridges and veths need root")
    if shutil.which("ip") is None:
        return Availability(False, "no `ip` command (iproute2) on PATH")
    probe = f"{PREFIX}-probe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        try:
            _ip(
                "-n",
                probe,
                batch=[
                    f"link add {PREFIX}bprobe type bridge",
                    f"link add {PREFIX}vprobe type veth peer name {PREFIX}pprobe",
                    f"link set {PREFIX}vprobe master {PREFIX}bprobe",
                ],
            )
        finally:
            _ip("netns", "del", probe, check=False)
    except PodNetError as error:
        return Availability(False, f"network namespaces not permitted here ({error})")
    return Availability(True, "")


def netns_names() -> list[str]:
    """The named network namespaces of this module (any network's)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX + "-"))
    except OSError:
        return []


def _process_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner_alive(tag: str) -> bool:
    try:
        owner = json.loads((STATE_DIR / f"{tag}.json").read_text())
    except (OSError, ValueError):
        return False
    started = _process_start(int(owner.get("pid", 0)))
    return started is not None and started == owner.get("start")


def cleanup_all(*, everything: bool = False) -> list[str]:
    """Removes the namespaces (and with them their bridges, veths and addresses) of every
    network whose owner process is gone — or, with `everything`, of every network, live ones
    included. Returns the namespaces removed."""
    removed = []
    tags = {t for t in map(tag_of, netns_names()) if t}
    with contextlib.suppress(OSError):
        tags |= {p.stem for p in STATE_DIR.glob("*.json")}
    for tag in sorted(tags):
        if not everything and _owner_alive(tag):
            continue
        for netns in netns_names():
            if tag_of(netns) == tag and netns != f"{PREFIX}-{tag}":
                _ip("netns", "del", netns, check=False)
                removed.append(netns)
        host = f"{PREFIX}-{tag}"
        if (NETNS_DIR / host).exists():
            _ip("netns", "del", host, check=False)
            removed.append(host)
        with contextlib.suppress(OSError):
            (STATE_DIR / f"{tag}.json").unlink()
    if removed:
        logger.info("podnet: removed %d namespaces", len(removed), extra={"netns": removed})
    return removed


# --- one network --------------------------------------------------------------------------


def _enter(netns: Path) -> None:  # runs on the executor's one thread, once
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class PodNetwork:
    """The host namespace, the nodes' bridges and the Pods' namespaces of one cluster.

    `create()` (or `with`) makes the host namespace; `add_node(name, pod_cidr)` a node's bridge;
    `add_pod(node, uid, ip=None)` a Pod's namespace and veth (ip: given, or the next free one of
    the node's CIDR); `remove_pod(uid)`; `close()` removes all of it. Synchronous (a few `ip`
    processes each, tens of ms): from asyncio, call them through `asyncio.to_thread`."""

    def __init__(self, tag: str | None = None, *, service_cidr: str = SERVICE_CIDR) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.service_cidr = ipaddress.IPv4Network(service_cidr)
        self.host_netns = f"{PREFIX}-{self.tag}"
        self.nodes: dict[str, NodeNetwork] = {}
        self.pods: dict[str, PodInterface] = {}
        self._addresses: set[str] = set()  # /32s on the host namespace's lo (ClusterIPs)
        self._host_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._created = False
        # add_pod/remove_pod run on several threads at once (a node's Pods start together):
        # the addresses handed out and the tables are changed under this lock
        self._lock = threading.Lock()

    @property
    def host_netns_path(self) -> Path:
        return NETNS_DIR / self.host_netns

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.tag}.json"

    # --- lifecycle ------------------------------------------------------------------------

    def create(self) -> PodNetwork:
        reason = available()
        if not reason.ok:
            raise PodNetError(reason.reason)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "start": _process_start(os.getpid())}
        self.state_file.write_text(json.dumps(owner))
        try:
            _ip("netns", "add", self.host_netns)
            self._created = True
            _ip(
                "-n",
                self.host_netns,
                batch=["link set lo up", f"route add local {self.service_cidr} dev lo"],
            )
            self._host_thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"podnet-{self.tag}",
                initializer=_enter,
                initargs=(self.host_netns_path,),
            )
            self.in_host(_write_sysctl, "net/ipv4/ip_forward", "1")  # between the bridges
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Removes every namespace, bridge, veth and address of this network. Sockets made by
        `socket()` must be closed first: an open one keeps the host namespace alive, unnamed."""
        for uid in list(self.pods):
            self.remove_pod(uid)
        if self._host_thread is not None:
            self._host_thread.shutdown(wait=True)  # its thread is in the host namespace
            self._host_thread = None
        if self._created:
            _ip("netns", "del", self.host_netns, check=False)  # bridges and veths go with it
            self._created = False
        self.nodes.clear()
        self._addresses.clear()
        with contextlib.suppress(OSError):
            self.state_file.unlink()

    def __enter__(self) -> PodNetwork:
        return self.create()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- nodes and Pods -------------------------------------------------------------------

    def add_node(self, name: str, pod_cidr: str) -> NodeNetwork:
        """The node's bridge, holding the first host of `pod_cidr` (its `spec.podCIDR`)."""
        if name in self.nodes:
            return self.nodes[name]
        cidr = ipaddress.IPv4Network(pod_cidr)
        if not cidr.subnet_of(POD_ROUTE):
            raise PodNetError(f"node {name}: podCIDR {cidr} is outside {POD_ROUTE}")
        node = NodeNetwork(name, cidr, bridge_name(name))
        _ip(
            "-n",
            self.host_netns,
            batch=[
                f"link add {node.bridge} address {bridge_mac(name)} type bridge",
                f"addr add {node.gateway}/{cidr.prefixlen} dev {node.bridge}",
                f"link set {node.bridge} up",
            ],
        )
        self.nodes[name] = node
        return node

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is None:
            return
        for uid in [u for u, p in self.pods.items() if p.node == name]:
            self.remove_pod(uid)
        _ip("-n", self.host_netns, "link", "del", node.bridge, check=False)

    def add_pod(self, node: str, uid: str, ip: str | None = None) -> PodInterface:
        """The Pod's namespace, veth into `node`'s bridge, `ip` (or the next free one)."""
        with self._lock:
            if uid in self.pods:
                return self.pods[uid]
            bridge = self.nodes[node]
            address = ip or bridge.allocate(uid)
            if ipaddress.IPv4Address(address) not in bridge.cidr or address == bridge.gateway:
                raise PodNetError(f"pod {uid}: {address} is not a Pod address of {bridge.cidr}")
            holder = next((u for u, a in bridge.used.items() if a == address and u != uid), None)
            if holder is not None:
                raise PodNetError(f"pod {uid}: {address} is already pod {holder}'s")
            bridge.used[uid] = address
        pod = PodInterface(
            uid=uid,
            node=node,
            netns=pod_netns_name(self.tag, uid),
            ip=address,
            gateway=bridge.gateway,
            host_veth=veth_name(uid),
        )
        try:
            _ip("netns", "add", pod.netns)
            with self._lock:
                self.pods[uid] = pod
            _ip(
                "-n",
                self.host_netns,
                batch=[
                    f"link add {pod.host_veth} type veth peer name {POD_INTERFACE}"
                    f" netns {pod.netns}",
                    f"link set {pod.host_veth} master {bridge.bridge} up",
                    # an address used before: its old MAC must not be used for the new Pod
                    f"neigh flush to {address}",
                ],
            )
            _ip(
                "-n",
                pod.netns,
                batch=[
                    "link set lo up",
                    f"addr add {address}/{bridge.cidr.prefixlen} dev {POD_INTERFACE} noprefixroute",
                    f"link set {POD_INTERFACE} up",
                    f"route add {POD_ROUTE} via {pod.gateway} dev {POD_INTERFACE} onlink",
                ],
            )
        except BaseException:
            if uid in self.pods:
                self.remove_pod(uid)
            with self._lock:
                bridge.used.pop(uid, None)
            raise
        return pod

    def remove_pod(self, uid: str) -> None:
        """Its veth (both ends) and namespace. A process still in the namespace keeps it alive,
        unnamed and unplugged: stop the Pod's processes first."""
        with self._lock:
            pod = self.pods.pop(uid, None)
            node = self.nodes.get(pod.node) if pod else None
            if node is not None:
                node.used.pop(uid, None)
        if pod is None:
            return
        _ip("-n", self.host_netns, "link", "del", pod.host_veth, check=False)
        _ip("netns", "del", pod.netns, check=False)

    # --- the host namespace ---------------------------------------------------------------

    def in_host(self, function: Any, *args: Any) -> Any:
        """`function(*args)` on a thread inside the host namespace."""
        if self._host_thread is None:
            raise PodNetError(f"network {self.tag} is not created")
        return self._host_thread.submit(function, *args).result()

    async def asocket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """`socket()` from asyncio: the loop goes on while the host thread makes it (that
        thread may be behind other work; blocking on it stalled every connection the loop
        served)."""
        if self._host_thread is None:
            raise PodNetError(f"network {self.tag} is not created")
        future = self._host_thread.submit(socket.socket, family, kind)
        try:
            made: socket.socket = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_unclaimed)
            raise
        return made

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket in the host namespace: it reaches Pod IPs and binds ClusterIPs."""
        made: socket.socket = self.in_host(socket.socket, family, kind)
        return made

    async def open_connection(
        self, host: str, port: int, timeout_s: float = 5.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An asyncio connection from the host namespace to a Pod (or ClusterIP): what a
        probe of `podIP:port` or the Service proxy uses."""
        sock = await self.asocket()
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout_s):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    def add_address(self, ip: str) -> None:
        """`ip`/32 on the host namespace's lo (a ClusterIP: local there, routed to by Pods)."""
        if ip in self._addresses:
            return
        _ip("-n", self.host_netns, "addr", "add", f"{ip}/32", "dev", "lo")
        self._addresses.add(ip)

    def remove_address(self, ip: str) -> None:
        if ip not in self._addresses:
            return
        self._addresses.discard(ip)
        _ip("-n", self.host_netns, "addr", "del", f"{ip}/32", "dev", "lo", check=False)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(self._addresses)


def _close_unclaimed(future: concurrent.futures.Future[socket.socket]) -> None:
    """A socket made for a caller that was cancelled meanwhile: closed, not leaked."""
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _write_sysctl(key: str, value: str) -> None:
    # /proc/sys/net shows the namespace of the thread that opens it
    Path("/proc/sys", key).write_text(value)
