"""The algorithm: ranked fill with a best-fit window, exclusive GPUs, and the baselines."""

from __future__ import annotations

from typing import Any

from avatar_sdk import api
from avatar_sdk.placement import engine, inventory, policy

GIB = 1024


def _where(eng: engine.Engine, key: str, vram: int, **kwargs: Any) -> tuple[str, int]:
    decision = eng.place(key, policy.Request(vram, **kwargs))
    assert decision.reservation is not None, decision.message
    return decision.reservation.node, decision.reservation.gpu


def test_fills_the_node_in_use_before_opening_another(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=2), make_node("b", gpus=2))
    assert {_where(eng, f"s{i}", 8 * GIB)[0] for i in range(10)} == {"a"}


def test_opens_the_biggest_node_first(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(
        make_node("a-small", gpus=4, vram_mib=24 * GIB),
        make_node("b-mid", gpus=8, vram_mib=80 * GIB),
        make_node("c-big", gpus=8, vram_mib=141 * GIB),
    )
    assert _where(eng, "s", 2 * GIB) == ("c-big", 0)


def test_best_fit_gpu_within_the_node(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=3, vram_mib=10_000))
    assert _where(eng, "s1", 6000) == ("a", 0)
    assert _where(eng, "s2", 5000) == ("a", 1)  # 4000 free on gpu0: too small
    assert _where(eng, "s3", 3500) == ("a", 0)  # tighter than gpu1 (5000 free)
    assert _where(eng, "s4", 4000) == ("a", 1)


def test_best_fit_window_spans_the_first_used_nodes(make_engine: Any, make_node: Any) -> None:
    for window, expected in ((4, "b"), (1, "a")):
        eng = make_engine(
            make_node("a", gpus=1, vram_mib=10_000),
            make_node("b", gpus=1, vram_mib=10_000),
            window=window,
        )
        _where(eng, "a1", 5000)  # a: 5000 free
        _where(eng, "b1", 6000)  # does not fit a: opens b (4000 free)
        assert _where(eng, "x", 3500)[0] == expected


def test_back_nodes_drain_and_stay_free(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(*(make_node(f"n{i}", gpus=1, vram_mib=10 * GIB) for i in range(8)))
    for i in range(80):
        _where(eng, f"s{i}", GIB)  # fills n0..n7, ten each
    # Load falls: a third of the sessions leave, everywhere; new ones keep arriving.
    for i in range(0, 80, 3):
        eng.release(f"s{i}")
    for i in range(10):
        node, _ = _where(eng, f"late{i}", GIB)
        assert node not in ("n6", "n7")  # the front takes the new ones (best fit in a window)
    for i in range(70, 80):
        eng.release(f"s{i}")
    assert eng.ledger.keys_on("n7") == []  # the back node is whole and free


def test_exclusive_takes_a_whole_empty_gpu(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=2, vram_mib=80 * GIB))
    _where(eng, "shared", 4 * GIB)
    decision = eng.place("excl", policy.Request(4 * GIB, api.GpuMode.EXCLUSIVE))
    assert decision.reservation == ("excl", "a", 1, 80 * GIB, True, "NVIDIA-H100-80GB-HBM3")
    # Nothing shares it, and no second exclusive session finds an empty GPU.
    assert _where(eng, "shared2", 4 * GIB) == ("a", 0)
    assert not eng.place("excl2", policy.Request(GIB, api.GpuMode.EXCLUSIVE)).placed


def test_exclusive_prefers_the_smallest_gpu_that_holds_it(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(
        make_node("big", gpus=1, vram_mib=141 * GIB), make_node("small", gpus=1, vram_mib=24 * GIB)
    )
    _where(eng, "s", GIB)  # big is in use, its only GPU is taken
    assert _where(eng, "e", 20 * GIB, mode=api.GpuMode.EXCLUSIVE) == ("small", 0)


def test_node_selector_and_tolerations_are_honoured(make_engine: Any, make_node: Any) -> None:
    taint = {"key": "dedicated", "value": "avatars", "effect": "NoSchedule"}
    eng = make_engine(
        make_node("a-tainted", gpus=8, vram_mib=141 * GIB, taints=[taint]),
        make_node("b-other-pool", gpus=8, vram_mib=141 * GIB, labels={"pool": "other"}),
        make_node("c-avatars", gpus=1, vram_mib=24 * GIB, labels={"pool": "avatars"}),
    )
    assert _where(eng, "plain", GIB)[0] == "b-other-pool"  # a-tainted ranks first, but no
    avatars = (("pool", "avatars"),)
    assert _where(eng, "selected", GIB, node_selector=avatars)[0] == "c-avatars"
    assert not eng.place("too-big", policy.Request(30 * GIB, node_selector=avatars)).placed
    # Cordon b: a 30 GiB session fits only on the tainted node, if it tolerates the taint.
    eng.upsert_node(make_node("b-other-pool", unschedulable=True, labels={"pool": "other"}))
    assert not eng.place("intolerant", policy.Request(30 * GIB)).placed
    toleration = api.Toleration(key="dedicated", operator="Exists")
    assert _where(eng, "tolerant", 30 * GIB, tolerations=(toleration,))[0] == "a-tainted"


def test_max_sessions_and_overhead_per_pool(make_engine: Any, make_node: Any) -> None:
    settings = inventory.InventorySettings(max_sessions_per_gpu=2, overhead_mib=600)
    eng = make_engine(make_node("a", gpus=2, vram_mib=80 * GIB), inventory=settings)
    placed = [eng.place(f"s{i}", policy.Request(GIB)).reservation for i in range(5)]
    assert [(r.gpu, r.vram_mib) for r in placed[:4] if r] == [(0, 1624)] * 2 + [(1, 1624)] * 2
    assert placed[4] is None


def test_gpu_none_needs_no_gpu(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", allocatable=0))
    decision = eng.place("cpu", policy.Request(0, api.GpuMode.NONE))
    assert decision.outcome is engine.Outcome.NO_GPU
    assert decision.placement is None
    assert len(eng.ledger) == 0


# -- baselines ------------------------------------------------------------------------------------


def test_first_fit_follows_the_order_nodes_joined(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(
        make_node("z-small", gpus=1, vram_mib=24 * GIB),
        make_node("a-big", gpus=8, vram_mib=141 * GIB),
        strategy=policy.Strategy.FIRST_FIT,
    )
    assert _where(eng, "s1", GIB) == ("z-small", 0)
    assert _where(eng, "s2", 30 * GIB) == ("a-big", 0)


def test_spread_picks_the_emptiest_node(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(
        make_node("a", gpus=2, vram_mib=10_000),
        make_node("b", gpus=2, vram_mib=10_000),
        strategy=policy.Strategy.SPREAD,
    )
    assert [_where(eng, f"s{i}", 1000) for i in range(4)] == [
        ("a", 0),
        ("b", 0),
        ("a", 1),
        ("b", 1),
    ]


def test_best_fit_baseline_takes_the_tightest_gpu_anywhere(
    make_engine: Any, make_node: Any
) -> None:
    eng = make_engine(
        *(make_node(n, gpus=1, vram_mib=10_000) for n in "abcdef"),
        strategy=policy.Strategy.BEST_FIT,
    )
    for i, n in enumerate("abcdef"):
        assert _where(eng, f"s{n}", 8000 + 100 * i) == (n, 0)  # each opens the next node
    # The tightest gap is on the last node (1500 free), beyond any window.
    assert _where(eng, "x", 1450) == ("f", 0)
