"""KubernetesAvatar as videosdk-agents' JobContext drives a cloud avatar: read participant_id,
`await connect(room_id, token)`, later `await aclose()` — against the real operator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from client_support import NS, OperatorEnv, set_status, stored

from avatar_devtools.localcluster import cluster
from avatar_sdk import api
from avatar_sdk import client as avatar_client
from avatar_sdk.agents import KubernetesAvatar

FRAMEWORK_TOKEN = "eyJ.framework-token.sig"


async def worker_joins(env: OperatorEnv, name: str) -> None:
    """The worker's part: once its pod is starting, it reports Joined through the relay."""
    await env.local.wait_for(
        env.local.store.lookup(api.GROUP, api.VERSION, api.PLURAL),
        NS,
        name,
        lambda o: (o.get("status") or {}).get("phase") == "Starting",
    )
    assert await env.report(name, {"phase": "Joined"}) == 200


async def test_connect_starts_the_avatar_and_aclose_deletes_it(
    operator_env: OperatorEnv, kubeconfig: Path, cluster_with_crd: cluster.LocalCluster
) -> None:
    avatar = KubernetesAvatar(
        kubeconfig=kubeconfig,
        agent_participant_id="agent_1",
        spec={"video": {"fps": 25}},
        join_timeout=15,
    )
    # what JobContext.connect does, in its order
    assert hasattr(avatar, "participant_id")
    participant_id = avatar.participant_id
    name = api.session_name_for_room("room-1")
    worker = asyncio.create_task(worker_joins(operator_env, name))
    await avatar.connect("room-1", FRAMEWORK_TOKEN)
    await worker
    assert getattr(avatar, "video_track", None) is None
    assert getattr(avatar, "audio_track", None) is None

    obj = stored(cluster_with_crd, name)
    assert obj is not None and obj["status"]["phase"] == "Joined"
    assert obj["spec"]["participantId"] == participant_id == avatar.participant_id
    assert obj["status"]["participantId"] == participant_id
    assert obj["spec"]["agentParticipantId"] == "agent_1"
    assert FRAMEWORK_TOKEN not in json.dumps(obj)  # the operator mints the worker's token
    assert avatar.session is not None and avatar.session.status.phase is api.Phase.JOINED

    await avatar.connect("room-1", FRAMEWORK_TOKEN)  # connected already: nothing happens
    await avatar.aclose()
    assert stored(cluster_with_crd, name) is None
    await avatar.aclose()  # twice is fine


async def test_connect_reports_no_room_on_a_gpu_and_leaves_nothing_behind(
    operator_env: OperatorEnv, kubeconfig: Path, cluster_with_crd: cluster.LocalCluster
) -> None:
    avatar = KubernetesAvatar(
        kubeconfig=kubeconfig,
        spec={"resources": {"vramMiB": 100_000}},
        join_timeout=20,
        wait_for_gpu=False,  # fail at once instead of queueing for up to join_timeout
    )
    with pytest.raises(avatar_client.Unschedulable) as caught:
        await asyncio.wait_for(avatar.connect("room-2", FRAMEWORK_TOKEN), 10)
    # the operator's own capacity message, as written into the status
    assert "no eligible GPU can ever hold 100000 MiB: the largest takes 81559 MiB" in str(
        caught.value
    )
    assert stored(cluster_with_crd, api.session_name_for_room("room-2")) is None
    await avatar.aclose()


async def test_a_second_agent_for_the_room_adopts_the_session_and_its_participant_id(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    first = KubernetesAvatar(client=sessions, join_timeout=5)
    second = KubernetesAvatar(client=sessions, join_timeout=5)
    assert first.participant_id != second.participant_id
    name = api.session_name_for_room("room-3")

    async def operator() -> None:
        await cluster_with_crd.wait_for(
            cluster_with_crd.store.lookup(api.GROUP, api.VERSION, api.PLURAL), NS, name
        )
        set_status(cluster_with_crd, name, {"phase": "Joined"})

    task = asyncio.create_task(operator())
    await asyncio.gather(first.connect("room-3", "t1"), second.connect("room-3", "t2"))
    await task
    assert second.participant_id == first.participant_id  # what the room is told to skip
    assert first.session is not None and second.session is not None
    assert first.session.metadata["uid"] == second.session.metadata["uid"]
    await second.aclose()
    assert stored(cluster_with_crd, name) is None
    await first.aclose()  # already gone: no error


async def test_a_failed_connect_deletes_only_what_it_created(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    existing = await sessions.create("room-4")
    avatar = KubernetesAvatar(client=sessions, join_timeout=0.3)
    with pytest.raises(avatar_client.JoinTimeout, match=r"did not join within 0\.3s"):
        await avatar.connect("room-4")
    assert stored(cluster_with_crd, existing.name) is not None  # adopted, so not deleted

    created = KubernetesAvatar(client=sessions, join_timeout=0.3)
    with pytest.raises(avatar_client.JoinTimeout):
        await created.connect("room-5")
    assert stored(cluster_with_crd, api.session_name_for_room("room-5")) is None


async def test_aclose_never_deletes_a_newer_session_for_the_room(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    avatar = KubernetesAvatar(client=sessions, join_timeout=5)
    name = api.session_name_for_room("room-6")
    task = asyncio.create_task(avatar.connect("room-6"))
    info = cluster_with_crd.store.lookup(api.GROUP, api.VERSION, api.PLURAL)
    await cluster_with_crd.wait_for(info, NS, name)
    set_status(cluster_with_crd, name, {"phase": "Joined"})
    await task
    # the room is restarted by someone else meanwhile: a new incarnation under the same name
    cluster_with_crd.store.delete(info, NS, name)
    newer = await sessions.create("room-6")
    await avatar.aclose()
    kept: Any = stored(cluster_with_crd, name)
    assert kept is not None and kept["metadata"]["uid"] == newer.metadata["uid"]


async def test_framed_audio_is_one_line_and_follows_the_sessions_audio(
    sessions: avatar_client.AvatarSessionClient, cluster_with_crd: cluster.LocalCluster
) -> None:
    avatar = KubernetesAvatar(client=sessions, spec={"audio": {"sampleRate": 16_000}})
    name = api.session_name_for_room("room-7")
    task = asyncio.create_task(avatar.connect("room-7"))
    info = cluster_with_crd.store.lookup(api.GROUP, api.VERSION, api.PLURAL)
    await cluster_with_crd.wait_for(info, NS, name)
    set_status(cluster_with_crd, name, {"phase": "Joined"})
    await task

    class Room:
        meeting = None
        audio_track = type("Track", (), {"sinks": []})()

    class Pipeline:
        avatar = None

    room, pipeline = Room(), Pipeline()
    out = avatar.framed_audio(room, pipeline)
    assert pipeline.avatar is out and room.audio_track.sinks == [out]
    assert out.participant_id == avatar.participant_id
    assert out._framer.sample_rate == 16_000
    await avatar.aclose()


def test_the_agent_example_uses_the_drop_in_and_parses(repo_root: Path) -> None:
    source = (repo_root / "examples" / "agent.py").read_text(encoding="utf-8")
    compile(source, "examples/agent.py", "exec")  # videosdk-agents is not installed here
    assert "avatar=avatar" in source and "KubernetesAvatar(" in source
