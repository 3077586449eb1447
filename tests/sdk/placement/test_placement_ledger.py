"""Ledger: one reservation per session, released once, rebuilt from statuses."""

from __future__ import annotations

import pytest

from avatar_sdk import api
from avatar_sdk.placement import ledger


def _res(
    key: str, node: str = "n1", gpu: int = 0, vram: int = 2048, excl: bool = False
) -> ledger.Reservation:
    return ledger.Reservation(key, node, gpu, vram, excl)


def _record(
    key: str, placement: api.Placement | None, phase: api.Phase | None = api.Phase.JOINED
) -> ledger.SessionRecord:
    return ledger.SessionRecord(key, api.AvatarSessionStatus(phase=phase, placement=placement))


def test_reserve_keeps_per_gpu_and_per_node_totals() -> None:
    book = ledger.Ledger()
    book.reserve(_res("a", vram=2048))
    book.reserve(_res("b", vram=4096))
    book.reserve(_res("c", gpu=1, vram=1024))
    assert book.gpu_usage("n1", 0) == ledger.GpuUsage(6144, 2, False)
    assert book.node_usage("n1") == {
        0: ledger.GpuUsage(6144, 2, False),
        1: ledger.GpuUsage(1024, 1, False),
    }
    assert book.keys_on("n1") == ["a", "b", "c"]


def test_release_returns_the_reservation_exactly_once() -> None:
    book = ledger.Ledger()
    book.reserve(_res("a"))
    assert book.release("a") == _res("a")
    assert book.release("a") is None
    assert book.release("never-placed") is None
    assert book.gpu_usage("n1", 0) == ledger.GpuUsage()
    assert book.keys_on("n1") == []


def test_reserving_the_same_placement_again_is_a_no_op() -> None:
    book = ledger.Ledger()
    assert book.reserve(_res("a")) is True
    assert book.reserve(_res("a")) is False
    assert book.gpu_usage("n1", 0).sessions == 1


def test_a_session_is_never_placed_twice() -> None:
    book = ledger.Ledger()
    book.reserve(_res("a", gpu=0))
    with pytest.raises(ledger.Conflict, match="already placed"):
        book.reserve(_res("a", gpu=1))
    with pytest.raises(ledger.Conflict):
        book.reserve(_res("a", gpu=1), force=True)


def test_exclusive_never_joins_a_used_gpu() -> None:
    book = ledger.Ledger()
    book.reserve(_res("shared"))
    with pytest.raises(ledger.Conflict, match="exclusively"):
        book.reserve(_res("excl", excl=True))


def test_shared_never_joins_an_exclusive_gpu() -> None:
    book = ledger.Ledger()
    book.reserve(_res("excl", excl=True, vram=80_000))
    with pytest.raises(ledger.Conflict, match="held exclusively"):
        book.reserve(_res("shared"))


def test_placement_round_trip() -> None:
    res = ledger.Reservation("ns/a", "n1", 3, 4096, False, "NVIDIA-H200")
    placement = res.to_placement()
    assert placement.to_wire() == {
        "node": "n1",
        "gpu": 3,
        "vramMiB": 4096,
        "exclusive": False,
        "product": "NVIDIA-H200",
    }
    assert ledger.Reservation.from_placement("ns/a", placement) == res
    assert ledger.Reservation.from_placement("ns/a", api.Placement(node="n1")) is None


def test_rebuild_reads_live_placements_only() -> None:
    placed = api.Placement(node="n1", gpu=0, vram_mib=2048)
    book, conflicts = ledger.Ledger.rebuild(
        [
            _record("joined", placed),
            _record("starting", placed.model_copy(update={"gpu": 1}), api.Phase.STARTING),
            _record("ended", placed, api.Phase.ENDED),
            _record("failed", placed, api.Phase.FAILED),
            _record("pending", None, api.Phase.PENDING),
            _record("cpu-only", api.Placement(node="n2"), api.Phase.JOINED),
            _record("no-phase-yet", placed.model_copy(update={"gpu": 2}), None),
        ]
    )
    assert conflicts == []
    assert sorted(r.key for r in book) == ["joined", "no-phase-yet", "starting"]


def test_rebuilt_ledger_equals_the_live_one() -> None:
    live = ledger.Ledger()
    for i in range(20):
        live.reserve(_res(f"s{i}", node=f"n{i % 3}", gpu=i % 4, vram=512 * (i + 1)))
    live.release("s7")
    live.release("s8")
    records = [_record(r.key, r.to_placement()) for r in live]
    rebuilt, conflicts = ledger.Ledger.rebuild(records)
    assert conflicts == []
    assert rebuilt == live
    assert rebuilt.usage() == live.usage()


def test_rebuild_keeps_and_reports_conflicting_placements() -> None:
    # Two statuses claim one GPU, one of them exclusively: both sessions do run there.
    book, conflicts = ledger.Ledger.rebuild(
        [
            _record("a", api.Placement(node="n1", gpu=0, vram_mib=2048)),
            _record("b", api.Placement(node="n1", gpu=0, vram_mib=80_000, exclusive=True)),
        ]
    )
    assert conflicts == ["b"]
    assert book.gpu_usage("n1", 0) == ledger.GpuUsage(82_048, 2, True)
