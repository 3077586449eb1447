"""Replay a churn trace through the placement engine; print one JSON object.

    python bench/placement.py [--trace FILE] [--seed N] [--write-trace FILE]

Every policy runs through the real `avatar_sdk.placement.engine.Engine` (inventory parsing,
eligibility, ledger, fleet index, queue), differing only in `Settings.strategy`: the ranked
policy the operator uses, and the baselines — `first_fit` (first GPU that fits, nodes in the
order the trace lists them), `spread` (the node with the largest share of free VRAM, its
emptiest GPU: Kubernetes' default LeastAllocated) and `best_fit` (the simple node-aware policy:
best-fit GPU over the nodes in use, else open the biggest node). A session that does not fit on
arrival is counted in `rejected` and dropped (its departure is ignored), as the trace format says.

Figures (the issue's keys): at the moment of peak live VRAM, `packing_efficiency` = live VRAM /
VRAM of the GPUs holding at least one session, `lower_bound_nodes` = the fewest nodes (largest
VRAM first) whose VRAM covers the live VRAM, `node_ratio` = nodes_used / lower_bound_nodes; over
the whole trace, `vram_time_efficiency` = ∫ live VRAM dt / ∫ VRAM of occupied GPUs dt and
`node_time_ratio` = ∫ nodes used dt / ∫ lower_bound_nodes dt; `place_p50_us`/`place_p99_us`
time `Engine.place()` alone (wall clock; `place_p99_cpu_us` is its CPU time, which other
processes on a shared machine do not inflate). The bench keeps its own books of what is on each
GPU and fails if a placement ever over-commits one.

Without --trace it generates one day of churn, deterministic for a seed: arrivals follow a daily
cycle (night at 10% of the noon rate), sized for ~11,000 live sessions at noon; durations are
lognormal (mean 60 min, median 36 min), capped at 4 h (the default maxDuration); sizes are
log-uniform 0.5-20 GiB; the fleet is 176 nodes (40 of 8x141 GiB, 40 of 8x80, 48 of 4x48, 48 of
4x24), listed in a shuffled order (node names say nothing of their size), about 1.5 times the
peak load. `--cycle-hours 12` or `6` squeezes two or four load cycles into the day: load then
falls faster than the longest sessions end, which no policy that cannot move sessions can undo.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from avatar_sdk.placement import engine, inventory, policy

GIB = 1024  # MiB
FLEET = (  # (name, nodes, GPUs per node, GiB per GPU, product)
    ("h200", 40, 8, 141, "NVIDIA-H200"),
    ("h100", 40, 8, 80, "NVIDIA-H100-80GB-HBM3"),
    ("l40s", 48, 4, 48, "NVIDIA-L40S"),
    ("l4", 48, 4, 24, "NVIDIA-L4"),
)
BASELINES = {
    "first_fit": policy.Strategy.FIRST_FIT,
    "spread": policy.Strategy.SPREAD,
    "best_fit": policy.Strategy.BEST_FIT,
}


class TraceNode(NamedTuple):
    name: str
    labels: dict[str, str]
    gpus: int
    vram_mib: int


class Event(NamedTuple):
    t: float
    arrive: bool
    id: str
    vram_mib: int


class Trace(NamedTuple):
    nodes: list[TraceNode]
    events: list[Event]
    description: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# traces


def generate(
    seed: int = 1,
    *,
    hours: float = 24.0,
    cycle_hours: float = 24.0,
    peak_live: int = 11_000,
    mean_minutes: float = 60.0,
    sigma: float = 1.0,
    night: float = 0.1,
    max_hours: float = 4.0,
) -> Trace:
    """A deterministic churn trace (see the module docstring)."""
    rng = random.Random(seed)
    kinds = [kind for kind in FLEET for _ in range(kind[1])]
    rng.shuffle(kinds)
    nodes = [
        TraceNode(
            name=f"gpu-node-{i:03d}",
            labels={"nvidia.com/gpu.product": product, "pool": "avatars"},
            gpus=gpus,
            vram_mib=gib * GIB,
        )
        for i, (_, _, gpus, gib, product) in enumerate(kinds)
    ]
    horizon = hours * 3600.0
    cycle = cycle_hours * 3600.0
    mean = mean_minutes * 60.0
    mu = math.log(mean) - sigma * sigma / 2  # lognormal with this mean
    peak_rate = peak_live / mean
    lo, hi = math.log(512), math.log(20 * GIB)
    events: list[Event] = []
    t, n = 0.0, 0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= horizon:
            break
        rate = night + (1 - night) * (1 - math.cos(2 * math.pi * t / cycle)) / 2
        if rng.random() >= rate:
            continue  # thinning: a non-homogeneous Poisson process
        n += 1
        size = max(512, round(math.exp(rng.uniform(lo, hi)) / 128) * 128)
        duration = min(rng.lognormvariate(mu, sigma), max_hours * 3600.0)
        sid = f"s{n}"
        events.append(Event(round(t, 3), True, sid, size))
        if t + duration < horizon:
            events.append(Event(round(t + duration, 3), False, sid, size))
    events.sort(key=lambda e: (e.t, e.arrive))  # departures first at equal times
    description = {
        "generated": True,
        "seed": seed,
        "hours": hours,
        "cycle_hours": cycle_hours,
        "peak_live_target": peak_live,
        "mean_minutes": mean_minutes,
        "sigma": sigma,
        "night": night,
        "nodes": len(nodes),
    }
    return Trace(nodes, events, description)


def to_json(trace: Trace) -> dict[str, Any]:
    return {
        "nodes": [
            {"name": n.name, "labels": n.labels, "gpus": n.gpus, "vramMiB": n.vram_mib}
            for n in trace.nodes
        ],
        "events": [
            {"t": e.t, "op": "arrive" if e.arrive else "depart", "id": e.id, "vramMiB": e.vram_mib}
            for e in trace.events
        ],
    }


def from_json(data: dict[str, Any], path: str) -> Trace:
    nodes = [
        TraceNode(str(n["name"]), dict(n.get("labels") or {}), int(n["gpus"]), int(n["vramMiB"]))
        for n in data["nodes"]
    ]
    events = [
        Event(float(e["t"]), e["op"] == "arrive", str(e["id"]), int(e.get("vramMiB", 0)))
        for e in data["events"]
    ]
    return Trace(nodes, events, {"generated": False, "file": path, "nodes": len(nodes)})


def node_body(node: TraceNode) -> dict[str, Any]:
    """The Node object a trace node stands for (GFD labels, allocatable, Ready)."""
    labels = {
        inventory.LABEL_GPU_COUNT: str(node.gpus),
        inventory.LABEL_GPU_MEMORY: str(node.vram_mib),
        **node.labels,
    }
    return {
        "metadata": {"name": node.name, "labels": labels},
        "spec": {},
        "status": {
            "allocatable": {inventory.RESOURCE_GPU: str(node.gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


# ---------------------------------------------------------------------------------------------
# replay


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


def replay(trace: Trace, strategy: policy.Strategy) -> dict[str, Any]:
    """Run the trace through an Engine with `strategy`; the issue's figures."""
    now = [0.0]
    eng = engine.Engine(
        engine.Settings(
            strategy=strategy,
            # The trace's vramMiB is what sessions may use: no headroom, no extra overhead.
            inventory=inventory.InventorySettings(headroom_mib=0, overhead_mib=0),
        ),
        clock=lambda: now[0],
    )
    gpu_vram = {n.name: n.vram_mib for n in trace.nodes}
    for n in trace.nodes:
        eng.upsert_node(node_body(n))
    eng.rebuild([])

    prefix: list[int] = []
    total = 0
    for vram in sorted((n.gpus * n.vram_mib for n in trace.nodes), reverse=True):
        total += vram
        prefix.append(total)

    def lower_bound(live_mib: int) -> int:
        return 0 if live_mib <= 0 else bisect.bisect_left(prefix, live_mib) + 1

    gpu_used: dict[tuple[str, int], int] = {}  # MiB per occupied GPU (the bench's own books)
    gpu_sessions: dict[tuple[str, int], int] = {}
    node_sessions: dict[str, int] = {}
    where: dict[str, tuple[str, int, int]] = {}
    live = occupied = nodes_used = live_sessions = 0
    lb = 0
    peak: tuple[int, int, int, int, int] | None = None
    int_live = int_occupied = int_nodes = int_lb = 0.0
    last_t: float | None = None
    rejected = 0
    latencies: list[int] = []
    cpu_latencies: list[int] = []
    sessions = 0
    perf = time.perf_counter_ns
    cpu = time.thread_time_ns
    request_of: dict[int, policy.Request] = {}

    for event in trace.events:
        if last_t is not None and event.t > last_t:
            dt = event.t - last_t
            int_live += live * dt
            int_occupied += occupied * dt
            int_nodes += nodes_used * dt
            int_lb += lb * dt
        last_t = event.t
        now[0] = event.t
        if event.arrive:
            sessions += 1
            request = request_of.get(event.vram_mib)
            if request is None:
                request = request_of[event.vram_mib] = policy.Request(event.vram_mib)
            c0 = cpu()
            t0 = perf()
            decision = eng.place(event.id, request)
            t1 = perf()
            cpu_latencies.append(cpu() - c0)
            latencies.append(t1 - t0)
            placement = decision.reservation
            if placement is None:
                rejected += 1
                eng.release(event.id)  # rejected, not queued: the trace drops it
                continue
            key = (placement.node, placement.gpu)
            used = gpu_used.get(key, 0) + placement.vram_mib
            if used > gpu_vram[placement.node]:
                raise AssertionError(f"over-committed {key}: {used} MiB")
            gpu_used[key] = used
            count = gpu_sessions.get(key, 0)
            if count == 0:
                occupied += gpu_vram[placement.node]
            gpu_sessions[key] = count + 1
            if node_sessions.get(placement.node, 0) == 0:
                nodes_used += 1
            node_sessions[placement.node] = node_sessions.get(placement.node, 0) + 1
            where[event.id] = (placement.node, placement.gpu, event.vram_mib)
            live += event.vram_mib
            live_sessions += 1
            lb = lower_bound(live)
            if peak is None or live > peak[0]:
                peak = (live, occupied, nodes_used, lb, live_sessions)
        else:
            found = where.pop(event.id, None)
            if found is None:
                continue  # the departure of a rejected session
            node, gpu, vram = found
            released = eng.release(event.id)
            if released.reservation is None:
                raise AssertionError(f"{event.id} released twice")
            key = (node, gpu)
            gpu_used[key] -= released.reservation.vram_mib
            gpu_sessions[key] -= 1
            if gpu_sessions[key] == 0:
                occupied -= gpu_vram[node]
            node_sessions[node] -= 1
            if node_sessions[node] == 0:
                nodes_used -= 1
            live -= vram
            live_sessions -= 1
            lb = lower_bound(live)

    latencies.sort()
    cpu_latencies.sort()
    peak = peak or (0, 0, 0, 0, 0)
    return {
        "sessions": sessions,
        "rejected": rejected,
        "peak_live_vram_mib": peak[0],
        "packing_efficiency": round(peak[0] / peak[1], 4) if peak[1] else 0.0,
        "nodes_used": peak[2],
        "lower_bound_nodes": peak[3],
        "node_ratio": round(peak[2] / peak[3], 4) if peak[3] else 0.0,
        "vram_time_efficiency": round(int_live / int_occupied, 4) if int_occupied else 0.0,
        "node_time_ratio": round(int_nodes / int_lb, 4) if int_lb else 0.0,
        "place_p50_us": round(_percentile(latencies, 0.50) / 1000, 1),
        "place_p99_us": round(_percentile(latencies, 0.99) / 1000, 1),
        "place_p99_cpu_us": round(_percentile(cpu_latencies, 0.99) / 1000, 1),
        "peak_live_sessions": peak[4],
    }


