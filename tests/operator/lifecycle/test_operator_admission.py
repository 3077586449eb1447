"""Admission under load: the Pods first, the statuses and Events after, nothing twice."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from lifecycle_support import FLEET, NS, Env, make_env, phase_is

from avatar_operator import handlers, manifests
from avatar_sdk import api


@pytest_asyncio.fixture
async def slow_env(
    localcluster_factory: Any, avatarsession_crd: dict[str, Any], tmp_path: Path
) -> AsyncIterator[Env]:
    """The usual environment, but its kubelet keeps every Pod Pending for a minute."""
    slow: dict[str, Any] = copy.deepcopy(FLEET)
    slow["kubelet"]["startSeconds"] = 60
    environment = await make_env(localcluster_factory, avatarsession_crd, tmp_path, slow)
    yield environment
    await environment.aclose()


async def test_only_worker_pods_stream_to_the_operator(env: Env) -> None:
    await env.start_operator()
    pod_watches = [w for w in env.local.server.open_watches() if w.resource == "pods"]
    assert pod_watches
    for watch in pod_watches:
        assert watch.request.query.get("labelSelector") == manifests.SELECTOR
        assert watch.request.query.get("fieldSelector") == handlers.POD_FIELD_SELECTOR


async def test_a_pod_deleted_while_pending_is_found_and_replaced(
    slow_env: Env, manifest: Any
) -> None:
    env = slow_env
    operator = await env.start_operator()
    operator.reconciler.pod_resync_seconds = 0.5  # the watch does not stream Pending Pods
    env.create(manifest("pp"))
    await env.wait_session("pp", phase_is("Starting"))
    pod = env.get("pods", "pp-worker")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    env.store.delete(env.info("pods"), NS, "pp-worker")
    async with asyncio.timeout(10):
        while env.get("pods", "pp-worker-1") is None:
            await asyncio.sleep(0.05)
    session = await env.wait_session("pp", lambda s: s["status"].get("podName") == "pp-worker-1")
    assert session["status"]["phase"] == "Starting"
    assert "deleted" in session["status"]["message"]


async def test_a_burst_gets_one_pod_one_status_and_one_event_each(env: Env, manifest: Any) -> None:
    operator = await env.start_operator()
    names = [f"burst-{i}" for i in range(30)]
    for name in names:
        env.create(manifest(name, resources={"vramMiB": 1024}))
    for name in names:
        await env.wait_session(name, phase_is("Starting"), within=30)
    await asyncio.gather(*(env.report(operator, name, {"phase": "Joined"}) for name in names))
    for name in names:
        body = await env.wait_session(name, phase_is("Joined"), within=30)
        status = api.parse_status(body["status"])
        # the status written after the Pod says where it went, and the phases went forward
        assert status.pod_name == f"{name}-worker"
        assert status.placement is not None
        assert {c.type for c in status.conditions} >= {
            api.ConditionType.SCHEDULED,
            api.ConditionType.TOKEN_ISSUED,
            api.ConditionType.JOINED,
        }
    await env.wait_events("Joined", len(names), within=20)
    scheduled = await env.wait_events("Scheduled", len(names), within=20)
    await asyncio.sleep(1.5)  # a sweep or two: nothing is started (or announced) again
    assert len([e for e in env.list("events") if e["reason"] == "Scheduled"]) == len(scheduled)
    assert sorted(e["involvedObject"]["name"] for e in scheduled) == sorted(names)
    assert len(env.list("pods")) == len(names)
    assert len(env.list("secrets")) == len(names)
