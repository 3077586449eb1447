"""Builders for placement tests: Node objects, requests, an engine on a fake clock.

Test modules get them as fixtures (never `import conftest`: other test folders have their own).
"""

from __future__ import annotations

from typing import Any

import pytest

from avatar_sdk.placement import engine, inventory

GIB = 1024


def _make_node(
    name: str,
    *,
    gpus: int = 8,
    vram_mib: int = 80 * GIB,
    product: str = "NVIDIA-H100-80GB-HBM3",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
    allocatable: int | None = None,
) -> dict[str, Any]:
    """A Node object as GPU Feature Discovery and the device plugin leave it."""
    all_labels = {
        inventory.LABEL_GPU_COUNT: str(gpus),
        inventory.LABEL_GPU_MEMORY: str(vram_mib),
        inventory.LABEL_GPU_PRODUCT: product,
        **(labels or {}),
    }
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
        "status": {
            "allocatable": {
                "cpu": "64",
                inventory.RESOURCE_GPU: str(gpus if allocatable is None else allocatable),
            },
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_node() -> Any:
    """make_node(name, gpus=8, vram_mib=80 GiB, labels=, taints=, ready=, unschedulable=, ...)"""
    return _make_node


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(clock: FakeClock) -> Any:
    """A factory: an engine with these nodes, rebuilt from no sessions, on the fake clock."""

    def factory(*nodes: dict[str, Any], **settings: Any) -> engine.Engine:
        settings.setdefault("inventory", inventory.InventorySettings(headroom_mib=0))
        eng = engine.Engine(engine.Settings(**settings), clock=clock)
        for node in nodes:
            eng.upsert_node(node)
        eng.rebuild([])
        return eng

    return factory
