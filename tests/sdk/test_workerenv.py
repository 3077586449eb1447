"""The operator → worker environment contract."""

from __future__ import annotations

import pytest

from avatar_sdk import api, workerenv


def session(**spec: object) -> api.AvatarSession:
    return api.AvatarSession(
        metadata={"name": "s1", "namespace": "agents"},
        spec=api.parse_spec({"roomId": "abcd-efgh-ijkl", **spec}),
    )


def test_settings_round_trip_through_the_environment() -> None:
    settings = workerenv.WorkerSettings.for_session(
        session(agentParticipantId="agent-1", video={"fps": 25}), "avatar_1"
    )
    env = settings.to_env()
    assert env["AVATAR_ROOM_ID"] == "abcd-efgh-ijkl"
    assert env["AVATAR_VIDEO_FPS"] == "25"
    assert env["AVATAR_SESSION_NAMESPACE"] == "agents"
    assert all(key.startswith("AVATAR_") for key in env)
    assert workerenv.WorkerSettings.from_env({**env, "PATH": "/bin"}) == settings


def test_the_token_is_a_file_never_a_variable() -> None:
    env = workerenv.WorkerSettings.for_session(session(), "avatar_1").to_env()
    assert env["AVATAR_TOKEN_FILE"] == "/var/run/secrets/avatar/token"
    assert not any("eyJ" in value for value in env.values())


def test_a_bad_variable_is_named() -> None:
    env = workerenv.WorkerSettings.for_session(session(), "avatar_1").to_env()
    with pytest.raises(ValueError, match="AVATAR_VIDEO_FPS"):
        workerenv.WorkerSettings.from_env({**env, "AVATAR_VIDEO_FPS": "fast"})
    del env["AVATAR_ROOM_ID"]
    with pytest.raises(ValueError, match="AVATAR_ROOM_ID"):
        workerenv.WorkerSettings.from_env(env)


def test_overrides_for_local_runs() -> None:
    settings = workerenv.WorkerSettings.for_session(
        session(), "avatar_1", transport="local", local_room_url="ws://127.0.0.1:1/room"
    )
    assert settings.to_env()["AVATAR_TRANSPORT"] == "local"


def test_a_pool_worker_is_told_its_pool_not_a_session_and_becomes_one_when_assigned() -> None:
    from avatar_sdk import assignment, pools

    pool = pools.AvatarPool(
        metadata={"name": "warm", "namespace": "agents"},
        spec=pools.AvatarPoolSpec.model_validate(
            {
                "template": {
                    "video": {"width": 256, "height": 256},
                    "avatar": {"renderer": "waveform"},
                }
            }
        ),
    )
    settings = workerenv.PoolWorkerSettings.for_pool(pool, "warm-abc123", status_url="https://r")
    env = settings.to_env()
    assert env["AVATAR_POOL_WORKER"] == "warm-abc123"
    assert env["AVATAR_VIDEO_WIDTH"] == "256" and env["AVATAR_RENDERER"] == "waveform"
    assert not {"AVATAR_ROOM_ID", "AVATAR_SESSION_NAME", "AVATAR_PARTICIPANT_ID"} & set(env)
    assert workerenv.PoolWorkerSettings.from_env(env) == settings
    given = assignment.Assignment(
        session_name="s1",
        session_namespace="agents",
        room_id="room-1",
        participant_id="avatar_1",
        agent_participant_id="agent",
        local_room_url="ws://127.0.0.1:1/rooms/room-1",
        join_token="jwt",
        status_token="hmac",
    )
    session = settings.assigned(given)
    assert (session.session_name, session.room_id, session.participant_id) == (
        "s1",
        "room-1",
        "avatar_1",
    )
    assert session.agent_participant_id == "agent"
    assert session.video_width == 256 and session.renderer.value == "waveform"
    assert session.local_room_url == "ws://127.0.0.1:1/rooms/room-1"
    assert session.status_url == "https://r"


def test_a_pool_worker_without_its_pool_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="AVATAR_POOL_NAME"):
        workerenv.PoolWorkerSettings.from_env({"AVATAR_POOL_WORKER": "w"})