_TRACE: Trace | None = None  # what forked workers replay


def _replay_baseline(name: str) -> dict[str, Any]:
    assert _TRACE is not None
    return replay(_TRACE, BASELINES[name])


def _replay_all(trace: Trace, names: list[str]) -> list[dict[str, Any]]:
    """The baselines, two at a time where the platform can fork (the bench must stay under two
    minutes on a 2-core machine); their latencies are then measured side by side."""
    global _TRACE
    if len(names) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [replay(trace, BASELINES[name]) for name in names]
    _TRACE = trace
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return pool.map(_replay_baseline, names, chunksize=1)
    finally:
        _TRACE = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", help="a trace JSON file (default: generate one)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated trace")
    parser.add_argument("--hours", type=float, default=24.0, help="length of the generated trace")
    parser.add_argument("--cycle-hours", type=float, default=24.0, help="period of its load cycle")
    parser.add_argument("--write-trace", help="also write the trace used to this file")
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="comma-separated baselines to run (default: all)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.trace:
        with open(args.trace, encoding="utf-8") as f:
            trace = from_json(json.load(f), args.trace)
    else:
        trace = generate(args.seed, hours=args.hours, cycle_hours=args.cycle_hours)
    # The trace is the bench's own data, not the engine's: keep the collector from rescanning
    # its hundreds of thousands of objects (collections during the replay still count).
    gc.collect()
    gc.freeze()
    if args.write_trace:
        with open(args.write_trace, "w", encoding="utf-8") as f:
            json.dump(to_json(trace), f)
    result: dict[str, Any] = {"policy": policy.Strategy.RANKED.value}
    result.update(replay(trace, policy.Strategy.RANKED))  # alone: its latencies are the figure
    names = [n for n in (b.strip() for b in args.baselines.split(",")) if n in BASELINES]
    result["baselines"] = dict(zip(names, _replay_all(trace, names), strict=True))
    result["trace"] = trace.description
    result["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
