"""Benchmark: sessions on the real control plane with Pods as processes ([realnodes]).

It starts and stops its own cluster (`avatar_devtools.realcluster`, the node agent in process
mode with `tests/e2e`'s fleet, `e2e_support.real_fleet`, its worker nodes given CPU and memory
for the sessions), installs the chart with the README's commands and upgrades it with the kind
values (the local room on the node port 127.0.0.1:30765), then creates `--sessions` (default
20) AvatarSessions at once, like `examples/session.yaml` (distinct names and rooms,
`ttlSecondsAfterFinished: 0`). Each worker Pod runs a real worker process (the operator's
command, `avatar-worker run`) that joins its local room, rendering on this machine's CPU. Then
every room is ended (`POST /rooms/ROOM/end`) and the bench waits for the sessions, Pods and
token Secrets to go.

- `create_to_joined_p50_ms` / `_p95_ms` / `_max_ms`: from each session's create answer to its
  `status.phase` Joined, seen by polling the API every 50 ms.
- `nodeagent`: the node agent's per-Pod overhead: `pod_start_p50_ms` / `_p95_ms` (a worker Pod
  first listed → its container reported running, same polling), `rss_per_pod_kib` (the
  agent's RSS with the workers running, less before, per Pod) and, for scale,
  `worker_rss_p50_kib` (one worker process: the Pod's own cost, not the agent's).
- `end_to_gone_ms`: from the first room ended to the last session, Pod and Secret gone.
- `leaked_objects`: sessions, Pods and Secrets left in the sessions' namespace 30 s after that
  (0); `leaked_processes`: the worker processes seen under the node agent still alive then
  (0), and `leaked_processes_after_stop`: those alive after the cluster stopped (0).

Prints one JSON object. Needs root (the Pods' mount and network namespaces).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from nodeagent_pods import _percentile, _rss_kib, _running

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from e2e_support import KIND_VALUES, MY_VALUES, install_commands, real_fleet  # noqa: E402

from avatar_devtools.realcluster import Cluster, binaries, processes  # noqa: E402

NS = "default"
ROOM_PORT = 30765  # the kind values' node port of the local room
ROOM_HTTP = f"http://127.0.0.1:{ROOM_PORT}"
MANAGED = "app.kubernetes.io/managed-by=avatar-operator"
SESSION = yaml.safe_load((REPO / "examples" / "session.yaml").read_text())


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _session(index: int) -> dict[str, Any]:
    session = copy.deepcopy(SESSION)
    session["metadata"] = {"name": f"realnodes-{index}", "namespace": NS}
    session["spec"]["roomId"] = f"realnodes-room-{index}"
    session["spec"]["lifetime"]["ttlSecondsAfterFinished"] = 0
    return session


def _fleet(name: str, sessions: int) -> dict[str, Any]:
    """`tests/e2e`'s fleet, its worker nodes with room for `sessions` workers (the kind values
    request 250m CPU and 512Mi each; the session asks for its own CPU, too)."""
    the_fleet = real_fleet(name)
    for node in the_fleet["nodes"]:  # type: ignore[union-attr]
        if "worker" in node["name"]:
            node["cpu"] = str(max(8, sessions))
            node["memory"] = f"{max(32, sessions * 2)}Gi"
    return the_fleet


def _sh(cluster: Cluster, command: str, timeout: float = 600) -> str:
    env = {
        **cluster.env(),
        # placeholders: the local room accepts any token, and VideoSDK is never called
        "VIDEOSDK_API_KEY": "bench-placeholder-key",
        "VIDEOSDK_SECRET_KEY": "bench-placeholder-secret",
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`{command}` failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def _left(admin: Any) -> dict[str, int]:
    return {
        "sessions": len(admin.list("avatarsessions", NS)),
        "pods": len(admin.list("pods", NS)),
        "secrets": len(admin.list("secrets", NS)),
    }


def run(sessions: int) -> dict[str, Any]:
    if not _port_free(ROOM_PORT):
        raise RuntimeError(
            f"127.0.0.1:{ROOM_PORT} is taken: the local room's node port (the kind values) "
            "needs it; stop whatever listens there"
        )
    root = Path(tempfile.mkdtemp(prefix="bench-realnodes-"))
    name = f"realnodes-{os.getpid()}"
    fleet_file = root / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(_fleet(name, sessions)))
    cluster = Cluster(
        root / "cluster", bin_dir=binaries.bin_dir(REPO), fleet=fleet_file, die_with_parent=True
    )
    seen: dict[int, str] = {}
    cluster.start()
    try:
        startup_s = cluster.startup_seconds
        began = time.monotonic()
        commands = install_commands()
        for command in commands.install:
            _sh(cluster, command)
        for command in commands.upgrade:
            _sh(cluster, command.replace(MY_VALUES, KIND_VALUES))
        _sh(cluster, "kubectl -n avatar-system rollout status deployment/avatar-operator-room")
        install_s = time.monotonic() - began
        agent = int(cluster.processes["nodeagent"]["pid"])
        admin = cluster.rest()
        time.sleep(1.0)
        rss_before = _rss_kib(agent)
        workers_before = len(processes.workers_under(agent))

        created: dict[str, float] = {}

        def create(index: int) -> None:
            body = _session(index)
            admin.create(body)
            created[body["metadata"]["name"]] = time.monotonic()

        with ThreadPoolExecutor(sessions) as pool:
            list(pool.map(create, range(sessions)))
        joined: dict[str, float] = {}
        pod_seen: dict[str, float] = {}
        pod_running: dict[str, float] = {}
        failed: dict[str, Any] = {}
        join_timeout = SESSION["spec"]["lifetime"]["joinTimeoutSeconds"] + 30
        deadline = time.monotonic() + join_timeout
        while len(joined) + len(failed) < sessions and time.monotonic() < deadline:
            now = time.monotonic()
            for session in admin.list("avatarsessions", NS):
                key = session["metadata"]["name"]
                phase = (session.get("status") or {}).get("phase")
                if key in created and key not in joined and phase == "Joined":
                    joined[key] = now - created[key]
                elif phase in ("Ended", "Failed") and key not in joined:
                    failed[key] = session.get("status")
            for pod in admin.list("pods", NS, labelSelector=MANAGED):
                key = pod["metadata"]["name"]
                pod_seen.setdefault(key, now)
                if key not in pod_running and _running(pod):
                    pod_running[key] = now - pod_seen[key]
            seen.update(processes.workers_under(agent))
            time.sleep(0.05)
        if len(joined) < sessions:
            raise RuntimeError(
                f"{len(joined)} of {sessions} sessions Joined within {join_timeout} s; "
                f"failed: {json.dumps(failed)[:2000]}"
            )
        time.sleep(1.0)
        rss_after = _rss_kib(agent)
        seen.update(processes.workers_under(agent))
        worker_rss = [_rss_kib(pid) for pid in processes.workers_under(agent)]

        ended_at = time.monotonic()
        for index in range(sessions):
            room = _session(index)["spec"]["roomId"]
            request = urllib.request.Request(f"{ROOM_HTTP}/rooms/{room}/end", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, f"ending {room}: {response.status}"
        gone_deadline = time.monotonic() + 180
        while any(_left(admin).values()):
            if time.monotonic() > gone_deadline:
                raise RuntimeError(f"not gone 180 s after the rooms ended: {_left(admin)}")
            time.sleep(0.05)
        end_to_gone = time.monotonic() - ended_at
        time.sleep(30)
        left = _left(admin)
        leaked_processes = len(processes.alive(seen))
        times = list(joined.values())
        starts = list(pod_running.values())
        result: dict[str, Any] = {
            "sessions": sessions,
            "joined": len(joined),
            "create_to_joined_p50_ms": round(statistics.median(times) * 1000, 1),
            "create_to_joined_p95_ms": round(_percentile(times, 0.95) * 1000, 1),
            "create_to_joined_max_ms": round(max(times) * 1000, 1),
            "nodeagent": {
                "pods": len(starts),
                "pod_start_p50_ms": round(statistics.median(starts) * 1000, 1),
                "pod_start_p95_ms": round(_percentile(starts, 0.95) * 1000, 1),
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_per_pod_kib": round((rss_after - rss_before) / sessions, 1),
                "worker_rss_p50_kib": statistics.median(worker_rss) if worker_rss else None,
            },
            "end_to_gone_ms": round(end_to_gone * 1000, 1),
            "leaked_objects": sum(left.values()),
            "leaked_by_kind": left,
            "leaked_processes": leaked_processes,
            "worker_processes_seen": len(seen),
            "worker_processes_before": workers_before,
            "workers_cpu_only": True,
            "cpu_cores": os.cpu_count(),
            "cluster_startup_s": round(startup_s or 0.0, 1),
            "install_and_upgrade_s": round(install_s, 1),
        }
    finally:
        cluster.stop()
    result["leaked_processes_after_stop"] = len(processes.alive(seen))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions created at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "the node agent's mount and network namespaces need root"}))
        return
    print(json.dumps(run(args.sessions)))


if __name__ == "__main__":
    main()
