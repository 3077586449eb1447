"""The pure parts of the Pod network, without a cluster or root: hosts and resolv.conf content,
the in-place rewrite a bind mount needs, the Service proxy's listen table and endpoint choice,
and the names and addresses of `podnet`."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from avatar_devtools.realcluster import nodenetwork, podnames, podnet, serviceproxy

POD = podnames.PodIdentity("agents", "worker-1", "198.18.0.7")
SERVICES = (
    podnames.ServiceName("default", "kubernetes", "198.18.128.1"),
    podnames.ServiceName("agents", "relay", "198.18.128.9"),
)


def test_hosts_lists_every_service_name_and_the_short_name_in_the_pods_namespace() -> None:
    content = podnames.hosts(POD, SERVICES)
    lines = content.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "198.18.0.7\tworker-1" in lines
    assert (
        "198.18.128.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc"
        " kubernetes.default"
    ) in lines  # another namespace: no short name
    assert "198.18.128.9\trelay.agents.svc.cluster.local relay.agents.svc relay.agents relay" in (
        lines
    )
    assert podnames.hosts(POD, reversed(SERVICES)) == content  # same table, same bytes


def test_hosts_names_the_pods_fqdn_with_a_subdomain_and_skips_headless_services() -> None:
    pod = POD._replace(subdomain="workers")
    headless = podnames.ServiceName("agents", "workers", "None")
    lines = podnames.hosts(pod, [headless]).splitlines()
    assert "198.18.0.7\tworker-1.workers.agents.svc.cluster.local worker-1" in lines
    assert not any(line.startswith("None") for line in lines)


def test_resolv_conf_has_the_search_path_and_no_nameserver() -> None:
    content = podnames.resolv_conf("agents")
    assert "search agents.svc.cluster.local svc.cluster.local cluster.local\n" in content
    assert "options ndots:5\n" in content
    assert "nameserver" not in content.replace("no nameserver", "")


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    files = podnames.HostsFiles()
    path = tmp_path / "hosts"
    files.add(path, POD)
    inode = os.stat(path).st_ino
    files.update(SERVICES)
    assert "relay.agents.svc" in path.read_text()
    assert not podnames.rewrite_in_place(path, path.read_text())  # unchanged: not written
    files.update(SERVICES[:1])  # shorter: truncated after the write
    assert path.read_text() == podnames.hosts(POD, SERVICES[:1])
    assert os.stat(path).st_ino == inode


def _service(name: str, ip: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": ports, **spec}}


def test_listen_table_takes_tcp_ports_of_services_with_a_cluster_ip() -> None:
    services = {
        ("a", "web"): _service("web", "198.18.128.5", [{"name": "http", "port": 80}]),
        ("a", "dns"): _service("dns", "198.18.128.6", [{"port": 53, "protocol": "UDP"}]),
        ("a", "headless"): _service("headless", "None", [{"port": 80}]),
        ("a", "ext"): _service("ext", "", [{"port": 80}], type="ExternalName"),
    }
    assert serviceproxy.listen_table(services) == {
        ("198.18.128.5", 80): serviceproxy.PortKey("198.18.128.5", 80, "a", "web", "http")
    }


def _slice(service: str, ports: list[dict[str, Any]], endpoints: list[Any]) -> dict[str, Any]:
    return {
        "metadata": {"labels": {serviceproxy.SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }


def test_listen_table_serves_node_ports_on_the_node_port_address() -> None:
    ports = [{"name": "ws", "port": 8765, "nodePort": 30765}]
    services = {("a", "room"): _service("room", "198.18.128.7", ports, type="NodePort")}
    assert set(serviceproxy.listen_table(services)) == {("198.18.128.7", 8765)}
    table = serviceproxy.listen_table(services, "127.0.0.1")
    assert table[("127.0.0.1", 30765)] == serviceproxy.PortKey(
        "127.0.0.1", 30765, "a", "room", "ws", node_port=True
    )


def test_ready_endpoints_match_the_port_name_and_skip_unready_ones() -> None:
    ready = {"addresses": ["198.18.0.2"], "conditions": {"ready": True}}
    unknown = {"addresses": ["198.18.1.2"]}  # no conditions: ready, as the API says
    unready = {"addresses": ["198.18.1.3"], "conditions": {"ready": False}}
    slices = {
        ("a", "web-1"): _slice(
            "web",
            [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
            [ready, unknown, unready],
        ),
        ("a", "other-1"): _slice("other", [{"name": "http", "port": 1}], [ready]),
        ("b", "web-1"): _slice("web", [{"name": "http", "port": 2}], [ready]),
    }
    assert serviceproxy.ready_endpoints(slices, "a", "web", "http") == [
        ("198.18.0.2", 8080),
        ("198.18.1.2", 8080),
    ]
    assert serviceproxy.ready_endpoints(slices, "a", "web", "metrics") == [
        ("198.18.0.2", 9090),
        ("198.18.1.2", 9090),
    ]
    assert serviceproxy.ready_endpoints(slices, "a", "web", "") == []


def test_interface_names_fit_the_kernel_limit_and_carry_the_prefix() -> None:
    assert podnet.bridge_name("h100-0") == "avpnb-h100-0"
    long_name = podnet.bridge_name("gpu-node-with-a-very-long-name.example")
    assert len(long_name) == podnet.IFNAMSIZ and long_name.startswith(podnet.PREFIX)
    veth = podnet.veth_name("0d4f5a52-7a8e-4a1e-9b7e-2d9c1f0e1a11")
    assert len(veth) <= podnet.IFNAMSIZ and veth.startswith(podnet.PREFIX)
    netns = podnet.pod_netns_name("abc123", "0d4f5a52-7a8e")
    assert podnet.tag_of(netns) == "abc123" and podnet.tag_of("other-ns") is None


def test_node_addresses_start_after_the_bridge_and_a_freed_one_is_reused_last() -> None:
    node = podnet.NodeNetwork("n", ipaddress.IPv4Network("198.18.3.0/29"), "b")
    assert node.gateway == "198.18.3.1"
    assert node.allocate("a") == "198.18.3.2"
    assert node.allocate("a") == "198.18.3.2"
    assert node.allocate("b") == "198.18.3.3"
    node.used.pop("a")  # freed: the next Pod takes a fresh address, not a's
    assert node.allocate("c") == "198.18.3.4"
    for uid in "def":
        node.allocate(uid)  # .5, .6, then round the range: .2, a's, free again
    assert node.used["f"] == "198.18.3.2"
    with pytest.raises(podnet.PodNetError, match="no Pod address left"):
        node.allocate("g")
    node.used.pop("c")
    assert node.allocate("g") == "198.18.3.4"


def test_a_bridge_keeps_one_mac_of_its_own() -> None:
    mac = podnet.bridge_mac("h100-0")
    assert mac == podnet.bridge_mac("h100-0") != podnet.bridge_mac("h100-1")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b1  # locally administered, unicast
    assert len(mac.split(":")) == 6


def test_node_networks_come_from_the_agents_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    nodenetwork.add_arguments(parser)
    assert nodenetwork.from_args(parser.parse_args([]), "https://x", "ca", tmp_path) is None
    args = parser.parse_args(["--proxy-cert=p.crt", "--proxy-key=p.key"])
    networks = nodenetwork.from_args(args, "https://127.0.0.1:6443", "ca.crt", tmp_path)
    assert networks is not None and networks.proxy_cert == ("p.crt", "p.key")
