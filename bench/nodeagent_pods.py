"""Benchmark: the node agent's process mode, per Pod, on a real API server.

It starts and stops its own control plane (with `examples/fleet.yaml`'s phase-playing nodes),
and beside it a node agent process in process mode with one node of its own (each Pod in its
own network namespace with the Service proxy when `podnet.available()`, else the host's: the
JSON says which), then creates `--pods` Pods at once, each one container (`python -c`, sleeping)
with an exec readiness probe, and deletes them:

- `create_to_running_p50_ms` / `_p95_ms` / `_max_ms`: from each Pod's create answer to its
  container reported running (the scheduler's binding, the agent's watch, the TokenRequest and
  Secret/ConfigMap reads with the node's credentials, the volumes, the network, the launch);
- `agent_rss_per_pod_kib`: the node agent's RSS with the Pods running, less before, per Pod;
  `container_rss_p50_kib`: one container's (a sleeping Python interpreter: the Pod's own cost,
  not the agent's);
- `delete_all_ms`: from the first delete to the last Pod object gone (SIGTERM, the containers
  exit, the agent deletes each Pod with grace 0);
- `leaked_processes`: the agent's children left after the deletions (0).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from avatar_devtools.localcluster import fleet
from avatar_devtools.realcluster import Cluster, binaries, nodeagent, podnet

REPO = Path(__file__).resolve().parents[1]
NODE = "bench-pods-0"
TAINT = "avatar-operator.dev/bench-pods"
NS = "default"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _pod(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"bench-{index}", "namespace": NS},
        "spec": {
            "nodeSelector": {TAINT: "true"},
            "tolerations": [{"key": TAINT, "operator": "Exists"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                }
            ],
        },
    }


def _running(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and "running" in (statuses[0].get("state") or {})


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(pods: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-nodeagent-pods-"))
    cluster = Cluster(
        root / "cluster",
        bin_dir=binaries.bin_dir(REPO),
        fleet=REPO / "examples" / "fleet.yaml",
        die_with_parent=True,
    )
    cluster.start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        fleet_file = root / "fleet.yaml"
        fleet_file.write_text(
            yaml.safe_dump(
                {
                    "kubelet": {"mode": "process"},
                    "nodes": [
                        {
                            "name": NODE,
                            "gpus": 0,
                            "cpu": "64",
                            "memory": "64Gi",
                            "labels": {TAINT: "true"},
                            "taints": [{"key": TAINT, "value": "true", "effect": "NoSchedule"}],
                        }
                    ],
                }
            )
        )
        assert cluster.fleet is not None
        first = len(fleet.load(cluster.fleet).nodes)  # past the cluster's own nodes' addresses
        cluster.pki.node_credentials(NODE)
        networked = podnet.available().ok
        args = [
            sys.executable,
            "-m",
            "avatar_devtools.realcluster.nodeagent",
            f"--server={cluster.server}",
            f"--ca={cluster.pki.path('ca.crt')}",
            f"--credentials={cluster.pki.path('nodes')}",
            f"--fleet={fleet_file}",
            f"--first-address={first}",
            *nodeagent.process_mode_args(
                cluster, fleet.load(fleet_file), first_address=first, workdir=root / "pods"
            ),
        ]
        with open(root / "nodeagent.log", "wb") as log:
            agent = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO / "devtools")},
                start_new_session=True,
            )
        admin = cluster.rest()
        admin.wait_for(
            "nodes",
            NODE,
            None,
            lambda n: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            ),
            within=60,
        )
        time.sleep(1.0)
        rss_before = _rss_kib(agent.pid)
        created: dict[str, float] = {}
        for index in range(pods):
            admin.create(_pod(index))
            created[f"bench-{index}"] = time.monotonic()
        latencies: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(latencies) < pods and time.monotonic() < deadline:
            for pod in admin.list("pods", NS):
                name = pod["metadata"]["name"]
                if name in created and name not in latencies and _running(pod):
                    latencies[name] = time.monotonic() - created[name]
            time.sleep(0.02)
        time.sleep(1.0)
        rss_after = _rss_kib(agent.pid)
        containers = [_rss_kib(pid) for pid in _children(agent.pid)]
        began = time.monotonic()
        for name in created:
            admin.delete("pods", name, NS)
        while any(p["metadata"]["name"] in created for p in admin.list("pods", NS)):
            assert time.monotonic() - began < 60, "Pods not deleted in 60 s"
            time.sleep(0.02)
        delete_all = time.monotonic() - began
        time.sleep(0.5)
        leaked = _children(agent.pid)
        values = list(latencies.values())
        return {
            "pods": pods,
            "running": len(latencies),
            "network": "per-Pod namespaces" if networked else "host namespace",
            "create_to_running_p50_ms": round(statistics.median(values) * 1000, 1),
            "create_to_running_p95_ms": round(_percentile(values, 0.95) * 1000, 1),
            "create_to_running_max_ms": round(max(values) * 1000, 1),
            "agent_rss_before_kib": rss_before,
            "agent_rss_per_pod_kib": round((rss_after - rss_before) / pods, 1),
            "container_rss_p50_kib": statistics.median(containers) if containers else None,
            "delete_all_ms": round(delete_all * 1000, 1),
            "leaked_processes": len(leaked),
        }
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=20, help="Pods created at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "the node agent's mount namespaces need root"}))
        return
    print(json.dumps(run(args.pods)))


if __name__ == "__main__":
    main()
