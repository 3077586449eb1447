"""Benchmark the localcluster API server under a mixed create/patch/get/list/watch load.

How it measures (so that the figures mean something):

- The server runs in its own process (`python -m avatar_devtools.localcluster`), the client in
  this one (aiohttp, keep-alive connections), both on loopback. The server is one Python
  thread, so it uses at most one core: `server_cpu_cores` says how much of one core it used in
  the throughput phase, and `requests_per_server_cpu_s` is what it served per second of its own
  CPU time (its capacity on one dedicated core, whichever side was the bottleneck).
- Objects are AvatarSessions (the project's CRD, so every create and spec patch is pruned,
  defaulted and validated against the real schema), `OBJECTS` of them in `NAMESPACES`
  namespaces, created before the measured phases.
- The mix, in both phases: get 40 %, status merge patch 20 %, label merge patch 10 %,
  create 10 %, namespaced list with a label selector 10 % (about 1/5 of a namespace's 200),
  watch resume 10 % (a cluster-wide watch from 20 events back, timed to its first event,
  then closed). `WATCHERS` long-lived cluster-wide watches receive every change meanwhile.
- Throughput phase (`THROUGHPUT_S`, `CONCURRENCY` requests in flight, closed loop): gives
  `requests_per_s` and `watch_fanout_events_per_s` (events received by all long-lived watches
  together, per second).
- Latency phase (`LATENCY_S`, `LATENCY_CONCURRENCY` in flight): gives `p99_request_ms`,
  client-side, at a load the server is not saturated by. (At saturation a closed loop's
  latency is just the queue: `p99_at_saturation_ms` is reported for completeness.)

- `aiohttp_hello_world_cpu_us_per_request`: what a hello-world aiohttp server costs per request
  on this machine at this moment, measured in the same run: on a shared machine every CPU
  figure above moves with it, so compare `server_cpu_us_per_request` against it.

Prints one JSON object. Bounded: about 30 s on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from avatar_sdk import crd as sdk_crd

OBJECTS = 10_000
NAMESPACES = 50
CONCURRENCY = 32
LATENCY_CONCURRENCY = 2
WATCHERS = 8
THROUGHPUT_S = 8.0
LATENCY_S = 5.0
GROUP_PATH = "/apis/avatar-operator.dev/v1alpha1"


def _session(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"shard": str(random.randrange(5)), "app": "bench"},
        },
        "spec": {"roomId": f"room-{name}", "agentParticipantId": "agent-1"},
    }


# A hello-world aiohttp server: what one request costs this machine before any Kubernetes work.
_FLOOR_SERVER = """
import asyncio, sys
from aiohttp import web
async def hello(request):
    await request.read()
    return web.Response(body=b'{}', content_type="application/json")
