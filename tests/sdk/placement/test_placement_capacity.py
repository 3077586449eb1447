"""Capacity view: free VRAM per GPU and how many more sessions of a size fit."""

from __future__ import annotations

from typing import Any

from avatar_sdk import api
from avatar_sdk.placement import capacity, inventory, ledger, policy

GIB = 1024


def test_free_vram_and_fits_per_gpu(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=2, vram_mib=10 * GIB))
    eng.place("s1", policy.Request(3 * GIB))
    view = eng.capacity(2 * GIB)
    assert [(g.gpu, g.free_mib, g.sessions, g.fits) for g in view.gpus] == [
        (0, 7 * GIB, 1, 3),
        (1, 10 * GIB, 0, 5),
    ]
    assert (view.fits, view.free_mib, view.largest_free_mib) == (8, 17 * GIB, 10 * GIB)


def test_exclusive_gpus_take_nothing_more(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=2, vram_mib=10 * GIB))
    eng.place("e", policy.Request(GIB, api.GpuMode.EXCLUSIVE))
    view = eng.capacity(GIB)
    assert [g.fits for g in view.gpus] == [0, 10]
    assert view.gpus[0].exclusive and view.largest_free_mib == 10 * GIB
    assert eng.capacity(GIB, exclusive=True).fits == 1


def test_session_cap_overhead_and_unavailable_nodes_count(make_node: Any) -> None:
    settings = inventory.InventorySettings(max_sessions_per_gpu=3, overhead_mib=512)
    nodes = [
        inventory.parse_node(make_node("a", gpus=1, vram_mib=10 * GIB), settings),
        inventory.parse_node(make_node("b", gpus=1, vram_mib=10 * GIB, ready=False), settings),
    ]
    book = ledger.Ledger()
    book.reserve(ledger.Reservation("s1", "a", 0, 1536))
    view = capacity.compute(nodes, book, GIB)
    assert [(g.node, g.fits, g.available) for g in view.gpus] == [("a", 2, True), ("b", 0, False)]
    assert capacity.compute(nodes, book, 4 * GIB).fits == 1  # 8.5 GiB free / 4.5 GiB each


def test_over_committed_gpu_shows_negative_free_and_fits_nothing(make_node: Any) -> None:
    node = inventory.parse_node(make_node("a", gpus=1, vram_mib=8 * GIB))
    book = ledger.Ledger()
    book.reserve(ledger.Reservation("s1", "a", 0, 9 * GIB))
    (gpu,) = capacity.compute([node], book, 512).gpus
    assert (gpu.free_mib, gpu.fits) == (-GIB, 0)
