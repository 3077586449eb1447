"""The pool controller's view of its workers from events: a stale copy (older resourceVersion
than what a claim's answer already showed) never brings a claimed worker back as idle, where
it would be counted, claimed again or deleted as surplus under its session."""

from __future__ import annotations

import copy
from typing import Any

from test_operator_reconciler import NS, FakeApi, make_reconciler

from avatar_operator.reconciler import admission
from avatar_sdk import api, pools


def worker(name: str, version: int, state: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": str(version),
            "labels": {
                "app.kubernetes.io/name": "avatar-worker",
                "app.kubernetes.io/managed-by": "avatar-operator",
                pools.POOL_LABEL: "warm",
                pools.POOL_STATE_LABEL: state,
                **labels,
            },
        },
        "status": {"phase": "Running"},
    }


POOL = {
    "apiVersion": api.API_VERSION,
    "kind": pools.POOL_KIND,
    "metadata": {"name": "warm", "namespace": NS, "resourceVersion": "1", "generation": 1},
    "spec": {"replicas": 0},
}


async def test_a_stale_event_does_not_bring_a_claimed_worker_back_as_idle() -> None:
    reconciler = await make_reconciler(FakeApi())
    controller = reconciler.pools
    controller.pools[f"{NS}/warm"] = copy.deepcopy(POOL)
    ready = worker("warm-a", 10, "ready")
    controller.observe_pod("MODIFIED", ready)
    assert [p["metadata"]["name"] for p in controller.idle_of(f"{NS}/warm")] == ["warm-a"]

    claimed = worker("warm-a", 12, "claimed", **{f"{api.GROUP}/session-uid": "uid-s"})
    controller.observe_pod("MODIFIED", claimed)  # as a claim's answer is recorded
    controller.observe_pod("MODIFIED", worker("warm-a", 11, "ready"))  # the watch, behind
    assert controller.idle_of(f"{NS}/warm") == []
    assert controller.claimed_of(f"{NS}/warm") == 1

    controller.observe_pod("DELETED", worker("warm-a", 13, "claimed"))
    assert controller.claimed_of(f"{NS}/warm") == 0
    await reconciler.aclose()


async def test_a_newer_event_is_taken() -> None:
    reconciler = await make_reconciler(FakeApi())
    controller = reconciler.pools
    controller.pools[f"{NS}/warm"] = copy.deepcopy(POOL)
    controller.observe_pod("MODIFIED", worker("warm-b", 5, "starting"))
    controller.observe_pod("MODIFIED", worker("warm-b", 7, "ready"))
    (idle,) = controller.idle_of(f"{NS}/warm")
    assert idle["metadata"]["labels"][pools.POOL_STATE_LABEL] == "ready"
    await reconciler.aclose()


async def test_sessions_a_ready_worker_can_serve_are_admitted_first_as_many_as_are_ready() -> None:
    reconciler = await make_reconciler(FakeApi())
    controller = reconciler.pools
    controller.pools[f"{NS}/warm"] = copy.deepcopy(POOL)
    for index, name in enumerate(("warm-a", "warm-b")):
        controller.observe_pod("MODIFIED", worker(name, 10 + index, "ready"))

    def pooled(name: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": NS},
            "spec": {"roomId": name, "poolRef": {"name": "warm"}},
        }

    # two ready workers: two sessions promised one, the third waits its turn
    assert [controller.promise(f"{NS}/{n}", pooled(n)) for n in ("s1", "s2", "s3")] == [
        True,
        True,
        False,
    ]
    controller.keep_promise(f"{NS}/s1")  # its admission started
    assert controller.promise(f"{NS}/s4", pooled("s4"))
    cold = {"metadata": {"name": "c", "namespace": NS}, "spec": {"roomId": "c"}}
    assert not controller.promise(f"{NS}/c", cold)

    served: list[str] = []

    async def admit(key: str) -> None:
        served.append(key)

    queue = admission.AdmissionQueue(reconciler.tasks, admit)
    queue.request("in-line-1")
    queue.request("in-line-2")
    queue.request("warm", first=True)
    queue.start()
    await queue.yield_to(5)
    assert served == ["warm", "in-line-1", "in-line-2"]
    await reconciler.aclose()
