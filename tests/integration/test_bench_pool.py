"""`bench/pool.py` on the emulated backend with tiny sizes: one JSON object with every key of
each part, warm sessions served warm, no double claim, nothing leaked. (Its figures are never
asserted: performance is the bench's to print, not a test's to judge.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = {
    "warm_joined_p95_ms",
    "cold_joined_p95_ms",
    "claim_p99_ms",
    "double_claims",
    "leaked_objects",
    "goals",
    "machine",
    "emulated",
}
SEQUENTIAL = {
    "warm_joined_p50_ms",
    "warm_joined_p95_ms",
    "warm_joined_p99_ms",
    "cold_joined_p50_ms",
    "cold_joined_p95_ms",
    "cold_joined_p99_ms",
    "warm_over_cold_p50",
    "refill_p50_ms",
    "refill_p95_ms",
    "served_warm",
    "served_cold",
    "double_claims",
    "leaked_objects",
}
BURST = {
    "create_to_starting_p50_ms",
    "create_to_starting_p95_ms",
    "create_to_starting_p99_ms",
    "served_warm",
    "served_cold",
    "double_claims",
    "claim_p99_ms",
    "api_writes_per_warm_session",
    "api_writes_per_session",
    "leaked_objects",
}
CHURN = {"operator_kills", "double_claims", "leaked_objects", "joined", "not_joined"}


def test_the_pool_bench_prints_every_key_with_no_double_claim_and_no_leak() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "bench/pool.py", "--backend", "emulated"),
            *("--pool", "1", "--sessions", "1"),
            *("--burst", "3", "--burst-pool", "1", "--churn", "2"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:]
    result = json.loads(lines[0])
    assert set(result) >= TOP
    emulated = result["emulated"]
    assert "failed" not in emulated, emulated.get("failed")
    sequential, burst, churn = emulated["sequential"], emulated["burst"], emulated["churn"]
    assert set(sequential) >= SEQUENTIAL
    assert set(burst) >= BURST
    assert set(churn) >= CHURN
    assert (sequential["served_warm"], sequential["served_cold"]) == (1, 0)
    assert (burst["served_warm"], burst["served_cold"]) == (1, 2)
    assert burst["api_writes_per_warm_session"] > 0
    assert churn["operator_kills"] >= 1
    assert result["double_claims"] == 0
    assert result["leaked_objects"] == 0, [part.get("leaks") for part in (sequential, burst, churn)]
    for value in (result["warm_joined_p95_ms"], result["cold_joined_p95_ms"]):
        assert isinstance(value, float) and value > 0
    assert result["machine"]["cores"] >= 1
