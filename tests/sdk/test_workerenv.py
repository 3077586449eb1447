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
