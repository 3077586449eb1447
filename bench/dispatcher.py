"""Benchmark: agents launching avatars through the operator's `POST /launch` (dispatcher-compat).

How it measures:

- The emulated cluster (API server + simulated kubelet playing Pod phases) runs in this
  process; the operator runs in its own process as in a Pod (`python -m avatar_operator`, Lease
  election on, status relay on, dispatcher on), as in `operator_burst.py`.
- `--launches N` stock `AvatarJoinInfo` requests (the body videosdk-agents' `AvatarAudioOut`
  posts, with a token shaped like its `generate_avatar_credentials`) are sent with 16 in flight,
  each for its own room, authenticated with the bearer token in the URL as a stock agent does.
- `launch_alone_p50_ms`: 20 launches one at a time first, from sending the request to its
  201, which the dispatcher answers once the operator has placed the session (Scheduled or
  later) — the answer a stock agent waits for.
- `launch_p50_ms`/`launch_p99_ms`: the same for the N launches 16 at a time.
  `launch_to_pod_p99_ms`: from sending to the worker Pod existing.
- `launch_joined_p50_ms`: the same with `?wait=joined`, for 20 launches whose simulated worker
  reports Joined through the relay as soon as its Pod is Running.
- `repeat_p50_ms`: a second POST for a room already launched (the idempotent path: 200, no write).
- `rejected_per_s`: how many unauthenticated requests a second it turns away (401, nothing read).
- `leaked_objects`: sessions, Pods, Secrets (the caller-token copies included) still there 10 s
  after every session reported Ended.

Prints one JSON object. `--launches N` (default 200).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from avatar_devtools.localcluster import cluster, fleet, resources
from avatar_sdk import api, crd
from operator_burst import (
    FLEET,
    NS,
    OPERATOR_NS,
    free_port,
    leftovers,
    operator_env,
    percentile,
    report,
    spawn_operator,
    stop_process,
    wait_ready,
)

IN_FLIGHT = 16


def join_info(room: str) -> dict[str, Any]:
    """videosdk-agents' AvatarJoinInfo as `asdict` makes it, with an agent-signed token."""
    participant = f"avatar_{secrets.token_hex(4)}"
    now = int(time.time())
    claims = {
        "apikey": "agent-key",
        "permissions": ["allow_join"],
        "version": 2,
        "iat": now,
        "exp": now + 3600,
        "participantId": participant,
    }
    token = jwt.encode(claims, "agent-secret-" + "a" * 32, algorithm="HS256")
    return {
        "room_name": room,
        "token": token,
        "participant_id": participant,
        "signaling_base_url": None,
    }


async def timed_post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with http.post(url, json=body) as response:
        text = await response.text()
        if response.status not in (200, 201):
            raise RuntimeError(f"launch {body['room_name']}: {response.status} {text}")
    return (time.perf_counter() - started) * 1000


async def run(n: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    local = cluster.LocalCluster(fleet_spec=fleet.parse(FLEET), workdir=workdir)
    await local.start()
    local.apply(crd.custom_resource_definition())
    for namespace in (OPERATOR_NS, NS):
        local.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubeconfig = local.write_kubeconfig(workdir / "kubeconfig")
    bearer = secrets.token_hex(32)
    (workdir / "dispatcher-token").write_text(bearer)

    pod_at: dict[str, float] = {}
    running: asyncio.Queue[str] = asyncio.Queue()

    def on_pod(event: Any) -> None:
        obj = event.record.obj
        name = obj["metadata"]["name"].removesuffix("-worker")
        pod_at.setdefault(name, time.perf_counter())
        if (obj.get("status") or {}).get("phase") == "Running":
            running.put_nowait(name)

    local.store.add_listener(resources.PODS, on_pod)

    port, launch_port = free_port(), free_port()
    env = operator_env(
        port,
        dispatcher_port=str(launch_port),
        dispatcher_token_file=str(workdir / "dispatcher-token"),
        dispatcher_max_sessions=str(n + 200),
        dispatcher_rate_per_minute="100000",
        dispatcher_session_template=json.dumps(
            {"resources": {"vramMiB": 2048}, "lifetime": {"ttlSecondsAfterFinished": 0}}
        ),
    )
    operator = spawn_operator(kubeconfig, env)
    relay = f"http://127.0.0.1:{port}"
    launch_url = f"http://avatar:{bearer}@127.0.0.1:{launch_port}/launch"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, relay, operator)
            await local.server.wait_for_watches(f"{api.PLURAL}.{api.GROUP}", within=30)

            async def joiner() -> None:
                while True:
                    await report(http, relay, local, await running.get(), {"phase": "Joined"})

            joiners = [asyncio.create_task(joiner()) for _ in range(4)]
            sem = asyncio.Semaphore(IN_FLIGHT)
            bodies = [join_info(f"room-{i:04d}") for i in range(n)]
            sent_at: dict[str, float] = {}

            async def launch(body: dict[str, Any], url: str = launch_url) -> float:
                async with sem:
                    name = api.session_name_for_room(body["room_name"], body["participant_id"])
                    sent_at[name] = time.perf_counter()
                    return await timed_post(http, url, body)

            # one at a time first: the latency an agent sees on a quiet cluster
            single = [await launch(join_info(f"single-{i}")) for i in range(20)]
            started = time.perf_counter()
            launches = await asyncio.gather(*(launch(b) for b in bodies))
            seconds = time.perf_counter() - started
            repeats = [await timed_post(http, launch_url, b) for b in bodies[:50]]
            joined = await asyncio.gather(
                *(launch(join_info(f"joined-{i}"), f"{launch_url}?wait=joined") for i in range(20))
            )

            # unauthenticated requests: turned away before the body is read
            anonymous = f"http://127.0.0.1:{launch_port}/launch"
            rejected = 0
            reject_started = time.perf_counter()
            while time.perf_counter() - reject_started < 2.0:
                async with http.post(anonymous, json=bodies[0]) as response:
                    assert response.status == 401, response.status
                    rejected += 1
            rejected_per_s = rejected / (time.perf_counter() - reject_started)
            for task in joiners:
                task.cancel()

            names = [
                r.obj["metadata"]["name"]
                for r in local.store.list(
                    local.store.lookup(api.GROUP, api.VERSION, api.PLURAL), NS
                ).records
            ]
            for name in names:
                await report(http, relay, local, name, {"phase": "Ended", "endReason": "RoomEnded"})
            await asyncio.sleep(10)
            leaked = leftovers(local)
    finally:
        stop_process(operator)
        await local.aclose()

    to_pod = [(pod_at[k] - sent_at[k]) * 1000 for k in sent_at if k in pod_at]
    return {
        "launch_alone_p50_ms": round(statistics.median(single), 1),
        "launches": n,
        "in_flight": IN_FLIGHT,
        "launches_per_s": round(n / seconds, 1),
        "launch_p50_ms": round(statistics.median(launches), 1),
        "launch_p99_ms": round(percentile(launches, 0.99), 1),
        "launch_to_pod_p99_ms": round(percentile(to_pod, 0.99), 1),
        "launch_joined_p50_ms": round(statistics.median(joined), 1),
        "repeat_p50_ms": round(statistics.median(repeats), 1),
        "rejected_per_s": round(rejected_per_s),
        "leaked_objects": leaked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--launches", type=int, default=200)
    args = parser.parse_args()
    if args.launches < 1:
        sys.exit("--launches must be at least 1")
    print(json.dumps(asyncio.run(run(args.launches))))


if __name__ == "__main__":
    main()
