"""Lease-based leader election: one leader, failover after a missed term, clean hand-over."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from avatar_operator import kube, leader


class FakeLeases:
    """The three Lease calls with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise OSError("api unreachable")

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any]:
        self._check()
        if self.lease is None:
            raise kube.NotFound(404, "NotFound", "no lease")
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise kube.Conflict(409, "AlreadyExists", "exists")
        self.version += 1
        self.lease = {
            **copy.deepcopy(body),
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        return copy.deepcopy(self.lease)

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise kube.Conflict(409, "Conflict", "stale resourceVersion")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"]["holderIdentity"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeLeases, identity: str, clock: Clock) -> leader.LeaderElector:
    return leader.LeaderElector(
        api,  # type: ignore[arg-type]  # the fake has the three calls the elector uses
        namespace="avatar-system",
        name="avatar-operator",
        identity=identity,
        lease_duration_seconds=10,
        renew_seconds=2,
        clock=clock,
    )


async def test_one_leader_at_a_time() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 5
    assert await a.try_acquire_or_renew()  # renewed: the record changes
    clock.now += 5
    assert not await b.try_acquire_or_renew()  # b saw a change 5 s ago
    assert api.holder == "a"


async def test_standby_takes_over_after_a_silent_term() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 9.9  # a has died: nothing renews
    assert not await b.try_acquire_or_renew()
    clock.now += 0.2
    assert await b.try_acquire_or_renew()
    assert api.holder == "b"
    assert api.lease is not None and api.lease["spec"]["leaseTransitions"] == 1
    # the old leader comes back and finds the lease taken
    assert not await a.try_acquire_or_renew()


async def test_racing_candidates_get_one_winner() -> None:
    api, clock = FakeLeases(), Clock()
    results = await asyncio.gather(
        *(elector(api, name, clock).try_acquire_or_renew() for name in "abcd")
    )
    assert sum(results) == 1


async def test_clean_release_hands_over_at_once() -> None:
    api, clock = FakeLeases(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert api.holder is None
    assert await b.try_acquire_or_renew()


async def test_run_stops_the_work_when_the_lease_cannot_be_renewed() -> None:
    api = FakeLeases()
    clock = Clock()
    e = leader.LeaderElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="lease",
        identity="a",
        lease_duration_seconds=2,
        renew_seconds=0.05,
    )
    del clock
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(e.run(work))
    await asyncio.wait_for(started.wait(), 2)
    api.down = True
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    assert not e.is_leader


async def test_run_steps_down_when_another_replica_holds_the_lease() -> None:
    api = FakeLeases()
    e = leader.LeaderElector(
        api,  # type: ignore[arg-type]
        namespace="ns",
        name="lease",
        identity="a",
        lease_duration_seconds=2,
        renew_seconds=0.05,
    )
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(e.run(work))
    await asyncio.wait_for(started.wait(), 2)
    assert api.lease is not None
    api.lease["spec"]["holderIdentity"] = "intruder"
    api.version += 1
    api.lease["metadata"]["resourceVersion"] = str(api.version)
    await asyncio.wait_for(task, 5)
    assert not e.is_leader
    assert api.holder == "intruder"  # it does not release what it no longer holds


@pytest.mark.parametrize("renew", [0.0, 6.0])
def test_settings_refuse_renewals_that_cannot_keep_a_lease(renew: float) -> None:
    from pydantic import ValidationError

    from avatar_operator.settings import OperatorSettings

    with pytest.raises(ValidationError):
        OperatorSettings(lease_duration_seconds=10, lease_renew_seconds=renew)
