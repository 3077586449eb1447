"""Inventory: GPUs from Node objects, per-pool overrides, and each exclusion rule."""

from __future__ import annotations

from typing import Any

import pytest

from avatar_sdk import api
from avatar_sdk.placement import inventory

GIB = 1024


def test_gpus_come_from_gfd_labels(make_node: Any) -> None:
    info = inventory.parse_node(make_node("n1", gpus=8, vram_mib=143_771, product="NVIDIA-H200"))
    assert info.name == "n1"
    assert [g.index for g in info.gpus] == list(range(8))
    assert {g.vram_mib for g in info.gpus} == {143_771}
    assert info.product == "NVIDIA-H200"
    assert info.ready and info.schedulable


def test_headroom_is_kept_free_on_each_gpu(make_node: Any) -> None:
    settings = inventory.InventorySettings(headroom_mib=1024)
    info = inventory.parse_node(make_node("n1", gpus=2, vram_mib=24 * GIB), settings)
    assert [g.capacity_mib for g in info.gpus] == [23 * GIB, 23 * GIB]


def test_allocatable_caps_the_gpu_count(make_node: Any) -> None:
    # The device plugin advertises 7: one GPU is unhealthy.
    info = inventory.parse_node(make_node("n1", gpus=8, allocatable=7))
    assert len(info.gpus) == 7


def test_zero_allocatable_means_no_usable_gpu(make_node: Any) -> None:
    info = inventory.parse_node(make_node("n1", gpus=8, allocatable=0))
    assert info.gpus == ()


def test_time_sliced_replicas_are_not_counted_as_gpus(make_node: Any) -> None:
    body = make_node("n1", gpus=4, allocatable=16, labels={inventory.LABEL_GPU_REPLICAS: "4"})
    assert len(inventory.parse_node(body).gpus) == 4


def test_missing_or_odd_labels_give_no_gpu_and_do_not_raise(make_node: Any) -> None:
    body = make_node("n1")
    body["metadata"]["labels"][inventory.LABEL_GPU_MEMORY] = "lots"
    assert inventory.parse_node(body).gpus == ()
    assert inventory.parse_node({"metadata": {"name": "bare"}}).gpus == ()


def test_pool_override_wins_first_match(make_node: Any) -> None:
    settings = inventory.InventorySettings(
        headroom_mib=512,
        overhead_mib=0,
        pools=(
            inventory.PoolOverride(
                match_labels={"pool": "l4"},
                vram_mib=22 * GIB,
                headroom_mib=0,
                max_sessions_per_gpu=3,
                overhead_mib=600,
                gpu_count=2,
                product="L4",
            ),
            inventory.PoolOverride(match_labels={}, headroom_mib=2048),
        ),
    )
    l4 = inventory.parse_node(make_node("a", labels={"pool": "l4"}), settings)
    assert [g.capacity_mib for g in l4.gpus] == [22 * GIB, 22 * GIB]
    assert (l4.max_sessions_per_gpu, l4.overhead_mib, l4.product) == (3, 600, "L4")
    other = inventory.parse_node(make_node("b", gpus=1, vram_mib=10_000), settings)
    assert other.gpus[0].capacity_mib == 10_000 - 2048


def test_settings_read_camel_case() -> None:
    settings = inventory.InventorySettings.model_validate(
        {"headroomMiB": 256, "pools": [{"matchLabels": {"a": "b"}, "maxSessionsPerGpu": 4}]}
    )
    assert settings.pools[0].max_sessions_per_gpu == 4


def test_unchanged_node_parses_equal_despite_heartbeats(make_node: Any) -> None:
    first = make_node("n1")
    second = make_node("n1")
    second["status"]["conditions"].append({"type": "DiskPressure", "status": "False"})
    second["metadata"]["resourceVersion"] = "42"
    assert inventory.parse_node(first) == inventory.parse_node(second)


# -- exclusion rules, one test each ---------------------------------------------------------------


def _why(
    node: dict[str, Any],
    selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    needs_gpu: bool = True,
) -> inventory.Exclusion | None:
    return inventory.exclusion(
        inventory.parse_node(node),
        tuple((selector or {}).items()),
        [api.Toleration.model_validate(t) for t in tolerations or []],
        needs_gpu=needs_gpu,
    )


def test_a_ready_gpu_node_is_eligible(make_node: Any) -> None:
    assert _why(make_node("n1")) is None


def test_unschedulable_node_is_excluded(make_node: Any) -> None:
    assert _why(make_node("n1", unschedulable=True)) is inventory.Exclusion.UNSCHEDULABLE


def test_not_ready_node_is_excluded(make_node: Any) -> None:
    assert _why(make_node("n1", ready=False)) is inventory.Exclusion.NOT_READY


def test_node_without_ready_condition_is_excluded(make_node: Any) -> None:
    body = make_node("n1")
    body["status"]["conditions"] = []
    assert _why(body) is inventory.Exclusion.NOT_READY


def test_node_without_gpus_is_excluded_for_gpu_sessions_only(make_node: Any) -> None:
    body = make_node("cpu", allocatable=0)
    assert _why(body) is inventory.Exclusion.NO_GPU
    assert _why(body, needs_gpu=False) is None


def test_node_selector_must_match_every_label(make_node: Any) -> None:
    body = make_node("n1", labels={"pool": "avatars", "zone": "a"})
    assert _why(body, {"pool": "avatars"}) is None
    assert _why(body, {"pool": "avatars", "zone": "b"}) is inventory.Exclusion.NODE_SELECTOR
    assert _why(body, {"missing": "x"}) is inventory.Exclusion.NODE_SELECTOR


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_untolerated_taint_excludes(make_node: Any, effect: str) -> None:
    body = make_node("n1", taints=[{"key": "gpu", "value": "avatars", "effect": effect}])
    assert _why(body) is inventory.Exclusion.TAINT


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "gpu", "operator": "Equal", "value": "avatars", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Exists"},
        {"operator": "Exists"},
    ],
)
def test_tolerated_taint_does_not_exclude(make_node: Any, toleration: dict[str, Any]) -> None:
    body = make_node("n1", taints=[{"key": "gpu", "value": "avatars", "effect": "NoSchedule"}])
    assert _why(body, tolerations=[toleration]) is None


def test_toleration_for_another_value_does_not_help(make_node: Any) -> None:
    body = make_node("n1", taints=[{"key": "gpu", "value": "avatars", "effect": "NoSchedule"}])
    wrong = {"key": "gpu", "operator": "Equal", "value": "training"}
    assert _why(body, tolerations=[wrong]) is inventory.Exclusion.TAINT


def test_prefer_no_schedule_taint_is_only_a_preference(make_node: Any) -> None:
    body = make_node("n1", taints=[{"key": "spot", "effect": "PreferNoSchedule"}])
    assert _why(body) is None
