"""Benchmark: N AvatarSessions created at once, driven to Joined and then to Ended.

How it measures:

- The emulated cluster (`avatar_devtools.localcluster`: API server + simulated kubelet playing
  Pod phases) runs in this process; the operator runs in its own process exactly as in a Pod
  (`python -m avatar_operator`, Lease-based leader election on, status relay on), so the two
  compete for the machine's cores as an API server and an operator would.
- The sessions are created through the API (HTTP, 64 in flight) as fast as it takes them.
- A simulated worker per session: once its Pod is Running, it reports `Joined` through the
  operator's status relay with the credential from its Secret (as the real worker does); later
  it reports `Ended`. Sessions are deleted by the operator after `ttlSecondsAfterFinished: 0`.
- `create_to_pod_*`: from the create request's answer to the Pod's creation in the store.
  `create_to_joined_p99_ms`: to the session's status saying Joined (it includes the kubelet's
  simulated start and the worker's report).
- `api_writes_per_session`: every write request (POST, PUT, PATCH, DELETE) the API server
  received from the operator from the first create until the operator has gone quiet after the
  last Joined (no write for 1 s: the operator posts Events after the Pods it starts, so they can
  land after Joined and still belong to the start), the benchmark's own creates and the Lease
  renewals excluded, divided by N. `writes_by_kind` says what they were.
- `leaked_objects`: worker Pods, token Secrets and sessions still present 10 s after the last
  Ended report, plus GPU reservations the operator still reports in /metrics.
- `operator_rss_mb`: the operator process's peak resident memory (VmHWM).
- `operator_cpu_s`, `cluster_cpu_s`: CPU seconds of the operator process and of this process
  (API server, kubelet, simulated workers) over the same window as the writes.
- `seconds_to_all_created`: how long the API server took to accept the N creates.

Prints one JSON object. `--sessions N` (default 500).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from avatar_devtools.localcluster import cluster, fleet, resources
from avatar_devtools.ports import free_port
from avatar_sdk import api, crd

NS = "bench"
OPERATOR_NS = "avatar-system"
FLEET = {
    "kubelet": {"mode": "phases", "startSeconds": 0.05, "podGCSeconds": 0.5},
    "nodes": [
        # an 8×H200 server's CPU and memory: placement caps a node at the workers they hold
        {
            "name": "h200",
            "count": 8,
            "gpus": 8,
            "product": "NVIDIA-H200",
            "memoryMiB": 143771,
            "cpu": "192",
            "memory": "2Ti",
        }
    ],
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_kind(method: str, path: str) -> str | None:
    """What a write request touched; None for the Lease (not per-session work)."""
    parts = [p for p in path.partition("?")[0].split("/") if p]
    if "leases" in parts:
        return None
    if method == "POST" and parts[-1] == api.PLURAL:
        return None  # the benchmark's own creates
    if api.PLURAL in parts:
        return f"{method} avatarsession{'/status' if parts[-1] == 'status' else ''}"
    for plural in ("pods", "secrets", "events"):
        if plural in parts:
            return f"{method} {plural}"
    return f"{method} {'/'.join(parts[-2:])}"


class Bench:
    def __init__(self, sessions: int) -> None:
        self.n = sessions
        self.created_at: dict[str, float] = {}
        self.pod_at: dict[str, float] = {}
        self.joined_at: dict[str, float] = {}
        self.writes: Counter[str] = Counter()
        self.last_write_at = 0.0
        self.counting = False
        self.running: asyncio.Queue[str] = asyncio.Queue()
        self.reported: set[str] = set()
        self.all_joined = asyncio.Event()

    def on_request(self, method: str, path: str) -> None:
        if self.counting and method in WRITE_METHODS:
            kind = write_kind(method, path)
            if kind is not None:
                self.writes[kind] += 1
                self.last_write_at = time.perf_counter()

    def on_pod(self, event: Any) -> None:
        obj = event.record.obj
        name = obj["metadata"]["name"].removesuffix("-worker")
        now = time.perf_counter()
        self.pod_at.setdefault(name, now)
        if (obj.get("status") or {}).get("phase") == "Running" and name not in self.reported:
            self.reported.add(name)
            self.running.put_nowait(name)

    def on_session(self, event: Any) -> None:
        obj = event.record.obj
        if (obj.get("status") or {}).get("phase") == "Joined":
            self.joined_at.setdefault(obj["metadata"]["name"], time.perf_counter())
            if len(self.joined_at) >= self.n:
                self.all_joined.set()


async def run(n: int) -> dict[str, Any]:
    bench = Bench(n)
    workdir = Path(tempfile.mkdtemp(prefix="operator-burst-"))
    local = cluster.LocalCluster(fleet_spec=fleet.parse(FLEET), workdir=workdir)
    local.server.on_request = bench.on_request
    await local.start()
    local.apply(crd.custom_resource_definition())
    for obj in cluster.operator_prerequisites(
        OPERATOR_NS, [NS], api_key="bench-key", secret=secrets.token_hex(32)
    ):
        local.apply(obj)
    kubeconfig = local.write_kubeconfig(workdir / "kubeconfig")
    sessions_info = local.store.lookup(api.GROUP, api.VERSION, api.PLURAL)
    local.store.add_listener(resources.PODS, bench.on_pod)
    local.store.add_listener(sessions_info, bench.on_session)

    port = free_port()
    operator = spawn_operator(kubeconfig, operator_env(port))
    relay = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, relay, operator)
            await local.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}", within=30)

            reporters = [
                asyncio.create_task(report_joined(bench, local, http, relay)) for _ in range(16)
            ]
            bench.counting = True
            cpu_before = (cpu_seconds(), cpu_seconds(operator.pid))
            started = time.perf_counter()
            await create_all(bench, http, local.url)
            created_all = time.perf_counter()
            try:
                await asyncio.wait_for(bench.all_joined.wait(), 30)
            except TimeoutError:
                for record in local.store.list(sessions_info, NS).records[:3]:
                    sys.stderr.write(json.dumps(record.obj.get("status")) + "\n")
                raise RuntimeError(
                    f"only {len(bench.joined_at)} of {n} joined ({len(bench.pod_at)} pods); "
                    f"see {workdir / 'operator.log'}"
                ) from None
            joined_all = time.perf_counter()
            async with asyncio.timeout(30):  # the writes that follow Joined (deferred Events)
                while True:
                    quiet_for = time.perf_counter() - bench.last_write_at
                    if quiet_for >= 1.0:
                        break
                    await asyncio.sleep(1.0 - quiet_for)
            cpu_after = (cpu_seconds(), cpu_seconds(operator.pid))
            bench.counting = False
            writes = dict(bench.writes)
            for task in reporters:
                task.cancel()

            names = list(bench.created_at)
            sem = asyncio.Semaphore(32)

            async def end(name: str) -> None:
                async with sem:
                    await report(
                        http, relay, local, name, {"phase": "Ended", "endReason": "RoomEnded"}
                    )

            await asyncio.gather(*(end(name) for name in names))
            ended = time.perf_counter()
            await asyncio.sleep(10)
            leaked = leftovers(local)
            async with http.get(f"{relay}/metrics") as response:
                metrics = await response.text()
            reserved = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("avatar_gpu_vram_reserved_mib")
            )
            rss = peak_rss_mb(operator.pid)
    finally:
        stop_process(operator)
        await local.aclose()

    to_pod = [
        (bench.pod_at[k] - bench.created_at[k]) * 1000
        for k in bench.created_at
        if k in bench.pod_at
    ]
    to_joined = [
        (bench.joined_at[k] - bench.created_at[k]) * 1000
        for k in bench.created_at
        if k in bench.joined_at
    ]
    total_writes = sum(writes.values())
    return {
        "sessions": n,
        "seconds_total": round(ended - started, 2),
        "seconds_to_all_created": round(created_all - started, 2),
        "seconds_to_all_joined": round(joined_all - started, 2),
        "create_to_pod_p50_ms": round(statistics.median(to_pod), 1),
        "create_to_pod_p99_ms": round(percentile(to_pod, 0.99), 1),
        "create_to_joined_p99_ms": round(percentile(to_joined, 0.99), 1),
        "api_writes_per_session": round(total_writes / n, 2),
        "writes_by_kind": {k: round(v / n, 2) for k, v in sorted(writes.items())},
        "leaked_objects": leaked + (1 if reserved else 0),
        "operator_rss_mb": round(rss, 1),
        # CPU seconds spent from the first create until the writes stopped (as for the writes)
        "operator_cpu_s": round(cpu_after[1] - cpu_before[1], 2),
        "cluster_cpu_s": round(cpu_after[0] - cpu_before[0], 2),
    }


def operator_env(port: int, **settings: str) -> dict[str, str]:
    """The operator process's environment: watching NS, its HTTP port (relay, /readyz) on
    `port`, and any further AVATAR_OPERATOR_<NAME> settings given as name=value."""
    return {
        **os.environ,
        "AVATAR_OPERATOR_NAMESPACES": NS,
        "AVATAR_OPERATOR_OPERATOR_NAMESPACE": OPERATOR_NS,
        "AVATAR_OPERATOR_STATUS_RELAY_KEY": secrets.token_hex(32),
        "AVATAR_OPERATOR_HTTP_PORT": str(port),
        "AVATAR_OPERATOR_STATUS_URL": f"http://127.0.0.1:{port}",
        "AVATAR_OPERATOR_IDENTITY": "bench-operator",
        **{f"AVATAR_OPERATOR_{name.upper()}": value for name, value in settings.items()},
    }


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not gone within 15 s."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


def spawn_operator(kubeconfig: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "avatar_operator", "--kubeconfig", str(kubeconfig)]
    log = (kubeconfig.parent / "operator.log").open("wb")  # a file: a full pipe would block it
    level = os.environ.get("BENCH_OPERATOR_LOG", "WARNING")
    return subprocess.Popen(
        [*command, "--log-level", level], env=env, stdout=log, stderr=subprocess.STDOUT
    )


async def wait_ready(
    http: aiohttp.ClientSession, relay: str, operator: subprocess.Popen[bytes]
) -> None:
    async with asyncio.timeout(60):
        while True:
            if operator.poll() is not None:
                raise RuntimeError("the operator exited: see operator.log in the work dir")
            try:
                async with http.get(f"{relay}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def create_all(bench: Bench, http: aiohttp.ClientSession, url: str) -> None:
    path = f"{url}/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}"
    await create_sessions(http, path, bench.n, bench.created_at, in_flight=64)


async def create_sessions(
    http: aiohttp.ClientSession,
    path: str,
    count: int,
    created_at: dict[str, float],
    *,
    in_flight: int,
) -> None:
    """`count` sessions s-0000… (2 GiB each, deleted once finished) POSTed to `path`, at most
    `in_flight` at a time; each one's answer time (perf_counter) into `created_at`."""
    sem = asyncio.Semaphore(in_flight)

    async def create(i: int) -> None:
        name = f"s-{i:04d}"
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "roomId": f"room-{i}",
                "resources": {"vramMiB": 2048},
                "lifetime": {"ttlSecondsAfterFinished": 0},
            },
        }
        async with sem, http.post(path, json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"create {name}: {response.status} {await response.text()}")
            created_at[name] = time.perf_counter()

    await asyncio.gather(*(create(i) for i in range(count)))


async def report(
    http: aiohttp.ClientSession,
    relay: str,
    local: cluster.LocalCluster,
    name: str,
    status: dict[str, Any],
) -> None:
    secret = local.store.find(resources.SECRETS, NS, f"{name}-token")
    if secret is None:
        return
    token = base64.b64decode(secret.obj["data"]["status-token"]).decode()
    url = f"{relay}/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}/{name}/status"
    for _ in range(50):
        async with http.patch(
            url, json={"status": status}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            if response.status in (200, 409):
                return
        await asyncio.sleep(0.05)


async def report_joined(
    bench: Bench, local: cluster.LocalCluster, http: aiohttp.ClientSession, relay: str
) -> None:
    while True:
        name = await bench.running.get()
        await report(http, relay, local, name, {"phase": "Joined"})


def leftovers(local: cluster.LocalCluster) -> int:
    sessions_info = local.store.lookup(api.GROUP, api.VERSION, api.PLURAL)
    count = 0
    for info in (resources.PODS, resources.SECRETS, sessions_info):
        count += len(local.store.list(info, NS).records)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.sessions))))


if __name__ == "__main__":
    main()
