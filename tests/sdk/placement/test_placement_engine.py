"""The engine as the operator drives it: start-up, idempotence, nodes coming and going."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from avatar_sdk import api
from avatar_sdk.placement import engine, inventory, ledger, policy

GIB = 1024


def _records(eng: engine.Engine) -> list[ledger.SessionRecord]:
    """What the operator would list from the API: each placed session's status."""
    return [
        ledger.SessionRecord(
            r.key, api.AvatarSessionStatus(phase=api.Phase.JOINED, placement=r.to_placement())
        )
        for r in eng.ledger
    ]


def test_place_refuses_before_rebuild(make_node: Any) -> None:
    eng = engine.Engine()
    eng.upsert_node(make_node("a"))
    with pytest.raises(engine.NotReady):
        eng.place("s", policy.Request(GIB))
    eng.rebuild([])
    assert eng.place("s", policy.Request(GIB)).placed


def test_placing_a_placed_session_again_gives_the_same_answer(
    make_engine: Any, make_node: Any
) -> None:
    eng = make_engine(make_node("a"), make_node("b"))
    first = eng.place("ns/s", policy.Request(GIB))
    again = eng.place("ns/s", policy.Request(GIB))
    assert first.outcome is engine.Outcome.PLACED
    assert again.outcome is engine.Outcome.ALREADY_PLACED
    assert again.placement == first.placement
    assert len(eng.ledger) == 1


