"""The benchmark replays a trace file and prints exactly one JSON object with the issue's keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FIGURES = {
    "sessions",
    "rejected",
    "peak_live_vram_mib",
    "packing_efficiency",
    "nodes_used",
    "lower_bound_nodes",
    "node_ratio",
    "vram_time_efficiency",
    "node_time_ratio",
    "place_p50_us",
    "place_p99_us",
}


def test_bench_replays_a_trace_file_into_one_json_object() -> None:
    done = subprocess.run(
        [sys.executable, "bench/placement.py", "--trace", "bench/traces/small.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) >= FIGURES
    assert set(result["baselines"]) >= {"first_fit", "spread"}
    for figures in (result, *result["baselines"].values()):
        assert set(figures) >= FIGURES
        assert figures["sessions"] == 300 and figures["rejected"] == 0
        assert 0 < figures["packing_efficiency"] <= 1
        assert figures["nodes_used"] >= figures["lower_bound_nodes"] >= 1
