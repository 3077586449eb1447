"""The queue: first come first served, backfilling, and the anti-starvation hold."""

from __future__ import annotations

from typing import Any

from avatar_sdk import api
from avatar_sdk.placement import engine, policy, queue

GIB = 1024


def _admitted(released: engine.Released) -> list[str]:
    return [a.key for a in released.admitted]


def test_pending_queue_orders_by_arrival_then_queueing() -> None:
    q = queue.PendingQueue()
    q.push("late", policy.Request(1), arrived_at=20.0)
    q.push("early", policy.Request(1), arrived_at=10.0)
    q.push("tie", policy.Request(1), arrived_at=20.0)
    q.push("early", policy.Request(2), arrived_at=99.0)  # already queued: keeps its place
    assert [w.key for w in q] == ["early", "late", "tie"]
    assert q.ahead_of("tie") == 2
    assert q.remove("late") is not None and q.remove("late") is None
    assert [w.key for w in q] == ["early", "tie"]


def test_waiting_sessions_are_admitted_first_come_first_served(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("running", policy.Request(10_000))
    for name in ("first", "second", "third"):
        clock.advance(1)
        assert not eng.place(name, policy.Request(5000)).placed
    assert [p.key for p in eng.pending()] == ["first", "second", "third"]
    assert _admitted(eng.release("running")) == ["first", "second"]
    assert _admitted(eng.release("first")) == ["third"]


def test_queue_order_follows_creation_time_not_call_order(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("running", policy.Request(10_000))
    eng.place("created-later", policy.Request(6000), arrived_at=500.0)
    eng.place("created-earlier", policy.Request(6000), arrived_at=400.0)  # e.g. after a restart
    assert _admitted(eng.release("running")) == ["created-earlier"]


def test_a_smaller_session_backfills_past_a_large_one(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("running", policy.Request(6000))
    assert not eng.place("large", policy.Request(8000)).placed
    assert eng.place("small", policy.Request(3000)).placed  # fits: not blocked by "large"


def test_deleting_a_waiting_session_removes_it(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("running", policy.Request(10_000))
    eng.place("gone", policy.Request(5000))
    assert eng.release("gone") == engine.Released(None, ())
    assert _admitted(eng.release("running")) == []


def _churn(eng: engine.Engine, clock: Any, rounds: int) -> list[str]:
    """Small sessions keep leaving and arriving; returns the order in which things got placed."""
    order: list[str] = []
    for i in range(rounds):
        clock.advance(1)
        order += _admitted(eng.release(f"small{i}"))
        newcomer = f"small{i + 10}"
        if eng.place(newcomer, policy.Request(GIB)).placed:
            order.append(newcomer)
    return order


def _starving_setup(make_engine: Any, make_node: Any, **rules: Any) -> engine.Engine:
    eng: engine.Engine = make_engine(
        make_node("a", gpus=1, vram_mib=10 * GIB), queue=queue.QueuePolicy(**rules)
    )
    for i in range(10):
        assert eng.place(f"small{i}", policy.Request(GIB)).placed
    assert not eng.place("large", policy.Request(8 * GIB)).placed
    return eng


def test_without_protection_a_stream_of_small_sessions_starves_a_large_one(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = _starving_setup(make_engine, make_node, starvation_seconds=1e9, max_passes=10**9)
    assert "large" not in _churn(eng, clock, 40)


def test_passed_over_head_is_protected_and_placed(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = _starving_setup(make_engine, make_node, starvation_seconds=1e9, max_passes=3)
    order = _churn(eng, clock, 40)
    assert "large" in order
    # Passed over three times; then the hold keeps 8 GiB for it: it waits for eight more
    # departures (the small sessions on the GPU), and nothing gets past it meanwhile.
    assert order[:3] == ["small10", "small11", "small12"]
    assert order[3] == "large"


def test_a_head_that_waited_long_enough_is_protected(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = _starving_setup(make_engine, make_node, starvation_seconds=5, max_passes=10**9)
    order = _churn(eng, clock, 40)
    assert order.index("large") <= 6  # protected after 5 s, placed once the GPU drains


def test_the_hold_leaves_the_rest_of_the_gpu_usable(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = make_engine(
        make_node("a", gpus=1, vram_mib=10 * GIB),
        queue=queue.QueuePolicy(starvation_seconds=0),
    )
    eng.place("running", policy.Request(6 * GIB))
    assert not eng.place("large", policy.Request(6 * GIB)).placed
    hold = eng.hold
    assert hold is not None and (hold.key, hold.node, hold.gpu) == ("large", "a", 0)
    assert not eng.place("medium", policy.Request(2 * GIB)).placed  # would eat into the hold
    eng.release("running")
    assert eng.placement_of("large") is not None
    assert eng.placement_of("medium") is not None  # 10 - 6 = 4 GiB left: fits after "large"


def test_protected_head_shows_in_pending(make_engine: Any, make_node: Any, clock: Any) -> None:
    eng = make_engine(
        make_node("a", gpus=1, vram_mib=10 * GIB),
        queue=queue.QueuePolicy(starvation_seconds=30),
    )
    eng.place("running", policy.Request(6 * GIB))
    eng.place("large", policy.Request(6 * GIB))
    assert [p.protected for p in eng.pending()] == [False]
    clock.advance(31)
    assert eng.reevaluate() == []
    (info,) = eng.pending()
    assert info.protected and info.waited_seconds == 31 and info.ahead == 0


def test_a_session_no_gpu_could_hold_blocks_nobody(
    make_engine: Any, make_node: Any, clock: Any
) -> None:
    eng = make_engine(
        make_node("a", gpus=1, vram_mib=10 * GIB),
        queue=queue.QueuePolicy(starvation_seconds=0, max_passes=0),
    )
    assert not eng.place("impossible", policy.Request(20 * GIB)).placed
    clock.advance(100)
    assert eng.place("small", policy.Request(GIB)).placed
    assert eng.hold is None


def test_an_exclusive_head_holds_a_whole_gpu(make_engine: Any, make_node: Any, clock: Any) -> None:
    eng = make_engine(
        make_node("a", gpus=2, vram_mib=10 * GIB),
        queue=queue.QueuePolicy(starvation_seconds=0),
    )
    eng.place("s0", policy.Request(GIB))
    eng.place("s1", policy.Request(GIB))
    eng.place("s2", policy.Request(9 * GIB))  # gpu0: s0, s1; gpu1: s2 (1 GiB left)
    assert not eng.place("excl", policy.Request(GIB, api.GpuMode.EXCLUSIVE)).placed
    assert eng.hold == ("excl", "a", 1, 10 * GIB)  # the GPU with the fewest sessions, whole
    small = eng.place("s3", policy.Request(GIB)).reservation
    assert small is not None and small.gpu == 0  # gpu1 has 1 GiB free, but it is held
    assert _admitted(eng.release("s2")) == ["excl"]
    placement = eng.placement_of("excl")
    assert placement is not None and placement.exclusive and placement.gpu == 1