def test_request_from_spec() -> None:
    spec = api.AvatarSessionSpec.model_validate(
        {
            "roomId": "abcd-efgh-ijkl",
            "resources": {"vramMiB": 4096, "gpu": "exclusive"},
            "nodeSelector": {"pool": "avatars"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
        }
    )
    request = policy.Request.from_spec(spec)
    assert request.vram_mib == 4096 and request.exclusive and request.needs_gpu
    assert request.node_selector == (("pool", "avatars"),)
    default = policy.Request.from_spec(api.AvatarSessionSpec(room_id="r"))
    assert default.vram_mib == api.DEFAULT_VRAM_MIB and not default.exclusive


def test_a_restart_rebuilds_the_same_ledger_and_places_nothing_twice(
    make_engine: Any, make_node: Any
) -> None:
    nodes = [make_node("a", gpus=2, vram_mib=24 * GIB), make_node("b", gpus=8)]
    eng = make_engine(*nodes)
    for i in range(30):
        eng.place(f"s{i}", policy.Request((i % 7 + 1) * GIB))
    eng.place("x", policy.Request(GIB, api.GpuMode.EXCLUSIVE))
    for i in range(0, 30, 4):
        eng.release(f"s{i}")

    restarted = engine.Engine(eng.settings)
    for node in nodes:
        restarted.upsert_node(node)  # nodes may be known before the sessions are
    assert restarted.rebuild(_records(eng)) == []
    assert restarted.ledger == eng.ledger
    for r in eng.ledger:  # the resume handlers place every session again: same answers
        again = restarted.place(r.key, policy.Request(GIB))
        assert again.outcome is engine.Outcome.ALREADY_PLACED
        assert again.reservation == r
    assert restarted.capacity(GIB) == eng.capacity(GIB)


def test_adopt_records_a_placement_read_from_status(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    placement = api.Placement(node="a", gpu=0, vram_mib=9000)
    assert eng.adopt("ns/old", placement) is True
    assert eng.adopt("ns/old", placement) is False
    assert not eng.place("ns/new", policy.Request(2000)).placed
    with pytest.raises(ledger.Conflict):
        eng.adopt("ns/old", api.Placement(node="a", gpu=1, vram_mib=1))


def test_release_frees_exactly_once(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    placed = eng.place("s", policy.Request(6000)).reservation
    assert eng.release("s").reservation == placed
    assert eng.release("s") == engine.Released(None)
    assert eng.capacity(1000).fits == 10


def test_unschedulable_message_names_the_ask_and_the_largest_block(
    make_engine: Any, make_node: Any
) -> None:
    eng = make_engine(make_node("a", gpus=2, vram_mib=10_000))
    eng.place("s1", policy.Request(7000))
    eng.place("s2", policy.Request(4000))
    decision = eng.place("big", policy.Request(8000))
    assert decision.outcome is engine.Outcome.PENDING
    assert decision.reason == "Unschedulable"
    assert "8000 MiB" in decision.message
    assert "largest free block 6000 MiB on a/gpu1" in decision.message


def test_unschedulable_message_counts_excluded_nodes(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(
        make_node("a", unschedulable=True),
        make_node("b", ready=False),
        make_node("c", taints=[{"key": "k", "effect": "NoSchedule"}]),
    )
    message = eng.place("s", policy.Request(GIB)).message
    assert "no eligible node" in message
    for part in ("1 unschedulable", "1 not ready", "1 untolerated taint"):
        assert part in message


def test_a_request_no_gpu_can_hold_says_so(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=24 * GIB))
    message = eng.place("s", policy.Request(30 * GIB)).message
    assert "can ever hold 30720 MiB" in message and "24576 MiB" in message


def test_a_node_joining_admits_waiting_sessions(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("s1", policy.Request(9000))
    assert not eng.place("s2", policy.Request(9000)).placed
    admitted = eng.upsert_node(make_node("b", gpus=1, vram_mib=10_000))
    assert [(a.key, a.placement.node) for a in admitted] == [("s2", "b")]
    assert eng.pending() == []


def test_a_node_made_ready_admits_waiting_sessions(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", ready=False))
    assert not eng.place("s", policy.Request(GIB)).placed
    assert [a.key for a in eng.upsert_node(make_node("a"))] == ["s"]


def test_a_cordoned_node_takes_nothing_new_but_keeps_its_sessions(
    make_engine: Any, make_node: Any
) -> None:
    eng = make_engine(make_node("a"), make_node("b"))
    first = eng.place("s1", policy.Request(GIB)).reservation
    assert first is not None
    eng.upsert_node(make_node(first.node, unschedulable=True))
    second = eng.place("s2", policy.Request(GIB)).reservation
    assert second is not None and second.node != first.node
    assert eng.placement_of("s1") == first.to_placement()


def test_removing_a_node_reports_its_sessions(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a"))
    eng.place("s1", policy.Request(GIB))
    eng.place("s2", policy.Request(GIB))
    assert eng.remove_node("a") == ["s1", "s2"]
    assert eng.release("s1").reservation is not None  # the operator ends them: freed once
    assert eng.release("s1").reservation is None


def test_a_node_coming_back_keeps_its_reservations(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("s1", policy.Request(9000))
    eng.remove_node("a")
    eng.upsert_node(make_node("a", gpus=1, vram_mib=10_000))
    assert not eng.place("s2", policy.Request(2000)).placed


def test_a_shrunken_gpu_takes_nothing_until_enough_sessions_end(
    make_engine: Any, make_node: Any
) -> None:
    eng = make_engine(make_node("a", gpus=1, vram_mib=10_000))
    eng.place("s1", policy.Request(6000))
    eng.place("s2", policy.Request(3000))
    eng.upsert_node(make_node("a", gpus=1, vram_mib=8000))  # an override lowered the VRAM
    assert eng.capacity(512).gpus[0].free_mib == -1000
    assert not eng.place("s3", policy.Request(512)).placed
    admitted = eng.release("s2").admitted
    assert [a.key for a in admitted] == ["s3"]


def test_concurrent_callers_never_overcommit(make_engine: Any, make_node: Any) -> None:
    eng = make_engine(make_node("a", gpus=2, vram_mib=10_000))
    placed: list[str] = []

    def worker(n: int) -> None:
        for i in range(50):
            if eng.place(f"t{n}-{i}", policy.Request(1000)).placed:
                placed.append(f"t{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(placed) == 20
    assert all(u.reserved_mib <= 10_000 for u in eng.ledger.usage().values())


def test_a_node_takes_no_more_sessions_than_its_cpu_holds_worker_pods(
    make_engine: Any, make_node: Any
) -> None:
    """Found by the real scheduler: VRAM alone packed 100 sessions on a node with 32 CPUs,
    and the Pods past its allocatable CPU stayed Pending until their join timed out."""
    small, big = make_node("small"), make_node("big", gpus=1)
    small["status"]["allocatable"]["cpu"] = "3500m"  # 3 workers of 1 CPU
    big["status"]["allocatable"]["cpu"] = "96"
    settings = inventory.InventorySettings(headroom_mib=0, worker_cpu="1", worker_memory="2Gi")
    eng = make_engine(small, big, inventory=settings)
    nodes = [eng.place(f"ns/s{i}", policy.Request(GIB)).placement.node for i in range(3)]
    # ranked first (8 GPUs), "small" would take them all by VRAM; its CPU stops it at 3
    assert nodes == ["small"] * 3
    assert eng.place("ns/s3", policy.Request(GIB)).placement.node == "big"
    eng.release("ns/s0")
    assert eng.place("ns/s4", policy.Request(GIB)).placement.node == "small"
    assert not eng.audit()


def test_the_pods_and_memory_a_node_allocates_cap_it_too(make_engine: Any, make_node: Any) -> None:
    node = make_node("n")
    node["status"]["allocatable"].update({"pods": "110", "memory": "5Gi"})
    settings = inventory.InventorySettings(headroom_mib=0, worker_memory="2Gi")
    eng = make_engine(node, inventory=settings)
    assert eng.place("ns/a", policy.Request(GIB)).placed
    assert eng.place("ns/b", policy.Request(GIB)).placed
    assert eng.place("ns/c", policy.Request(GIB)).outcome is not engine.Outcome.PLACED
    node["status"]["allocatable"]["memory"] = "6Gi"
    eng.upsert_node(node)
    assert eng.place("ns/c", policy.Request(GIB)).placed


@pytest.mark.parametrize(
    ("text", "value"),
    [("96", 96), ("3500m", 3.5), ("2Gi", 2 * 1024**3), ("1k", 1000), ("1.5", 1.5), ("1e3", 1000)],
)
def test_quantities(text: str, value: float) -> None:
    assert inventory.quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "lots", "2 Gi", "Gi"])
def test_what_is_not_a_quantity_limits_nothing(text: str) -> None:
    assert inventory.quantity(text) is None
    assert inventory.worker_room({"cpu": text}, inventory.InventorySettings(worker_cpu="1")) is None
