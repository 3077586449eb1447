"""Creating sessions: one per room whatever the concurrency, conflicts, replacement, refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from client_support import NS, deny, session_manifest, set_status, stored, stored_sessions

from avatar_devtools.localcluster import cluster
from avatar_sdk import api
from avatar_sdk import client as avatar_client


async def test_create_names_the_session_after_the_room_and_sends_only_what_was_set(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create(
        "abcd-efgh-ijkl",
        participant_id="avatar_1",
        agent_participant_id="agent_1",
        spec={"video": {"fps": 25}, "resources": {"vramMiB": 3072}},
        labels={"team": "support"},
    )
    assert session.name == api.session_name_for_room("abcd-efgh-ijkl")
    assert session.namespace == NS
    assert session.spec.participant_id == "avatar_1"
    obj = stored(cluster_with_crd, session.name)
    assert obj is not None
    assert obj["metadata"]["labels"] == {"team": "support"}
    # the CRD applies its defaults; the client sends only what the caller set
    assert obj["spec"]["roomId"] == "abcd-efgh-ijkl"
    assert obj["spec"]["video"]["fps"] == 25 and obj["spec"]["resources"]["vramMiB"] == 3072
    assert obj["spec"]["agentParticipantId"] == "agent_1"
    manifest = sessions.build("r1", spec=api.AvatarSessionSpec(room_id="r1", audio={"channels": 2}))
    assert manifest["spec"] == {"roomId": "r1", "audio": {"channels": 2}}


async def test_a_second_create_for_the_room_returns_the_same_session(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    first, created_first = await sessions.ensure("room-1", participant_id="avatar_a")
    second, created_second = await sessions.ensure("room-1", participant_id="avatar_b")
    assert (created_first, created_second) == (True, False)
    assert second.metadata["uid"] == first.metadata["uid"]
    assert second.spec.participant_id == "avatar_a"  # the existing session wins
    assert len(stored_sessions(cluster_with_crd)) == 1


async def test_concurrent_creates_from_many_clients_make_exactly_one_session(
    client_factory: Any, cluster_with_crd: cluster.LocalCluster
) -> None:
    clients = [await client_factory() for _ in range(8)]
    results = await asyncio.gather(*(c.ensure("busy-room") for c in clients for _ in range(2)))
    assert sum(created for _, created in results) == 1
    assert len({s.metadata["uid"] for s, _ in results}) == 1
    assert len(stored_sessions(cluster_with_crd)) == 1


async def test_the_name_of_another_room_is_a_conflict(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    cluster_with_crd.apply(session_manifest("taken", "other-room"))
    with pytest.raises(avatar_client.SessionConflict, match=r"exists for room 'other-room'"):
        await sessions.create("my-room", name="taken")


async def test_a_finished_session_for_the_room_is_replaced(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    old = await sessions.create("room-2")
    set_status(cluster_with_crd, old.name, {"phase": "Ended", "endReason": "RoomEnded"})
    new, created = await sessions.ensure("room-2")
    assert created and new.metadata["uid"] != old.metadata["uid"]
    kept, created = await sessions.ensure("room-2", replace_finished=False)
    assert not created and kept.metadata["uid"] == new.metadata["uid"]


async def test_concurrent_creates_replace_a_finished_session_once(
    client_factory: Any, cluster_with_crd: cluster.LocalCluster
) -> None:
    clients = [await client_factory() for _ in range(4)]
    old = await clients[0].create("room-3")
    set_status(cluster_with_crd, old.name, {"phase": "Failed", "endReason": "PodFailed"})
    results = await asyncio.gather(*(c.ensure("room-3") for c in clients))
    assert sum(created for _, created in results) == 1
    assert len({s.metadata["uid"] for s, _ in results}) == 1
    assert [o["metadata"]["uid"] for o in stored_sessions(cluster_with_crd)] == [
        results[0][0].metadata["uid"]
    ]


async def test_a_bad_spec_is_refused_before_it_is_sent_naming_the_field(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    with pytest.raises(avatar_client.InvalidSession, match=r"spec\.video\.fps"):
        await sessions.create("room-4", spec={"video": {"fps": 1000}})
    with pytest.raises(avatar_client.InvalidSession, match=r"differs from room"):
        await sessions.create("room-4", spec={"roomId": "room-5"})
    assert stored_sessions(cluster_with_crd) == []


async def test_the_servers_schema_refusal_is_an_invalid_session(
    sessions: avatar_client.AvatarSessionClient,
) -> None:
    # a name the API server refuses (the models do not see names)
    with pytest.raises(avatar_client.InvalidSession, match="refused the AvatarSession"):
        await sessions.create("room-6", name="Not_A_DNS_Name")


async def test_create_without_the_crd_says_to_install_the_chart(
    localcluster_factory: Any, tmp_path: Path
) -> None:
    bare: cluster.LocalCluster = await localcluster_factory()
    kubeconfig = bare.write_kubeconfig(tmp_path / "bare", namespace="default")
    async with await avatar_client.AvatarSessionClient.from_config(kubeconfig=kubeconfig) as c:
        calls = (lambda: c.create("room"), c.list, lambda: c.get("x"), lambda: c.delete("x"))
        for call in calls:
            with pytest.raises(avatar_client.CRDNotInstalled, match="install the chart: helm"):
                await call()
        with pytest.raises(avatar_client.CRDNotInstalled):
            await c.wait_until_joined("x", timeout=5)


async def test_create_in_a_missing_namespace_says_so(kubeconfig: Path) -> None:
    async with await avatar_client.AvatarSessionClient.from_config(
        "nowhere", kubeconfig=kubeconfig
    ) as c:
        with pytest.raises(avatar_client.NamespaceNotFound, match='namespace "nowhere"'):
            await c.create("room")


async def test_forbidden_create_names_the_role_rule_to_grant(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    deny(cluster_with_crd, "create")
    with pytest.raises(avatar_client.PermissionDenied) as caught:
        await sessions.create("room-7")
    message = str(caught.value)
    assert 'cannot create avatarsessions.avatar-operator.dev in namespace "agents"' in message
    assert 'User "system:serviceaccount:agents:agent" cannot create' in message  # the server's
    assert (
        '  - apiGroups: ["avatar-operator.dev"]\n'
        '    resources: ["avatarsessions"]\n'
        '    verbs: ["create", "get", "list", "watch", "delete"]'
    ) in message
    assert caught.value.verb == "create" and caught.value.namespace == NS


async def test_forbidden_watch_and_events_name_their_rules(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    session = await sessions.create("room-8")
    deny(cluster_with_crd, "watch")
    deny(cluster_with_crd, "list", plural="events", group="")
    with pytest.raises(avatar_client.PermissionDenied, match="cannot watch avatarsessions"):
        await sessions.wait_until_joined(session.name, timeout=5)
    with pytest.raises(avatar_client.PermissionDenied) as caught:
        await sessions.events(session.name)
    assert '  - apiGroups: [""]\n    resources: ["events"]\n    verbs: ["list"]' in str(
        caught.value
    )


async def test_delete_removes_only_the_incarnation_asked_for(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    old = await sessions.create("room-9")
    assert await sessions.delete(old.name, wait=True)
    new = await sessions.create("room-9")
    assert not await sessions.delete(new.name, uid=old.metadata["uid"])  # a stale aclose
    assert stored(cluster_with_crd, new.name) is not None
    assert await sessions.delete(new.name, uid=new.metadata["uid"])
    assert not await sessions.delete(new.name)
    with pytest.raises(avatar_client.SessionNotFound, match='"x" not found in namespace "agents"'):
        await sessions.get("x")
