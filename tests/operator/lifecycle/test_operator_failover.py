"""Two replicas, one Lease: the standby takes over within 15 s of the leader going silent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from lifecycle_support import Env, OperatorThread, phase_is


@pytest.mark.realcluster
async def test_standby_takes_over_within_15_seconds(env: Env, manifest: Any) -> None:
    election = {"leader_election": True, "lease_duration_seconds": 10, "lease_renew_seconds": 2}
    first = OperatorThread(env.settings(identity="replica-a", **election), env.kubeconfig)
    await asyncio.to_thread(first.start)
    second = OperatorThread(env.settings(identity="replica-b", **election), env.kubeconfig)
    await asyncio.to_thread(second.start, wait_active=False)
    assert first.operator is not None and second.operator is not None
    try:
        env.create(manifest("f1"))
        await env.wait_session("f1", phase_is("Starting"))
        await asyncio.sleep(2.5)  # a few renewals: the standby sees a live leader
        assert env.lease_holder() == "replica-a"
        assert not second.operator.is_active()

        # The leader's process hangs: no renewal gets through and nothing is released.
        elector = first.operator.elector
        assert elector is not None

        async def unreachable() -> bool:
            raise OSError("the API server is unreachable")

        async def nothing() -> None:
            return None

        elector.try_acquire_or_renew = unreachable  # type: ignore[method-assign]
        elector.release = nothing  # type: ignore[method-assign]
        silent_since = time.monotonic()
        async with asyncio.timeout(20):
            while not second.operator.is_active():
                await asyncio.sleep(0.05)
        failover = time.monotonic() - silent_since
        assert failover <= 15, failover
        async with asyncio.timeout(5):
            while first.operator.is_active():  # the old leader has stepped down by itself
                await asyncio.sleep(0.05)

        # the new leader serves the relay and admits new sessions; the old placement stands
        response = await env.report(second.operator, "f1", {"phase": "Joined"})
        assert response.status == 200
        await env.wait_session("f1", phase_is("Joined"))
        env.create(manifest("f2"))
        await env.wait_session("f2", phase_is("Starting"))
        await env.wait_for("pods", "f2-worker")
        assert sorted(p["metadata"]["name"] for p in env.list("pods")) == [
            "f1-worker",
            "f2-worker",
        ]
        assert env.lease_holder() == "replica-b"
    finally:
        await asyncio.to_thread(second.stop)
        await asyncio.to_thread(first.stop)
