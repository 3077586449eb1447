"""A Service proxy in userspace, as kube-proxy's old `userspace` mode was: it watches Services
and EndpointSlices through the API server, puts every ClusterIP on the Pod network's host
namespace (`podnet.PodNetwork.add_address`), listens on each ClusterIP:port (TCP), and copies
each accepted connection to one ready endpoint's IP:port, round-robin (the next endpoint when a
connect fails, as the userspace proxier did).

Why not iptables/nftables DNAT, as kube-proxy does today: the machines this runs on have no
iptables or nft binary, and a proxy needs nothing but sockets — every address it uses (the
ClusterIPs, the Pod IPs) is one the Pod network owns, in namespaces it made, so nothing is
rewritten on the machine's own tables. It costs a copy per byte through this process: fine for
the control traffic of tests (the operator's relay, the API server), not a data plane.

Endpoints that are not Pod IPs are mapped by `endpoint_map`: the `kubernetes` Service's
EndpointSlice points at the API server's advertise address (198.18.255.1:<its port>), which does
not exist; the map sends it to where the API server really listens (127.0.0.1:<its port>, in the
machine's namespace — the proxy's process stays there and makes only its Pod-side sockets in
the host namespace). `for_cluster()` builds the map from a `Cluster`. Beside it, an endpoint at
`host_address` (`cluster.HOST_ADDRESS`, 198.18.255.2: the machine as Pods see it, as kind's
nodes see their Docker host) goes to 127.0.0.1 on the same port: a Service without a selector
whose EndpointSlice someone pointed there (only who may write EndpointSlices can) reaches a
server of this machine — `make demo DEMO_ARGS=--real-cluster` gives its workers the demo's
own room server so.

NodePort (and LoadBalancer) Services are also served on `node_port_address`:nodePort in the
machine's own namespace (127.0.0.1 by default: where kind's `extraPortMappings` put the chart's
local room for `tests/e2e`); `None` serves ClusterIPs only. Two clusters of one machine asking
for the same node port cannot both have it: the second proxy logs it and tries again each
`RETRY_S` (`failed()` says which and why), its other listeners unaffected.

Credentials: kube-proxy's own identity, a client certificate for `system:kube-proxy`, which the
API server's bootstrap policy binds to the ClusterRole `system:node-proxier` (list/watch
Services, EndpointSlices, Nodes) — `kube_proxy_credentials(cluster)` issues it from the
cluster's CA. A node's kubelet certificate would not do: the Node authorizer grants nodes
Services, but EndpointSlices (and Endpoints) answer 403.

Watches, not polls: each kind is listed once, then watched from that resourceVersion (with
bookmarks, and server and client timeouts so a silent stall ends); a 410 Gone lists again.
Changes are coalesced: one reconciliation runs after a burst of events. After each, the
listeners (`add_listener`, e.g. `podnames.HostsFiles.update`) get the Service names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp

from avatar_devtools.realcluster import podnames, podnet, watchstream
from avatar_devtools.realcluster.cluster import ADVERTISE_ADDRESS, HOST_ADDRESS, Cluster

logger = logging.getLogger("avatar_devtools.realcluster.serviceproxy")

SERVICES = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WATCH_TIMEOUT_S = 240  # the server ends each watch after this; the client allows a minute more
RETRY_S = 1.0
CONNECT_TIMEOUT_S = 5.0
NODE_PORT_ADDRESS = "127.0.0.1"  # as kind's extraPortMappings put a node port on the machine
CHUNK = 65536
LISTEN_BACKLOG = 128

Address = tuple[str, int]
Listener = Callable[[tuple[podnames.ServiceName, ...]], None]


APIError = watchstream.APIError


class PortKey(NamedTuple):
    """A listened address:port (a ClusterIP's, or a node port's) and what it serves."""

    address: str
    port: int
    namespace: str
    service: str
    port_name: str
    node_port: bool = False  # on the machine's namespace (node_port_address), not the Pods'


@dataclasses.dataclass
class _Listening:
    key: PortKey
    server: asyncio.Server
    turn: itertools.count[int] = dataclasses.field(default_factory=itertools.count)


def kube_proxy_credentials(cluster: Cluster) -> tuple[Path, Path]:
    """A client certificate of `system:kube-proxy` (bound to `system:node-proxier`)."""
    crt, key = cluster.pki.path("kube-proxy.crt"), cluster.pki.path("kube-proxy.key")
    if crt.exists() and key.exists():
        return crt, key
    return cluster.pki.issue("kube-proxy", "system:kube-proxy")


def apiserver_endpoint_map(server: str) -> dict[Address, Address]:
    """The `kubernetes` Service's endpoint (the advertise address, the API server's secure
    port) → where it listens, from its URL (https://127.0.0.1:PORT)."""
    parts = urlsplit(server)
    port = parts.port or 443
    return {(ADVERTISE_ADDRESS, port): (parts.hostname or "127.0.0.1", port)}


def for_cluster(cluster: Cluster, network: podnet.PodNetwork) -> ServiceProxy:
    """A proxy of `cluster`'s Services on `network`, as kube-proxy, the API server mapped
    (not started: `await proxy.start()` in the loop that will run it)."""
    return kube_proxy(
        cluster.server, cluster.pki.path("ca.crt"), kube_proxy_credentials(cluster), network
    )


def kube_proxy(
    server: str,
    ca_file: str | Path,
    cert: tuple[str | Path, str | Path],
    network: podnet.PodNetwork,
) -> ServiceProxy:
    """The proxy of the API server at `server` (kube-proxy's credentials `cert`) on `network`:
    the `kubernetes` Service's endpoint mapped to where the API server listens, and
    `HOST_ADDRESS` endpoints to this machine's loopback (not started)."""
    return ServiceProxy(
        server,
        ca_file,
        cert,
        network,
        endpoint_map=apiserver_endpoint_map(server),
        host_address=HOST_ADDRESS,
    )


def _ready(endpoint: Mapping[str, Any]) -> bool:
    # unset means ready (the API: "nil should be interpreted as true")
    return (endpoint.get("conditions") or {}).get("ready") is not False


Objects = Mapping[tuple[str, str], Mapping[str, Any]]  # (namespace, name) → the object


def listen_table(services: Objects, node_port_address: str | None = None) -> dict[Address, PortKey]:
    """Every ClusterIP:port (TCP, IPv4) to listen on, and what it serves; with
    `node_port_address`, also that address:nodePort for the ports of NodePort and LoadBalancer
    Services. Headless and ExternalName Services have none; UDP/SCTP ports are not proxied
    (nothing here serves them)."""
    table: dict[Address, PortKey] = {}
    for (namespace, name), service in services.items():
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        ports = [p for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
        for cluster_ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            if not cluster_ip or cluster_ip == "None" or ":" in cluster_ip:
                continue  # headless, or IPv6 (the Pod network is IPv4 only)
            for port in ports:
                number, port_name = int(port["port"]), port.get("name") or ""
                table[(cluster_ip, number)] = PortKey(
                    cluster_ip, number, namespace, name, port_name
                )
        if node_port_address is None:
            continue
        for port in ports:
            if port.get("nodePort"):
                number, port_name = int(port["nodePort"]), port.get("name") or ""
                table[(node_port_address, number)] = PortKey(
                    node_port_address, number, namespace, name, port_name, node_port=True
                )
    return table


def ready_endpoints(slices: Objects, namespace: str, service: str, port_name: str) -> list[Address]:
    """The ready endpoints of one Service port (matched by port name, as kube-proxy does),
    from the Service's EndpointSlices, in a stable order (slice name, then as listed)."""
    found: list[Address] = []
    for (slice_namespace, _), endpoint_slice in sorted(slices.items()):
        labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
        if slice_namespace != namespace or labels.get(SERVICE_NAME_LABEL) != service:
            continue
        if endpoint_slice.get("addressType", "IPv4") != "IPv4":
            continue
        for port in endpoint_slice.get("ports") or []:
            if (port.get("name") or "") != port_name or port.get("port") is None:
                continue
            for endpoint in endpoint_slice.get("endpoints") or []:
                if _ready(endpoint):
                    found += [(str(a), int(port["port"])) for a in endpoint.get("addresses") or []]
    return found


class ServiceProxy:
    """The proxy of one cluster's Services on one Pod network; `start()` returns once both
    kinds are listed and every listener is up; `aclose()` closes them and removes the
    ClusterIPs (before `network.close()`: an open socket holds the namespace)."""

    def __init__(
        self,
        server: str,
        ca_file: str | Path,
        cert: tuple[str | Path, str | Path],
        network: podnet.PodNetwork,
        *,
        endpoint_map: Mapping[Address, Address] | None = None,
        host_address: str | None = None,
        node_port_address: str | None = NODE_PORT_ADDRESS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.server = server.rstrip("/")
        self.network = network
        self.endpoint_map = dict(endpoint_map or {})
        self.host_address = host_address
        self.node_port_address = node_port_address
        self.connect_timeout_s = connect_timeout_s
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert[0]), str(cert[1]))
        self._session: aiohttp.ClientSession | None = None
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._listening: dict[Address, _Listening] = {}
        self._listeners: list[Listener] = []
        self._changed_ev = asyncio.Event()
        self._listed = {SERVICES: asyncio.Event(), SLICES: asyncio.Event()}
        self._reconciled_ev = asyncio.Event()
        self._generation = 0  # of the watched state; the reconciler records what it applied
        self._applied = -1
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._failed: dict[Address, str] = {}  # listeners that could not bind, and why
        self._retry_pending = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, timeout_s: float = 30.0) -> ServiceProxy:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=None),
        )
        for path in (SERVICES, SLICES):
            self._spawn(self._watch_loop(path))
        self._spawn(self._reconcile_loop())
        async with asyncio.timeout(timeout_s):
            for listed in self._listed.values():
                await listed.wait()
            await self.settled()
        return self

    async def aclose(self) -> None:
        for task in [*self._tasks, *self._connections]:
            task.cancel()
        for task in [*self._tasks, *self._connections]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for address in list(self._listening):
            await self._stop_listening(address)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ServiceProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: Any, into: set[asyncio.Task[None]] | None = None) -> None:
        task = asyncio.ensure_future(coro)
        tasks = self._tasks if into is None else into
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._task_done)

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("service proxy: task failed", exc_info=task.exception())

    def add_listener(self, listener: Listener) -> None:
        """`listener(service names)` after every reconciliation (and at once, if started)."""
        self._listeners.append(listener)
        if self._applied >= 0:
            listener(self.service_names())

    async def settled(self) -> None:
        """Returns once everything watched so far is applied (listeners, endpoints)."""
        while self._applied < self._generation:
            self._reconciled_ev.clear()
            await self._reconciled_ev.wait()

    # --- what is served -------------------------------------------------------------------

    def listening(self) -> frozenset[Address]:
        """The address:port pairs served now (ClusterIPs, and node ports)."""
        return frozenset(self._listening)

    def service_names(self) -> tuple[podnames.ServiceName, ...]:
        names = []
        for (namespace, name), service in sorted(self._services.items()):
            cluster_ip = (service.get("spec") or {}).get("clusterIP") or ""
            if cluster_ip and cluster_ip != "None":
                names.append(podnames.ServiceName(namespace, name, cluster_ip))
        return tuple(names)

    def _desired(self) -> dict[Address, PortKey]:
        return listen_table(self._services, self.node_port_address)

    def endpoints(self, namespace: str, service: str, port_name: str) -> list[Address]:
        """The ready endpoints of one Service port now."""
        return ready_endpoints(self._slices, namespace, service, port_name)

    # --- the API --------------------------------------------------------------------------

    async def _watch_loop(self, path: str) -> None:
        while True:
            try:
                assert self._session is not None
                async with self._session.get(
                    self.server + path, timeout=aiohttp.ClientTimeout(total=60)
                ) as response:
                    if response.status != 200:
                        raise APIError(response.status, await response.text())
                    listing = await response.json()
                self._replace(path, listing.get("items") or [])
                self._listed[path].set()
                version = listing["metadata"]["resourceVersion"]
                while True:
                    version = await self._watch(path, version)
            except asyncio.CancelledError:
                raise
            except (APIError, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
                if not (isinstance(error, APIError) and error.status == 410):
                    logger.warning("service proxy: watch %s: %s; listing again", path, error)
                    await asyncio.sleep(RETRY_S)

    async def _watch(self, path: str, version: str) -> str:
        """One watch from `version` until the server ends it; the last version seen."""
        assert self._session is not None
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        async with self._session.get(
            self.server + path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=WATCH_TIMEOUT_S + 60),
        ) as response:
            async for kind, obj in watchstream.events(response):
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(path, kind, obj)
        return version

    def _table(self, path: str) -> dict[tuple[str, str], dict[str, Any]]:
        return self._services if path == SERVICES else self._slices

    def _replace(self, path: str, items: Iterable[dict[str, Any]]) -> None:
        table = self._table(path)
        table.clear()
        for obj in items:
            meta = obj.get("metadata") or {}
            table[(meta.get("namespace", ""), meta.get("name", ""))] = obj
        self._changed()

    def _apply(self, path: str, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self._table(path).pop(key, None)
        else:
            self._table(path)[key] = obj
        self._changed()

    def _changed(self) -> None:
        self._generation += 1
        self._changed_ev.set()

    # --- listeners ------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._changed_ev.wait()
            self._changed_ev.clear()
            if not all(listed.is_set() for listed in self._listed.values()):
                continue  # half a picture: a Service's endpoints would look gone
            generation = self._generation
            await self._reconcile()
            self._applied = generation
            names = self.service_names()
            for listener in list(self._listeners):
                try:
                    listener(names)
                except Exception:
                    logger.exception("service proxy: a listener failed")
            self._reconciled_ev.set()

    async def _reconcile(self) -> None:
        """Listeners made and closed to match the Services; one that cannot bind (a node port
        another process holds) is logged once, skipped, and tried again after RETRY_S."""
        desired = self._desired()
        for address, listening in list(self._listening.items()):
            if desired.get(address) != listening.key:
                await self._stop_listening(address)
        for address in set(self._failed) - set(desired):
            del self._failed[address]
        for address, key in desired.items():
            if address in self._listening:
                continue
            try:
                await self._listen(key)
            except (OSError, podnet.PodNetError) as error:
                if self._failed.get(address) != str(error):
                    logger.error(
                        "service proxy: cannot listen on %s:%d (%s); retrying",
                        *address,
                        error,
                        extra={"address": address, "error": str(error)},
                    )
                self._failed[address] = str(error)
            else:
                self._failed.pop(address, None)
        if self._failed and not self._retry_pending:
            self._retry_pending = True
            self._spawn(self._retry_later())

    async def _retry_later(self) -> None:
        await asyncio.sleep(RETRY_S)
        self._retry_pending = False
        self._changed_ev.set()

    def failed(self) -> dict[Address, str]:
        """The listeners that could not be made, and why (tried again every RETRY_S)."""
        return dict(self._failed)

    async def _listen(self, key: PortKey) -> None:
        if key.node_port:  # the machine's namespace: where a user's `curl 127.0.0.1:PORT` is
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        else:
            await asyncio.to_thread(self.network.add_address, key.address)
            sock = await self.network.asocket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((key.address, key.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            server = await asyncio.start_server(lambda r, w: self._accepted(key, r, w), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._listening[(key.address, key.port)] = _Listening(key, server)
        logger.info(
            "service proxy: listening on %s:%d for %s/%s",
            key.address,
            key.port,
            key.namespace,
            key.service,
            extra={"service": f"{key.namespace}/{key.service}", "address": key[:2]},
        )

    async def _stop_listening(self, address: Address) -> None:
        listening = self._listening.pop(address)
        listening.server.close()
        with contextlib.suppress(Exception):
            await listening.server.wait_closed()
        if listening.key.node_port:
            return
        if all(a[0] != address[0] for a in self._listening):
            await asyncio.to_thread(self.network.remove_address, address[0])

    # --- connections ----------------------------------------------------------------------

    def _accepted(
        self, key: PortKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._spawn(self._serve(key, reader, writer), into=self._connections)

    async def _serve(
        self, key: PortKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream = await self._connect(key)
            if upstream is None:  # no ready endpoint: reset, as a REJECT would
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a peer went away mid-stream: what a proxy sees every day
        finally:
            writer.close()

    async def _connect(
        self, key: PortKey
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        endpoints = self.endpoints(key.namespace, key.service, key.port_name)
        listening = self._listening.get((key.address, key.port))
        if not endpoints or listening is None:
            return None
        first = next(listening.turn)
        for attempt in range(len(endpoints)):
            endpoint = endpoints[(first + attempt) % len(endpoints)]
            try:
                return await self._open(endpoint)
            except (OSError, TimeoutError) as error:
                logger.warning(
                    "service proxy: %s/%s: endpoint %s:%d: %s",
                    key.namespace,
                    key.service,
                    *endpoint,
                    f"{type(error).__name__}: {error}",
                    extra={"endpoint": endpoint, "error": str(error)},
                )
        return None

    async def _open(self, endpoint: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        mapped = self.endpoint_map.get(endpoint)
        if mapped is None and self.host_address is not None and endpoint[0] == self.host_address:
            mapped = ("127.0.0.1", endpoint[1])
        if mapped is not None:  # in this process's own namespace (its loopback)
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncio.open_connection(*mapped)
        return await self.network.open_connection(*endpoint, timeout_s=self.connect_timeout_s)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until EOF, then half-closes, so each direction ends on its own."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        if not writer.is_closing() and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