async def main():
    runner = web.ServerRunner(web.Server(hello), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def aiohttp_floor_us() -> float:
    """Server CPU per request of a hello-world aiohttp server, in microseconds."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FLOOR_SERVER, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        port = int(await server.stdout.readline())
        requests = 3000
        async with aiohttp.ClientSession() as http:

            async def worker() -> None:
                for _ in range(requests // 16):
                    async with http.get(f"http://127.0.0.1:{port}/") as response:
                        await response.read()

            before = _cpu_seconds(server.pid)
            await asyncio.gather(*(worker() for _ in range(16)))
            return round((_cpu_seconds(server.pid) - before) / requests * 1e6, 1)
    finally:
        server.terminate()
        await server.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Load:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http
        self.latencies: list[float] = []
        self.errors = 0
        self.created = 0
        self.names: list[tuple[str, str]] = []
        self.latest_rv = 0
        self.watch_events = 0

    async def request(self, method: str, path: str, body: Any = None, ctype: str = "") -> Any:
        headers = {"Content-Type": ctype or "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        started = time.perf_counter()
        async with self.http.request(method, self.url + path, data=data, headers=headers) as rsp:
            payload = await rsp.read()
            if rsp.status >= 400:
                self.errors += 1
        self.latencies.append(time.perf_counter() - started)
        return json.loads(payload)

    async def create(self, index: int) -> None:
        namespace = f"bench-{index % NAMESPACES}"
        name = f"s-{index}"
        obj = await self.request(
            "POST", f"{GROUP_PATH}/namespaces/{namespace}/avatarsessions", _session(name, namespace)
        )
        if obj.get("kind") == "AvatarSession":
            self.names.append((namespace, name))
            self.latest_rv = max(self.latest_rv, int(obj["metadata"]["resourceVersion"]))

    async def watch_resume(self) -> None:
        since = max(self.latest_rv - 20, 1)
        path = f"{GROUP_PATH}/avatarsessions?watch=1&resourceVersion={since}&timeoutSeconds=5"
        started = time.perf_counter()
        async with self.http.get(self.url + path) as rsp:
            await rsp.content.readline()
        self.latencies.append(time.perf_counter() - started)

    async def one(self) -> None:
        roll = random.random()
        namespace, name = random.choice(self.names)
        item = f"{GROUP_PATH}/namespaces/{namespace}/avatarsessions/{name}"
        if roll < 0.40:
            await self.request("GET", item)
        elif roll < 0.60:
            patch = {"status": {"phase": "Joined", "fps": random.random() * 30}}
            obj = await self.request(
                "PATCH", item + "/status", patch, "application/merge-patch+json"
            )
            self.latest_rv = max(self.latest_rv, int(obj["metadata"]["resourceVersion"]))
        elif roll < 0.70:
            patch = {"metadata": {"labels": {"shard": str(random.randrange(5))}}}
            await self.request("PATCH", item, patch, "application/merge-patch+json")
        elif roll < 0.80:
            self.created += 1
            await self.create(OBJECTS + self.created)
        elif roll < 0.90:
            shard = random.randrange(5)
            await self.request(
                "GET",
                f"{GROUP_PATH}/namespaces/{namespace}/avatarsessions?labelSelector=shard%3D{shard}",
            )
        else:
            await self.watch_resume()

    async def follow(self, stop: asyncio.Event) -> None:
        path = f"{GROUP_PATH}/avatarsessions?watch=1&resourceVersion={self.latest_rv}"
        async with self.http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=None)) as rsp:
            while not stop.is_set():
                line = await rsp.content.readline()
                if not line:
                    return
                self.watch_events += 1


async def run(url: str, server_pid: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY + WATCHERS + 8)
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Load(url, http)
        for i in range(NAMESPACES):
            await load.request("POST", "/api/v1/namespaces", {"metadata": {"name": f"bench-{i}"}})
        queue = iter(range(OBJECTS))

        async def preload() -> None:
            for index in queue:
                await load.create(index)

        await asyncio.gather(*(preload() for _ in range(CONCURRENCY)))
        load.latencies.clear()
        load.errors = 0

        stop = asyncio.Event()
        followers = [asyncio.create_task(load.follow(stop)) for _ in range(WATCHERS)]
        await asyncio.sleep(0.2)

        async def phase(concurrency: int, seconds: float) -> tuple[float, list[float]]:
            load.latencies = []
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    await load.one()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started, sorted(load.latencies)

        cpu_before = _cpu_seconds(server_pid)
        events_before = load.watch_events
        elapsed, saturated = await phase(CONCURRENCY, THROUGHPUT_S)
        cpu = _cpu_seconds(server_pid) - cpu_before
        events = load.watch_events - events_before
        _, light = await phase(LATENCY_CONCURRENCY, LATENCY_S)
        stop.set()
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        floor = await aiohttp_floor_us()
        return {
            "requests_per_s": round(len(saturated) / elapsed, 1),
            "watch_fanout_events_per_s": round(events / elapsed, 1),
            "p99_request_ms": _ms(light, 0.99),
            "objects": len(load.names),
            "p50_request_ms": _ms(light, 0.50),
            "p99_at_saturation_ms": _ms(saturated, 0.99),
            "errors": load.errors,
            "server_cpu_cores": round(cpu / elapsed, 2),
            "requests_per_server_cpu_s": round(len(saturated) / cpu, 1) if cpu else None,
            "server_cpu_us_per_request": round(cpu / len(saturated) * 1e6, 1),
            "aiohttp_hello_world_cpu_us_per_request": floor,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "setup": (
                "server and client in separate processes on loopback; "
                f"{CONCURRENCY} in flight for throughput, {LATENCY_CONCURRENCY} for latency; "
                f"{WATCHERS} long-lived watches; {os.cpu_count()} CPUs"
            ),
        }


def _ms(sorted_latencies: list[float], quantile: float) -> float:
    index = min(int(len(sorted_latencies) * quantile), len(sorted_latencies) - 1)
    return round(sorted_latencies[index] * 1000, 2)


def main() -> int:
    random.seed(7)
    with tempfile.TemporaryDirectory(prefix="bench-localcluster-") as tmp:
        crd_path = Path(tmp) / "crd.yaml"
        crd_path.write_text(yaml.safe_dump(sdk_crd.custom_resource_definition()))
        kubeconfig = Path(tmp) / "kubeconfig"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "avatar_devtools.localcluster",
                "--port",
                "0",
                "--kubeconfig",
                str(kubeconfig),
                "--crd",
                str(crd_path),
                "--log-level",
                "ERROR",
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not kubeconfig.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the localcluster server did not start")
                time.sleep(0.05)
            config = yaml.safe_load(kubeconfig.read_text())
            url = config["clusters"][0]["cluster"]["server"]
            result = asyncio.run(run(url, server.pid))
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
