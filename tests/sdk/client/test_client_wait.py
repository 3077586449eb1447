"""Waiting for a session to join: by watching, through dropped and expired watches, with errors
that say what happened (Failed, deleted, Unschedulable, join timeout)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from client_support import NS, condition, sessions_info, set_status

from avatar_devtools.localcluster import cluster
from avatar_sdk import api
from avatar_sdk import client as avatar_client

UNSCHEDULABLE = (
    "waiting for 100000 MiB on one GPU: largest free block 81559 MiB on gpu-a/gpu0; 0 waiting ahead"
)


def later(delay: float, change: Any) -> asyncio.Task[Any]:
    async def run() -> Any:
        await asyncio.sleep(delay)
        return change()

    return asyncio.create_task(run())


async def test_wait_returns_the_session_once_joined(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-1")
    seen: list[str | None] = []
    steps = [
        {"phase": "Pending"},
        {"phase": "Scheduled", "placement": {"node": "gpu-a", "gpu": 0, "vramMiB": 2048}},
        {"phase": "Starting", "podName": "w"},
        {"phase": "Joined", "participantId": "avatar_x", "joinedAt": "2026-01-01T00:00:01Z"},
    ]

    async def operator() -> None:
        for step in steps:
            await asyncio.sleep(0.02)
            set_status(cluster_with_crd, session.name, step)

    task = asyncio.create_task(operator())
    joined = await sessions.wait_until_joined(
        session.name, timeout=5, on_change=lambda s: seen.append(s.status.phase)
    )
    await task
    assert joined.status.phase is api.Phase.JOINED
    assert joined.status.participant_id == "avatar_x"
    assert joined.status.placement is not None and joined.status.placement.node == "gpu-a"
    order = [None, api.Phase.PENDING, api.Phase.SCHEDULED, api.Phase.STARTING, api.Phase.JOINED]
    assert seen[-1] is api.Phase.JOINED  # seen in order; the snapshot may come after a step
    assert [order.index(phase) for phase in seen] == sorted({order.index(p) for p in seen})
    # an already joined session returns at once
    assert (await sessions.wait_until_joined(session.name, timeout=1)).name == session.name


async def test_wait_watches_instead_of_polling(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-2")
    requests: list[tuple[str, str]] = []
    cluster_with_crd.server.on_request = lambda method, path: requests.append((method, path))
    task = later(0.5, lambda: set_status(cluster_with_crd, session.name, {"phase": "Joined"}))
    await sessions.wait_until_joined(session.name, timeout=5)
    await task
    # one snapshot and one watch, however long the wait
    assert len(requests) == 2, requests


async def test_wait_raises_failed_with_the_end_reason_and_message(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-3")
    message = "the worker pod failed 3 times: OOMKilled"
    task = later(
        0.05,
        lambda: set_status(
            cluster_with_crd,
            session.name,
            {"phase": "Failed", "endReason": "PodFailed", "message": message},
        ),
    )
    with pytest.raises(avatar_client.SessionFailed) as caught:
        await sessions.wait_until_joined(session.name, timeout=5)
    await task
    assert str(caught.value) == (
        f'avatar session "{NS}/{session.name}" failed before joining: PodFailed: {message}'
    )
    assert caught.value.end_reason is api.EndReason.POD_FAILED


async def test_wait_raises_when_the_room_ended_before_the_worker_joined(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-4")
    set_status(cluster_with_crd, session.name, {"phase": "Ended", "endReason": "JoinTimeout"})
    with pytest.raises(avatar_client.SessionFailed, match="ended before joining: JoinTimeout"):
        await sessions.wait_until_joined(session.name, timeout=5)


async def test_join_timeout_lists_the_last_conditions(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-5")
    set_status(
        cluster_with_crd,
        session.name,
        {
            "phase": "Starting",
            "conditions": [
                condition("Scheduled", "True", "Placed", "gpu-a/gpu0"),
                condition("PodReady", "False", "ContainerCreating", "pulling the image"),
            ],
        },
    )
    with pytest.raises(avatar_client.JoinTimeout) as caught:
        await sessions.wait_until_joined(session.name, timeout=0.3)
    assert str(caught.value) == (
        f'avatar session "{NS}/{session.name}" did not join within 0.3s (phase Starting); '
        "last conditions: Scheduled=True (Placed: gpu-a/gpu0); "
        "PodReady=False (ContainerCreating: pulling the image)"
    )
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.session is not None


async def test_unschedulable_carries_the_capacity_message(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-6", spec={"resources": {"vramMiB": 100_000}})
    set_status(
        cluster_with_crd,
        session.name,
        {
            "phase": "Pending",
            "message": UNSCHEDULABLE,
            "conditions": [condition("Scheduled", "False", "Unschedulable", UNSCHEDULABLE)],
        },
    )
    with pytest.raises(avatar_client.Unschedulable) as caught:
        await sessions.wait_until_joined(session.name, timeout=0.3)
    assert f"was not scheduled within 0.3s: {UNSCHEDULABLE}" in str(caught.value)
    assert "avatarctl capacity" in str(caught.value)
    assert isinstance(caught.value, avatar_client.JoinTimeout)
    with pytest.raises(avatar_client.Unschedulable, match="cannot be scheduled: waiting for"):
        await sessions.wait_until_joined(session.name, timeout=5, fail_if_unschedulable=True)


async def test_deletion_while_waiting_is_reported(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-7")
    task = later(
        0.05,
        lambda: cluster_with_crd.store.delete(sessions_info(cluster_with_crd), NS, session.name),
    )
    with pytest.raises(avatar_client.SessionDeleted, match="was deleted while waiting"):
        await sessions.wait_until_joined(session.name, timeout=5)
    await task
    with pytest.raises(avatar_client.SessionNotFound):
        await sessions.wait_until_joined(session.name, timeout=5)


async def test_wait_resumes_after_dropped_watches(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-8")
    server = cluster_with_crd.server

    async def operator() -> None:
        resource = f"{api.PLURAL}.{api.GROUP}"
        await server.wait_for_watches(resource)
        assert server.drop_watches(resource) == 1
        # a change while no watch is open is replayed from the resourceVersion on resume
        set_status(cluster_with_crd, session.name, {"phase": "Starting"})
        await server.wait_for_watches(resource)
        server.drop_watches(resource)
        await server.wait_for_watches(resource)
        set_status(cluster_with_crd, session.name, {"phase": "Joined"})

    task = asyncio.create_task(operator())
    phases: list[str | None] = []
    joined = await sessions.wait_until_joined(
        session.name, timeout=10, on_change=lambda s: phases.append(s.status.phase)
    )
    await task
    assert joined.status.phase is api.Phase.JOINED
    assert phases == [None, api.Phase.STARTING, api.Phase.JOINED]


async def test_wait_takes_a_new_snapshot_when_its_resource_version_expired(
    sessions: avatar_client.AvatarSessionClient,
    cluster_with_crd: cluster.LocalCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="avatar_sdk.client")
    session = await sessions.create("room-9")
    server = cluster_with_crd.server

    async def operator() -> None:
        resource = f"{api.PLURAL}.{api.GROUP}"
        await server.wait_for_watches(resource)
        server.drop_watches(resource)
        set_status(cluster_with_crd, session.name, {"phase": "Joined"})
        cluster_with_crd.store.compact()  # the resume's resourceVersion is gone: 410

    task = asyncio.create_task(operator())
    joined = await sessions.wait_until_joined(session.name, timeout=10)
    await task
    assert joined.status.phase is api.Phase.JOINED
    assert "watch expired; taking a new snapshot" in caplog.messages
