"""Property tests: whatever the sequence of sessions, nodes, restarts and time, the ledger holds.

A hypothesis state machine plays the operator: it writes each placement into a model of the
sessions' statuses, restarts the engine from those statuses, and checks after every step that
- no GPU is ever over-committed;
- exclusive and shared sessions never share a GPU;
- every reservation is released exactly once (a second release returns nothing);
- the ledger rebuilt from the statuses equals the live one, and the fleet index agrees with it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from avatar_sdk import api
from avatar_sdk.placement import engine, inventory, ledger, policy, queue


class NodeSpec(NamedTuple):
    gpus: int
    vram_mib: int
    pool: str = "a"


# Each node name always stands for the same hardware, so nothing shrinks under a session.
CATALOG = {
    "n0": NodeSpec(2, 10_000),
    "n1": NodeSpec(1, 24_576),
    "n2": NodeSpec(4, 8_192),
    "n3": NodeSpec(2, 16_384, pool="b"),
}
KEYS = [f"ns/s{i}" for i in range(24)]
MODES = [api.GpuMode.SHARED] * 4 + [api.GpuMode.EXCLUSIVE, api.GpuMode.NONE]


def _node(name: str, *, ready: bool, cordoned: bool) -> dict[str, Any]:
    spec = CATALOG[name]
    labels = {
        inventory.LABEL_GPU_COUNT: str(spec.gpus),
        inventory.LABEL_GPU_MEMORY: str(spec.vram_mib),
        "pool": spec.pool,
    }
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {inventory.RESOURCE_GPU: str(spec.gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class PlacementMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.settings = engine.Settings(
            inventory=inventory.InventorySettings(headroom_mib=0),
            queue=queue.QueuePolicy(starvation_seconds=20, max_passes=3),
        )
        self.eng = self._new_engine()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, api.Placement] = {}  # what the operator wrote
        self.pending: dict[str, tuple[policy.Request, float]] = {}

    def _new_engine(self) -> engine.Engine:
        return engine.Engine(self.settings, clock=lambda: self.now)

    def _admit(self, admitted: Any) -> None:
        for admission in admitted:
            assert admission.key not in self.statuses
            self.statuses[admission.key] = admission.placement
            self.pending.pop(admission.key, None)

    @initialize()
    def start(self) -> None:
        for name in CATALOG:
            self.nodes[name] = _node(name, ready=True, cordoned=False)
            self.eng.upsert_node(self.nodes[name])
        self.eng.rebuild([])

    @rule(
        name=st.sampled_from(sorted(CATALOG)),
        ready=st.sampled_from([True, True, True, False]),
        cordoned=st.sampled_from([False, False, False, True]),
    )
    def node_changes(self, name: str, ready: bool, cordoned: bool) -> None:
        body = _node(name, ready=ready, cordoned=cordoned)
        self.nodes[name] = body
        self._admit(self.eng.upsert_node(body))

    @rule(name=st.sampled_from(sorted(CATALOG)))
    def node_goes(self, name: str) -> None:
        on_node = self.eng.remove_node(name)
        self.nodes.pop(name, None)
        assert on_node == sorted(k for k, p in self.statuses.items() if p.node == name)

    @rule(
        key=st.sampled_from(KEYS),
        vram=st.integers(512, 20_000),
        mode=st.sampled_from(MODES),
        pool_b=st.booleans(),
    )
    def place(self, key: str, vram: int, mode: api.GpuMode, pool_b: bool) -> None:
        request = policy.Request(
            0 if mode is api.GpuMode.NONE else vram,
            mode,
            node_selector=(("pool", "b"),) if pool_b else (),
        )
        decision = self.eng.place(key, request, arrived_at=self.now)
        if key in self.statuses:
            assert decision.outcome is engine.Outcome.ALREADY_PLACED
            assert decision.placement == self.statuses[key]
        elif decision.placement is not None:
            assert decision.outcome is engine.Outcome.PLACED
            self.statuses[key] = decision.placement
            self.pending.pop(key, None)
        elif decision.outcome is engine.Outcome.PENDING:
            self.pending.setdefault(key, (request, self.now))
        else:
            assert decision.outcome is engine.Outcome.NO_GPU
            self.pending.pop(key, None)

    @rule(key=st.sampled_from(KEYS))
    def release(self, key: str) -> None:
        released = self.eng.release(key)
        expected = self.statuses.pop(key, None)
        got = released.reservation.to_placement() if released.reservation else None
        assert got == expected
        self.pending.pop(key, None)
        self._admit(released.admitted)
        assert self.eng.release(key).reservation is None  # exactly once

    @precondition(lambda self: bool(self.statuses))
    @rule(data=st.data())
    def a_placed_session_ends(self, data: st.DataObject) -> None:
        self.release(data.draw(st.sampled_from(sorted(self.statuses))))

    @rule(seconds=st.sampled_from([1.0, 5.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._admit(self.eng.reevaluate())

    @precondition(lambda self: bool(self.statuses) or bool(self.pending))
    @rule()
    def operator_restarts(self) -> None:
        self.eng = self._new_engine()
        for body in self.nodes.values():
            self.eng.upsert_node(body)
        records = [
            ledger.SessionRecord(k, api.AvatarSessionStatus(phase=api.Phase.JOINED, placement=p))
            for k, p in self.statuses.items()
        ]
        assert self.eng.rebuild(records) == []
        # Resume handlers place the waiting sessions again, oldest first.
        for key, (request, arrived) in sorted(self.pending.items(), key=lambda kv: kv[1][1]):
            decision = self.eng.place(key, request, arrived_at=arrived)
            if decision.placement is not None:
                self.statuses[key] = decision.placement
                del self.pending[key]

    @invariant()
    def never_overcommitted_and_never_mixed(self) -> None:
        capacity = {n: spec.vram_mib for n, spec in CATALOG.items()}
        for (node, _), usage in self.eng.ledger.usage().items():
            assert usage.reserved_mib <= capacity[node]
            assert not usage.exclusive or usage.sessions == 1

    @invariant()
    def ledger_matches_statuses_and_rebuilds_equal(self) -> None:
        assert {r.key: r.to_placement() for r in self.eng.ledger} == self.statuses
        records = [
            ledger.SessionRecord(k, api.AvatarSessionStatus(placement=p))
            for k, p in self.statuses.items()
        ]
        rebuilt, conflicts = ledger.Ledger.rebuild(records)
        assert conflicts == []
        assert rebuilt == self.eng.ledger

    @invariant()
    def index_agrees_with_ledger(self) -> None:
        assert self.eng.audit() == []


PlacementMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPlacementProperties = PlacementMachine.TestCase
