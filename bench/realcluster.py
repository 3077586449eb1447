"""Benchmark: the real control plane beside the emulator, in one run.

What it measures, and how:

- `build`: `cold_seconds`, the time the build that filled the binary cache took (recorded by
  `hack/kube/build.sh` in the cache as `build-seconds`; null when that build predates the
  record), and `warm_seconds`, a build now (a cache hit).
- `startup_seconds`: `Cluster.start()` to ready — etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler, and the node agent with every node Ready.
- A burst of N sessions (default 100) on the real API server, with the operator as its own
  process (`python -m avatar_operator`, leader election on) holding only a token of the chart's
  ServiceAccount (the chart's RBAC rendered by `helm template`): the sessions are created through
  the API (HTTPS, 32 in flight); a simulated worker per session reports `Joined` through the
  operator's relay once its Pod is Running (with the credential from its Secret, as the worker
  does), later `Ended`; `ttlSecondsAfterFinished: 0` has the operator delete them.
  - `create_to_pod_p50_ms` / `_p99_ms`: from the create request's answer to the Pod's ADDED
    event on a watch of this process; `create_to_joined_p99_ms`: to the session's Joined.
  - `api_writes_per_session`: writes (create, update, patch, delete) made by the operator's
    ServiceAccount, counted from kube-apiserver's own audit log, from the first create until
    the operator has gone quiet after the last Joined (no write for 2 s), the Lease excluded,
    divided by N; `writes_by_kind` says what they were.
  - `server_write_ms`: kube-apiserver's own time (request received → response complete) per
    write of the operator's, p50/p99 by kind, from the same audit log.
  - `leaked_objects`: worker Pods, token Secrets and sessions left 20 s after the last Ended
    report, plus GPU reservations the operator still reports in /metrics.
- `emulator`: the same burst on the emulated cluster in the same run (`operator_burst.run`).

Prints one JSON object. `--sessions N` (default 100); `--no-emulator` skips the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

import operator_burst
from avatar_devtools.realcluster import Cluster, binaries, chartidentity
from avatar_devtools.realcluster.fixtures import apply_crds
from avatar_sdk import api

REPO = Path(__file__).resolve().parents[1]
NS = "bench"
OPERATOR_NS = "bench-system"
RELEASE = "avatar-operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def build_seconds() -> dict[str, float | None]:
    started = time.perf_counter()
    directory = binaries.bin_dir(REPO)
    warm = time.perf_counter() - started
    recorded = directory.parent / "build-seconds"
    cold = float(recorded.read_text()) if recorded.exists() else None
    return {"cold_seconds": cold, "warm_seconds": round(warm, 2)}


class Burst:
    def __init__(self, cluster: Cluster, n: int, relay: str) -> None:
        self.cluster = cluster
        self.n = n
        self.relay = relay
        self.created_at: dict[str, float] = {}
        self.pod_at: dict[str, float] = {}
        self.joined_at: dict[str, float] = {}
        self.running: asyncio.Queue[str] = asyncio.Queue()
        self.reported: set[str] = set()
        self.all_joined = asyncio.Event()
        self.refused: Counter[str] = Counter()  # reports the relay never took, by its answer
        context = ssl.create_default_context(cafile=str(cluster.pki.path("ca.crt")))
        context.load_cert_chain(
            str(cluster.pki.path("admin.crt")), str(cluster.pki.path("admin.key"))
        )
        self.ssl = context

    def url(self, plural: str, name: str = "") -> str:
        prefix = f"/apis/{api.GROUP}/{api.VERSION}" if plural == api.PLURAL else "/api/v1"
        return f"{self.cluster.server}{prefix}/namespaces/{NS}/{plural}" + (
            f"/{name}" if name else ""
        )

    async def watch(self, http: aiohttp.ClientSession, plural: str, handle: Any) -> None:
        async with http.get(
            self.url(plural),
            params={"watch": "1", "resourceVersion": "0"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    handle(event["type"], event["object"])

    def on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"].removesuffix("-worker")
        self.pod_at.setdefault(name, time.perf_counter())
        phase = (obj.get("status") or {}).get("phase")
        if kind != "DELETED" and phase == "Running" and name not in self.reported:
            self.reported.add(name)
            self.running.put_nowait(name)

    def on_session(self, kind: str, obj: dict[str, Any]) -> None:
        if (obj.get("status") or {}).get("phase") == "Joined":
            self.joined_at.setdefault(obj["metadata"]["name"], time.perf_counter())
            if len(self.joined_at) >= self.n:
                self.all_joined.set()

    async def create_all(self, http: aiohttp.ClientSession) -> None:
        await operator_burst.create_sessions(
            http, self.url(api.PLURAL), self.n, self.created_at, in_flight=32
        )

    async def report(self, http: aiohttp.ClientSession, name: str, status: dict[str, Any]) -> None:
        """As the worker: its credential from its Secret, then the report, retried (a worker
        retries a refused report) for up to 10 s; what the relay last said is kept."""
        answer = "no Secret"
        for _ in range(200):
            async with http.get(self.url("secrets", f"{name}-token")) as response:
                if response.status == 200:
                    secret = await response.json()
                    break
            await asyncio.sleep(0.05)
        else:
            self.refused[answer] += 1
            return
        token = base64.b64decode(secret["data"]["status-token"]).decode()
        path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}/{name}/status"
        for _ in range(200):
            try:
                async with http.patch(
                    self.relay + path,
                    json={"status": status},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    if response.status == 200:
                        return
                    answer = f"{response.status} {(await response.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as error:  # a worker retries these too
                answer = type(error).__name__
            await asyncio.sleep(0.05)
        self.refused[answer] += 1

    async def report_joined(self, http: aiohttp.ClientSession) -> None:
        while True:
            name = await self.running.get()
            await self.report(http, name, {"phase": "Joined"})


def operator_writes(audit_log: Path, user: str, since: float, until: float) -> Counter[str]:
    """The writes `user` made between two wall-clock times, by verb and resource."""
    return Counter({k: len(v) for k, v in write_latencies(audit_log, user, since, until).items()})


def write_latencies(
    audit_log: Path, user: str, since: float, until: float
) -> dict[str, list[float]]:
    """kube-apiserver's own time (request received → response complete, ms) for each write
    `user` made between two wall-clock times, by verb and resource."""
    writes: dict[str, list[float]] = {}
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event["user"]["username"] != user:
            continue
        if event["verb"] not in WRITE_VERBS:
            continue
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "leases":
            continue
        stamp = _epoch(event["requestReceivedTimestamp"])
        if not since <= stamp <= until:
            continue
        kind = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        took = (_epoch(event["stageTimestamp"]) - stamp) * 1000
        writes.setdefault(f"{event['verb']} {kind}", []).append(took)
    return writes


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def real_burst(cluster: Cluster, n: int, work: Path) -> dict[str, Any]:
    admin = cluster.rest()
    for obj in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "videosdk-credentials", "namespace": OPERATOR_NS},
            "stringData": {"apiKey": "bench-key", "secret": "b" * 64},
        },
    ):
        admin.create(obj)
    chartidentity.apply_chart_rbac(
        cluster,
        release=RELEASE,
        namespace=OPERATOR_NS,
        values={"videosdk.existingSecret": "videosdk-credentials", "watchNamespaces[0]": NS},
    )
    kubeconfig = chartidentity.service_account_kubeconfig(
        cluster, OPERATOR_NS, RELEASE, work / "operator.kubeconfig"
    )
    port = operator_burst.free_port()
    env = operator_burst.operator_env(port)
    env["AVATAR_OPERATOR_OPERATOR_NAMESPACE"] = OPERATOR_NS
    operator = operator_burst.spawn_operator(kubeconfig, env)
    relay = f"http://127.0.0.1:{port}"
    burst = Burst(cluster, n, relay)
    user = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"
    try:
        connector = aiohttp.TCPConnector(ssl=burst.ssl, limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            await operator_burst.wait_ready(http, relay, operator)
            watches = [
                asyncio.create_task(burst.watch(http, "pods", burst.on_pod)),
                asyncio.create_task(burst.watch(http, api.PLURAL, burst.on_session)),
            ]
            reporters = [asyncio.create_task(burst.report_joined(http)) for _ in range(16)]
            await asyncio.sleep(1.0)  # the watches are open
            since = time.time()
            started = time.perf_counter()
            await burst.create_all(http)
            created_all = time.perf_counter()
            try:
                await asyncio.wait_for(burst.all_joined.wait(), 120)
            except TimeoutError:
                raise RuntimeError(
                    f"only {len(burst.joined_at)} of {n} joined ({len(burst.pod_at)} pods, "
                    f"{len(burst.reported)} Running, {burst.running.qsize()} not yet reported; "
                    f"refused: {dict(burst.refused)}); "
                    f"see {work / 'operator.log'}"
                ) from None
            joined_all = time.perf_counter()
            # the writes that follow Joined (deferred Events): until 2 s without one
            until = time.time()
            for _ in range(30):
                await asyncio.sleep(2.0)
                now = time.time()
                if not operator_writes(cluster.audit_log, user, until, now):
                    break
                until = now
            latencies = write_latencies(cluster.audit_log, user, since, until)
            writes = Counter({k: len(v) for k, v in latencies.items()})
            for task in reporters:
                task.cancel()
            sem = asyncio.Semaphore(32)

            async def end(name: str) -> None:
                async with sem:
                    await burst.report(http, name, {"phase": "Ended", "endReason": "RoomEnded"})

            await asyncio.gather(*(end(name) for name in burst.created_at))
            ended = time.perf_counter()
            await asyncio.sleep(20)
            leaked = sum(len(admin.list(p, NS)) for p in ("pods", "secrets", api.PLURAL))
            async with http.get(f"{relay}/metrics") as response:
                metrics = await response.text()
            reserved = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("avatar_gpu_vram_reserved_mib")
            )
            for task in watches:
                task.cancel()
            rss = operator_burst.peak_rss_mb(operator.pid)
    finally:
        operator_burst.stop_process(operator)
    to_pod = [
        (burst.pod_at[k] - t) * 1000 for k, t in burst.created_at.items() if k in burst.pod_at
    ]
    to_joined = [
        (burst.joined_at[k] - t) * 1000 for k, t in burst.created_at.items() if k in burst.joined_at
    ]
    total = sum(writes.values())
    return {
        "sessions": n,
        "seconds_total": round(ended - started, 2),
        "seconds_to_all_created": round(created_all - started, 2),
        "seconds_to_all_joined": round(joined_all - started, 2),
        "create_to_pod_p50_ms": round(statistics.median(to_pod), 1),
        "create_to_pod_p99_ms": round(operator_burst.percentile(to_pod, 0.99), 1),
        "create_to_joined_p99_ms": round(operator_burst.percentile(to_joined, 0.99), 1),
        "api_writes_per_session": round(total / n, 2),
        "writes_by_kind": {k: round(v / n, 2) for k, v in sorted(writes.items())},
        # kube-apiserver's own time per write of the operator's (its audit log), ms
        "server_write_ms": {
            k: {
                "p50": round(statistics.median(v), 1),
                "p99": round(operator_burst.percentile(v, 0.99), 1),
            }
            for k, v in sorted(latencies.items())
        },
        "leaked_objects": leaked + (1 if reserved else 0),
        "operator_rss_mb": round(rss, 1),
    }


def fleet_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump(operator_burst.FLEET))
    return path


KEYS = (
    "create_to_pod_p50_ms",
    "create_to_pod_p99_ms",
    "create_to_joined_p99_ms",
    "api_writes_per_session",
    "writes_by_kind",
    "leaked_objects",
    "seconds_to_all_created",
    "seconds_to_all_joined",
    "operator_rss_mb",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--no-emulator", action="store_true")
    args = parser.parse_args()
    build = build_seconds()
    work = Path(tempfile.mkdtemp(prefix="bench-realcluster-"))
    cluster = Cluster(
        work / "cluster",
        bin_dir=binaries.bin_dir(REPO),
        fleet=fleet_file(work / "fleet.yaml"),
        die_with_parent=True,
        audit=True,
    )
    with cluster:
        apply_crds(cluster)  # every CRD of crds/, each Established
        real = asyncio.run(real_burst(cluster, args.sessions, work))
        version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    result: dict[str, Any] = {
        "kubernetes": version["gitVersion"],
        "build": build,
        "startup_seconds": round(cluster.startup_seconds or 0.0, 2),
        "startup_by_component": {k: round(v, 2) for k, v in cluster.timings.items()},
        **{k: real[k] for k in ("sessions", *KEYS, "server_write_ms")},
    }
    if not args.no_emulator:
        emulated = asyncio.run(operator_burst.run(args.sessions))
        result["emulator"] = {k: emulated[k] for k in KEYS}
        result["real_over_emulator_create_to_pod_p50"] = round(
            real["create_to_pod_p50_ms"] / emulated["create_to_pod_p50_ms"], 2
        )
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
