"""The Pod network's links as Pods come and go (no control plane: a `PodNetwork` alone).

Found under load on the real control plane: a new Pod (a warm worker refilling its pool) took
the address a deleted Pod had just freed, and the host namespace still had the old Pod's MAC
for it: every packet from the host namespace to the new Pod — the Service proxy's SYN-ACKs to
it, its connections to it — went to a MAC no longer on the bridge, for as long as that entry
lived (a warm worker's room join timed out so; the operator restarted its session cold). Now
addresses go round the range (as the CNI host-local IPAM hands them out), and adding a Pod
flushes its address's neighbor entry. Also: the node's bridge keeps a MAC of its own instead of
taking the lowest MAC of its ports. Skipped where network namespaces are not permitted.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from avatar_devtools.realcluster import podnet, podrunner

_available = podnet.available()
pytestmark = pytest.mark.skipif(
    not _available.ok, reason=f"pod network namespaces unavailable: {_available.reason}"
)

NODE, CIDR, PORT = "n0", "198.18.7.0/24", 8080


def bridge_mac_now(network: podnet.PodNetwork) -> str:
    shown = subprocess.run(
        ["ip", "-n", network.host_netns, "-o", "link", "show", network.nodes[NODE].bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return shown.split("link/ether", 1)[1].split()[0]


@pytest.fixture
def network() -> Iterator[podnet.PodNetwork]:
    with podnet.PodNetwork() as made:
        made.add_node(NODE, CIDR)
        yield made


def serve_in(interface: podnet.PodInterface) -> socket.socket:
    """A listener on the Pod's address:PORT, made in its namespace, accepting on a thread."""
    listener = podrunner._socket_in(interface.netns)
    listener.bind((interface.ip, PORT))
    listener.listen(16)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def connects_within(network: podnet.PodNetwork, address: str, seconds: float) -> bool:
    async def connect() -> bool:
        try:
            _, writer = await network.open_connection(address, PORT, timeout_s=seconds)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    return asyncio.run(connect())


def test_pods_coming_and_going_leave_a_pods_connections_alone(
    network: podnet.PodNetwork,
) -> None:
    server = network.add_pod(NODE, "server")
    listener = serve_in(server)
    try:
        assert connects_within(network, server.ip, 2.0)
        for round_ in range(4):
            others = [network.add_pod(NODE, f"other-{round_}-{i}") for i in range(3)]
            assert bridge_mac_now(network) == podnet.bridge_mac(NODE)
            assert connects_within(network, server.ip, 2.0), f"round {round_}: pods added"
            for other in others:
                network.remove_pod(other.uid)
            assert bridge_mac_now(network) == podnet.bridge_mac(NODE)
            assert connects_within(network, server.ip, 2.0), f"round {round_}: pods removed"
    finally:
        listener.close()


def test_a_new_pod_does_not_take_the_address_just_freed(network: podnet.PodNetwork) -> None:
    first = network.add_pod(NODE, "first")
    network.remove_pod(first.uid)
    second = network.add_pod(NODE, "second")
    assert second.ip != first.ip
    listener = serve_in(second)
    try:
        assert connects_within(network, second.ip, 2.0)
    finally:
        listener.close()


def test_a_pod_given_an_address_used_before_is_reached_at_once(
    network: podnet.PodNetwork,
) -> None:
    """The host namespace's neighbor entry for the old Pod's MAC would outlive it (the bridge
    keeps its carrier while another Pod is plugged in): without the flush, every connect here
    timed out for more than 12 s."""
    network.add_pod(NODE, "keeper")
    first = network.add_pod(NODE, "first")
    listener = serve_in(first)
    assert connects_within(network, first.ip, 2.0)
    listener.close()
    network.remove_pod(first.uid)
    second = network.add_pod(NODE, "second", ip=first.ip)
    listener = serve_in(second)
    try:
        assert connects_within(network, second.ip, 2.0)
    finally:
        listener.close()
