"""What the emulated API's CEL rules cost per AvatarSession write (the store alone, no HTTP).

Each case writes `N` sessions into a fresh store holding the project's CRD and times each call:

- `off`: the CRD's rules removed (what the emulator cost before it evaluated CEL);
- `burst`: sessions that differ only in room and VRAM, as a burst of agents makes them (one
  rule node, `resources`, sees a new value per session; the others hit the memo);
- `unique`: every rule node sees a new value (video size, node selector, VRAM all differ);
- `unique_no_memo`: the same with the memo emptied before each write (celpy's full cost).

For each: the median create, the median spec patch (`video.fps`: the `roomId` transition rule
and the `video` rule run) and the median status patch (no rule runs: only changed top-level
fields are validated). Prints one JSON object, in milliseconds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from avatar_devtools.localcluster import cel, resources, store
from avatar_sdk import crd as sdk_crd

N = 300


def _clear(node: cel.NodeRules) -> None:
    node.clear_memo()
    for child in [*node.properties.values(), node.items, node.values]:
        if child is not None:
            _clear(child)


def _session(i: int, case: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"roomId": f"room-{i}", "resources": {"vramMiB": 1024 + i}}
    if case.startswith("unique"):
        spec["video"] = {"width": 64 + 2 * (i % 900), "height": 64}
        spec["nodeSelector"] = {"nvidia.com/gpu.product": f"P{i}"}
    return {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": f"s{i}"},
        "spec": spec,
    }


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def run(case: str) -> dict[str, float]:
    db = store.Store()
    db.create(resources.CRDS, None, sdk_crd.custom_resource_definition())
    info = db.lookup("avatar-operator.dev", "v1alpha1", "avatarsessions")
    assert info.schema is not None
    rules = info.schema.rules
    if case == "off":
        rules.fields.clear()
        rules.root = None
    creates, spec_patches, status_patches = [], [], []
    for i in range(N):
        if case == "unique_no_memo":
            for node in rules.fields.values():
                _clear(node)
        started = time.perf_counter()
        db.create(info, "default", _session(i, case))
        creates.append(time.perf_counter() - started)
    for i in range(N):
        started = time.perf_counter()
        db.patch(info, "default", f"s{i}", store.MERGE_PATCH, {"spec": {"video": {"fps": 25}}})
        spec_patches.append(time.perf_counter() - started)
    for i in range(N):
        status = {"status": {"phase": "Joined"}}
        started = time.perf_counter()
        db.patch(info, "default", f"s{i}", store.MERGE_PATCH, status, subresource="status")
        status_patches.append(time.perf_counter() - started)
    return {
        "create_ms": _median_ms(creates),
        "spec_patch_ms": _median_ms(spec_patches),
        "status_patch_ms": _median_ms(status_patches),
    }


def main() -> int:
    result: dict[str, Any] = {
        case: run(case) for case in ("off", "burst", "unique", "unique_no_memo")
    }
    result["sessions_per_case"] = N
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
